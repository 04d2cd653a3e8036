"""A stream after its first byte: relayed as it comes (the route's tool-call markup repaired), its
success recorded when it completes, and a fault mid-answer taken down the one failure path and then
continued on the failover — or ended with an error in the shape of the API the client speaks, never a
truncated success."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import aiohttp
import orjson

from services.router.accounting import Accounting
from services.router.continuation import Continuation
from services.router.errors import error_body
from services.router.faults import FailurePath, fault_outcome
from services.router.messages import error_body as anthropic_error
from services.router.outcomes import UpstreamFault
from services.router.policy import Route
from services.router.relay import StreamTrack, consume
from services.router.request import DONE, FINISH_GRACE, Ctx
from services.router.slots import Slot
from services.router.sse import SSEBuffer, SSEReader, join
from services.router.state import RouteState
from services.router.tool_repair import StreamRepair, format_for

log = logging.getLogger("homelab.router.relay")


def usage_of(ctx: Ctx, track: StreamTrack) -> None:
    """What the engine said the stream used, on the attempt's record."""
    if track.usage is not None and ctx.attempts:
        ctx.attempts[-1]["usage"] = track.usage


class StreamRelay:
    def __init__(self, acct: Accounting, faults: FailurePath, continuation: Continuation) -> None:
        self.acct = acct
        self.metrics = acct.metrics
        self.faults = faults
        self.continuation = continuation

    def _completed(self, ctx: Ctx, name: str, st: RouteState, track: StreamTrack) -> None:
        """A relayed stream that ended well: the route's success, and its line written before the last
        bytes go out, so a client that reads the log after [DONE] finds it."""
        st.record_success()
        usage_of(ctx, track)
        self.acct.finish(ctx, name)

    async def run(self, ctx: Ctx, name: str, route: Route, st: RouteState, slot: Slot,
                     resp: aiohttp.ClientResponse, sse: SSEReader,
                     buffered: list[bytes], track: StreamTrack, first_end: UpstreamFault | bool | None,
                     repair: StreamRepair | None) -> AsyncIterator[bytes]:
        fault: UpstreamFault | None = first_end if isinstance(first_end, UpstreamFault) else None

        def fixed(events: list[bytes], done: bool = False) -> list[bytes]:
            """The events with the route's tool-call markup repaired (all that is held, at the end)."""
            if repair is None:
                return events
            out = repair.events(events)
            return out + repair.finish() if done else out

        try:
            buffered = fixed(buffered)
            if buffered:
                yield join(buffered)
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
                    if track.native:  # a Responses or Messages stream ends with its own last event, no [DONE]
                        self._completed(ctx, name, st, track)
                        return
                    ctx.events.append("finalised_without_done")
                    last = fixed([], done=True)
                    self._completed(ctx, name, st, track)
                    yield join(last) + DONE
                    return
                out, done, fault = consume(track, batch)
                if done:
                    out = fixed(out, done=True)
                    self._completed(ctx, name, st, track)
                    yield join(out) + DONE
                    return
                out = fixed(out)
                if out:
                    yield join(out)
        except UpstreamFault as exc:
            fault = exc
        except (aiohttp.ClientError, OSError) as exc:
            fault = UpstreamFault("stream_cut", f"{type(exc).__name__}: {exc}")
        except TimeoutError:
            fault = UpstreamFault("stall", f"no data for {route.stream_idle_timeout:g}s")
        except Exception as exc:  # a bug of ours: on the record, and an in-band error, never a silent cut
            log.exception("relay of request %s failed", ctx.request_id)
            self.metrics.internal_errors.labels("relay").inc()
            ctx.status, ctx.error = 500, f"internal error: {type(exc).__name__}"
            self.acct.finish(ctx, name)
            yield in_band_error(track.native, ctx.request_id,
                                f"Internal error in homelab-router (request {ctx.request_id})", "internal_error")
            return
        assert fault is not None
        # Mid-stream failure: never a truncated success. It is the route's fault like any other (the
        # one failure path: the circuit counts it, CUDA words poison it), and its slot and connection
        # go back before the answer is finished elsewhere.
        resp.close()
        slot.release()
        partial: str | None = None
        if repair is not None:
            if repair.given:
                track.tool_calls = True  # calls already went out: a prefill cannot carry them, never spliced
            else:
                # cut inside a call (or with text held that may start one): the partial markup is dropped
                # and the failover goes on from the text the client has, so that it writes the call whole
                partial = repair.text_sent
                if repair.holding:
                    ctx.events.append(f"cut_inside_call:{name}")
        await self.faults.failed(ctx, name, st, fault_outcome(fault), where="mid_stream")
        ctx.events.append(f"mid_stream:{name}:{fault.kind}")
        if ctx.attempts:
            ctx.attempts[-1].update(outcome="cut", detail=f"{fault.kind}: {fault.detail}"[:300],
                                    usage={"completion_tokens": track.deltas, "counted": True})
        cont_ok = False
        async for chunk in self._continued(ctx, name, route, track, partial):
            cont_ok = True
            yield chunk
        if not cont_ok:
            ctx.status = 502
            ctx.error = f"{fault.kind}: {fault.detail}"
            msg = f"The upstream '{name}' failed mid-answer ({fault.kind}: {fault.detail}); the answer is incomplete."
            self.acct.finish(ctx, name)
            yield in_band_error(track.native, ctx.request_id, msg, "upstream_stream_failed")

    async def _continued(self, ctx: Ctx, name: str, route: Route, track: StreamTrack,
                         partial: str | None) -> AsyncIterator[bytes]:
        """The continuation's bytes — through the failover route's own tool parser when it has one, so a
        call it writes reaches the client as a call, whole."""
        target = ctx.policy.routes.get(route.failover or "")
        fmt = format_for(ctx, target) if target is not None else None
        if fmt is None or route.failover is None:
            async for chunk in self.continuation.answer(ctx, name, route, track, partial):
                yield chunk
            return
        repair = StreamRepair(ctx, self.acct, route.failover, fmt)
        events = SSEBuffer()
        async for chunk in self.continuation.answer(ctx, name, route, track, partial):
            got = events.feed(chunk)
            done = bool(got) and got[-1] == DONE.strip()
            out = repair.events(got[:-1] if done else got)
            if done:
                out += repair.finish()
                yield join(out) + DONE
                return
            if out:
                yield join(out)


def in_band_error(native: str | None, request_id: str, message: str, code: str) -> bytes:
    """The last event of a stream that failed, in the shape of the API the client speaks: OpenAI's
    ``data: {"error": …}``, Anthropic's ``event: error``, or the Responses API's failure events."""
    if native == "messages":
        return b"event: error\ndata: " + orjson.dumps(anthropic_error(500, message)) + b"\n\n"
    if native == "responses":
        err = {"code": "server_error", "message": message}
        failed = {"type": "response.failed", "response": {"id": f"resp_{request_id}", "object": "response",
                                                          "status": "failed", "error": err, "output": []}}
        return (b"event: error\ndata: " + orjson.dumps({"type": "error", **err, "param": None}) + b"\n\n"
                + b"event: response.failed\ndata: " + orjson.dumps(failed) + b"\n\n")
    return b"data: " + orjson.dumps(error_body(message, type_="server_error", code=code)) + b"\n\n"
