"""The router's admin API, typed: the one place that speaks it for the CLI's runbooks, the watchdog and
the scheduler's checks.

    CallFailed
    ├── RouterUnavailable   the router could not be reached (refused, reset, timeout)
    └── RouterRejected
        └── AdminRefused    the router answered 4xx/5xx: ``path``, ``status``, its ``message`` and body
"""

from __future__ import annotations

from typing import Any

import httpx

from router_client.client import RouterRejected, RouterUnavailable


class AdminRefused(RouterRejected):
    def __init__(self, path: str, status: int, message: str, data: Any) -> None:
        super().__init__(f"{path} refused (HTTP {status}): {message}", status)
        self.path = path
        self.message = message
        self.data = data


class AdminClient:
    """``base_url`` is the router's address (``…/v1`` is fine); ``token`` its admin token (None: only
    ``stats`` answers, with counts and no names)."""

    def __init__(self, base_url: str, token: str | None, client: httpx.AsyncClient, timeout: float = 30) -> None:
        self.base = base_url.rstrip("/").removesuffix("/v1")
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.client = client
        self.timeout = timeout

    async def call(self, method: str, path: str, *, json: Any = None, content: bytes | None = None,
                   seconds: float | None = None) -> Any:
        """One admin call: the decoded answer, or AdminRefused / RouterUnavailable."""
        try:
            r = await self.client.request(method, self.base + path, headers=self.headers, json=json,
                                          content=content, timeout=seconds or self.timeout)
        except httpx.HTTPError as exc:
            raise RouterUnavailable(f"cannot reach the router at {self.base}: {type(exc).__name__}") from exc
        try:
            data = r.json()
        except ValueError:
            data = {"error": {"message": r.text[:300]}}
        if r.status_code >= 400:
            err = data.get("error") if isinstance(data, dict) else None
            message = str(err.get("message") if isinstance(err, dict) else data)
            raise AdminRefused(path, r.status_code, message, data)
        return data

    async def upstreams(self) -> dict[str, dict[str, Any]]:
        """Every route's live state (health, load, circuit, drain, poisoning, capabilities)."""
        routes: dict[str, dict[str, Any]] = (await self.upstreams_doc())["routes"]
        return routes

    async def upstreams_doc(self) -> dict[str, Any]:
        """``/admin/upstreams`` whole: the routes, and with shared state ``shared_state`` and ``replicas``."""
        data = await self.call("GET", "/admin/upstreams")
        if not isinstance(data, dict) or not isinstance(data.get("routes"), dict):
            raise RouterUnavailable("/admin/upstreams: the answer has no routes")
        return data

    async def stats(self) -> dict[str, Any]:
        """``/stats``: everything with the token, counts only without."""
        data = await self.call("GET", "/stats")
        if not isinstance(data, dict):
            raise RouterUnavailable("/stats: the answer is not a JSON object")
        return data

    async def drain(self, route: str) -> dict[str, Any]:
        return dict(await self.call("POST", f"/admin/drain/{route}"))

    async def undrain(self, route: str) -> dict[str, Any]:
        return dict(await self.call("POST", f"/admin/undrain/{route}"))

    async def reload(self) -> dict[str, Any]:
        return dict(await self.call("POST", "/admin/reload-config"))

    async def recover_cuda(self, route: str) -> dict[str, Any]:
        """Runs the route's recovery command: as long as it takes (the router kills it at recover_timeout)."""
        return dict(await self.call("POST", "/admin/recover-cuda", json={"route": route}, seconds=660))

    async def shadow_load(self, policy_text: str) -> dict[str, Any]:
        return dict(await self.call("POST", "/admin/shadow", content=policy_text.encode()))

    async def shadow(self) -> dict[str, Any]:
        return dict(await self.call("GET", "/admin/shadow"))

    async def shadow_drop(self) -> dict[str, Any]:
        return dict(await self.call("DELETE", "/admin/shadow"))

    async def shadow_promote(self) -> dict[str, Any]:
        return dict(await self.call("POST", "/admin/shadow/promote"))
