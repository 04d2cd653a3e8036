"""Append-only JSON Lines logs (one object a line) that machines read back.

A write never raises: a log disk in trouble (full, removed, read-only) must not take down what is
being logged. A failed write is counted (``errors``), reported at most once a minute, and the next
line tries again. Files rotate by size: ``name.jsonl`` → ``name.jsonl.1.gz`` … ``name.jsonl.<N>.gz``
(gzip in a background thread, so no caller waits on it); readers see every line exactly once.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import logging
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger("homelab.jsonl")

DEFAULT_MAX_BYTES = 50 * 1024 * 1024
DEFAULT_BACKUPS = 10
REPORT_EVERY = 60.0  # seconds between two reports of failing writes to one log


def log_dir() -> Path:
    """The JSONL log folder: ``HOMELAB_LOG_DIR`` or ``./logs``."""
    return Path(os.environ.get("HOMELAB_LOG_DIR") or "logs")


def rotation_from_env() -> tuple[int, int]:
    """(max bytes per file, compressed backups kept): ``HOMELAB_LOG_MAX_BYTES``, ``HOMELAB_LOG_BACKUPS``."""
    max_bytes = int(os.environ.get("HOMELAB_LOG_MAX_BYTES") or DEFAULT_MAX_BYTES)
    backups = int(os.environ.get("HOMELAB_LOG_BACKUPS") or DEFAULT_BACKUPS)
    return max_bytes, backups


def check_writable(folder: Path) -> None:
    """Raise OSError with a clear message when ``folder`` cannot be created or written (checked at start)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-check-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OSError(exc.errno, f"log directory {folder} is not writable: {exc.strerror or exc}") from exc


def _rotating(path: Path) -> Path:
    return path.with_name(path.name + ".rotating")


def _backup(path: Path, n: int) -> Path:
    return path.with_name(f"{path.name}.{n}.gz")


