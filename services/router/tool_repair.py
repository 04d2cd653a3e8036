"""A route's ``tool_parser`` at work on the request path: the engine is asked in a way it accepts, and
the calls it wrote as text come back to the client as real ``tool_calls`` — in a whole answer, or in a
stream (each call out as soon as its markup closes). Bad markup comes back as written, on the record.
"""

from __future__ import annotations

import time
from typing import Any

import jsonschema
import orjson
import referencing.exceptions

from services.router.accounting import Accounting
from services.router.policy import Route
from services.router.request import Ctx
from services.router.schemas import validator
from services.router.sse import sse_data
from services.router.toolparse import Call, Format, Schemas, ToolStream, parse, schemas_of
from services.router.toolparse import ParseError as ToolParseError


def format_for(ctx: Ctx, route: Route) -> Format | None:
    """The parser this request needs on ``route``: the route has one, the request offers tools, and the
    route gets Chat Completions (a native route answers in its own API)."""
    if route.tool_parser == "none" or not ctx.body.get("tools") or ctx.native(route):
        return None
    return route.tool_parser


def request_changes(ctx: Ctx, route: Route) -> dict[str, Any]:
    """An engine without a tool parser answers ``tool_choice: "auto"`` (and a missing one, which vLLM
    takes as auto) with a 400; ``"none"`` keeps the tools in the prompt through the chat template."""
    fmt = format_for(ctx, route)
    if fmt is None:
        return {}
    choice = ctx.body.get("tool_choice")
    changes: dict[str, Any] = {"tool_choice": "none"} if choice in (None, "auto") else {}
    if fmt == "mistral":
        changes["skip_special_tokens"] = False  # [TOOL_CALLS] is a special token: stripped, no call can be read
    return changes


def _check(ctx: Ctx, acct: Accounting, route: str, calls: list[Call], tools: Schemas) -> str | None:
    """A reason to refuse the calls (a tool the request did not offer), or None; schema mismatches are
    only noted. ``tools``: the request's tools by name (``schemas_of``)."""
    for call in calls:
        if call.name not in tools:
            return f"unknown tool '{call.name}'"
        schema = tools[call.name]
        if isinstance(schema, dict):
            try:
                validator(schema).validate(orjson.loads(call.arguments))
            except jsonschema.ValidationError as exc:  # the agent decides: the call still goes out
                ctx.events.append(f"tool_schema_mismatch:{call.name}:{exc.message[:120]}")
                acct.metrics.tool_schema_mismatches.labels(route, call.name[:64]).inc()
            except (jsonschema.SchemaError, orjson.JSONDecodeError, referencing.exceptions.Unresolvable):
                pass  # the schema was checked at the edge; arguments that are not JSON were refused before
    return None


def _failed(ctx: Ctx, acct: Accounting, route: str, fmt: str, why: str) -> None:
    ctx.events.append(f"tool_parse_error:{fmt}:{why[:200]}")
    acct.metrics.tool_parse_errors.labels(route, fmt).inc()


def _as_openai(calls: list[Call]) -> list[dict[str, Any]]:
    return [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}} for c in calls]


def fix_answer(ctx: Ctx, acct: Accounting, name: str, fmt: Format, raw: bytes) -> bytes:
    """A whole chat answer with its markup turned into ``tool_calls`` (or as it came, with the reason)."""
    try:
        body = orjson.loads(raw)
        message = body["choices"][0]["message"]
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
        return raw
    text = message.get("content")
    if not isinstance(text, str) or message.get("tool_calls"):
        return raw
    try:
        tools = schemas_of(ctx.body.get("tools"))
        before, calls = parse(fmt, text, tools)
    except ToolParseError as exc:
        _failed(ctx, acct, name, fmt, str(exc))
        return raw
    if not calls:
        return raw
    refused = _check(ctx, acct, name, calls, tools)
    if refused is not None:
        _failed(ctx, acct, name, fmt, refused)
        return raw
    message["content"] = before.strip() or None
    message["tool_calls"] = _as_openai(calls)
    body["choices"][0]["finish_reason"] = "tool_calls"
    acct.metrics.tool_calls_parsed.labels(name, fmt).inc(len(calls))
    ctx.events.append(f"tool_calls_parsed:{fmt}:{len(calls)}")
    return orjson.dumps(body)


