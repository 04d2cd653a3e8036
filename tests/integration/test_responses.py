"""POST /v1/responses through the router, the openai SDK as client: translated and native routes,
streamed and not, a function tool round trip, a Codex-shaped request."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from openai import OpenAI

from services.sim_upstream.server import answer_text
from shared.jsonl import read_jsonl
from tests.harness import ADMIN_TOKEN, Lab

FULL = answer_text(12)
WEATHER = {"type": "function", "name": "get_weather", "description": "The weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
CALL = {"name": "get_weather", "arguments": {"city": "Paris"}}


def native(lab: Lab, route: str = "ubuntu-6000") -> None:
    lab.configure(route, responses=True)
    lab.policy["routes"][route]["responses"] = "native"
    lab.write_policy(lab.policy)
    r = httpx.post(lab.url + "/admin/reload-config", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert r.status_code == 200, r.text


MODES = ["translate", "native"]


@pytest.mark.parametrize("mode", MODES)
def test_responses_json(lab: Lab, client: OpenAI, mode: str) -> None:
    if mode == "native":
        native(lab)
    raw = client.responses.with_raw_response.create(model="homelab/auto", input="Refactor this function")
    resp = raw.parse()
    assert resp.output_text == FULL and resp.status == "completed"
    assert raw.headers["x-homelab-route"] == "ubuntu-6000"
    assert resp.usage is not None and resp.usage.output_tokens > 0
    sent = lab.sims["ubuntu-6000"].last_body or {}
    assert ("input" in sent) == (mode == "native") and ("messages" in sent) == (mode == "translate")
    d = read_jsonl(lab.log_dir / "router-decisions.jsonl")[-1]
    assert d["endpoint"] == "/v1/responses" and d["route"] == "ubuntu-6000" and d["bucket"] == "coding"


@pytest.mark.parametrize("mode", MODES)
def test_responses_stream(lab: Lab, client: OpenAI, mode: str) -> None:
    if mode == "native":
        native(lab)
    events = list(client.responses.create(model="homelab/auto", input="Refactor this function", stream=True))
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    for k in ("response.output_item.added", "response.content_part.added", "response.output_text.done",
              "response.output_item.done"):
        assert k in kinds
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == FULL
    seqs = [e.sequence_number for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    final = events[-1].response  # type: ignore[union-attr]
    assert final.output_text == FULL and final.usage is not None


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("mode", MODES)
def test_function_tool_round_trip(lab: Lab, client: OpenAI, mode: str, stream: bool) -> None:
    if mode == "native":
        native(lab)
    lab.configure("ubuntu-6000", tool_call=CALL)
    question = [{"role": "user", "content": "Implement a function that reports the weather in Paris"}]
    if stream:
        events = list(client.responses.create(model="homelab/code", input=question, tools=[WEATHER],  # type: ignore[arg-type,list-item]
                                              stream=True))
        assert any(e.type == "response.function_call_arguments.delta" for e in events)
        first = events[-1].response  # type: ignore[union-attr]
    else:
        first = client.responses.create(model="homelab/code", input=question, tools=[WEATHER])  # type: ignore[arg-type,list-item]
    (call,) = [o for o in first.output if o.type == "function_call"]
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"} and call.call_id
    follow = [*question, {"type": "function_call", "call_id": call.call_id, "name": call.name,
                          "arguments": call.arguments},
              {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 C"}]
    if stream:
        events = list(client.responses.create(model="homelab/code", input=follow, tools=[WEATHER], stream=True))  # type: ignore[arg-type,list-item]
        second = events[-1].response  # type: ignore[union-attr]
    else:
        second = client.responses.create(model="homelab/code", input=follow, tools=[WEATHER])  # type: ignore[arg-type,list-item]
    assert second.output_text == "The tool returned: sunny, 21 C"
    if mode == "translate":
        sent = lab.sims["ubuntu-6000"].last_body or {}
        assert sent["messages"][-2]["tool_calls"][0]["id"] == call.call_id
        assert sent["messages"][-1] == {"role": "tool", "tool_call_id": call.call_id, "content": "sunny, 21 C"}
        assert sent["tools"][0]["function"]["name"] == "get_weather"


def codex_request(size: int = 40_000) -> dict[str, Any]:
    """The shape Codex CLI 0.171 sends: streamed, store false, instructions as a developer message,
    function tools plus built-ins the lab cannot run, reasoning and include."""
    instructions = "You are Codex, a coding agent. Follow the repository's conventions. " * (size // 70)
    shell = {"type": "function", "name": "shell", "description": "Run a shell command",
             "strict": False, "parameters": {"type": "object", "properties": {
                 "command": {"type": "array", "items": {"type": "string"}}, "workdir": {"type": "string"}},
                 "required": ["command"]}}
    patch = {"type": "function", "name": "apply_patch", "description": "Apply a patch to files",
             "parameters": {"type": "object", "properties": {"input": {"type": "string"}}, "required": ["input"]}}
    return {
        "model": "homelab/code", "instructions": "You are a coding agent.", "stream": True, "store": False,
        "input": [{"type": "message", "role": "developer", "content": [{"type": "input_text", "text": instructions}]},
                  {"type": "message", "role": "user", "content": [{"type": "input_text",
                                                                    "text": "Refactor this function"}]}],
        "tools": [shell, patch, {"type": "web_search"}, {"type": "namespace", "name": "mcp", "tools": []}],
        "tool_choice": "auto", "parallel_tool_calls": False, "reasoning": {"effort": "medium", "summary": "auto"},
        "include": ["reasoning.encrypted_content"], "prompt_cache_key": "abc",
    }


def test_a_codex_shaped_request_gets_a_streamed_answer(lab: Lab) -> None:
    body = codex_request()
    assert len(json.dumps(body)) > 38_000
    with httpx.stream("POST", lab.base_url + "/responses", json=body, timeout=30) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        text = "".join(r.iter_text())
    events = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]
    assert events[-1]["type"] == "response.completed"
    assert "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta") == FULL
    sent = lab.sims["ubuntu-6000"].last_body or {}
    assert [t["function"]["name"] for t in sent["tools"]] == ["shell", "apply_patch"]  # built-ins dropped
    assert "reasoning" not in sent and "include" not in sent and sent["messages"][0]["role"] == "system"
    d = read_jsonl(lab.log_dir / "router-decisions.jsonl")[-1]
    for note in ("dropped_tool:web_search", "dropped_tool:namespace", "dropped:reasoning", "dropped:include"):
        assert note in d["events"]
    assert d["tokens"] > 9_000  # the instructions count (40 KB of text)


def test_native_route_gets_reasoning_and_include(lab: Lab) -> None:
    native(lab)
    body = {**codex_request(2_000), "stream": False}
    r = httpx.post(lab.base_url + "/responses", json=body, timeout=30)
    assert r.status_code == 200 and r.json()["output"][0]["content"][0]["text"] == FULL
    sent = lab.sims["ubuntu-6000"].last_body or {}
    assert sent["reasoning"] == {"effort": "medium", "summary": "auto"} and sent["model"] == "glm-4.5-air-awq"


def test_an_image_goes_to_the_eyes(lab: Lab, client: OpenAI) -> None:
    raw = client.responses.with_raw_response.create(model="homelab/auto", input=[{"role": "user", "content": [
        {"type": "input_text", "text": "Refactor this function"},
        {"type": "input_image", "image_url": "data:image/jpeg;base64,AA=="}]}])  # type: ignore[list-item,misc]
    assert raw.headers["x-homelab-route"] == "ubuntu-4090" and raw.headers["x-homelab-reason"] == "image_present"


@pytest.mark.parametrize(("extra", "param"), [({"previous_response_id": "resp_1"}, "previous_response_id"),
                                              ({"store": True}, "store"), ({"input": []}, "input"),
                                              ({"input": [{"role": "robot", "content": "x"}]}, "input.0.role")])
def test_what_the_router_cannot_do_is_a_400_naming_the_field(lab: Lab, extra: dict[str, Any], param: str) -> None:
    r = httpx.post(lab.base_url + "/responses", json={"model": "homelab/auto", "input": "hi", **extra}, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["param"] == param
    d = read_jsonl(lab.log_dir / "router-decisions.jsonl")[-1]
    assert d["status"] == 400 and d["endpoint"] == "/v1/responses"


def test_failover_works_for_responses_too(lab: Lab, client: OpenAI) -> None:
    lab.stop_upstream("ubuntu-6000")
    raw = client.responses.with_raw_response.create(model="homelab/auto", input="Refactor this function")
    assert raw.parse().output_text == FULL and raw.headers["x-homelab-route"] == "spark"