class JsonlWriter:
    """Writes one JSON object per line with one ``write(2)`` on an O_APPEND descriptor.

    ``keep_open``: hold the descriptor for a hot log (the router's decisions); a rare log
    (malformed payloads, written by several processes) opens it per line.

    ``shared`` (``HOMELAB_LOG_SHARED=1``, set for the router's workers): several processes keep the
    same log open. Each line is still one ``write(2)`` on O_APPEND (lines never interleave); one of
    them rotates, under a lock, and the others follow the new file at their next line.
    """

    def __init__(self, path: Path, *, keep_open: bool = True, max_bytes: int | None = None,
                 backups: int | None = None, shared: bool | None = None) -> None:
        env_max, env_backups = rotation_from_env()
        self.shared = os.environ.get("HOMELAB_LOG_SHARED") == "1" if shared is None else shared
        self._ino = 0
        self._retry_rotation_at = 0.0
        self.path = path
        self.keep_open = keep_open
        self.max_bytes = env_max if max_bytes is None else max_bytes  # 0: never rotate
        self.backups = env_backups if backups is None else backups
        self.errors = 0
        self.rotations = 0
        self._fd: int | None = None
        self._size = 0
        self._last_report = -REPORT_EVERY
        self._lock = threading.Lock()
        self._compressor: threading.Thread | None = None

    # ---- writing ---------------------------------------------------------------------------

    def write(self, record: dict[str, Any]) -> bool:
        """Append one record; False (and counted) when it could not be written."""
        if "ts" not in record:
            record = {"ts": round(time.time(), 3), **record}
        try:
            line = orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS)
        except TypeError as exc:
            self._failed(f"record is not JSON: {exc}")
            return False
        with self._lock:
            try:
                self._append(line)
            except OSError as exc:
                self._close_fd()
                self._failed(f"{exc.strerror or exc}")
                return False
            if self.max_bytes and self._size >= self.max_bytes:
                try:
                    self._rotate()
                except OSError as exc:
                    self._failed(f"rotation failed: {exc.strerror or exc}")
        return True

    def _open(self) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        st = os.fstat(fd)
        self._size, self._ino = st.st_size, st.st_ino
        return fd

    def _append(self, line: bytes) -> None:
        if self.shared and self._fd is not None:
            try:
                moved = os.stat(self.path).st_ino != self._ino  # another process rotated it
            except FileNotFoundError:
                moved = True
            if moved:
                self._close_fd()
        fd = self._fd if self._fd is not None else self._open()
        try:
            written = os.write(fd, line)
            if written != len(line):
                # A short write (disk full): take the partial line back so no line is ever split.
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, self._size)
                raise OSError(28, "short write (disk full?)")
            self._size += written
        finally:
            if self.keep_open:
                self._fd = fd
            else:
                os.close(fd)
                self._fd = None

    def _close_fd(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def _failed(self, why: str) -> None:
        self.errors += 1
        now = time.monotonic()
        if now - self._last_report >= REPORT_EVERY:
            self._last_report = now
            log.error("cannot write %s: %s (%d lines lost so far; will retry on the next line)",
                      self.path, why, self.errors)

    # ---- rotation --------------------------------------------------------------------------

    def _rotate(self) -> None:
        """Move the full file aside (a rename: no line is split or lost) and gzip it in the background."""
        self._close_fd()
        if not self.shared:
            self._rotate_now()
            return
        # several writers: one rotates, under a lock, and only if nobody did since this one's last line
        if time.monotonic() < self._retry_rotation_at:
            return
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                rotating = _rotating(self.path)
                # another writer's compression in progress (a leftover of a crash is older): later
                busy = rotating.exists() and time.time() - rotating.stat().st_mtime < 60
                if os.stat(self.path).st_size >= self.max_bytes and not busy:
                    self._rotate_now()
                elif busy:
                    self._retry_rotation_at = time.monotonic() + 1.0  # not a lock per line meanwhile
            except FileNotFoundError:
                pass
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _rotate_now(self) -> None:
        if self._compressor is not None:
            self._compressor.join()  # the previous one (50 MB ago) is long done; rare wait
        rotating = _rotating(self.path)
        if rotating.exists():  # left by a crash mid-compression: finish it first
            _compress(rotating, self.path, self.backups)
        os.replace(self.path, rotating)
        self._size = 0
        self.rotations += 1
        # a shared log's other writers may append one last line to the old file: compress a moment later
        delay = 1.0 if self.shared else 0.0
        self._compressor = threading.Thread(target=_compress, args=(rotating, self.path, self.backups, delay),
                                            name=f"gzip-{self.path.name}", daemon=True)
        self._compressor.start()

    def flush_rotation(self) -> None:
        """Wait for a background compression (tests, shutdown)."""
        if self._compressor is not None:
            self._compressor.join()

    def close(self) -> None:
        with self._lock:
            self._close_fd()
        self.flush_rotation()


def _compress(rotating: Path, path: Path, backups: int, delay: float = 0.0) -> None:
    if delay:
        time.sleep(delay)
    try:
        oldest = _backup(path, backups)
        if backups <= 0:
            rotating.unlink(missing_ok=True)
            return
        oldest.unlink(missing_ok=True)
        for n in range(backups - 1, 0, -1):
            src = _backup(path, n)
            if src.exists():
                os.replace(src, _backup(path, n + 1))
        tmp = path.with_name(path.name + ".1.gz.tmp")
        with open(rotating, "rb") as src_fh, gzip.open(tmp, "wb", compresslevel=6) as dst:
            shutil.copyfileobj(src_fh, dst, 1 << 20)
        os.replace(tmp, _backup(path, 1))
        rotating.unlink()
    except OSError as exc:
        log.error("cannot compress %s: %s", rotating, exc)


# ---- reading ---------------------------------------------------------------------------------

def log_files(path: Path, *, rotated: bool = True) -> list[Path]:
    """The files holding ``path``'s lines, oldest first: backups, the one being compressed, the live one."""
    files: list[Path] = []
    if rotated:
        n = 1
        backups = []
        while _backup(path, n).exists():
            backups.append(_backup(path, n))
            n += 1
        files.extend(reversed(backups))
        if _rotating(path).exists():
            files.append(_rotating(path))
    if path.exists():
        files.append(path)
    return files


def iter_jsonl(path: Path, *, rotated: bool = False) -> Iterator[dict[str, Any]]:
    """Every record, oldest first; a torn or non-JSON line is skipped, never fatal."""
    for f in log_files(path, rotated=rotated):
        try:
            data = gzip.decompress(f.read_bytes()) if f.suffix == ".gz" else f.read_bytes()
        except (OSError, EOFError, gzip.BadGzipFile):
            continue
        for line in data.splitlines():
            if not line.strip():
                continue
            try:
                rec = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(rec, dict):
                yield rec


def read_jsonl(path: Path, *, rotated: bool = False) -> list[dict[str, Any]]:
    """Every record of a JSONL file (an absent file has none); ``rotated`` adds its rotated files."""
    return list(iter_jsonl(path, rotated=rotated))


def disk_use(path: Path) -> int:
    """Bytes used by a log and its rotated files."""
    return sum(f.stat().st_size for f in log_files(path) if f.exists())
