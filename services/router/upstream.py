"""The wire to an engine: the body it is sent, its headers, the POST."""

from __future__ import annotations

import io
from typing import Any

import aiohttp
import orjson

from services.router.policy import Route
from services.router.request import JSON, Ctx
from services.router.tool_repair import request_changes

# aiohttp writes a bytes body in one go and warns past 1 MiB that it may hold the event loop; a file
# object is written in pieces.
LARGE_BODY = 1024 * 1024


def body(payload: bytes) -> bytes | io.BytesIO:
    return io.BytesIO(payload) if len(payload) >= LARGE_BODY else payload


def auth(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


class Upstream:
    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session

    @staticmethod
    def payload(ctx: Ctx, route: Route, extra: dict[str, Any] | None = None, max_tokens: int | None = None) -> bytes:
        """The body for ``route``: its own model name (and ``max_tokens`` when clamped); the client's
        own body for a native route."""
        if ctx.native(route) and not extra:
            assert ctx.original is not None
            native = {**ctx.original, "model": route.model}
            if max_tokens is not None:
                native["max_tokens"] = max_tokens
            return orjson.dumps(native)
        body = ctx.body
        if max_tokens is not None:
            extra = {**(extra or {}), "max_tokens": max_tokens}
        tool_changes = request_changes(ctx, route)
        if tool_changes:
            extra = {**(extra or {}), **tool_changes}
        if body.get("model") != route.model or extra:
            body = {**body, "model": route.model, **(extra or {})}
        if route.structured_output == "json_object":
            rf = body.get("response_format")
            if isinstance(rf, dict) and rf.get("type") == "json_schema":
                js = rf.get("json_schema")
                schema = js.get("schema") if isinstance(js, dict) else None
                if not isinstance(schema, dict):
                    schema = {"type": "object"}
                body = {**body, "response_format": {"type": "json_object", "schema": schema}}
        return orjson.dumps(body)

    @staticmethod
    def headers(route: Route) -> dict[str, str]:
        return {"Content-Type": JSON, **auth(route.api_key)}

    async def post_stream(self, route: Route, payload: bytes, url: str | None = None) -> aiohttp.ClientResponse:
        """POST for a streamed answer; the caller reads (and closes) the response."""
        # sock_read: aiohttp's per-read timeout is the stream idle timeout, at no cost per chunk
        return await self.session.post(
            url or route.chat_url, data=body(payload), headers=self.headers(route),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=route.connect_timeout,
                                          sock_read=route.stream_idle_timeout))

    async def post_json(self, route: Route, payload: bytes, url: str) -> tuple[int, bytes, str | None]:
        """POST for a whole answer: (status, body, Retry-After)."""
        async with self.session.post(url, data=body(payload), headers=self.headers(route),
                                     timeout=aiohttp.ClientTimeout(total=None,
                                                                   sock_connect=route.connect_timeout)) as resp:
            return resp.status, await resp.read(), resp.headers.get("Retry-After")
