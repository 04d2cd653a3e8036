"""netdata_bridge's I/O: poll every interval; re-announce when Home Assistant says online."""

from __future__ import annotations

import asyncio
import logging

import aiohttp

from services.netdata_bridge.bridge import SERVICE, Bridge
from shared.bus import Bus
from shared.service import every
from shared.settings import Settings

log = logging.getLogger("homelab.netdata_bridge")


async def main(settings: Settings) -> None:
    if not settings.netdata_url:
        log.warning("netdata_bridge: HOMELAB_NETDATA_URL is not set; nothing to bridge")
        await asyncio.Event().wait()
    assert settings.netdata_url is not None

    async def reannounce(_: Bus) -> None:
        await bridge.announce_all()
        await bridge.cycle()

    async with aiohttp.ClientSession() as session, \
            Bus(settings.mqtt_url, SERVICE, on_ha_online=reannounce, state_dir=settings.state_dir) as bus:
        bridge = Bridge(settings.netdata, settings.netdata_url, bus, session,
                        settings.state_dir / "netdata_bridge.json")
        await every(settings.netdata.interval, bridge.cycle, "netdata cycle")
