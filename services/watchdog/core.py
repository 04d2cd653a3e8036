"""The watchdog's decisions, pure: probe results and a clock in, actions out.

N failed probes in a row → restart (backoff between restarts, a per-hour budget); beyond the budget,
or for a terminal route (spark: never restarted by automation), or with no restart configured → page.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from shared.settings import WatchdogSettings

ActionKind = Literal["restart", "recover_cuda", "page", "recovered"]
MAX_BACKOFF = 3600.0


@dataclass(frozen=True, slots=True)
class Action:
    kind: ActionKind
    route: str
    reason: str


@dataclass
class _Watch:
    failures: int = 0
    restarts: deque[float] = field(default_factory=deque)
    next_allowed: float = 0.0
    backoff: float = 0.0
    paged: bool = False
    down_since: float | None = None


class WatchdogCore:
    def __init__(self, cfg: WatchdogSettings, terminal: set[str]) -> None:
        self.cfg = cfg
        self.terminal = terminal
        self.routes: dict[str, _Watch] = {}

    def _w(self, route: str) -> _Watch:
        return self.routes.setdefault(route, _Watch(backoff=self.cfg.backoff))

    def _budget_left(self, w: _Watch, now: float) -> bool:
        while w.restarts and now - w.restarts[0] > 3600:
            w.restarts.popleft()
        return len(w.restarts) < self.cfg.restart_budget_per_hour

    def _page_once(self, w: _Watch, route: str, reason: str) -> list[Action]:
        if w.paged:
            return []
        w.paged = True
        return [Action("page", route, reason)]

    def on_probe(self, route: str, ok: bool, now: float) -> list[Action]:
        w = self._w(route)
        if ok:
            was_down = w.down_since is not None and (w.failures >= self.cfg.failures_before_restart or w.paged)
            w.failures, w.paged, w.down_since, w.backoff = 0, False, None, self.cfg.backoff
            return [Action("recovered", route, "probe answers again")] if was_down else []
        w.failures += 1
        if w.down_since is None:
            w.down_since = now
        if w.failures < self.cfg.failures_before_restart:
            return []
        reason = f"{w.failures} failed probes in a row"
        if route in self.terminal:
            return self._page_once(w, route, f"{reason}; a terminal route is never restarted by automation")
        if route not in self.cfg.routes or self.cfg.routes[route].restart is None:
            return self._page_once(w, route, f"{reason}; no restart action is configured")
        return self._restart(w, route, "restart", reason, now)

    def on_cuda(self, route: str, ok: bool, now: float) -> list[Action]:
        if ok:
            return []
        w = self._w(route)
        reason = "a fresh cuInit failed"
        if route in self.terminal:
            return self._page_once(w, route, f"{reason}; a terminal route is never recovered by automation")
        return self._restart(w, route, "recover_cuda", reason, now)

    def _restart(self, w: _Watch, route: str, kind: ActionKind, reason: str, now: float) -> list[Action]:
        if not self._budget_left(w, now):
            return self._page_once(w, route, f"{reason}; restart budget of {self.cfg.restart_budget_per_hour}/h "
                                             "is spent: automation stops here")
        if now < w.next_allowed:
            return []
        w.restarts.append(now)
        w.next_allowed = now + w.backoff
        w.backoff = min(max(w.backoff * 2, 1.0), MAX_BACKOFF)
        return [Action(kind, route, reason)]
