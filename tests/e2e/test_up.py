"""End to end, as a user runs it: ``homelab up`` (child processes), the openai SDK, a Frigate event."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import yaml
from openai import OpenAI

from shared import topics
from tests.broker import Broker
from tests.harness import POLICY, ROOT, BackgroundLoop, free_port
from tests.integration.test_ingest import fixture_object, frigate_sequence
from tests.pipeline import Collector, publish


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[str, Broker, Path]]:
    broker = Broker(tmp_path / "broker")
    policy = yaml.safe_load(POLICY.read_text())
    for route in policy["routes"].values():
        route["base_url"] = f"http://127.0.0.1:{free_port()}/v1"
    policy_path = tmp_path / "policy.yaml"
    policy_path.write_text(yaml.safe_dump(policy))
    port = free_port()
    env = {**os.environ, "HOMELAB_MQTT_URL": broker.url(), "HOMELAB_STATE_DIR": str(tmp_path / "state"),
           "HOMELAB_LOG_DIR": str(tmp_path / "logs"), "HOMELAB_CONFIG": str(ROOT / "config" / "homelab.yaml")}
    proc = subprocess.Popen([sys.executable, "-m", "services.cli", "up", "--policy", str(policy_path), "--port",
                             str(port), "--latency-scale", "0"], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        seen = []
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            seen.append(line)
            if "homelab-router is up" in line:
                break
        else:
            pytest.fail("homelab up did not come up:\n" + "".join(seen))
        yield f"http://127.0.0.1:{port}/v1", broker, tmp_path
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail("homelab up did not stop on SIGINT")
        if proc.stdout:
            proc.stdout.close()
        broker.stop()


def test_homelab_up_serves_the_router_and_the_camera_pipeline(bg: BackgroundLoop,
                                                              stack: tuple[str, Broker, Path]) -> None:
    base_url, broker, _ = stack
    with OpenAI(base_url=base_url, api_key="none", max_retries=0) as client:
        answer = client.chat.completions.create(model="homelab/auto",
                                                messages=[{"role": "user", "content": "Refactor this function"}])
        assert answer.model == "glm-4.5-air-awq"
        streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model="homelab/reasoning", messages=[{"role": "user", "content": "hi"}], stream=True) if c.choices)
        assert streamed.startswith("The simulated answer")
    out = Collector(bg, broker.url(), topics.UNIQUE, "homelab/+/status")
    try:
        assert out.wait(lambda: {t for t, p, _ in out.messages if p == b"online"} >= {
            topics.status(s) for s in ("frigate_consumer", "ring_listener", "dedup")}, 20)
        obj = fixture_object("docs_v0.17.2_00_frigate_events.jsonc", id="e2e-1")
        publish(bg, broker.url(), frigate_sequence(obj))
        assert out.wait(lambda: len(out.on(topics.UNIQUE)) == 1, 20)
        assert orjson.loads(out.on(topics.UNIQUE)[0])["event_id"] == "frigate:e2e-1"
    finally:
        out.close()
