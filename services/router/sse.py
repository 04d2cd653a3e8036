"""Server-sent events: the one parser for every API the router relays (chat, Responses).

Events are split on a blank line (``\\r\\n`` folded to ``\\n``); ``data:`` lines are joined; a
comment-only event (``: ping``) has no data.
"""

from __future__ import annotations

from collections.abc import Iterator

import aiohttp

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
