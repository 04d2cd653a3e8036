"""Tool calls an engine left as text, turned into real ``tool_calls`` (per route ``tool_parser``),
read the way vLLM's parsers of the same names read them.

- ``hermes`` (Qwen, Hermes): ``<tool_call>{"name": …, "arguments": {…}}</tool_call>``, one or more; a
  final ``<tool_call>`` the model never closed (it stopped at its stop token) is read when its JSON is whole;
- ``glm45`` (GLM-4.5): ``<tool_call>name\\n<arg_key>k</arg_key><arg_value>v</arg_value>…</tool_call>``,
  each value typed by the request's tool schema: a ``"type": "string"`` parameter keeps the text as
  written (whitespace included), any other is read as JSON (then as a Python literal), else kept as text;
- ``llama3_json``: ``{"name": …, "parameters": {…}}`` (or ``arguments``; after ``<|python_tag|>``
  maybe), several separated by ``;`` or newlines; prose after the calls is not a call;
- ``mistral``: ``[TOOL_CALLS][{"name": …, "arguments": {…}}, …]`` (before v11: one list, anything after it
  ignored) or ``[TOOL_CALLS]name{…}`` / ``[TOOL_CALLS]name[ARGS]{…}`` (v11+: one tag per call).

One reader serves whole answers and streams (:class:`ToolStream`): text before the first call goes out
as it comes (held only while it may be the start of a call); each call goes out as soon as its markup
closes, whatever follows it; text after the first call is not part of the answer's content (as in
vLLM's non-streaming parsers). Markup that does not parse never becomes a broken call: it comes back
as the engine wrote it, and the reason is reported.
"""

from __future__ import annotations

import ast
import json
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Format = Literal["none", "hermes", "glm45", "llama3_json", "mistral"]
FORMATS: tuple[Format, ...] = ("none", "hermes", "glm45", "llama3_json", "mistral")
Schemas = Mapping[str, Any]  # tool name -> its parameters' JSON schema (what the request offered)


class ParseError(ValueError):
    """Markup that looks like a call but is not a well-formed one."""


@dataclass(frozen=True, slots=True)
class Call:
    name: str
    arguments: str  # a JSON object, as OpenAI's ``tool_calls`` carry it
    id: str = field(default_factory=lambda: "call_" + os.urandom(12).hex())


_DECODER = json.JSONDecoder()


def _dumps(value: dict[str, Any]) -> str:
    return json.dumps(value, ensure_ascii=False)


def _args(value: Any, where: str) -> str:
    if isinstance(value, str):  # some models write the arguments as a JSON string
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ParseError(f"{where}: arguments are not JSON") from exc
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise ParseError(f"{where}: arguments are not a JSON object")
    return _dumps(value)


def _json_call(obj: Any, where: str, *, need_args: bool = False) -> Call:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
        raise ParseError(f"{where}: a call needs a name")
    if need_args and "arguments" not in obj and "parameters" not in obj:
        raise ParseError(f"{where}: a call needs its parameters")
    return Call(obj["name"], _args(obj.get("arguments", obj.get("parameters")), where))


def _decode(text: str, pos: int, where: str) -> tuple[Any, int] | None:
    """The JSON value starting at ``pos`` and where it ends; None while it is still arriving (its
    brackets or a string still open); ParseError when it is broken."""
    try:
        return _DECODER.raw_decode(text, pos)
    except json.JSONDecodeError as exc:
        if _open_json(text[pos:]):
            return None
        raise ParseError(f"{where}: not JSON ({exc.msg})") from exc


def _open_json(text: str) -> bool:
    """Is this JSON unfinished (brackets or a string still open), rather than broken?"""
    depth, in_str, esc = 0, False, False
    for c in text:
        if in_str:
            if esc:
                esc = False
            elif c == "\\":
                esc = True
            elif c == '"':
                in_str = False
        elif c == '"':
            in_str = True
        elif c in "{[":
            depth += 1
        elif c in "}]":
            depth -= 1
    return in_str or depth > 0


