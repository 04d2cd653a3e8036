"""Who may use the lab: client keys on every model endpoint and API shape, route allow-lists, slots
reserved for the camera class, and who used which GPU for how long."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
from typing import Any

import httpx
import orjson
import pytest
import yaml

from shared.jsonl import read_jsonl
from tests.harness import ROOT, Lab

KEYS = {"cursor": "key-cursor", "home-assistant": "key-camera", "spark-only": "key-spark"}


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


CLIENTS = {"cursor": {"key_sha256": sha(KEYS["cursor"])},
           "home-assistant": {"key_sha256": sha(KEYS["home-assistant"]), "class": "camera"},
           "spark-only": {"key_sha256": sha(KEYS["spark-only"]), "routes": ["spark"]}}
CODE = [{"role": "user", "content": "Refactor this function"}]  # auto -> ubuntu-6000, failover spark
pytestmark = pytest.mark.policy(clients=CLIENTS)


def lines(lab: Lab) -> list[dict[str, Any]]:
    return read_jsonl(lab.log_dir / "router-decisions.jsonl")


def call(lab: Lab, api: str, key: str | None, header: str = "bearer", **body: Any) -> httpx.Response:
    headers = {}
    if key is not None:
        headers = {"Authorization": f"Bearer {key}"} if header == "bearer" else {"x-api-key": key}
    url, payload = {
        "chat": ("/v1/chat/completions", {"model": "homelab/auto", "messages": CODE}),
        "responses": ("/v1/responses", {"model": "homelab/auto", "input": "Refactor this function", "store": False}),
        "messages": ("/v1/messages", {"model": "claude-opus-5-5", "max_tokens": 64, "messages": CODE}),
        "embeddings": ("/v1/embeddings", {"model": "x", "input": "hi"}),
    }[api]
    return httpx.post(lab.url + url, json={**payload, **body}, headers=headers, timeout=20)


@pytest.mark.parametrize("api", ["chat", "responses", "messages", "embeddings"])
def test_strangers_get_a_401_in_that_api_s_shape_and_a_line(lab: Lab, api: str) -> None:
    for key in (None, "wrong-key"):
        r = call(lab, api, key)
        assert r.status_code == 401
        body = r.json()
        if api == "messages":
            assert body["type"] == "error" and body["error"]["type"] == "authentication_error"
        else:
            assert body["error"]["type"] == "authentication_error"
        line = lines(lab)[-1]
        assert (line["status"], line["client"]) == (401, "unknown")
        assert "wrong-key" not in str(line)  # never the key
    r = httpx.get(lab.base_url + "/models", timeout=10)
    assert r.status_code == 401


@pytest.mark.parametrize("api", ["chat", "responses", "messages", "embeddings"])
@pytest.mark.parametrize("header", ["bearer", "x-api-key"])
def test_a_known_key_is_served_and_named_on_the_line(lab: Lab, api: str, header: str) -> None:
    r = call(lab, api, KEYS["cursor"], header, **({"user": "alice"} if api == "chat" else {}))
    assert r.status_code == 200, r.text
    line = lines(lab)[-1]
    assert line["client"] == "cursor" and line["status"] == 200
    if api == "chat":
        assert line["session"] == "alice"
    models = httpx.get(lab.base_url + "/models", headers={"Authorization": f"Bearer {KEYS['cursor']}"}, timeout=10)
    assert models.status_code == 200


def test_an_allow_list_refuses_a_pin_and_walks_an_automatic_decision_to_an_allowed_route(lab: Lab) -> None:
    r = httpx.post(lab.base_url + "/chat/completions", json={"model": "homelab/code", "messages": CODE},
                   headers={"Authorization": f"Bearer {KEYS['spark-only']}"}, timeout=20)
    assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error"
    r = call(lab, "chat", KEYS["spark-only"])  # auto: ubuntu-6000, whose failover is spark
    assert r.status_code == 200 and r.headers["x-homelab-route"] == "spark"
    assert lines(lab)[-1]["fallback_path"] == ["ubuntu-6000", "spark"]


@pytest.mark.policy(clients=CLIENTS, health={"probe_interval": 3600, "probe_timeout": 0.5, "failure_threshold": 3,
                                             "circuit_cooldown": 0.5, "probe_continuation": False,
                                             "probe_tools": False})
def test_camera_triage_keeps_its_reserved_slots_under_an_interactive_flood(lab: Lab) -> None:
    policy = yaml.safe_load(lab.policy_path.read_text())
    policy["routes"]["ubuntu-4090"].update(max_concurrency=4, reserve={"camera": 2})
    lab.write_policy(policy)
    assert httpx.post(lab.url + "/admin/reload-config", headers={"Authorization": "Bearer test-admin-token"},
                      timeout=10).status_code == 200
    lab.configure("ubuntu-4090", ttft=1.5)  # the flood holds its slots
    fast = [{"role": "user", "content": "Classify these tags as json"}]  # auto -> ubuntu-4090
    routes: list[str] = []

    def flood() -> None:
        r = httpx.post(lab.base_url + "/chat/completions", json={"model": "homelab/auto", "messages": fast},
                       headers={"Authorization": f"Bearer {KEYS['cursor']}"}, timeout=20)
        routes.append(r.headers["x-homelab-route"])

    threads = [threading.Thread(target=flood) for _ in range(4)]
    for t in threads:
        t.start()
    deadline = 50
    while lab.svc.states["ubuntu-4090"].in_flight < 2 and deadline:
        threading.Event().wait(0.05)
        deadline -= 1
    camera = httpx.post(lab.base_url + "/chat/completions", json={"model": "homelab/auto", "messages": fast},
                        headers={"Authorization": f"Bearer {KEYS['home-assistant']}"}, timeout=20)
    for t in threads:
        t.join(20)
    assert camera.headers["x-homelab-route"] == "ubuntu-4090"  # not spilled: its slots were kept
    assert sorted(routes).count("ubuntu-4090") == 2  # the interactive overflow spilled
    spilled = [x for x in lines(lab) if x.get("client") == "cursor" and x.get("route") != "ubuntu-4090"]
    assert len(spilled) == 2 and all(x["reason"] == "ubuntu-4090_reserved" for x in spilled)


def test_attribution_per_client_and_route(lab: Lab) -> None:
    policy = yaml.safe_load(lab.policy_path.read_text())
    policy["routes"]["ubuntu-6000"]["watts"] = 600
    lab.write_policy(policy)
    assert httpx.post(lab.url + "/admin/reload-config", headers={"Authorization": "Bearer test-admin-token"},
                      timeout=10).status_code == 200
    lab.configure("ubuntu-6000", ttft=0.3)
    for _ in range(3):
        assert call(lab, "chat", KEYS["cursor"]).status_code == 200
    assert call(lab, "chat", KEYS["cursor"], stream=True).status_code == 200
    stats = httpx.get(lab.url + "/stats", headers={"Authorization": "Bearer test-admin-token"},
                      timeout=10).json()["clients"]["cursor"]  # client names are the admin's to see
    served = lab.sims["ubuntu-6000"].requests
    assert stats["requests"] == served == 4
    assert stats["completion_tokens"] >= 3 * 12  # what the simulated upstream produced, counted
    assert 4 * 0.3 <= stats["gpu_seconds"] < 4 * 0.3 + 2  # the time the upstream worked
    assert stats["energy_wh"] == pytest.approx(stats["gpu_seconds"] * 600 / 3600, rel=1e-3)
    metrics = httpx.get(lab.url + "/metrics", timeout=10).text
    assert 'homelab_client_requests_total{client="cursor",route="ubuntu-6000"} 4.0' in metrics
    assert 'homelab_client_energy_wh_total{client="cursor",route="ubuntu-6000"}' in metrics


def test_homelab_client_add_prints_a_key_once_and_the_yaml_that_accepts_it(lab: Lab) -> None:
    p = subprocess.run([sys.executable, "-m", "services.cli", "client", "add", "laptop", "--class", "batch"],
                       cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    key = p.stdout.split("\n")[1].strip()
    entry = yaml.safe_load(p.stdout.split("then `homelab reload`:\n", 1)[1])["clients"]["laptop"]
    assert entry == {"key_sha256": sha(key), "class": "batch"}
    policy = yaml.safe_load(lab.policy_path.read_text())
    policy["clients"]["laptop"] = entry
    lab.write_policy(policy)
    assert httpx.post(lab.url + "/admin/reload-config", headers={"Authorization": "Bearer test-admin-token"},
                      timeout=10).status_code == 200
    assert call(lab, "chat", key).status_code == 200 and lines(lab)[-1]["client"] == "laptop"


def test_homelab_usage_answers_who_used_which_gpu_for_a_week_of_rotated_logs(tmp_path: Any) -> None:
    from shared.jsonl import JsonlWriter, log_files

    log = tmp_path / "router-decisions.jsonl"
    w = JsonlWriter(log, max_bytes=2_000, backups=20)  # small files: the week spans rotated, gzipped ones
    day = 86400.0
    now = time.time()
    for i in range(7 * 6):  # six requests a day for a week: cursor 2 s, home-assistant 1 s on the 4090
        client, route, gpu = (("cursor", "ubuntu-6000", 2.0) if i % 2 else ("home-assistant", "ubuntu-4090", 1.0))
        w.write({"ts": now - (i // 6) * day - 60, "request_id": f"r{i}", "route": route, "client": client,
                 "status": 200, "tokens": 100, "usage": {"prompt_tokens": 100, "completion_tokens": 10},
                 "gpu_s": gpu, "energy_wh": gpu * 350 / 3600})
    w.write({"ts": now, "request_id": "refused", "status": 401, "client": "unknown"})  # not usage
    w.close()
    time.sleep(0.5)  # the last gzip finishes in its thread
    assert len(log_files(log)) > 3
    chart = tmp_path / "usage.png"
    p = subprocess.run([sys.executable, "-m", "services.cli", "usage", "--since", "7d", "--log", str(log),
                        "--plot", str(chart)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    rows = {line.split()[0]: line.split() for line in p.stdout.splitlines()[1:3]}
    assert rows["cursor"][1:] == ["21", "2310", f"{21 * 2 / 3600:.4f}", f"{21 * 2 * 350 / 3600 / 1000:.4f}"]
    assert rows["home-assistant"][1] == "21"
    assert "ubuntu-4090: home-assistant 100%" in p.stdout
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    by_day = subprocess.run([sys.executable, "-m", "services.cli", "usage", "--by", "day", "--log", str(log)],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert len([x for x in by_day.stdout.splitlines() if x[:4].isdigit()]) == 7


def test_energy_from_a_live_power_sensor_and_client_sensors_in_home_assistant(bg: Any, tmp_path: Any) -> None:
    from tests.broker import Broker
    from tests.pipeline import Collector, publish

    broker = Broker(tmp_path / "broker")
    out = Collector(bg, broker.url(), "homelab/router/clients/#", "homeassistant/sensor/#")
    (tmp_path / "lab").mkdir()
    lab = Lab(bg, tmp_path / "lab", {"clients": CLIENTS}, mqtt_url=broker.url())
    try:
        policy = yaml.safe_load(lab.policy_path.read_text())
        policy["routes"]["ubuntu-6000"].update(watts=600, power_sensor="gpu-box/gpu0_power")
        lab.write_policy(policy)
        assert httpx.post(lab.url + "/admin/reload-config", headers={"Authorization": "Bearer test-admin-token"},
                          timeout=10).status_code == 200
        # the Netdata bridge's state for the GPU box: the GPU draws 400 W now
        publish(bg, broker.url(), [("homelab/netdata/gpu-box/state", b'{"gpu0_power": 400.0, "gpu0_temperature": 61}')])
        deadline = time.monotonic() + 10
        while lab.svc.acct.live_power("ubuntu-6000") is None and time.monotonic() < deadline:
            time.sleep(0.05)
        lab.configure("ubuntu-6000", ttft=0.2)
        assert call(lab, "chat", KEYS["cursor"]).status_code == 200
        line = lines(lab)[-1]
        assert line["power_w"] == {"value": 400.0, "source": "live"}  # the sensor wins over watts: 600
        assert line["energy_wh"] == pytest.approx(line["gpu_s"] * 400 / 3600, rel=1e-3)
        topic = "homelab/router/clients/cursor/state"
        assert out.wait(lambda: len(out.on(topic)) >= 1, 15)
        today = orjson.loads(out.on(topic)[-1])
        assert today["requests"] == 1 and today["energy_wh"] == pytest.approx(line["energy_wh"], rel=1e-2)
        configs = [t for t, _, _ in out.messages if t.startswith("homeassistant/sensor/") and "client_cursor" in t]
        assert len(configs) == 2  # requests today, energy today
    finally:
        lab.close()
        out.close()
        broker.stop()


def test_check_config_warns_about_an_open_lab_reached_over_the_network() -> None:
    env = {**os.environ, "HOMELAB_ROUTER_URL": "http://192.168.1.5:8080/v1"}
    p = subprocess.run([sys.executable, "-m", "services.cli", "check-config"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout.startswith("warning: the router is reached at http://192.168.1.5")
    env["HOMELAB_ROUTER_URL"] = "http://127.0.0.1:8080/v1"
    p = subprocess.run([sys.executable, "-m", "services.cli", "check-config"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=60)
    assert "warning" not in p.stdout
