"""Admin API, metrics and camera-triage validation against the real router."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shared.jsonl import read_jsonl
from tests.harness import ADMIN_TOKEN, BackgroundLoop, Lab

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
CODE = [{"role": "user", "content": "Refactor this function"}]


def post(lab: Lab, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(lab.base_url + "/chat/completions", json=body, timeout=20)


@pytest.mark.parametrize(("method", "path"), [("GET", "/admin/upstreams"), ("POST", "/admin/drain/spark"),
                                              ("POST", "/admin/undrain/spark"), ("POST", "/admin/reload-config"),
                                              ("POST", "/admin/recover-cuda")])
def test_admin_needs_the_token(lab: Lab, method: str, path: str) -> None:
    assert httpx.request(method, lab.url + path).status_code == 401
    bad = httpx.request(method, lab.url + path, headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401
    assert bad.json()["error"]["type"] == "authentication_error"
    assert lab.svc.states["spark"].drained is False


def test_admin_is_refused_when_no_token_is_configured(bg: BackgroundLoop, tmp_path: Path) -> None:
    lab = Lab(bg, tmp_path, admin_token=None, probes=False)
    try:
        r = httpx.get(lab.url + "/admin/upstreams", headers={"Authorization": "Bearer anything"})
        assert r.status_code == 403
        assert "HOMELAB_ADMIN_TOKEN" in r.json()["error"]["message"]
    finally:
        lab.close()


def test_upstreams_reports_every_route(lab: Lab) -> None:
    routes = httpx.get(lab.url + "/admin/upstreams", headers=AUTH).json()["routes"]
    assert set(routes) == {"ubuntu-4090", "ubuntu-6000", "win-5090", "spark"}
    for state in routes.values():
        for key in ("healthy", "in_flight", "max_concurrency", "saturated", "drained", "poisoned", "circuit",
                    "last_error"):
            assert key in state
    assert routes["win-5090"]["max_concurrency"] == 3


def test_drain_unknown_route_is_404(lab: Lab) -> None:
    r = httpx.post(lab.url + "/admin/drain/gpu9", headers=AUTH)
    assert r.status_code == 404 and "spark" in r.json()["error"]["message"]


def test_reload_applies_a_good_policy_and_rejects_a_bad_one(lab: Lab) -> None:
    # good: "paraphrase" moves to the coding bucket
    lab.policy["buckets"]["coding"]["keywords"].append("paraphrase")
    lab.policy["buckets"]["utility"]["keywords"].remove("paraphrase")
    lab.write_policy(lab.policy)
    assert httpx.post(lab.url + "/admin/reload-config", headers=AUTH).status_code == 200
    para = [{"role": "user", "content": "paraphrase it"}]
    assert post(lab, {"model": "homelab/auto", "messages": para}).headers["x-homelab-route"] == "ubuntu-6000"

    for broken in ("routes: [unclosed", "version: 1\nroutes: {}\n"):
        lab.policy_path.write_text(broken)
        r = httpx.post(lab.url + "/admin/reload-config", headers=AUTH)
        assert r.status_code == 400
        assert "old one keeps serving" in r.json()["error"]["message"]
        assert post(lab, {"model": "homelab/auto", "messages": para}).headers["x-homelab-route"] == "ubuntu-6000"

    # a failing golden case rejects the file too
    lab.policy["examples"].append({"prompt": "paraphrase it", "expect_route": "win-5090"})
    lab.write_policy(lab.policy)
    r = httpx.post(lab.url + "/admin/reload-config", headers=AUTH)
    assert r.status_code == 400 and "golden cases failed" in r.json()["error"]["message"]
    events = read_jsonl(lab.log_dir / "recovery-events.jsonl")
    assert [e["ok"] for e in events if e["action"] == "reload"] == [True, False, False, False]


def test_recover_cuda_runs_the_command_once_and_clears_poison(lab: Lab, tmp_path: Path) -> None:
    marker = tmp_path / "recovered"
    lab.policy["routes"]["ubuntu-6000"]["recover_command"] = ["sh", "-c", f"sleep 0.3; echo ok > {marker}"]
    lab.write_policy(lab.policy)
    assert httpx.post(lab.url + "/admin/reload-config", headers=AUTH).status_code == 200
    lab.configure("ubuntu-6000", fault="cuda_error", fault_count=1)
    post(lab, {"model": "homelab/auto", "messages": CODE})
    assert lab.svc.states["ubuntu-6000"].poisoned

    first = lab.bg.submit(_recover(lab, "ubuntu-6000"))
    second = lab.bg.submit(_recover(lab, "ubuntu-6000", delay=0.1))
    assert second.result(10)[0] == 409  # one at a time
    status, body = first.result(10)
    assert status == 200 and body["ok"] is True
    assert marker.read_text().strip() == "ok"
    assert not lab.svc.states["ubuntu-6000"].poisoned
    assert post(lab, {"model": "homelab/auto", "messages": CODE}).headers["x-homelab-route"] == "ubuntu-6000"
    events = [e for e in read_jsonl(lab.log_dir / "recovery-events.jsonl") if e["action"] == "recover_cuda"]
    assert len(events) == 1 and events[0]["ok"] is True


async def _recover(lab: Lab, route: str, delay: float = 0.0) -> tuple[int, Any]:
    import asyncio

    await asyncio.sleep(delay)
    async with httpx.AsyncClient() as c:
        r = await c.post(lab.url + "/admin/recover-cuda", headers=AUTH, json={"route": route})
        return r.status_code, r.json()


def test_recover_cuda_refuses_the_terminal_route(lab: Lab) -> None:
    r = httpx.post(lab.url + "/admin/recover-cuda", headers=AUTH, json={"route": "spark"})
    assert r.status_code == 403 and "operator" in r.json()["error"]["message"]


def test_metrics_parse_and_count(lab: Lab) -> None:
    post(lab, {"model": "homelab/auto", "messages": CODE})
    lab.configure("ubuntu-6000", fault="http_503")
    post(lab, {"model": "homelab/auto", "messages": CODE})
    text = httpx.get(lab.url + "/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    reqs = {tuple(sorted(s.labels.items())): s.value for s in families["homelab_router_requests"].samples
            if s.name.endswith("_total")}
    assert reqs[(("bucket", "coding"), ("reason", "bucket_match"), ("route", "ubuntu-6000"), ("status", "200"))] == 1
    spills = [s for s in families["homelab_router_spills"].samples if s.name.endswith("_total")]
    assert spills[0].labels == {"from_route": "ubuntu-6000", "to_route": "win-5090"} and spills[0].value == 1
    caps = {s.labels["route"]: s.value for s in families["homelab_router_max_concurrency"].samples}
    assert caps["win-5090"] == 3
    for name in ("homelab_router_request_seconds", "homelab_router_overhead_seconds", "homelab_router_ttft_seconds",
                 "homelab_router_upstream_seconds", "homelab_router_in_flight", "homelab_router_route_healthy"):
        assert name in families
    stats = httpx.get(lab.url + "/stats").json()
    assert stats["routes"]["ubuntu-6000"]["served"] == 1
    assert "homelab_router_requests" in stats["metrics"]


SCHEMA = {"type": "object", "required": ["verdict", "confidence"], "properties": {
    "verdict": {"enum": ["negative", "positive", "ambiguous"]},
    "confidence": {"type": "number", "minimum": 0, "maximum": 1}}}


def triage_body() -> dict[str, Any]:
    return {"model": "homelab/vision", "messages": [{"role": "user", "content": "is this worth a look?"}],
            "metadata": {"homelab_task": "camera_triage"},
            "response_format": {"type": "json_schema", "json_schema": {"name": "triage", "schema": SCHEMA}}}


def content_of(r: httpx.Response) -> Any:
    return orjson.loads(r.json()["choices"][0]["message"]["content"])


def test_valid_camera_triage_passes_through(lab: Lab) -> None:
    lab.configure("ubuntu-4090", json_answer={"verdict": "negative", "confidence": 0.95})
    assert content_of(post(lab, triage_body())) == {"verdict": "negative", "confidence": 0.95}
    assert read_jsonl(lab.log_dir / "structured-validation.jsonl") == []


@pytest.mark.parametrize("answer", ["{not json", {"verdict": "maybe", "confidence": 0.5}, {"verdict": "negative"}])
def test_invalid_camera_triage_fails_closed(lab: Lab, answer: Any) -> None:
    lab.configure("ubuntu-4090", json_answer=answer)
    out = content_of(post(lab, triage_body()))
    assert out["escalate_to_spark"] is True and out["synthetic"] is True and out["reason"]
    assert out["verdict"] == "ambiguous"  # never a suppression
    lines = read_jsonl(lab.log_dir / "structured-validation.jsonl")
    assert len(lines) == 1 and lines[0]["source"] == "router"
