"""The public API: chat completions, responses, messages (Anthropic), embeddings, models, metrics, stats.

Every request to a model endpoint is on the record once: a refused one by :meth:`PublicAPI.rejected`,
a decided one by the accounting of its final state (here for a whole answer, in the relay for a
stream), an unexpected exception as an OpenAI-shaped 500 that carries the request id.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import yaml
from fastapi import FastAPI, Request
from pydantic import ValidationError
from starlette.responses import Response

from services.router import messages as anthropic
from services.router.clients import ANONYMOUS, OPEN, Who, identify
from services.router.decide import AUTO
from services.router.errors import RequestError, error_body
from services.router.http import ClientGone, error, header, is_admin, read_body, watched
from services.router.http import request_id as request_id_of
from services.router.policy import Route
from services.router.preflight import EmbeddingsRequest, preflight, without_nulls
from services.router.redact import scrub
from services.router.relay import RelayResponse
from services.router.request import CLIENT_GONE, JSON, Ctx
from services.router.responses import StreamTranslator, to_chat, to_response
from services.router.service import RouterService
from services.router.slots import Slot, take
from services.router.sse import ChatStreamTranslator
from services.router.state import RouteState
from services.router.upstream import auth
from services.router.upstream import body as upstream_body

log = logging.getLogger("homelab.router.api")
OPENAPI = Path(__file__).with_name("openapi.yaml")


@functools.cache
def openapi_document() -> dict[str, Any]:
    """The router's own API description (``services/router/openapi.yaml``)."""
    doc: dict[str, Any] = yaml.safe_load(OPENAPI.read_text(encoding="utf-8"))
    return doc


@dataclass(slots=True)
class Rec:
    """One request at the edge: its id, when it started, who sent it, and its context once decided."""

    request_id: str
    started: float
    ctx: Ctx | None = None
    who: Who | None = None


Answer = Callable[[Request, Rec], Awaitable[Response]]
ErrorShape = Callable[[int, str], dict[str, Any]]


def translated(ctx: Ctx, resp: Response, stream: Callable[[], ChatStreamTranslator],
               whole: Callable[[Any], dict[str, Any]]) -> Response:
    """A chat answer in another API's shape: a relayed stream translated as it goes, a stream that
    arrived whole translated at once, or a whole answer; the ``X-Homelab-*`` headers kept."""
    if isinstance(resp, RelayResponse):
        return resp.rewrap(stream().translate)
    headers = {k: v for k, v in resp.headers.items() if k.lower().startswith("x-")}
    if ctx.pre.stream:
        return Response(stream().feed_bytes(bytes(resp.body)), media_type="text/event-stream", headers=headers)
    return Response(orjson.dumps(whole(orjson.loads(resp.body))), media_type=JSON, headers=headers)


