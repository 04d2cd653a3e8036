"""The Responses API (``POST /v1/responses``) on top of Chat Completions, both ways.

A route with ``responses: native`` gets the request as it came (its engine serves /v1/responses);
every other route gets it translated to Chat Completions, and its answer is translated back — a
JSON response, or the Responses event stream (``response.created`` … ``response.completed``).

Not kept: ``store: true`` and ``previous_response_id`` are refused with a 400 naming the field (the
router keeps no conversations: send the whole conversation in ``input``, as Codex does with
``store: false``). Tools the lab cannot run (``web_search``, ``file_search``, ``namespace``, …) are
dropped and noted in the decision log; ``reasoning`` and ``include`` go to native routes only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from services.router.errors import RequestError
from services.router.preflight import check_schema
from services.router.sse import ChatStreamTranslator

PASSED = ("temperature", "top_p", "parallel_tool_calls", "metadata", "user", "seed", "stop")


@dataclass
class Translation:
    chat: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text") or p.get("refusal") or "") for p in content if isinstance(p, dict))
    return ""


def _parts(content: Any, where: str) -> str | list[dict[str, Any]]:
    """Responses content parts → Chat content (a string when it is only text)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise RequestError(f"Invalid request: {where}.content: expected a string or a list of parts",
                           param=f"{where}.content")
    out: list[dict[str, Any]] = []
    for j, p in enumerate(content):
        kind = p.get("type") if isinstance(p, dict) else None
        if kind in ("input_text", "output_text", "text", "refusal"):
            out.append({"type": "text", "text": str(p.get("text") or p.get("refusal") or "")})
        elif kind == "input_image":
            url = p.get("image_url")
            if not isinstance(url, str):
                raise RequestError(f"Invalid request: {where}.content.{j}.image_url: an image URL or data URL is "
                                   "needed (file_id is not supported)", param=f"{where}.content.{j}.image_url")
            out.append({"type": "image_url", "image_url": {"url": url, "detail": p.get("detail", "auto")}})
        else:
            raise RequestError(f"Invalid request: {where}.content.{j}.type: '{kind}' is not supported "
                               "(input_text, input_image, output_text)", param=f"{where}.content.{j}.type")
    if all(p["type"] == "text" for p in out):
        return "".join(p["text"] for p in out)
    return out


