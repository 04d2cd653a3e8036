"""Home Assistant learns each camera the notifier sees: its entities by discovery (once, and again when
HA comes back), and a moment's grace before their first state (HA ignores state for entities it has not
created yet)."""

from __future__ import annotations

import asyncio
import logging
import time

import orjson

from services.vision_notifier.ha import camera_discovery, camera_topics
from services.vision_notifier.snooze import Snoozes
from services.vision_notifier.store import NotifierStore
from shared.bus import Bus
from shared.ha import object_id

MAX_CAMERAS = 256  # cameras given Home Assistant entities
log = logging.getLogger("homelab.vision_notifier")


class Announcer:
    def __init__(self, bus: Bus, store: NotifierStore, snoozes: Snoozes, state_delay: float) -> None:
        self.bus = bus
        self.store = store
        self.snoozes = snoozes
        self.state_delay = state_delay
        self.discovered: dict[str, float] = {}  # camera -> when its discovery went out
        self.cameras: dict[str, bool] = {}  # camera -> is a doorbell

    async def ensure(self, camera: str, doorbell: bool) -> None:
        """``camera`` announced (the first time it is seen)."""
        if camera in self.cameras:
            return
        if len(self.cameras) >= MAX_CAMERAS:
            # names come from outside: past a home's worth, a new name gets no entity (its events
            # still push and reach the timeline)
            log.warning("camera %r not announced to Home Assistant: %d cameras already", camera[:80], MAX_CAMERAS)
            return
        self.cameras[camera] = doorbell
        await self.announce(camera, doorbell)

    async def announce_all(self) -> None:
        for camera, doorbell in list(self.cameras.items()):
            await self.announce(camera, doorbell)

    async def announce(self, camera: str, doorbell: bool) -> None:
        for topic, config in camera_discovery(camera, doorbell):
            await self.bus.publish(topic, orjson.dumps(config), retain=True)
        self.discovered.setdefault(camera, time.monotonic())
        await self.snoozes.announce(object_id(camera))
        await self.bus.publish(camera_topics(camera)["faces"], orjson.dumps(
            {"held": self.store.face_holds(object_id(camera))}), retain=True)

    async def settled(self, camera: str) -> None:
        """Wait until HA has had time to create a new camera's entities."""
        since = self.discovered.get(camera)
        if since is not None:
            delay = since + self.state_delay - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
