"""Live per-route state: load, drain, circuit breaker, poisoning, last error."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from services.router.redact import short

if TYPE_CHECKING:
    from services.router.lab import LabState

Circuit = Literal["closed", "open", "half_open"]


@dataclass(slots=True)
class Check:
    """One capability check of one route under one policy: run once; after a transport error, again
    after a growing backoff (``RETRY_FIRST`` seconds, then twice that), at most ``TRIES`` times."""

    TRIES = 3
    RETRY_FIRST = 30.0

    tries: int = 0
    next_at: float = 0.0  # monotonic: not before then
    running: bool = False
    done: bool = False

    def due(self, now: float) -> bool:
        return not (self.done or self.running) and self.tries < self.TRIES and now >= self.next_at

    def failed(self, now: float) -> None:
        """A transport error: try again later, or give up after the last try."""
        self.running = False
        self.tries += 1
        self.next_at = now + self.RETRY_FIRST * 2 ** (self.tries - 1)


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
    # continuation modes found not to work on this upstream (mode -> what the check saw)
    continuation_blocked: dict[str, str] = field(default_factory=dict)
    continuation_verdict: str | None = None  # the last check's words ("continues", "unverified: …", …)
    # does the engine's /v1/models list the route's model (exactly, as name:latest, or as its only model)?
    # None until a probe has read a list; False is a warning: only answers (404, model not found) fail a route
    model_listed: bool | None = None
    # the capability checks (continuation, tools): each once per policy, with a bounded retry
    checks: dict[str, Check] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    # the lab's shared books when replicas share state (policy shared_state:): every change below is
    # written there too, and the lab's view is read back into these fields
    lab: LabState | None = None

    def available(self, cooldown: float) -> bool:
        """Can this route take a request now? An open circuit half-opens after its cooldown."""
        if self.poisoned:
            return False
        if self.circuit == "open":
            # While probes say it is down, an open circuit stays open: no request pays for the outage.
            if self.circuit_now(cooldown) == "open":
                return False
            self.circuit = "half_open"
        if self.circuit == "half_open":
            return not self.trial  # one trial request at a time
        return self.healthy

    def take(self, trial: bool | None = None) -> bool:
        """Take a slot for an attempt; True when it is the half-open circuit's trial (``trial``: the lab's
        books decided that already)."""
        self.in_flight += 1
        if trial is not None:
            self.trial = self.trial or trial
            return trial
        if self.circuit == "half_open" and not self.trial:
            self.trial = True
            return True
        return False

    def give_back(self, trial: bool) -> None:
        self.in_flight -= 1
        if trial:
            self.trial = False

    def why_unavailable(self) -> str:
        """Why the route takes no request now, in words a client reads (no upstream address: scrub it)."""
        if self.poisoned:
            return "it is poisoned by a CUDA error (`homelab recover-cuda` or undrain it once fixed)"
        if self.circuit == "open":
            return f"its circuit is open after {self.failures} failures (the last: {short(self.last_error or '?')})"
        return f"its engine fails its health probe ({short(self.last_error or 'no answer')})"

    def record_success(self) -> None:
        if self.lab is not None and (self.failures or self.circuit != "closed"):
            self.lab.write(self, failures=0, circuit="closed")
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
        if self.lab is not None:
            self.lab.failed(self, error, threshold)  # counted lab-wide; the lab's circuit comes back

    def mark(self, **flags: bool) -> None:
        """Drain, poison or recovery flags (``drained``, ``poisoned``, ``recovering``), for the whole lab."""
        for key, value in flags.items():
            setattr(self, key, value)
        if self.lab is not None:
            self.lab.write(self, **flags)

    def probe_result(self, ok: bool, error: str | None = None) -> None:
        """A health probe's answer. A good one never closes a circuit: the circuit follows the traffic
        (after its cooldown it lets one trial request through, and only an answer closes it)."""
        self.last_probe_at = time.time()
        if ok:
            self.healthy = True
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

    def circuit_now(self, cooldown: float) -> Circuit:
        """The circuit as the next request would find it (an open one past its cooldown is half-open)."""
        if self.circuit == "open" and self.healthy and time.monotonic() - self.opened_at >= cooldown:
            return "half_open"
        return self.circuit

    def snapshot(self, max_concurrency: int, continuation: tuple[str, ...] = (),
                 cooldown: float | None = None) -> dict[str, Any]:
        circuit = self.circuit if cooldown is None else self.circuit_now(cooldown)
        return {
            "healthy": self.healthy and not self.poisoned and circuit != "open",
            "probe_ok": self.healthy,
            "in_flight": self.in_flight,
            "max_concurrency": max_concurrency,
            "saturated": self.in_flight >= max_concurrency,
            "drained": self.drained,
            "poisoned": self.poisoned,
            "circuit": circuit,
            "consecutive_failures": self.failures,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "last_probe_at": self.last_probe_at,
            "served": self.served,
            "recovering": self.recovering,
            "continuation_declared": list(continuation),
            "continuation_effective": self.effective_continuation(continuation),
            "continuation_blocked": dict(self.continuation_blocked),
            "continuation_check": self.continuation_verdict,
            "model_listed": self.model_listed,
            "tool_calls": self.tool_calls,
            "tool_calls_seen": self.tool_calls_seen,
        }
