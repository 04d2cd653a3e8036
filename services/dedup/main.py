"""dedup's I/O: raw events in, unique events out, counters on homelab/dedup/stats."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import orjson

from services.dedup.core import Deduper, DedupStore
from shared import topics
from shared.bus import Bus
from shared.messages import CameraEvent
from shared.service import Validations
from shared.settings import Settings

SERVICE = "dedup"
STATS = "homelab/dedup/stats"
log = logging.getLogger("homelab.dedup")


async def main(settings: Settings) -> None:
    store = DedupStore(settings.state_dir / "dedup.sqlite3")
    dedup = Deduper(store, settings.dedup)
    validations = Validations(settings, SERVICE)
    dedup.prune(time.time())
    try:
        async with Bus(settings.mqtt_url, SERVICE, shared=[topics.RAW], split=settings.shared_subscriptions,
                       state_dir=settings.state_dir,
                       confirm=(topics.UNIQUE,)) as bus:
            for event_id, payload in dedup.unsent():
                log.info("resending %s: decided before a restart, never acknowledged", event_id)
                _when_sent(dedup, event_id, await bus.publish(topics.UNIQUE, payload))
            try:
                await _loop(bus, dedup, validations)
            finally:
                await _drain(bus, dedup, validations)
    finally:
        store.close()


def _when_sent(dedup: Deduper, event_id: str, acked: asyncio.Future[None]) -> None:
    def done(f: asyncio.Future[None]) -> None:
        if not f.cancelled() and f.exception() is None:
            dedup.sent(event_id)

    acked.add_done_callback(done)


async def _handle(bus: Bus, dedup: Deduper, validations: Validations, topic: str, payload: bytes) -> None:
    """One raw event; never raises (a payload that breaks the decision is logged and skipped)."""
    ev = validations.decode(CameraEvent, topic, payload)
    if ev is None:
        return
    try:
        d = dedup.decide(ev, time.time())
    except Exception as exc:  # the store refused it: this event is skipped, the service goes on
        log.exception("dedup could not decide %s", ev.event_id)
        validations.invalid(topic, payload, f"{type(exc).__name__}: {exc}")
        return
    if d.verdict == "forward":
        _when_sent(dedup, ev.event_id, await bus.publish(topics.UNIQUE, ev))
        log.info("unique %s camera=%s kind=%s source=%s trace=%s", ev.event_id, ev.camera, ev.kind, ev.source,
                 ev.trace_id)
    else:
        log.info("%s %s (camera=%s kind=%s source=%s)%s trace=%s", d.verdict, ev.event_id, ev.camera, ev.kind,
                 ev.source, f" into {d.merged_into}" if d.merged_into else "", ev.trace_id)
    if sum(dedup.counts.values()) % 50 == 1:
        await bus.publish(STATS, orjson.dumps(dedup.counts), retain=True)


async def _loop(bus: Bus, dedup: Deduper, validations: Validations) -> None:
    async for msg in bus.messages():
        await _handle(bus, dedup, validations, msg.topic, msg.payload)


async def _drain(bus: Bus, dedup: Deduper, validations: Validations) -> None:
    """On shutdown: handle what was already received (the broker acked it to us) before leaving."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(3):
            for msg in bus.take_received():
                await _handle(bus, dedup, validations, msg.topic, msg.payload)
    await bus.publish(STATS, orjson.dumps(dedup.counts), retain=True)
