"""Poll the Netdata parent, keep per-host sensors in step with what each host really exposes."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from services.netdata_bridge.metrics import Reading, extract
from shared import topics
from shared.bus import Bus
from shared.ha import device, discovery, object_id, slug
from shared.settings import NetdataSettings

SERVICE = "netdata_bridge"
log = logging.getLogger("homelab.netdata_bridge")


class NetdataError(Exception):
    """Netdata did not answer usefully (retryable: the next cycle tries again)."""


def host_topics(host: str) -> dict[str, str]:
    h = object_id(host)
    return {"state": f"homelab/netdata/{h}/state", "availability": f"homelab/netdata/{h}/availability"}


def sensor_discovery(host: str, r: Reading) -> tuple[str, dict[str, Any]]:
    h = object_id(host)
    t = host_topics(host)
    obj = f"{r.gpu_uuid}_{r.key.split('_', 1)[1]}" if r.gpu_uuid else r.key  # stable across GPU re-ordering
    cfg: dict[str, Any] = {
        "name": r.name, "default_entity_id": f"sensor.{slug(host)}_{r.key}", "state_topic": t["state"],
        "value_template": f"{{{{ value_json.{r.key} }}}}", "state_class": "measurement",
        "device": device(f"netdata_{h}", host, "Netdata host", manufacturer="homelab / Netdata"),
        "availability": [{"topic": topics.status(SERVICE), "payload_available": "online",
                          "payload_not_available": "offline"},
                         {"topic": t["availability"], "payload_available": "online",
                          "payload_not_available": "offline"}],
        "availability_mode": "all",
    }
    if r.unit:
        cfg["unit_of_measurement"] = r.unit
        # whole MiB, tenths of a GiB: numbers that fit a dashboard's row
        if r.unit in ("MiB", "GiB"):
            cfg["suggested_display_precision"] = 0 if r.unit == "MiB" else 1
    if r.device_class:
        cfg["device_class"] = r.device_class
    if r.icon:
        cfg["icon"] = r.icon
    return discovery("sensor", f"netdata_{h}", obj, cfg)


@dataclass
class HostState:
    name: str
    announced: dict[str, str] = field(default_factory=dict)  # key -> discovery topic
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)
    absent: dict[str, int] = field(default_factory=dict)
    state: dict[str, float | None] = field(default_factory=dict)
    published_at: float = 0.0
    online: bool | None = None


@dataclass
class CycleStats:
    hosts: int = 0
    sensors: int = 0
    messages: int = 0


class Bridge:
    def __init__(self, cfg: NetdataSettings, base_url: str, bus: Bus, session: aiohttp.ClientSession,
                 state_file: Path) -> None:
        self.cfg = cfg
        self.base = base_url.rstrip("/")
        self.bus = bus
        self.session = session
        self.state_file = state_file
        self.hosts: dict[str, HostState] = {}
        self._load()

    # announced sensors survive a restart, so one that vanished meanwhile is still removed
    def _load(self) -> None:
        try:
            data = orjson.loads(self.state_file.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return
        for name, announced in data.items():
            self.hosts[name] = HostState(name, announced=dict(announced))

    def _save(self) -> None:
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps({n: h.announced for n, h in self.hosts.items()}))
        tmp.replace(self.state_file)

    async def _get(self, path: str) -> Any:
        try:
            async with self.session.get(self.base + path,
                                        timeout=aiohttp.ClientTimeout(total=self.cfg.timeout)) as r:
                if r.status != 200:
                    raise NetdataError(f"{path}: HTTP {r.status}")
                return orjson.loads(await r.read())
        except (aiohttp.ClientError, OSError, TimeoutError, orjson.JSONDecodeError) as exc:
            raise NetdataError(f"{path}: {type(exc).__name__}: {exc}") from exc

    async def cycle(self) -> CycleStats:
        stats = CycleStats()
        try:
            info = await self._get("/api/v1/info")
            listed = info.get("mirrored_hosts_status") or [
                {"hostname": h, "reachable": True, "hops": i} for i, h in enumerate(info.get("mirrored_hosts") or [])]
        except (NetdataError, AttributeError) as exc:
            log.warning("netdata parent unavailable: %s", exc)
            for h in self.hosts.values():
                stats.messages += await self._availability(h, False)
            return stats
        seen = set()
        jobs = []
        for entry in listed:
            name = str(entry.get("hostname") or "")
            if not name:
                continue
            seen.add(name)
            h = self.hosts.setdefault(name, HostState(name))
            jobs.append(self._host(h, bool(entry.get("reachable", True)), int(entry.get("hops") or 0), stats))
        await asyncio.gather(*jobs)
        for name, h in self.hosts.items():
            if name not in seen:  # no longer streamed to the parent at all
                stats.messages += await self._availability(h, False)
        self._save()
        return stats

    async def _host(self, h: HostState, reachable: bool, hops: int, stats: CycleStats) -> None:
        stats.hosts += 1
        if not reachable:
            stats.messages += await self._availability(h, False)
            return
        path = "/api/v1/allmetrics?format=json" if hops == 0 else f"/host/{h.name}/api/v1/allmetrics?format=json"
        try:
            metrics = await self._get(path)
            if not isinstance(metrics, dict):
                raise NetdataError(f"{path}: not a JSON object")
        except NetdataError as exc:
            log.warning("host %s: %s", h.name, exc)
            stats.messages += await self._availability(h, False)
            return
        readings = extract(metrics, self.cfg.mounts)
        stats.sensors += len(readings)
        stats.messages += await self._sync_sensors(h, readings)
        stats.messages += await self._availability(h, True)
        stats.messages += await self._state(h, readings)

    async def _sync_sensors(self, h: HostState, readings: dict[str, Reading]) -> int:
        sent = 0
        for key, r in readings.items():
            h.absent.pop(key, None)
            topic, config = sensor_discovery(h.name, r)
            if h.configs.get(key) != config:
                await self.bus.publish(topic, orjson.dumps(config), retain=True)
                h.announced[key], h.configs[key] = topic, config
                sent += 1
        for key in [k for k in h.announced if k not in readings]:
            h.absent[key] = h.absent.get(key, 0) + 1
            if h.absent[key] >= self.cfg.remove_after:
                # gone for good: an empty retained config removes the entity in HA
                await self.bus.publish(h.announced.pop(key), b"", retain=True)
                h.configs.pop(key, None)
                h.absent.pop(key, None)
                log.info("host %s: sensor %s removed", h.name, key)
                sent += 1
        return sent

    async def _availability(self, h: HostState, online: bool) -> int:
        if h.online is online:
            return 0
        h.online = online
        await self.bus.publish(host_topics(h.name)["availability"], "online" if online else "offline", retain=True)
        if not online:
            h.state = {}  # never show stale values after a comeback
        return 1

    async def _state(self, h: HostState, readings: dict[str, Reading]) -> int:
        state: dict[str, float | None] = {k: None for k in h.announced}
        state.update({k: r.value for k, r in readings.items()})
        now = time.monotonic()
        if state == h.state and now - h.published_at < self.cfg.heartbeat:
            return 0
        h.state, h.published_at = state, now
        await self.bus.publish(host_topics(h.name)["state"], orjson.dumps(state), retain=True)
        return 1

    async def announce_all(self) -> None:
        """Home Assistant came back: every config and the current state again."""
        for h in self.hosts.values():
            for key, topic in h.announced.items():
                if key in h.configs:
                    await self.bus.publish(topic, orjson.dumps(h.configs[key]), retain=True)
            h.published_at = 0.0
