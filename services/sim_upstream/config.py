"""What a simulated upstream does: its model, engine flavour, speed, capacity and faults (changed at
run time through ``POST /_sim/config``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from services.sim_upstream.shapes import Engine

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
    "cuda_mid_stream",  # after fault_after chunks an in-band CUDA error event, then the stream ends
]


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
    piece_chars: int | None = None  # stream the answer this many characters a delta (None: a word a delta)
    # False: vLLM started without --enable-auto-tool-choice: tools with tool_choice auto (or none given) → 400
    auto_tool_choice: bool = True
    # with no tool_call set: call the tool the last user turn asks for (write/read/run/search), with
    # arguments from its words, as a model would; asked for none of them, answer in words
    tool_call_any: bool = False
    responses: bool = False  # serve /v1/responses natively (recent vLLM); else it is a 404 (most engines)
    messages: bool = False  # serve Anthropic's /v1/messages natively (llama.cpp's server, vLLM); else a 404
    max_model_len: int = 32768  # the context window /v1/models reports (as vLLM does)
    # what /v1/models lists (None: the model itself); engines list names their own way (Ollama
    # "qwen2.5:latest", llama.cpp its file) and some list several
    listed: list[str] | None = None
    flat_prompt_tokens: bool = False  # report the same prompt tokens with or without an open prefill
    # asked to continue a cut answer: "restart" starts over, "tail" echoes the last words first
    # (what real models do now and then); "none" goes on exactly where it stopped
    instruct_echo: Literal["none", "restart", "tail"] = "none"
    # what a camera_triage request (metadata.homelab_task) gets when json_answer is not set
    triage_answer: dict[str, Any] = {"verdict": "positive", "confidence": 0.9, "objects": ["person"], "threat_level": 1,
                                     "summary": "A person is at the door"}
    embedding_dims: int = 8