class PublicAPI:
    def __init__(self, svc: RouterService) -> None:
        self.svc = svc

    # ---- on the record -----------------------------------------------------------------------

    def rejected(self, request: Request, status: int, reason: str, message: str, request_id: str | None = None,
                 who: Who | None = None) -> str:
        """A request refused before it was decided: its own decision-log line and count (``client``
        "unknown" when no key was recognised — never the key)."""
        rid = request_id or request_id_of(request)
        svc = self.svc
        svc.metrics.requests.labels("", "", reason, str(status)).inc()
        client = who.name if who is not None else ANONYMOUS if svc.policy.clients is None else "unknown"
        svc.decisions.write({"request_id": rid, "endpoint": request.url.path, "method": request.method,
                             "status": status, "reason": reason, "error": message[:500], "client": client})
        return rid

    def internal_error(self, where: str, request_id: str, shape: ErrorShape | None = None) -> Response:
        """An unexpected exception: logged with the request id, answered as a 500 in the API's shape."""
        log.exception("internal error in %s (request %s)", where, request_id)
        self.svc.metrics.internal_errors.labels(where).inc()
        message = f"Internal error in homelab-router (request {request_id}); see the router's log"
        if shape is not None:
            body = shape(500, message)
        else:
            body = error_body(message, type_="server_error", code="internal_error")
            body["error"]["request_id"] = request_id
        return Response(orjson.dumps(body), status_code=500, media_type=JSON, headers={"X-Request-Id": request_id})

    def answered(self, where: str, answer: Answer, shape: ErrorShape | None = None
                 ) -> Callable[[Request], Awaitable[Response]]:
        """A model endpoint: its request id and start time, exactly one decision line whatever
        happens, and any unexpected exception as a 500 carrying the request id. ``shape`` writes the
        API's own error bodies (OpenAI's by default)."""
        acct = self.svc.acct

        async def endpoint(request: Request) -> Response:
            rec = Rec(request_id_of(request), time.perf_counter())
            try:
                rec.who = identify(self.svc.policy, request)
                resp = await answer(request, rec)
            except ClientGone as exc:
                # Nobody is left to answer: the line says so (499), the slot is already free.
                resp = Response(b"", status_code=CLIENT_GONE, headers={"X-Request-Id": rec.request_id})
                if rec.ctx is None:
                    self.rejected(request, CLIENT_GONE, "client_disconnected", str(exc), rec.request_id, rec.who)
                    return resp
                rec.ctx.events.append("client_disconnected")
            except RequestError as exc:
                body = shape(exc.status, exc.message) if shape is not None else exc.body()
                resp = Response(orjson.dumps(body), status_code=exc.status, media_type=JSON,
                                headers={"X-Request-Id": rec.request_id})
                if rec.ctx is None:
                    self.rejected(request, exc.status, exc.code or exc.type, exc.message, rec.request_id, rec.who)
                    return resp
                rec.ctx.error = exc.message
            except Exception as exc:
                resp = self.internal_error(where, rec.request_id, shape)
                if rec.ctx is None:
                    self.rejected(request, 500, "internal_error", f"{type(exc).__name__}: {exc}", rec.request_id,
                                  rec.who)
                    return resp
                rec.ctx.error = f"internal error: {type(exc).__name__}: {exc}"
            ctx = rec.ctx
            if ctx is not None and not isinstance(resp, RelayResponse):
                ctx.status = resp.status_code  # what the client gets, whatever the attempts saw
                acct.finish(ctx)
            return resp

        return endpoint

    def decided(self, request: Request, rec: Rec, chat_body: Any, **extra: Any) -> Ctx:
        """Preflight and the routing decision (the shadow policy decides it too, off the answer's path)."""
        svc = self.svc
        pre = preflight(chat_body)
        decider = svc.decider
        header_route = header(request, "x-homelab-route")
        decision = decider.decide(
            model=pre.model, text=pre.text, has_image=pre.has_image, tokens=pre.tokens,
            header_route=header_route, metadata_bucket=pre.metadata.get("homelab_bucket"),
        )
        if svc.shadow is not None:
            asyncio.get_running_loop().call_soon(svc.observe_shadow, rec.request_id, decision, pre, header_route)
        who = rec.who or OPEN
        if decision.pinned and not who.may_use(decision.route):
            raise RequestError(f"Client '{who.name}' may not use route '{decision.route}' (its routes: "
                               f"{', '.join(sorted(who.routes or ()))})", status=403, type_="permission_error",
                               code="route_not_allowed")
        session = header(request, "x-claude-code-session-id") or pre.user
        rec.ctx = Ctx(rec.request_id, chat_body, pre, decision, decider.policy, rec.started, **extra, who=who,
                      session=session)
        return rec.ctx

    # ---- endpoints ---------------------------------------------------------------------------

    async def chat(self, request: Request, rec: Rec) -> Response:
        body = without_nulls(await read_body(request, self.svc.settings.max_body))
        ctx = self.decided(request, rec, body)
        assert self.svc.dispatcher is not None
        return await watched(request, self.svc.dispatcher.chat(ctx))

    async def responses(self, request: Request, rec: Rec) -> Response:
        """The Responses API, routed by the same policy (translated to Chat Completions unless native)."""
        body = without_nulls(await read_body(request, self.svc.settings.max_body))
        tr = to_chat(body)
        ctx = self.decided(request, rec, tr.chat, endpoint="/v1/responses", api="responses", original=body)
        ctx.events.extend(tr.notes)
        assert self.svc.dispatcher is not None
        resp = await watched(request, self.svc.dispatcher.chat(ctx))
        final = ctx.policy.routes.get(ctx.final_route or "")
        if resp.status_code != 200 or final is None or ctx.native(final):
            return resp  # an error (OpenAI-shaped), or the engine's own Responses answer
        return translated(ctx, resp, lambda: StreamTranslator(body, rec.request_id),
                          lambda chat: to_response(chat, body, rec.request_id))

    async def messages(self, request: Request, rec: Rec) -> Response:
        """The Anthropic Messages API, routed by the same policy (translated to Chat Completions unless
        the route is ``messages: native``); every answer and error in Anthropic's shapes."""
        body = without_nulls(await read_body(request, self.svc.settings.max_body))
        tr = anthropic.to_chat(body)
        ctx = self.decided(request, rec, tr.chat, endpoint="/v1/messages", api="messages", original=body)
        ctx.events.extend(tr.notes)
        if request.headers.get("anthropic-beta"):
            ctx.events.append("dropped:anthropic-beta")
        assert self.svc.dispatcher is not None
        resp = await watched(request, self.svc.dispatcher.chat(ctx))
        headers = {k: v for k, v in resp.headers.items() if k.lower().startswith("x-")}
        if resp.status_code != 200:
            return self._anthropic_error(resp, rec.request_id, headers)
        final = ctx.policy.routes.get(ctx.final_route or "")
        if final is None or ctx.native(final):
            return resp  # the engine's own Messages answer
        return translated(ctx, resp, lambda: anthropic.StreamTranslator(body, rec.request_id, ctx.pre.tokens),
                          lambda chat: anthropic.to_message(chat, body, rec.request_id))

    @staticmethod
    def _anthropic_error(resp: Response, request_id: str, headers: dict[str, str]) -> Response:
        """An OpenAI-shaped refusal from the request path, said the Anthropic way. When no route could
        answer, the message names no host, port or route (the decision log has them)."""
        status = resp.status_code
        try:
            err = orjson.loads(bytes(resp.body)).get("error") or {}
            message = str(err.get("message") if isinstance(err, dict) else err)
        except (orjson.JSONDecodeError, AttributeError):
            message = bytes(resp.body)[:300].decode("utf-8", "replace")
        if status == 503:
            message = ("No model in the lab can answer right now: every route that could take this request is "
                       f"down or busy. Try again shortly (request {request_id}).")
        return Response(orjson.dumps(anthropic.error_body(status, message)), status_code=status, media_type=JSON,
                        headers=headers)

    async def count_tokens(self, request: Request, rec: Rec) -> Response:
        """``POST /v1/messages/count_tokens``: the router's own estimate (system, messages, tools)."""
        body = without_nulls(await read_body(request, self.svc.settings.max_body))
        pre = preflight(anthropic.to_chat(body, for_count=True).chat)
        self.svc.decisions.write({"request_id": rec.request_id, "endpoint": "/v1/messages/count_tokens",
                                  "model": pre.model, "status": 200, "tokens": pre.tokens,
                                  "client": (rec.who or OPEN).name})
        return Response(orjson.dumps({"input_tokens": pre.tokens}), media_type=JSON,
                        headers={"X-Request-Id": rec.request_id})

    async def embeddings(self, request: Request, rec: Rec) -> Response:
        svc = self.svc
        body = without_nulls(await read_body(request, svc.settings.max_body))
        try:
            EmbeddingsRequest.model_validate(body)
        except ValidationError as exc:
            e = exc.errors()[0]
            where = ".".join(str(p) for p in e["loc"]) or "body"
            raise RequestError(f"Invalid embeddings request: {where}: {e['msg']}", param=where) from exc
        policy = svc.policy
        name = policy.embeddings_route or policy.image_route
        route = policy.routes[name]
        st = svc.states[name]
        assert svc.session is not None
        headers = {"X-Homelab-Route": name, "X-Homelab-Reason": "embeddings_route", "X-Request-Id": rec.request_id}
        who = rec.who or OPEN
        record: dict[str, Any] = {"request_id": rec.request_id, "endpoint": "/v1/embeddings", "model": body["model"],
                                  "route": name, "reason": "embeddings_route", "client": who.name}
        # the same admission as a chat request: the cap, drain, circuit, reserved slots, the client's routes
        slot = await take(name, route, st, cooldown=policy.health.circuit_cooldown, who=who)
        if not isinstance(slot, Slot):
            if slot == "not_allowed":
                raise RequestError(f"Client '{who.name}' may not use route '{name}', the lab's embeddings route",
                                   status=403, type_="permission_error", code="route_not_allowed")
            why = {"down": st.why_unavailable(), "drained": "it is drained",
                   "saturated": f"it is at its cap of {route.max_concurrency}",
                   "reserved": "its free slots are reserved for other clients"}.get(slot, slot)
            record["reason"] = f"{name}_{slot}"
            resp = error(503, scrub(f"Embeddings route '{name}' cannot take the request: {why}."),
                         type_="server_error", code="upstream_unavailable", headers={**headers, "Retry-After": "1"})
        else:
            resp = await watched(request, self._embed(rec, name, route, st, slot, body, headers, record))
        svc.metrics.requests.labels(name, "", record["reason"], str(resp.status_code)).inc()
        svc.metrics.client_requests.labels(who.name, name).inc()
        svc.decisions.write({**record, "status": resp.status_code,
                             "latency_ms": round((time.perf_counter() - rec.started) * 1000, 3)})
        return resp

    async def _embed(self, rec: Rec, name: str, route: Route, st: RouteState, slot: Slot, body: dict[str, Any],
                     headers: dict[str, str], record: dict[str, Any]) -> Response:
        """One embeddings call on the slot taken for it: a fault counts on the route like any other."""
        svc = self.svc
        assert svc.session is not None
        health = svc.policy.health
        try:
            async with asyncio.timeout(route.request_timeout):
                async with svc.session.post(route.embeddings_url,
                                            data=upstream_body(orjson.dumps({**body, "model": route.model})),
                                            headers={"Content-Type": JSON, **auth(route.api_key)}) as r:
                    raw = await r.read()
                    status = r.status
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            detail = f"{type(exc).__name__}: {exc}"
            st.record_failure(detail, health.failure_threshold)
            svc.failures.write({"request_id": rec.request_id, "route": name, "kind": "embeddings", "detail": detail})
            record["error"] = detail
            return error(503, f"Embeddings route '{name}' is unavailable: {type(exc).__name__}",
                         type_="server_error", code="upstream_unavailable", headers=headers)
        finally:
            slot.release()
        if status >= 500:
            st.record_failure(f"embeddings: http_{status}", health.failure_threshold)
        elif status == 200:
            st.record_success()
        return Response(raw, status_code=status, media_type=JSON, headers=headers)

    async def models(self, request: Request) -> Response:
        """Every name the router answers to; a pinned name carries its route's ``context_length`` (the
        engine's own max_model_len when it reports one, else the policy's) — clients size prompts by it."""
        svc = self.svc
        identify(svc.policy, request)  # a lab with clients answers only them
        now = int(svc.started)
        decider = svc.decider
        policy = decider.policy

        def context(route: str) -> int | None:
            st = svc.states.get(route)
            return (st.max_model_len if st else None) or policy.routes[route].context_length

        # homelab/auto: the largest context a decision can reach (a bucket's route, or a size promotion's)
        auto_routes = {policy.unknown_route, *(b.route for b in policy.buckets.values())}
        if policy.size_promotions is not None:
            auto_routes.update(r for row in policy.size_promotions.table.values() for r in row)
        auto = max((c for c in map(context, auto_routes) if c), default=None)
        data = []
        for m in decider.catalog():
            entry: dict[str, Any] = {"id": m, "object": "model", "created": now, "owned_by": "homelab"}
            route = decider.alias(m) or decider.served.get(m)
            found = auto if m == AUTO else context(route) if route is not None else None
            if found:
                entry["context_length"] = found
            data.append(entry)
        return Response(orjson.dumps({"object": "list", "data": data}), media_type=JSON)

    async def metrics(self) -> Response:
        body, media_type = self.svc.metrics.exposition()
        return Response(body, media_type=media_type)

    async def openapi(self) -> Response:
        return Response(orjson.dumps(openapi_document()), media_type=JSON)

    async def stats(self, request: Request) -> Response:
        admin = is_admin(request, self.svc.settings.admin_token)
        lab = self.svc.lab
        counts = await lab.in_flight() if lab is not None else None
        return Response(orjson.dumps(self.svc.stats(admin=admin, lab_in_flight=counts)), media_type=JSON)


def mount(app: FastAPI, api: PublicAPI,
          fast_routes: dict[tuple[str, str], Callable[[Request], Awaitable[Response]]]) -> None:
    """The public endpoints on ``app``; the hot ones also on the fast path."""
    anthropic_shape = anthropic.error_body
    for path, where, handle, shape in (("/v1/chat/completions", "chat", api.chat, None),
                                       ("/v1/responses", "responses", api.responses, None),
                                       ("/v1/embeddings", "embeddings", api.embeddings, None),
                                       ("/v1/messages", "messages", api.messages, anthropic_shape),
                                       ("/v1/messages/count_tokens", "count_tokens", api.count_tokens,
                                        anthropic_shape)):
        endpoint = api.answered(where, handle, shape)
        app.post(path)(endpoint)  # FastAPI knows the route (405 for other methods) ...
        fast_routes[("POST", path)] = endpoint  # ... and the fast path serves it
    app.get("/v1/models")(api.models)
    app.get("/metrics")(api.metrics)
    app.get("/stats")(api.stats)
    app.get("/openapi.json")(api.openapi)
