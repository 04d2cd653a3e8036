"""Getting the event's image: Frigate's HTTP API (retrying a brief 404) or ring-mqtt's snapshot topic;
only from configured hosts; decoded, downsized and re-encoded with Pillow."""

from __future__ import annotations

import asyncio
import io
from urllib.parse import urlsplit

import aiohttp
from PIL import Image, UnidentifiedImageError

from shared.settings import NotifierSettings


class SnapshotError(Exception):
    """No usable image: the event still escalates (fail closed), without the classifier."""


def allowed_hosts(cfg: NotifierSettings, frigate_url: str) -> set[str]:
    return set(cfg.snapshot_hosts) or {urlsplit(frigate_url).netloc}


async def fetch_frigate(session: aiohttp.ClientSession, url: str, cfg: NotifierSettings, hosts: set[str]) -> bytes:
    if urlsplit(url).netloc not in hosts:
        raise SnapshotError(f"snapshot host {urlsplit(url).netloc!r} is not a configured snapshot host")
    delay = 0.2
    last = ""
    for attempt in range(cfg.snapshot_retries + 1):
        try:
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=cfg.snapshot_timeout)) as r:
                if r.status == 200:
                    return await _read_whole(r, cfg.snapshot_max_bytes)
                last = f"HTTP {r.status}"
                if r.status != 404:
                    break
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        if attempt < cfg.snapshot_retries:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
    raise SnapshotError(f"no snapshot from {url}: {last}")


async def _read_whole(r: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body, however many pieces it arrives in (one read returns only what has arrived so far),
    capped at ``limit``; a body shorter than its Content-Length is an error, never half an image."""
    length = r.headers.get("Content-Length")
    size = int(length) if length and length.isdigit() else None
    if size is not None and size > limit:
        raise SnapshotError(f"snapshot of {size} bytes is over {limit}")
    chunks: list[bytes] = []
    got = 0
    async for chunk in r.content.iter_chunked(1 << 16):
        got += len(chunk)
        if got > limit:
            raise SnapshotError(f"snapshot is over {limit} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    if size is not None and len(body) != size:
        raise aiohttp.ClientPayloadError(f"snapshot truncated: {len(body)} of {size} bytes")
    return body


def prepare(raw: bytes, cfg: NotifierSettings) -> bytes:
    """Decode any image Pillow reads, fit it in ``snapshot_longest_side``, re-encode as JPEG."""
    if len(raw) > cfg.snapshot_max_bytes:
        raise SnapshotError(f"snapshot is over {cfg.snapshot_max_bytes} bytes")
    side = cfg.snapshot_longest_side
    try:
        with Image.open(io.BytesIO(raw)) as im:
            im.draft("RGB", (side, side))  # JPEG: let the decoder scale down by 1/2, 1/4, 1/8 when it can
            im.load()
            rgb = im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise SnapshotError(f"not a usable image: {type(exc).__name__}: {exc}") from exc
    # bilinear with a reducing gap: Pillow's fast path, plenty for a classifier (Lanczos took twice as long)
    rgb.thumbnail((side, side), Image.Resampling.BILINEAR, reducing_gap=2.0)
    out = io.BytesIO()
    rgb.save(out, format="JPEG", quality=85)
    return out.getvalue()
