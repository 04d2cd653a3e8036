"""The request path after the decision: admit, spill, failover, stream relay (DESIGN.md §3 steps 6-10).

Nothing reaches the client until an upstream has produced its first content; after that a
stream that dies is continued on a route that can continue, or ends with an in-band error.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
import jsonschema
import orjson
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from services.router.decide import Decision
from services.router.errors import error_body
from services.router.metrics import Metrics
from services.router.policy import Policy, Route
from services.router.preflight import Preflight
from services.router.state import RouteState
from shared.jsonl import JsonlWriter

log = logging.getLogger("homelab.router")

DONE = b"data: [DONE]\n\n"
JSON = "application/json"
FINISH_GRACE = 0.5  # seconds to wait for [DONE] (or a usage chunk) after finish_reason
# The user turn of an ``instruct`` continuation (engines that reject or ignore an assistant prefill).
CONTINUE_INSTRUCTION = (
    "Your previous answer was cut off. Continue it exactly where it stopped: output only the rest, "
    "starting with the very next character, without repeating anything already written and "
    "without any preamble or comment."
)


class UpstreamFault(Exception):
    """An upstream failed before or during an answer."""

    def __init__(self, kind: str, detail: str, *, retryable: bool = False) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail
        self.retryable = retryable


@dataclass(slots=True)
class Outcome:
    kind: Literal["ok", "busy", "fail", "poisoned", "context", "client"]
    response: Response | None = None
    detail: str = ""
    retryable: bool = False
    retry_after: float | None = None
    status: int = 200


@dataclass(slots=True)
class Ctx:
    """Everything known about one request while it is routed."""

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
    responses: dict[str, Any] | None = None  # the original /v1/responses body (native routes get it as is)

    def native(self, route: Route) -> bool:
        return self.responses is not None and route.responses == "native"

    def headers(self, route: str) -> dict[str, str]:
        return {
            "X-Homelab-Route": route,
            "X-Homelab-Bucket": self.decision.bucket or "",
            "X-Homelab-Reason": self.reason,
            "X-Homelab-Fallback-Path": ",".join(self.path),
            "X-Request-Id": self.request_id,
        }


class RelayResponse(StreamingResponse):
    """A relayed stream: a departed client stops the relay at once, and ``on_close`` always runs (even
    if the client left before the first byte).

    Starlette's StreamingResponse runs an anyio task group per response on ASGI < 2.4 (uvicorn says
    2.3); one plain watcher task does the same job for a fraction of the cost.
    """

    def __init__(self, content: AsyncIterator[bytes], on_close: Callable[[], None],
                 headers: dict[str, str]) -> None:
        super().__init__(content, media_type="text/event-stream", headers=headers)
        self._on_close = on_close
        self._content = content

    def rewrap(self, transform: Callable[[AsyncIterator[bytes]], AsyncIterator[bytes]]) -> RelayResponse:
        """The same relay (slot, upstream connection, disconnect handling) with its bytes transformed."""
        return RelayResponse(transform(self._content), self._on_close,
                             {k: v for k, v in self.headers.items()
                              if k.lower().startswith("x-") or k.lower() == "cache-control"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        me = asyncio.current_task()
        gone = False

        async def watch() -> None:
            nonlocal gone
            while (await receive())["type"] != "http.disconnect":
                pass
            gone = True
            if me is not None:
                me.cancel()  # the relay is waiting on the upstream: stop it now, not at its next chunk

        watcher = asyncio.get_running_loop().create_task(watch())
        iterator = self.body_iterator
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            async for chunk in iterator:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not gone or me is None:
                raise
            me.uncancel()
        except OSError:
            pass  # the client went away while we wrote
        finally:
            watcher.cancel()
            if hasattr(iterator, "aclose"):
                await iterator.aclose()
            self._on_close()


def _sse_data(event: bytes) -> bytes | None:
    """The data of one SSE event (lines joined), or None for a comment-only event."""
    data = []
    for line in event.splitlines():
        if line.startswith(b"data:"):
            data.append(line[5:].lstrip(b" "))
    return b"\n".join(data) if data else None


class SSEReader:
    """Reads an SSE body in whatever pieces the socket gives and hands out every complete event.

    One read can carry many events: they are parsed and relayed as one batch (one write to the client).
    """

    __slots__ = ("buf", "content")

    def __init__(self, content: aiohttp.StreamReader) -> None:
        self.content = content
        self.buf = b""

    async def batch(self) -> list[bytes] | None:
        """The complete events available now (at least one), or None at a clean end of the stream."""
        while True:
            idx = self.buf.rfind(b"\n\n")
            if idx >= 0:
                head, self.buf = self.buf[:idx], self.buf[idx + 2:]
                return [ev.lstrip(b"\n") for ev in head.split(b"\n\n") if ev.strip(b"\n")]
            chunk = await self.content.readany()
            if not chunk:
                if self.buf.strip():
                    raise UpstreamFault("stream_cut", "stream ended inside an event")
                return None
            buf = self.buf + chunk
            self.buf = buf.replace(b"\r\n", b"\n") if b"\r" in buf else buf


def _event_data(ev: bytes) -> bytes | None:
    if ev.startswith(b"data: ") and b"\n" not in ev:
        return ev[6:]
    return _sse_data(ev)


def _consume(track: _StreamTrack, batch: list[bytes]) -> tuple[list[bytes], bool, UpstreamFault | None]:
    """Feed a batch to the tracker: (events to relay, [DONE] seen, the fault that stopped it)."""
    out: list[bytes] = []
    for ev in batch:
        data = _event_data(ev)
        if data is None:
            continue
        if data == b"[DONE]":
            return out, True, None
        try:
            track.feed(data)
        except UpstreamFault as exc:
            return out, False, exc
        out.append(ev)
    return out, False, None


def _join(events: list[bytes]) -> bytes:
    return b"\n\n".join(events) + b"\n\n" if events else b""


_CONTEXT_SIGNS = (
    "context length", "context_length", "context window", "maximum context", "n_ctx",
    "prompt is longer than", "too many tokens", "'max_tokens' or 'max_completion_tokens' is too large",
    "exceeds the context", "exceed context", "input is too long", "reduce the length",
)
_CUDA_SIGNS = ("cuda error", "cuda_error", "cudaerror", "illegal memory access", "cublas_status",
               "device-side assert", "cuda out of memory")
_POLICY_SIGNS = ("content_policy", "content policy", "content_filter", "content filter")


def error_kind(text: str, code: str = "") -> Literal["context", "cuda", "content_policy", "other"]:
    """Recognise an engine's error by its words (vLLM, llama.cpp, LM Studio, Ollama word them differently)."""
    low = f"{code} {text}".lower()
    if any(sign in low for sign in _CUDA_SIGNS):
        return "cuda"
    if any(sign in low for sign in _POLICY_SIGNS):
        return "content_policy"
    if any(sign in low for sign in _CONTEXT_SIGNS):
        return "context"
    return "other"


