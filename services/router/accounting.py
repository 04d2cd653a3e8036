"""One decision-log line and one count per request, written from the request's final state.

Every path ends here exactly once — an answer, a refusal, a hop, a continuation, a client that
left, an internal error — so the log and ``/metrics`` agree with what the client saw.
"""

from __future__ import annotations

import logging
import time
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
        if cause in ("saturated", "busy"):
            self.metrics.spills.labels(src, dst).inc()
        else:
            self.metrics.failovers.labels(src, dst, cause).inc()

    def upstream_failed(self, ctx: Ctx, route: str, outcome: Outcome) -> None:
        self.metrics.upstream_errors.labels(route, outcome.cause).inc()
        self.failures.write({"request_id": ctx.request_id, "route": route, "kind": "failure",
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
        self.decisions.write(record)
