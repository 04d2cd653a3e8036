"""The one failure path: every fault of a route — before the first byte or after it, a cut, a stall,
an in-band error, CUDA words, a 503 with room to spare — is counted here, and only here, on the
route's circuit, its metrics and the failures log."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from services.router.accounting import Accounting
from services.router.outcomes import ErrorBody, Outcome, UpstreamFault, classify
from services.router.request import Ctx
from services.router.state import RouteState

log = logging.getLogger("homelab.router.faults")


class FailurePath:
    def __init__(self, acct: Accounting, on_poisoned: Callable[[str, str], Awaitable[None]] | None = None) -> None:
        self.acct = acct
        self.on_poisoned = on_poisoned

    async def failed(self, ctx: Ctx, name: str, st: RouteState, outcome: Outcome, *, room: bool = True,
                     where: str = "failure") -> None:
        """The one failure path: every fault of a route, before or after the first byte, counts here."""
        health = ctx.policy.health
        if outcome.kind == "fail":
            st.record_failure(outcome.detail, health.failure_threshold)
            self.acct.upstream_failed(ctx, name, outcome, kind=where)
        elif outcome.kind == "poisoned":
            await self._poison(ctx, name, st, outcome)
        elif outcome.kind == "busy" and outcome.status == 503 and room:
            # Busy with room to spare is not busy: an upstream that 503s everything is down.
            st.record_failure(outcome.detail, health.failure_threshold)
            self.acct.upstream_failed(ctx, name, outcome, kind=where)

    async def _poison(self, ctx: Ctx, name: str, st: RouteState, outcome: Outcome) -> None:
        st.mark(poisoned=True)
        st.last_error = outcome.detail
        st.last_error_at = time.time()
        self.acct.fault(ctx, name, "cuda_poisoned", outcome.cause, outcome.detail)
        log.error("route %s poisoned: %s", name, outcome.detail)
        if self.on_poisoned is not None:
            await self.on_poisoned(name, outcome.detail)


def fault_outcome(fault: UpstreamFault) -> Outcome:
    """A fault after the first byte, read like one before it: an in-band error by its words (CUDA text
    poisons the route), a cut, stall or malformed chunk as a failure of the route."""
    if fault.kind == "stream_error":
        outcome = classify(200, ErrorBody.of_message(fault.detail))
        if outcome.kind in ("poisoned", "fail"):
            return outcome
    return Outcome.failed(fault.kind, fault.detail)
