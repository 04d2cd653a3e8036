"""Tool calls an engine wrote as text become real tool_calls on a route with ``tool_parser``: each
format, JSON and streamed through the openai SDK, text before a call, two calls, bad markup, the
400 an engine without a parser gives, and the same calls through /v1/responses and /v1/messages."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx
import pytest
from openai import OpenAI

from shared.jsonl import read_jsonl
from tests.harness import ADMIN_TOKEN, Lab

CALL = {"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}
TOOLS: list[Any] = [{"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                   "required": ["city"]}}}]
ASK: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
MARKUP = ("<tool_call>", "</tool_call>", "<arg_key>", "[TOOL_CALLS]", "<|python_tag|>", '"parameters"')


def set_parser(lab: Lab, fmt: str) -> None:
    lab.policy["routes"]["ubuntu-6000"]["tool_parser"] = fmt
    lab.write_policy(lab.policy)
    r = httpx.post(lab.url + "/admin/reload-config", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10)
    assert r.status_code == 200, r.text


def parsed_route(lab: Lab, fmt: str, **sim: Any) -> None:
    """ubuntu-6000's engine writes calls as ``fmt`` markup and has no parser; the route parses them."""
    set_parser(lab, fmt)
    lab.configure("ubuntu-6000", tool_call=CALL, tool_format=fmt, auto_tool_choice=False, **sim)


def last_line(lab: Lab) -> dict[str, Any]:
    return read_jsonl(lab.log_dir / "router-decisions.jsonl")[-1]


def streamed(client: OpenAI, **kw: Any) -> tuple[str, list[dict[str, Any]], str | None]:
    """The text, the calls and the finish reason, accumulated from the deltas as an agent does."""
    text, calls, finish = "", {}, None  # type: ignore[var-annotated]
    for chunk in client.chat.completions.create(model="homelab/code", messages=ASK, tools=TOOLS, stream=True, **kw):
        for choice in chunk.choices:
            text += choice.delta.content or ""
            for tc in choice.delta.tool_calls or ():
                slot = calls.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
                slot["id"] = slot["id"] or tc.id
                if tc.function and tc.function.name:
                    slot["name"] += tc.function.name
                if tc.function and tc.function.arguments:
                    slot["arguments"] += tc.function.arguments
            finish = choice.finish_reason or finish
    return text, [calls[i] for i in sorted(calls)], finish


@pytest.mark.parametrize("fmt", ["hermes", "glm45", "llama3_json", "mistral"])
def test_each_format_json_and_streamed(lab: Lab, client: OpenAI, fmt: str) -> None:
    parsed_route(lab, fmt)
    r = client.chat.completions.create(model="homelab/code", messages=ASK, tools=TOOLS)
    msg = r.choices[0].message
    assert r.choices[0].finish_reason == "tool_calls" and not msg.content
    (call,) = msg.tool_calls or []
    assert call.id.startswith("call_") and call.function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == CALL["arguments"]  # type: ignore[union-attr]
    assert (lab.sims["ubuntu-6000"].last_body or {})["tool_choice"] == "none"  # what the engine accepts
    assert f"tool_calls_parsed:{fmt}:1" in last_line(lab)["events"]
    text, calls, finish = streamed(client)
    assert text == "" and finish == "tool_calls"
    assert [(c["name"], json.loads(c["arguments"])) for c in calls] == [("get_weather", CALL["arguments"])]
    assert calls[0]["id"].startswith("call_")


def test_text_before_a_call_streams_and_two_calls_become_two(lab: Lab, client: OpenAI) -> None:
    parsed_route(lab, "hermes", tool_preamble="Let me look that up. ", tool_calls_n=2)
    r = client.chat.completions.create(model="homelab/code", messages=ASK, tools=TOOLS)
    assert r.choices[0].message.content == "Let me look that up."
    assert len(r.choices[0].message.tool_calls or []) == 2
    text, calls, finish = streamed(client)
    assert text.strip() == "Let me look that up." and len(calls) == 2 and finish == "tool_calls"
    assert not any(m in text for m in MARKUP)
    assert calls[0]["id"] != calls[1]["id"]


