"""The latest image ring-mqtt published per snapshot topic, for a bounded time and number of topics: a
Ring event's snapshot (ring-mqtt publishes one on each ding and motion)."""

from __future__ import annotations

import asyncio
import time

from services.vision_notifier.snapshot import SnapshotError

RING_IMAGE_TTL = 600.0  # an older ring-mqtt image describes nothing that happens now
RING_IMAGE_TOPICS = 64  # doorbells and cameras of one home, with room to spare


class RingImages:
    def __init__(self) -> None:
        self.images: dict[str, tuple[float, bytes]] = {}
        self.arrived = asyncio.Condition()

    async def on_image(self, topic: str, payload: bytes) -> None:
        """Keep the newest image of ``topic`` (older and surplus topics go)."""
        async with self.arrived:
            now = time.time()
            images = self.images
            images.pop(topic, None)
            images[topic] = (now, payload)  # newest last
            for old in [t for t, (at, _) in images.items() if now - at > RING_IMAGE_TTL]:
                del images[old]
            while len(images) > RING_IMAGE_TOPICS:
                del images[next(iter(images))]
            self.arrived.notify_all()

    async def get(self, topic: str, since: float, wait: float) -> bytes:
        """An image of ``topic`` from around ``since``, waiting up to ``wait`` seconds for one to arrive."""
        def fresh() -> bool:
            got = self.images.get(topic)
            return got is not None and got[0] >= since - 5

        async with self.arrived:
            try:
                async with asyncio.timeout(wait):
                    await self.arrived.wait_for(fresh)
            except TimeoutError:
                pass
        got = self.images.get(topic)
        if got is None:
            raise SnapshotError(f"no image on {topic}")
        return got[1]