def _loads_whole(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ParseError(f"{where}: not JSON ({exc.msg})") from exc


# ---- GLM-4.5: values typed by the tool's schema -------------------------------------------------

_GLM_ARG = re.compile(r"<arg_key>(.*?)</arg_key>\s*<arg_value>(.*?)</arg_value>", re.S)


def _is_string(schemas: Schemas, tool: str, key: str) -> bool:
    params = schemas.get(tool)
    if not isinstance(params, dict):
        return False
    prop = (params.get("properties") or {}).get(key) if isinstance(params.get("properties"), dict) else None
    return isinstance(prop, dict) and prop.get("type") == "string"


def _glm_value(raw: str) -> Any:
    """A value whose schema does not say string: JSON, else a Python literal, else the text itself."""
    value = raw.strip()
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        pass
    if len(value) <= 10_000:
        try:
            return ast.literal_eval(value)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            pass
    return value


def _glm_call(body: str, schemas: Schemas) -> Call:
    cuts = [i for i in (body.find("\n"), body.find("<arg_key>")) if i >= 0]
    cut = min(cuts) if cuts else len(body)
    name, rest = body[:cut].strip(), body[cut:]
    if not name or not re.fullmatch(r"[\w.\-:]+", name):
        raise ParseError("glm45: a call needs a name")
    if _GLM_ARG.sub("", rest).strip():
        raise ParseError("glm45: text between the arguments")
    args: dict[str, Any] = {}
    for key, raw in _GLM_ARG.findall(rest):
        k = key.strip()
        args[k] = raw if _is_string(schemas, name, k) else _glm_value(raw)
    if isinstance(args, dict):
        return Call(name, _dumps(args))
    raise ParseError("glm45: arguments")  # pragma: no cover - args is always a dict


# ---- the families: where a call starts, and a call read from its start ---------------------------

class _Family(ABC):
    """``starts``: what opens a call; ``take``: the call at the start of the text and where it ends
    (None while its markup is still arriving); ``last``: the same at the end of the answer (a call the
    model never closed); ``more``: may another call follow one that has closed?"""

    starts: tuple[str, ...] = ()
    between = " \t\r\n"  # what may separate two calls

    @property
    def continuing(self) -> bool:
        """Inside a list of calls (the next one starts without a tag of its own)?"""
        return False

    def __init__(self, schemas: Schemas) -> None:
        self.schemas = schemas

    @abstractmethod
    def take(self, text: str) -> tuple[Call, int] | None:
        """The call at the start of ``text`` and where its markup ends; None while it is arriving."""

    def last(self, text: str) -> Call:
        raise ParseError(f"{self.name}: the call is not closed")

    def more(self) -> bool:
        return True

    def list_ends(self, text: str) -> bool:
        return False

    @property
    def name(self) -> str:
        return type(self).__name__.strip("_").lower()


class _Tagged(_Family):
    """``<tool_call>…</tool_call>`` (hermes, glm45)."""

    open, close = "<tool_call>", "</tool_call>"
    starts = (open,)

    def __init__(self, schemas: Schemas, fmt: Format) -> None:
        super().__init__(schemas)
        self.fmt = fmt

    @property
    def name(self) -> str:
        return self.fmt

    def _call(self, body: str) -> Call:
        if self.fmt == "hermes":
            return _json_call(_loads_whole(body.strip(), "hermes"), "hermes")
        return _glm_call(body, self.schemas)

    def take(self, text: str) -> tuple[Call, int] | None:
        j = text.find(self.close, len(self.open))
        if j < 0:
            return None
        return self._call(text[len(self.open):j]), j + len(self.close)

    def last(self, text: str) -> Call:
        body = text[len(self.open):]
        for k in range(len(self.close) - 1, 0, -1):  # a closing tag cut short by the stop token
            if body.endswith(self.close[:k]):
                body = body[:-k]
                break
        if self.fmt == "hermes" and body.strip():  # vLLM's hermes reads an unclosed final call
            return self._call(body)
        raise ParseError(f"{self.fmt}: unbalanced <tool_call>")


class _Llama3(_Family):
    starts = ("<|python_tag|>", '{"name"', '{ "name"')
    between = " \t\r\n;"

    @property
    def name(self) -> str:
        return "llama3_json"

    def take(self, text: str) -> tuple[Call, int] | None:
        pos = len("<|python_tag|>") if text.startswith("<|python_tag|>") else 0
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        if pos >= len(text):
            return None
        got = _decode(text, pos, "llama3_json")
        if got is None:
            return None
        obj, end = got
        return _json_call(obj, "llama3_json", need_args=True), end

    def last(self, text: str) -> Call:
        raise ParseError("llama3_json: the call is not whole JSON")


class _Mistral(_Family):
    tag = "[TOOL_CALLS]"
    starts = (tag,)

    def __init__(self, schemas: Schemas) -> None:
        super().__init__(schemas)
        self.in_list = False  # inside a pre-v11 list of calls
        self.done = False

    def take(self, text: str) -> tuple[Call, int] | None:
        if not text.startswith(self.tag):
            return self._item(text, 0)  # the next item of a list that is open
        body = len(self.tag)
        while body < len(text) and text[body] in " \t\r\n":
            body += 1
        if body >= len(text):
            return None
        if text[body] == "[":  # before v11: [TOOL_CALLS][{…}, {…}]
            got = self._item(text, body + 1)
            if got is not None and not self.done:
                self.in_list = True
            return got
        brace = text.find("{", body)
        if brace < 0:
            if len(text) - body > 256:
                raise ParseError("mistral: no arguments after the name")
            return None
        name = text[body:brace].replace("[ARGS]", "").strip()
        if not name or not re.fullmatch(r"[\w.\-:]+", name):
            raise ParseError("mistral: a call needs a name")
        got = _decode(text, brace, "mistral")
        if got is None:
            return None
        args, end = got
        return Call(name, _args(args, "mistral")), end

    def _item(self, text: str, pos: int) -> tuple[Call, int] | None:
        while pos < len(text) and text[pos] in " \t\r\n,":  # items of a list: separated by commas
            pos += 1
        if pos >= len(text):
            return None
        if text[pos] == "]":
            raise ParseError("mistral: an empty call list")
        got = _decode(text, pos, "mistral")
        if got is None:
            return None
        obj, end = got
        call = _json_call(obj, "mistral")
        k = end
        while k < len(text) and text[k] in " \t\r\n":
            k += 1
        if k < len(text) and text[k] == "]":
            self.in_list, self.done, end = False, True, k + 1
        return call, end

    def list_ends(self, text: str) -> bool:
        """The rest of an open list is its closing bracket: no more calls."""
        if self.in_list and text.lstrip(" \t\r\n,").startswith("]"):
            self.in_list, self.done = False, True
            return True
        return False

    def more(self) -> bool:
        return not self.done

    @property
    def continuing(self) -> bool:
        return self.in_list


def family(fmt: Format, schemas: Schemas | None = None) -> _Family:
    if fmt in ("hermes", "glm45"):
        return _Tagged(schemas or {}, fmt)
    if fmt == "llama3_json":
        return _Llama3(schemas or {})
    if fmt == "mistral":
        return _Mistral(schemas or {})
    raise ValueError(f"no parser for {fmt}")


def schemas_of(tools: Any) -> dict[str, Any]:
    """A request's ``tools`` as tool name -> parameters schema."""
    out: dict[str, Any] = {}
    for t in tools if isinstance(tools, list) else ():
        fn = t.get("function") if isinstance(t, dict) else None
        if isinstance(fn, dict) and isinstance(fn.get("name"), str):
            out[fn["name"]] = fn.get("parameters")
    return out


def _maybe_start(text: str, starts: tuple[str, ...]) -> int:
    """Where text that is, or may become, a call's start begins (len(text) when there is none)."""
    best = len(text)
    for s in starts:
        i = text.find(s)
        if i >= 0:
            best = min(best, i)
        for k in range(min(len(s) - 1, len(text)), 0, -1):  # a tag cut by the end of what arrived so far
            if text.endswith(s[:k]):
                best = min(best, len(text) - k)
                break
    return best


class ToolStream:
    """An answer's text in (whole, or as it streams), safe text and whole calls out."""

    def __init__(self, fmt: Format, schemas: Schemas | None = None) -> None:
        self.fmt = fmt
        self.p = family(fmt, schemas)
        self.held = ""  # text that is, or may be, markup
        self.sent = ""  # text before the first call, given out so far
        self.calls: list[Call] = []  # calls given out so far
        self.markups: list[str] = []  # each call's markup as the engine wrote it
        self.in_calls = False  # the first call has started: what follows is calls or nothing
        self.ended = False  # no call can follow (a llama3 answer's prose, a closed mistral list)
        self.error: str | None = None  # broken markup: from there on the text goes out as written

    @property
    def holding(self) -> bool:
        """A call has started and is not whole yet (cut here, the answer must not be spliced)."""
        return self.in_calls and not self.ended and self.error is None and bool(self.held.strip(self.p.between))

    def feed(self, text: str) -> tuple[str, list[Call]]:
        """Text in; (the text that is safe to give out now, the calls that closed)."""
        if self.error is not None:
            return text, []
        if self.ended:
            return "", []
        buf = self.held + text
        safe = ""
        if not self.in_calls:
            cut = _maybe_start(buf, self.p.starts)
            safe, buf = buf[:cut], buf[cut:]
            self.sent += safe
            if not any(buf.startswith(s) for s in self.p.starts):
                self.held = buf
                return safe, []
            self.in_calls = True
        self.held = buf
        try:
            return safe, self._calls()
        except ParseError as exc:
            self.error, broken, self.held = str(exc), self.held, ""
            return safe + broken, []

    def _calls(self) -> list[Call]:
        out: list[Call] = []
        while not self.ended:
            buf = self.held.lstrip(self.p.between)
            if not buf:
                self.held = ""
                break
            if self.p.list_ends(buf):
                self.ended, self.held = True, ""
                break
            if self.p.continuing or any(buf.startswith(s) for s in self.p.starts):
                self.held = buf
                got = self.p.take(buf)
                if got is None:
                    break
                call, end = got
                out.append(call)
                self.calls.append(call)
                self.markups.append(buf[:end])
                self.held = buf[end:]
                if not self.p.more():
                    self.ended = True
                continue
            if any(s.startswith(buf) for s in self.p.starts):
                self.held = buf  # the start of the next call, still arriving
                break
            if isinstance(self.p, _Tagged | _Mistral):
                nxt = _maybe_start(buf, self.p.starts)  # text between calls is dropped; the next tag is read
                self.held = buf[nxt:]
                if nxt == len(buf):
                    break
                continue
            self.ended, self.held = True, ""  # prose after the calls: the calls are all there is
        return out

    def refuse(self, why: str) -> str:
        """The last call may not go out (a tool the request did not offer): its markup as text, and
        from here on the answer goes out as written."""
        self.error = why
        rest, self.held = self.held, ""
        return self.markups[-1] + rest

    def finish(self) -> tuple[str, list[Call], str | None]:
        """At the end: (text still to give out, the calls that closed at the end, the parse error if
        markup was broken — then the broken markup is given out as the engine wrote it)."""
        held, self.held = self.held, ""
        if self.error is not None:
            return held, [], self.error
        if not self.in_calls:
            self.sent += held
            return held, [], None
        rest = held.strip(self.p.between)
        if self.ended or not rest:
            return "", [], None
        if any(s.startswith(rest) for s in self.p.starts) and not any(rest.startswith(s) for s in self.p.starts):
            return "", [], None  # a tag cut short at the very end: nothing
        try:
            call = self.p.last(rest)
        except ParseError as exc:
            self.error = str(exc)
            return held, [], self.error
        self.calls.append(call)
        self.markups.append(rest)
        return "", [call], None


def parse(fmt: Format, text: str, schemas: Schemas | None = None) -> tuple[str, list[Call]]:
    """A whole answer's text → (the text before the first call, the calls). Raises ParseError when
    any markup is broken (then no call is given: the answer stays as the engine wrote it)."""
    s = ToolStream(fmt, schemas)
    safe, calls = s.feed(text)
    rest, last, _ = s.finish()
    if s.error is not None:
        raise ParseError(s.error)
    calls += last
    return (s.sent if calls else safe + rest), calls
