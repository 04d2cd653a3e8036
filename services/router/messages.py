"""The Anthropic Messages API (``POST /v1/messages``) on top of Chat Completions, both ways.

A route with ``messages: native`` gets the request as it came (its engine serves /v1/messages:
llama.cpp's server, vLLM, Ollama); every other route gets it translated to Chat Completions, and the
answer comes back as a Message — JSON, or the Messages event stream (``message_start`` …
``message_stop``). Errors on this API are Anthropic-shaped.

Dropped with a note in the decision log, never an error: ``thinking`` and thinking blocks in the
history, ``cache_control``, server tools the lab cannot run, ``context_management``,
``output_config``, ``anthropic-beta`` flags. A ``system`` message inside ``messages`` (Claude Code
sends its environment that way, last) joins the system prompt.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from services.router.errors import RequestError
from services.router.preflight import check_schema
from services.router.sse import ChatStreamTranslator

DROPPED_FIELDS = ("thinking", "context_management", "output_config", "container", "mcp_servers", "service_tier")
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "function_call": "tool_use",
                "content_filter": "refusal"}
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 503: "overloaded_error",
               529: "overloaded_error"}


@dataclass
class Translation:
    chat: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def error_body(status: int, message: str) -> dict[str, Any]:
    """An error as the Anthropic SDK and Claude Code read it."""
    return {"type": "error", "error": {"type": ERROR_TYPES.get(status, "api_error"), "message": message}}


def _bad(where: str, what: str) -> RequestError:
    return RequestError(f"{where}: {what}", param=where)


def _text(blocks: Any, where: str, notes: list[str]) -> str:
    """Text of a string or a list of text blocks (system prompts, tool results)."""
    if isinstance(blocks, str):
        return blocks
    if not isinstance(blocks, list):
        raise _bad(where, "a string or a list of content blocks is expected")
    out = []
    for j, b in enumerate(blocks):
        if not isinstance(b, dict):
            raise _bad(f"{where}.{j}", "a content block (an object) is expected")
        if "cache_control" in b:
            _note(notes, "dropped:cache_control")
        if b.get("type") == "text":
            out.append(str(b.get("text") or ""))
        else:
            _note(notes, f"dropped_block:{b.get('type')}")
    return "\n".join(out)


def _note(notes: list[str], note: str) -> None:
    if note not in notes:
        notes.append(note)


def _image(block: dict[str, Any], where: str) -> dict[str, Any]:
    src = block.get("source")
    if not isinstance(src, dict):
        raise _bad(f"{where}.source", "an image source is required")
    if src.get("type") == "base64" and isinstance(src.get("data"), str):
        url = f"data:{src.get('media_type') or 'image/jpeg'};base64,{src['data']}"
    elif src.get("type") == "url" and isinstance(src.get("url"), str):
        url = src["url"]
    else:
        raise _bad(f"{where}.source", "base64 data or a url is required (file ids are not supported)")
    return {"type": "image_url", "image_url": {"url": url}}


def _user(content: Any, where: str, notes: list[str]) -> list[dict[str, Any]]:
    """A user turn → chat messages: its tool results first (as ``tool`` turns), then what it says."""
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    if not isinstance(content, list):
        raise _bad(f"{where}.content", "a string or a list of content blocks is expected")
    tools: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, b in enumerate(content):
        at = f"{where}.content.{j}"
        if not isinstance(b, dict):
            raise _bad(at, "a content block (an object) is expected")
        if "cache_control" in b:
            _note(notes, "dropped:cache_control")
        kind = b.get("type")
        if kind == "text":
            parts.append({"type": "text", "text": str(b.get("text") or "")})
        elif kind == "image":
            parts.append(_image(b, at))
        elif kind == "tool_result":
            text = _text(b.get("content") or "", f"{at}.content", notes) if b.get("content") is not None else ""
            if b.get("is_error"):
                text = f"Error: {text}"
            tools.append({"role": "tool", "tool_call_id": str(b.get("tool_use_id") or ""), "content": text})
        elif kind in ("thinking", "redacted_thinking"):
            _note(notes, "dropped_input:thinking")
        else:
            _note(notes, f"dropped_block:{kind}")
    out = list(tools)
    if parts:
        only_text = all(p["type"] == "text" for p in parts)
        out.append({"role": "user", "content": "\n".join(p["text"] for p in parts) if only_text else parts})
    return out


def _assistant(content: Any, where: str, notes: list[str]) -> dict[str, Any]:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    if not isinstance(content, list):
        raise _bad(f"{where}.content", "a string or a list of content blocks is expected")
    text: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, b in enumerate(content):
        if not isinstance(b, dict):
            raise _bad(f"{where}.content.{j}", "a content block (an object) is expected")
        kind = b.get("type")
        if kind == "text":
            text.append(str(b.get("text") or ""))
        elif kind == "tool_use":
            calls.append({"id": str(b.get("id") or f"toolu_{j}"), "type": "function",
                          "function": {"name": str(b.get("name") or ""),
                                       "arguments": orjson.dumps(b.get("input") or {}).decode()}})
        elif kind in ("thinking", "redacted_thinking"):
            _note(notes, "dropped_input:thinking")
        else:
            _note(notes, f"dropped_block:{kind}")
    msg: dict[str, Any] = {"role": "assistant", "content": "".join(text) or None}
    if calls:
        msg["tool_calls"] = calls
    return msg


def to_chat(body: Any, *, for_count: bool = False) -> Translation:
    """A Messages request → a Chat Completions request (and what was dropped on the way)."""
    if not isinstance(body, dict):
        raise RequestError("the body must be a JSON object")
    notes: list[str] = []
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("model", "a model name is required")
    max_tokens = body.get("max_tokens")
    if not for_count and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1):
        raise _bad("max_tokens", "a positive integer is required")
    raw_messages = body.get("messages")
    if not isinstance(raw_messages, list) or not raw_messages:
        raise _bad("messages", "a non-empty list of messages is required")
    system: list[str] = []
    if body.get("system") is not None:
        s = _text(body["system"], "system", notes)
        if s:
            system.append(s)
    messages: list[dict[str, Any]] = []
    for i, m in enumerate(raw_messages):
        where = f"messages.{i}"
        if not isinstance(m, dict):
            raise _bad(where, "a message (an object) is expected")
        role = m.get("role")
        content = m.get("content")
        if content is None:
            raise _bad(f"{where}.content", "content is required")
        if role == "user":
            messages.extend(_user(content, where, notes))
        elif role == "assistant":
            messages.append(_assistant(content, where, notes))
        elif role == "system":  # Claude Code sends its environment as a system turn, last
            s = _text(content, f"{where}.content", notes)
            if s:
                system.append(s)
        else:
            raise _bad(f"{where}.role", f"unknown role '{role}'; expected user or assistant")
    if not any(m["role"] in ("user", "tool") for m in messages):
        raise _bad("messages", "at least one user message is needed")
    chat: dict[str, Any] = {"model": model, "messages": ([{"role": "system", "content": "\n\n".join(system)}]
                                                         if system else []) + messages}
    if not for_count:
        chat["max_tokens"] = max_tokens
    tools = []
    raw_tools = body.get("tools") or []
    if not isinstance(raw_tools, list):
        raise _bad("tools", "a list of tools is expected")
    for j, t in enumerate(raw_tools):
        if not isinstance(t, dict):
            raise _bad(f"tools.{j}", "a tool (an object) is expected")
        if t.get("type") not in (None, "custom") or not t.get("name"):
            _note(notes, f"dropped_tool:{t.get('type') or '?'}")  # a server tool the lab cannot run
            continue
        if "cache_control" in t:
            _note(notes, "dropped:cache_control")
        schema = t.get("input_schema") or {"type": "object", "properties": {}}
        if not isinstance(schema, dict):
            raise _bad(f"tools.{j}.input_schema", "a JSON schema (an object) is expected")
        check_schema(schema, f"tools.{j}.input_schema")
        fn: dict[str, Any] = {"name": str(t["name"]), "parameters": schema}
        if t.get("description"):
            fn["description"] = str(t["description"])
        tools.append({"type": "function", "function": fn})
    if tools:
        chat["tools"] = tools
        choice = body.get("tool_choice")
        if isinstance(choice, dict):
            kind = choice.get("type")
            if kind == "auto":
                chat["tool_choice"] = "auto"
            elif kind == "any":
                chat["tool_choice"] = "required"
            elif kind == "none":
                chat["tool_choice"] = "none"
            elif kind == "tool" and choice.get("name"):
                chat["tool_choice"] = {"type": "function", "function": {"name": str(choice["name"])}}
            if choice.get("disable_parallel_tool_use") is True:
                chat["parallel_tool_calls"] = False
    stops = body.get("stop_sequences")
    if isinstance(stops, list) and stops:
        chat["stop"] = [str(s) for s in stops]
    for key in ("temperature", "top_p", "top_k"):
        if isinstance(body.get(key), int | float) and not isinstance(body.get(key), bool):
            chat[key] = body[key]
    meta = body.get("metadata")
    if isinstance(meta, dict) and isinstance(meta.get("user_id"), str):
        chat["user"] = meta["user_id"]
    for key in DROPPED_FIELDS:
        if body.get(key) is not None:
            notes.append(f"dropped:{key}")
    if body.get("stream") not in (None, True, False):
        raise _bad("stream", "true or false is expected")
    if body.get("stream") is True:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    return Translation(chat, notes)


def _usage(u: Any) -> dict[str, int]:
    u = u if isinstance(u, dict) else {}
    return {"input_tokens": int(u.get("prompt_tokens") or 0), "output_tokens": int(u.get("completion_tokens") or 0)}


def _stop(choice: dict[str, Any], request: dict[str, Any]) -> tuple[str, str | None]:
    """Anthropic's stop reason (and the stop sequence that matched, which vLLM reports as ``stop_reason``)."""
    finish = choice.get("finish_reason")
    matched = choice.get("stop_reason")
    stops = request.get("stop_sequences") or []
    if finish == "stop" and isinstance(matched, str) and matched in stops:
        return "stop_sequence", matched
    return STOP_REASONS.get(str(finish), "end_turn"), None


