"""Server-sent events: the one parser for every API the router relays (chat, Responses).

Events are split on a blank line (``\\r\\n`` folded to ``\\n``); ``data:`` lines are joined; a
comment-only event (``: ping``) has no data.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import orjson

from services.router.outcomes import UpstreamFault


def sse_data(event: bytes) -> bytes | None:
    """The data of one SSE event (lines joined), or None for a comment-only event."""
    if event.startswith(b"data: ") and b"\n" not in event:
        return event[6:]  # the common case: one ``data: `` line
    data = [line[5:].lstrip(b" ") for line in event.splitlines() if line.startswith(b"data:")]
    return b"\n".join(data) if data else None


def with_data(batch: list[bytes]) -> Iterator[tuple[bytes, bytes]]:
    """``(event, data)`` for each event of a batch that carries data (``[DONE]`` included), in order."""
    for ev in batch:
        data = sse_data(ev)
        if data is not None:
            yield ev, data


class SSEBuffer:
    """Bytes in any pieces → complete events."""

    __slots__ = ("buf",)

    def __init__(self) -> None:
        self.buf = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        buf = self.buf + chunk
        if b"\r" in buf:
            buf = buf.replace(b"\r\n", b"\n")
        idx = buf.rfind(b"\n\n")
        if idx < 0:
            self.buf = buf
            return []
        head, self.buf = buf[:idx], buf[idx + 2:]
        return [ev.lstrip(b"\n") for ev in head.split(b"\n\n") if ev.strip(b"\n")]

    @property
    def partial(self) -> bool:
        """An event has started but not ended."""
        return bool(self.buf.strip())


class SSEReader:
    """Reads an upstream's SSE body and hands out every complete event.

    One read can carry many events: they are parsed and relayed as one batch (one write to the client).
    """

    __slots__ = ("buffer", "content")

    def __init__(self, content: aiohttp.StreamReader) -> None:
        self.content = content
        self.buffer = SSEBuffer()

    async def batch(self) -> list[bytes] | None:
        """The complete events available now (at least one), or None at a clean end of the stream."""
        while True:
            chunk = await self.content.readany()
            if not chunk:
                if self.buffer.partial:
                    raise UpstreamFault("stream_cut", "stream ended inside an event")
                return None
            events = self.buffer.feed(chunk)
            if events:
                return events


def join(events: list[bytes]) -> bytes:
    """Events back to wire bytes."""
    return b"\n\n".join(events) + b"\n\n" if events else b""


class ChatStreamTranslator(ABC):
    """Chat Completions SSE in (any split), another API's event stream out. Subclasses say what one
    chunk, the end and a failure become; the SSE reading, the order and the ending are here: a stream
    that stops without ``[DONE]`` or an error event ends with a failure, never a silent cut."""

    def __init__(self) -> None:
        self.ended = False
        self._sse = SSEBuffer()

    @abstractmethod
    def feed(self, chunk: dict[str, Any]) -> list[bytes]:
        """One chat chunk → the events it becomes."""

    @abstractmethod
    def done(self) -> list[bytes]:
        """The chat stream ended well → the closing events."""

    @abstractmethod
    def failed(self, error: dict[str, Any]) -> list[bytes]:
        """The chat stream ended with an error → the API's failure events."""

    def feed_bytes(self, piece: bytes) -> bytes:
        out: list[bytes] = []
        for ev in self._sse.feed(piece):
            data = sse_data(ev)
            if data is None or self.ended:
                continue
            if data == b"[DONE]":
                out += self.done()
                continue
            try:
                chunk = orjson.loads(data)
            except orjson.JSONDecodeError:
                continue
            if isinstance(chunk, dict) and isinstance(chunk.get("error"), dict):
                out += self.failed(chunk["error"])
            elif isinstance(chunk, dict):
                out += self.feed(chunk)
        return b"".join(out)

    async def translate(self, chat_sse: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        async for piece in chat_sse:
            out = self.feed_bytes(piece)
            if out:
                yield out
        if not self.ended:
            yield b"".join(self.failed({"message": "the answer was cut off", "code": "upstream_stream_failed"}))
