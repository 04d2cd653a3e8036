"""Live per-route state: load, drain, circuit breaker, poisoning, last error."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

Circuit = Literal["closed", "open", "half_open"]


@dataclass(slots=True)
class RouteState:
    name: str
    in_flight: int = 0
    drained: bool = False
    poisoned: bool = False
    healthy: bool = True  # last active probe (optimistic until the first one answers)
    circuit: Circuit = "closed"
    failures: int = 0
    opened_at: float = 0.0
    last_error: str | None = None
    last_error_at: float | None = None
    last_probe_at: float | None = None
    served: int = 0
    recovering: bool = False
    trial: bool = False  # a half-open circuit's one trial request is in flight
    max_model_len: int | None = None  # the context window the engine reports for the route's model
    # what the tool probe saw: native (real tool_calls), parsed (markup the route's tool_parser turns
    # into calls), text (markup left as text: no parser anywhere), unknown (not probed, or no call)
    tool_calls: str = "unknown"
    tool_calls_seen: str | None = None  # the probe's detail (the markup format found, the engine's words)
    tools_checked_at: float | None = None
    # continuation modes found not to work on this upstream (mode -> what the check saw)
    continuation_blocked: dict[str, str] = field(default_factory=dict)
    continuation_checked_at: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def available(self, cooldown: float) -> bool:
        """Can this route take a request now? An open circuit half-opens after its cooldown."""
        if self.poisoned:
            return False
        if self.circuit == "open":
            # While probes say it is down, an open circuit stays open: no request pays for the outage.
            if not self.healthy or time.monotonic() - self.opened_at < cooldown:
                return False
            self.circuit = "half_open"
        if self.circuit == "half_open":
            return not self.trial  # one trial request at a time
        return self.healthy

    def take(self) -> bool:
        """Take a slot for an attempt; True when it is the half-open circuit's trial."""
        self.in_flight += 1
        if self.circuit == "half_open" and not self.trial:
            self.trial = True
            return True
        return False

    def give_back(self, trial: bool) -> None:
        self.in_flight -= 1
        if trial:
            self.trial = False

    def why_unavailable(self) -> str:
        if self.poisoned:
            return "poisoned (CUDA error)"
        if self.circuit == "open":
            return f"circuit open after {self.failures} failures: {self.last_error}"
        return f"failing health probes: {self.last_error}"

    def record_success(self) -> None:
        self.failures = 0
        self.circuit = "closed"
        self.healthy = True
        self.served += 1

    def record_failure(self, error: str, threshold: int) -> None:
        self.failures += 1
        self.last_error = error
        self.last_error_at = time.time()
        if self.circuit == "half_open" or self.failures >= threshold:
            self.circuit = "open"
            self.opened_at = time.monotonic()

    def probe_result(self, ok: bool, error: str | None = None) -> None:
        self.last_probe_at = time.time()
        if ok:
            self.healthy = True
            if self.circuit != "closed":
                self.circuit = "closed"
                self.failures = 0
        else:
            self.healthy = False
            self.last_error = error
            self.last_error_at = time.time()

    def effective_continuation(self, declared: tuple[str, ...]) -> str:
        """The mode a continuation on this route uses first: ``prefill``, ``instruct`` or ``none``."""
        for mode in declared:
            if mode not in self.continuation_blocked:
                return mode
        return "none"

    def snapshot(self, max_concurrency: int, continuation: tuple[str, ...] = ()) -> dict[str, Any]:
        return {
            "healthy": self.healthy and not self.poisoned and self.circuit != "open",
            "probe_ok": self.healthy,
            "in_flight": self.in_flight,
            "max_concurrency": max_concurrency,
            "saturated": self.in_flight >= max_concurrency,
            "drained": self.drained,
            "poisoned": self.poisoned,
            "circuit": self.circuit,
            "consecutive_failures": self.failures,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "last_probe_at": self.last_probe_at,
            "served": self.served,
            "recovering": self.recovering,
            "continuation_declared": list(continuation),
            "continuation_effective": self.effective_continuation(continuation),
            "continuation_blocked": dict(self.continuation_blocked),
            "tool_calls": self.tool_calls,
            "tool_calls_seen": self.tool_calls_seen,
        }
