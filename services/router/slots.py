"""One admission for every slot: the first try, a retry after its backoff, a continuation and an
embeddings call all take their slot here, through the same check (cap, drain, circuit and its
half-open trial, reserved slots, the client's routes), and hold it as one :class:`Slot` that gives
it back exactly once.

The check and the take happen with no ``await`` between them, so two requests can never both see
the last free slot.
"""

from __future__ import annotations

from services.router.clients import OPEN, Who
from services.router.policy import Route
from services.router.state import RouteState
from services.router.walk import Skip, admission


class Slot:
    """A request's hold on one slot of one route: released exactly once, whoever calls first."""

    __slots__ = ("released", "st", "trial")

    def __init__(self, st: RouteState, trial: bool) -> None:
        self.st = st
        self.trial = trial  # this request is the half-open circuit's one trial
        self.released = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.st.give_back(self.trial)


def take(name: str, route: Route, st: RouteState, *, pinned: bool = False, has_image: bool = False,
         cooldown: float, who: Who = OPEN) -> Slot | Skip:
    """A slot on ``route`` for this request, or why it may not have one now."""
    skip = admission(name, route, st, pinned=pinned, has_image=has_image, cooldown=cooldown, who=who)
    if skip is not None:
        return skip
    return Slot(st, st.take())
