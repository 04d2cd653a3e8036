"""Texts a client (or anyone without the admin token) reads: upstream addresses out, engines' words short."""

from __future__ import annotations

import re
from typing import Any

# URLs, host:port, ('host', port) and bare IP addresses, as engines and aiohttp write them into errors
_ADDRESS = re.compile(r"[a-z][a-z0-9+.-]*://\S+|\(\s*'[^']*',\s*\d+\s*\)|\[[0-9a-f:]+\](?::\d+)?"
                      r"|\b(?:\d{1,3}(?:\.\d{1,3}){3}|localhost|[a-z0-9-]+(?:\.[a-z0-9-]+)*\.[a-z][a-z0-9-]*:\d{1,5})(?::\d{1,5})?\b",
                      re.IGNORECASE)


def short(detail: str, limit: int = 120) -> str:
    """An upstream's words, short: the cause label dropped, cut at ``limit`` characters."""
    text = detail.split(": ", 1)[1] if ": " in detail[:24] else detail
    text = text.removeprefix("probe: ").strip().rstrip(".")
    return text if len(text) <= limit else text[:limit - 1] + "…"


def scrub(value: Any) -> Any:
    """A value for someone without the admin token: upstream addresses replaced by ``<upstream>``."""
    if isinstance(value, str):
        return _ADDRESS.sub("<upstream>", value)
    if isinstance(value, dict):
        return {k: scrub(v) for k, v in value.items()}
    return value
