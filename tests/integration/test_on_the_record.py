"""Every request on the record, and size promotion that sees tools."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.jsonl import read_jsonl
from tests.harness import Lab

AGENTS = Path(__file__).resolve().parents[1] / "fixtures" / "agents"


def last(lab: Lab) -> dict[str, Any]:
    return read_jsonl(lab.log_dir / "router-decisions.jsonl")[-1]


def big_tools() -> list[dict[str, Any]]:
    tools = json.loads((AGENTS / "opencode_request.json").read_text())["tools"]
    return tools * 4  # ≈ 80 KB of definitions: ≈ 19k tokens


@pytest.mark.parametrize("endpoint", ["chat", "responses"])
def test_a_fast_prompt_carrying_big_tools_is_promoted(lab: Lab, endpoint: str) -> None:
    prompt = "Classify these tags as json"  # the fast bucket: ubuntu-4090 up to 8K tokens, ubuntu-6000 to 24K
    if endpoint == "chat":
        body: dict[str, Any] = {"model": "homelab/auto", "messages": [{"role": "user", "content": prompt}],
                                "tools": big_tools()}
        r = httpx.post(lab.base_url + "/chat/completions", json=body, timeout=20)
    else:
        body = {"model": "homelab/auto", "input": prompt,
                "tools": [{"type": "function", **t["function"]} for t in big_tools()]}
        r = httpx.post(lab.base_url + "/responses", json=body, timeout=20)
    assert r.status_code == 200
    assert (r.headers["x-homelab-bucket"], r.headers["x-homelab-route"]) == ("fast", "ubuntu-6000")
    assert r.headers["x-homelab-reason"] == "size_promotion"
    assert 15_000 < last(lab)["tokens"] < 24_576


def test_rejected_requests_leave_a_line(lab: Lab) -> None:
    base = lab.base_url
    cases = [
        (httpx.post(base + "/chat/completions", content=b"{not json", timeout=10), 400, "/v1/chat/completions"),
        (httpx.post(base + "/chat/completions", json={"model": "homelab/nope", "messages": [
            {"role": "user", "content": "hi"}]}, timeout=10), 404, "/v1/chat/completions"),
        (httpx.post(base + "/nothing-here", json={}, timeout=10), 404, "/v1/nothing-here"),
        (httpx.post(base + "/responses", json={"model": "homelab/auto"}, timeout=10), 400, "/v1/responses"),
        (httpx.get(lab.url + "/admin/upstreams", headers={"Authorization": "Bearer wrong"}, timeout=10), 401,
         "/admin/upstreams"),
    ]
    lab.svc.settings.max_body = 1000
    cases.append((httpx.post(base + "/chat/completions", json={"model": "homelab/auto", "messages": [
        {"role": "user", "content": "x" * 5000}]}, timeout=10), 413, "/v1/chat/completions"))
    lines = read_jsonl(lab.log_dir / "router-decisions.jsonl")
    assert len(lines) == len(cases)
    for (resp, status, endpoint), line in zip(cases, lines, strict=True):
        assert resp.status_code == status
        assert line["status"] == status and line["endpoint"] == endpoint, line
        assert line["reason"] and line["error"] and line["request_id"] == resp.headers["x-request-id"]
