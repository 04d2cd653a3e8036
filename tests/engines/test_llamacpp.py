"""homelab-router in front of a real llama.cpp server (the openai SDK as client)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema
import pytest
from openai import OpenAI

from shared.jsonl import read_jsonl
from tests.engines.conftest import Engine
from tests.engines.tiny_model import REPLY
from tests.harness import ADMIN_TOKEN, ROOT, Lab

CODE = [{"role": "user", "content": "Refactor this function"}]  # auto -> coding -> ubuntu-6000 (the engine)
LONG = [{"role": "user", "content": "Refactor this function " + "x" * 3000}]  # over the engine's 512 tokens
SCHEMA = json.loads((ROOT / "shared" / "schemas" / "camera_triage.json").read_text())


@pytest.fixture
def real(lab: Lab, llama: Engine) -> Lab:
    """The lab with ubuntu-6000 served by the real llama.cpp server (spark stays simulated)."""
    lab.policy["routes"]["ubuntu-6000"].update(base_url=llama.base_url, model=llama.model, first_token_timeout=15,
                                               stream_idle_timeout=15, request_timeout=30,
                                               structured_output="json_object")
    lab.write_policy(lab.policy)
    r = httpx.post(lab.url + "/admin/reload-config", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert r.status_code == 200, r.text
    return lab


def _chunks(text: str) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]


def _deltas(chunks: list[dict[str, Any]]) -> list[Any]:
    return [(c["choices"][0]["delta"], c["choices"][0]["finish_reason"]) for c in chunks if c.get("choices")]


def test_json_answer_through_the_router(real: Lab, client: OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model="homelab/auto", messages=CODE, temperature=0)  # type: ignore[arg-type]
    answer = raw.parse()
    assert answer.choices[0].message.content == REPLY
    assert raw.headers["x-homelab-route"] == "ubuntu-6000" and raw.headers["x-homelab-fallback-path"] == "ubuntu-6000"
    assert answer.usage is not None and answer.usage.completion_tokens == len(REPLY)  # one byte a token


def test_sse_answer_is_relayed_unchanged(real: Lab, llama: Engine, client: OpenAI) -> None:
    body = {"model": llama.model, "messages": CODE, "stream": True, "temperature": 0}
    direct = httpx.post(llama.base_url + "/chat/completions", json=body, timeout=30)
    via = httpx.post(real.base_url + "/chat/completions", json={**body, "model": "homelab/auto"}, timeout=30)
    assert via.headers["x-homelab-route"] == "ubuntu-6000"
    assert _deltas(_chunks(via.text)) == _deltas(_chunks(direct.text))  # every chunk, in order
    assert via.text.rstrip().endswith("data: [DONE]")
    text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="homelab/code", messages=CODE, stream=True, temperature=0) if c.choices)  # type: ignore[arg-type]
    assert text == REPLY


def test_models_through_the_router(real: Lab, client: OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert "tiny" in ids and "homelab/auto" in ids


def test_the_engine_really_refuses_a_long_prompt(llama: Engine) -> None:
    """What the router sees from llama.cpp over its context window: a 400 (JSON), an empty 200 (stream)."""
    body = {"model": llama.model, "messages": LONG}
    r = httpx.post(llama.base_url + "/chat/completions", json=body, timeout=30)
    assert r.status_code == 400 and "context" in r.text
    s = httpx.post(llama.base_url + "/chat/completions", json={**body, "stream": True}, timeout=30)
    assert s.status_code == 200 and "data:" not in s.text


@pytest.mark.parametrize("streaming", [False, True])
def test_a_prompt_over_the_context_goes_to_the_context_route(real: Lab, streaming: bool) -> None:
    r = httpx.post(real.base_url + "/chat/completions", json={"model": "homelab/auto", "messages": LONG,
                                                               "stream": streaming}, timeout=30)
    assert r.status_code == 200 and r.headers["x-homelab-route"] == "spark"  # never an empty success
    if streaming:
        assert len(_chunks(r.text)) > 3 and r.text.rstrip().endswith("data: [DONE]")
    else:
        assert r.headers["x-homelab-reason"] == "ubuntu-6000_context_length"
        assert r.json()["choices"][0]["message"]["content"]
    # the request after it is answered by the engine (a broken keep-alive connection is retried once)
    after = httpx.post(real.base_url + "/chat/completions", json={"model": "homelab/auto", "messages": CODE,
                                                                   "stream": streaming}, timeout=30)
    assert after.status_code == 200 and after.headers["x-homelab-route"] == "ubuntu-6000"
    if streaming:
        assert "".join(d.get("content") or "" for d, _ in _deltas(_chunks(after.text))) == REPLY
    else:
        assert after.json()["choices"][0]["message"]["content"] == REPLY


def test_camera_triage_against_the_real_engine_works_or_fails_closed(real: Lab, client: OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="homelab/code", temperature=0, max_tokens=64, messages=CODE,  # type: ignore[arg-type]
        response_format={"type": "json_schema", "json_schema": {"name": "camera_triage", "schema": SCHEMA}},
        metadata={"homelab_task": "camera_triage"})
    assert raw.headers["x-homelab-route"] == "ubuntu-6000"  # the engine answered, under its JSON grammar
    verdict = json.loads(raw.parse().choices[0].message.content or "")
    if verdict.get("synthetic"):
        assert verdict["escalate_to_spark"] is True and verdict["verdict"] == "ambiguous"
        lines = read_jsonl(real.log_dir / "structured-validation.jsonl")
        assert lines and lines[-1]["source"] == "router"
    else:
        jsonschema.validate(verdict, SCHEMA)


def test_llamacpp_is_detected_as_not_continuing_a_prefill(real: Lab) -> None:
    verdict = real.bg.run(real.svc.check_continuation("ubuntu-6000"))
    assert "new turn" in verdict or "refused" in verdict
    state = httpx.get(real.url + "/admin/upstreams", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).json()
    row = state["routes"]["ubuntu-6000"]
    assert row["continuation_declared"] == ["prefill"] and row["continuation_effective"] == "none"
    assert state["routes"]["spark"]["continuation_effective"] == "prefill"  # the simulated vLLM


def test_json_schema_as_openai_sends_it_is_refused_by_llamacpp(llama: Engine) -> None:
    """Why routes in front of llama.cpp say ``structured_output: json_object``."""
    r = httpx.post(llama.base_url + "/chat/completions", timeout=30, json={
        "model": llama.model, "messages": CODE,
        "response_format": {"type": "json_schema", "json_schema": {"name": "t", "schema": SCHEMA}}})
    assert r.status_code >= 400


def test_prefill_on_llamacpp_really_starts_a_new_turn(llama: Engine) -> None:
    """Why the check exists: the engine answers a prefill with a fresh answer, not the rest of it."""
    body = {"model": llama.model, "temperature": 0, "continue_final_message": True, "add_generation_prompt": False,
            "messages": [*CODE, {"role": "assistant", "content": REPLY[:4]}]}
    r = httpx.post(llama.base_url + "/chat/completions", json=body, timeout=30)
    if r.status_code == 200:
        assert r.json()["choices"][0]["message"]["content"] == REPLY  # spliced, it would read "Hi, Hi, world!"
    else:
        assert 400 <= r.status_code < 500
