"""Logging for people and for log shippers: one format switch, a trace id on every camera-event line.

``HOMELAB_LOG_FORMAT=json`` (or ``--log-format json``) gives one JSON object a line (Loki, Promtail,
Vector); the default is one readable line. Access chatter of HTTP clients (a line per health probe)
is silenced: services log state changes, not traffic.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import time
from collections.abc import Iterator

import orjson

FORMATS = ("text", "json")
TRACE: contextvars.ContextVar[str | None] = contextvars.ContextVar("homelab_trace_id", default=None)
QUIET = ("httpx", "httpcore", "aiohttp.access", "uvicorn.access", "urllib3", "docker")


@contextlib.contextmanager
def trace(trace_id: str | None) -> Iterator[None]:
    """Every log line inside carries this camera event's trace id."""
    token = TRACE.set(trace_id)
    try:
        yield
    finally:
        TRACE.reset(token)


class _TraceFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.trace_id = TRACE.get()
        return True


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        tid = getattr(record, "trace_id", None)
        return f"{line} trace={tid}" if tid and f"trace={tid}" not in line else line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        tid = getattr(record, "trace_id", None)
        if tid:
            out["trace_id"] = tid
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(out).decode()


def log_format(requested: str | None = None) -> str:
    fmt = (requested or os.environ.get("HOMELAB_LOG_FORMAT") or "text").lower()
    if fmt not in FORMATS:
        raise ValueError(f"log format '{fmt}': expected one of {', '.join(FORMATS)}")
    return fmt


def setup_logging(level: str = "INFO", fmt: str | None = None) -> None:
    """Configure the root logger once per process (text or JSON lines on stderr)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format(fmt) == "json" else TextFormatter())
    handler.addFilter(_TraceFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)
