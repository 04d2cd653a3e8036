"""The route walk, pure: which route a request may take next, and why (no I/O, no clock of its own).

The dispatcher performs the walk: it asks :func:`admission` whether a route can take the request
now, tries it, and asks :func:`next_route` / :func:`context_next` where to go after a refusal or a
failed attempt. A route is visited at most once (a retry on the same route is the attempt's own).
"""

from __future__ import annotations

from typing import Literal

from services.router.clients import OPEN, Who
from services.router.policy import Policy, Route
from services.router.state import RouteState

Skip = Literal["no_vision", "not_allowed", "drained", "down", "saturated", "reserved"]
Cause = Literal["drained", "down", "saturated", "reserved", "not_allowed"]


def admission(name: str, route: Route, st: RouteState, *, pinned: bool = False, has_image: bool = False,
              cooldown: float, who: Who = OPEN, cap: int | None = None) -> Skip | None:
    """Why ``route`` cannot take this request now, or None when it can.

    A pinned route (``pinned``: the client named this very route) passes its own drain; an open
    circuit half-opens after ``cooldown`` and then admits one trial request at a time; slots a route
    reserves for other client classes are not this request's to take (``reserved``: it spills as at
    the cap). ``cap``: the slots this replica may count on its own (its share of the route's cap while
    it cannot see the lab's books); 0: the count is the lab's books' to check, not this one's.
    """
    if has_image and not route.vision:
        return "no_vision"
    if not who.may_use(name):
        return "not_allowed"
    if st.drained and not pinned:
        return "drained"
    if not st.available(cooldown):
        return "down"
    if cap == 0:
        return None
    cap = route.max_concurrency if cap is None else cap
    if st.in_flight >= cap:
        return "saturated"
    if st.in_flight >= cap - reserved_for_others(route, who):
        return "reserved"
    return None


def reserved_for_others(route: Route, who: Who) -> int:
    """The slots of ``route`` kept for client classes other than ``who``'s."""
    return sum(n for k, n in route.reserve.items() if k != who.klass)


def next_route(route: Route, has_image: bool, cause: Cause) -> str | None:
    """Where a request goes when ``route`` refused it or failed it (None: nowhere, give up)."""
    if route.terminal:
        return None
    if cause in ("saturated", "reserved") and route.spill is not None:
        return route.spill.image if has_image else route.spill.text
    return route.failover


def vision_fallback(policy: Policy, tried: set[str]) -> str | None:
    """A route that can see, for an image that reached a blind route."""
    if policy.image_route not in tried:
        return policy.image_route
    for name, r in policy.routes.items():
        if r.vision and name not in tried:
            return name
    return None


def context_next(route: Route, tried: set[str], hopped: bool) -> str | None:
    """The one hop a context-length error may take (``context_failover``, else ``failover``)."""
    nxt = route.context_failover or route.failover
    if hopped or nxt is None or nxt in tried:
        return None
    return nxt
