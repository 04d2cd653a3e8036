"""The shadow policy: a candidate policy that decides every live request too, without serving any.

Pure: no upstream call, no I/O. The disagreements form a matrix (live route → candidate route) with
counts, a few recent request ids and the keywords the candidate matched — never prompt text.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from services.router.decide import Decider, Decision
from services.router.errors import PolicyError, RequestError
from services.router.policy import Policy

RECENT = 5


# What a policy sent over HTTP may not change: they come only from the file on disk.
FROZEN = ("recover_command", "recover_timeout", "terminal", "base_url", "api_key")


def refuse_changes(live: Policy, candidate: Policy) -> None:
    """A candidate may change how requests are decided, never what runs or where the lab's engines are:
    commands, whether a route is terminal, upstream addresses and keys, and who may use the lab
    (``clients:``) stay the live policy's."""
    if candidate.clients != live.clients:
        raise PolicyError("clients: differs from the live policy's; a policy sent over HTTP cannot change who may "
                          "use the lab (edit the policy file and reload instead)")
    for name, route in candidate.routes.items():
        current = live.routes.get(name)
        for key in FROZEN:
            mine = getattr(route, key)
            theirs = getattr(current, key) if current is not None else None
            if current is None and key == "terminal" and not mine:
                continue
            if mine != theirs:
                raise PolicyError(
                    f"routes.{name}.{key}: differs from the live policy's; a policy sent over HTTP cannot "
                    "change commands, terminal routes or upstream addresses (edit the policy file and reload "
                    "instead)")


@dataclass(slots=True)
class _Cell:
    count: int = 0
    recent: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=RECENT))


@dataclass
class Shadow:
    decider: Decider
    loaded_at: float = field(default_factory=time.time)
    decided: int = 0
    agreed: int = 0
    cells: dict[tuple[str, str], _Cell] = field(default_factory=dict)

    def observe(self, request_id: str, live: Decision, *, model: str, text: str, has_image: bool, tokens: int,
                header_route: str | None, metadata_bucket: object) -> str:
        """Decide the request by the candidate; count it; return the candidate's route (or ``error:<code>``)."""
        try:
            cand: Decision | None = self.decider.decide(model=model, text=text, has_image=has_image, tokens=tokens,
                                                       header_route=header_route, metadata_bucket=metadata_bucket)
        except RequestError as exc:
            cand = None
            cand_route = f"error:{exc.code or exc.status}"
        else:
            assert cand is not None
            cand_route = cand.route
        self.decided += 1
        if cand_route == live.route:
            self.agreed += 1
            return cand_route
        cell = self.cells.setdefault((live.route, cand_route), _Cell())
        cell.count += 1
        keywords = sorted({k for ks in (cand.matched if cand else {}).values() for k in ks})
        cell.recent.append({"request_id": request_id, "live_bucket": live.bucket,
                            "candidate_bucket": cand.bucket if cand else None,
                            "candidate_reason": cand.reason if cand else cand_route, "keywords": keywords})
        return cand_route

    def summary(self) -> dict[str, Any]:
        """What anyone may see: counts, no request ids or keywords."""
        return {"loaded_at": self.loaded_at, "decided": self.decided, "agreed": self.agreed,
                "disagreed": self.decided - self.agreed}

    def report(self) -> dict[str, Any]:
        return {
            "loaded_at": self.loaded_at,
            "decided": self.decided,
            "agreed": self.agreed,
            "disagreed": self.decided - self.agreed,
            "matrix": [{"live_route": live, "candidate_route": cand, "count": c.count, "recent": list(c.recent)}
                       for (live, cand), c in sorted(self.cells.items(), key=lambda kv: -kv[1].count)],
        }
