"""homelab-router's HTTP app: OpenAI shim, metrics, admin API; owns its clients through lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from fastapi import FastAPI, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from services.router.decide import Decision, Router, check_examples
from services.router.errors import PolicyError, RequestError, error_body
from services.router.metrics import Metrics
from services.router.mqtt_state import RouterMqtt, snapshot_of
from services.router.policy import Policy, load_policy, parse_policy
from services.router.preflight import EmbeddingsRequest, Preflight, preflight
from services.router.proxy import JSON, Ctx, Dispatcher, RelayResponse
from services.router.responses import StreamTranslator, to_chat, to_response
from services.router.shadow import Shadow, refuse_commands
from services.router.state import RouteState
from shared.jsonl import JsonlWriter, log_dir

log = logging.getLogger("homelab.router")

DEFAULT_MAX_BODY = 64 * 1024 * 1024


class RouterApp(FastAPI):
    """FastAPI with a fast path: the hot endpoints (which catch every error themselves and answer in
    OpenAI's shape) are called straight from the ASGI entry, skipping the middleware stack, routing and
    dependency solving — a third of the router's CPU per request when measured. Everything else
    (admin, metrics, 404s) goes through FastAPI as usual."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fast_routes: dict[tuple[str, str], Callable[[Request], Awaitable[Response]]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            handler = self.fast_routes.get((scope["method"], scope["path"]))
            if handler is not None:
                response = await handler(Request(scope, receive))
                await response(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def compile_policy(policy: Policy) -> Router:
    """A policy ready to serve: golden cases must pass, or it is rejected."""
    router = Router(policy)
    failures = check_examples(router)
    if failures:
        raise PolicyError("golden cases failed: " + "; ".join(failures))
    return router


@dataclass
class RouterSettings:
    policy_path: Path
    admin_token: str | None = None
    log_dir: Path = field(default_factory=log_dir)
    max_body: int = DEFAULT_MAX_BODY
    probes: bool = True
    mqtt_url: str | None = None  # publish route health and load (HA discovery) when set

    @classmethod
    def from_env(cls, policy_path: Path) -> RouterSettings:
        return cls(
            policy_path=policy_path,
            admin_token=os.environ.get("HOMELAB_ADMIN_TOKEN") or None,
            log_dir=log_dir(),
            max_body=int(os.environ.get("HOMELAB_MAX_BODY_BYTES", DEFAULT_MAX_BODY)),
            mqtt_url=os.environ.get("HOMELAB_MQTT_URL") or None,
        )


class RouterService:
    """The router's live state: the compiled policy (swapped atomically on reload) and per-route state."""

    def __init__(self, settings: RouterSettings, router: Router) -> None:
        self.settings = settings
        self.router = router
        self.states: dict[str, RouteState] = {name: RouteState(name) for name in router.policy.routes}
        d = settings.log_dir
        self.decisions = JsonlWriter(d / "router-decisions.jsonl")
        self.failures = JsonlWriter(d / "upstream-failures.jsonl")
        self.recoveries = JsonlWriter(d / "recovery-events.jsonl")
        self.validations = JsonlWriter(d / "structured-validation.jsonl")
        self.writers = (self.decisions, self.failures, self.recoveries, self.validations)
        self.metrics = Metrics(self._route_rows, lambda: self.writers)
        self.shadow: Shadow | None = None
        self.session: aiohttp.ClientSession | None = None
        self.dispatcher: Dispatcher | None = None
        self.poison_listeners: list[Callable[[str, str], Awaitable[None]]] = []
        self._recover_locks: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.started = time.time()

    def _route_rows(self) -> list[tuple[RouteState, int]]:
        routes = self.router.policy.routes
        return [(st, routes[n].max_concurrency) for n, st in self.states.items() if n in routes]

    async def _on_poisoned(self, route: str, detail: str) -> None:
        for listener in self.poison_listeners:
            try:
                await listener(route, detail)
            except Exception:  # a listener must never break the request path
                log.exception("poison listener failed for %s", route)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=60)
        async with aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                         skip_auto_headers=("User-Agent",)) as session:
            self.session = session
            self.dispatcher = Dispatcher(session, lambda: self.states, self.metrics, self.decisions,
                                         self.failures, self.validations, self._on_poisoned)
            async with asyncio.TaskGroup() as tg:
                background = []
                if self.settings.probes:
                    background.append(tg.create_task(self._probe_loop(), name="router-health-probes"))
                if self.settings.mqtt_url:
                    mqtt = RouterMqtt(self.settings.mqtt_url, snapshot_of(
                        lambda: self.states,
                        lambda: {n: r.max_concurrency for n, r in self.router.policy.routes.items()}))
                    self.poison_listeners.append(mqtt.poisoned)
                    background.append(tg.create_task(mqtt.run(), name="router-mqtt"))
                try:
                    yield
                finally:
                    for task in background:
                        task.cancel()
        for w in self.writers:
            w.close()

    # ---- health probes ---------------------------------------------------------------------

    async def probe_once(self) -> None:
        policy = self.router.policy
        await asyncio.gather(*(self._probe(name) for name in policy.routes), return_exceptions=True)

    async def _probe(self, name: str) -> None:
        policy = self.router.policy
        route = policy.routes[name]
        st = self.states[name]
        assert self.session is not None
        try:
            async with self.session.get(route.models_url, headers=_auth(route.api_key),
                                        timeout=aiohttp.ClientTimeout(total=policy.health.probe_timeout)) as r:
                await r.read()
                ok = r.status == 200
                err = None if ok else f"probe: http_{r.status}"
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            ok, err = False, f"probe: {type(exc).__name__}: {exc}"
        if ok != st.healthy:
            log.warning("route %s is now %s%s", name, "up" if ok else "down", f" ({err})" if err else "")
        st.probe_result(ok, err)
        if ok and st.continuation_checked_at is None and self._needs_continuation_check(name):
            st.continuation_checked_at = time.time()  # once; reload and promotion check again
            self._spawn(self.check_continuation(name))

    # ---- continuation capability: checked, not trusted -------------------------------------------

    def _needs_continuation_check(self, name: str) -> bool:
        policy = self.router.policy
        return policy.health.probe_continuation and "prefill" in policy.routes[name].continuation

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def after_policy_change(self) -> None:
        """A new policy may declare new modes or point a route elsewhere: check continuation again."""
        for name, st in self.states.items():
            st.continuation_blocked.clear()
            st.continuation_checked_at = None
            if self.session is not None and self._needs_continuation_check(name) and st.healthy:
                st.continuation_checked_at = time.time()
                self._spawn(self.check_continuation(name))

    async def check_continuation(self, name: str) -> str:
        """Does this upstream really continue an assistant prefill? Returns the verdict (also logged).

        Two one-token requests over the same conversation ending in an assistant turn: with
        ``continue_final_message`` and as a new turn. An engine that continues renders the prefill
        open (no end-of-turn, no new assistant header), so its prompt is shorter; one that starts a
        new turn (llama.cpp's chat template) renders both the same, and one that refuses answers 4xx.
        """
        route = self.router.policy.routes[name]
        st = self.states[name]
        assert self.session is not None
        convo = [{"role": "user", "content": "Say hello."}, {"role": "assistant", "content": "Hello"}]
        common = {"model": route.model, "messages": convo, "max_tokens": 1, "temperature": 0, "stream": False}
        bodies = ({**common, "continue_final_message": True, "add_generation_prompt": False}, common)
        results: list[tuple[int, Any]] = []
        try:
            for body in bodies:
                async with self.session.post(route.chat_url, data=orjson.dumps(body),
                                             headers={"Content-Type": JSON, **_auth(route.api_key)},
                                             timeout=aiohttp.ClientTimeout(total=route.first_token_timeout)) as r:
                    raw = await r.read()
                    try:
                        results.append((r.status, orjson.loads(raw)))
                    except orjson.JSONDecodeError:
                        results.append((r.status, None))
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            st.continuation_checked_at = None  # try again when the route answers
            return f"unverified: {type(exc).__name__}"
        (sa, a), (sb, b) = results
        verdict = "unverified"
        if 400 <= sa < 500:
            verdict = f"prefill refused: HTTP {sa}"
            st.continuation_blocked["prefill"] = verdict
        elif sa == 200 and sb == 200:
            pa = ((a or {}).get("usage") or {}).get("prompt_tokens")
            pb = ((b or {}).get("usage") or {}).get("prompt_tokens")
            if isinstance(pa, int) and isinstance(pb, int):
                if pa >= pb:
                    verdict = (f"starts a new turn instead of continuing a prefill (prompt tokens {pa} with the "
                               f"prefill, {pb} as a new turn)")
                    st.continuation_blocked["prefill"] = verdict
                else:
                    verdict = "continues"
                    st.continuation_blocked.pop("prefill", None)
        st.continuation_checked_at = time.time()
        mode = st.effective_continuation(route.continuation)
        self.recoveries.write({"action": "continuation_check", "route": name, "verdict": verdict,
                               "continuation_effective": mode})
        if "prefill" in st.continuation_blocked:
            log.error("route %s declares prefill continuation but its upstream %s: %s; continuing there %s",
                      name, route.base_url, verdict,
                      "by instruction instead" if mode == "instruct" else "is off")
        return verdict

    async def _probe_loop(self) -> None:
        while True:
            await self.probe_once()
            await asyncio.sleep(self.router.policy.health.probe_interval)

    # ---- reload ----------------------------------------------------------------------------

    def reload(self) -> Router:
        """Re-read the policy file; on any error raise PolicyError and keep serving the old policy."""
        return self.install(compile_policy(load_policy(self.settings.policy_path)))

    def install(self, router: Router) -> Router:
        """Make a compiled policy the live one (reload, shadow promotion)."""
        for name in router.policy.routes:
            self.states.setdefault(name, RouteState(name))
        for name in list(self.states):
            if name not in router.policy.routes:
                del self.states[name]
        self.router = router  # one assignment: requests in flight keep the policy they started with
        return router

    def observe_shadow(self, request_id: str, decision: Decision, pre: Preflight, header_route: str | None) -> None:
        """Decide a live request by the shadow policy too (scheduled after the live decision, no I/O)."""
        shadow = self.shadow
        if shadow is None:
            return
        try:
            cand = shadow.observe(request_id, decision, model=pre.model, text=pre.text, has_image=pre.has_image,
                                  tokens=pre.tokens, header_route=header_route,
                                  metadata_bucket=pre.metadata.get("homelab_bucket"))
            self.metrics.shadow.labels(decision.route, cand).inc()
        except Exception:  # the shadow never affects serving
            self.metrics.internal_errors.labels("shadow").inc()
            log.exception("shadow decision failed for %s", request_id)

    def log_stats(self) -> dict[str, Any]:
        return {w.path.name: {"write_errors": w.errors, "rotations": w.rotations} for w in self.writers}

    def recover_lock(self, route: str) -> asyncio.Lock:
        return self._recover_locks.setdefault(route, asyncio.Lock())


