"""Netdata-shaped data and a local HTTP server that serves it the way a Netdata parent does.

The allmetrics documents follow Netdata 1.37's JSON format and the go.d nvidia_smi collector's
chart ids (one chart per GPU and metric, ids and dimension ids embedding the GPU uuid).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from services.sim_upstream.http import serve
from tests.harness import BackgroundLoop


def chart(chart_id: str, context: str, units: str, dims: dict[str, tuple[str, float | None]],
          family: str = "") -> dict[str, Any]:
    return {"name": chart_id, "family": family or context.split(".")[0], "context": context, "units": units,
            "last_updated": 1795760000,
            "dimensions": {dim_id: {"name": name, "value": value} for dim_id, (name, value) in dims.items()}}


def system_charts(cpu: float = 12.5, ram_used: float = 20480.0, avail: float = 40960.0) -> dict[str, Any]:
    return {
        "system.cpu": chart("system.cpu", "system.cpu", "percentage", {
            "user": ("user", cpu * 0.6), "system": ("system", cpu * 0.3), "nice": ("nice", 0.0),
            "iowait": ("iowait", cpu * 0.1), "irq": ("irq", 0.0), "softirq": ("softirq", 0.0),
            "steal": ("steal", None), "guest": ("guest", 0.0), "guest_nice": ("guest_nice", 0.0)}),
        "system.ram": chart("system.ram", "system.ram", "MiB", {
            "free": ("free", 4096.0), "used": ("used", ram_used), "cached": ("cached", 8192.0),
            "buffers": ("buffers", 512.0)}),
        "mem.available": chart("mem.available", "mem.available", "MiB", {"MemAvailable": ("avail", avail)}),
        "system.load": chart("system.load", "system.load", "load", {
            "load1": ("load1", 1.25), "load5": ("load5", 0.9), "load15": ("load15", 0.7)}),
        "disk_space._": chart("disk_space._", "disk.space", "GiB", {
            "avail": ("avail", 812.4), "used": ("used", 187.6), "reserved_for_root": ("reserved for root", 50.0)},
            family="/"),
    }


def gpu_charts(uuid: str, *, util: float | None = 87.0, mem_util: float | None = 40.0,
               fb: tuple[float, float, float] | None = (18e9, 6e9, 0.5e9), temp: float | None = 71.0,
               power: float | None = 310.5, job: str = "nvidia_smi") -> dict[str, Any]:
    """One GPU as go.d's nvidia_smi shows it; fb=None: the chart exists with no dimensions (a GB10)."""
    p = f"{job}.gpu_{uuid}"
    d = f"gpu_{uuid}"
    fb_dims = {} if fb is None else {f"{d}_frame_buffer_memory_usage_free": ("free", fb[1]),
                                     f"{d}_frame_buffer_memory_usage_used": ("used", fb[0]),
                                     f"{d}_frame_buffer_memory_usage_reserved": ("reserved", fb[2])}
    return {
        f"{p}_gpu_utilization": chart(f"{p}_gpu_utilization", "nvidia_smi.gpu_utilization", "%",
                                      {f"{d}_gpu_utilization": ("gpu", util)}),
        f"{p}_memory_utilization": chart(f"{p}_memory_utilization", "nvidia_smi.gpu_memory_utilization", "%",
                                         {f"{d}_memory_utilization": ("memory", mem_util)}),
        f"{p}_frame_buffer_memory_usage": chart(f"{p}_frame_buffer_memory_usage",
                                                "nvidia_smi.gpu_frame_buffer_memory_usage", "B", fb_dims),
        f"{p}_temperature": chart(f"{p}_temperature", "nvidia_smi.gpu_temperature", "Celsius",
                                  {f"{d}_temperature": ("temperature", temp)}),
        f"{p}_power_draw": chart(f"{p}_power_draw", "nvidia_smi.gpu_power_draw", "Watts",
                                 {f"{d}_power_draw": ("power_draw", power)}),
    }


UUID_4090 = "GPU-8a3f2b1c-1111-2222-3333-444455556666"
UUID_6000 = "GPU-0b6e7d9a-aaaa-bbbb-cccc-ddddeeeeffff"
UUID_5090 = "GPU-5090c0de-1234-5678-9abc-def012345678"
UUID_GB10 = "GPU-ab10f00d-0000-1111-2222-333344445555"


def lab_hosts() -> dict[str, dict[str, Any]]:
    """The lab as a Netdata parent (the workstation) sees it: four GPU machines streaming to it."""
    return {
        "workstation": system_charts(),
        "ubuntu-4090": {**system_charts(35.0), **gpu_charts(UUID_4090)},
        "ubuntu-6000": {**system_charts(50.0), **gpu_charts(UUID_6000, fb=(80e9, 14e9, 1e9), power=450.0)},
        "win-5090": {**system_charts(20.0), **gpu_charts(UUID_5090, fb=(10e9, 22e9, 0.5e9))},
        # unified memory: the frame-buffer chart has no dimensions, memory utilization is null
        "spark": {**system_charts(15.0, ram_used=90000.0, avail=30000.0),
                  **gpu_charts(UUID_GB10, fb=None, mem_util=None, power=55.0)},
    }


class FakeParent:
    """Serves /api/v1/info and per-host allmetrics like a Netdata parent with streamed children."""

    def __init__(self, bg: BackgroundLoop, hosts: dict[str, dict[str, Any]], parent: str = "workstation") -> None:
        self.bg = bg
        self.hosts = hosts
        self.parent = parent
        self.unreachable: set[str] = set()
        self.down = False
        self.requests = 0
        app = web.Application()
        app.router.add_get("/api/v1/info", self._info)
        app.router.add_get("/api/v1/allmetrics", self._parent_metrics)
        app.router.add_get("/host/{host}/api/v1/allmetrics", self._host_metrics)
        self.runner, self.port = bg.run(serve(app))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _check(self) -> None:
        self.requests += 1
        if self.down:
            raise web.HTTPServiceUnavailable()

    async def _info(self, request: web.Request) -> web.Response:
        self._check()
        status = [{"guid": f"guid-{h}", "hostname": h, "reachable": h not in self.unreachable,
                   "hops": 0 if h == self.parent else 1, "claim_id": None, "node_id": None} for h in self.hosts]
        return web.json_response({"version": "v1.37.1", "mirrored_hosts": list(self.hosts),
                                  "mirrored_hosts_status": status})

    async def _parent_metrics(self, request: web.Request) -> web.Response:
        self._check()
        return web.json_response(self.hosts[self.parent])

    async def _host_metrics(self, request: web.Request) -> web.Response:
        self._check()
        host = request.match_info["host"]
        if host not in self.hosts or host in self.unreachable:
            raise web.HTTPNotFound()
        return web.json_response(self.hosts[host])

    def close(self) -> None:
        self.bg.run(self.runner.cleanup())
