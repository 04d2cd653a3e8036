"""The simulated engines' native APIs: Anthropic's /v1/messages (llama.cpp's server, vLLM) and OpenAI's
/v1/responses (recent vLLM), written from each API's documented shapes — not the router's translation."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any, Protocol

import orjson
from aiohttp import web

from services.sim_upstream.config import SimConfig
from services.sim_upstream.shapes import answer_text, err, tokens


class SimUpstream(Protocol):
    """What the native endpoints need of the simulated server (no import of it: no cycle)."""

    requests: int
    last_body: dict[str, Any] | None

    @property
    def config(self) -> SimConfig: ...

    def cut_now(self) -> bool: ...


async def _received(sim: SimUpstream, request: web.Request) -> dict[str, Any]:
    """The request's body, kept as the chat endpoint keeps it (tests read ``last_body``)."""
    body: dict[str, Any] = orjson.loads(await request.read())
    sim.last_body = body
    return body


async def messages(sim: SimUpstream, request: web.Request) -> web.StreamResponse:
    """A native Anthropic /v1/messages, written from the API's documented shapes (not the router's
    translation): text, or a tool_use when tools are offered and the last user turn is not a result."""
    sim.requests += 1
    c = sim.config
    if not c.messages:
        return err(404, "Not Found", "invalid_request_error")
    body = await _received(sim, request)
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
    cut = sim.cut_now()
    for i, block in enumerate(content):
        if block["type"] == "text":
            await ev("content_block_start", index=i, content_block={"type": "text", "text": ""})
            for n, piece in enumerate(tokens(block["text"])):
                if cut and n == c.fault_after:
                    assert request.transport is not None
                    request.transport.abort()
                    return resp
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

async def responses(sim: SimUpstream, request: web.Request) -> web.StreamResponse:
    """A native /v1/responses, written from the API's documented shapes (not the router's translation)."""
    sim.requests += 1
    c = sim.config
    if not c.responses:
        return err(404, "Not Found", "invalid_request_error")
    body = await _received(sim, request)
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
            cut = sim.cut_now()
            for n, piece in enumerate(tokens(text)):
                if cut and n == c.fault_after:
                    assert request.transport is not None
                    request.transport.abort()
                    return resp
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
