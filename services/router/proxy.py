"""The dispatcher: performs the route walk (``walk``) for one decided request — admit, spill,
fail over, one context hop — with each attempt made by ``attempt`` (DESIGN.md §3 steps 6-10).

It returns the response for the client; the endpoint that called it writes the decision line for
a whole answer, the relay for a stream (see ``accounting``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aiohttp
import orjson
from starlette.responses import Response

from services.router.accounting import Accounting
from services.router.attempt import Attempts, error_response
from services.router.errors import RequestError, error_body
from services.router.outcomes import Outcome
from services.router.request import JSON, Ctx
from services.router.slots import Slot, take
from services.router.state import RouteState
from services.router.upstream import Upstream
from services.router.walk import Cause, context_next, next_route, vision_fallback


class Dispatcher:
    def __init__(self, session: aiohttp.ClientSession, states: Callable[[], dict[str, RouteState]],
                 acct: Accounting, on_poisoned: Callable[[str, str], Awaitable[None]] | None = None) -> None:
        self._states = states
        self.acct = acct
        self.attempts = Attempts(Upstream(session), acct, states, on_poisoned)

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
                return self._give_up(ctx, last, f"every route on the path {','.join(ctx.path)} failed")
            route = policy.routes[route_name]
            st = states[route_name]
            ctx.path.append(route_name)
            got = take(route_name, route, st, pinned=ctx.pinned(route_name), has_image=has_image,
                       cooldown=policy.health.circuit_cooldown, who=ctx.who)
            skip = None if isinstance(got, Slot) else got
            if skip == "no_vision":
                tried.add(route_name)
                nxt = vision_fallback(policy, tried)
                if nxt is None:
                    return self._give_up(ctx, last, "no route that can see images is available")
                route_name = nxt
                continue
            if skip is not None:
                ctx.reason = f"{route_name}_{skip}"
                if skip == "down" and last is None:
                    last = Outcome.failed("down", f"{route_name} is {st.why_unavailable()}")
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
                    return self._give_up(ctx, last, f"{route_name} is {skip}", terminal=route.terminal)
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
                return self._give_up(ctx, outcome, outcome.detail, terminal=route.terminal)
            self.acct.moved(route_name, nxt, outcome.kind)
            route_name = nxt

    @staticmethod
    def _give_up(ctx: Ctx, last: Outcome | None, why: str, *, terminal: bool = False) -> Response:
        route = ctx.path[-1] if ctx.path else ctx.decision.route
        detail = last.detail if last and last.detail and last.detail not in why else ""
        message = f"No upstream could answer: {why}" + (f" ({detail})" if detail else "")
        if terminal:
            message = f"Route '{route}' is terminal and never falls back: {why}" + (
                f" ({detail})" if detail else "")
        ctx.status = 503
        ctx.error = message
        body = error_body(message, type_="server_error", code="upstream_unavailable")
        return Response(orjson.dumps(body), status_code=503, media_type=JSON, headers=ctx.headers(route))
