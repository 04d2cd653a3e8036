"""ring_listener's I/O: three independent triggers feeding homelab/camera/event/raw.

(a) realtime push through ring-doorbell (needs a cached token), (b) ring-mqtt topics, (c) polled
history. Any subset works; with no token it runs on ring-mqtt alone and says so once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from ring_doorbell import Auth, Ring, RingEvent

from services.ring_listener.handlers import HistoryItem, RingDevices, RingMqttIngest, from_history, from_push
from services.ring_listener.push import GuardedEventListener, to_push_ding
from shared import topics
from shared.bus import Bus
from shared.messages import CameraEvent
from shared.service import Validations
from shared.settings import Settings

SERVICE = "ring_listener"
USER_AGENT = "homelab-ring-listener/0.1"
log = logging.getLogger("homelab.ring_listener")

HistorySource = Callable[[], Awaitable[list[HistoryItem]]]


def _load_json(path: Path) -> dict[str, Any] | None:
    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _save_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(orjson.dumps(data))
    os.chmod(tmp, 0o600)
    tmp.replace(path)


class RingListener:
    def __init__(self, settings: Settings, bus: Bus, validations: Validations,
                 history: HistorySource | None = None, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.cfg = settings.ring
        self.bus = bus
        self.validations = validations
        self.clock = clock
        self.devices = RingDevices(self.cfg)
        self.mqtt = RingMqttIngest(self.cfg, self.devices)
        self.history = history
        self._pushed: asyncio.Queue[RingEvent] = asyncio.Queue()
        self._polled: set[str] = set()
        self.push_restarts = 0

    async def emit(self, ev: CameraEvent | None) -> None:
        if ev is not None:
            log.info("ring %s from %s camera=%s kind=%s trace=%s", ev.event_id, ev.source, ev.camera, ev.kind,
                     ev.trace_id)
            await self.bus.publish(topics.RAW, ev)

    # (b) ring-mqtt
    async def on_mqtt(self, topic: str, payload: bytes) -> None:
        if topic.startswith("homeassistant/"):
            self.devices.on_discovery(payload)  # ring-mqtt's discovery: a device's name
            return
        try:
            ev = self.mqtt.on_message(topic, payload, self.clock())
        except ValueError as exc:
            self.validations.invalid(topic, payload, str(exc))
            return
        await self.emit(ev)

    # (a) push: the library calls back synchronously; the queue hands events to our task
    def on_push(self, ev: RingEvent) -> None:
        self._pushed.put_nowait(ev)

    def on_push_error(self, notification: Any, exc: Exception) -> None:
        raw = orjson.dumps(notification, default=str)
        self.validations.invalid("ring/push", raw, f"{type(exc).__name__}: {exc}")

    async def push_events(self) -> None:
        while True:
            ev = await self._pushed.get()
            try:
                out = from_push(to_push_ding(ev), self.cfg, self.clock(), self.devices)
            except (TypeError, ValueError, AttributeError) as exc:
                self.validations.invalid("ring/push", str(ev).encode(), f"{type(exc).__name__}: {exc}")
                continue
            await self.emit(out)

    async def run_push(self, ring: Ring) -> None:
        """Keep a push listener alive: restart with capped backoff whenever its receiver dies."""
        fcm_file = self.settings.state_dir / "ring_fcm_credentials.json"
        delay = 1.0
        while True:
            listener = GuardedEventListener(ring, _load_json(fcm_file), lambda c: _save_json(fcm_file, c),
                                            on_error=self.on_push_error)
            listener.add_notification_callback(self.on_push)
            try:
                started = await listener.start()
            except Exception as exc:  # network, auth: logged, retried with backoff
                log.warning("ring push listener failed to start: %s", exc)
                started = False
            if started:
                delay = 1.0
                log.info("ring push listener started")
                while listener.receiver_alive():  # noqa: ASYNC110 - the library offers no event
                    await asyncio.sleep(5)
                log.warning("ring push receiver stopped; restarting the listener")
            with contextlib.suppress(Exception):
                await listener.stop()
            self.push_restarts += 1
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, 300.0)

    # (c) polled history
    async def poll_once(self) -> None:
        assert self.history is not None
        items = await self.history()
        now = self.clock()
        for item in items:
            key = str(item.id)
            if key in self._polled:
                continue
            self._polled.add(key)
            await self.emit(from_history(item, self.cfg, now))
        if len(self._polled) > 10_000:
            self._polled = set(list(self._polled)[-5_000:])

    async def run_poll(self) -> None:
        while True:
            try:
                await self.poll_once()
            except Exception as exc:  # the cloud being away must not stop the other triggers
                log.warning("ring history poll failed: %s", exc)
            await asyncio.sleep(self.cfg.poll_interval)


def ring_history(ring: Ring) -> HistorySource:
    async def fetch() -> list[HistoryItem]:
        await ring.async_update_data()
        out = []
        for dev in ring.devices().video_devices:
            for h in await dev.async_history(limit=10):
                created: Any = h.get("created_at")
                ts = created.timestamp() if isinstance(created, datetime) else float(created or 0)
                out.append(HistoryItem(id=h["id"], doorbot_id=dev.id, device_name=dev.name,
                                       kind=str(h.get("kind", "")), created_at=ts))
        return out

    return fetch


def ring_client(settings: Settings) -> Ring | None:
    path = settings.ring.token_file
    token = _load_json(path) if path else None
    if not token or path is None:
        return None
    auth = Auth(USER_AGENT, token, lambda t: _save_json(path, t))
    return Ring(auth)


async def main(settings: Settings) -> None:
    validations = Validations(settings, SERVICE)
    ring = ring_client(settings)
    # ring-mqtt's own topics, and its Home Assistant discovery (homeassistant/<type>/<location>/<id>/config):
    # the names that join its device ids to the push's
    subs = [f"{settings.ring.mqtt_prefix}/#", "homeassistant/+/+/+/config"] if settings.ring.mqtt_prefix else []
    if ring is None:
        log.warning("ring_listener: no Ring token (ring.token_file); running on the ring-mqtt trigger alone")
    async with Bus(settings.mqtt_url, SERVICE, subscribe=subs, state_dir=settings.state_dir) as bus:
        rl = RingListener(settings, bus, validations, ring_history(ring) if ring else None)
        async with asyncio.TaskGroup() as tg:
            if ring is not None:
                tg.create_task(rl.push_events(), name="ring-push-events")
                tg.create_task(rl.run_push(ring), name="ring-push")
                if settings.ring.poll_interval > 0:
                    tg.create_task(rl.run_poll(), name="ring-poll")
            async for msg in bus.messages():
                with validations.guard(msg.topic, msg.payload):
                    await rl.on_mqtt(msg.topic, msg.payload)
