"""What one request carries through the router's path: its context, and the path's shared constants."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from services.router.clients import OPEN, Who
from services.router.decide import Decision
from services.router.policy import Policy, Route
from services.router.preflight import Preflight

DONE = b"data: [DONE]\n\n"
JSON = "application/json"
CLIENT_GONE = 499  # the status on the record of a request whose client hung up (nginx's convention)
FINISH_GRACE = 0.5  # seconds to wait for [DONE] (or a usage chunk) after finish_reason


@dataclass(slots=True)
class Ctx:
    """Everything known about one request while it is routed, and what its decision-log line says."""

    request_id: str
    body: dict[str, Any]
    pre: Preflight
    decision: Decision
    policy: Policy
    started: float
    path: list[str] = field(default_factory=list)
    reason: str = ""
    upstream_wait: float = 0.0
    status: int = 0
    error: str | None = None
    ttfb: float | None = None
    final_route: str | None = None
    events: list[str] = field(default_factory=list)
    attempts: list[dict[str, Any]] = field(default_factory=list)
    usage: dict[str, Any] | None = None
    logged: bool = False
    endpoint: str = "/v1/chat/completions"
    # the API the client spoke, and its original body (a native route gets it as is)
    api: Literal["chat", "responses", "messages"] = "chat"
    original: dict[str, Any] | None = None
    who: Who = OPEN  # the client: its name on the record, its class for reserved slots, its routes
    session: str | None = None  # X-Claude-Code-Session-Id, or the OpenAI ``user`` field

    def native(self, route: Route) -> bool:
        """Does ``route`` get the client's own API (its engine serves it), not Chat Completions?"""
        if self.api == "responses":
            return route.responses == "native"
        if self.api == "messages":
            return route.messages == "native"
        return False

    def pinned(self, name: str) -> bool:
        """Did the client name this very route (a pin passes the route's drain)?"""
        return self.decision.pinned and name == self.decision.route

    def upstream_url(self, route: Route) -> str:
        if self.native(route):
            return route.responses_url if self.api == "responses" else route.messages_url
        return route.chat_url

    @property
    def route(self) -> str:
        """The route the request ended on (or was last tried on, or was decided for)."""
        return self.final_route or (self.path[-1] if self.path else self.decision.route)

    def headers(self, route: str) -> dict[str, str]:
        return {
            "X-Homelab-Route": route,
            "X-Homelab-Bucket": self.decision.bucket or "",
            "X-Homelab-Reason": self.reason,
            "X-Homelab-Fallback-Path": ",".join(self.path),
            "X-Request-Id": self.request_id,
        }
