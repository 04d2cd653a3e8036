"""netdata_bridge's I/O: poll every interval; re-announce when Home Assistant says online."""

from __future__ import annotations

import asyncio
import logging
import random

import aiohttp

from services.netdata_bridge.bridge import SERVICE, Bridge
from shared import topics
from shared.bus import Bus
from shared.service import every
from shared.settings import Settings

log = logging.getLogger("homelab.netdata_bridge")


async def main(settings: Settings) -> None:
    if not settings.netdata_url:
        log.warning("netdata_bridge: HOMELAB_NETDATA_URL is not set; nothing to bridge")
        await asyncio.Event().wait()
    assert settings.netdata_url is not None
    async with aiohttp.ClientSession() as session, \
            Bus(settings.mqtt_url, SERVICE, subscribe=[topics.HA_STATUS]) as bus:
        bridge = Bridge(settings.netdata, settings.netdata_url, bus, session,
                        settings.state_dir / "netdata_bridge.json")

        async with asyncio.TaskGroup() as tg:
            tg.create_task(every(settings.netdata.interval, bridge.cycle, "netdata cycle"), name="netdata-poll")
            async for msg in bus.messages():
                if msg.topic == topics.HA_STATUS and msg.payload == b"online":
                    await asyncio.sleep(random.uniform(0.5, 2.0))
                    await bridge.announce_all()
                    await bridge.cycle()
