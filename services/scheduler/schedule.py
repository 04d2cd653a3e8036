"""Schedules as the lab writes them (Hermes style).

    30m, in 30m, in 1h30m      one-shot, that long from now
    every 5m, every 2h         an interval
    */15 * * * *               5-field cron (croniter)
    2026-12-01T09:00:00+00:00  one-shot at an ISO time (naive times are UTC)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from croniter import croniter

_PART = re.compile(r"(\d+)\s*(s|sec|secs|second|seconds|m|min|mins|minute|minutes|h|hr|hrs|hour|hours|d|day|days|"
                   r"w|week|weeks)(?![a-z])")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> timedelta:
    """``30m``, ``1h30m``, ``2 hours`` → timedelta; ValueError when it is not a duration."""
    t = text.strip().lower()
    pos, total = 0, 0
    for m in _PART.finditer(t):
        if t[pos:m.start()].strip():
            break
        total += int(m.group(1)) * _UNIT[m.group(2)[0]]
        pos = m.end()
    if pos == 0 or t[pos:].strip() or total <= 0:
        raise ValueError(f"not a duration: {text!r} (examples: 30m, 2h, 1h30m)")
    return timedelta(seconds=total)


@dataclass(frozen=True, slots=True)
class Schedule:
    kind: Literal["once", "every", "cron"]
    text: str
    at: datetime | None = None
    every: timedelta | None = None
    cron: str | None = None

    def next_run(self, after: datetime) -> datetime | None:
        """The first run strictly after ``after`` (None: a one-shot that has run)."""
        if self.kind == "once":
            assert self.at is not None
            return self.at if self.at > after else None
        if self.kind == "every":
            assert self.every is not None
            return after + self.every
        assert self.cron is not None
        nxt: datetime = croniter(self.cron, after).get_next(datetime)
        return nxt


def parse_schedule(text: str, now: datetime) -> Schedule:
    t = text.strip()
    low = t.lower()
    if low.startswith("every "):
        return Schedule("every", t, every=parse_duration(low[6:]))
    if low.startswith("in "):
        return Schedule("once", t, at=now + parse_duration(low[3:]))
    try:
        return Schedule("once", t, at=now + parse_duration(low))  # a bare delay is a one-shot here
    except ValueError:
        pass
    if len(t.split()) == 5:
        if not croniter.is_valid(t):
            raise ValueError(f"invalid cron expression: {text!r}")
        return Schedule("cron", t, cron=t)
    try:
        at = datetime.fromisoformat(t)
    except ValueError:
        raise ValueError(f"unknown schedule {text!r}: use '30m', 'in 30m', 'every 5m', a 5-field cron "
                         "or an ISO time") from None
    return Schedule("once", t, at=at if at.tzinfo else at.replace(tzinfo=UTC))