class StreamRepair:
    """Chat chunks in, chunks out with the markup turned into ``tool_calls`` deltas.

    Content that may be markup is held; each call goes out (id and name, then its arguments) as soon as
    its markup closes; the chunk that finishes the answer (and the usage chunk after it) is held until
    the last call is known, then goes out with ``finish_reason: "tool_calls"`` when there were calls.
    """

    def __init__(self, ctx: Ctx, acct: Accounting, route: str, fmt: Format) -> None:
        self.ctx, self.acct, self.route, self.fmt = ctx, acct, route, fmt
        self.tools = schemas_of(ctx.body.get("tools"))
        self.stream = ToolStream(fmt, self.tools)
        self.template: dict[str, Any] = {}
        self.tail: list[dict[str, Any]] = []  # the finishing chunk and what follows it
        self.given = 0  # calls given out so far (their stream indices)
        self.noted = False

    @property
    def holding(self) -> bool:
        """A call has started and is not whole yet: the answer must not be spliced mid-call."""
        return self.stream.holding

    @property
    def text_sent(self) -> str:
        """The answer's text the client has (before any call)."""
        return self.stream.sent

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        chunk = {"id": self.template.get("id", f"chatcmpl-{self.ctx.request_id}"), "object": "chat.completion.chunk",
                 "created": self.template.get("created", int(time.time())), "model": self.template.get("model", ""),
                 "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        return b"data: " + orjson.dumps(chunk)

    def _text_and_calls(self, text: str) -> list[bytes]:
        """Text through the reader: the safe text, then every call that closed, each checked."""
        safe, calls = self.stream.feed(text)
        out = [self._chunk({"content": safe})] if safe else []
        return out + self._calls(calls)

    def _calls(self, calls: list[Call]) -> list[bytes]:
        out: list[bytes] = []
        for call in calls:
            refused = _check(self.ctx, self.acct, self.route, [call], self.tools)
            if refused is not None:  # from here on, the answer as the engine wrote it
                _failed(self.ctx, self.acct, self.route, self.fmt, refused)
                self.noted = True
                out.append(self._chunk({"content": self.stream.refuse(refused)}))
                break
            i, self.given = self.given, self.given + 1
            out.append(self._chunk({"tool_calls": [{"index": i, "id": call.id, "type": "function",
                                                    "function": {"name": call.name, "arguments": ""}}]}))
            out.append(self._chunk({"tool_calls": [{"index": i, "function": {"arguments": call.arguments}}]}))
            self.acct.metrics.tool_calls_parsed.labels(self.route, self.fmt).inc()
        return out

    def events(self, events: list[bytes]) -> list[bytes]:
        """Relayed SSE events in (``data: [DONE]`` excluded), the events to send now out."""
        out: list[bytes] = []
        for ev in events:
            data = sse_data(ev)
            if data is None:
                out.append(ev)
                continue
            chunk = orjson.loads(data)
            choices = chunk.get("choices") or []
            if not self.template and chunk.get("id"):
                self.template = {k: chunk.get(k) for k in ("id", "created", "model")}
            if not choices:  # usage: after the finish it waits with it, before it goes as it came
                if self.tail:
                    self.tail.append(chunk)
                else:
                    out.append(ev)
                continue
            delta = choices[0].get("delta") or {}
            text = delta.get("content")
            finishing = bool(choices[0].get("finish_reason")) or bool(self.tail)
            if isinstance(text, str) and text:
                rest = {k: v for k, v in delta.items() if k != "content"}
                out += self._text_and_calls(text)
                choices[0]["delta"] = rest
                if not finishing:
                    if rest:  # the role, say: what the chunk carried besides its text
                        out.append(b"data: " + orjson.dumps(chunk))
                    continue
            elif not finishing:
                out.append(ev)
                continue
            self.tail.append(chunk)  # the finish (and what follows): held until the last call is known
        return out

    def finish(self) -> list[bytes]:
        """The stream ended well: what was held, the last call, then the held finish and usage."""
        text, calls, error = self.stream.finish()
        if error is not None and not self.noted:
            _failed(self.ctx, self.acct, self.route, self.fmt, error)
        out = [self._chunk({"content": text})] if text else []
        out += self._calls(calls)
        if self.given:
            self.ctx.events.append(f"tool_calls_parsed:{self.fmt}:{self.given}")
        for chunk in self.tail:
            choices = chunk.get("choices") or []
            if self.given and choices and choices[0].get("finish_reason"):
                choices[0]["finish_reason"] = "tool_calls"
            out.append(b"data: " + orjson.dumps(chunk))
        self.tail = []
        return out
