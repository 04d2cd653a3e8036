"""Finishing a cut answer on another route: ``prefill`` (the partial answer as an open assistant turn)
or ``instruct`` (a user turn asking to go on), and the repeat an instructed model may write first.

Only plain text is ever continued: a stream cut inside a tool call, or a native Responses stream,
ends with an in-band error instead.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import orjson

from services.router.accounting import Accounting
from services.router.budget import asked, text_tokens, window
from services.router.errors import error_body
from services.router.outcomes import ErrorBody, UpstreamFault
from services.router.policy import Route
from services.router.relay import StreamTrack
from services.router.request import DONE, Ctx
from services.router.slots import Slot, take
from services.router.sse import SSEReader, join, with_data
from services.router.state import RouteState
from services.router.upstream import Upstream

# The user turn of an ``instruct`` continuation (engines that reject or ignore an assistant prefill).
CONTINUE_INSTRUCTION = (
    "Your previous answer was cut off. Continue it exactly where it stopped: output only the rest, "
    "starting with the very next character, without repeating anything already written and "
    "without any preamble or comment."
)


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


class Continuation:
    def __init__(self, upstream: Upstream, acct: Accounting, states: Callable[[], dict[str, RouteState]]) -> None:
        self.upstream = upstream
        self.acct = acct
        self._states = states

    async def answer(self, ctx: Ctx, name: str, route: Route, track: StreamTrack,
                     partial: str | None = None) -> AsyncIterator[bytes]:
        """Finish the answer on the failover route, in the modes it allows (prefill first, then instruct).

        The failover's slot is taken through the same admission as any request (its cap, drain, circuit,
        the slots it reserves for other classes, the client's routes) and held once for both modes.
        """
        target = route.failover
        policy = ctx.policy
        if target is None or track.tool_calls or track.native:
            return
        troute = policy.routes[target]
        st = self._states().get(target)
        if st is None:
            return
        got = await take(target, troute, st, has_image=ctx.pre.has_image, cooldown=policy.health.circuit_cooldown,
                   who=ctx.who)
        if not isinstance(got, Slot):
            ctx.events.append(f"continuation_refused:{target}:{got}")
            return
        try:
            for mode in [m for m in troute.continuation if m not in st.continuation_blocked]:
                state: dict[str, Any] = {}
                async for chunk in self._once(ctx, name, target, troute, st, track, mode, state, partial):
                    yield chunk
                if not state.get("rejected"):
                    return  # answered, or failed after output (an error event went out), or failed hard
                ctx.events.append(f"continuation_rejected:{target}:{mode}")
        finally:
            got.release()

    def _limit(self, ctx: Ctx, target: str, troute: Route, st: RouteState, track: StreamTrack,
               added: str) -> dict[str, int] | None:
        """The output limit the continuation asks for: what the client asked, less what it already has,
        within what the failover's context leaves after the prompt it is sent (the partial answer and
        any turn of the router's own included). None: no room worth asking for."""
        want = asked(ctx.body)
        if want is None:
            return {}  # the client set no limit: the engine stops at its context, as it would have
        key, n = want
        rest = max(1, n - track.deltas)
        room = window(troute, st) - ctx.pre.tokens - text_tokens(added)
        if min(rest, room) < min(ctx.policy.min_output_tokens, rest):
            ctx.events.append(f"continuation_no_room:{target}:{max(room, 0)}")
            return None
        return {key: min(rest, room)}

    async def _once(self, ctx: Ctx, name: str, target: str, troute: Route, st: RouteState, track: StreamTrack,
                    mode: str, state: dict[str, Any], given: str | None = None) -> AsyncIterator[bytes]:
        """One try in one mode. ``given``: the text the client has, when it is not all the route wrote
        (markup cut inside a call is the client's only as the call the failover will write)."""
        partial = "".join(track.text) if given is None else given
        if mode == "prefill":
            extra: dict[str, Any] = {
                "messages": [*ctx.body["messages"], {"role": "assistant", "content": partial}],
                "continue_final_message": True, "add_generation_prompt": False}
            added = partial
        else:
            extra = {"messages": [*ctx.body["messages"], {"role": "assistant", "content": partial},
                                  {"role": "user", "content": CONTINUE_INSTRUCTION}]}
            added = partial + CONTINUE_INSTRUCTION
        limit = self._limit(ctx, target, troute, st, track, added)
        if limit is None:
            return
        extra.update(limit)
        extra["stream_options"] = {"include_usage": True}
        payload = self.upstream.payload(ctx, troute, extra)
        want_usage = bool((ctx.body.get("stream_options") or {}).get("include_usage"))
        attempt: dict[str, Any] = {"route": target, "outcome": "fail", "mode": mode}
        ctx.attempts.append(attempt)
        t0 = time.perf_counter()
        resp: aiohttp.ClientResponse | None = None
        started = False
        try:
            async with asyncio.timeout(troute.first_token_timeout):
                resp = await self.upstream.post_stream(troute, payload)
            if resp.status != 200:
                detail = f"http_{resp.status}: {ErrorBody.parse(await resp.read()).text}"
                attempt["detail"] = detail[:300]
                self.acct.fault(ctx, target, "continuation", "", detail, mode=mode)
                state["rejected"] = 400 <= resp.status < 500
                return
            cont = StreamTrack()
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
                for _, data in with_data(batch):
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
                    yield join(out)
            if not cont.finished:
                raise UpstreamFault("stream_cut", "continuation ended without finish_reason")
            self.acct.moved(name, target, "mid_stream")
            ctx.path.append(target)
            ctx.final_route = target
            ctx.events.append(f"continued_on:{target}:{mode}")
            attempt.update(outcome="continued", ms=round((time.perf_counter() - t0) * 1000, 3))
            if cont.usage is not None:
                attempt["usage"] = cont.usage
            usage = merged_usage(ctx, track, cont, mode)
            ctx.usage = usage
            tail = b""
            if want_usage:
                usage_ev = {"id": track.chunk_id or f"chatcmpl-{ctx.request_id}", "object": "chat.completion.chunk",
                            "created": int(time.time()), "model": troute.model, "choices": [], "usage": usage}
                tail = b"data: " + orjson.dumps(usage_ev) + b"\n\n"
            self.acct.finish(ctx, target)
            yield tail + DONE
        except (UpstreamFault, aiohttp.ClientError, OSError, TimeoutError) as exc:
            attempt["detail"] = str(exc)[:300]
            self.acct.fault(ctx, target, "continuation", "", str(exc), mode=mode)
            if started:
                # Part of the continuation went out: the caller must still end with an error.
                ctx.status = 502
                ctx.error = f"continuation on {target} failed: {exc}"
                msg = f"The answer could not be completed: {ctx.error}"
                self.acct.finish(ctx, target)
                yield b"data: " + orjson.dumps(
                    error_body(msg, type_="server_error", code="upstream_stream_failed")) + b"\n\n"
        finally:
            if resp is not None:
                resp.close()


def merged_usage(ctx: Ctx, track: StreamTrack, cont: StreamTrack, mode: str) -> dict[str, Any]:
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
