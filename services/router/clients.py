"""Who is asking: the lab's clients (policy ``clients:``), found by the key they send.

Without ``clients:`` the lab is open, and every request is ``anonymous``. With it, every model
endpoint needs a key (``Authorization: Bearer …`` or ``x-api-key``); its sha256 is compared in
constant time with each client's, and the key itself is never stored or logged.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from starlette.requests import Request

from services.router.errors import RequestError
from services.router.policy import ClientClass, Policy

ANONYMOUS = "anonymous"
LOOPBACK = ("127.0.0.1", "::1", "localhost")


def open_to_network(host: str, policy: Policy) -> bool:
    """Reachable beyond this machine with no ``clients:``: every laptop on the LAN may use the lab."""
    return host not in LOOPBACK and policy.clients is None


@dataclass(frozen=True, slots=True)
class Who:
    name: str
    klass: ClientClass = "interactive"
    routes: frozenset[str] | None = None  # the routes it may use; None: all

    def may_use(self, route: str) -> bool:
        return self.routes is None or route in self.routes


OPEN = Who(ANONYMOUS)


def key_of(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.headers.get("x-api-key") or None


def identify(policy: Policy, request: Request) -> Who:
    """The client a request comes from; a RequestError (401) when the lab has clients and this is none."""
    if policy.clients is None:
        return OPEN
    key = key_of(request)
    if key is None:
        raise RequestError("No API key: this lab needs one (Authorization: Bearer <key>, or x-api-key)",
                           status=401, type_="authentication_error", code="missing_api_key")
    digest = hashlib.sha256(key.encode()).hexdigest().encode()
    found: Who | None = None
    for name, c in policy.clients.items():  # every entry compared, in constant time each
        if hmac.compare_digest(digest, c.key_sha256.encode()):
            found = Who(name, c.class_, frozenset(c.routes) if c.routes is not None else None)
    if found is None:
        raise RequestError("Unknown API key", status=401, type_="authentication_error", code="invalid_api_key")
    return found
