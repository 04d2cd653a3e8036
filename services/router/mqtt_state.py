"""Optional: the router's per-route health and load on MQTT, with Home Assistant discovery.

Only when HOMELAB_MQTT_URL is set. The router never depends on the broker: publications queue in a
bounded outbox (oldest state dropped first) and the request path never waits on them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import orjson

from services.router.state import RouteState
from shared import topics
from shared.bus import Bus
from shared.ha import availability, device, discovery, object_id, slug
from shared.service import every

SERVICE = "router"
EVENTS = "homelab/router/events"
log = logging.getLogger("homelab.router.mqtt")


def route_topic(route: str) -> str:
    return f"homelab/router/{route}/state"


def _entity(state_topic: str) -> dict[str, Any]:
    """What every router entity shares: the router's device, its state topic, the router's availability."""
    return {"device": device("homelab_router", "homelab-router", "LLM router"), "state_topic": state_topic,
            **availability(topics.status(SERVICE))}


def route_discovery(route: str) -> list[tuple[str, dict[str, Any]]]:
    r = slug(route)
    common = _entity(route_topic(route))
    return [
        discovery("binary_sensor", "homelab_router", f"{route}_healthy", {
            "name": f"{route} healthy", "default_entity_id": f"binary_sensor.router_{r}_healthy",
            "device_class": "connectivity", "value_template": "{{ 'ON' if value_json.healthy else 'OFF' }}",
            **common}),
        discovery("binary_sensor", "homelab_router", f"{route}_poisoned", {
            "name": f"{route} CUDA poisoned", "default_entity_id": f"binary_sensor.router_{r}_poisoned",
            "device_class": "problem", "value_template": "{{ 'ON' if value_json.poisoned else 'OFF' }}", **common}),
        discovery("binary_sensor", "homelab_router", f"{route}_saturated", {
            "name": f"{route} saturated", "default_entity_id": f"binary_sensor.router_{r}_saturated",
            "value_template": "{{ 'ON' if value_json.saturated else 'OFF' }}", **common}),
        discovery("sensor", "homelab_router", f"{route}_in_flight", {
            "name": f"{route} in flight", "default_entity_id": f"sensor.router_{r}_in_flight",
            "state_class": "measurement", "unit_of_measurement": "requests",
            "value_template": "{{ value_json.in_flight }}", "icon": "mdi:transit-connection-variant", **common}),
        discovery("sensor", "homelab_router", f"{route}_circuit", {
            "name": f"{route} circuit", "default_entity_id": f"sensor.router_{r}_circuit",
            "value_template": "{{ value_json.circuit }}", "icon": "mdi:electric-switch", **common}),
    ]


def client_topic(client: str) -> str:
    return f"homelab/router/clients/{object_id(client)}/state"


def client_discovery(client: str) -> list[tuple[str, dict[str, Any]]]:
    """Per client, for Home Assistant: its requests and energy today."""
    c = slug(client)
    common = _entity(client_topic(client))
    return [
        discovery("sensor", "homelab_router", f"client_{object_id(client)}_requests", {
            "name": f"{client} requests today", "default_entity_id": f"sensor.router_client_{c}_requests_today",
            "state_class": "total_increasing", "unit_of_measurement": "requests",
            "value_template": "{{ value_json.requests }}", "icon": "mdi:account-arrow-right", **common}),
        discovery("sensor", "homelab_router", f"client_{object_id(client)}_energy", {
            "name": f"{client} energy today", "default_entity_id": f"sensor.router_client_{c}_energy_today",
            "device_class": "energy", "state_class": "total_increasing", "unit_of_measurement": "Wh",
            "value_template": "{{ value_json.energy_wh }}", **common}),
    ]


NETDATA_STATES = "homelab/netdata/+/state"
POWER_FRESH = 300.0  # seconds: an older reading says nothing about the GPU now


class RouterMqtt:
    def __init__(self, url: str, snapshot: Callable[[], dict[str, dict[str, Any]]], interval: float = 5.0,
                 clients: Callable[[], dict[str, dict[str, float]]] = dict, replica: str | None = None) -> None:
        # ``replica``: one of several routers sharing the lab's books; each its own MQTT client (one client
        # id for two would have the broker drop each for the other, over and over)
        self.bus = Bus(url, SERVICE, on_connect=self._announce, on_ha_online=self._announce, outbox_limit=500,
                       subscribe=[NETDATA_STATES],
                       client_id=None if replica is None else f"homelab-router-{replica.replace(':', '-')}",
                       persistent=replica is None)
        self.snapshot = snapshot
        self.clients = clients
        self.interval = interval
        self._last: dict[str, bytes] = {}
        self._announced: set[str] = set()
        self.power: dict[str, tuple[float, float]] = {}  # "host/sensor" -> (watts, when)

    async def _announce(self, bus: Bus) -> None:
        for route in self.snapshot():
            for topic, cfg in route_discovery(route):
                await bus.publish(topic, orjson.dumps(cfg), retain=True)
        self._announced.clear()
        self._last.clear()  # and the state again

    def power_of(self, sensor: str | None) -> float | None:
        """A live GPU power reading (W), if the bridge sent a fresh one."""
        if sensor is None:
            return None
        found = self.power.get(sensor)
        if found is None or time.monotonic() - found[1] > POWER_FRESH:
            return None
        return found[0]

    async def _read_power(self) -> None:
        async for msg in self.bus.messages():
            host = msg.topic.split("/")[2] if msg.topic.count("/") == 3 else None
            try:
                state = orjson.loads(msg.payload)
            except orjson.JSONDecodeError:
                continue
            if host is None or not isinstance(state, dict):
                continue
            for key, value in state.items():
                if key.endswith("_power") and isinstance(value, int | float) and 0 <= value < 100_000:
                    self.power[f"{host}/{key}"] = (float(value), time.monotonic())
            while len(self.power) > 4096:  # hosts and GPUs come from outside: bounded
                del self.power[next(iter(self.power))]

    async def publish_state(self) -> None:
        for client, today in self.clients().items():
            if client not in self._announced:
                self._announced.add(client)
                for topic, cfg in client_discovery(client):
                    await self.bus.publish(topic, orjson.dumps(cfg), retain=True)
            payload = orjson.dumps({"requests": int(today["requests"]), "energy_wh": round(today["energy_wh"], 4)})
            if self._last.get(f"client:{client}") != payload:
                self._last[f"client:{client}"] = payload
                await self.bus.publish(client_topic(client), payload, retain=True)
        for route, state in self.snapshot().items():
            payload = orjson.dumps({k: state[k] for k in ("healthy", "in_flight", "max_concurrency", "saturated",
                                                           "drained", "poisoned", "circuit", "last_error")})
            if self._last.get(route) != payload:
                self._last[route] = payload
                await self.bus.publish(route_topic(route), payload, retain=True)

    async def poisoned(self, route: str, detail: str) -> None:
        """For the watchdog: a CUDA-poisoned route, at once."""
        await self.bus.publish(EVENTS, orjson.dumps({"route": route, "kind": "cuda_poisoned", "detail": detail}))
        await self.publish_state()

    async def run(self) -> None:
        async with self.bus, asyncio.TaskGroup() as tg:
            tg.create_task(self._read_power(), name="router-power-readings")
            await every(self.interval, self.publish_state, "router state on MQTT")


def snapshot_of(states: Callable[[], dict[str, RouteState]],
                caps: Callable[[], dict[str, int]]) -> Callable[[], dict[str, dict[str, Any]]]:
    def snap() -> dict[str, dict[str, Any]]:
        c = caps()
        return {n: st.snapshot(c[n]) for n, st in states().items() if n in c}

    return snap
