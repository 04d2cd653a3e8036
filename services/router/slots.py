"""One admission for every slot: the first try, a retry after its backoff, a continuation and an
embeddings call all take their slot here, through the same check (cap, drain, circuit and its
half-open trial, reserved slots, the client's routes), and hold it as one :class:`Slot` that gives
it back exactly once.

Alone, the check and the take happen with no ``await`` between them, so two requests can never both
see the last free slot. When replicas share the lab's books (``shared_state:``), the count is the
lab's: one Lua call on Redis checks the cap and takes a lease (:mod:`services.router.lab`), and the
slot is counted here while that call is out (a check meanwhile sees it); while Redis is away the
replica counts alone, against its share of the cap.
"""

from __future__ import annotations

from services.router.clients import OPEN, Who
from services.router.lab import Lease
from services.router.policy import Route
from services.router.state import RouteState
from services.router.walk import Skip, admission, reserved_for_others


class Slot:
    """A request's hold on one slot of one route: released exactly once, whoever calls first."""

    __slots__ = ("lease", "released", "st", "trial")

    def __init__(self, st: RouteState, trial: bool, lease: Lease | None = None) -> None:
        self.st = st
        self.trial = trial  # this request is the half-open circuit's one trial
        self.lease = lease  # its lease in the lab's books (shared state)
        self.released = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.st.give_back(self.trial)
            if self.lease is not None and self.st.lab is not None:
                self.st.lab.give(self.lease)


async def take(name: str, route: Route, st: RouteState, *, pinned: bool = False, has_image: bool = False,
               cooldown: float, who: Who = OPEN) -> Slot | Skip:
    """A slot on ``route`` for this request, or why it may not have one now."""
    lab = st.lab
    if lab is not None and lab.ok:
        # the lab's books count; just after Redis came back, this replica's share must fit too
        mine = lab.share(route.max_concurrency) if lab.settling else 0
        skip = admission(name, route, st, pinned=pinned, has_image=has_image, cooldown=cooldown, who=who, cap=mine)
        if skip is not None:
            return skip
        cap = route.max_concurrency
        # counted here while the lab's books are asked, so the checks of requests arriving meanwhile see it
        st.in_flight += 1
        try:
            got = await lab.take(name, cap, cap - reserved_for_others(route, who), st.circuit == "half_open")
        finally:
            st.in_flight -= 1
        if isinstance(got, Lease):
            return Slot(st, st.take(got.trial), got)
        if got is not None:
            return got
        # Redis did not answer: this replica goes on alone, with its share of the cap
    share = None if lab is None else lab.share(route.max_concurrency)
    skip = admission(name, route, st, pinned=pinned, has_image=has_image, cooldown=cooldown, who=who, cap=share)
    if skip is not None:
        return skip
    trial = st.take()
    return Slot(st, trial, None if lab is None else lab.local(name, trial))