def test_a_reply_without_tools_streams_token_by_token(lab: Lab, client: OpenAI) -> None:
    parsed_route(lab, "hermes")
    lab.configure("ubuntu-6000", tool_call=None, words=40)
    pieces = [c.choices[0].delta.content for c in client.chat.completions.create(
        model="homelab/code", messages=ASK, tools=TOOLS, stream=True) if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 30  # held back only where it might be a tag: never here


BAD = ['<tool_call>\n{"name": "get_weather", "arguments": {"city": ',  # unbalanced
       '<tool_call>{"name": "get_weather", "arguments": {city: Paris}}</tool_call>',  # arguments not JSON
       '<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>']  # a tool the request did not offer


@pytest.mark.parametrize("streaming", [False, True])
@pytest.mark.parametrize("bad", BAD)
def test_bad_markup_comes_back_as_written_and_on_the_record(lab: Lab, client: OpenAI, bad: str,
                                                           streaming: bool) -> None:
    parsed_route(lab, "hermes", tool_markup=bad)
    if streaming:
        text, calls, _ = streamed(client)
    else:
        m = client.chat.completions.create(model="homelab/code", messages=ASK, tools=TOOLS).choices[0].message
        text, calls = m.content or "", list(m.tool_calls or [])
    assert text == bad and calls == []
    assert any(e.startswith("tool_parse_error:hermes:") for e in last_line(lab)["events"])
    metrics = httpx.get(lab.url + "/metrics", timeout=10).text
    assert 'homelab_router_tool_parse_errors_total{format="hermes",route="ubuntu-6000"}' in metrics


def test_an_engine_without_a_parser_refuses_auto_tool_choice(lab: Lab) -> None:
    set_parser(lab, "none")  # what the route does without tool_parser
    lab.configure("ubuntu-6000", tool_call=CALL, tool_format="hermes", auto_tool_choice=False)
    r = httpx.post(lab.base_url + "/chat/completions", json={"model": "homelab/code", "messages": ASK,
                                                             "tools": TOOLS}, timeout=20)
    assert r.status_code == 400 and "tool-call-parser" in r.json()["error"]["message"]  # why tool_parser exists


def test_the_same_calls_through_responses_and_messages(lab: Lab, client: OpenAI) -> None:
    parsed_route(lab, "glm45")
    resp = client.responses.create(model="homelab/code", input="What is the weather in Paris?", store=False,
                                   tools=[{"type": "function", **TOOLS[0]["function"]}])
    (item,) = [o for o in resp.output if o.type == "function_call"]
    assert item.name == "get_weather" and json.loads(item.arguments) == CALL["arguments"]  # type: ignore[union-attr]
    claude = anthropic.Anthropic(base_url=lab.url, api_key="unused", max_retries=0, timeout=20)
    tool = {"name": "get_weather", "input_schema": TOOLS[0]["function"]["parameters"]}
    for streaming in (False, True):
        if streaming:
            with claude.messages.stream(model="homelab/code", max_tokens=256, messages=ASK,
                                        tools=[tool]) as s:  # type: ignore[list-item]
                m = s.get_final_message()
        else:
            m = claude.messages.create(model="homelab/code", max_tokens=256, messages=ASK, tools=[tool])  # type: ignore[list-item]
        (use,) = [b for b in m.content if b.type == "tool_use"]
        assert use.name == "get_weather" and use.input == CALL["arguments"] and m.stop_reason == "tool_use"
    claude.close()


def test_arguments_that_miss_the_schema_still_go_out_and_are_noted(lab: Lab, client: OpenAI) -> None:
    parsed_route(lab, "hermes")
    lab.configure("ubuntu-6000", tool_call={"name": "get_weather", "arguments": {"days": "three"}})
    r = client.chat.completions.create(model="homelab/code", messages=ASK, tools=TOOLS)
    (call,) = r.choices[0].message.tool_calls or []
    assert json.loads(call.function.arguments) == {"days": "three"}  # type: ignore[union-attr]
    assert any(e.startswith("tool_schema_mismatch:get_weather:") for e in last_line(lab)["events"])


@pytest.mark.parametrize(("fmt", "parser", "auto", "seen"), [("native", "none", True, "native"),
                                                            ("glm45", "glm45", False, "parsed"),
                                                            ("glm45", "none", False, "text"),
                                                            ("hermes", "none", True, "text")])
def test_the_tool_probe_says_what_each_route_does(lab: Lab, fmt: str, parser: str, auto: bool, seen: str) -> None:
    set_parser(lab, parser)
    lab.configure("ubuntu-6000", tool_format=fmt, auto_tool_choice=auto, tool_call_any=True)
    assert lab.bg.run(lab.svc.check_tools("ubuntu-6000")) == seen
    up = httpx.get(lab.url + "/admin/upstreams", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                   timeout=10).json()["routes"]["ubuntu-6000"]
    assert up["tool_calls"] == seen
    if seen == "text":
        assert f"{fmt} markup" in up["tool_calls_seen"]
        from services.status import collect
        from shared.settings import Settings

        s = lab.bg.run(collect(Settings(mqtt_url="mqtt://127.0.0.1:1", router_url=lab.base_url), lab.base_url,
                               listen=0.1))
        assert any("route ubuntu-6000 leaves tool calls as text" in w for w in s["warnings"])