def _auth(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


def _error(status: int, message: str, type_: str = "invalid_request_error", code: str | None = None,
           param: str | None = None) -> Response:
    return Response(orjson.dumps(error_body(message, type_=type_, code=code, param=param)),
                    status_code=status, media_type=JSON)


async def _read_body(request: Request, limit: int) -> Any:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise RequestError(f"Request body of {length} bytes is over the limit of {limit} bytes",
                           status=413, code="request_too_large")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(f"Request body is over the limit of {limit} bytes", status=413,
                               code="request_too_large")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw:
        raise RequestError("Invalid request: the body is empty; a JSON object is expected")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise RequestError(f"Invalid request: the body is not valid JSON ({exc})") from exc


def create_app(settings: RouterSettings, router: Router | None = None) -> FastAPI:
    svc = RouterService(settings, router or compile_policy(load_policy(settings.policy_path)))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with svc.running():
            yield

    app = RouterApp(title="homelab-router", lifespan=lifespan, docs_url=None, redoc_url=None,
                    openapi_url=None)
    app.state.svc = svc

    def rejected(request: Request, status: int, reason: str, message: str, request_id: str | None = None) -> str:
        """Every request is on the record: a refused one gets a decision-log line too."""
        rid = request_id or uuid.uuid4().hex[:16]
        svc.decisions.write({"request_id": rid, "endpoint": request.url.path, "method": request.method,
                             "status": status, "reason": reason, "error": message[:500]})
        return rid

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, exc: RequestError) -> Response:
        rid = rejected(request, exc.status, exc.code or exc.type, exc.message)
        return Response(orjson.dumps(exc.body()), status_code=exc.status, media_type=JSON,
                        headers={"X-Request-Id": rid})

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        message = str(exc.detail)
        if exc.status_code == 404:
            message = f"Unknown path {request.method} {request.url.path}"
        rid = rejected(request, exc.status_code, code or "http_error", message)
        resp = _error(exc.status_code, message, code=code)
        resp.headers["X-Request-Id"] = rid
        return resp

    def internal_error(where: str, request_id: str) -> Response:
        """An unexpected exception: logged with the request id, answered as an OpenAI-shaped 500."""
        log.exception("internal error in %s (request %s)", where, request_id)
        svc.metrics.internal_errors.labels(where).inc()
        body = error_body(f"Internal error in homelab-router (request {request_id}); see the router's log",
                          type_="server_error", code="internal_error")
        body["error"]["request_id"] = request_id
        return Response(orjson.dumps(body), status_code=500, media_type=JSON, headers={"X-Request-Id": request_id})

    def require_admin(request: Request) -> None:
        token = settings.admin_token
        if not token:
            raise RequestError("Admin API is disabled: set HOMELAB_ADMIN_TOKEN to enable it", status=403,
                               type_="permission_error", code="admin_disabled")
        given = request.headers.get("authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.encode(), token.encode()):
            raise RequestError("Missing or wrong admin bearer token", status=401,
                               type_="authentication_error", code="invalid_token")

    def decided(request: Request, request_id: str, started: float, chat_body: Any, **extra: Any) -> Ctx:
        """Preflight and the routing decision (the shadow policy decides it too, off the answer's path)."""
        pre = preflight(chat_body)
        router = svc.router
        header_route = request.headers.get("x-homelab-route")
        decision = router.decide(
            model=pre.model, text=pre.text, has_image=pre.has_image, tokens=pre.tokens,
            header_route=header_route, metadata_bucket=pre.metadata.get("homelab_bucket"),
        )
        if svc.shadow is not None:
            asyncio.get_running_loop().call_soon(svc.observe_shadow, request_id, decision, pre, header_route)
        return Ctx(request_id, chat_body, pre, decision, router.policy, started, **extra)

    Answer = Callable[[Request, str, float], Awaitable[Response]]

    def answered(where: str, answer: Answer) -> Callable[[Request], Awaitable[Response]]:
        """A hot endpoint: its request id and start time, a refused request on the record, and any
        unexpected exception as an OpenAI-shaped 500 carrying the request id."""

        async def endpoint(request: Request) -> Response:
            started = time.perf_counter()
            request_id = os.urandom(8).hex()
            try:
                return await answer(request, request_id, started)
            except RequestError as exc:
                rejected(request, exc.status, exc.code or exc.type, exc.message, request_id)
                return Response(orjson.dumps(exc.body()), status_code=exc.status, media_type=JSON,
                                headers={"X-Request-Id": request_id})
            except Exception:
                return internal_error(where, request_id)

        return endpoint

    async def chat(request: Request, request_id: str, started: float) -> Response:
        ctx = decided(request, request_id, started, await _read_body(request, settings.max_body))
        assert svc.dispatcher is not None
        return await svc.dispatcher.chat(ctx)

    async def responses(request: Request, request_id: str, started: float) -> Response:
        """The Responses API, routed by the same policy (translated to Chat Completions unless native)."""
        body = await _read_body(request, settings.max_body)
        tr = to_chat(body)
        ctx = decided(request, request_id, started, tr.chat, endpoint="/v1/responses", responses=body)
        ctx.events.extend(tr.notes)
        assert svc.dispatcher is not None
        resp = await svc.dispatcher.chat(ctx)
        final = ctx.policy.routes.get(ctx.final_route or "")
        if resp.status_code != 200 or final is None or ctx.native(final):
            return resp  # an error (OpenAI-shaped), or the engine's own Responses answer
        if isinstance(resp, RelayResponse):
            return resp.rewrap(StreamTranslator(body, request_id).translate)
        headers = {k: v for k, v in resp.headers.items() if k.lower().startswith("x-")}
        if ctx.pre.stream:
            out = StreamTranslator(body, request_id).feed_bytes(bytes(resp.body))
            return Response(out, media_type="text/event-stream", headers=headers)
        answer = to_response(orjson.loads(resp.body), body, request_id)
        return Response(orjson.dumps(answer), media_type=JSON, headers=headers)

    for path, where, handle in (("/v1/chat/completions", "chat", chat), ("/v1/responses", "responses", responses)):
        endpoint = answered(where, handle)
        app.post(path)(endpoint)  # FastAPI knows the route (405 for other methods) ...
        app.fast_routes[("POST", path)] = endpoint  # ... and the fast path serves it

    @app.get("/v1/models")
    async def models() -> Response:
        now = int(svc.started)
        data = [{"id": m, "object": "model", "created": now, "owned_by": "homelab"}
                for m in svc.router.catalog()]
        return Response(orjson.dumps({"object": "list", "data": data}), media_type=JSON)

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Response:
        body = await _read_body(request, settings.max_body)
        try:
            EmbeddingsRequest.model_validate(body)
        except ValidationError as exc:
            e = exc.errors()[0]
            where = ".".join(str(p) for p in e["loc"]) or "body"
            raise RequestError(f"Invalid embeddings request: {where}: {e['msg']}", param=where) from exc
        policy = svc.router.policy
        name = policy.embeddings_route or policy.image_route
        route = policy.routes[name]
        assert svc.session is not None
        headers = {"X-Homelab-Route": name, "X-Homelab-Reason": "embeddings_route"}
        try:
            async with asyncio.timeout(route.request_timeout):
                async with svc.session.post(route.embeddings_url, data=orjson.dumps({**body, "model": route.model}),
                                            headers={"Content-Type": JSON, **_auth(route.api_key)}) as r:
                    raw = await r.read()
                    return Response(raw, status_code=r.status, media_type=JSON, headers=headers)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            svc.failures.write({"route": name, "kind": "embeddings", "detail": f"{type(exc).__name__}: {exc}"})
            return _error(503, f"Embeddings route '{name}' is unavailable: {type(exc).__name__}",
                          type_="server_error", code="upstream_unavailable")

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(svc.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/stats")
    async def stats() -> Response:
        policy = svc.router.policy
        out = {
            "uptime_s": round(time.time() - svc.started, 1),
            "routes": {n: st.snapshot(policy.routes[n].max_concurrency, policy.routes[n].continuation)
                       for n, st in svc.states.items()},
            "logs": svc.log_stats(),
            "shadow": svc.shadow.report() if svc.shadow else None,
            "metrics": svc.metrics.snapshot(),
        }
        return Response(orjson.dumps(out), media_type=JSON)

    # ---- admin -------------------------------------------------------------------------------

    @app.get("/admin/upstreams")
    async def upstreams(request: Request) -> Response:
        require_admin(request)
        policy = svc.router.policy
        out = {}
        for name, st in svc.states.items():
            r = policy.routes[name]
            out[name] = {**st.snapshot(r.max_concurrency, r.continuation), "model": r.model, "base_url": r.base_url,
                         "terminal": r.terminal, "vision": r.vision}
        return Response(orjson.dumps({"routes": out}), media_type=JSON)

    def _route_or_404(name: str) -> RouteState:
        if name not in svc.states:
            raise RequestError(f"Unknown route '{name}'. Routes: {', '.join(svc.states)}", status=404,
                               code="unknown_route")
        return svc.states[name]

    @app.post("/admin/drain/{route}")
    async def drain(route: str, request: Request) -> Response:
        require_admin(request)
        st = _route_or_404(route)
        st.drained = True
        svc.recoveries.write({"route": route, "action": "drain"})
        return Response(orjson.dumps({"route": route, "drained": True}), media_type=JSON)

    @app.post("/admin/undrain/{route}")
    async def undrain(route: str, request: Request) -> Response:
        require_admin(request)
        st = _route_or_404(route)
        st.drained = False
        st.poisoned = False  # the operator vouches for the route again
        svc.recoveries.write({"route": route, "action": "undrain"})
        return Response(orjson.dumps({"route": route, "drained": False}), media_type=JSON)

    @app.post("/admin/reload-config")
    async def reload_config(request: Request) -> Response:
        require_admin(request)
        try:
            router = svc.reload()
        except PolicyError as exc:
            svc.recoveries.write({"action": "reload", "ok": False, "error": str(exc)})
            raise RequestError(f"Policy rejected, the old one keeps serving: {exc}", code="invalid_policy") \
                from exc
        svc.recoveries.write({"action": "reload", "ok": True})
        svc.after_policy_change()
        return Response(orjson.dumps({"reloaded": True, "routes": list(router.policy.routes),
                                      "buckets": list(router.policy.buckets)}), media_type=JSON)

    @app.post("/admin/shadow")
    async def shadow_load(request: Request) -> Response:
        require_admin(request)
        raw = await request.body()
        try:
            candidate = parse_policy(raw.decode("utf-8", "replace"), "candidate")
            refuse_commands(svc.router.policy, candidate)
            shadow = Shadow(compile_policy(candidate))
        except PolicyError as exc:
            raise RequestError(f"Shadow policy rejected: {exc}", code="invalid_policy") from exc
        svc.shadow = shadow
        svc.recoveries.write({"action": "shadow_load", "ok": True, "routes": list(candidate.routes)})
        return Response(orjson.dumps({"shadow": True, "routes": list(candidate.routes)}), media_type=JSON)

    @app.get("/admin/shadow")
    async def shadow_report(request: Request) -> Response:
        require_admin(request)
        return Response(orjson.dumps({"shadow": svc.shadow.report() if svc.shadow else None}), media_type=JSON)

    @app.delete("/admin/shadow")
    async def shadow_drop(request: Request) -> Response:
        require_admin(request)
        report = svc.shadow.report() if svc.shadow else None
        svc.shadow = None
        svc.recoveries.write({"action": "shadow_drop"})
        return Response(orjson.dumps({"shadow": None, "final": report}), media_type=JSON)

    @app.post("/admin/shadow/promote")
    async def shadow_promote(request: Request) -> Response:
        require_admin(request)
        shadow = svc.shadow
        if shadow is None:
            raise RequestError("No shadow policy is loaded", status=409, code="no_shadow")
        router = svc.install(shadow.router)
        svc.shadow = None
        svc.recoveries.write({"action": "shadow_promote", "ok": True, "report": shadow.report()})
        svc.after_policy_change()
        return Response(orjson.dumps({"promoted": True, "routes": list(router.policy.routes)}), media_type=JSON)

    @app.post("/admin/recover-cuda")
    async def recover_cuda(request: Request) -> Response:
        require_admin(request)
        body = await _read_body(request, 65536)
        name = body.get("route") if isinstance(body, dict) else None
        if not isinstance(name, str):
            raise RequestError('Body must be {"route": "<route name>"}', param="route")
        st = _route_or_404(name)
        route = svc.router.policy.routes[name]
        if route.terminal:
            svc.recoveries.write({"route": name, "action": "recover_cuda", "ok": False,
                                  "error": "terminal route: refused, operator paged"})
            raise RequestError(f"Route '{name}' is terminal: automation never recovers it; page the operator",
                               status=403, type_="permission_error", code="terminal_route")
        if not route.recover_command:
            raise RequestError(f"Route '{name}' has no recover_command configured", status=409,
                               code="no_recover_command")
        lock = svc.recover_lock(name)
        if lock.locked():
            raise RequestError(f"A recovery of '{name}' is already running", status=409, code="in_progress")
        async with lock:
            st.recovering = True
            t0 = time.monotonic()
            try:
                proc = await asyncio.create_subprocess_exec(
                    *route.recover_command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
                out, _ = await proc.communicate()
                ok = proc.returncode == 0
            except OSError as exc:
                ok, out = False, str(exc).encode()
                proc = None
            finally:
                st.recovering = False
            if ok:
                st.poisoned = False
            record = {"route": name, "action": "recover_cuda", "ok": ok,
                      "returncode": proc.returncode if proc else None,
                      "seconds": round(time.monotonic() - t0, 3),
                      "output": out.decode("utf-8", "replace")[-2000:]}
            svc.recoveries.write(record)
        return Response(orjson.dumps(record), status_code=200 if ok else 500, media_type=JSON)

    return app
