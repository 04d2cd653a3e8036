"""Events per second from frigate/events to homelab/camera/event/unique, with nothing lost.

A real mosquitto, frigate_consumer and dedup as their own processes (``homelab run``), a publisher
at a fixed rate and a subscriber in this process; every event's latency is publish → unique.

    .venv/bin/python bench/ingest.py [--rate 600] [--seconds 10] [--write]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiomqtt
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.router_overhead import _write_results  # noqa: E402
from shared.bus import NODELAY  # noqa: E402
from tests.broker import Broker  # noqa: E402

BASE = {"camera": "front_door", "label": "person", "sub_label": None, "top_score": 0.9, "score": 0.9,
        "false_positive": False, "end_time": None, "current_zones": ["porch"], "entered_zones": ["porch"],
        "has_snapshot": True, "box": [1, 2, 3, 4], "area": 100, "ratio": 1.0, "region": [0, 0, 10, 10],
        "stationary": False, "motionless_count": 0, "position_changes": 0, "attributes": {}}


async def run(port: int, rate: int, seconds: float) -> dict[str, float]:
    sent: dict[str, float] = {}
    got: dict[str, list[float]] = {}
    total = int(rate * seconds)
    async with aiomqtt.Client("127.0.0.1", port, identifier="bench-sub", clean_session=True,
                              socket_options=NODELAY) as sub, \
            aiomqtt.Client("127.0.0.1", port, identifier="bench-pub", socket_options=NODELAY) as pub:
        await sub.subscribe("homelab/camera/event/unique", qos=1)

        async def receive() -> None:
            async for m in sub.messages:
                eid = orjson.loads(m.payload)["event_id"]  # type: ignore[arg-type]
                got.setdefault(eid, []).append(time.perf_counter())
                if len(got) >= total:
                    return

        rx = asyncio.create_task(receive())
        t0 = time.perf_counter()
        for i in range(total):
            due = t0 + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            fid = f"bench-{i}"
            obj = {**BASE, "id": fid, "start_time": time.time(), "frame_time": time.time()}
            sent[f"frigate:{fid}"] = time.perf_counter()
            await pub.publish("frigate/events", orjson.dumps({"type": "new", "before": obj, "after": obj}), qos=1)
        send_s = time.perf_counter() - t0
        try:
            await asyncio.wait_for(rx, 30)
        except TimeoutError:
            rx.cancel()
        await asyncio.sleep(0.5)
    lat = sorted((got[k][0] - sent[k]) * 1000 for k in got if k in sent)
    return {"sent": total, "received": len(got), "lost": total - len(got),
            "duplicated": sum(len(v) - 1 for v in got.values()), "send_rate": total / send_s,
            "p50": statistics.median(lat) if lat else float("nan"),
            "p99": lat[int(len(lat) * 0.99) - 1] if lat else float("nan")}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=int, nargs="+", default=[500, 1000])
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--write", action="store_true")
    a = ap.parse_args()
    rows = []
    for rate in a.rate:
        tmp = Path(tempfile.mkdtemp(prefix="homelab-ingest-"))
        broker = Broker(tmp / "broker")
        env = {**os.environ, "HOMELAB_MQTT_URL": broker.url(), "HOMELAB_STATE_DIR": str(tmp / "state"),
               "HOMELAB_LOG_DIR": str(tmp / "logs"), "HOMELAB_CONFIG": str(ROOT / "config" / "homelab.yaml")}
        procs = [subprocess.Popen([sys.executable, "-m", "services.cli", "run", name, "--log-level", "WARNING"],
                                  env=env, cwd=ROOT) for name in ("frigate_consumer", "dedup")]
        try:
            time.sleep(1.5)
            r = asyncio.run(run(broker.port, rate, a.seconds))
        finally:
            for p in procs:
                p.send_signal(signal.SIGINT)
            for p in procs:
                p.wait(10)
            broker.stop()
        rows.append(f"| {rate} | {r['send_rate']:.0f} | {r['sent']} | {r['received']} | {r['lost']} | "
                    f"{r['duplicated']} | {r['p50']:.2f} | {r['p99']:.2f} |")
    report = "\n".join(["| target events/s | achieved send rate | sent | unique received | lost | duplicated | "
                        "p50 ms | p99 ms |", "|---|---|---|---|---|---|---|---|", *rows])
    print(report)
    if a.write:
        _write_results("ingest", f"`.venv/bin/python bench/ingest.py --rate {' '.join(map(str, a.rate))} "
                                 f"--seconds {a.seconds:g} --write`", report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
