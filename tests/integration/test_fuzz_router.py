"""The router fuzzed: schemathesis from the router's own OpenAPI description (every endpoint it
serves), and hand-made hostile bodies. Never a 500, never plain text; the next request is served."""

from __future__ import annotations

import json
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis import openapi as st_openapi

from services.router.api import openapi_document
from tests.harness import ADMIN_TOKEN, Lab

GOOD = {"model": "homelab/auto", "messages": [{"role": "user", "content": "Refactor this function"}]}


def nested(depth: int) -> bytes:
    """JSON nested ``depth`` lists deep (deeper than orjson writes: made by hand)."""
    return b"[" * depth + b'"x"' + b"]" * depth


def served(lab: Lab, client: httpx.Client) -> None:
    """Every route takes traffic again, and an ordinary request is answered."""
    for name in lab.sims:
        client.post(f"{lab.url}/admin/undrain/{name}", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    client.delete(f"{lab.url}/admin/shadow", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    r = client.post(lab.base_url + "/chat/completions", json=GOOD)
    assert r.status_code == 200, r.text


def check(r: httpx.Response | Any, what: str) -> None:
    assert r.status_code < 500 or ((r.status_code in (500, 503) and "recover" in what) or r.status_code == 503), \
        (what, r.status_code, r.text[:300])
    if r.status_code >= 400:
        body = orjson.loads(r.content)  # JSON, never plain text
        assert isinstance(body.get("error"), dict) and body["error"].get("message"), (what, r.text[:300])


def fuzz_operation(lab: Lab, client: httpx.Client, op: Any, mode: GenerationMode) -> int:
    """Send hypothesis-generated cases of one operation; return how many went out."""
    sent = 0
    label = f"{op.method.upper()} {op.path}"
    admin = op.path.startswith("/admin")

    @given(case=op.as_strategy(generation_mode=mode))
    @settings(max_examples=30, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def one(case: Any) -> None:
        nonlocal sent
        headers = {k: v for k, v in (case.headers or {}).items() if isinstance(v, str)}
        if admin:
            headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"
        kwargs = case.as_transport_kwargs(base_url=lab.url, headers=headers)
        body = kwargs.get("json")
        content = kwargs.get("data") if body is None else json.dumps(body).encode()  # big ints too
        r = client.request(kwargs["method"], kwargs["url"], params=kwargs.get("params"),
                           headers=kwargs.get("headers"), content=content)
        sent += 1
        check(r, label)

    try:
        one()
    except Unsatisfiable:
        # nothing to make invalid: an endpoint without a body or parameters (negative mode)
        assert mode == GenerationMode.NEGATIVE and "requestBody" not in op.definition.raw \
            and not op.path_parameters, label
    return sent


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_schemathesis_on_every_endpoint(lab: Lab, mode: GenerationMode) -> None:
    schema = st_openapi.from_dict(openapi_document())
    with httpx.Client(timeout=20) as client:
        seen = sum(fuzz_operation(lab, client, result.ok(), mode) for result in schema.get_all_operations())
        served(lab, client)
    assert seen > 100


HOSTILE: list[tuple[str, bytes]] = [
    ("chat", orjson.dumps({**GOOD, "metadata": None})),
    ("chat", orjson.dumps({**GOOD, "stream": None})),
    ("chat", orjson.dumps({**GOOD, "tools": 5})),
    ("chat", orjson.dumps({**GOOD, "messages": [{"role": "assistant", "content": "x", "tool_calls": 5},
                                                {"role": "user", "content": "hi"}]})),
    ("chat", orjson.dumps({**GOOD, "metadata": {"homelab_task": "camera_triage"},
                           "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": 5}}}})),
    ("chat", orjson.dumps({**GOOD, "response_format": {"type": "json_schema", "json_schema": 5}})),
    ("chat", orjson.dumps({**GOOD, "stream_options": 5, "stream": True})),
    ("chat", b'{"model": "homelab/auto", "messages": ' + nested(300) + b"}"),
    ("chat", b'{"model": "homelab/auto", "messages": ' + b"[" * 1024 + b"]" * 1024 + b"}"),
    ("chat", b'{"model": "homelab/auto", "messages": [{"role": "user", "content": NaN}]}'),
    ("chat", b'{"model": "homelab/auto", "messages": [{"role": "user", "content": "\xff\xfe"}]}'),
    ("chat", orjson.dumps({**GOOD, "messages": [{"role": "user", "content": "x" * 3_000_000}]})),
    ("chat", orjson.dumps({"model": 5, "messages": "hi"})),
    ("chat", orjson.dumps([GOOD])),
    ("chat", b""),
    ("responses", orjson.dumps({"model": "homelab/auto", "input": "hi", "tools": 5})),
    ("responses", orjson.dumps({"model": "homelab/auto", "input": [5, "x", None]})),
    ("responses", orjson.dumps({"model": "homelab/auto", "input": "hi", "stream": "yes"})),
    ("responses", b'{"model": "homelab/auto", "input": ' + nested(500) + b"}"),
    ("responses", orjson.dumps({"model": "homelab/auto", "input": [{"type": "message", "role": "user",
                                                                    "content": [5]}]})),
    ("embeddings", b'{"model": "x", "input": ' + b"[" * 600 + b"]" * 600 + b"}"),
    ("embeddings", orjson.dumps({"model": "x", "input": {"a": 1}})),
    ("embeddings", orjson.dumps(5)),
]


def test_hostile_bodies_get_a_clear_json_error_and_the_next_request_is_served(lab: Lab) -> None:
    path = {"chat": "/chat/completions", "responses": "/responses", "embeddings": "/embeddings"}
    with httpx.Client(timeout=20) as client:  # one keep-alive connection through it all
        for endpoint, body in HOSTILE:
            r = client.post(lab.base_url + path[endpoint], content=body,
                            headers={"Content-Type": "application/json"})
            check(r, f"{endpoint}: {body[:80]!r}")
            assert r.headers.get("x-request-id")
        served(lab, client)
