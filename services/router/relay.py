"""Relaying a stream to the client: what the relay has seen of it, and the upstream pool kept healthy.

A departed client stops the relay at once; a finished stream gives its upstream connection back
to the pool; a stream cut short closes it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from services.router.outcomes import ErrorBody, UpstreamFault
from services.router.sse import with_data


class RelayResponse(StreamingResponse):
    """A relayed stream: a departed client stops the relay at once, and ``on_close`` always runs (even
    if the client left before the first byte).

    Starlette's StreamingResponse runs an anyio task group per response on ASGI < 2.4 (uvicorn says
    2.3); one plain watcher task does the same job for a fraction of the cost.
    """

    def __init__(self, content: AsyncIterator[bytes], on_close: Callable[[], None],
                 headers: dict[str, str]) -> None:
        super().__init__(content, media_type="text/event-stream", headers=headers)
        self._on_close = on_close
        self._content = content

    def rewrap(self, transform: Callable[[AsyncIterator[bytes]], AsyncIterator[bytes]]) -> RelayResponse:
        """The same relay (slot, upstream connection, disconnect handling) with its bytes transformed."""
        return RelayResponse(transform(self._content), self._on_close,
                             {k: v for k, v in self.headers.items()
                              if k.lower().startswith("x-") or k.lower() == "cache-control"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        me = asyncio.current_task()
        gone = False

        async def watch() -> None:
            nonlocal gone
            while (await receive())["type"] != "http.disconnect":
                pass
            gone = True
            if me is not None:
                me.cancel()  # the relay is waiting on the upstream: stop it now, not at its next chunk

        watcher = asyncio.get_running_loop().create_task(watch())
        iterator = self.body_iterator
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            async for chunk in iterator:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not gone or me is None:
                raise
            me.uncancel()
        except OSError:
            pass  # the client went away while we wrote
        finally:
            watcher.cancel()
            if hasattr(iterator, "aclose"):
                await iterator.aclose()
            self._on_close()


_DRAINS: set[asyncio.Task[None]] = set()


def done_with(resp: aiohttp.ClientResponse, finished: bool = True) -> None:
    """Give a finished stream's connection back to the pool (keep-alive); close one cut short.

    After ``[DONE]`` a chunked body's last empty chunk may still be on its way: read it in the
    background (briefly) so the connection can be reused, instead of paying a new one next time.
    """
    if resp.content.at_eof():
        resp.release()
    elif not finished or resp.closed:
        resp.close()
    else:
        task = asyncio.get_running_loop().create_task(_drain(resp))
        _DRAINS.add(task)
        task.add_done_callback(_DRAINS.discard)


async def _drain(resp: aiohttp.ClientResponse) -> None:
    try:
        async with asyncio.timeout(1.0):
            while await resp.content.readany():
                pass
        resp.release()
    except (TimeoutError, aiohttp.ClientError, OSError):
        resp.close()


@dataclass(slots=True)
class StreamTrack:
    """What the relay has seen of a stream: enough to continue it elsewhere."""

    text: list[str] = field(default_factory=list)
    finished: bool = False
    tool_calls: bool = False
    chunk_id: str | None = None
    usage: dict[str, Any] | None = None
    native: str | None = None  # "responses" / "messages": a native route's own event stream, not chat chunks

    def feed(self, data: bytes) -> dict[str, Any]:
        """Parse one data payload (and return it); raise UpstreamFault if malformed or an in-band error."""
        try:
            ev = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise UpstreamFault("malformed_chunk", f"not JSON: {data[:80]!r}") from exc
        if not isinstance(ev, dict):
            raise UpstreamFault("malformed_chunk", "chunk is not an object")
        try:
            if self.native == "messages":
                self._feed_anthropic(ev, data)
            elif self.native:
                self._feed_native(ev, data)
            else:
                self._feed_chat(ev, data)
        except (AttributeError, TypeError) as exc:  # a chunk of the wrong shape
            raise UpstreamFault("malformed_chunk", f"{type(exc).__name__}: {exc}") from exc
        return ev

    def _feed_chat(self, ev: dict[str, Any], data: bytes) -> None:
        if "error" in ev:
            raise UpstreamFault("stream_error", ErrorBody.of_object(ev, data).text)
        if self.chunk_id is None and isinstance(ev.get("id"), str):
            self.chunk_id = ev["id"]
        usage = ev.get("usage")
        if isinstance(usage, dict):
            self.usage = usage
        for choice in ev.get("choices") or ():
            delta = choice.get("delta") or {}
            content = delta.get("content")
            if content and isinstance(content, str):
                self.text.append(content)
            if delta.get("tool_calls"):
                self.tool_calls = True
            if choice.get("finish_reason"):
                self.finished = True

    def _feed_native(self, ev: dict[str, Any], data: bytes) -> None:
        kind = ev.get("type")
        if kind in ("error", "response.failed"):
            err = ev.get("message") or ((ev.get("response") or {}).get("error") or {}).get("message")
            raise UpstreamFault("stream_error", str(err or data[:200]))
        if kind == "response.output_text.delta":
            self.text.append(str(ev.get("delta") or ""))
        elif kind == "response.output_item.added" and (ev.get("item") or {}).get("type") == "function_call":
            self.tool_calls = True
        elif kind in ("response.completed", "response.incomplete"):
            self.finished = True
            usage = (ev.get("response") or {}).get("usage")
            if isinstance(usage, dict):
                self.usage = usage

    def _feed_anthropic(self, ev: dict[str, Any], data: bytes) -> None:
        kind = ev.get("type")
        if kind == "error":
            err = ev.get("error")
            raise UpstreamFault("stream_error", str(err.get("message") if isinstance(err, dict) else data[:200]))
        if kind == "content_block_delta":
            delta = ev.get("delta") or {}
            if delta.get("type") == "text_delta" and isinstance(delta.get("text"), str):
                self.text.append(delta["text"])
        elif kind == "content_block_start" and (ev.get("content_block") or {}).get("type") == "tool_use":
            self.tool_calls = True
        elif kind == "message_delta" and isinstance(ev.get("usage"), dict):
            self.usage = ev["usage"]
        elif kind == "message_stop":
            self.finished = True

    @property
    def deltas(self) -> int:
        """Content deltas seen (engines stream about one token per delta)."""
        return len(self.text)

    @property
    def has_output(self) -> bool:
        return bool(self.text) or self.tool_calls or self.finished


def consume(track: StreamTrack, batch: list[bytes]) -> tuple[list[bytes], bool, UpstreamFault | None]:
    """Feed a batch to the tracker: (events to relay, [DONE] seen, the fault that stopped it)."""
    out: list[bytes] = []
    for ev, data in with_data(batch):
        if data == b"[DONE]":
            return out, True, None
        try:
            track.feed(data)
        except UpstreamFault as exc:
            return out, False, exc
        out.append(ev)
    return out, False, None
