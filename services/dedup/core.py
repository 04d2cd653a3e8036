"""Two-layer dedup, decided without a broker: identity (TTL), then camera + kind window across triggers.

The first event is forwarded at once; later ones are dropped. State is SQLite, so a restart of
dedup (or ring-mqtt replaying its state) fires nothing again. A forwarded event is kept in the
``outbox`` table, in the same transaction that marks it seen, until the broker has acknowledged its
publish: a restart during a broker outage sends it then, instead of losing it.

The store holds what the windows need and no more, pruned as it goes (every ``prune_every`` seconds
of event traffic, a quarter of the shorter window): identities for ``identity_ttl``, forwards for
``max(window × 10, 1 h)`` (late triggers still merge), the outbox until the broker acknowledges.
Two dedup processes may share one store (one state directory): each decision is one write transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from shared.messages import CameraEvent
from shared.settings import DedupSettings
from shared.sqlite import open_db

Verdict = Literal["forward", "duplicate", "merged"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS seen (identity TEXT PRIMARY KEY, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS seen_at ON seen (at);
CREATE TABLE IF NOT EXISTS forwarded (
    camera TEXT NOT NULL, kind TEXT NOT NULL, source TEXT NOT NULL, at REAL NOT NULL, event_id TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS forwarded_key ON forwarded (camera, kind, at);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (event_id TEXT PRIMARY KEY, payload BLOB NOT NULL);
"""


@dataclass(frozen=True, slots=True)
class DedupDecision:
    verdict: Verdict
    merged_into: str | None = None


class DedupStore:
    def __init__(self, path: Path) -> None:
        self.db = open_db(path, SCHEMA)

    def close(self) -> None:
        self.db.close()


class Deduper:
    def __init__(self, store: DedupStore, cfg: DedupSettings) -> None:
        self.db = store.db
        self.cfg = cfg
        self.counts: dict[str, int] = {"forward": 0, "duplicate": 0, "merged": 0}
        self.pruned_at = 0.0
        for name, value in self.db.execute("SELECT name, value FROM counters"):
            self.counts[name] = value

    @property
    def keep_forwarded(self) -> float:
        return max(self.cfg.window * 10, 3600.0)

    @property
    def prune_every(self) -> float:
        """A quarter of the shorter window: nothing outlives its window by more than that."""
        return min(self.cfg.identity_ttl, self.keep_forwarded) / 4

    def decide(self, ev: CameraEvent, now: float) -> DedupDecision:
        """Decide and record; call once per received event."""
        if now - self.pruned_at >= self.prune_every:
            self.prune(now)
        db = self.db
        db.execute("BEGIN IMMEDIATE")  # another dedup on the same store waits: one decision at a time
        try:
            if db.execute("SELECT 1 FROM seen WHERE identity = ?", (ev.event_id,)).fetchone():
                decision = self._count(DedupDecision("duplicate"))
                db.execute("COMMIT")
                return decision
            db.execute("INSERT INTO seen (identity, at) VALUES (?, ?)", (ev.event_id, now))
            w = self.cfg.window
            row = None
            if w > 0:
                # the window is measured on event time, so triggers that arrive late still merge
                row = db.execute(
                    "SELECT event_id FROM forwarded WHERE camera = ? AND kind = ? AND source != ? "
                    "AND at BETWEEN ? AND ? ORDER BY at DESC LIMIT 1",
                    (ev.camera, ev.kind, ev.source, ev.started_at - w, ev.started_at + w)).fetchone()
            if row is None:
                db.execute("INSERT INTO forwarded (camera, kind, source, at, event_id) VALUES (?, ?, ?, ?, ?)",
                           (ev.camera, ev.kind, ev.source, ev.started_at, ev.event_id))
                db.execute("INSERT OR REPLACE INTO outbox (event_id, payload) VALUES (?, ?)",
                           (ev.event_id, ev.model_dump_json(exclude_none=True).encode()))
                decision = DedupDecision("forward")
            else:
                decision = DedupDecision("merged", row[0])
            self._count(decision)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return decision

    def sent(self, event_id: str) -> None:
        """The broker acknowledged the forward: nothing left to resend."""
        self.db.execute("DELETE FROM outbox WHERE event_id = ?", (event_id,))

    def unsent(self) -> list[tuple[str, bytes]]:
        """Forwards decided but not acknowledged (a restart during a broker outage): send them again."""
        return [(r[0], bytes(r[1])) for r in self.db.execute("SELECT event_id, payload FROM outbox")]

    def prune(self, now: float) -> None:
        """Forget what no window needs any more."""
        self.pruned_at = now
        self.db.execute("DELETE FROM seen WHERE at < ?", (now - self.cfg.identity_ttl,))
        self.db.execute("DELETE FROM forwarded WHERE at < ?", (now - self.keep_forwarded,))

    def _count(self, d: DedupDecision) -> DedupDecision:
        self.counts[d.verdict] += 1
        self.db.execute("INSERT INTO counters (name, value) VALUES (?, 1) "
                        "ON CONFLICT(name) DO UPDATE SET value = value + 1", (d.verdict,))
        return d
