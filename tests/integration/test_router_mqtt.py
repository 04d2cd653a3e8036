"""The router's state on MQTT (optional): route health for Home Assistant and the watchdog."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import orjson

from tests.broker import Broker
from tests.harness import BackgroundLoop, Lab, free_port
from tests.pipeline import Collector

CODE = {"model": "homelab/auto", "messages": [{"role": "user", "content": "Refactor this function"}]}


def test_route_state_and_poisoning_are_published(bg: BackgroundLoop, tmp_path: Path) -> None:
    broker = Broker(tmp_path / "broker")
    out = Collector(bg, broker.url(), "homelab/router/#", "homeassistant/#")
    (tmp_path / "lab").mkdir()
    lab = Lab(bg, tmp_path / "lab", mqtt_url=broker.url())
    try:
        assert out.wait(lambda: len(out.on("homelab/router/ubuntu-6000/state")) >= 1)

        def configs() -> list[str]:
            return [t for t, _, _ in out.messages if t.startswith("homeassistant/") and "homelab_router" in t]

        # the state is retained, so HA gets it whenever the discovery lands; both arrive, in either order
        assert out.wait(lambda: len(configs()) >= 4 * 5)
        time.sleep(0.2)
        assert len(configs()) == 4 * 5
        lab.configure("ubuntu-6000", fault="cuda_error")
        r = httpx.post(lab.base_url + "/chat/completions", json=CODE, timeout=10)
        assert r.headers["x-homelab-route"] == "spark"
        assert out.wait(lambda: any(orjson.loads(p)["poisoned"] for p in out.on("homelab/router/ubuntu-6000/state")))
        events = [orjson.loads(p) for p in out.on("homelab/router/events")]
        assert events and events[0]["route"] == "ubuntu-6000" and events[0]["kind"] == "cuda_poisoned"
    finally:
        lab.close()
        out.close()
        broker.stop()


def test_router_serves_with_the_broker_down(bg: BackgroundLoop, tmp_path: Path) -> None:
    lab = Lab(bg, tmp_path, mqtt_url=f"mqtt://127.0.0.1:{free_port()}")
    try:
        for _ in range(3):
            r = httpx.post(lab.base_url + "/chat/completions", json=CODE, timeout=10)
            assert r.status_code == 200 and r.headers["x-homelab-route"] == "ubuntu-6000"
    finally:
        lab.close()
