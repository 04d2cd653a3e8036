"""Through the real router to real simulated upstreams, with the official openai SDK as the client."""

from __future__ import annotations

import httpx
import openai
import pytest
from openai import OpenAI

from services.sim_upstream.server import answer_text
from shared.jsonl import read_jsonl
from tests.harness import Lab

IMAGE = {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQSkZJRgABAQ=="}}


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_non_streaming_answer_names_the_model_that_answered(lab: Lab, client: OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model="homelab/auto",
                                                           messages=user("Refactor this function"))  # type: ignore[arg-type]
    completion = raw.parse()
    assert completion.model == "glm-4.5-air-awq"
    assert completion.choices[0].message.content == answer_text(12)
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    assert raw.headers["x-homelab-route"] == "ubuntu-6000"
    assert raw.headers["x-homelab-bucket"] == "coding"
    assert raw.headers["x-homelab-reason"] == "bucket_match"
    assert raw.headers["x-homelab-fallback-path"] == "ubuntu-6000"
    # the upstream was sent its own served model name, not the alias
    assert lab.sims["ubuntu-6000"].last_body is not None
    assert lab.sims["ubuntu-6000"].last_body["model"] == "glm-4.5-air-awq"


def test_streaming_answer_arrives_complete(lab: Lab, client: OpenAI) -> None:
    stream = client.chat.completions.create(model="homelab/auto", messages=user("Tell me about owls"),  # type: ignore[arg-type]
                                            stream=True, stream_options={"include_usage": True})
    text, models, usage = "", set(), None
    for chunk in stream:
        models.add(chunk.model)
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
    assert text == answer_text(12)
    assert models == {"gemma-4-31b"}
    assert usage is not None and usage.completion_tokens == 15


def test_streamed_chunks_pass_through_unchanged(lab: Lab) -> None:
    body = {"model": "homelab/chat", "stream": True, "messages": user("hi")}
    with httpx.stream("POST", lab.base_url + "/chat/completions", json=body) as r:
        lines = [line for line in r.iter_lines() if line]
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-homelab-reason"] == "pinned"
    assert lines[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in lines)
    assert len(lines) == 1 + 15 + 1 + 1  # role, 15 content pieces, finish, [DONE]


def test_image_request_goes_to_the_eyes(lab: Lab, client: OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="homelab/code", messages=[{"role": "user", "content": [{"type": "text", "text": "refactor"}, IMAGE]}])  # type: ignore[list-item]
    assert raw.headers["x-homelab-route"] == "ubuntu-4090"
    assert raw.headers["x-homelab-reason"] == "image_present"
    assert raw.parse().model == "qwen2.5-vl-7b-router-awq"


def test_overrides_by_header_and_metadata(lab: Lab, client: OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=user("refactor"), extra_headers={"X-Homelab-Route": "spark"})  # type: ignore[arg-type]
    assert (raw.headers["x-homelab-route"], raw.headers["x-homelab-reason"]) == ("spark", "header_override")
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=user("refactor"), metadata={"homelab_bucket": "utility"})  # type: ignore[arg-type]
    assert (raw.headers["x-homelab-route"], raw.headers["x-homelab-bucket"]) == ("win-5090", "utility")


def test_models_lists_aliases_and_served_models(lab: Lab, client: OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert ids[0] == "homelab/auto"
    for expected in ("homelab/code", "homelab/vision", "homelab/agent", "homelab/reasoning", "homelab/review",
                     "homelab/chat", "homelab/utility", "homelab/fast", "homelab/gemma", "glm-4.5-air-awq",
                     "qwen3.6-35b-a3b-fp8", "gemma-4-31b", "qwen2.5-vl-7b-router-awq"):
        assert expected in ids


def test_embeddings_go_to_the_embeddings_route(lab: Lab, client: OpenAI) -> None:
    raw = client.embeddings.with_raw_response.create(model="homelab/auto", input=["a", "b"])
    emb = raw.parse()
    assert len(emb.data) == 2 and len(emb.data[0].embedding) == 8
    assert raw.headers["x-homelab-route"] == "ubuntu-4090"
    assert lab.sims["ubuntu-4090"].requests == 1


def test_unknown_alias_is_404_with_the_valid_ones(lab: Lab, client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as exc:
        client.chat.completions.create(model="homelab/nope", messages=user("hi"))  # type: ignore[arg-type]
    assert "homelab/code" in str(exc.value.body)


@pytest.mark.parametrize(
    ("content", "status", "fragment"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"", 400, "body is empty"),
        (b'{"model": "homelab/auto"}', 400, "messages: Field required"),
        (b'{"model": "homelab/auto", "messages": "hi"}', 400, "valid list"),
        (b'{"model": "homelab/auto", "messages": [{"role": "robot", "content": "x"}]}', 400, "unknown role"),
        (b'{"model": "homelab/auto", "messages": [{"role": "user", "content": ""}]}', 400, "needs content"),
        (b'[1, 2]', 400, "JSON object"),
    ],
)
def test_bad_input_gets_an_openai_style_4xx(lab: Lab, content: bytes, status: int, fragment: str) -> None:
    r = httpx.post(lab.base_url + "/chat/completions", content=content,
                   headers={"Content-Type": "application/json"})
    assert r.status_code == status
    err = r.json()["error"]
    assert fragment in err["message"]
    assert err["type"] == "invalid_request_error"


def test_a_body_over_the_limit_is_413(lab: Lab) -> None:
    lab.svc.settings.max_body = 10_000
    big = {"model": "homelab/auto", "messages": user("x" * 20_000)}
    r = httpx.post(lab.base_url + "/chat/completions", json=big)
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "request_too_large"
    # and the router is still serving
    ok = httpx.post(lab.base_url + "/chat/completions", json={"model": "homelab/auto", "messages": user("hi")})
    assert ok.status_code == 200


def test_decision_log_has_one_line_per_request(lab: Lab, client: OpenAI) -> None:
    client.chat.completions.create(model="homelab/auto", messages=user("Review the security of this code"))  # type: ignore[arg-type]
    list(client.chat.completions.create(model="homelab/auto", messages=user("implement a function"), stream=True))  # type: ignore[arg-type]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="homelab/missing", messages=user("x"))  # type: ignore[arg-type]
    lines = read_jsonl(lab.log_dir / "router-decisions.jsonl")
    assert len(lines) == 3  # the 404 was never routed, but it is on the record
    first, second, refused = lines
    assert refused["status"] == 404 and refused["reason"] == "model_not_found"
    assert "homelab/missing" in refused["error"] and refused["endpoint"] == "/v1/chat/completions"
    assert first["bucket"] == "reasoning" and first["route"] == "spark" and first["reason"] == "bucket_match"
    assert first["scores"] == {"reasoning": 2, "coding": 1}
    assert first["status"] == 200 and first["stream"] is False and first["has_image"] is False
    assert first["fallback_path"] == ["spark"]
    assert first["latency_ms"] > 0 and first["tokens"] > 0 and first["request_id"]
    assert second["route"] == "ubuntu-6000" and second["stream"] is True and "ttfb_ms" in second


def test_bad_embeddings_request_is_a_clear_400(lab: Lab) -> None:
    r = httpx.post(lab.base_url + "/embeddings", json={"model": "homelab/auto"})
    assert r.status_code == 400 and "input" in r.json()["error"]["message"]
