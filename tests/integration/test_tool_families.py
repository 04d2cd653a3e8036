"""Tool calls exactly as vLLM's parsers read them: for every behaviour vLLM's own parser tests pin
(hermes, glm45, llama3_json, mistral), a model output of our own, written by the engine into
``content`` (no parser of its own) and sent through the router — as a whole answer, and streamed one
and three characters a delta. The calls, their typed arguments and the text the client gets must be
the same every way."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from openai import OpenAI

from tests.harness import ADMIN_TOKEN, Lab

ASK = [{"role": "user", "content": "Refactor this function and use the tools"}]


def tool(name: str, **props: str) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "parameters": {
        "type": "object", "properties": {k: {"type": t} for k, t in props.items()}}}}


TOOLS = [tool("get_weather", city="string", state="string", unit="string", days="integer"),
         tool("Write", file_path="string", content="string"),
         tool("set_zip", zip="string", count="integer", ratio="number", enabled="boolean"),
         tool("get_time"), tool("search", query="string", limit="integer"), tool("notify", message="string")]

# (case id, family, what the engine writes, the calls the client must get, the text before them)
CASES: list[tuple[str, str, str, list[tuple[str, dict[str, Any]]], str]] = [
    # hermes
    ("hermes-one", "hermes", '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Lyon"}}\n</tool_call>',
     [("get_weather", {"city": "Lyon"})], ""),
    ("hermes-two", "hermes", '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>\n'
                             '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>',
     [("get_weather", {"city": "Oslo"}), ("get_time", {})], ""),
    ("hermes-text-before", "hermes", 'Let me look that up.\n<tool_call>{"name": "search", "arguments": '
                                     '{"query": "ferries", "limit": 3}}</tool_call>',
     [("search", {"query": "ferries", "limit": 3})], "Let me look that up."),
    ("hermes-unclosed-final", "hermes", '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>'
                                        '<tool_call>{"name": "notify", "arguments": {"message": "done"}}',
     [("get_time", {}), ("notify", {"message": "done"})], ""),
    ("hermes-text-after", "hermes", '<tool_call>{"name": "get_time", "arguments": {}}</tool_call> Checking now.',
     [("get_time", {})], ""),
    ("hermes-unicode", "hermes", '<tool_call>{"name": "notify", "arguments": {"message": "Grüße, 你好 🎉"}}'
                                 '</tool_call>',
     [("notify", {"message": "Grüße, 你好 🎉"})], ""),
    # glm45
    ("glm-one", "glm45", "<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Porto</arg_value>\n"
                         "<arg_key>days</arg_key>\n<arg_value>3</arg_value>\n</tool_call>",
     [("get_weather", {"city": "Porto", "days": 3})], ""),
    ("glm-two", "glm45", "<tool_call>get_weather\n<arg_key>city</arg_key><arg_value>Bern</arg_value></tool_call>\n"
                         "<tool_call>get_weather\n<arg_key>city</arg_key><arg_value>Graz</arg_value></tool_call>",
     [("get_weather", {"city": "Bern"}), ("get_weather", {"city": "Graz"})], ""),
    ("glm-text-before", "glm45", "I'll check both.<tool_call>get_time\n</tool_call>",
     [("get_time", {})], "I'll check both."),
    ("glm-text-between", "glm45", "First Bern.\n<tool_call>get_weather\n<arg_key>city</arg_key>"
                                  "<arg_value>Bern</arg_value></tool_call>\nThen Graz as well.\n"
                                  "<tool_call>get_weather\n<arg_key>city</arg_key><arg_value>Graz</arg_value>"
                                  "</tool_call>",
     [("get_weather", {"city": "Bern"}), ("get_weather", {"city": "Graz"})], "First Bern."),
    ("glm-typed-by-schema", "glm45", "<tool_call>set_zip\n<arg_key>zip</arg_key><arg_value>10001</arg_value>"
                                     "<arg_key>count</arg_key><arg_value>7</arg_value>"
                                     "<arg_key>ratio</arg_key><arg_value>0.5</arg_value>"
                                     "<arg_key>enabled</arg_key><arg_value>true</arg_value></tool_call>",
     [("set_zip", {"zip": "10001", "count": 7, "ratio": 0.5, "enabled": True})], ""),
    ("glm-json-looking-string", "glm45", '<tool_call>Write\n<arg_key>file_path</arg_key><arg_value>conf.json'
                                         '</arg_value><arg_key>content</arg_key><arg_value>{"debug": true, '
                                         '"port": 8080}\n</arg_value></tool_call>',
     [("Write", {"file_path": "conf.json", "content": '{"debug": true, "port": 8080}\n'})], ""),
    ("glm-whitespace-kept", "glm45", "<tool_call>Write\n<arg_key>file_path</arg_key><arg_value>a.py</arg_value>"
                                     "<arg_key>content</arg_key><arg_value>    indented = 1\n</arg_value>"
                                     "</tool_call>",
     [("Write", {"file_path": "a.py", "content": "    indented = 1\n"})], ""),
    ("glm-no-arguments", "glm45", "<tool_call>get_time\n</tool_call>", [("get_time", {})], ""),
    # llama3_json
    ("llama-one", "llama3_json", '{"name": "search", "parameters": {"query": "tides", "limit": 5}}',
     [("search", {"query": "tides", "limit": 5})], ""),
    ("llama-python-tag", "llama3_json", '<|python_tag|>{"name": "get_time", "parameters": {}}',
     [("get_time", {})], ""),
    ("llama-several", "llama3_json", '{"name": "search", "parameters": {"query": "a"}}; '
                                     '{"name": "get_time", "parameters": {}};\n'
                                     '{"name": "search", "parameters": {"query": "b"}}',
     [("search", {"query": "a"}), ("get_time", {}), ("search", {"query": "b"})], ""),
    ("llama-newline-separated", "llama3_json", '{"name": "get_time", "parameters": {}}\n'
                                               '{"name": "notify", "parameters": {"message": "x"}}',
     [("get_time", {}), ("notify", {"message": "x"})], ""),
    ("llama-prose-after", "llama3_json", '{"name": "search", "parameters": {"query": "cats"}} '
                                         'I used {search} to find it.',
     [("search", {"query": "cats"})], ""),
    ("llama-json-in-prose-after", "llama3_json", '{"name": "search", "parameters": {"query": "x"}} '
                                                 'The arguments were {"query": "x"}',
     [("search", {"query": "x"})], ""),
    ("llama-arguments-key", "llama3_json", '{"name": "notify", "arguments": {"message": "hi"}}',
     [("notify", {"message": "hi"})], ""),
    ("llama-braces-in-strings", "llama3_json", '{"name": "search", "parameters": {"query": "a {b} [c] \\"d\\""}}',
     [("search", {"query": 'a {b} [c] "d"'})], ""),
    # mistral
    ("mistral-list", "mistral", '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Nice"}}, '
                                '{"name": "get_time", "arguments": {}}]',
     [("get_weather", {"city": "Nice"}), ("get_time", {})], ""),
    ("mistral-list-trailing", "mistral", '[TOOL_CALLS][{"name": "get_time", "arguments": {}}] </s> and then',
     [("get_time", {})], ""),
    ("mistral-list-text-before", "mistral", 'Sure: [TOOL_CALLS][{"name": "get_time", "arguments": {}}]',
     [("get_time", {})], "Sure:"),
    ("mistral-v11", "mistral", '[TOOL_CALLS]get_weather{"city": "Riga", "days": 2}',
     [("get_weather", {"city": "Riga", "days": 2})], ""),
    ("mistral-v11-args-tag", "mistral", '[TOOL_CALLS]search[ARGS]{"query": "x", "limit": 1}',
     [("search", {"query": "x", "limit": 1})], ""),
    ("mistral-v11-several-after-text", "mistral", 'Two lookups.[TOOL_CALLS]get_weather{"city": "Kyiv"}'
                                                  '[TOOL_CALLS]get_time{}',
     [("get_weather", {"city": "Kyiv"}), ("get_time", {})], "Two lookups."),
]

# what stays text, as vLLM leaves it: broken markup comes back as written
TEXT_CASES = [
    ("glm-unclosed", "glm45", "<tool_call>get_weather\n<arg_key>city</arg_key><arg_value>Rome</arg_value>"),
    ("llama-no-parameters", "llama3_json", '{"name": "get_time"}'),
    ("llama-invalid", "llama3_json", '{"name": "search", "parameters": {query: x}}'),
    ("hermes-unclosed-broken", "hermes", '<tool_call>{"name": "get_time", "arguments": {'),
]


def admin(lab: Lab, method: str, path: str) -> httpx.Response:
    return httpx.request(method, lab.url + path, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30)


def engine_writes(lab: Lab, fmt: str, text: str, piece_chars: int | None = None, **sim: Any) -> None:
    lab.policy["routes"]["ubuntu-6000"]["tool_parser"] = fmt
    lab.write_policy(lab.policy)
    assert admin(lab, "POST", "/admin/reload-config").status_code == 200
    lab.configure("ubuntu-6000", tool_call={"name": "x", "arguments": {}}, tool_format=fmt, tool_markup=text,
                  auto_tool_choice=False, piece_chars=piece_chars, **sim)


def whole(client: OpenAI) -> tuple[str, list[tuple[str, dict[str, Any]]]]:
    m = client.chat.completions.create(model="homelab/code", messages=ASK, tools=TOOLS).choices[0].message  # type: ignore[arg-type]
    return m.content or "", [(c.function.name, json.loads(c.function.arguments)) for c in m.tool_calls or ()]


def streamed(client: OpenAI) -> tuple[str, list[tuple[str, dict[str, Any]]], str | None]:
    text, calls, finish = "", {}, None  # type: ignore[var-annotated]
    for chunk in client.chat.completions.create(model="homelab/code", messages=ASK, tools=TOOLS,  # type: ignore[arg-type]
                                                stream=True):
        for choice in chunk.choices:
            text += choice.delta.content or ""
            for tc in choice.delta.tool_calls or ():
                slot = calls.setdefault(tc.index, {"name": "", "arguments": ""})
                if tc.function and tc.function.name:
                    slot["name"] += tc.function.name
                if tc.function and tc.function.arguments:
                    slot["arguments"] += tc.function.arguments
            finish = choice.finish_reason or finish
    return text, [(c["name"], json.loads(c["arguments"])) for _, c in sorted(calls.items())], finish


@pytest.mark.parametrize(("case", "fmt", "output", "expected", "before"), CASES, ids=[c[0] for c in CASES])
def test_each_behaviour_json_and_streamed(lab: Lab, client: OpenAI, case: str, fmt: str, output: str,
                                          expected: list[tuple[str, dict[str, Any]]], before: str) -> None:
    engine_writes(lab, fmt, output)
    text, calls = whole(client)
    assert calls == expected and text.strip() == before
    for chars in (1, 3):
        engine_writes(lab, fmt, output, piece_chars=chars)
        text, calls, finish = streamed(client)
        assert calls == expected, chars
        assert text.strip() == before and finish == "tool_calls", chars


@pytest.mark.parametrize(("case", "fmt", "output"), TEXT_CASES, ids=[c[0] for c in TEXT_CASES])
def test_what_vllm_leaves_as_text_stays_text(lab: Lab, client: OpenAI, case: str, fmt: str, output: str) -> None:
    engine_writes(lab, fmt, output)
    assert whole(client) == (output, [])
    engine_writes(lab, fmt, output, piece_chars=3)
    text, calls, _ = streamed(client)
    assert (text, calls) == (output, [])


def test_a_mistral_route_asks_the_engine_to_keep_special_tokens(lab: Lab, client: OpenAI) -> None:
    engine_writes(lab, "mistral", '[TOOL_CALLS]get_time{}')
    assert whole(client)[1] == [("get_time", {})]
    sent = lab.sims["ubuntu-6000"].last_body or {}
    assert sent.get("skip_special_tokens") is False and sent.get("tool_choice") == "none"


def test_claude_codes_write_with_json_content_lands_byte_for_byte_through_glm(lab: Lab) -> None:
    content = '{"debug": true, "port": 8080}\nzip: 10001\n  - [1, 2]\n'
    markup = ("<tool_call>Write\n<arg_key>file_path</arg_key><arg_value>/tmp/conf.yaml</arg_value>\n"
              f"<arg_key>content</arg_key><arg_value>{content}</arg_value>\n</tool_call>")
    engine_writes(lab, "glm45", markup)
    write = {"name": "Write", "description": "Writes a file",
             "input_schema": {"type": "object", "properties": {"file_path": {"type": "string"},
                                                               "content": {"type": "string"}},
                              "required": ["file_path", "content"]}}
    for stream in (False, True):
        r = httpx.post(lab.base_url + "/messages", timeout=20, json={
            "model": "claude-sonnet-4-5", "max_tokens": 4096, "stream": stream, "tools": [write],
            "messages": [{"role": "user", "content": "Write the config file"}]})
        assert r.status_code == 200
        if stream:
            parts = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]
            raw = "".join(p["delta"]["partial_json"] for p in parts
                          if p.get("type") == "content_block_delta" and p["delta"]["type"] == "input_json_delta")
            args = json.loads(raw)
        else:
            (block,) = [b for b in r.json()["content"] if b["type"] == "tool_use"]
            args = block["input"]
        assert args == {"file_path": "/tmp/conf.yaml", "content": content}


def test_the_first_call_reaches_the_client_before_the_engine_writes_the_second(lab: Lab, client: OpenAI) -> None:
    first = '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>'
    second = '<tool_call>{"name": "notify", "arguments": {"message": "' + "word " * 40 + '"}}</tool_call>'
    engine_writes(lab, "hermes", first + second, piece_chars=4, per_token=0.03)  # the second: ~2 s of writing
    pieces = -(-len(first + second) // 4)
    seen: dict[str, Any] = {}
    for chunk in client.chat.completions.create(model="homelab/code", messages=ASK, tools=TOOLS,  # type: ignore[arg-type]
                                                stream=True):
        for choice in chunk.choices:
            for tc in choice.delta.tool_calls or ():
                if tc.index == 0 and tc.function and tc.function.arguments is not None and "first" not in seen:
                    # the engine is still writing (the second call's markup is not all out yet)
                    seen["first"] = tc.function.name or "args"
                    seen["written"] = lab.sims["ubuntu-6000"].written  # how far the engine had got
                if tc.index == 1 and tc.function and tc.function.name:
                    seen["second"] = tc.function.name
    # the first call went out while the engine had written little more than it
    assert seen.get("first") and seen["written"] < pieces / 2, (seen, pieces)
    assert seen.get("second") == "notify"


# ---- a stream that dies inside a call ----------------------------------------------------------

GLM_WRITE = ("Let me write it.<tool_call>Write\n<arg_key>file_path</arg_key><arg_value>notes.txt</arg_value>"
             "<arg_key>content</arg_key><arg_value>hello\n</arg_value></tool_call>")
HERMES_WRITE = {"name": "Write", "arguments": {"file_path": "notes.txt", "content": "hello\n"}}


def test_a_call_cut_mid_markup_is_finished_whole_by_the_failover(lab: Lab, client: OpenAI) -> None:
    """ubuntu-6000 (GLM markup) dies inside its call; spark goes on from the text the client has and
    writes the call in its own markup (hermes), which spark's parser turns into the client's call."""
    engine_writes(lab, "glm45", GLM_WRITE, piece_chars=5, fault="cut", fault_after=8)
    lab.configure("spark", tool_call=HERMES_WRITE, tool_format="hermes", auto_tool_choice=False)
    text, calls, finish = streamed(client)
    assert text == "Let me write it."
    assert calls == [("Write", {"file_path": "notes.txt", "content": "hello\n"})] and finish == "tool_calls"
    sent = lab.sims["spark"].last_body or {}
    assert sent["messages"][-1] == {"role": "assistant", "content": "Let me write it."}  # no half markup
    line = httpx.get(lab.url + "/stats", timeout=10)  # the router is still well
    assert line.status_code == 200


def test_a_call_cut_mid_markup_with_no_failover_to_finish_it_ends_with_the_error(lab: Lab, client: OpenAI) -> None:
    engine_writes(lab, "glm45", GLM_WRITE, piece_chars=5, fault="cut", fault_after=8)
    lab.configure("spark", fault="http_500")
    r = httpx.post(lab.base_url + "/chat/completions", timeout=20, json={
        "model": "homelab/code", "messages": ASK, "tools": TOOLS, "stream": True})
    assert "upstream_stream_failed" in r.text and "[DONE]" not in r.text
    assert '"tool_calls"' not in r.text  # never half a call


# ---- the Responses and Messages APIs -----------------------------------------------------------

def events_of(body: str) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in body.splitlines() if line.startswith("data: ")]


def test_responses_stream_items_in_order_each_closed_before_the_next(lab: Lab) -> None:
    engine_writes(lab, "hermes", 'I will check.<tool_call>{"name": "get_time", "arguments": {}}</tool_call>'
                                 '<tool_call>{"name": "search", "arguments": {"query": "q"}}</tool_call>',
                  piece_chars=3)
    tools = [{"type": "function", "name": t["function"]["name"], "parameters": t["function"]["parameters"]}
             for t in TOOLS]
    r = httpx.post(lab.base_url + "/responses", timeout=20, json={
        "model": "homelab/code", "input": "Refactor this function", "tools": tools, "stream": True, "store": False})
    seen = [(e["type"], e.get("output_index")) for e in events_of(r.text)
            if e["type"] in ("response.output_item.added", "response.output_item.done")]
    assert seen == [("response.output_item.added", 0), ("response.output_item.done", 0),
                    ("response.output_item.added", 1), ("response.output_item.done", 1),
                    ("response.output_item.added", 2), ("response.output_item.done", 2)]
    final = events_of(r.text)[-1]["response"]
    assert [o["type"] for o in final["output"]] == ["message", "function_call", "function_call"]


def test_responses_text_and_its_calls_are_one_assistant_turn_for_the_engine(lab: Lab) -> None:
    r = httpx.post(lab.base_url + "/responses", timeout=20, json={
        "model": "homelab/chat", "store": False, "input": [
            {"role": "user", "content": "What time is it?"},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking."}]},
            {"type": "function_call", "call_id": "c1", "name": "get_time", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "12:00"}]})
    assert r.status_code == 200
    roles = [m["role"] for m in (lab.sims["win-5090"].last_body or {})["messages"]]
    assert roles == ["user", "assistant", "tool"]
    turn = (lab.sims["win-5090"].last_body or {})["messages"][1]
    assert turn["content"] == "Checking." and turn["tool_calls"][0]["function"]["name"] == "get_time"


def test_messages_final_usage_carries_the_engines_prompt_tokens(lab: Lab) -> None:
    from services.sim_upstream.shapes import prompt_tokens

    r = httpx.post(lab.base_url + "/messages", timeout=20, json={
        "model": "claude-sonnet-4-5", "max_tokens": 1000, "stream": True, "system": "You are terse. " * 50,
        "messages": [{"role": "user", "content": "Refactor this function"}]})
    evs = events_of(r.text)
    start = next(e for e in evs if e["type"] == "message_start")["message"]["usage"]["input_tokens"]
    final = next(e for e in evs if e["type"] == "message_delta")["usage"]
    engine = prompt_tokens((lab.sims["ubuntu-6000"].last_body or {})["messages"], False)
    assert final["input_tokens"] == engine != start  # the estimate first, the engine's count at the end