def _json_error(raw: bytes) -> bool:
    """A 200 whose body is an error and no answer (some LM Studio versions)."""
    if b'"error"' not in raw[:512]:
        return False
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False
    return isinstance(body, dict) and "error" in body and not body.get("choices")


def _error_text(raw: bytes) -> str:
    try:
        body = orjson.loads(raw)
        err = body.get("error") if isinstance(body, dict) else None
        if isinstance(err, dict):
            return str(err.get("message") or err)
        if err is not None:
            return str(err)
    except orjson.JSONDecodeError:
        pass
    return raw[:300].decode("utf-8", "replace")


def _error_code(raw: bytes) -> str:
    try:
        body = orjson.loads(raw)
        err = body.get("error") if isinstance(body, dict) else None
        if isinstance(err, dict):
            return str(err.get("code") or err.get("type") or "")
    except orjson.JSONDecodeError:
        pass
    return ""


_DRAINS: set[asyncio.Task[None]] = set()


def _done_with(resp: aiohttp.ClientResponse, finished: bool = True) -> None:
    """Give a finished stream's connection back to the pool (keep-alive); close one cut short.

    After ``[DONE]`` a chunked body's last empty chunk may still be on its way: read it in the
    background (briefly) so the connection can be reused, instead of paying a new one next time.
    """
    if resp.content.at_eof():
        resp.release()
    elif not finished or resp.closed:
        resp.close()
    else:
        task = asyncio.get_running_loop().create_task(_drain(resp))
        _DRAINS.add(task)
        task.add_done_callback(_DRAINS.discard)


async def _drain(resp: aiohttp.ClientResponse) -> None:
    try:
        async with asyncio.timeout(1.0):
            while await resp.content.readany():
                pass
        resp.release()
    except (TimeoutError, aiohttp.ClientError, OSError):
        resp.close()


def _hangup(policy: Policy, t0: float, exc: BaseException) -> Outcome:
    """A reset or disconnect before the answer: transient when quick, a silent upstream when not."""
    waited = time.perf_counter() - t0
    what = f"{type(exc).__name__}: {exc}"
    if waited > policy.health.silent_after:
        return Outcome("fail", detail=f"silent: no answer for {waited:.1f}s, then {what}")
    return Outcome("fail", detail=f"reset: {what}", retryable=True)


def _parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


@dataclass(slots=True)
class _StreamTrack:
    """What the relay has seen of a stream: enough to continue it elsewhere."""

    text: list[str] = field(default_factory=list)
    finished: bool = False
    tool_calls: bool = False
    chunk_id: str | None = None
    usage: dict[str, Any] | None = None
    native: bool = False  # a Responses event stream (a native route), not chat chunks

    def feed(self, data: bytes) -> dict[str, Any]:
        """Parse one data payload (and return it); raise UpstreamFault if malformed or an in-band error."""
        try:
            ev = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise UpstreamFault("malformed_chunk", f"not JSON: {data[:80]!r}") from exc
        if not isinstance(ev, dict):
            raise UpstreamFault("malformed_chunk", "chunk is not an object")
        if self.native:
            self._feed_native(ev, data)
            return ev
        if "error" in ev:
            raise UpstreamFault("stream_error", _error_text(data))
        if self.chunk_id is None and isinstance(ev.get("id"), str):
            self.chunk_id = ev["id"]
        usage = ev.get("usage")
        if isinstance(usage, dict):
            self.usage = usage
        for choice in ev.get("choices") or ():
            delta = choice.get("delta") or {}
            content = delta.get("content")
            if content:
                self.text.append(content)
            if delta.get("tool_calls"):
                self.tool_calls = True
            if choice.get("finish_reason"):
                self.finished = True
        return ev

    def _feed_native(self, ev: dict[str, Any], data: bytes) -> None:
        kind = ev.get("type")
        if kind in ("error", "response.failed"):
            err = ev.get("message") or ((ev.get("response") or {}).get("error") or {}).get("message")
            raise UpstreamFault("stream_error", str(err or data[:200]))
        if kind == "response.output_text.delta":
            self.text.append(str(ev.get("delta") or ""))
        elif kind == "response.output_item.added" and (ev.get("item") or {}).get("type") == "function_call":
            self.tool_calls = True
        elif kind in ("response.completed", "response.incomplete"):
            self.finished = True
            usage = (ev.get("response") or {}).get("usage")
            if isinstance(usage, dict):
                self.usage = usage

    @property
    def deltas(self) -> int:
        """Content deltas seen (engines stream about one token per delta)."""
        return len(self.text)

    @property
    def has_output(self) -> bool:
        return bool(self.text) or self.tool_calls or self.finished


