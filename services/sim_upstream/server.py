"""Simulated OpenAI-compatible model server with configurable latency, capacity and faults.

Runtime control for tests: ``POST /_sim/config`` (partial SimConfig), ``GET /_sim/stats``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
import uuid
from typing import Any, Literal

import orjson
from aiohttp import ClientConnectionResetError, web
from pydantic import BaseModel, ConfigDict

Fault = Literal[
    "none",
    "http_500",
    "http_502",
    "http_503",
    "http_429",
    "http_401",  # the route's key is wrong
    "http_403",  # the route's key may not use this model
    "model_missing",  # vLLM's 404 for a model it does not serve (the engine was restarted with another)
    "hang",  # accept, never send headers
    "slow_first_token",  # headers at once, first content after fault_delay
    "cut",  # close the connection after fault_after chunks
    "stall",  # stop sending after fault_after chunks, keep the connection open
    "malformed",  # a chunk that is not JSON after fault_after chunks
    "no_done",  # finish properly but never send [DONE]; keep the connection open
    "context_length",
    "content_policy",
    "cuda_error",
    "reset",  # accept the request, close the socket before headers
    "silent_reset",  # accept, say nothing for fault_delay seconds, then close the socket
    "engine_dead",  # vLLM's dead engine: 500 before an answer; mid-stream an error event then [DONE]
]
Engine = Literal["vllm", "llamacpp", "lmstudio", "ollama"]
ENGINES: tuple[Engine, ...] = ("vllm", "llamacpp", "lmstudio", "ollama")


class SimConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    model: str = "sim-model"
    # whose exact error bodies, status codes, stream endings and prefill behaviour to reproduce
    engine: Engine = "vllm"
    context_status: int = 400  # some LM Studio versions send their context error with HTTP 200
    fault_probes: bool = False  # an http_* fault answers GET /v1/models too (an upstream that 503s everything)
    ttft: float = 0.0  # seconds before the first token
    per_token: float = 0.0  # seconds between tokens
    words: int = 12  # answer length in words
    vision: bool = True
    slots: int | None = None  # concurrent requests before answering 503
    continuation: bool = True  # finish a partial answer from an assistant prefill
    fault: Fault = "none"
    fault_after: int = 2  # chunks before a mid-stream fault
    fault_delay: float = 30.0  # how long hang/stall/slow_first_token wait
    fault_count: int | None = None  # faulty requests before healing (None: forever)
    retry_after: float = 1.0  # Retry-After seconds for http_429
    json_answer: Any = None  # fixed JSON answer (or a raw string) for response_format requests
    reply: str | None = None  # answer with this text (an aider edit block, say) instead of the canonical one
    # with tools offered and a user turn last: call this tool ({"name": ..., "arguments": {...}}); after the
    # tool's result comes back, answer "The tool returned: <result>"
    tool_call: dict[str, Any] | None = None
    # how the engine gives that call: "native" tool_calls (vLLM with a tool parser), or written as text
    # in a model's own markup (an engine without a parser): hermes, glm45, llama3_json, mistral
    tool_format: Literal["native", "hermes", "glm45", "llama3_json", "mistral"] = "native"
    tool_calls_n: int = 1  # calls in one answer (the same call, n times)
    tool_preamble: str = ""  # text the model writes before its call
    tool_markup: str | None = None  # exactly this text instead of the call (broken markup, say)
    # False: vLLM started without --enable-auto-tool-choice: tools with tool_choice auto (or none given) → 400
    auto_tool_choice: bool = True
    tool_call_any: bool = False  # with no tool_call set: call the first tool offered, with no arguments
    responses: bool = False  # serve /v1/responses natively (recent vLLM); else it is a 404 (most engines)
    messages: bool = False  # serve Anthropic's /v1/messages natively (llama.cpp's server, vLLM); else a 404
    max_model_len: int = 32768  # the context window /v1/models reports (as vLLM does)
    # asked to continue a cut answer: "restart" starts over, "tail" echoes the last words first
    # (what real models do now and then); "none" goes on exactly where it stopped
    instruct_echo: Literal["none", "restart", "tail"] = "none"
    # what a camera_triage request (metadata.homelab_task) gets when json_answer is not set
    triage_answer: dict[str, Any] = {"verdict": "positive", "confidence": 0.9, "objects": ["person"],
                                     "summary": "A person is at the door"}
    embedding_dims: int = 8


def tool_markup(fmt: str, calls: list[dict[str, Any]]) -> str:
    """Calls written the way each model family writes them when no engine parser turns them into tool_calls."""
    if fmt == "hermes":
        return "".join("<tool_call>\n" + orjson.dumps({"name": c["name"], "arguments": c["arguments"]}).decode()
                       + "\n</tool_call>" for c in calls)
    if fmt == "glm45":
        out = ""
        for c in calls:
            args = "".join(f"<arg_key>{k}</arg_key>\n<arg_value>{v if isinstance(v, str) else orjson.dumps(v).decode()}"
                           "</arg_value>\n" for k, v in c["arguments"].items())
            out += f"<tool_call>{c['name']}\n{args}</tool_call>"
        return out
    if fmt == "llama3_json":
        return "<|python_tag|>" + "; ".join(
            orjson.dumps({"name": c["name"], "parameters": c["arguments"]}).decode() for c in calls)
    if fmt == "mistral":
        return "[TOOL_CALLS]" + orjson.dumps([{"name": c["name"], "arguments": c["arguments"]} for c in calls]).decode()
    raise ValueError(fmt)


def answer_text(words: int = 12) -> str:
    """The deterministic answer every simulated model gives (the same on every route, so one
    route can continue what another started)."""
    body = " ".join(f"word{i}" for i in range(words))
    return f"The simulated answer: {body}."


def _tokens(text: str) -> list[str]:
    # Split keeping the separators so joined chunks rebuild the exact text.
    out = []
    for i, w in enumerate(text.split(" ")):
        out.append(w if i == 0 else " " + w)
    return [piece for piece in out if piece]


def _example_for_schema(schema: dict[str, Any]) -> Any:
    t = schema.get("type")
    if "enum" in schema:
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    if t == "object" or "properties" in schema:
        props = schema.get("properties", {})
        return {k: _example_for_schema(v) for k, v in props.items()}
    if t == "array":
        return [_example_for_schema(schema.get("items", {"type": "string"}))]
    if t == "integer":
        return int(schema.get("minimum", 1))
    if t == "number":
        return float(schema.get("maximum", 1.0))
    if t == "boolean":
        return True
    return "sim"


def _has_image(messages: list[Any]) -> bool:
    for m in messages:
        c = m.get("content") if isinstance(m, dict) else None
        if isinstance(c, list) and any(isinstance(p, dict) and p.get("type") == "image_url" for p in c):
            return True
    return False


CONTINUE_MARK = "Continue it exactly where it stopped"


def _words(content: Any) -> int:
    if isinstance(content, list):
        content = " ".join(str(p.get("text") or "") for p in content if isinstance(p, dict))
    return len(str(content or "").split())


def prompt_tokens(messages: list[Any], open_last: bool) -> int:
    """Tokens of the rendered prompt, chat-template style: per turn a 3-token header, its words and an
    end-of-turn token, then a 3-token assistant header for the new turn. A continued prefill (open_last)
    leaves the last turn open and adds no new header."""
    n = sum(3 + _words(m.get("content")) + 1 for m in messages if isinstance(m, dict))
    return n - 1 if open_last else n + 3


def context_error(engine: Engine, status: int = 400) -> web.Response:
    """Each engine's own words and shape for a prompt over its context window."""
    if engine == "lmstudio":
        body: Any = {"error": "The number of tokens to keep from the initial prompt is greater than the context "
                              "length (n_keep: 13055>= n_ctx: 4096). Try to load the model with a larger context "
                              "length, or provide a shorter input."}
    elif engine == "ollama":
        body = {"error": {"message": "the prompt is longer than the context length currently available to the "
                                     "model; shorten the prompt, or load the model with a larger context",
                          "type": "invalid_request_error", "param": None, "code": None}}
    elif engine == "llamacpp":
        body = {"error": {"message": "Requested tokens (40000) exceed context window of 8192",
                          "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}}
    else:
        body = {"error": {"message": "This model's maximum context length is 32768 tokens. However, your request "
                                     "has 40000 input tokens. Please reduce the length of the input messages.",
                          "type": "BadRequestError", "param": "input_tokens", "code": 400}}
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


ENGINE_DEAD = {"error": {"message": "EngineCore encountered an issue. See stack trace (above) for the root cause.",
                         "type": "InternalServerError", "param": None, "code": 500}}


def _err(status: int, message: str, type_: str, code: str | None = None, **headers: str) -> web.Response:
    body = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json",
                        headers=headers)


class SimUpstream:
    """One simulated model server on loopback; start/stop (refuse connections) at will."""

    def __init__(self, config: SimConfig | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.config = config or SimConfig()
        self.host = host
        self.port = port
        self.active = 0
        self.requests = 0
        self.faults_served = 0
        self.arrivals: list[float] = []  # when each chat request came in (monotonic)
        self.last_body: dict[str, Any] | None = None
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def _make_app(self) -> web.Application:
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.add_routes([
            web.get("/v1/models", self._models),
            web.post("/v1/chat/completions", self._chat),
            web.post("/v1/responses", self._responses),
            web.post("/v1/messages", self._messages),
            web.post("/v1/embeddings", self._embeddings),
            web.get("/_sim/stats", self._stats),
            web.post("/_sim/config", self._set_config),
        ])
        return app

    async def start(self) -> None:
        """Listen (again) on the port; the first start picks a free port if none was given."""
        self._runner = web.AppRunner(self._make_app(), access_log=None, handle_signals=False,
                                     shutdown_timeout=0.1)
        await self._runner.setup()
        # A dead server does not wait for its handlers: close at once.
        self._site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await self._site.start()
        if self.port == 0:
            self.port = int(self._runner.addresses[-1][1])

    async def stop_listening(self) -> None:
        """Act like a dead server: the port refuses connections and open ones are closed."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
            self._site = None

    async def close(self) -> None:
        await self.stop_listening()

    def configure(self, **changes: Any) -> None:
        self.config = self.config.model_copy(update=changes)
        SimConfig.model_validate(self.config.model_dump())
        self.faults_served = 0

    def _fault(self) -> Fault:
        c = self.config
        if c.fault == "none":
            return "none"
        if c.fault_count is not None and self.faults_served >= c.fault_count:
            return "none"
        self.faults_served += 1
        return c.fault

    async def _models(self, request: web.Request) -> web.Response:
        c = self.config
        if c.fault_probes and c.fault.startswith("http_"):
            return _err(int(c.fault[-3:]), "Service unavailable", "server_error")
        data = {"object": "list", "data": [
            {"id": self.config.model, "object": "model", "created": 0, "owned_by": "homelab-sim",
             "max_model_len": self.config.max_model_len}
        ]}
        return web.Response(body=orjson.dumps(data), content_type="application/json")

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response({"requests": self.requests, "active": self.active,
                                  "config": self.config.model_dump()})

    async def _set_config(self, request: web.Request) -> web.Response:
        try:
            self.configure(**(await request.json()))
        except Exception as exc:  # a bad control message is the caller's problem, not a crash
            return _err(400, str(exc), "invalid_request_error")
        return web.json_response(self.config.model_dump())

    async def _embeddings(self, request: web.Request) -> web.Response:
        self.requests += 1
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _err(400, "invalid JSON", "invalid_request_error")
        inputs = body.get("input")
        items = [inputs] if isinstance(inputs, str) else list(inputs or [])
        data = []
        for i, item in enumerate(items):
            digest = hashlib.sha256(str(item).encode()).digest()
            vec = [b / 255.0 for b in digest[: self.config.embedding_dims]]
            data.append({"object": "embedding", "index": i, "embedding": vec})
        usage = {"prompt_tokens": len(items), "total_tokens": len(items)}
        out = {"object": "list", "data": data, "model": self.config.model, "usage": usage}
        return web.Response(body=orjson.dumps(out), content_type="application/json")

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        self.arrivals.append(time.monotonic())
        c = self.config
        if c.slots is not None and self.active >= c.slots:
            return _err(503, "Server busy: all slots are in use", "server_error", "busy")
        self.active += 1
        try:
            return await self._chat_inner(request, c)
        finally:
            self.active -= 1

    async def _chat_inner(self, request: web.Request, c: SimConfig) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return _err(400, "invalid JSON", "invalid_request_error")
        self.last_body = body
        messages = body.get("messages") or []
        fault = self._fault()
        if fault in ("reset", "silent_reset"):
            if fault == "silent_reset":
                await asyncio.sleep(c.fault_delay)
            assert request.transport is not None
            request.transport.abort()
            return web.Response(status=500)
        if fault == "engine_dead" and not body.get("stream"):
            return web.Response(status=500, body=orjson.dumps(ENGINE_DEAD), content_type="application/json")
        if fault == "hang":
            await asyncio.sleep(c.fault_delay)
        if fault in ("http_500", "http_502"):
            return _err(int(fault[-3:]), "Internal server error", "server_error")
        if fault == "cuda_error":
            return _err(500, "CUDA error: an illegal memory access was encountered", "server_error")
        if fault == "http_503":
            return _err(503, "Service unavailable", "server_error")
        if fault == "http_401":
            return _err(401, "Invalid API key", "authentication_error", "invalid_api_key")
        if fault == "http_403":
            return _err(403, "This key may not use this model", "permission_error")
        if fault == "model_missing":
            return _err(404, f"The model `{body.get('model')}` does not exist.", "NotFoundError")
        if fault == "http_429":
            return _err(429, "Rate limited", "rate_limit_error", "rate_limited",
                        **{"Retry-After": str(c.retry_after)})
        if fault == "context_length":
            if c.engine == "llamacpp" and body.get("stream"):
                # llama.cpp's server answers a stream over its window with 200 and an empty body.
                resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
                await resp.prepare(request)
                await resp.write_eof()
                return resp
            return context_error(c.engine, c.context_status if c.engine == "lmstudio" else 400)
        if fault == "content_policy":
            return _err(400, "The prompt was rejected by the content policy.",
                        "invalid_request_error", "content_policy_violation")
        if _has_image(messages) and not c.vision:
            # LM Studio answers an image sent to a text-only model like this.
            return _err(400, f"Model {c.model} does not support images", "invalid_request_error")

        prefix = ""
        instructed = False
        open_last = False
        last = messages[-1] if messages and isinstance(messages[-1], dict) else {}
        if last.get("role") == "assistant" and body.get("continue_final_message"):
            if not c.continuation:
                return _err(400, "continue_final_message is not supported", "invalid_request_error")
            if c.engine == "vllm":
                prefix = str(last.get("content") or "")
                open_last = True
            # llama.cpp, LM Studio, Ollama: the chat template closes the turn and a new answer starts
        elif last.get("role") == "user" and CONTINUE_MARK in str(last.get("content")) and len(messages) >= 2 \
                and isinstance(messages[-2], dict) and messages[-2].get("role") == "assistant":
            prefix = str(messages[-2].get("content") or "")  # asked, it goes on from its cut answer
            instructed = True

        rf = body.get("response_format")
        if isinstance(rf, dict) and rf.get("type") in ("json_schema", "json_object"):
            if c.json_answer is not None:
                text = c.json_answer if isinstance(c.json_answer, str) else orjson.dumps(c.json_answer).decode()
            elif (body.get("metadata") or {}).get("homelab_task") == "camera_triage":
                text = orjson.dumps(c.triage_answer).decode()
            else:
                schema = (rf.get("json_schema") or {}).get("schema") or {"type": "object"}
                text = orjson.dumps(_example_for_schema(schema)).decode()
        elif messages and isinstance(messages[-1], dict) and messages[-1].get("role") == "tool":
            text = f"The tool returned: {messages[-1].get('content')}"
        else:
            text = c.reply if c.reply is not None else answer_text(c.words)
        if body.get("tools") and not c.auto_tool_choice and body.get("tool_choice") in (None, "auto"):
            return _err(400, '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set',
                        "BadRequestError")
        markup_anyway = c.tool_format != "native" or body.get("tool_choice") != "none"  # a model writes it regardless
        if c.tool_call is None and c.tool_call_any and body.get("tools") and last.get("role") == "user" \
                and markup_anyway:
            first = (body["tools"][0].get("function") or {}) if isinstance(body["tools"][0], dict) else {}
            c = c.model_copy(update={"tool_call": {"name": str(first.get("name") or "tool"), "arguments": {}}})
        if c.tool_call and body.get("tools") and last.get("role") == "user":
            if c.tool_format == "native":
                return await self._tool_call(request, body, c, messages)
            text = c.tool_preamble + (c.tool_markup if c.tool_markup is not None else
                                      tool_markup(c.tool_format, [c.tool_call] * c.tool_calls_n))
        if prefix:
            # Continue the canonical answer from where the partial one stopped.
            full = text
            text = text[len(prefix):] if text.startswith(prefix) else text
            if instructed and c.instruct_echo == "restart":
                text = full
            elif instructed and c.instruct_echo == "tail":
                text = " ".join(prefix.split(" ")[-3:]) + text
        n_prompt = prompt_tokens(messages, open_last)
        pieces = _tokens(text) if text else []
        if isinstance(body.get("max_tokens"), int):
            pieces = pieces[:max(0, body["max_tokens"])]
            text = "".join(pieces)
        usage = {"prompt_tokens": n_prompt, "completion_tokens": len(pieces),
                 "total_tokens": n_prompt + len(pieces)}
        cid = "chatcmpl-" + uuid.uuid4().hex[:24]
        created = int(time.time())

        if not body.get("stream"):
            if fault == "slow_first_token":
                await asyncio.sleep(c.fault_delay)
            await asyncio.sleep(c.ttft + c.per_token * len(pieces))
            out = {"id": cid, "object": "chat.completion", "created": created, "model": c.model,
                   "choices": [{"index": 0, "finish_reason": "stop",
                                "message": {"role": "assistant", "content": text}}],
                   "usage": usage}
            return web.Response(body=orjson.dumps(out), content_type="application/json")

        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        # The client going away mid-stream is normal: nothing left to answer.
        with contextlib.suppress(ConnectionResetError, ClientConnectionResetError):
            await resp.prepare(request)
            await self._stream(request, resp, c, body, fault, pieces, usage, cid, created)
        return resp

    async def _tool_call(self, request: web.Request, body: dict[str, Any], c: SimConfig,
                         messages: list[Any]) -> web.StreamResponse:
        assert c.tool_call is not None
        name, args = str(c.tool_call["name"]), orjson.dumps(c.tool_call["arguments"]).decode()
        call: dict[str, Any] = {"id": "call_" + uuid.uuid4().hex[:12], "type": "function",
                                "function": {"name": name, "arguments": args}}
        n_prompt = prompt_tokens(messages, False)
        usage = {"prompt_tokens": n_prompt, "completion_tokens": 9, "total_tokens": n_prompt + 9}
        cid, created = "chatcmpl-" + uuid.uuid4().hex[:24], int(time.time())
        await asyncio.sleep(c.ttft)
        if not body.get("stream"):
            out = {"id": cid, "object": "chat.completion", "created": created, "model": c.model, "usage": usage,
                   "choices": [{"index": 0, "finish_reason": "tool_calls",
                                "message": {"role": "assistant", "content": None, "tool_calls": [call]}}]}
            return web.Response(body=orjson.dumps(out), content_type="application/json")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        deltas: list[dict[str, Any]] = [
            {"role": "assistant", "content": None, "tool_calls": [
                {"index": 0, "id": call["id"], "type": "function", "function": {"name": name, "arguments": ""}}]}]
        deltas += [{"tool_calls": [{"index": 0, "function": {"arguments": args[i:i + 8]}}]}
                   for i in range(0, len(args), 8)]
        for i, delta in enumerate([*deltas, {}]):
            ev = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": c.model,
                  "choices": [{"index": 0, "delta": delta,
                               "finish_reason": "tool_calls" if i == len(deltas) else None}]}
            await resp.write(b"data: " + orjson.dumps(ev) + b"\n\n")
        if (body.get("stream_options") or {}).get("include_usage"):
            ev = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": c.model,
                  "choices": [], "usage": usage}
            await resp.write(b"data: " + orjson.dumps(ev) + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        """A native Anthropic /v1/messages, written from the API's documented shapes (not the router's
        translation): text, or a tool_use when tools are offered and the last user turn is not a result."""
        self.requests += 1
        c = self.config
        if not c.messages:
            return _err(404, "Not Found", "invalid_request_error")
        body = orjson.loads(await request.read())
        self.last_body = body
        messages = body.get("messages") or []
        last = messages[-1] if messages and isinstance(messages[-1], dict) else {}
        content_in = last.get("content")
        blocks: list[Any] = content_in if isinstance(content_in, list) else []
        result = next((b for b in blocks if isinstance(b, dict) and b.get("type") == "tool_result"), None)
        mid = "msg_" + uuid.uuid4().hex[:20]
        content: list[dict[str, Any]]
        if c.tool_call and body.get("tools") and result is None:
            content = [{"type": "tool_use", "id": "toolu_" + mid[4:16], "name": c.tool_call["name"],
                        "input": c.tool_call["arguments"]}]
            stop = "tool_use"
        else:
            if result is not None:
                raw = result.get("content")
                got = raw if isinstance(raw, str) else " ".join(
                    str(b.get("text")) for b in (raw if isinstance(raw, list) else []) if isinstance(b, dict))
                text = f"The tool returned: {got}"
            else:
                text = c.reply if c.reply is not None else answer_text(c.words)
            content = [{"type": "text", "text": text}]
            stop = "end_turn"
        usage = {"input_tokens": 20, "output_tokens": 12}
        final = {"id": mid, "type": "message", "role": "assistant", "model": c.model, "content": content,
                 "stop_reason": stop, "stop_sequence": None, "usage": usage}
        await asyncio.sleep(c.ttft)
        if not body.get("stream"):
            return web.Response(body=orjson.dumps(final), content_type="application/json")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)

        async def ev(kind: str, **data: Any) -> None:
            await resp.write(f"event: {kind}\n".encode() + b"data: " + orjson.dumps({"type": kind, **data}) + b"\n\n")

        await ev("message_start", message={**final, "content": [], "stop_reason": None,
                                           "usage": {"input_tokens": 20, "output_tokens": 0}})
        for i, block in enumerate(content):
            if block["type"] == "text":
                await ev("content_block_start", index=i, content_block={"type": "text", "text": ""})
                for piece in _tokens(block["text"]):
                    await ev("content_block_delta", index=i, delta={"type": "text_delta", "text": piece})
            else:
                await ev("content_block_start", index=i, content_block={**block, "input": {}})
                await ev("content_block_delta", index=i, delta={"type": "input_json_delta",
                                                                "partial_json": orjson.dumps(block["input"]).decode()})
            await ev("content_block_stop", index=i)
        await ev("message_delta", delta={"stop_reason": stop, "stop_sequence": None}, usage={"output_tokens": 12})
        await ev("message_stop")
        await resp.write_eof()
        return resp

    async def _responses(self, request: web.Request) -> web.StreamResponse:
        """A native /v1/responses, written from the API's documented shapes (not the router's translation)."""
        self.requests += 1
        c = self.config
        if not c.responses:
            return _err(404, "Not Found", "invalid_request_error")
        body = orjson.loads(await request.read())
        self.last_body = body
        items = body.get("input")
        items = [{"type": "message", "role": "user", "content": items}] if isinstance(items, str) else list(items or [])
        last = items[-1] if items else {}
        rid, created = "resp_" + uuid.uuid4().hex[:20], int(time.time())
        output: list[dict[str, Any]] = []
        if c.tool_call and body.get("tools") and last.get("type", "message") == "message":
            output.append({"type": "function_call", "id": "fc_" + rid[5:], "call_id": "call_" + rid[5:17],
                           "name": c.tool_call["name"], "arguments": orjson.dumps(c.tool_call["arguments"]).decode(),
                           "status": "completed"})
        else:
            text = (f"The tool returned: {last.get('output')}" if last.get("type") == "function_call_output"
                    else c.reply if c.reply is not None else answer_text(c.words))
            output.append({"type": "message", "id": "msg_" + rid[5:], "status": "completed", "role": "assistant",
                            "content": [{"type": "output_text", "text": text, "annotations": []}]})
        usage = {"input_tokens": 20, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 12,
                 "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 32}
        final = {"id": rid, "object": "response", "created_at": created, "status": "completed", "model": c.model,
                 "output": output, "parallel_tool_calls": True, "tool_choice": "auto", "tools": body.get("tools") or [],
                 "usage": usage, "error": None, "incomplete_details": None, "store": False}
        await asyncio.sleep(c.ttft)
        if not body.get("stream"):
            return web.Response(body=orjson.dumps(final), content_type="application/json")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        seq = 0

        async def ev(kind: str, **data: Any) -> None:
            nonlocal seq
            seq += 1
            await resp.write(f"event: {kind}\n".encode() + b"data: " + orjson.dumps(
                {"type": kind, "sequence_number": seq, **data}) + b"\n\n")

        await ev("response.created", response={**final, "status": "in_progress", "output": [], "usage": None})
        for i, item in enumerate(output):
            if item["type"] == "message":
                text = item["content"][0]["text"]
                await ev("response.output_item.added", output_index=i, item={**item, "content": [],
                                                                              "status": "in_progress"})
                await ev("response.content_part.added", item_id=item["id"], output_index=i, content_index=0,
                         part={"type": "output_text", "text": "", "annotations": []})
                for piece in _tokens(text):
                    await ev("response.output_text.delta", item_id=item["id"], output_index=i, content_index=0,
                             delta=piece)
                await ev("response.output_text.done", item_id=item["id"], output_index=i, content_index=0, text=text)
                await ev("response.content_part.done", item_id=item["id"], output_index=i, content_index=0,
                         part=item["content"][0])
            else:
                await ev("response.output_item.added", output_index=i, item={**item, "arguments": "",
                                                                              "status": "in_progress"})
                await ev("response.function_call_arguments.delta", item_id=item["id"], output_index=i,
                         delta=item["arguments"])
                await ev("response.function_call_arguments.done", item_id=item["id"], output_index=i,
                         arguments=item["arguments"])
            await ev("response.output_item.done", output_index=i, item=item)
        await ev("response.completed", response=final)
        await resp.write_eof()
        return resp

    async def _stream(self, request: web.Request, resp: web.StreamResponse, c: SimConfig,
                      body: dict[str, Any], fault: Fault, pieces: list[str], usage: dict[str, int],
                      cid: str, created: int) -> None:

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            ev = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": c.model,
                  "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            return b"data: " + orjson.dumps(ev) + b"\n\n"

        await resp.write(chunk({"role": "assistant", "content": ""}))
        await asyncio.sleep(c.ttft)
        if fault == "slow_first_token":
            await asyncio.sleep(c.fault_delay)
        for i, piece in enumerate(pieces):
            if i == c.fault_after and fault == "engine_dead":
                await resp.write(b"data: " + orjson.dumps(ENGINE_DEAD) + b"\n\n")
                await resp.write(b"data: [DONE]\n\n")
                await resp.write_eof()
                return
            if i == c.fault_after and fault in ("cut", "stall", "malformed"):
                if fault == "cut":
                    assert request.transport is not None
                    request.transport.abort()
                    return
                if fault == "stall":
                    await asyncio.sleep(c.fault_delay)
                    return
                await resp.write(b"data: {\"id\": broken-json\n\n")
            if i and c.per_token:
                await asyncio.sleep(c.per_token)
            await resp.write(chunk({"content": piece}))
        await resp.write(chunk({}, "stop"))
        if (body.get("stream_options") or {}).get("include_usage") and c.engine != "llamacpp":
            ev = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": c.model,
                  "choices": [], "usage": usage}
            await resp.write(b"data: " + orjson.dumps(ev) + b"\n\n")
        if fault == "no_done":
            await asyncio.sleep(c.fault_delay)
            return
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
