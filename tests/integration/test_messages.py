"""The Anthropic Messages API through the router, with the official ``anthropic`` SDK as the client:
create, stream, a tool round trip and count_tokens on a translated route and on a native one;
a Claude Code–shaped request; errors in Anthropic's shape, each on the record."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import pytest

from services.sim_upstream.server import answer_text
from shared.jsonl import read_jsonl
from tests.harness import ADMIN_TOKEN, Lab

FULL = answer_text(12)
WEATHER = {"name": "get_weather", "description": "The weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


def lines(lab: Lab) -> list[dict[str, Any]]:
    return read_jsonl(lab.log_dir / "router-decisions.jsonl")


@pytest.fixture(params=["translated", "native"])
def kind(request: pytest.FixtureRequest, lab: Lab) -> str:
    if request.param == "native":
        policy = dict(lab.policy)
        policy["routes"] = {k: dict(v) for k, v in lab.policy["routes"].items()}
        policy["routes"]["ubuntu-6000"]["messages"] = "native"
        lab.write_policy(policy)
        r = httpx.post(lab.url + "/admin/reload-config", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                       timeout=10)
        assert r.status_code == 200, r.text
        lab.configure("ubuntu-6000", messages=True)
    return str(request.param)


@pytest.fixture
def claude(lab: Lab) -> Iterator[anthropic.Anthropic]:
    c = anthropic.Anthropic(base_url=lab.url, api_key="unused", max_retries=0, timeout=20)
    yield c
    c.close()


def test_create(lab: Lab, claude: anthropic.Anthropic, kind: str) -> None:
    raw = claude.messages.with_raw_response.create(
        model="claude-opus-5-5", max_tokens=128_000, system="You are terse.",
        messages=[{"role": "user", "content": "Refactor this function"}])
    msg = raw.parse()
    assert raw.headers["x-homelab-route"] == "ubuntu-6000"  # claude-* → the agent route
    assert [b.type for b in msg.content] == ["text"] and msg.content[0].text == FULL  # type: ignore[union-attr]
    assert msg.stop_reason == "end_turn" and msg.id.startswith("msg_") and msg.usage.output_tokens > 0
    line = lines(lab)[-1]
    assert (line["endpoint"], line["status"], line["route"]) == ("/v1/messages", 200, "ubuntu-6000")
    assert any(e.startswith("max_tokens_clamped:128000->") for e in line["events"])  # never a 400
    sent = lab.sims["ubuntu-6000"].last_body or {}
    assert sent["max_tokens"] < 32768 and sent["model"] == "glm-4.5-air-awq"
    assert ("system" in sent) is (kind == "native")  # a native route gets the Anthropic body itself


def test_stream(lab: Lab, claude: anthropic.Anthropic, kind: str) -> None:
    with claude.messages.stream(model="claude-opus-5-5", max_tokens=1024,
                                messages=[{"role": "user", "content": "Refactor this function"}]) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == FULL
    assert final.stop_reason == "end_turn" and final.usage.output_tokens > 0
    assert lines(lab)[-1]["status"] == 200


@pytest.mark.parametrize("streaming", [False, True])
def test_a_tool_round_trip(lab: Lab, claude: anthropic.Anthropic, kind: str, streaming: bool) -> None:
    lab.configure("ubuntu-6000", tool_call={"name": "get_weather", "arguments": {"city": "Paris"}})
    ask: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
    if streaming:
        with claude.messages.stream(model="claude-sonnet-5", max_tokens=512, tools=[WEATHER],  # type: ignore[list-item]
                                    messages=ask) as s:
            first = s.get_final_message()
    else:
        first = claude.messages.create(model="claude-sonnet-5", max_tokens=512, tools=[WEATHER],  # type: ignore[list-item]
                                       messages=ask)
    assert first.stop_reason == "tool_use"
    (call,) = [b for b in first.content if b.type == "tool_use"]
    assert call.name == "get_weather" and call.input == {"city": "Paris"}
    result = {"type": "tool_result", "tool_use_id": call.id, "content": "18C and sunny"}
    follow = [*ask, {"role": "assistant", "content": [b.model_dump() for b in first.content]},
              {"role": "user", "content": [result]}]
    second = claude.messages.create(model="claude-sonnet-5", max_tokens=512, tools=[WEATHER],  # type: ignore[list-item]
                                    messages=follow)
    assert second.content[0].text == "The tool returned: 18C and sunny"  # type: ignore[union-attr]


def test_count_tokens_counts_the_tools(lab: Lab, claude: anthropic.Anthropic) -> None:
    ask: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
    bare = claude.messages.count_tokens(model="claude-opus-5-5", messages=ask).input_tokens
    tooled = claude.messages.count_tokens(model="claude-opus-5-5", messages=ask,
                                          tools=[WEATHER] * 10).input_tokens  # type: ignore[list-item]
    assert 0 < bare < tooled
    assert lines(lab)[-1]["endpoint"] == "/v1/messages/count_tokens"


def test_haiku_goes_to_the_fast_route(lab: Lab, claude: anthropic.Anthropic) -> None:
    raw = claude.messages.with_raw_response.create(model="claude-haiku-4-5", max_tokens=64,
                                                   messages=[{"role": "user", "content": "Title this chat"}])
    assert raw.headers["x-homelab-route"] == "ubuntu-4090"


def claude_code_shaped() -> dict[str, Any]:
    """What Claude Code sends: system blocks, 12 tools (~32 KB), a system turn last, its extras."""
    tools = [{"name": f"Tool{i}", "description": ("Use this tool to work with the project. " * 60)[:2400],
              "input_schema": {"type": "object", "properties": {"file_path": {"type": "string"},
                                                                "content": {"type": "string"}},
                               "required": ["file_path"], "additionalProperties": False,
                               "$schema": "http://json-schema.org/draft-07/schema#"}} for i in range(12)]
    system = [{"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude."},
              {"type": "text", "text": "Follow the user's instructions. " * 550,
               "cache_control": {"type": "ephemeral"}}]
    return {"model": "claude-opus-5-5", "max_tokens": 128000, "stream": True, "system": system, "tools": tools,
            "messages": [{"role": "user", "content": [{"type": "text", "text": "say pong"}]},
                         {"role": "system", "content": "<env>Working directory: /work</env>"}],
            "thinking": {"type": "adaptive"}, "context_management": {"edits": []},
            "output_config": {"effort": "high"}, "metadata": {"user_id": "user_abc_session_1"}}


def test_a_claude_code_shaped_request_is_routed_logged_and_answered(lab: Lab) -> None:
    body = claude_code_shaped()
    headers = {"x-api-key": "sk-ant-unused", "anthropic-version": "2023-06-01",
               "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14,fine-grained-tool-streaming",
               "X-Claude-Code-Session-Id": "c0ffee"}
    raw = httpx.post(lab.url + "/v1/messages?beta=true", json=body, headers=headers, timeout=20)
    assert raw.status_code == 200, raw.text
    assert len(raw.request.content) > 45_000  # ~49 KB, as Claude Code sends
    events = [line[7:] for line in raw.text.splitlines() if line.startswith("event: ")]
    assert events[:2] == ["message_start", "ping"] and events[-2:] == ["message_delta", "message_stop"]
    assert "content_block_delta" in events
    line = lines(lab)[-1]
    assert (line["endpoint"], line["route"], line["status"]) == ("/v1/messages", "ubuntu-6000", 200)
    assert line["tokens"] > 8_000  # the 12 tool definitions are counted
    for note in ("dropped:thinking", "dropped:context_management", "dropped:output_config", "dropped:cache_control",
                 "dropped:anthropic-beta"):
        assert note in line["events"], note
    sent = lab.sims["ubuntu-6000"].last_body or {}
    assert sent["messages"][0]["role"] == "system" and "<env>" in sent["messages"][0]["content"]
    assert sent["user"] == "user_abc_session_1" and len(sent["tools"]) == 12


def test_refusals_are_anthropic_shaped_and_on_the_record(lab: Lab) -> None:
    url = lab.url + "/v1/messages"
    r = httpx.post(url, json={"model": "claude-opus-5-5", "messages": [{"role": "user", "content": "hi"}]}, timeout=10)
    assert r.status_code == 400
    assert r.json()["type"] == "error" and r.json()["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in r.json()["error"]["message"]
    r = httpx.post(url, json={"model": "claude-opus-5-5", "max_tokens": 10}, timeout=10)
    assert r.status_code == 400 and "messages" in r.json()["error"]["message"]
    r = httpx.post(url, content=b"{not json", timeout=10)
    assert r.status_code == 400 and r.json()["type"] == "error"
    lab.stop_upstream("spark")  # the terminal route: nowhere left to go
    r = httpx.post(url, json={"model": "homelab/reasoning", "max_tokens": 10,
                              "messages": [{"role": "user", "content": "hi"}]}, timeout=10)
    assert r.status_code == 503 and r.json()["error"]["type"] == "overloaded_error"
    message = r.json()["error"]["message"]
    assert "127.0.0.1" not in message and "spark" not in message and "port" not in message
    tail = lines(lab)[-4:]
    assert [x["status"] for x in tail] == [400, 400, 400, 503]
    assert all(x["endpoint"] == "/v1/messages" for x in tail)


def test_a_stream_that_dies_ends_with_an_anthropic_error_event(lab: Lab, claude: anthropic.Anthropic) -> None:
    lab.configure("ubuntu-6000", fault="cut", fault_after=2)
    lab.stop_upstream("spark")  # no route can continue it
    ask: list[Any] = [{"role": "user", "content": "Refactor this function"}]
    with pytest.raises(anthropic.APIStatusError), \
            claude.messages.stream(model="claude-opus-5-5", max_tokens=512, messages=ask) as s:
        "".join(s.text_stream)
    assert lines(lab)[-1]["status"] == 502


def test_models_carry_their_context_length(lab: Lab) -> None:
    lab.bg.run(lab.svc.probe_once())
    data = {m["id"]: m for m in httpx.get(lab.base_url + "/models", timeout=10).json()["data"]}
    assert data["homelab/code"]["context_length"] == 32768  # the engine's own max_model_len
    assert data["homelab/auto"]["context_length"] == 32768  # the largest an automatic decision can reach


def test_an_image_block_goes_to_the_image_route_and_a_header_pins(lab: Lab, claude: anthropic.Anthropic) -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
    raw = claude.messages.with_raw_response.create(
        model="claude-opus-5-5", max_tokens=64,
        messages=[{"role": "user", "content": [image, {"type": "text", "text": "Who is at the door?"}]}])
    assert raw.headers["x-homelab-route"] == "ubuntu-4090" and raw.headers["x-homelab-reason"] == "image_present"
    part = (lab.sims["ubuntu-4090"].last_body or {})["messages"][-1]["content"][0]
    assert part == {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    url_image = {"type": "image", "source": {"type": "url", "url": "https://example.invalid/door.jpg"}}
    claude.messages.create(model="claude-opus-5-5", max_tokens=64,
                           messages=[{"role": "user", "content": [url_image, {"type": "text", "text": "Who?"}]}])
    part = (lab.sims["ubuntu-4090"].last_body or {})["messages"][-1]["content"][0]
    assert part["image_url"]["url"] == "https://example.invalid/door.jpg"
    pinned = claude.messages.with_raw_response.create(
        model="claude-opus-5-5", max_tokens=64, messages=[{"role": "user", "content": "hi"}],
        extra_headers={"X-Homelab-Route": "spark"})
    assert pinned.headers["x-homelab-route"] == "spark"
