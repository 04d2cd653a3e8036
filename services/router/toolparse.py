"""Tool calls an engine left as text, turned into real ``tool_calls`` (per route ``tool_parser``).

The formats, by the names vLLM gives their parsers:

- ``hermes`` (Qwen, Hermes): ``<tool_call>{"name": …, "arguments": {…}}</tool_call>``, one or more;
- ``glm45`` (GLM-4.5): ``<tool_call>name<arg_key>k</arg_key><arg_value>v</arg_value>…</tool_call>``;
- ``llama3_json``: the answer is ``{"name": …, "parameters": {…}}`` (after ``<|python_tag|>`` maybe),
  several separated by ``;``;
- ``mistral``: ``[TOOL_CALLS][{"name": …, "arguments": {…}}, …]`` or ``[TOOL_CALLS]name[ARGS]{…}``.

:class:`ToolStream` works on a stream: text that may be the start of a call is held back only until
it is known not to be one (a reply without calls streams as it comes); a call goes out whole, once
its markup has closed. Markup that does not parse never becomes a broken call: the text comes back
as the engine wrote it, and the reason is reported.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Literal

Format = Literal["none", "hermes", "glm45", "llama3_json", "mistral"]
FORMATS: tuple[Format, ...] = ("none", "hermes", "glm45", "llama3_json", "mistral")


class ParseError(ValueError):
    """Markup that looks like a call but is not a well-formed one."""


@dataclass(frozen=True, slots=True)
class Call:
    name: str
    arguments: str  # a JSON object, as OpenAI's ``tool_calls`` carry it
    id: str = field(default_factory=lambda: "call_" + os.urandom(12).hex())


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
    return json.dumps(value, ensure_ascii=False)


def _json_call(obj: Any, where: str, args_key: str = "arguments") -> Call:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
        raise ParseError(f"{where}: a call needs a name")
    return Call(obj["name"], _args(obj.get(args_key, obj.get("arguments", obj.get("parameters"))), where))


def _loads(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ParseError(f"{where}: not JSON ({exc.msg})") from exc


_GLM_ARG = re.compile(r"<arg_key>(.*?)</arg_key>\s*<arg_value>(.*?)</arg_value>", re.S)


def _glm_call(body: str) -> Call:
    i = body.find("<arg_key>")
    name, rest = (body, "") if i < 0 else (body[:i], body[i:])
    name = name.strip()
    if not name or not re.fullmatch(r"[\w.\-:]+", name):
        raise ParseError("glm45: a call needs a name")
    leftover = _GLM_ARG.sub("", rest).strip()
    if leftover:
        raise ParseError("glm45: text between the arguments")
    args: dict[str, Any] = {}
    for key, raw in _GLM_ARG.findall(rest):
        try:
            args[key.strip()] = json.loads(raw.strip())  # a number, a list, an object, a quoted string
        except json.JSONDecodeError:
            args[key.strip()] = raw  # a plain string, verbatim (a file's content keeps its last newline)
    return Call(name, json.dumps(args, ensure_ascii=False))


class _Tagged:
    """``<tool_call>…</tool_call>`` formats (hermes, glm45)."""

    open, close = "<tool_call>", "</tool_call>"

    def __init__(self, fmt: Format) -> None:
        self.fmt = fmt

    def starts(self) -> tuple[str, ...]:
        return (self.open,)

    def parse(self, text: str) -> tuple[str, list[Call]]:
        """(the text before the first call, the calls); ParseError for broken markup."""
        i = text.find(self.open)
        if i < 0:
            return text, []
        before, rest = text[:i], text[i:]
        calls = []
        while rest.strip():
            if not rest.lstrip().startswith(self.open):
                before += rest  # words after the calls stay words (as vLLM's parsers keep them)
                break
            rest = rest.lstrip()[len(self.open):]
            j = rest.find(self.close)
            if j < 0:
                raise ParseError(f"{self.fmt}: unbalanced <tool_call>")
            body, rest = rest[:j], rest[j + len(self.close):]
            calls.append(_json_call(_loads(body.strip(), self.fmt), self.fmt) if self.fmt == "hermes"
                         else _glm_call(body))
        return before, calls


class _Llama3:
    starts_with = ("<|python_tag|>", "{")

    def starts(self) -> tuple[str, ...]:
        return self.starts_with

    def parse(self, text: str) -> tuple[str, list[Call]]:
        body = text.strip()
        if not body.startswith(self.starts_with):
            return text, []
        body = body.removeprefix("<|python_tag|>").strip()
        calls = []
        decoder = json.JSONDecoder()
        pos = 0
        while pos < len(body):
            try:
                obj, end = decoder.raw_decode(body, pos)
            except json.JSONDecodeError as exc:
                raise ParseError(f"llama3_json: not JSON ({exc.msg})") from exc
            calls.append(_json_call(obj, "llama3_json", "parameters"))
            pos = end
            while pos < len(body) and body[pos] in " \n\t;":
                pos += 1
        return "", calls


class _Mistral:
    tag = "[TOOL_CALLS]"

    def starts(self) -> tuple[str, ...]:
        return (self.tag,)

    def parse(self, text: str) -> tuple[str, list[Call]]:
        i = text.find(self.tag)
        if i < 0:
            return text, []
        before, body = text[:i], text[i + len(self.tag):].strip()
        if body.startswith("["):
            items = _loads(body, "mistral")
            if not isinstance(items, list) or not items:
                raise ParseError("mistral: an empty call list")
            return before, [_json_call(x, "mistral") for x in items]
        calls = []
        for part in body.split(self.tag):  # newer templates: name[ARGS]{…}, one tag per call
            name, sep, args = part.partition("[ARGS]")
            if not sep:
                raise ParseError("mistral: [ARGS] missing")
            calls.append(Call(name.strip(), _args(_loads(args.strip(), "mistral"), "mistral")))
        return before, calls


def parser(fmt: Format) -> _Tagged | _Llama3 | _Mistral:
    if fmt in ("hermes", "glm45"):
        return _Tagged(fmt)
    if fmt == "llama3_json":
        return _Llama3()
    if fmt == "mistral":
        return _Mistral()
    raise ValueError(f"no parser for {fmt}")


def parse(fmt: Format, text: str) -> tuple[str, list[Call]]:
    """A whole answer's text → (the text before the calls, the calls). Raises ParseError."""
    return parser(fmt).parse(text)


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
    """A streamed answer's text in, safe text and whole calls out."""

    def __init__(self, fmt: Format) -> None:
        self.fmt = fmt
        self.p = parser(fmt)
        self.held = ""  # text that is or may be markup
        self.sent = ""  # text given out so far
        self.holding = False  # a call has (or may have) started
        self.json_lead = fmt == "llama3_json"  # llama3: only an answer that *starts* with a call is one
        self.last_held = ""  # what finish() parsed: the markup as the engine wrote it

    def feed(self, text: str) -> str:
        """Text in; the text that is safe to give out now."""
        if self.holding:
            self.held += text
            return ""
        buf = self.held + text
        if self.json_lead:
            stripped = buf.lstrip()
            if not stripped:
                self.held = buf
                return ""
            self.json_lead = False
            if stripped.startswith(self.p.starts()) or any(s.startswith(stripped) for s in self.p.starts()):
                self.holding = stripped.startswith(self.p.starts())
                self.held = buf
                if not self.holding:
                    self.json_lead = True
                return ""
            self.held = ""
            self.sent += buf
            return buf
        cut = _maybe_start(buf, self.p.starts())
        safe, self.held = buf[:cut], buf[cut:]
        if any(self.held.startswith(s) for s in self.p.starts()):
            self.holding = True
        self.sent += safe
        return safe

    def finish(self) -> tuple[str, list[Call], str | None]:
        """At the end: (text still to give out, the calls, the parse error if the markup was broken —
        then the text is the markup as the engine wrote it and there are no calls)."""
        held, self.held = self.held, ""
        self.last_held = held
        if not held:
            return "", [], None
        try:
            before, calls = self.p.parse(held)
        except ParseError as exc:
            return held, [], str(exc)
        return before, calls, None