def _input(arguments: Any) -> Any:
    try:
        value = orjson.loads(arguments or "{}")
    except orjson.JSONDecodeError:
        return {"_raw_arguments": str(arguments)}
    return value if isinstance(value, dict) else {"value": value}


def to_message(chat: Any, request: dict[str, Any], rid: str) -> dict[str, Any]:
    """A Chat Completions answer → a Message."""
    choice = (chat.get("choices") or [{}])[0] if isinstance(chat, dict) else {}
    choice = choice if isinstance(choice, dict) else {}
    msg = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    if isinstance(msg.get("content"), str) and msg["content"]:
        content.append({"type": "text", "text": msg["content"]})
    for n, tc in enumerate(msg.get("tool_calls") or ()):
        fn = tc.get("function") or {}
        content.append({"type": "tool_use", "id": str(tc.get("id") or f"toolu_{rid}_{n}"),
                        "name": str(fn.get("name") or ""), "input": _input(fn.get("arguments"))})
    stop_reason, stop_sequence = _stop(choice, request)
    if any(b["type"] == "tool_use" for b in content):
        stop_reason = "tool_use"
    return {"id": f"msg_{rid}", "type": "message", "role": "assistant", "model": request.get("model"),
            "content": content, "stop_reason": stop_reason, "stop_sequence": stop_sequence,
            "usage": _usage(chat.get("usage") if isinstance(chat, dict) else None)}


