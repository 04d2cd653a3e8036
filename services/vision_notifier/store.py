"""The notifier's SQLite: the timeline (every event and what became of it), events in progress (so a
restart mid-flow completes each event once) and each camera's snooze (so it holds across restarts)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson

from shared.messages import CameraEvent
from shared.sqlite import open_db

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    event_id TEXT PRIMARY KEY,
    trace_id TEXT NOT NULL,
    camera TEXT NOT NULL,
    received_at REAL NOT NULL,
    event TEXT NOT NULL,
    done INTEGER NOT NULL DEFAULT 0,
    sent TEXT NOT NULL DEFAULT '[]',
    record TEXT
);
CREATE INDEX IF NOT EXISTS events_pending ON events (done);
CREATE TABLE IF NOT EXISTS snoozes (
    camera TEXT PRIMARY KEY,  -- the camera's object id (homelab/cameras/<camera>/...)
    until REAL NOT NULL,
    by TEXT
);
-- how many events each camera held because the face was a resident's (Home Assistant shows it)
CREATE TABLE IF NOT EXISTS face_holds (camera TEXT PRIMARY KEY, held INTEGER NOT NULL);
-- each camera's last snooze request as it was asked, and the end it was given then (capped once): the
-- retained request read back at a start is recognised and keeps its end, even after that end has passed
CREATE TABLE IF NOT EXISTS snooze_asks (
    camera TEXT PRIMARY KEY,
    asked REAL NOT NULL,
    by TEXT,
    until REAL NOT NULL
);
"""


class NotifierStore:
    """Two notifier processes on one host may share it: an event is taken by the one whose insert wins,
    and each resumes after a restart only the events it had taken (``owner``: its MQTT client id)."""

    def __init__(self, path: Path) -> None:
        self.db = open_db(path, SCHEMA)
        columns = {row[1] for row in self.db.execute("PRAGMA table_info(events)")}
        if "owner" not in columns:
            self.db.execute("ALTER TABLE events ADD COLUMN owner TEXT")

    def begin(self, ev: CameraEvent, owner: str | None = None) -> bool:
        """Record the event as in progress (taken by ``owner``); False if it was seen before (a
        redelivery, or another instance took it)."""
        cur = self.db.execute(
            "INSERT OR IGNORE INTO events (event_id, trace_id, camera, received_at, event, owner) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (ev.event_id, ev.trace_id, ev.camera, time.time(), ev.model_dump_json(), owner))
        return cur.rowcount == 1

    def pending(self, owner: str | None = None) -> list[tuple[CameraEvent, set[str]]]:
        """Events this instance took and did not finish (a restart mid-flow); events of no owner too."""
        rows = self.db.execute("SELECT event, sent FROM events WHERE done = 0 AND (owner IS NULL OR owner = ?) "
                               "ORDER BY received_at", (owner,)).fetchall()
        return [(CameraEvent.model_validate_json(e), set(orjson.loads(s))) for e, s in rows]

    def sent(self, event_id: str) -> set[str]:
        row = self.db.execute("SELECT sent FROM events WHERE event_id = ?", (event_id,)).fetchone()
        return set(orjson.loads(row[0])) if row else set()

    def mark_sent(self, event_id: str, channel: str) -> None:
        sent = self.sent(event_id) | {channel}
        self.db.execute("UPDATE events SET sent = ? WHERE event_id = ?", (orjson.dumps(sorted(sent)), event_id))

    def finish(self, event_id: str, record: dict[str, Any]) -> None:
        self.db.execute("UPDATE events SET done = 1, record = ? WHERE event_id = ?",
                        (orjson.dumps(record), event_id))

    def event(self, event_id: str) -> CameraEvent | None:
        """The event as it was received."""
        row = self.db.execute("SELECT event FROM events WHERE event_id = ?", (event_id,)).fetchone()
        return CameraEvent.model_validate_json(row[0]) if row else None

    def record(self, event_id: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT record FROM events WHERE event_id = ?", (event_id,)).fetchone()
        return orjson.loads(row[0]) if row and row[0] else None

    def prune(self, days: float, now: float | None = None) -> int:
        """Drop finished events older than ``days`` and give the space back to the disk; returns rows dropped.

        Events still in progress are kept whatever their age (a restart must still finish them).
        """
        cutoff = (time.time() if now is None else now) - days * 86400
        cur = self.db.execute("DELETE FROM events WHERE done = 1 AND received_at < ?", (cutoff,))
        if cur.rowcount:
            self.db.execute("VACUUM")
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # WAL: the file shrinks at the checkpoint
        return int(cur.rowcount)

    def last(self) -> dict[str, Any] | None:
        """The newest finished event's timeline record."""
        row = self.db.execute("SELECT record FROM events WHERE done = 1 AND record IS NOT NULL "
                              "ORDER BY received_at DESC LIMIT 1").fetchone()
        return orjson.loads(row[0]) if row else None

    def snoozes(self) -> dict[str, tuple[float, str | None]]:
        """Every camera's snooze as last set (until, by); expired ones included (``snooze`` drops them)."""
        return {c: (u, b) for c, u, b in self.db.execute("SELECT camera, until, by FROM snoozes")}

    def snooze(self, camera: str, until: float, by: str | None) -> None:
        if until > 0:
            self.db.execute("INSERT OR REPLACE INTO snoozes (camera, until, by) VALUES (?, ?, ?)", (camera, until, by))
        else:
            self.db.execute("DELETE FROM snoozes WHERE camera = ?", (camera,))

    def owner(self, event_id: str) -> str | None:
        row = self.db.execute("SELECT owner FROM events WHERE event_id = ?", (event_id,)).fetchone()
        return row[0] if row else None

    def face_held(self, camera: str) -> int:
        """One more event held for a known face on ``camera``; the count so far."""
        self.db.execute("INSERT INTO face_holds (camera, held) VALUES (?, 1) "
                        "ON CONFLICT(camera) DO UPDATE SET held = held + 1", (camera,))
        return self.face_holds(camera)

    def face_holds(self, camera: str) -> int:
        row = self.db.execute("SELECT held FROM face_holds WHERE camera = ?", (camera,)).fetchone()
        return int(row[0]) if row else 0

    def snooze_ask(self, camera: str) -> tuple[float, str | None, float] | None:
        """The last request for ``camera`` (asked, by) and the end it was given."""
        row = self.db.execute("SELECT asked, by, until FROM snooze_asks WHERE camera = ?", (camera,)).fetchone()
        return (float(row[0]), row[1], float(row[2])) if row else None

    def ask_snooze(self, camera: str, asked: float, by: str | None, until: float) -> None:
        if asked > 0:
            self.db.execute("INSERT OR REPLACE INTO snooze_asks (camera, asked, by, until) VALUES (?, ?, ?, ?)",
                            (camera, asked, by, until))
        else:
            self.db.execute("DELETE FROM snooze_asks WHERE camera = ?", (camera,))

    def close(self) -> None:
        self.db.close()
