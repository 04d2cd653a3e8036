"""Each camera's snooze: set in Home Assistant (a push's snooze button, the dashboard's cancel button) on
the retained ``homelab/cameras/<camera>/snooze/set``, kept in the notifier's SQLite (so it holds even if
the broker forgets), shown back on the retained ``homelab/cameras/<camera>/snooze`` for the dashboard,
and ended on time. Cameras are keyed by their object id, as in their topics."""

from __future__ import annotations

import asyncio
import logging
import time

import orjson

from services.vision_notifier.ha import camera_topics
from services.vision_notifier.store import NotifierStore
from shared.bus import Bus
from shared.ha import object_id
from shared.messages import SnoozeSet

MAX_SNOOZE = 30 * 86400.0  # a snooze set further ahead ends after 30 days (a typo must not mute a camera for good)
log = logging.getLogger("homelab.vision_notifier")


class Snoozes:
    def __init__(self, store: NotifierStore, bus: Bus) -> None:
        self.store = store
        self.bus = bus
        self.until: dict[str, tuple[float, str | None]] = store.snoozes()  # camera -> (until, by)
        self._expiries: dict[str, asyncio.Task[None]] = {}

    def active(self, camera: str) -> tuple[float, str | None] | None:
        """(until, by) while ``camera`` (its name as events carry it) is snoozed, else None."""
        got = self.until.get(object_id(camera))
        return got if got is not None and got[0] > time.time() else None

    async def on_set(self, camera: str, msg: SnoozeSet) -> None:
        """A snooze set (or cancelled) from Home Assistant: kept, shown back, and ended on time. A request
        past the cap gets its capped end once, when it first arrives; read back again at a start (it is
        retained) it keeps that end, so a capped snooze ends however often the notifier restarts."""
        now = time.time()
        asked = self.store.snooze_ask(camera)
        if asked is not None and asked[:2] == (msg.until, msg.by) and msg.until > 0:
            # the retained request read back at a start (or repeated): its end was set when it first came
            until = asked[2] if asked[2] > now else 0.0
        else:
            until = min(msg.until, now + MAX_SNOOZE) if msg.until > now else 0.0
            self.store.ask_snooze(camera, msg.until if until else 0.0, msg.by, until)
        if self.until.get(camera, (0.0, None))[0] == until and (camera in self._expiries or not until):
            return  # nothing new
        self.store.snooze(camera, until, msg.by)
        if until:
            self.until[camera] = (until, msg.by)
            log.info("camera %s snoozed until %s (by %s)", camera, time.strftime("%H:%M:%S", time.localtime(until)),
                     msg.by or "?")
        elif self.until.pop(camera, None) is not None:
            log.info("camera %s: snooze cancelled (by %s)", camera, msg.by or "?")
        await self.show(camera)

    async def show_all(self) -> None:
        """At start: every stored snooze back on its retained topic, each with its end scheduled."""
        for camera in list(self.until):
            await self.show(camera)

    async def announce(self, camera: str) -> None:
        """A camera just announced to HA: its snooze shows "off" rather than unknown."""
        if camera not in self.until:
            await self.show(camera)

    async def show(self, camera: str) -> None:
        until, by = self.until.get(camera, (0.0, None))
        active = until > time.time()
        if not active:
            self.until.pop(camera, None)
            self.store.snooze(camera, 0, None)
        await self.bus.publish(camera_topics(camera)["snooze"], orjson.dumps(
            {"snoozed": active, "until": until if active else None, "by": by if active else None}), retain=True)
        old = self._expiries.pop(camera, None)
        if old is not None and old is not asyncio.current_task():
            old.cancel()
        if active:
            self._expiries[camera] = asyncio.create_task(self._expire(camera, until), name=f"snooze-{camera}")

    async def _expire(self, camera: str, until: float) -> None:
        await asyncio.sleep(max(0.0, until - time.time()) + 0.05)
        log.info("camera %s: snooze ended", camera)
        await self.show(camera)
