"""A local HTTP server that serves snapshots the way Frigate's API does (404 while none exists)."""

from __future__ import annotations

import io

from aiohttp import web
from PIL import Image

from tests.harness import BackgroundLoop


def jpeg(width: int = 1920, height: int = 1080) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (90, 120, 160)).save(out, format="JPEG", quality=80)
    return out.getvalue()


class FakeFrigate:
    def __init__(self, bg: BackgroundLoop) -> None:
        self.bg = bg
        self.missing_for = 0  # answer 404 this many times first (-1: forever)
        self.body = jpeg()
        self.requests = 0
        app = web.Application()
        app.router.add_get("/api/events/{event_id}/snapshot.jpg", self._snapshot)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)

        async def start() -> int:
            await self.runner.setup()
            site = web.TCPSite(self.runner, "127.0.0.1", 0)
            await site.start()
            return int(self.runner.addresses[0][1])

        self.port = bg.run(start())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _snapshot(self, request: web.Request) -> web.Response:
        self.requests += 1
        if self.missing_for != 0:
            self.missing_for -= 1 if self.missing_for > 0 else 0
            return web.json_response({"success": False, "message": "Event not found"}, status=404)
        return web.Response(body=self.body, content_type="image/jpeg")

    def close(self) -> None:
        self.bg.run(self.runner.cleanup())
