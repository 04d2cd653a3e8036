"""The notifier's delivery channels (text, rich, clear, timeline): each push published on its own, with
its own timeout and retries, and exactly one copy: a retry waits for the copy still queued or in flight
(a broker outage) and queues a new one only when the last was lost; a push queued during an outage is
still delivered when the broker is back, and then it is on the record as sent."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from services.vision_notifier.announcer import Announcer
from services.vision_notifier.ha import camera_topics
from services.vision_notifier.store import NotifierStore
from services.vision_notifier.triage import event_type
from shared import topics
from shared.bus import Bus
from shared.messages import CameraEvent
from shared.settings import NotifierSettings

log = logging.getLogger("homelab.vision_notifier")

# a channel's port: queues the push and returns the broker's acknowledgement to wait on (None: it is done)
Send = Callable[[CameraEvent, dict[str, Any]], Awaitable["asyncio.Future[None] | None"]]


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 1)


class Channels:
    def __init__(self, bus: Bus, store: NotifierStore, cfg: NotifierSettings, ha: Announcer) -> None:
        self.bus = bus
        self.store = store
        self.cfg = cfg
        self.ha = ha

    async def deliver(self, name: str, ev: CameraEvent, payload: dict[str, Any], send: Send,
                      already_sent: set[str], jpeg: bytes | None = None) -> dict[str, Any]:
        """One push on one channel, with its own timeout and retries — and exactly one copy: a retry waits
        for the copy still queued or in flight (a broker outage), and queues a new one only when the last
        one was lost. A push queued during an outage is still delivered when the broker is back."""
        if name in already_sent:
            return {"ok": True, "resumed": True}
        t0 = time.perf_counter()
        err = ""
        acked: asyncio.Future[None] | None = None
        for attempt in range(self.cfg.channel_retries + 1):
            try:
                async with asyncio.timeout(self.cfg.channel_timeout):
                    if acked is None:
                        if jpeg is not None:
                            await self._publish_image(ev, jpeg)
                            jpeg = None  # the image went out; a retry resends only the push
                        acked = await send(ev, payload)
                    if acked is not None:
                        await asyncio.shield(acked)
                self.store.mark_sent(ev.event_id, name)
                return {"ok": True, "ms": _ms(t0), "attempts": attempt + 1}
            except TimeoutError:
                err = f"timeout after {self.cfg.channel_timeout:g}s"  # the copy stays queued: wait on it again
            except Exception as exc:  # a channel's failure is recorded, never propagated to the others
                err = f"{type(exc).__name__}: {exc}"
                acked = None  # that copy is lost: the next attempt sends a new one
            log.warning("event %s: %s channel attempt %d failed: %s", ev.event_id, name, attempt + 1, err)
            await asyncio.sleep(min(0.2 * 2**attempt, 2.0))
        if acked is not None and not acked.done():
            acked.add_done_callback(functools.partial(self._late, event_id=ev.event_id, name=name))
        return {"ok": False, "ms": _ms(t0), "error": err, **({"queued": True} if acked is not None else {})}

    def _late(self, acked: asyncio.Future[None], *, event_id: str, name: str) -> None:
        """A push given up on but still queued reached the broker after all: on the record as sent."""
        if not acked.cancelled() and acked.exception() is None:
            log.info("event %s: %s push delivered after the broker came back", event_id, name)
            self.store.mark_sent(event_id, name)

    async def text(self, ev: CameraEvent, payload: dict[str, Any]) -> asyncio.Future[None]:
        return await self.bus.publish(topics.NOTIFY_TEXT, orjson.dumps(payload))

    async def clear(self, ev: CameraEvent, payload: dict[str, Any]) -> asyncio.Future[None]:
        return await self.bus.publish(topics.NOTIFY_CLEAR, orjson.dumps(payload))

    async def rich(self, ev: CameraEvent, payload: dict[str, Any]) -> asyncio.Future[None]:
        await self.ha.settled(ev.camera)
        t = camera_topics(ev.camera)
        state = {"event_type": event_type(ev), "event_id": ev.event_id, "trace_id": ev.trace_id,
                 "title": payload["title"], "description": payload["description"], "degraded": payload["degraded"]}
        await self.bus.publish(t["event"], orjson.dumps(state))
        await self.bus.publish(t["last"], orjson.dumps({**state, "at": ev.started_at}), retain=True)
        return await self.bus.publish(topics.NOTIFY_RICH, orjson.dumps(payload))

    async def _publish_image(self, ev: CameraEvent, jpeg: bytes) -> None:
        await self.ha.settled(ev.camera)
        await self.bus.publish(camera_topics(ev.camera)["image"], jpeg, retain=True)

    async def timeline(self, ev: CameraEvent, record: dict[str, Any]) -> asyncio.Future[None]:
        return await self.bus.publish(topics.TIMELINE, orjson.dumps(record))