class StreamTranslator(ChatStreamTranslator):
    """Chat Completions SSE → the Messages event stream, event by event."""

    def __init__(self, request: dict[str, Any], rid: str, input_tokens: int) -> None:
        super().__init__()
        self.request = request
        self.rid = rid
        self.input_tokens = input_tokens
        self.started = False
        self.index = -1  # the open content block, if any
        self.open: str | None = None  # its kind: "text" or "tool_use"
        self.calls: dict[int, int] = {}  # chat tool-call index → content block index
        self.finish: dict[str, Any] | None = None
        self.usage: dict[str, int] | None = None
        self.output_chars = 0

    @staticmethod
    def _ev(kind: str, **data: Any) -> bytes:
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **data}) + b"\n\n"

    def _start(self) -> list[bytes]:
        self.started = True
        message: dict[str, Any] = {
            "id": f"msg_{self.rid}", "type": "message", "role": "assistant", "model": self.request.get("model"),
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": self.input_tokens, "output_tokens": 0}}
        return [self._ev("message_start", message=message), self._ev("ping")]

    def _close(self) -> list[bytes]:
        if self.open is None:
            return []
        self.open = None
        return [self._ev("content_block_stop", index=self.index)]

    def _open(self, kind: str, block: dict[str, Any]) -> list[bytes]:
        out = self._close()
        self.index += 1
        self.open = kind
        out.append(self._ev("content_block_start", index=self.index, content_block=block))
        return out

    def feed(self, chunk: dict[str, Any]) -> list[bytes]:
        out: list[bytes] = [] if self.started else self._start()
        if isinstance(chunk.get("usage"), dict):
            self.usage = _usage(chunk["usage"])
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if isinstance(text, str) and text:
                if self.open != "text":
                    out += self._open("text", {"type": "text", "text": ""})
                self.output_chars += len(text)
                out.append(self._ev("content_block_delta", index=self.index,
                                    delta={"type": "text_delta", "text": text}))
            for tc in delta.get("tool_calls") or ():
                idx = int(tc.get("index") or 0)
                fn = tc.get("function") or {}
                if idx not in self.calls:
                    call_id = str(tc.get("id") or f"toolu_{self.rid}_{idx}")
                    out += self._open("tool_use", {"type": "tool_use", "id": call_id,
                                                   "name": str(fn.get("name") or ""), "input": {}})
                    self.calls[idx] = self.index
                args = fn.get("arguments")
                if isinstance(args, str) and args:
                    self.output_chars += len(args)
                    out.append(self._ev("content_block_delta", index=self.calls[idx],
                                        delta={"type": "input_json_delta", "partial_json": args}))
            if choice.get("finish_reason"):
                self.finish = choice
        return out

    def done(self) -> list[bytes]:
        """The stream ended well: close the open block, say why it stopped, and stop."""
        out: list[bytes] = [] if self.started else self._start()
        out += self._close()
        stop_reason, stop_sequence = _stop(self.finish or {"finish_reason": "stop"}, self.request)
        if self.calls:
            stop_reason = "tool_use"
        usage = self.usage or {"input_tokens": self.input_tokens, "output_tokens": max(1, self.output_chars // 4)}
        # message_start could only carry the router's estimate; the engine's real count goes in the final
        # usage (cumulative, as Anthropic sends it), where Claude Code's context meter reads it
        final = {"output_tokens": usage["output_tokens"]}
        if self.usage is not None and self.usage["input_tokens"]:
            final["input_tokens"] = self.usage["input_tokens"]
        out.append(self._ev("message_delta", delta={"stop_reason": stop_reason, "stop_sequence": stop_sequence},
                            usage=final))
        out.append(self._ev("message_stop"))
        self.ended = True
        return out

    def failed(self, error: dict[str, Any]) -> list[bytes]:
        out: list[bytes] = [] if self.started else self._start()
        out.append(self._ev("error", error={"type": "api_error", "message": str(error.get("message") or error)}))
        self.ended = True
        return out

