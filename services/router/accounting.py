"""One decision-log line and one count per request, written from the request's final state.

Every path ends here exactly once — an answer, a refusal, a hop, a continuation, a client that
left, an internal error — so the log and ``/metrics`` agree with what the client saw.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from services.router.metrics import Metrics
from services.router.outcomes import Outcome
from services.router.request import Ctx
from shared.jsonl import JsonlWriter

log = logging.getLogger("homelab.router.accounting")


class Accounting:
    def __init__(self, metrics: Metrics, decisions: JsonlWriter, failures: JsonlWriter,
                 validations: JsonlWriter) -> None:
        self.metrics = metrics
        self.decisions = decisions
        self.failures = failures
        self.validations = validations
        # per client: what it asked, what it was given, how long GPUs worked for it, at what energy
        self.clients: dict[str, dict[str, float]] = {}
        self.today: dict[str, dict[str, float]] = {}  # per client since local midnight (Home Assistant's "today")
        self._day = time.strftime("%Y-%m-%d")
        # a route's live GPU power (W) when one is known (the Netdata bridge's sensor on the bus)
        self.live_power: Callable[[str], float | None] = lambda route: None

    def finish(self, ctx: Ctx, route: str | None = None) -> None:
        """Account for a request once: metrics and its decision-log line. Never fails the request."""
        if ctx.logged:
            return
        ctx.logged = True
        try:
            self._finish(ctx, route or ctx.route)
        except Exception:  # accounting must never take serving down
            self.metrics.internal_errors.labels("finish").inc()
            log.exception("accounting for request %s failed", ctx.request_id)

    def moved(self, src: str, dst: str, cause: str) -> None:
        """A request left ``src`` for ``dst``: a spill (the route was full) or a failover."""
        if cause in ("saturated", "busy", "reserved"):
            self.metrics.spills.labels(src, dst).inc()
        else:
            self.metrics.failovers.labels(src, dst, cause).inc()

    def upstream_failed(self, ctx: Ctx, route: str, outcome: Outcome, kind: str = "failure") -> None:
        """A route's fault (``kind``: ``failure`` before the first byte, ``mid_stream`` after it)."""
        self.metrics.upstream_errors.labels(route, outcome.cause).inc()
        self.failures.write({"request_id": ctx.request_id, "route": route, "kind": kind,
                             "detail": outcome.detail, "retryable": outcome.retryable})

    def fault(self, ctx: Ctx, route: str, kind: str, cause: str, detail: str, **extra: Any) -> None:
        """A failure after the first byte (``mid_stream``) or of a continuation."""
        if cause:
            self.metrics.upstream_errors.labels(route, cause).inc()
        self.failures.write({"request_id": ctx.request_id, "route": route, "kind": kind, "detail": detail,
                             **extra})

    def _finish(self, ctx: Ctx, route: str) -> None:
        total = time.perf_counter() - ctx.started
        d = ctx.decision
        status = ctx.status or 200
        self.metrics.requests.labels(route, d.bucket or "", ctx.reason, str(status)).inc()
        self.metrics.latency.labels(route).observe(total)
        self.metrics.overhead.observe(max(0.0, (ctx.ttfb or total) - ctx.upstream_wait))
        record: dict[str, Any] = {
            "request_id": ctx.request_id,
            "endpoint": ctx.endpoint,
            "model": ctx.pre.model,
            "bucket": d.bucket,
            "scores": d.scores,
            "route": route,
            "reason": ctx.reason,
            "decided_route": d.route,
            "fallback_path": ctx.path,
            "status": status,
            "latency_ms": round(total * 1000, 3),
            "has_image": ctx.pre.has_image,
            "tokens": ctx.pre.tokens,
            "stream": ctx.pre.stream,
        }
        if ctx.ttfb is not None:
            record["ttfb_ms"] = round(ctx.ttfb * 1000, 3)
        if ctx.error:
            record["error"] = ctx.error
        if ctx.events:
            record["events"] = ctx.events
        if len(ctx.attempts) > 1 or (ctx.attempts and ctx.attempts[0].get("outcome") != "ok"):
            record["attempts"] = ctx.attempts
        elif ctx.attempts and "usage" in ctx.attempts[0]:
            record["usage"] = ctx.attempts[0]["usage"]
        if ctx.usage is not None:
            record["usage"] = ctx.usage
        record["client"] = ctx.who.name
        if ctx.session:
            record["session"] = ctx.session
        self._attribute(ctx, route, total, record)
        self.decisions.write(record)

    def _attribute(self, ctx: Ctx, route: str, total: float, record: dict[str, Any]) -> None:
        """Who used which GPU, for how long, at what energy: the time the upstream worked on the request
        (until its first byte, and then the stream until it ended) times the route's ``watts``."""
        name = ctx.who.name
        busy = ctx.upstream_wait + (max(0.0, total - ctx.ttfb) if ctx.ttfb is not None else 0.0)
        usage = record.get("usage") or (ctx.attempts[-1].get("usage") if ctx.attempts else None)
        usage = usage if isinstance(usage, dict) else {}
        p, c_ = usage.get("prompt_tokens"), usage.get("completion_tokens")
        prompt: int = p if isinstance(p, int) else ctx.pre.tokens
        completion: int = c_ if isinstance(c_, int) else 0
        live = self.live_power(route)
        watts = live if live is not None else ctx.policy.routes[route].watts if route in ctx.policy.routes else None
        energy = busy * watts / 3600 if watts else 0.0
        if watts:
            record["power_w"] = {"value": round(watts, 1), "source": "live" if live is not None else "policy"}
        m = self.metrics
        m.client_requests.labels(name, route).inc()
        m.client_tokens.labels(name, route, "prompt").inc(prompt)
        m.client_tokens.labels(name, route, "completion").inc(completion)
        m.client_gpu_seconds.labels(name, route).inc(busy)
        if energy:
            m.client_energy.labels(name, route).inc(energy)
        record["gpu_s"] = round(busy, 4)
        if energy:
            record["energy_wh"] = round(energy, 6)
        c = self.clients.setdefault(name, {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0,
                                           "gpu_seconds": 0.0, "energy_wh": 0.0})
        c["requests"] += 1
        c["prompt_tokens"] += prompt
        c["completion_tokens"] += completion
        c["gpu_seconds"] += busy
        c["energy_wh"] += energy
        day = time.strftime("%Y-%m-%d")
        if day != self._day:
            self._day, self.today = day, {}
        t = self.today.setdefault(name, {"requests": 0, "energy_wh": 0.0})
        t["requests"] += 1
        t["energy_wh"] += energy
