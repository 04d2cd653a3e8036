"""The admin API, every endpoint behind one token check: upstream state, drain, reload, the shadow
policy and its promotion, CUDA recovery."""

from __future__ import annotations

import asyncio

import orjson
from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from services.router.errors import PolicyError, RequestError
from services.router.http import check_admin, read_body, read_raw
from services.router.request import JSON
from services.router.service import RouterService, compile_candidate
from services.router.state import RouteState

# An admin body (a candidate policy, a recovery request) is small: past this it is refused at once (413).
ADMIN_MAX_BODY = 1024 * 1024


def _json(value: object, status: int = 200) -> Response:
    return Response(orjson.dumps(value), status_code=status, media_type=JSON)


def admin_api(svc: RouterService) -> APIRouter:
    def require_admin(request: Request) -> None:
        check_admin(request, svc.settings.admin_token)

    api = APIRouter(prefix="/admin", dependencies=[Depends(require_admin)])

    def route_state(name: str) -> RouteState:
        if name not in svc.states:
            raise RequestError(f"Unknown route '{name}'. Routes: {', '.join(svc.states)}", status=404,
                               code="unknown_route")
        return svc.states[name]

    @api.get("/upstreams")
    async def upstreams() -> Response:
        return _json(svc.upstreams(await svc.lab.in_flight() if svc.lab is not None else None))

    @api.get("/policy")
    async def policy() -> Response:
        """The policy in force (the watchdog follows it: reloads and promotions included)."""
        doc = svc.policy.model_dump(mode="json", by_alias=True, exclude={"routes": {"__all__": {"api_key"}}})
        for client in (doc.get("clients") or {}).values():
            client["key_sha256"] = "<redacted>"  # a key's hash is enough to try keys against offline
        return _json(doc)

    @api.post("/drain/{route}")
    async def drain(route: str) -> Response:
        route_state(route).mark(drained=True)
        svc.recoveries.write({"route": route, "action": "drain"})
        return _json({"route": route, "drained": True})

    @api.post("/undrain/{route}")
    async def undrain(route: str) -> Response:
        st = route_state(route)
        st.mark(drained=False, poisoned=False)  # the operator vouches for the route again
        svc.recoveries.write({"route": route, "action": "undrain"})
        return _json({"route": route, "drained": False})

    @api.post("/reload-config")
    async def reload_config() -> Response:
        try:
            decider = svc.reload()
        except PolicyError as exc:
            svc.recoveries.write({"action": "reload", "ok": False, "error": str(exc)})
            raise RequestError(f"Policy rejected, the old one keeps serving: {exc}", code="invalid_policy") \
                from exc
        svc.recoveries.write({"action": "reload", "ok": True})
        svc.after_policy_change()
        await svc.share_policy()
        return _json({"reloaded": True, "routes": list(decider.policy.routes),
                      "buckets": list(decider.policy.buckets)})

    @api.post("/shadow")
    async def shadow_load(request: Request) -> Response:
        raw = await read_raw(request, ADMIN_MAX_BODY)
        try:
            # parsing and the golden cases run off the event loop: serving never waits for them
            candidate = await asyncio.to_thread(compile_candidate, raw.decode("utf-8", "replace"))
            shadow = svc.load_shadow(candidate)
        except PolicyError as exc:
            raise RequestError(f"Shadow policy rejected: {exc}", code="invalid_policy") from exc
        routes = list(shadow.decider.policy.routes)
        svc.recoveries.write({"action": "shadow_load", "ok": True, "routes": routes})
        return _json({"shadow": True, "routes": routes})

    @api.get("/shadow")
    async def shadow_report() -> Response:
        return _json({"shadow": svc.shadow.report() if svc.shadow else None})

    @api.delete("/shadow")
    async def shadow_drop() -> Response:
        report = svc.shadow.report() if svc.shadow else None
        svc.shadow = None
        svc.recoveries.write({"action": "shadow_drop"})
        return _json({"shadow": None, "final": report})

    @api.post("/shadow/promote")
    async def shadow_promote() -> Response:
        shadow = svc.shadow
        if shadow is None:
            raise RequestError("No shadow policy is loaded", status=409, code="no_shadow")
        try:
            decider = svc.promote_shadow(shadow)
        except PolicyError as exc:
            svc.recoveries.write({"action": "shadow_promote", "ok": False, "error": str(exc)})
            raise RequestError(f"Shadow policy not promoted (the live policy changed since it was loaded): {exc}",
                               status=409, code="invalid_policy") from exc
        svc.recoveries.write({"action": "shadow_promote", "ok": True, "report": shadow.report()})
        svc.after_policy_change()
        await svc.share_policy()
        return _json({"promoted": True, "routes": list(decider.policy.routes)})

    @api.post("/recover-cuda")
    async def recover_cuda(request: Request) -> Response:
        body = await read_body(request, ADMIN_MAX_BODY)
        name = body.get("route") if isinstance(body, dict) else None
        if not isinstance(name, str):
            raise RequestError('Body must be {"route": "<route name>"}', param="route")
        route_state(name)
        route = svc.policy.routes[name]
        if route.terminal:
            svc.recoveries.write({"route": name, "action": "recover_cuda", "ok": False,
                                  "error": "terminal route: refused, operator paged"})
            raise RequestError(f"Route '{name}' is terminal: automation never recovers it; page the operator",
                               status=403, type_="permission_error", code="terminal_route")
        if not route.recover_command:
            raise RequestError(f"Route '{name}' has no recover_command configured", status=409,
                               code="no_recover_command")
        lock = svc.recovery.lock(name)
        if lock.locked():
            raise RequestError(f"A recovery of '{name}' is already running", status=409, code="in_progress")
        lab = svc.lab
        if lab is not None and not await lab.recovery_lock(name, route.recover_timeout):
            raise RequestError(f"A recovery of '{name}' is already running on another replica", status=409,
                               code="in_progress")
        try:
            async with lock:
                record = await svc.recovery.recover(name)
        finally:
            if lab is not None:
                await lab.recovery_done(name)
        return _json(record, 200 if record["ok"] else 500)

    return api
