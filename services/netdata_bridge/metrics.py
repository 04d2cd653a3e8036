"""Curated sensors from one host's ``allmetrics?format=json`` (pure: no I/O).

A sensor exists only if its chart exists and its dimension has a real value now (null, NaN and
absent are not values): no ghost entities for hardware a host does not have.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

GPU_UUID = re.compile(r"(GPU-[^_]{8,})")
MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Reading:
    key: str  # stable per host: cpu, ram_used, gpu0_temperature, disk_root_used, ...
    name: str
    value: float
    unit: str | None
    device_class: str | None = None
    icon: str | None = None
    group: str = "system"  # system | gpu | storage
    gpu_uuid: str | None = None


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    f = float(v)
    return None if math.isnan(f) or math.isinf(f) else f


def _dims(chart: dict[str, Any]) -> dict[str, float]:
    """Dimension name → value, real values only (matched by name: ids can embed uuids)."""
    out: dict[str, float] = {}
    dims = chart.get("dimensions")
    if not isinstance(dims, dict):
        return out
    for dim_id, d in dims.items():
        if not isinstance(d, dict):
            continue
        v = _num(d.get("value"))
        if v is not None:
            out[str(d.get("name") or dim_id)] = v
    return out


def mount_chart(mount: str) -> str:
    return "disk_space." + mount.replace("/", "_")


def mount_slug(mount: str) -> str:
    return "root" if mount == "/" else re.sub(r"[^a-z0-9]+", "_", mount.lower()).strip("_")


def _gpu_identity(chart_id: str, chart: dict[str, Any]) -> tuple[str, int | None]:
    labels = chart.get("chart_labels") or chart.get("labels") or {}
    uuid = labels.get("uuid") if isinstance(labels, dict) else None
    index = labels.get("index") if isinstance(labels, dict) else None
    if not uuid:
        m = GPU_UUID.search(chart_id)
        uuid = m.group(1) if m else str(chart.get("family") or chart_id)
    try:
        idx = int(index) if index is not None else None
    except (TypeError, ValueError):
        idx = None
    return str(uuid), idx


def extract(allmetrics: dict[str, Any], mounts: tuple[str, ...] = ("/",)) -> dict[str, Reading]:
    out: dict[str, Reading] = {}

    def add(r: Reading) -> None:
        out[r.key] = r

    charts = {k: v for k, v in allmetrics.items() if isinstance(v, dict)}
    cpu = _dims(charts.get("system.cpu", {}))
    if cpu:
        add(Reading("cpu", "CPU", round(sum(cpu.values()), 2), "%", icon="mdi:cpu-64-bit"))
    ram = _dims(charts.get("system.ram", {}))
    if "used" in ram:
        add(Reading("ram_used", "RAM used", round(ram["used"], 1), "MiB", "data_size", "mdi:memory"))
    avail = _dims(charts.get("mem.available", {}))
    if avail:  # one dimension whose id differs across versions
        add(Reading("ram_available", "RAM available", round(next(iter(avail.values())), 1), "MiB", "data_size",
                    "mdi:memory"))
    load = _dims(charts.get("system.load", {}))
    for dim in ("load1", "load5", "load15"):
        if dim in load:
            add(Reading(dim, f"Load {dim[4:]} min", round(load[dim], 2), None, icon="mdi:gauge"))
    for mount in mounts:
        disk = _dims(charts.get(mount_chart(mount), {}))
        slug = mount_slug(mount)
        if "used" in disk:
            add(Reading(f"disk_{slug}_used", f"Disk {mount} used", round(disk["used"], 2), "GiB", "data_size",
                        "mdi:harddisk", "storage"))
        if "avail" in disk:
            add(Reading(f"disk_{slug}_available", f"Disk {mount} available", round(disk["avail"], 2), "GiB",
                        "data_size", "mdi:harddisk", "storage"))
        if "used" in disk and "avail" in disk and disk["used"] + disk["avail"] > 0:
            # how full, at a glance (the dashboard's gauge): used of what the filesystem offers
            add(Reading(f"disk_{slug}_used_percent", f"Disk {mount} used", round(
                100 * disk["used"] / (disk["used"] + disk["avail"]), 1), "%", None, "mdi:harddisk", "storage"))

    # GPUs (go.d nvidia_smi): one chart per GPU and metric, matched by context and dimension name
    gpus: dict[str, dict[str, Any]] = {}
    for chart_id, chart in charts.items():
        ctx = str(chart.get("context") or "")
        if not ctx.startswith("nvidia_smi.gpu_"):
            continue
        uuid, idx = _gpu_identity(chart_id, chart)
        gpus.setdefault(uuid, {"index": idx, "charts": {}})["charts"][ctx.removeprefix("nvidia_smi.")] = chart
    order = sorted(gpus, key=lambda u: (gpus[u]["index"] is None, gpus[u]["index"] or 0, u))
    for pos, uuid in enumerate(order):
        g = gpus[uuid]
        i: int = g["index"] if g["index"] is not None else pos
        c: dict[str, dict[str, Any]] = g["charts"]
        p = f"gpu{i}"

        def gpu(key: str, name: str, value: float, unit: str | None, dc: str | None, icon: str,
                p: str = p, i: int = i, uuid: str = uuid) -> None:
            add(Reading(f"{p}_{key}", f"GPU {i} {name}", value, unit, dc, icon, "gpu", uuid))

        util = _dims(c.get("gpu_utilization", {}))
        if "gpu" in util:
            gpu("utilization", "utilization", round(util["gpu"], 1), "%", None, "mdi:expansion-card")
        mem_util = _dims(c.get("gpu_memory_utilization", {}))
        if "memory" in mem_util:
            gpu("memory_utilization", "memory utilization", round(mem_util["memory"], 1), "%", None,
                "mdi:expansion-card")
        fb = _dims(c.get("gpu_frame_buffer_memory_usage", {}))
        if "used" in fb:  # a unified-memory GB10 has this chart with no dimensions: no VRAM sensor
            gpu("memory_used", "memory used", round(fb["used"] / MIB, 1), "MiB", "data_size", "mdi:memory")
            gpu("memory_total", "memory total", round(sum(fb.values()) / MIB, 1), "MiB", "data_size", "mdi:memory")
        temp = _dims(c.get("gpu_temperature", {}))
        if "temperature" in temp:
            gpu("temperature", "temperature", round(temp["temperature"], 1), "°C", "temperature", "mdi:thermometer")
        power = _dims(c.get("gpu_power_draw", {}))
        if "power_draw" in power:
            gpu("power", "power", round(power["power_draw"], 1), "W", "power", "mdi:flash")
    return out
