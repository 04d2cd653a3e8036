"""One attempt on one route, JSON or stream: nothing reaches the client until the upstream has
produced its first content; after that, a stream that dies is continued elsewhere or ends with an
in-band error — never a truncated success.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson
from starlette.responses import Response

from services.router.accounting import Accounting
from services.router.budget import too_small, window
from services.router.camera_output import is_camera_triage, validate_camera
from services.router.continuation import Continuation
from services.router.errors import error_body
from services.router.faults import FailurePath
from services.router.outcomes import ErrorBody, Outcome, UpstreamFault, classify, error_answer, hangup
from services.router.policy import Route
from services.router.relay import RelayResponse, StreamTrack, consume, done_with
from services.router.request import CLIENT_GONE, DONE, JSON, Ctx
from services.router.slots import Slot, take
from services.router.sse import SSEReader, join
from services.router.state import RouteState
from services.router.stream import StreamRelay, usage_of
from services.router.tool_repair import StreamRepair, fix_answer, format_for
from services.router.upstream import Upstream

log = logging.getLogger("homelab.router.attempt")


def error_response(ctx: Ctx, name: str, outcome: Outcome) -> Response:
    """The upstream's refusal of the client's request, in OpenAI's shape (an engine's own shape is
    rewrapped; a context-length error always carries ``code: context_length_exceeded``)."""
    err = outcome.error or ErrorBody.of_message(outcome.detail)
    ctx.status = status = 400 if outcome.status in (0, 200) else outcome.status
    ctx.error = err.text
    context = outcome.kind == "context"
    if err.openai_shaped and not (context and "context_length" not in err.code):
        body = err.raw
    else:
        code = "context_length_exceeded" if context else (err.code or None)
        body = orjson.dumps(error_body(err.text, type_="invalid_request_error", code=code))
    return Response(body, status_code=status, media_type=JSON, headers=ctx.headers(name))


def clamped_max_tokens(ctx: Ctx, route: Route, st: RouteState) -> int | None:
    """An Anthropic client's ``max_tokens`` cut to what the route's context leaves after the prompt
    (never a 400 for asking too much); None when it fits, or for the OpenAI APIs (their clients get
    the engine's answer, as from OpenAI)."""
    if ctx.api != "messages":
        return None
    asked = (ctx.original or {}).get("max_tokens")
    if not isinstance(asked, int):
        return None
    room = window(route, st) - ctx.pre.tokens
    if asked <= room:
        return None
    return room


class Attempts:
    def __init__(self, upstream: Upstream, acct: Accounting, states: Callable[[], dict[str, RouteState]],
                 on_poisoned: Callable[[str, str], Awaitable[None]] | None = None) -> None:
        self.upstream = upstream
        self.acct = acct
        self.metrics = acct.metrics
        self.continuation = Continuation(upstream, acct, states)
        self.faults = FailurePath(acct, on_poisoned)
        self.relay = StreamRelay(acct, self.faults, self.continuation)

    async def with_retry(self, ctx: Ctx, route: Route, st: RouteState, slot: Slot) -> Outcome:
        """Attempt ``route`` with the slot the walk took; once more after a transient fault or a short
        Retry-After — the second try takes its slot again through the same admission as the first."""
        health = ctx.policy.health
        retried = honoured_429 = False
        name = ctx.path[-1]
        while True:
            room = st.in_flight < route.max_concurrency  # others in flight below the cap, this one aside
            t0 = time.perf_counter()
            attempt: dict[str, Any] = {"route": name, "outcome": "ok"}
            ctx.attempts.append(attempt)
            try:
                outcome = await self._attempt(ctx, name, route, st, slot)
            except BaseException:
                slot.release()  # a client that left (cancelled), or a bug: the slot is never kept
                raise
            if not (outcome.kind == "ok" and ctx.pre.stream):
                slot.release()  # a committed stream releases its slot when the client's response closes
            if outcome.kind != "ok":
                attempt.update(outcome=outcome.kind, detail=outcome.detail[:300],
                               ms=round((time.perf_counter() - t0) * 1000, 3))
            await self.faults.failed(ctx, name, st, outcome, room=room)
            wait: float | None = None
            if outcome.kind == "fail" and outcome.retryable and not retried:
                retried = True
                wait = random.uniform(health.retry_backoff_min, health.retry_backoff_max)
                attempt["backoff_ms"] = round(wait * 1000, 1)
                ctx.events.append(f"retry:{name}")
            elif outcome.kind == "busy" and outcome.retry_after is not None and not honoured_429 \
                    and outcome.retry_after <= health.retry_after_max:
                honoured_429 = True
                wait = outcome.retry_after
                ctx.events.append(f"retry_after:{name}:{outcome.retry_after}")
            elif outcome.kind == "client" and slot.trial:
                st.record_success()  # the engine answered: the trial proves the route works
            if wait is None:
                return outcome
            await asyncio.sleep(wait)
            again = await take(name, route, st, pinned=ctx.pinned(name), has_image=ctx.pre.has_image,
                         cooldown=health.circuit_cooldown, who=ctx.who)
            if isinstance(again, Slot):
                slot = again
                ctx.path.append(name)
                continue
            # Refused now (full, drained, its circuit open): the walk goes on as for that refusal.
            ctx.events.append(f"retry_refused:{name}:{again}")
            if again in ("saturated", "reserved"):
                return Outcome.failed(again, f"{name} is at its cap of {route.max_concurrency}", kind="busy")
            return outcome

    async def _attempt(self, ctx: Ctx, name: str, route: Route, st: RouteState, slot: Slot) -> Outcome:
        max_tokens = clamped_max_tokens(ctx, route, st)
        if max_tokens is not None:
            floor = ctx.policy.min_output_tokens
            if max_tokens < floor:
                return too_small(name, route, st, ctx.pre.tokens, max_tokens, floor)
            ctx.events.append(f"max_tokens_clamped:{(ctx.original or {}).get('max_tokens')}->{max_tokens}")
        payload = self.upstream.payload(ctx, route, max_tokens=max_tokens)
        if ctx.pre.stream:
            return await self._stream(ctx, name, route, st, payload, slot)
        return await self._plain(ctx, name, route, st, payload)

    @staticmethod
    def _answered(ctx: Ctx, name: str) -> None:
        """The client's answer comes from this route (success is recorded when it is complete)."""
        ctx.status = 200
        ctx.error = None  # an earlier hop's error is in ``attempts``, not the request's
        ctx.final_route = name

    async def _plain(self, ctx: Ctx, name: str, route: Route, st: RouteState, payload: bytes) -> Outcome:
        t0 = time.perf_counter()
        url = ctx.upstream_url(route)
        try:
            async with asyncio.timeout(route.request_timeout):
                status, raw, retry_after = await self.upstream.post_json(route, payload, url)
        except TimeoutError:
            return Outcome.failed("timeout", f"no answer within {route.request_timeout:g}s")
        except aiohttp.ClientConnectorError as exc:
            return Outcome.failed("connect", str(exc.os_error or exc))
        except (aiohttp.ClientError, OSError) as exc:
            return hangup(ctx.policy, t0, exc)
        finally:
            ctx.upstream_wait += time.perf_counter() - t0
        self.metrics.upstream.labels(name).observe(time.perf_counter() - t0)
        err = error_answer(raw) if status == 200 else ErrorBody.parse(raw)
        if err is not None:
            return classify(status, err, retry_after)
        if is_camera_triage(ctx.body):
            raw = validate_camera(ctx, name, raw, self.acct.validations)
        fmt = format_for(ctx, route)
        if fmt is not None:
            raw = fix_answer(ctx, self.acct, name, fmt, raw)
        if b'"usage"' in raw and ctx.attempts:  # what the engine says it read and wrote: who used what
            with contextlib.suppress(orjson.JSONDecodeError, AttributeError):
                usage = orjson.loads(raw).get("usage")
                if isinstance(usage, dict):
                    ctx.attempts[-1]["usage"] = usage
        self._answered(ctx, name)
        st.record_success()
        return Outcome("ok", response=Response(raw, media_type=JSON, headers=ctx.headers(name)))

    async def _stream(self, ctx: Ctx, name: str, route: Route, st: RouteState, payload: bytes,
                      slot: Slot) -> Outcome:
        t0 = time.perf_counter()
        resp: aiohttp.ClientResponse | None = None
        buffered: list[bytes] = []
        native = ctx.native(route)
        track = StreamTrack(native=ctx.api if native else None)
        fmt = format_for(ctx, route)
        repair = StreamRepair(ctx, self.acct, name, fmt) if fmt is not None else None
        first_end: UpstreamFault | bool | None = None
        try:
            async with asyncio.timeout(route.first_token_timeout):
                resp = await self.upstream.post_stream(route, payload, ctx.upstream_url(route))
                if resp.status != 200 or resp.content_type == JSON:
                    # An error, or a JSON body where a stream was asked for (an engine's 200 + error).
                    raw = await resp.read()
                    err = error_answer(raw) if resp.status == 200 else ErrorBody.parse(raw)
                    if err is None:
                        raise UpstreamFault("not_a_stream", f"JSON instead of a stream: {raw[:120]!r}")
                    outcome = classify(resp.status, err, resp.headers.get("Retry-After"))
                    resp.release()
                    return outcome
                # Hold the client's response until the first content (a role-only chunk is not enough).
                sse = SSEReader(resp.content)
                while not track.has_output:
                    batch = await sse.batch()
                    if batch is None:
                        raise UpstreamFault("stream_cut", "stream ended before any content")
                    out, done, fault = consume(track, batch)
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
            return Outcome.failed("timeout", f"no {waited} within {route.first_token_timeout:g}s")
        except UpstreamFault as exc:
            assert resp is not None
            resp.close()
            if exc.kind == "stream_error":
                # An error event before any content: read it like an error body (context, CUDA, ...).
                outcome = classify(200, ErrorBody.of_message(exc.detail))
                if outcome.kind != "fail":
                    return outcome
            return Outcome.failed(exc.kind, exc.detail)
        except aiohttp.ClientConnectorError as exc:
            return Outcome.failed("connect", str(exc.os_error or exc))
        except (aiohttp.ClientError, OSError) as exc:
            if resp is not None:
                resp.close()
            return hangup(ctx.policy, t0, exc)
        finally:
            ctx.upstream_wait += time.perf_counter() - t0
        assert resp is not None
        ttft = time.perf_counter() - t0
        self.metrics.ttft.labels(name).observe(ttft)
        self.metrics.upstream.labels(name).observe(ttft)
        ctx.ttfb = time.perf_counter() - ctx.started
        self._answered(ctx, name)
        headers = ctx.headers(name)
        headers["Cache-Control"] = "no-cache"
        if first_end is True:
            # The whole answer came in the first read (a short answer, a fast engine): one plain
            # response, no relay to run, the slot and the upstream connection free at once.
            slot.release()
            st.record_success()
            done_with(resp)
            usage_of(ctx, track)
            if repair is not None:
                buffered = repair.events(buffered) + repair.finish()
            return Outcome("ok", response=Response(join(buffered) + DONE, media_type="text/event-stream",
                                                   headers=headers))
        gen = self.relay.run(ctx, name, route, st, slot, resp, sse, buffered, track, first_end, repair)

        def on_close() -> None:
            slot.release()
            done_with(resp, finished=ctx.status == 200 and ctx.logged and ctx.final_route == name)
            if not ctx.logged:  # the client left before the answer ended
                ctx.events.append("client_disconnected")
                ctx.status = CLIENT_GONE
                self.acct.finish(ctx)

        return Outcome("ok", response=RelayResponse(gen, on_close, headers))