class RepeatTrim:
    """An ``instruct`` continuation that repeats what the client already has loses the repeat.

    Models asked to go on "exactly where it stopped" sometimes start over, or echo the last words
    first. The start of the continuation (at most ``HOLD`` characters) is held until it can be
    compared with the cut answer: a restart is dropped as long as it repeats the answer, an echo of
    the answer's tail (``MIN_OVERLAP`` characters or more) is dropped once.
    """

    HOLD = 256
    MIN_OVERLAP = 8

    def __init__(self, partial: str) -> None:
        self.partial = partial
        self.pending = ""
        self.decided = False
        self.skip_from: int | None = None  # dropping a restart: the offset in the partial reached so far

    def feed(self, text: str, final: bool = False) -> str:
        """Continuation text in, what the client should get out (possibly empty while held)."""
        if self.skip_from is not None:
            return self._skipping(text)
        if self.decided:
            return text
        self.pending += text
        p = self.partial
        restart = len(p) >= self.MIN_OVERLAP and p.startswith(self.pending[:len(p)]) \
            and len(self.pending) >= self.MIN_OVERLAP
        if restart and len(self.pending) < len(p) and not final:
            if len(self.pending) < self.HOLD:
                return ""  # still repeating the answer from its start: hold, decide later
            self.decided = True
            self.skip_from = len(self.pending)  # a long restart: drop it as it comes
            self.pending = ""
            return ""
        if len(self.pending) < min(self.HOLD, len(p)) and not final:
            return ""
        self.decided = True
        out, self.pending = self.pending, ""
        if restart:
            return out[len(p):]
        for k in range(min(len(p), len(out)), self.MIN_OVERLAP - 1, -1):
            if p.endswith(out[:k]):
                return out[k:]
        return out

    def _skipping(self, text: str) -> str:
        assert self.skip_from is not None
        p, i = self.partial, self.skip_from
        n = 0
        while n < len(text) and i < len(p) and text[n] == p[i]:
            n, i = n + 1, i + 1
        self.skip_from = i
        if i >= len(p) or n < len(text):  # the restart caught up with the cut, or went its own way
            self.skip_from = None
        return text[n:]


_VALIDATORS: dict[bytes, Any] = {}


def _validator(schema: dict[str, Any]) -> Any:
    """A checked validator per distinct schema (checking a schema costs ~1 ms; callers send the same few)."""
    key = orjson.dumps(schema, option=orjson.OPT_SORT_KEYS)
    v = _VALIDATORS.get(key)
    if v is None:
        cls = jsonschema.validators.validator_for(schema)
        cls.check_schema(schema)
        v = _VALIDATORS[key] = cls(schema)
        if len(_VALIDATORS) > 64:
            _VALIDATORS.pop(next(iter(_VALIDATORS)))
    return v