def to_chat(body: Any) -> Translation:
    """A Responses request → a Chat Completions request (and what was dropped on the way)."""
    if not isinstance(body, dict):
        raise RequestError("Invalid request: the body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise RequestError("Invalid request: model: a model name is required", param="model")
    if body.get("previous_response_id"):
        raise RequestError("previous_response_id is not supported: homelab-router keeps no responses; send the "
                           "whole conversation in `input` (with store: false)", param="previous_response_id")
    if body.get("store") is True:
        raise RequestError("store: true is not supported: homelab-router keeps no responses; send store: false "
                           "and the whole conversation in `input`", param="store")
    notes: list[str] = []
    messages: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        messages.append({"role": "system", "content": instructions})
    items = body.get("input")
    if isinstance(items, str):
        items = [{"role": "user", "content": items}]
    if not isinstance(items, list) or not items:
        raise RequestError("Invalid request: input: a string or a non-empty list of items is required", param="input")
    for i, item in enumerate(items):
        where = f"input.{i}"
        if not isinstance(item, dict):
            raise RequestError(f"Invalid request: {where}: an object is expected", param=where)
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise RequestError(f"Invalid request: {where}.role: unknown role '{role}'", param=f"{where}.role")
            content = _parts(item.get("content"), where)
            if role == "developer":
                role = "system"  # engines' chat templates know system, not always developer
            if role == "assistant":
                content = content if isinstance(content, str) else _text_of(content)
            messages.append({"role": role, "content": content})
        elif kind == "function_call":
            call = {"id": str(item.get("call_id") or item.get("id") or f"call_{i}"), "type": "function",
                    "function": {"name": str(item.get("name") or ""), "arguments": str(item.get("arguments") or "")}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                # text then calls, or parallel calls: one assistant turn (templates that require the roles
                # to alternate refuse two assistant turns in a row)
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            messages.append({"role": "tool", "tool_call_id": str(item.get("call_id") or ""),
                             "content": output if isinstance(output, str) else _text_of(output)})
        elif kind == "reasoning":
            notes.append("dropped_input:reasoning")
        else:
            notes.append(f"dropped_input:{kind}")
    if not any(m["role"] in ("user", "tool") for m in messages):
        raise RequestError("Invalid request: input: at least one user message is needed", param="input")
    chat: dict[str, Any] = {"model": model, "messages": messages}
    raw_tools = body.get("tools") or []
    if not isinstance(raw_tools, list):
        raise RequestError("Invalid request: tools: a list of tools is expected", param="tools")
    if body.get("stream") not in (None, True, False):
        raise RequestError("Invalid request: stream: true or false is expected", param="stream")
    tools = []
    for j, t in enumerate(raw_tools):
        if isinstance(t, dict) and t.get("type") == "function" and t.get("name"):
            params = t.get("parameters") or {"type": "object", "properties": {}}
            if not isinstance(params, dict):
                raise RequestError(f"Invalid request: tools.{j}.parameters: a JSON schema (an object) is expected",
                                   param=f"tools.{j}.parameters")
            check_schema(params, f"tools.{j}.parameters")
            fn = {"name": t["name"], "parameters": params}
            if t.get("description"):
                fn["description"] = t["description"]
            if t.get("strict") is not None:
                fn["strict"] = t["strict"]
            tools.append({"type": "function", "function": fn})
        else:
            notes.append(f"dropped_tool:{t.get('type') if isinstance(t, dict) else '?'}")
    if tools:
        chat["tools"] = tools
        choice = body.get("tool_choice")
        if isinstance(choice, dict) and choice.get("type") == "function" and choice.get("name"):
            chat["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
        elif choice in ("auto", "none", "required"):
            chat["tool_choice"] = choice
    for key in ("reasoning", "include"):
        if body.get(key):
            notes.append(f"dropped:{key}")
    for key in PASSED:
        if body.get(key) is not None:
            chat[key] = body[key]
    if isinstance(body.get("max_output_tokens"), int):
        chat["max_tokens"] = body["max_output_tokens"]
    fmt = (body.get("text") or {}).get("format") if isinstance(body.get("text"), dict) else None
    if isinstance(fmt, dict):
        if fmt.get("type") == "json_schema":
            chat["response_format"] = {"type": "json_schema", "json_schema": {
                "name": fmt.get("name", "answer"), "schema": fmt.get("schema") or {}, "strict": fmt.get("strict")}}
        elif fmt.get("type") == "json_object":
            chat["response_format"] = {"type": "json_object"}
    if body.get("stream") is True:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    return Translation(chat, notes)


def _usage(u: Any) -> dict[str, Any] | None:
    if not isinstance(u, dict):
        return None
    inp, out = int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0)
    return {"input_tokens": inp, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": out,
            "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": int(u.get("total_tokens") or inp + out)}


def _shell(request: dict[str, Any], rid: str, model: str, created: int, status: str) -> dict[str, Any]:
    """The Response object around the output, echoing the request's settings."""
    tools = [t for t in request.get("tools") or () if isinstance(t, dict) and t.get("type") == "function"]
    return {"id": f"resp_{rid}", "object": "response", "created_at": created, "status": status, "model": model,
            "output": [], "error": None, "incomplete_details": None, "instructions": request.get("instructions"),
            "max_output_tokens": request.get("max_output_tokens"), "metadata": request.get("metadata") or {},
            "parallel_tool_calls": request.get("parallel_tool_calls", True), "previous_response_id": None,
            "reasoning": None, "store": False, "temperature": request.get("temperature"),
            "text": request.get("text") or {"format": {"type": "text"}},
            "tool_choice": request.get("tool_choice", "auto"), "tools": tools, "top_p": request.get("top_p"),
            "truncation": "disabled", "usage": None, "user": request.get("user")}


def _message_item(rid: str, text: str, status: str = "completed") -> dict[str, Any]:
    return {"type": "message", "id": f"msg_{rid}", "status": status, "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}]}


def _call_item(rid: str, n: int, call_id: str, name: str, arguments: str, status: str = "completed") -> dict[str, Any]:
    return {"type": "function_call", "id": f"fc_{rid}_{n}", "call_id": call_id, "name": name,
            "arguments": arguments, "status": status}


def to_response(chat: Any, request: dict[str, Any], rid: str) -> dict[str, Any]:
    """A Chat Completions answer → a Response object."""
    choice = (chat.get("choices") or [{}])[0] if isinstance(chat, dict) else {}
    msg = choice.get("message") or {}
    finish = choice.get("finish_reason")
    incomplete = finish == "length"
    out = _shell(request, rid, str(chat.get("model") or request.get("model")), int(chat.get("created") or time.time()),
                 "incomplete" if incomplete else "completed")
    if incomplete:
        out["incomplete_details"] = {"reason": "max_output_tokens"}
    text = msg.get("content")
    if isinstance(text, str) and text:
        out["output"].append(_message_item(rid, text))
    for n, tc in enumerate(msg.get("tool_calls") or ()):
        fn = tc.get("function") or {}
        out["output"].append(_call_item(rid, n, str(tc.get("id") or f"call_{n}"), str(fn.get("name") or ""),
                                        str(fn.get("arguments") or "")))
    out["usage"] = _usage(chat.get("usage"))
    return out


class StreamTranslator(ChatStreamTranslator):
    """Chat Completions SSE → the Responses event stream, event by event: output items in order, each
    closed (its ``done`` events) before the next one opens."""

    def __init__(self, request: dict[str, Any], rid: str) -> None:
        super().__init__()
        self.request = request
        self.rid = rid
        self.seq = 0
        self.created = int(time.time())
        self.model = str(request.get("model"))
        self.items: list[dict[str, Any]] = []  # every output item so far, in order
        self.open: dict[str, Any] | None = None  # the item being written
        self.calls: dict[int, dict[str, Any]] = {}  # chat tool-call index → its item
        self.usage: dict[str, Any] | None = None
        self.finish: str | None = None
        self.started = False

    def _ev(self, kind: str, **data: Any) -> bytes:
        self.seq += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(
            {"type": kind, "sequence_number": self.seq, **data}) + b"\n\n"

    def _start(self) -> list[bytes]:
        self.started = True
        shell = _shell(self.request, self.rid, self.model, self.created, "in_progress")
        return [self._ev("response.created", response=shell), self._ev("response.in_progress", response=shell)]

    def _close(self) -> list[bytes]:
        """The open item's done events (it is then final)."""
        item, self.open = self.open, None
        if item is None:
            return []
        n = item["output_index"]
        if item["kind"] == "text":
            text = "".join(item["parts"])
            part = {"type": "output_text", "text": text, "annotations": []}
            item["final"] = {**_message_item(self.rid, text), "id": item["id"]}
            return [self._ev("response.output_text.done", item_id=item["id"], output_index=n, content_index=0,
                             text=text),
                    self._ev("response.content_part.done", item_id=item["id"], output_index=n, content_index=0,
                             part=part),
                    self._ev("response.output_item.done", output_index=n, item=item["final"])]
        args = "".join(item["parts"])
        item["final"] = _call_item(self.rid, item["n"], item["call_id"], item["name"], args)
        return [self._ev("response.function_call_arguments.done", item_id=item["final"]["id"], output_index=n,
                         arguments=args),
                self._ev("response.output_item.done", output_index=n, item=item["final"])]

    def _text(self, content: str) -> list[bytes]:
        out: list[bytes] = []
        if self.open is None or self.open["kind"] != "text":
            out += self._close()
            texts = sum(1 for it in self.items if it["kind"] == "text")
            item: dict[str, Any] = {"kind": "text", "output_index": len(self.items), "parts": [],
                    "id": f"msg_{self.rid}" if not texts else f"msg_{self.rid}_{texts}"}
            self.items.append(item)
            self.open = item
            out.append(self._ev("response.output_item.added", output_index=item["output_index"],
                                item={**_message_item(self.rid, "", "in_progress"), "id": item["id"], "content": []}))
            out.append(self._ev("response.content_part.added", item_id=item["id"], output_index=item["output_index"],
                                content_index=0, part={"type": "output_text", "text": "", "annotations": []}))
        assert self.open is not None
        self.open["parts"].append(content)
        out.append(self._ev("response.output_text.delta", item_id=self.open["id"],
                            output_index=self.open["output_index"], content_index=0, delta=content))
        return out

    def _call(self, tc: dict[str, Any]) -> list[bytes]:
        out: list[bytes] = []
        idx = int(tc.get("index") or 0)
        fn = tc.get("function") or {}
        call = self.calls.get(idx)
        if call is None:
            out += self._close()
            call = self.calls[idx] = {"kind": "call", "output_index": len(self.items), "n": idx, "parts": [],
                                      "call_id": str(tc.get("id") or f"call_{idx}"), "name": str(fn.get("name") or "")}
            self.items.append(call)
            self.open = call
            item = _call_item(self.rid, idx, call["call_id"], call["name"], "", "in_progress")
            out.append(self._ev("response.output_item.added", output_index=call["output_index"], item=item))
        elif fn.get("name") and not call["name"]:
            call["name"] = str(fn["name"])
        if fn.get("arguments"):
            call["parts"].append(fn["arguments"])
            out.append(self._ev("response.function_call_arguments.delta", item_id=f"fc_{self.rid}_{idx}",
                                output_index=call["output_index"], delta=fn["arguments"]))
        return out

    def feed(self, chunk: dict[str, Any]) -> list[bytes]:
        out: list[bytes] = [] if self.started else self._start()
        if isinstance(chunk.get("model"), str):
            self.model = chunk["model"]
        if isinstance(chunk.get("usage"), dict):
            self.usage = _usage(chunk["usage"])
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            if delta.get("content"):
                out += self._text(delta["content"])
            for tc in delta.get("tool_calls") or ():
                out += self._call(tc)
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]
        return out

    def done(self) -> list[bytes]:
        """The stream ended well: close the last item and complete the response."""
        out: list[bytes] = [] if self.started else self._start()
        out += self._close()
        incomplete = self.finish == "length"
        final = _shell(self.request, self.rid, self.model, self.created, "incomplete" if incomplete else "completed")
        final["output"] = [item["final"] for item in self.items]
        final["usage"] = self.usage
        if incomplete:
            final["incomplete_details"] = {"reason": "max_output_tokens"}
        out.append(self._ev("response.incomplete" if incomplete else "response.completed", response=final))
        self.ended = True
        return out

    def failed(self, error: dict[str, Any]) -> list[bytes]:
        out: list[bytes] = [] if self.started else self._start()
        final = _shell(self.request, self.rid, self.model, self.created, "failed")
        final["error"] = {"code": str(error.get("code") or "server_error"), "message": str(error.get("message"))}
        out.append(self._ev("error", code=final["error"]["code"], message=final["error"]["message"], param=None))
        out.append(self._ev("response.failed", response=final))
        self.ended = True
        return out

