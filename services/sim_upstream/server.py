"""Simulated OpenAI-compatible model server with configurable latency, capacity and faults.

Runtime control for tests: ``POST /_sim/config`` (partial SimConfig), ``GET /_sim/stats``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
import uuid
from typing import Any

import orjson
from aiohttp import ClientConnectionResetError, web

from services.sim_upstream import native
from services.sim_upstream.config import Fault, SimConfig
from services.sim_upstream.shapes import (
    CONTINUE_MARK,
    ENGINE_DEAD,
    ENGINES,
    acted_call,
    answer_text,
    context_error,
    err,
    example_for_schema,
    has_image,
    prompt_tokens,
    tokens,
    tool_markup,
)

__all__ = ["ENGINES", "Fault", "SimConfig", "SimUpstream", "answer_text", "prompt_tokens"]

class SimUpstream:
    """One simulated model server on loopback; start/stop (refuse connections) at will."""

    def __init__(self, config: SimConfig | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.config = config or SimConfig()
        self.host = host
        self.port = port
        self.active = 0
        self.peak = 0  # the most chat requests it held at once
        self.probes = 0  # GET /v1/models answered (health probes)
        self.written = 0  # content pieces written by the stream being sent (what the engine has produced)
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
        # an engine stops working on a request whose client went away (vLLM aborts it): so does the sim
        self._runner = web.AppRunner(self._make_app(), access_log=None, handle_signals=False,
                                     shutdown_timeout=0.1, handler_cancellation=True)
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

    def cut_now(self) -> bool:
        """Is this native stream one the ``cut`` fault cuts (after ``fault_after`` deltas)?"""
        return self.config.fault == "cut" and self._fault() == "cut"

    async def _models(self, request: web.Request) -> web.Response:
        c = self.config
        self.probes += 1
        if c.fault_probes and c.fault.startswith("http_"):
            return err(int(c.fault[-3:]), "Service unavailable", "server_error")
        data = {"object": "list", "data": [
            {"id": name, "object": "model", "created": 0, "owned_by": "homelab-sim",
             "max_model_len": self.config.max_model_len} for name in (c.listed or [c.model])
        ]}
        return web.Response(body=orjson.dumps(data), content_type="application/json")

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response({"requests": self.requests, "active": self.active, "peak": self.peak,
                                  "config": self.config.model_dump()})

    async def _set_config(self, request: web.Request) -> web.Response:
        try:
            self.configure(**(await request.json()))
        except Exception as exc:  # a bad control message is the caller's problem, not a crash
            return err(400, str(exc), "invalid_request_error")
        return web.json_response(self.config.model_dump())

    async def _embeddings(self, request: web.Request) -> web.Response:
        self.requests += 1
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return err(400, "invalid JSON", "invalid_request_error")
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
            return err(503, "Server busy: all slots are in use", "server_error", "busy")
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            return await self._chat_inner(request, c)
        finally:
            self.active -= 1

    async def _chat_inner(self, request: web.Request, c: SimConfig) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return err(400, "invalid JSON", "invalid_request_error")
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
            return err(int(fault[-3:]), "Internal server error", "server_error")
        if fault == "cuda_error":
            return err(500, "CUDA error: an illegal memory access was encountered", "server_error")
        if fault == "http_503":
            return err(503, "Service unavailable", "server_error")
        if fault == "http_401":
            return err(401, "Invalid API key", "authentication_error", "invalid_api_key")
        if fault == "http_403":
            return err(403, "This key may not use this model", "permission_error")
        if fault == "model_missing":
            return err(404, f"The model `{body.get('model')}` does not exist.", "NotFoundError")
        if fault == "http_429":
            return err(429, "Rate limited", "rate_limit_error", "rate_limited",
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
            return err(400, "The prompt was rejected by the content policy.",
                        "invalid_request_error", "content_policy_violation")
        if has_image(messages) and not c.vision:
            # LM Studio answers an image sent to a text-only model like this.
            return err(400, f"Model {c.model} does not support images", "invalid_request_error")

        prefix = ""
        instructed = False
        open_last = False
        last = messages[-1] if messages and isinstance(messages[-1], dict) else {}
        if last.get("role") == "assistant" and body.get("continue_final_message"):
            if not c.continuation:
                return err(400, "continue_final_message is not supported", "invalid_request_error")
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
                text = orjson.dumps(example_for_schema(schema)).decode()
        elif messages and isinstance(messages[-1], dict) and messages[-1].get("role") == "tool":
            text = f"The tool returned: {messages[-1].get('content')}"
        else:
            text = c.reply if c.reply is not None else answer_text(c.words)
        if body.get("tools") and not c.auto_tool_choice and body.get("tool_choice") in (None, "auto"):
            return err(400, '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set',
                        "BadRequestError")
        markup_anyway = c.tool_format != "native" or body.get("tool_choice") != "none"  # a model writes it regardless
        if c.tool_call is None and c.tool_call_any and body.get("tools") and last.get("role") == "user" \
                and markup_anyway:
            # a model that acts on the prompt: the tool the user's words ask for, with arguments taken from
            # them (a quoted text, a file name) — or, asked for none, an answer in words
            acted = acted_call(messages, body["tools"])
            if acted is not None:
                c = c.model_copy(update={"tool_call": acted})
        # a call is written for a user's turn, and by a model asked to go on with an answer (a continuation)
        if c.tool_call and body.get("tools") and (last.get("role") == "user" or prefix):
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
        n_prompt = prompt_tokens(messages, open_last and not c.flat_prompt_tokens)
        pieces = tokens(text) if text else []
        if c.piece_chars and text:
            pieces = [text[i:i + c.piece_chars] for i in range(0, len(text), c.piece_chars)]
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

    async def _responses(self, request: web.Request) -> web.StreamResponse:
        return await native.responses(self, request)

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        return await native.messages(self, request)

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
            if i == c.fault_after and fault == "cuda_mid_stream":
                cuda = {"error": {"message": "CUDA error: an illegal memory access was encountered",
                                  "type": "InternalServerError", "code": 500}}
                await resp.write(b"data: " + orjson.dumps(cuda) + b"\n\n")
                await resp.write_eof()
                return
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
            self.written = i + 1
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