class Dispatcher:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        states: Callable[[], dict[str, RouteState]],
        metrics: Metrics,
        decisions: JsonlWriter,
        failures: JsonlWriter,
        validations: JsonlWriter,
        on_poisoned: Callable[[str, str], Awaitable[None]] | None = None,
    ) -> None:
        self.session = session
        self._states = states
        self.metrics = metrics
        self.decisions = decisions
        self.failures = failures
        self.validations = validations
        self.on_poisoned = on_poisoned

    # ---- the walk over routes -------------------------------------------------------------

    async def chat(self, ctx: Ctx) -> Response:
        policy = ctx.policy
        states = self._states()
        pre = ctx.pre
        route_name = ctx.decision.route
        ctx.reason = ctx.decision.reason
        tried: set[str] = set()
        context_hop = False
        last: Outcome | None = None
        cooldown = policy.health.circuit_cooldown
        while True:
            if route_name in tried:
                return self._give_up(ctx, last, f"every route on the path {','.join(ctx.path)} failed")
            route = policy.routes[route_name]
            st = states[route_name]
            ctx.path.append(route_name)
            if pre.has_image and not route.vision:
                tried.add(route_name)
                nxt = self._vision_fallback(policy, tried)
                if nxt is None:
                    return self._give_up(ctx, last, "no route that can see images is available")
                route_name = nxt
                continue
            nxt_cause: str | None = None
            if st.drained and not (ctx.decision.pinned and route_name == ctx.decision.route):
                ctx.reason, nxt_cause = f"{route_name}_drained", "drained"
            elif not st.available(cooldown):
                ctx.reason, nxt_cause = f"{route_name}_down", "down"
                if last is None:
                    last = Outcome("fail", detail=f"{route_name} is {st.why_unavailable()}")
            elif st.in_flight >= route.max_concurrency:
                ctx.reason, nxt_cause = f"{route_name}_saturated", "saturated"
                last = Outcome("busy", detail=f"{route_name} is at its cap of {route.max_concurrency}")
            if nxt_cause is not None:
                tried.add(route_name)
                nxt = self._next(route, pre.has_image, nxt_cause)
                if nxt is None:
                    return self._give_up(ctx, last, f"{route_name} is {nxt_cause}", terminal=route.terminal)
                self._count_move(route_name, nxt, nxt_cause)
                route_name = nxt
                continue

            outcome = await self._attempt_with_retry(ctx, route, st)
            if outcome.kind in ("ok", "client"):
                assert outcome.response is not None
                return outcome.response
            last = outcome
            tried.add(route_name)
            if outcome.kind == "context":
                nxt = route.context_failover or route.failover
                if context_hop or nxt is None or nxt in tried:
                    assert outcome.response is not None
                    return outcome.response
                context_hop = True
                ctx.reason = f"{route_name}_context_length"
                self._count_move(route_name, nxt, "context_length")
                route_name = nxt
                continue
            cause = "saturated" if outcome.kind == "busy" else "down"
            ctx.reason = f"{route_name}_{cause}"
            nxt = self._next(route, pre.has_image, cause)
            if nxt is None:
                return self._give_up(ctx, outcome, outcome.detail, terminal=route.terminal)
            self._count_move(route_name, nxt, outcome.kind)
            route_name = nxt

    @staticmethod
    def _next(route: Route, has_image: bool, cause: str) -> str | None:
        if route.terminal:
            return None
        if cause == "saturated" and route.spill is not None:
            return route.spill.image if has_image else route.spill.text
        return route.failover

    @staticmethod
    def _vision_fallback(policy: Policy, tried: set[str]) -> str | None:
        if policy.image_route not in tried:
            return policy.image_route
        for name, r in policy.routes.items():
            if r.vision and name not in tried:
                return name
        return None

    def _count_move(self, src: str, dst: str, cause: str) -> None:
        if cause in ("saturated", "busy"):
            self.metrics.spills.labels(src, dst).inc()
        else:
            self.metrics.failovers.labels(src, dst, cause).inc()

    def _give_up(self, ctx: Ctx, last: Outcome | None, why: str, *, terminal: bool = False) -> Response:
        route = ctx.path[-1] if ctx.path else ctx.decision.route
        detail = last.detail if last and last.detail and last.detail not in why else ""
        message = f"No upstream could answer: {why}" + (f" ({detail})" if detail else "")
        if terminal:
            message = f"Route '{route}' is terminal and never falls back: {why}" + (
                f" ({detail})" if detail else "")
        ctx.status = 503
        ctx.error = message
        body = error_body(message, type_="server_error", code="upstream_unavailable")
        self.finish(ctx, route)
        return Response(orjson.dumps(body), status_code=503, media_type=JSON, headers=ctx.headers(route))

    # ---- one route -------------------------------------------------------------------------

    async def _attempt_with_retry(self, ctx: Ctx, route: Route, st: RouteState) -> Outcome:
        policy = ctx.policy
        health = policy.health
        retried = honoured_429 = False
        name = ctx.path[-1]
        while True:
            st.in_flight += 1
            released = False
            room = st.in_flight < route.max_concurrency  # others in flight below the cap, this one aside
            t0 = time.perf_counter()
            # logged as it goes: a successful attempt writes the decision line before it returns
            attempt: dict[str, Any] = {"route": name, "outcome": "ok"}
            ctx.attempts.append(attempt)

            def release() -> None:
                nonlocal released
                if not released:
                    released = True
                    st.in_flight -= 1

            try:
                outcome = await self._attempt(ctx, name, route, st, release)
            except BaseException:
                release()
                raise
            if not (outcome.kind == "ok" and ctx.pre.stream):
                release()  # a committed stream releases its slot when the client's response closes
            if outcome.kind != "ok":
                attempt.update(outcome=outcome.kind, detail=outcome.detail[:300],
                               ms=round((time.perf_counter() - t0) * 1000, 3))
            if outcome.kind == "fail":
                st.record_failure(outcome.detail, health.failure_threshold)
                self.metrics.upstream_errors.labels(name, outcome.detail.split(":")[0]).inc()
                self.failures.write({"request_id": ctx.request_id, "route": name, "kind": "failure",
                                     "detail": outcome.detail, "retryable": outcome.retryable})
                if outcome.retryable and not retried and st.circuit != "open":
                    retried = True
                    backoff = random.uniform(health.retry_backoff_min, health.retry_backoff_max)
                    attempt["backoff_ms"] = round(backoff * 1000, 1)
                    ctx.events.append(f"retry:{name}")
                    await asyncio.sleep(backoff)
                    ctx.path.append(name)
                    continue
            elif outcome.kind == "poisoned":
                await self._poison(ctx, name, st, outcome.detail)
            elif outcome.kind == "busy":
                if outcome.status == 503 and room:
                    # Busy with room to spare is not busy: an upstream that 503s everything is down.
                    st.record_failure(outcome.detail, health.failure_threshold)
                    self.metrics.upstream_errors.labels(name, "http_503").inc()
                if outcome.retry_after is not None and not honoured_429 \
                        and outcome.retry_after <= health.retry_after_max:
                    honoured_429 = True
                    ctx.events.append(f"retry_after:{name}:{outcome.retry_after}")
                    await asyncio.sleep(outcome.retry_after)
                    ctx.path.append(name)
                    continue
            return outcome

    async def _poison(self, ctx: Ctx, name: str, st: RouteState, detail: str) -> None:
        st.poisoned = True
        st.last_error = detail
        st.last_error_at = time.time()
        self.metrics.upstream_errors.labels(name, "cuda_error").inc()
        self.failures.write({"request_id": ctx.request_id, "route": name, "kind": "cuda_poisoned",
                             "detail": detail})
        log.error("route %s poisoned: %s", name, detail)
        if self.on_poisoned is not None:
            await self.on_poisoned(name, detail)

    def _classify_status(self, status: int, raw: bytes, retry_after: str | None) -> Outcome:
        """What an error answer means, read from its content whatever the engine's format."""
        text = _error_text(raw)
        kind = error_kind(text, _error_code(raw))
        if kind == "cuda":
            return Outcome("poisoned", detail=f"cuda_error: {text}", status=status)
        if kind == "context":
            return Outcome("context", detail=f"context_length: {text}", status=status)
        if status in (500, 502, 504) or (status == 200 and kind != "content_policy"):
            return Outcome("fail", detail=f"http_{status}: {text or 'empty body'}", retryable=status in (500, 502),
                           status=status)
        if status in (503, 429):
            ra = _parse_retry_after(retry_after) if status == 429 else None
            return Outcome("busy", detail=f"http_{status}: {text}", retry_after=ra, status=status)
        if status >= 500:
            return Outcome("fail", detail=f"http_{status}: {text}", status=status)
        return Outcome("client", detail=f"http_{status}: {text}", status=status if status != 200 else 400)

    def _payload(self, ctx: Ctx, route: Route, extra: dict[str, Any] | None = None) -> bytes:
        if ctx.native(route) and not extra:
            assert ctx.responses is not None
            return orjson.dumps({**ctx.responses, "model": route.model})
        body = ctx.body
        if body.get("model") != route.model or extra:
            body = {**body, "model": route.model, **(extra or {})}
        if route.structured_output == "json_object":
            rf = body.get("response_format")
            if isinstance(rf, dict) and rf.get("type") == "json_schema":
                schema = (rf.get("json_schema") or {}).get("schema") or {"type": "object"}
                body = {**body, "response_format": {"type": "json_object", "schema": schema}}
        return orjson.dumps(body)

    def _headers(self, route: Route) -> dict[str, str]:
        h = {"Content-Type": JSON}
        if route.api_key:
            h["Authorization"] = f"Bearer {route.api_key}"
        return h

    async def _post_stream(self, route: Route, payload: bytes, url: str | None = None) -> aiohttp.ClientResponse:
        # sock_read: aiohttp's per-read timeout is the stream idle timeout, at no cost per chunk
        return await self.session.post(
            url or route.chat_url, data=payload, headers=self._headers(route),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=route.connect_timeout,
                                          sock_read=route.stream_idle_timeout))

    async def _attempt(self, ctx: Ctx, name: str, route: Route, st: RouteState,
                       release: Callable[[], None]) -> Outcome:
        payload = self._payload(ctx, route)
        if ctx.pre.stream:
            return await self._attempt_stream(ctx, name, route, st, payload, release)
        return await self._attempt_plain(ctx, name, route, st, payload)

    async def _attempt_plain(self, ctx: Ctx, name: str, route: Route, st: RouteState,
                             payload: bytes) -> Outcome:
        t0 = time.perf_counter()
        try:
            async with asyncio.timeout(route.request_timeout):
                url = route.responses_url if ctx.native(route) else route.chat_url
                async with self.session.post(url, data=payload, headers=self._headers(route),
                                             timeout=aiohttp.ClientTimeout(
                                                 total=None, sock_connect=route.connect_timeout)) as resp:
                    raw = await resp.read()
                    status = resp.status
                    retry_after = resp.headers.get("Retry-After")
        except TimeoutError:
            return Outcome("fail", detail=f"timeout: no answer within {route.request_timeout:g}s")
        except aiohttp.ClientConnectorError as exc:
            return Outcome("fail", detail=f"connect: {exc.os_error or exc}")
        except (aiohttp.ClientError, OSError) as exc:
            return _hangup(ctx.policy, t0, exc)
        finally:
            ctx.upstream_wait += time.perf_counter() - t0
        self.metrics.upstream.labels(name).observe(time.perf_counter() - t0)
        if status != 200 or _json_error(raw):
            outcome = self._classify_status(status, raw, retry_after)
            if outcome.kind in ("client", "context"):
                outcome.response = self._passthrough_error(ctx, name, outcome.status, raw, outcome.kind)
            return outcome
        if ctx.body.get("metadata", {}).get("homelab_task") == "camera_triage":
            raw = self._validate_camera(ctx, name, raw)
        st.record_success()
        ctx.status = 200
        ctx.final_route = name
        self.finish(ctx, name)
        return Outcome("ok", response=Response(raw, media_type=JSON, headers=ctx.headers(name)))

    def _passthrough_error(self, ctx: Ctx, name: str, status: int, raw: bytes,
                           kind: str = "client") -> Response:
        """A client error as the upstream said it, in OpenAI's shape (an engine's own shape is rewrapped)."""
        ctx.status = status = 400 if status == 200 else status
        ctx.error = _error_text(raw)
        if ctx.attempts:
            ctx.attempts[-1]["outcome"] = kind
        try:
            parsed = orjson.loads(raw)
            ok = isinstance(parsed, dict) and isinstance(parsed.get("error"), dict)
        except orjson.JSONDecodeError:
            ok = False
        if ok and not (kind == "context" and "context_length" not in _error_code(raw)):
            body = raw
        else:
            code = "context_length_exceeded" if kind == "context" else (_error_code(raw) or None)
            body = orjson.dumps(error_body(ctx.error, type_="invalid_request_error", code=code))
        self.finish(ctx, name)
        return Response(body, status_code=status, media_type=JSON, headers=ctx.headers(name))

    async def _attempt_stream(self, ctx: Ctx, name: str, route: Route, st: RouteState, payload: bytes,
                              release: Callable[[], None]) -> Outcome:
        t0 = time.perf_counter()
        resp: aiohttp.ClientResponse | None = None
        buffered: list[bytes] = []
        native = ctx.native(route)
        track = _StreamTrack(native=native)
        first_end: UpstreamFault | bool | None = None
        try:
            async with asyncio.timeout(route.first_token_timeout):
                resp = await self._post_stream(route, payload, route.responses_url if native else None)
                if resp.status != 200 or resp.content_type == JSON:
                    # An error, or a JSON body where a stream was asked for (an engine's 200 + error).
                    raw = await resp.read()
                    if resp.status == 200 and not _json_error(raw):
                        raise UpstreamFault("not_a_stream", f"JSON instead of a stream: {raw[:120]!r}")
                    outcome = self._classify_status(resp.status, raw, resp.headers.get("Retry-After"))
                    if outcome.kind in ("client", "context"):
                        outcome.response = self._passthrough_error(ctx, name, outcome.status, raw, outcome.kind)
                    resp.release()
                    return outcome
                # Hold the client's response until the first content (a role-only chunk is not enough).
                sse = SSEReader(resp.content)
                while not track.has_output:
                    batch = await sse.batch()
                    if batch is None:
                        raise UpstreamFault("stream_cut", "stream ended before any content")
                    out, done, fault = _consume(track, batch)
                    buffered.extend(out)
                    if fault is not None and not track.has_output:
                        raise fault
                    if done and not track.has_output:
                        raise UpstreamFault("stream_cut", "[DONE] before any content")
                    if fault is not None or done:
                        first_end = fault or True
                        break
        except TimeoutError:
            if resp is not None:
                resp.close()
            waited = "headers" if resp is None else "first token"
            return Outcome("fail", detail=f"timeout: no {waited} within {route.first_token_timeout:g}s")
        except UpstreamFault as exc:
            assert resp is not None
            resp.close()
            if exc.kind == "stream_error":
                # An error event before any content: read it like an error body (context, CUDA, ...).
                raw = orjson.dumps({"error": exc.detail})
                outcome = self._classify_status(200, raw, None)
                if outcome.kind in ("client", "context"):
                    outcome.response = self._passthrough_error(ctx, name, 400, raw, outcome.kind)
                if outcome.kind != "fail":
                    return outcome
            return Outcome("fail", detail=f"{exc.kind}: {exc.detail}")
        except aiohttp.ClientConnectorError as exc:
            return Outcome("fail", detail=f"connect: {exc.os_error or exc}")
        except (aiohttp.ClientError, OSError) as exc:
            if resp is not None:
                resp.close()
            return _hangup(ctx.policy, t0, exc)
        finally:
            ctx.upstream_wait += time.perf_counter() - t0
        assert resp is not None
        ttft = time.perf_counter() - t0
        self.metrics.ttft.labels(name).observe(ttft)
        self.metrics.upstream.labels(name).observe(ttft)
        ctx.ttfb = time.perf_counter() - ctx.started
        st.record_success()
        ctx.status = 200
        ctx.final_route = name
        headers = ctx.headers(name)
        headers["Cache-Control"] = "no-cache"
        if first_end is True:
            # The whole answer came in the first read (a short answer, a fast engine): one plain
            # response, no relay to run, the slot and the upstream connection free at once.
            release()
            _done_with(resp)
            self._completed(ctx, name, track)
            return Outcome("ok", response=Response(_join(buffered) + DONE, media_type="text/event-stream",
                                                   headers=headers))
        gen = self._relay(ctx, name, route, resp, sse, buffered, track, first_end)

        def on_close() -> None:
            release()
            _done_with(resp, finished=ctx.status == 200 and ctx.logged and "client_disconnected" not in ctx.events
                       and ctx.final_route == name)

        return Outcome("ok", response=RelayResponse(gen, on_close, headers))

    async def _relay(self, ctx: Ctx, name: str, route: Route, resp: aiohttp.ClientResponse, sse: SSEReader,
                     buffered: list[bytes], track: _StreamTrack,
                     first_end: UpstreamFault | bool | None) -> AsyncIterator[bytes]:
        fault: UpstreamFault | None = first_end if isinstance(first_end, UpstreamFault) else None
        completed = False
        try:
            if buffered:
                yield _join(buffered)
            while fault is None:
                try:
                    if track.finished:
                        async with asyncio.timeout(FINISH_GRACE):
                            batch = await sse.batch()
                    else:
                        batch = await sse.batch()
                except TimeoutError:
                    if track.finished:
                        batch = None  # finished properly but no [DONE]: finalise promptly
                    else:
                        raise UpstreamFault("stall", f"no data for {route.stream_idle_timeout:g}s") from None
                if batch is None:
                    if not track.finished:
                        raise UpstreamFault("stream_cut", "upstream closed the stream mid-answer")
                    completed = True
                    if track.native:  # a Responses stream ends with response.completed: no [DONE] there
                        self._completed(ctx, name, track)
                        return
                    ctx.events.append("finalised_without_done")
                    self._completed(ctx, name, track)
                    yield DONE
                    return
                out, done, fault = _consume(track, batch)
                if done:
                    completed = True
                    self._completed(ctx, name, track)
                    yield _join(out) + DONE
                    return
                if out:
                    yield _join(out)
        except UpstreamFault as exc:
            fault = exc
        except (aiohttp.ClientError, OSError) as exc:
            fault = UpstreamFault("stream_cut", f"{type(exc).__name__}: {exc}")
        except TimeoutError:
            fault = UpstreamFault("stall", f"no data for {route.stream_idle_timeout:g}s")
        finally:
            if fault is None and not completed:
                ctx.events.append("client_disconnected")
                self.finish(ctx, name)
        assert fault is not None
        # Mid-stream failure: never a truncated success.
        resp.close()
        self.failures.write({"request_id": ctx.request_id, "route": name, "kind": "mid_stream",
                             "detail": f"{fault.kind}: {fault.detail}"})
        self.metrics.upstream_errors.labels(name, fault.kind).inc()
        ctx.events.append(f"mid_stream:{name}:{fault.kind}")
        if ctx.attempts:
            ctx.attempts[-1].update(outcome="cut", detail=f"{fault.kind}: {fault.detail}"[:300],
                                    usage={"completion_tokens": track.deltas, "counted": True})
        cont_ok = False
        async for chunk in self._continue(ctx, name, route, track):
            cont_ok = True
            yield chunk
        if not cont_ok:
            ctx.status = 502
            ctx.error = f"{fault.kind}: {fault.detail}"
            msg = f"The upstream '{name}' failed mid-answer ({fault.kind}: {fault.detail}); the answer is incomplete."
            body = error_body(msg, type_="server_error", code="upstream_stream_failed")
            self.finish(ctx, name)
            yield b"data: " + orjson.dumps(body) + b"\n\n"

    def _completed(self, ctx: Ctx, name: str, track: _StreamTrack) -> None:
        """A stream that ended well: its usage on the record, then the decision-log line (before the
        last bytes go out, so a client that reads the log after [DONE] finds it)."""
        if track.usage is not None and ctx.attempts:
            ctx.attempts[-1]["usage"] = track.usage
        self.finish(ctx, name)

    async def _continue(self, ctx: Ctx, name: str, route: Route,
                        track: _StreamTrack) -> AsyncIterator[bytes]:
        """Finish the answer on the failover route, in the modes it allows (prefill first, then instruct)."""
        target = route.failover
        policy = ctx.policy
        if target is None or track.tool_calls or track.native:
            return
        troute = policy.routes[target]
        st = self._states().get(target)
        if (st is None or st.drained or not st.available(policy.health.circuit_cooldown)
                or st.in_flight >= troute.max_concurrency or (ctx.pre.has_image and not troute.vision)):
            return
        modes = [m for m in troute.continuation if m not in st.continuation_blocked]
        for mode in modes:
            state: dict[str, Any] = {}
            async for chunk in self._continue_once(ctx, name, target, troute, st, track, mode, state):
                yield chunk
            if not state.get("rejected"):
                return  # answered, or failed after output (an error event went out), or failed hard
            ctx.events.append(f"continuation_rejected:{target}:{mode}")

    async def _continue_once(self, ctx: Ctx, name: str, target: str, troute: Route, st: RouteState,
                             track: _StreamTrack, mode: str, state: dict[str, Any]) -> AsyncIterator[bytes]:
        partial = "".join(track.text)
        if mode == "prefill":
            extra: dict[str, Any] = {
                "messages": [*ctx.body["messages"], {"role": "assistant", "content": partial}],
                "continue_final_message": True, "add_generation_prompt": False}
        else:
            extra = {"messages": [*ctx.body["messages"], {"role": "assistant", "content": partial},
                                  {"role": "user", "content": CONTINUE_INSTRUCTION}]}
        extra["stream_options"] = {"include_usage": True}
        payload = self._payload(ctx, troute, extra)
        want_usage = bool((ctx.body.get("stream_options") or {}).get("include_usage"))
        attempt: dict[str, Any] = {"route": target, "outcome": "fail", "mode": mode}
        ctx.attempts.append(attempt)
        t0 = time.perf_counter()
        st.in_flight += 1
        resp: aiohttp.ClientResponse | None = None
        started = False
        try:
            async with asyncio.timeout(troute.first_token_timeout):
                resp = await self._post_stream(troute, payload)
            if resp.status != 200:
                detail = f"http_{resp.status}: {_error_text(await resp.read())}"
                attempt["detail"] = detail[:300]
                self.failures.write({"request_id": ctx.request_id, "route": target, "kind": "continuation",
                                     "mode": mode, "detail": detail})
                state["rejected"] = 400 <= resp.status < 500
                return
            cont = _StreamTrack()
            sse = SSEReader(resp.content)
            trim = RepeatTrim(partial) if mode == "instruct" else None
            done = False
            while not done:
                batch = await sse.batch()
                if batch is None:
                    if cont.finished:
                        break
                    raise UpstreamFault("stream_cut", "continuation cut")
                out: list[bytes] = []
                for ev in batch:
                    data = _event_data(ev)
                    if data is None:
                        continue
                    if data == b"[DONE]":
                        done = True
                        break
                    chunk = cont.feed(data)
                    choices = chunk.get("choices") or []
                    if not choices:
                        continue  # the continuation's own usage: merged below
                    # Keep the client's stream id; drop the continuation's role-only opener.
                    if track.chunk_id:
                        chunk["id"] = track.chunk_id
                    if choices[0].get("delta") in ({"role": "assistant", "content": ""}, {"role": "assistant"}) \
                            and not choices[0].get("finish_reason"):
                        continue
                    if trim is not None:
                        delta = choices[0].get("delta") or {}
                        finishing = bool(choices[0].get("finish_reason"))
                        text = trim.feed(str(delta.get("content") or ""), final=finishing)
                        if not text and not finishing:
                            continue  # held back, or a repeat
                        choices[0]["delta"] = {**delta, "content": text}
                    chunk.pop("usage", None)
                    out.append(b"data: " + orjson.dumps(chunk))
                if out:
                    started = True
                    yield _join(out)
            if not cont.finished:
                raise UpstreamFault("stream_cut", "continuation ended without finish_reason")
            self._count_move(name, target, "mid_stream")
            ctx.path.append(target)
            ctx.final_route = target
            ctx.events.append(f"continued_on:{target}:{mode}")
            attempt.update(outcome="continued", ms=round((time.perf_counter() - t0) * 1000, 3))
            if cont.usage is not None:
                attempt["usage"] = cont.usage
            usage = self._merged_usage(ctx, track, cont, mode)
            ctx.usage = usage
            tail = b""
            if want_usage:
                usage_ev = {"id": track.chunk_id or f"chatcmpl-{ctx.request_id}", "object": "chat.completion.chunk",
                            "created": int(time.time()), "model": troute.model, "choices": [], "usage": usage}
                tail = b"data: " + orjson.dumps(usage_ev) + b"\n\n"
            self.finish(ctx, target)
            yield tail + DONE
        except (UpstreamFault, aiohttp.ClientError, OSError, TimeoutError) as exc:
            attempt["detail"] = str(exc)[:300]
            self.failures.write({"request_id": ctx.request_id, "route": target, "kind": "continuation",
                                 "mode": mode, "detail": str(exc)})
            if started:
                # Part of the continuation went out: the caller must still end with an error.
                ctx.status = 502
                ctx.error = f"continuation on {target} failed: {exc}"
                msg = f"The answer could not be completed: {ctx.error}"
                self.finish(ctx, target)
                yield b"data: " + orjson.dumps(
                    error_body(msg, type_="server_error", code="upstream_stream_failed")) + b"\n\n"
        finally:
            st.in_flight -= 1
            if resp is not None:
                resp.close()

    @staticmethod
    def _merged_usage(ctx: Ctx, track: _StreamTrack, cont: _StreamTrack, mode: str) -> dict[str, Any]:
        """The usage of the whole answer the client got: the cut part (counted) plus the continuation."""
        cu = cont.usage or {}
        cont_completion = cu.get("completion_tokens")
        estimated = ["completion_tokens"] if cont_completion is None else []
        completion = track.deltas + (cont_completion if isinstance(cont_completion, int) else cont.deltas)
        cont_prompt = cu.get("prompt_tokens")
        if mode == "prefill" and isinstance(cont_prompt, int) and cont_prompt > track.deltas:
            prompt = cont_prompt - track.deltas  # the prefill's prompt is the original plus the partial answer
        else:
            prompt = ctx.pre.tokens
            estimated.append("prompt_tokens")
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                "homelab": {"continued": True, "mode": mode, "partial_completion_tokens": track.deltas,
                            "estimated": estimated}}

    # ---- camera triage fails closed ------------------------------------------------------

    def _validate_camera(self, ctx: Ctx, name: str, raw: bytes) -> bytes:
        rf = ctx.body.get("response_format")
        if not isinstance(rf, dict) or rf.get("type") != "json_schema":
            return raw
        schema = (rf.get("json_schema") or {}).get("schema")
        if not isinstance(schema, dict):
            return raw
        reason = None
        try:
            validator = _validator(schema)
            body = orjson.loads(raw)
            content = body["choices"][0]["message"]["content"]
            answer = orjson.loads(content)
            validator.validate(answer)
            return raw
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError) as exc:
            reason = f"answer is not valid JSON: {type(exc).__name__}: {exc}"
        except jsonschema.ValidationError as exc:
            reason = f"answer does not match the schema: {exc.message}"
        except jsonschema.SchemaError as exc:
            reason = f"the request's schema is invalid: {exc.message}"
        envelope = {"verdict": "ambiguous", "confidence": 0.0, "escalate_to_spark": True,
                    "synthetic": True, "reason": reason}
        self.validations.write({"source": "router", "request_id": ctx.request_id, "route": name,
                                "reason": reason, "answer": raw[:2000].decode("utf-8", "replace")})
        ctx.events.append("camera_triage_synthetic")
        try:
            body = orjson.loads(raw)
            if not isinstance(body, dict) or not body.get("choices"):
                raise ValueError
        except (orjson.JSONDecodeError, ValueError):
            body = {"id": f"chatcmpl-{ctx.request_id}", "object": "chat.completion",
                    "created": int(time.time()), "model": ctx.policy.routes[name].model,
                    "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant"}}]}
        body["choices"][0]["message"]["content"] = orjson.dumps(envelope).decode()
        return orjson.dumps(body)

    # ---- the decision log ----------------------------------------------------------------

    def finish(self, ctx: Ctx, route: str) -> None:
        """Account for a request once: metrics and its decision-log line. Never fails the request."""
        if ctx.logged:
            return
        ctx.logged = True
        try:
            self._finish(ctx, route)
        except Exception:  # accounting must never take serving down
            self.metrics.internal_errors.labels("finish").inc()
            log.exception("accounting for request %s failed", ctx.request_id)

    def _finish(self, ctx: Ctx, route: str) -> None:
        total = time.perf_counter() - ctx.started
        d = ctx.decision
        status = ctx.status or 200
        self.metrics.requests.labels(route, d.bucket or "", ctx.reason, str(status)).inc()
        self.metrics.latency.labels(route).observe(total)
        self.metrics.overhead.observe(max(0.0, (ctx.ttfb or total) - ctx.upstream_wait))
        record: dict[str, Any] = {
            "request_id": ctx.request_id,
            "endpoint": ctx.endpoint,
            "model": ctx.pre.model,
            "bucket": d.bucket,
            "scores": d.scores,
            "route": route,
            "reason": ctx.reason,
            "decided_route": d.route,
            "fallback_path": ctx.path,
            "status": status,
            "latency_ms": round(total * 1000, 3),
            "has_image": ctx.pre.has_image,
            "tokens": ctx.pre.tokens,
            "stream": ctx.pre.stream,
        }
        if ctx.ttfb is not None:
            record["ttfb_ms"] = round(ctx.ttfb * 1000, 3)
        if ctx.error:
            record["error"] = ctx.error
        if ctx.events:
            record["events"] = ctx.events
        if len(ctx.attempts) > 1 or (ctx.attempts and ctx.attempts[0].get("outcome") != "ok"):
            record["attempts"] = ctx.attempts
        elif ctx.attempts and "usage" in ctx.attempts[0]:
            record["usage"] = ctx.attempts[0]["usage"]
        if ctx.usage is not None:
            record["usage"] = ctx.usage
        self.decisions.write(record)
