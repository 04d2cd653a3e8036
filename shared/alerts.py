"""Operator alerts: Telegram first, Home Assistant (MQTT) when Telegram fails; neither is required."""

from __future__ import annotations

import asyncio
import logging
from typing import Literal

import httpx
import orjson

from shared.bus import Bus
from shared.settings import Settings

log = logging.getLogger("homelab.alerts")

Channel = Literal["telegram", "homeassistant", "none"]


class Alerter:
    def __init__(self, settings: Settings, bus: Bus | None, client: httpx.AsyncClient) -> None:
        self.cfg = settings.alerts
        self.token = settings.telegram_token.get_secret_value() if settings.telegram_token else None
        self.bus = bus
        self.client = client

    async def send(self, title: str, text: str, source: str) -> Channel:
        """Deliver one alert; returns the channel that took it."""
        if self.token and self.cfg.telegram_chat_id:
            try:
                r = await self.client.post(f"{self.cfg.telegram_api}/bot{self.token}/sendMessage",
                                           json={"chat_id": self.cfg.telegram_chat_id, "text": f"{title}\n{text}"},
                                           timeout=self.cfg.timeout)
                if r.status_code == 200 and r.json().get("ok"):
                    return "telegram"
                why = f"HTTP {r.status_code}"
            except (httpx.HTTPError, ValueError) as exc:
                why = type(exc).__name__  # the URL carries the token: never log the exception text
            log.warning("telegram alert failed (%s); falling back to Home Assistant", why)
        if self.bus is not None:
            try:
                async with asyncio.timeout(self.cfg.timeout):
                    await self.bus.publish(self.cfg.ha_topic, orjson.dumps(
                        {"title": title, "message": text, "source": source}), wait=True)
                return "homeassistant"
            except TimeoutError:
                log.error("home assistant alert not delivered within %ss", self.cfg.timeout)
        log.error("ALERT (no channel took it) %s: %s", title, text)
        return "none"
