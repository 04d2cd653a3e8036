"""A simulated Frigate HTTP API: snapshots for any event id, 404 while "in progress" if asked.

For the embedded default (``homelab up`` starts one on :5000 when no Frigate is configured) and tests.
"""

from __future__ import annotations

import asyncio
import io

from aiohttp import web
from PIL import Image, ImageDraw

from services.sim_upstream.http import serve


def sample_jpeg(width: int = 1920, height: int = 1080, label: str = "homelab sim-frigate") -> bytes:
    im = Image.new("RGB", (width, height), (90, 120, 160))
    draw = ImageDraw.Draw(im)
    draw.rectangle((width // 2 - 120, height // 2 - 300, width // 2 + 120, height // 2 + 300), fill=(200, 170, 140))
    draw.text((40, 40), label, fill=(255, 255, 255))
    out = io.BytesIO()
    im.save(out, format="JPEG", quality=80)
    return out.getvalue()


class SimFrigate:
    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host, self.port = host, port
        self.missing_for = 0  # answer 404 this many times first (-1: forever)
        self.body = sample_jpeg()
        self.requests = 0
        self.piece: int | None = None  # send the JPEG in pieces of this many bytes (a real network's pace)
        self.pause = 0.0  # seconds between pieces
        self.truncate_at: int | None = None  # announce the whole length, hang up after this many bytes
        self.app = web.Application()
        self.app.router.add_get("/api/events/{event_id}/snapshot.jpg", self._snapshot)
        self.app.router.add_get("/api/events/{event_id}/thumbnail.jpg", self._snapshot)
        self.app.router.add_get("/api/version", self._version)
        self.runner: web.AppRunner | None = None

    async def start(self) -> None:
        self.runner, self.port = await serve(self.app, self.host, self.port)

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def _version(self, request: web.Request) -> web.Response:
        return web.Response(text="0.17.0-sim")

    async def _snapshot(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        if self.missing_for != 0:
            if self.missing_for > 0:
                self.missing_for -= 1
            return web.json_response({"success": False, "message": "Event not found"}, status=404)
        if self.piece is None and self.truncate_at is None:
            return web.Response(body=self.body, content_type="image/jpeg")
        resp = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        resp.content_length = len(self.body)
        await resp.prepare(request)
        end = len(self.body) if self.truncate_at is None else self.truncate_at
        step = self.piece or end
        for i in range(0, end, step):
            await resp.write(self.body[i:min(i + step, end)])
            if self.pause:
                await asyncio.sleep(self.pause)
        if self.truncate_at is not None:
            assert request.transport is not None
            request.transport.close()
            return resp
        await resp.write_eof()
        return resp
