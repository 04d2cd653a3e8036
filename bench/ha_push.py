"""Frigate event → the phone call Home Assistant makes, through a real Home Assistant 2025.4.4: the real
broker, ingest, dedup, notifier and router, the shipped package, and a stand-in phone (a `rest` notify).

Three profiles: the lab's model latencies (vision classifier 0.6 s to first token, senior model 5 s + 20 ms
a token), simulated fast models (0 s), and a slow classifier (5 s: the first push goes out at the
notifier's first_push_deadline, 2 s, and the classifier's answer updates it). Prints p50/p99 of event →
first push on the phone and event → rich push.

    bash scripts/install-ha.sh && .venv/bin/python bench/ha_push.py [--events 20] [--write]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.router_overhead import _write_results  # noqa: E402
from services.dedup.main import main as dedup_main  # noqa: E402
from services.frigate_consumer.main import main as frigate_main  # noqa: E402
from services.vision_notifier.main import main as notifier_main  # noqa: E402
from shared.settings import NotifierSettings, Settings  # noqa: E402
from tests.broker import Broker  # noqa: E402
from tests.frigate_http import FakeFrigate  # noqa: E402
from tests.ha.hass import PHONE, HomeAssistant, Phone  # noqa: E402
from tests.harness import BackgroundLoop, Lab  # noqa: E402
from tests.pipeline import Collector, Service, publish  # noqa: E402

POSITIVE = {"verdict": "positive", "confidence": 0.9, "objects": ["person"], "summary": "A person at the door"}
PROFILES = {"lab": {"ubuntu-4090": {"ttft": 0.6}, "spark": {"ttft": 5.0, "per_token": 0.02}},
            "fast": {"ubuntu-4090": {"ttft": 0.0}, "spark": {"ttft": 0.0, "per_token": 0.0}},
            "slow": {"ubuntu-4090": {"ttft": 5.0}, "spark": {"ttft": 5.0, "per_token": 0.02}}}
LABELS = {"lab": "lab latencies (classifier 0.6 s, senior 5 s + 20 ms/token)", "fast": "simulated fast (0 s)",
          "slow": "slow classifier (5 s; senior 5 s + 20 ms/token)"}


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p * (len(xs) - 1)))]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=20)
    ap.add_argument("--write", action="store_true")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="homelab-ha-bench-"))
    bg = BackgroundLoop()
    broker = Broker(tmp / "broker")
    phone = Phone(bg)
    phone.start()
    (tmp / "lab").mkdir()
    lab = Lab(bg, tmp / "lab")
    for route in lab.policy["routes"].values():  # the lab's timeouts, not the tests' short ones
        route.update(first_token_timeout=60, request_timeout=120, stream_idle_timeout=60)
    lab.write_policy(lab.policy)
    lab.svc.reload()
    lab.configure("ubuntu-4090", json_answer=POSITIVE)
    frigate = FakeFrigate(bg)
    birth = Collector(bg, broker.url(), "homeassistant/status")
    ha = HomeAssistant(tmp / "config", int(broker.url().rsplit(":", 1)[1]), phone.port, ["front_door"])
    ha.start()
    assert birth.wait(lambda: b"online" in birth.on("homeassistant/status"), 30)
    birth.close()
    ha.call("input_text", "set_value", entity_id="input_text.homelab_notify_target", value=PHONE)
    settings = Settings(mqtt_url=broker.url(), router_url=lab.base_url, frigate_url=frigate.url,
                        state_dir=tmp / "state", log_dir=tmp / "logs",
                        notifier=NotifierSettings(senior_timeout=30, ha_state_delay=0.3))
    services = [Service(bg, m, settings) for m in (frigate_main, dedup_main, notifier_main)]
    rows = []
    try:
        time.sleep(1)
        for profile, conf in PROFILES.items():
            for route, changes in conf.items():
                lab.configure(route, **changes)
            text_ms: list[float] = []
            rich_ms: list[float] = []
            for i in range(a.events + 1):  # the first event warms every path (discovery, connections)
                phone.pushes.clear()
                fid = f"{time.time():.6f}-bench{i}"
                obj = {"id": fid, "camera": "front_door", "label": "person", "score": 0.9, "top_score": 0.9,
                       "false_positive": False, "start_time": time.time(), "end_time": None,
                       "current_zones": [], "entered_zones": []}
                t0 = time.time()
                publish(bg, broker.url(), [("frigate/events", orjson.dumps({"type": "new", "before": obj,
                                                                               "after": obj}))])
                deadline = time.monotonic() + 60  # the described push carries the snapshot
                while not any("image" in p.data for p in phone.pushes) and time.monotonic() < deadline:
                    time.sleep(0.02)
                pushes = list(phone.pushes)
                rich = [p for p in pushes if "image" in p.data]
                if not rich:
                    raise SystemExit(f"event {i}: no described push ({len(pushes)} pushes arrived)")
                if i:
                    text_ms.append((pushes[0].at - t0) * 1000)
                    rich_ms.append((rich[0].at - t0) * 1000)
            rows.append((profile, text_ms, rich_ms))
    finally:
        for s in services:
            s.stop()
        ha.stop()
        frigate.close()
        lab.close()
        phone.stop()
        broker.stop()
        bg.close()
    lines = [f"Frigate event published → the stand-in phone's call from Home Assistant {ha_version()}, "
             f"{a.events} events per profile (after one warm-up), sequential, the notifier's first_push_deadline "
             f"{NotifierSettings().first_push_deadline:g} s (with fewer than 100 events, p99 is the slowest):", "",
             "| models | first push p50 ms | first push p99 ms | rich push p50 ms | rich push p99 ms |",
             "|---|---|---|---|---|"]
    for profile, t, r in rows:
        lines.append(f"| {LABELS[profile]} | {statistics.median(t):.0f} | {pct(t, 0.99):.0f} | "
                     f"{statistics.median(r):.0f} | {pct(r, 0.99):.0f} |")
    report = "\n".join(lines)
    print(report)
    if a.write:
        _write_results("home-assistant", "`.venv/bin/python bench/ha_push.py --write`", report)
    return 0


def ha_version() -> str:
    from tests.ha.hass import HA_VERSION

    return HA_VERSION


if __name__ == "__main__":
    raise SystemExit(main())
