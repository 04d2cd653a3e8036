"""Tool-call markup, as each model family writes it, parsed whole and as it streams."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from services.router.accounting import Accounting
from services.router.metrics import Metrics
from services.router.tool_repair import StreamRepair
from services.router.toolparse import ParseError, ToolStream, parse
from shared.jsonl import JsonlWriter

CASES = [
    ("hermes", 'Sure.\n<tool_call>\n{"name": "f", "arguments": {"a": 1}}\n</tool_call>', "Sure.\n"),
    ("glm45", "ok<tool_call>f\n<arg_key>a</arg_key>\n<arg_value>1</arg_value>\n</tool_call>", "ok"),
    ("llama3_json", '<|python_tag|>{"name": "f", "parameters": {"a": 1}}', ""),
    ("mistral", 'x [TOOL_CALLS][{"name": "f", "arguments": {"a": 1}}]', "x "),
    ("mistral", '[TOOL_CALLS]f[ARGS]{"a": 1}', ""),
]


@pytest.mark.parametrize(("fmt", "text", "before"), CASES)
def test_each_format_whole_and_streamed_a_character_at_a_time(fmt: str, text: str, before: str) -> None:
    got_before, calls = parse(fmt, text)  # type: ignore[arg-type]
    assert got_before == before and [(c.name, json.loads(c.arguments)) for c in calls] == [("f", {"a": 1})]
    s = ToolStream(fmt)  # type: ignore[arg-type]
    sent, streamed = "", []
    for ch in text:
        safe, closed = s.feed(ch)
        sent, streamed = sent + safe, streamed + closed
    rest, last, error = s.finish()
    assert error is None and (sent + rest).strip() == before.strip()
    assert [(c.name, c.arguments) for c in streamed + last] == [("f", calls[0].arguments)]


def test_glm_values_are_typed_by_the_tools_schema() -> None:
    text = ("<tool_call>w\n<arg_key>content</arg_key><arg_value>pong\n</arg_value>"
            "<arg_key>n</arg_key><arg_value>[1, 2]</arg_value></tool_call>")
    schemas = {"w": {"type": "object", "properties": {"content": {"type": "string"}, "n": {"type": "array"}}}}
    _, (call,) = parse("glm45", text, schemas)
    assert json.loads(call.arguments) == {"content": "pong\n", "n": [1, 2]}  # a string stays as written
    _, (call,) = parse("glm45", text)  # no schema says string: read as a value, trimmed (as vLLM does)
    assert json.loads(call.arguments) == {"content": "pong", "n": [1, 2]}


@pytest.mark.parametrize("text", ['<tool_call>{"name": "f"', '<tool_call>{"name": f}</tool_call>',
                                  '<tool_call>{"arguments": {}}</tool_call>'])
def test_broken_markup_is_an_error_never_a_call(text: str) -> None:
    with pytest.raises(ParseError):
        parse("hermes", text)
    s = ToolStream("hermes")
    safe, calls = s.feed(text)
    rest, last, error = s.finish()
    assert calls == last == [] and error is not None and safe + rest == text  # the text as the engine wrote it


def test_text_that_only_looks_like_a_tag_goes_out_when_it_is_not_one() -> None:
    s = ToolStream("hermes")
    assert s.feed("a <to") == ("a ", [])
    assert s.feed("y> b") == ("<toy> b", [])


class _Ctx:
    """What the repair reads of a request: its id, its tools, and where its notes go."""

    def __init__(self) -> None:
        self.request_id = "r"
        self.events: list[str] = []
        self.body: dict[str, Any] = {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}


def test_a_finishing_chunk_that_carries_the_end_of_a_call(tmp_path: Path) -> None:
    w = JsonlWriter(tmp_path / "x.jsonl")
    rep = StreamRepair(_Ctx(), Accounting(Metrics(lambda: [], lambda: ()), w, w, w), "r", "hermes")  # type: ignore[arg-type]

    def ev(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return b"data: " + orjson.dumps({"id": "c", "created": 1, "model": "m",
                                          "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})

    out = rep.events([ev({"content": 'Hi <tool_call>{"name": "f", '}),
                      ev({"content": '"arguments": {}}</tool_call>'}, "stop")]) + rep.finish()
    chunks = [orjson.loads(o[6:]) for o in out]
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[0] == {"content": "Hi "}
    assert deltas[1]["tool_calls"][0]["function"]["name"] == "f"
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert not any("<tool_call>" in str(d) for d in deltas)
    w.close()
