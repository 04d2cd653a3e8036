"""Preflight: bad bodies are clear 400s; images and token estimates are found."""

from __future__ import annotations

from typing import Any

import pytest

from services.router.errors import RequestError
from services.router.preflight import IMAGE_TOKENS, preflight


def msg(content: Any, role: str = "user") -> dict[str, Any]:
    return {"role": role, "content": content}


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ([], "must be a JSON object"),
        ({"model": "homelab/auto"}, "messages: Field required"),
        ({"model": "homelab/auto", "messages": "hi"}, "messages: Input should be a valid list"),
        ({"model": "homelab/auto", "messages": []}, "messages must not be empty"),
        ({"model": "homelab/auto", "messages": [msg("hi", "wizard")]}, "unknown role"),
        ({"model": "homelab/auto", "messages": [msg("")]}, "a user message needs content"),
        ({"model": "homelab/auto", "messages": [msg([])]}, "must not be an empty list"),
        ({"model": 5, "messages": [msg("hi")]}, "model"),
        ({"messages": [msg("hi")]}, "model: Field required"),
        ({"model": "m", "messages": [msg("hi")], "stream": "yes"}, "stream"),
    ],
)
def test_bad_bodies_are_400_with_a_reason(body: Any, fragment: str) -> None:
    with pytest.raises(RequestError) as exc:
        preflight(body)
    assert exc.value.status == 400
    assert fragment in exc.value.message


def test_image_parts_and_tokens() -> None:
    body = {"model": "homelab/auto", "messages": [
        msg("You are helpful." * 10, "system"),
        msg([{"type": "text", "text": "What is this?"},
             {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64," + "A" * 100_000}}]),
    ]}
    p = preflight(body)
    assert p.has_image
    assert p.text == "What is this?"
    # the base64 payload does not count as text
    assert p.tokens < 1000 + IMAGE_TOKENS


def test_classifier_reads_the_latest_user_turn() -> None:
    p = preflight({"model": "m", "messages": [msg("refactor this"), msg("done", "assistant"),
                                               msg("now a security review")]})
    assert p.text == "now a security review"
    assert not p.has_image


def test_assistant_tool_call_without_content_is_fine() -> None:
    p = preflight({"model": "m", "messages": [msg("hi"), {"role": "assistant", "content": None,
                                                           "tool_calls": [{"id": "1"}]},
                                               {"role": "tool", "content": "42", "tool_call_id": "1"}]})
    assert p.tokens > 0
