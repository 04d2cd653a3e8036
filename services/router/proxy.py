"""The dispatcher: performs the route walk (``walk``) for one decided request — admit, spill,
fail over, one context hop — with each attempt made by ``attempt`` (DESIGN.md §3 steps 6-10).

It returns the response for the client; the endpoint that called it writes the decision line for
a whole answer, the relay for a stream (see ``accounting``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import orjson
from starlette.responses import Response

from services.router.accounting import Accounting
from services.router.attempt import Attempts, error_response
from services.router.errors import RequestError, error_body
from services.router.outcomes import Outcome
from services.router.policy import Route
from services.router.redact import scrub, short
from services.router.request import JSON, Ctx
from services.router.slots import Slot, take
from services.router.state import RouteState
from services.router.upstream import Upstream
from services.router.walk import Cause, context_next, next_route, vision_fallback


class Dispatcher:
    def __init__(self, upstream: Upstream, states: Callable[[], dict[str, RouteState]],
                 acct: Accounting, on_poisoned: Callable[[str, str], Awaitable[None]] | None = None) -> None:
        self._states = states
        self.acct = acct
        self.attempts = Attempts(upstream, acct, states, on_poisoned)

    async def chat(self, ctx: Ctx) -> Response:
        policy = ctx.policy
        states = self._states()
        has_image = ctx.pre.has_image
        route_name = ctx.decision.route
        ctx.reason = ctx.decision.reason
        tried: set[str] = set()
        context_hop = False
        last: Outcome | None = None
        while True:
            if route_name in tried:
                return self._give_up(ctx, f"No route could answer: {' → '.join(dict.fromkeys(ctx.path))} all failed "
                                          f"(the last: {short(last.detail if last else 'no answer')}).",
                                     "Check them with `homelab upstreams`.")
            route = policy.routes[route_name]
            st = states[route_name]
            ctx.path.append(route_name)
            got = await take(route_name, route, st, pinned=ctx.pinned(route_name), has_image=has_image,
                       cooldown=policy.health.circuit_cooldown, who=ctx.who)
            skip = None if isinstance(got, Slot) else got
            if skip == "no_vision":
                tried.add(route_name)
                nxt = vision_fallback(policy, tried)
                if nxt is None:
                    return self._give_up(ctx, "No route that can see images can take this request: "
                                              f"{', '.join(sorted(tried))} cannot.",
                                         "Retry shortly, or send it without the image.", busy=True)
                route_name = nxt
                continue
            if skip is not None:
                ctx.reason = f"{route_name}_{skip}"
                if skip == "down" and last is None:
                    last = Outcome.failed("down", f"{route_name}: {st.why_unavailable()}")
                elif skip == "saturated":
                    last = Outcome.failed("saturated", f"{route_name} is at its cap of {route.max_concurrency}",
                                          kind="busy")
                elif skip == "reserved":
                    last = Outcome.failed("reserved", f"{route_name}'s free slots are reserved for "
                                          f"{', '.join(k for k in route.reserve if k != ctx.who.klass)}", kind="busy")
                tried.add(route_name)
                nxt = next_route(route, has_image, skip)
                if nxt is None and skip == "not_allowed":
                    raise RequestError(f"Client '{ctx.who.name}' may use none of the routes that could take this "
                                       f"request (its routes: {', '.join(sorted(ctx.who.routes or ()))})",
                                       status=403, type_="permission_error", code="route_not_allowed")
                if nxt is None:
                    return self._refused(ctx, route_name, route, st, skip)
                self.acct.moved(route_name, nxt, skip)
                route_name = nxt
                continue

            assert isinstance(got, Slot)
            outcome = await self.attempts.with_retry(ctx, route, st, got)
            if outcome.kind == "ok":
                assert outcome.response is not None
                return outcome.response
            if outcome.kind == "client":
                return error_response(ctx, route_name, outcome)
            last = outcome
            tried.add(route_name)
            if outcome.kind == "context":
                nxt = context_next(route, tried, context_hop)
                if nxt is None:
                    return error_response(ctx, route_name, outcome)
                context_hop = True
                ctx.reason = f"{route_name}_context_length"
                self.acct.moved(route_name, nxt, "context_length")
                route_name = nxt
                continue
            cause: Cause = "saturated" if outcome.kind == "busy" else "down"
            ctx.reason = f"{route_name}_{cause}"
            nxt = next_route(route, has_image, cause)
            if nxt is None:
                if outcome.kind == "busy":
                    return self._give_up(ctx, f"Route '{route_name}' is busy: its engine answered "
                                              f"{short(outcome.detail)}.", "Retry in a few seconds.", busy=True)
                return self._give_up(ctx, f"Route '{route_name}' failed to answer: {short(outcome.detail)}.",
                                     f"{_alone(route)} Retry in a moment, or check its engine (`homelab upstreams`).")
            self.acct.moved(route_name, nxt, outcome.kind)
            route_name = nxt

    def _refused(self, ctx: Ctx, name: str, route: Route, st: RouteState, skip: str) -> Response:
        """The last route on the path cannot take the request, and nothing comes after it."""
        if skip == "drained":
            return self._give_up(ctx, f"Route '{name}' is drained for maintenance.",
                                 f"Undrain it (`homelab undrain {name}`) or pin another route with X-Homelab-Route.")
        if skip == "saturated":
            return self._give_up(ctx, f"Route '{name}' is busy: all {route.max_concurrency} of its slots are taken.",
                                 "Retry in a few seconds.", busy=True)
        if skip == "reserved":
            kept = ", ".join(k for k in route.reserve if k != ctx.who.klass)
            return self._give_up(ctx, f"Route '{name}' is busy: its free slots are kept for {kept} clients.",
                                 "Retry in a few seconds.", busy=True)
        return self._give_up(ctx, f"Route '{name}' cannot answer: {st.why_unavailable()}.",
                             f"{_alone(route)} Check its engine (`homelab upstreams`) or pin another route with "
                             "X-Homelab-Route.")

    @staticmethod
    def _give_up(ctx: Ctx, what: str, fix: str, *, busy: bool = False) -> Response:
        """A 503 that says which route, why, and what to do — a short sentence each (no upstream address)."""
        route = ctx.path[-1] if ctx.path else ctx.decision.route
        message = f"{scrub(what)} {fix}"
        ctx.status = 503
        ctx.error = message
        body = error_body(message, type_="server_error", code="upstream_unavailable")
        headers = ctx.headers(route)
        if busy:
            headers["Retry-After"] = "2"
        return Response(orjson.dumps(body), status_code=503, media_type=JSON, headers=headers)


def _alone(route: Route) -> str:
    return "It is terminal: nothing else answers for it." if route.terminal else "It has no failover."
