"""Append-only JSON Lines logs (one object a line) that machines read back."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import IO, Any

import orjson


def log_dir() -> Path:
    """The JSONL log folder: ``HOMELAB_LOG_DIR`` or ``./logs``."""
    return Path(os.environ.get("HOMELAB_LOG_DIR") or "logs")


class JsonlWriter:
    """Writes one JSON object per line, flushed per line so a crash loses nothing.

    ``keep_open``: hold the file for a hot log (the router's decisions); a rare log (malformed
    payloads) opens it per line and never holds a handle.
    """

    def __init__(self, path: Path, *, keep_open: bool = True) -> None:
        self.path = path
        self.keep_open = keep_open
        self._fh: IO[bytes] | None = None

    def write(self, record: dict[str, Any]) -> None:
        if "ts" not in record:
            record = {"ts": round(time.time(), 3), **record}
        line = orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)
        if not self.keep_open:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "ab") as fh:
                fh.write(line)
            return
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "ab")  # noqa: SIM115 - kept open for the writer's life
        self._fh.write(line)
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every record of a JSONL file (an absent file has none)."""
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
