"""CPU time of one netdata_bridge poll-and-publish cycle: 4 hosts × ~40 sensors, real HTTP and MQTT.

The Netdata-shaped parent runs in a child process (so its CPU is not counted); the bridge publishes
to a real mosquitto. Reports CPU ms (process time) and messages per cycle: the first cycle
(discovery), a cycle where every value changed, and an unchanged cycle (heartbeat not due).

    .venv/bin/python bench/netdata.py [--cycles 20] [--write]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.router_overhead import _write_results  # noqa: E402
from services.netdata_bridge.bridge import Bridge  # noqa: E402
from shared.bus import Bus  # noqa: E402
from shared.settings import NetdataSettings  # noqa: E402
from tests.broker import Broker  # noqa: E402
from tests.harness import free_port  # noqa: E402

MOUNTS = ("/", "/data", "/models")


def hosts(tick: int) -> dict[str, dict[str, Any]]:
    from tests.netdata_http import chart, gpu_charts, system_charts

    out = {}
    for h in range(4):
        metrics = system_charts(cpu=10.0 + tick + h)
        for m in MOUNTS[1:]:
            cid = "disk_space." + m.replace("/", "_")
            metrics[cid] = chart(cid, "disk.space", "GiB", {"avail": ("avail", 500.0 - tick), "used": ("used", 100.0)})
        for g in range(4):
            metrics.update(gpu_charts(f"GPU-{h:04x}{g:04x}-0000-0000-0000-000000000000", util=50.0 + tick + g))
        out[f"host-{h}"] = metrics
    return out


def serve(port: int) -> None:
    from aiohttp import web

    state = {"tick": 0}

    async def info(request: web.Request) -> web.Response:
        names = list(hosts(0))
        return web.json_response({"mirrored_hosts": names, "mirrored_hosts_status": [
            {"hostname": n, "reachable": True, "hops": 0 if i == 0 else 1} for i, n in enumerate(names)]})

    async def parent(request: web.Request) -> web.Response:
        return web.json_response(hosts(state["tick"])["host-0"])

    async def child(request: web.Request) -> web.Response:
        return web.json_response(hosts(state["tick"])[request.match_info["host"]])

    async def tick(request: web.Request) -> web.Response:
        state["tick"] = int(request.query.get("t", "0"))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/api/v1/info", info)
    app.router.add_get("/api/v1/allmetrics", parent)
    app.router.add_get("/host/{host}/api/v1/allmetrics", child)
    app.router.add_post("/tick", tick)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


async def measure(broker: Broker, url: str, cycles: int) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, Bus(broker.url(), "netdata_bridge") as bus:
        await asyncio.wait_for(bus.connected.wait(), 10)
        bridge = Bridge(NetdataSettings(mounts=MOUNTS, heartbeat=3600), url, bus, session,
                        Path(tempfile.mkdtemp()) / "state.json")

        async def one() -> tuple[float, int, int]:
            t0 = time.process_time()
            stats = await bridge.cycle()
            while bus.pending():  # noqa: ASYNC110 - a bench poll of the outbox
                await asyncio.sleep(0.001)
            return (time.process_time() - t0) * 1000, stats.messages, stats.sensors

        first = await one()
        changed, unchanged = [], []
        for i in range(cycles):
            async with session.post(f"{url}/tick", params={"t": str(i + 1)}):
                pass
            changed.append(await one())
            unchanged.append(await one())
    return {"first": first, "changed": changed, "unchanged": unchanged}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cycles", type=int, default=20)
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.serve:
        serve(a.serve)
        return 0
    port = free_port()
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(port)])
    broker = Broker(Path(tempfile.mkdtemp()) / "broker")
    try:
        time.sleep(1.5)
        r = asyncio.run(measure(broker, f"http://127.0.0.1:{port}", a.cycles))
    finally:
        server.terminate()
        server.wait(10)
        broker.stop()
    f = r["first"]
    ch = r["changed"]
    un = r["unchanged"]
    rows = [
        f"| first cycle (discovery) | {f[0]:.1f} | {f[1]} | {f[2]} |",
        f"| every value changed (median of {len(ch)}) | {statistics.median(c[0] for c in ch):.1f} | "
        f"{statistics.median(c[1] for c in ch):.0f} | {ch[0][2]} |",
        f"| nothing changed (median of {len(un)}) | {statistics.median(c[0] for c in un):.1f} | "
        f"{statistics.median(c[1] for c in un):.0f} | {un[0][2]} |",
    ]
    report = "\n".join(["| cycle (4 hosts) | CPU ms | messages published | sensors |", "|---|---|---|---|", *rows])
    print(report)
    if a.write:
        _write_results("netdata", f"`.venv/bin/python bench/netdata.py --cycles {a.cycles} --write`", report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
