"""The router's books balance: every slot, every fault and every probe accounted for, where
capabilities meet (a retry in its backoff, a fault after the first byte, a probe while a circuit is
open, a continuation, a client that leaves), and hostile input refused at the edge."""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml

from shared.jsonl import read_jsonl
from tests.harness import ADMIN_TOKEN, Lab, free_port

CODE = [{"role": "user", "content": "Refactor this function"}]  # auto -> ubuntu-6000, failover spark


def admin(lab: Lab, method: str, path: str, **kw: Any) -> httpx.Response:
    return httpx.request(method, lab.url + path, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                         timeout=30, **kw)


def post(lab: Lab, messages: list[Any] = CODE, timeout: float = 20, **extra: Any) -> httpx.Response:
    body = {"model": extra.pop("model", "homelab/auto"), "messages": messages, **extra}
    return httpx.post(lab.base_url + "/chat/completions", json=body, timeout=timeout)


def lines(lab: Lab) -> list[dict[str, Any]]:
    path = lab.log_dir / "router-decisions.jsonl"
    return read_jsonl(path) if path.exists() else []


def routes(lab: Lab) -> dict[str, Any]:
    return dict(admin(lab, "GET", "/admin/upstreams").json()["routes"])


def wait_for(check: Callable[[], bool], seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


def reload_with(lab: Lab, change: Callable[[dict[str, Any]], None]) -> None:
    change(lab.policy)
    lab.write_policy(lab.policy)
    r = admin(lab, "POST", "/admin/reload-config")
    assert r.status_code == 200, r.text


def metric(lab: Lab, name: str) -> float:
    text = httpx.get(lab.url + "/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


# ---- one admission for every slot ---------------------------------------------------------------

def test_a_retry_takes_its_slot_through_the_same_admission(lab: Lab) -> None:
    """Cap 1, the first answer a transient 500: a second request arriving during the backoff takes the
    free slot, and the retry then finds the route full and spills — the upstream never holds 2."""
    def change(p: dict[str, Any]) -> None:
        p["routes"]["ubuntu-6000"]["max_concurrency"] = 1
        p["health"].update(retry_backoff_min=0.6, retry_backoff_max=0.6)
    reload_with(lab, change)
    lab.configure("ubuntu-6000", fault="http_500", fault_count=1, ttft=0.8)
    results: dict[str, httpx.Response] = {}
    first = threading.Thread(target=lambda: results.update(first=post(lab)))
    first.start()
    time.sleep(0.25)  # inside the first request's backoff
    results["second"] = post(lab)
    first.join()
    assert lab.sims["ubuntu-6000"].peak == 1
    assert results["second"].headers["x-homelab-route"] == "ubuntu-6000"
    assert results["first"].status_code == 200
    assert results["first"].headers["x-homelab-fallback-path"] == "ubuntu-6000,win-5090"  # spilled after the retry
    first_line = next(x for x in lines(lab) if x["request_id"] == results["first"].headers["x-request-id"])
    assert "retry_refused:ubuntu-6000:saturated" in first_line["events"]
    assert routes(lab)["ubuntu-6000"]["in_flight"] == 0


def test_embeddings_take_a_slot_and_obey_the_clients_routes(lab: Lab) -> None:
    key = "sk-camera-key"
    clients = {"camera": {"key_sha256": hashlib.sha256(key.encode()).hexdigest(), "class": "camera",
                          "routes": ["spark"]},
               "laptop": {"key_sha256": hashlib.sha256(b"sk-laptop").hexdigest()}}

    def change(p: dict[str, Any]) -> None:
        p["clients"] = clients
        p["routes"]["ubuntu-4090"]["max_concurrency"] = 1
    reload_with(lab, change)
    body = {"model": "text-embedding-3-small", "input": "hello"}
    r = httpx.post(lab.base_url + "/embeddings", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert r.status_code == 403 and "embeddings route" in r.json()["error"]["message"]
    # past the cap: a request holds the one slot (a slow chat), embeddings are refused, not piled on
    lab.configure("ubuntu-4090", ttft=1.5)
    held = threading.Thread(target=lambda: httpx.post(
        lab.base_url + "/chat/completions", headers={"Authorization": "Bearer sk-laptop"}, timeout=20,
        json={"model": "homelab/vision", "messages": [{"role": "user", "content": "hi"}]}))
    held.start()
    assert wait_for(lambda: routes(lab)["ubuntu-4090"]["in_flight"] == 1)
    r = httpx.post(lab.base_url + "/embeddings", json=body, headers={"Authorization": "Bearer sk-laptop"}, timeout=10)
    held.join()
    assert r.status_code == 503 and "at its cap of 1" in r.json()["error"]["message"]
    line = next(x for x in lines(lab) if x["request_id"] == r.headers["x-request-id"])
    assert (line["status"], line["reason"]) == (503, "ubuntu-4090_saturated")
    r = httpx.post(lab.base_url + "/embeddings", json=body, headers={"Authorization": "Bearer sk-laptop"}, timeout=10)
    assert r.status_code == 200 and routes(lab)["ubuntu-4090"]["in_flight"] == 0


# ---- a client that leaves ------------------------------------------------------------------------

def test_a_json_client_that_hangs_up_frees_its_slot_at_once(lab: Lab) -> None:
    lab.configure("ubuntu-6000", ttft=5.0)
    with pytest.raises(httpx.ReadTimeout):
        post(lab, timeout=0.5)
    # the slot is free and the upstream call cancelled well before the engine would have answered
    assert wait_for(lambda: routes(lab)["ubuntu-6000"]["in_flight"] == 0, 2.0)
    assert wait_for(lambda: lab.sims["ubuntu-6000"].active == 0, 2.0)
    line = lines(lab)[-1]
    assert line["status"] == 499 and "client_disconnected" in line["events"]
    assert len(lines(lab)) == 1


def test_an_abandoned_upload_is_a_499_not_an_internal_error(lab: Lab) -> None:
    before = metric(lab, "homelab_router_internal_errors_total")
    with socket.create_connection(("127.0.0.1", lab.port)) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 5000\r\n\r\n" + b'{"model": "homelab/auto", "mess')
        time.sleep(0.2)
    assert wait_for(lambda: bool(lines(lab)))
    line = lines(lab)[-1]
    assert line["status"] == 499 and line["reason"] == "client_disconnected"
    assert metric(lab, "homelab_router_internal_errors_total") == before


# ---- one failure path, before or after the first byte --------------------------------------------

def test_streams_cut_mid_answer_open_the_circuit(lab: Lab) -> None:
    lab.configure("ubuntu-6000", fault="cut", fault_after=3)
    for _ in range(3):
        r = post(lab, stream=True)
        assert r.status_code == 200  # continued on spark: the client got a whole answer
    st = routes(lab)["ubuntu-6000"]
    assert st["circuit"] == "open" and st["consecutive_failures"] == 3
    failures = read_jsonl(lab.log_dir / "upstream-failures.jsonl")
    assert [f["kind"] for f in failures if f["route"] == "ubuntu-6000"] == ["mid_stream"] * 3


def test_a_cuda_error_after_content_poisons_the_route(lab: Lab) -> None:
    lab.configure("ubuntu-6000", fault="cuda_mid_stream", fault_after=3)
    r = post(lab, stream=True)
    assert r.status_code == 200
    st = routes(lab)["ubuntu-6000"]
    assert st["poisoned"] and not st["healthy"]
    assert post(lab).headers["x-homelab-route"] == "spark"  # nothing more goes to a poisoned GPU


def test_success_is_recorded_when_the_answer_completes(lab: Lab) -> None:
    """Two failures, then a stream whose first bytes are fine but which is cut: that is the third."""
    lab.configure("ubuntu-6000", fault="http_502", fault_count=2)
    post(lab)  # 502, retried: 502 again -> two failures, answered by spark
    assert routes(lab)["ubuntu-6000"]["consecutive_failures"] == 2
    lab.configure("ubuntu-6000", fault="cut", fault_after=4)
    post(lab, stream=True)
    assert routes(lab)["ubuntu-6000"]["circuit"] == "open"


# ---- circuits follow the traffic -----------------------------------------------------------------

def test_a_good_probe_never_closes_an_open_circuit(lab: Lab) -> None:
    lab.configure("ubuntu-6000", fault="http_500")  # chat fails, /v1/models answers
    for _ in range(2):
        post(lab)  # 2 requests x (try + retry) = the threshold
    assert routes(lab)["ubuntu-6000"]["circuit"] == "open"
    time.sleep(1.2)  # several good probes, past the 0.5 s cooldown
    st = routes(lab)["ubuntu-6000"]
    assert st["probe_ok"] and st["circuit"] == "half_open" and st["consecutive_failures"] >= 3
    served = lab.sims["ubuntu-6000"].requests
    for _ in range(5):
        post(lab)
    # one trial reached the dead primary (it failed and reopened the circuit); the rest went to spark
    assert lab.sims["ubuntu-6000"].requests - served == 1
    lab.configure("ubuntu-6000", fault="none")
    time.sleep(0.6)
    assert post(lab).headers["x-homelab-route"] == "ubuntu-6000"  # the trial answered: closed
    assert routes(lab)["ubuntu-6000"]["circuit"] == "closed"


# ---- model names as engines list them ------------------------------------------------------------

@pytest.mark.parametrize(("listed", "route_model", "expect_listed"), [
    (["qwen2.5:latest", "llama3.2:latest"], "qwen2.5", True),  # Ollama
    (["models/tiny.gguf"], "anything-at-all", True),  # llama.cpp: its file, and it answers any name
    (["lmstudio-community/gemma-3-27b", "qwen/qwen3-8b"], "gemma-3-27b", True),  # LM Studio's publisher ids
    (["some-other-model", "and-another"], "glm-4.5-air-awq", False),  # not listed: a warning only
])
def test_a_model_is_found_as_its_engine_lists_it(lab: Lab, listed: list[str], route_model: str,
                                                 expect_listed: bool) -> None:
    lab.configure("ubuntu-6000", listed=listed, model=route_model)
    reload_with(lab, lambda p: p["routes"]["ubuntu-6000"].update(model=route_model))
    assert wait_for(lambda: routes(lab)["ubuntu-6000"]["model_listed"] is expect_listed)
    st = routes(lab)["ubuntu-6000"]
    assert st["healthy"] and st["probe_ok"]
    assert post(lab).headers["x-homelab-route"] == "ubuntu-6000"


def test_only_an_answer_that_the_model_is_missing_fails_the_route(lab: Lab) -> None:
    lab.configure("ubuntu-6000", listed=["another-model", "and-another"])
    assert wait_for(lambda: routes(lab)["ubuntu-6000"]["model_listed"] is False)
    lab.configure("ubuntu-6000", fault="model_missing")
    r = post(lab)
    assert r.status_code == 200 and r.headers["x-homelab-route"] == "spark"


# ---- capability probes: once per policy, bounded, never per probe --------------------------------

def test_a_tool_check_after_a_transport_error_is_not_resent_at_every_probe(lab: Lab) -> None:
    lab.configure("ubuntu-6000", fault="reset")  # every chat request is reset; /v1/models answers
    before = lab.sims["ubuntu-6000"].requests
    reload_with(lab, lambda p: p["health"].update(probe_tools=True))
    time.sleep(2.0)  # ten probes at 0.2 s
    assert lab.sims["ubuntu-6000"].requests - before == 1  # one try; the next is 30 s away
    check = lab.svc.states["ubuntu-6000"].checks["tools"]
    assert check.tries == 1 and check.next_at - time.monotonic() > 25


def test_the_tool_check_runs_once_per_policy(lab: Lab) -> None:
    reload_with(lab, lambda p: p["health"].update(probe_tools=True))
    def checked() -> bool:
        check = lab.svc.states["ubuntu-6000"].checks.get("tools")
        return check is not None and check.done
    assert wait_for(checked)
    asked = lab.sims["ubuntu-6000"].requests
    time.sleep(1.0)
    assert lab.sims["ubuntu-6000"].requests == asked
    reload_with(lab, lambda p: p["health"].update(probe_interval=0.25))  # a new policy: checked again
    assert wait_for(lambda: lab.sims["ubuntu-6000"].requests > asked)


def test_continuation_is_kept_when_the_check_is_not_clear(lab: Lab) -> None:
    """An engine that continues but counts the same prompt tokens either way: unverified, not off."""
    lab.configure("spark", flat_prompt_tokens=True)
    reload_with(lab, lambda p: p["health"].update(probe_continuation=True))
    verdict = lab.bg.run(lab.svc.check_continuation("spark"))
    assert verdict.startswith("unverified")
    st = routes(lab)["spark"]
    assert st["continuation_effective"] == "prefill" and st["continuation_blocked"] == {}
    assert st["continuation_check"] == verdict


# ---- max_tokens: what the route can give ----------------------------------------------------------

def long_prompt(tokens: int) -> list[dict[str, Any]]:
    return [{"role": "user", "content": "Refactor this function " + "x" * (tokens * 4)}]


def messages_request(lab: Lab, content: str, **extra: Any) -> httpx.Response:
    body = {"model": "claude-sonnet-4-5", "max_tokens": 128000, "messages": [{"role": "user", "content": content}],
            **extra}
    return httpx.post(lab.base_url + "/messages", json=body, timeout=20)


def test_a_clamp_below_min_output_tokens_hops_to_a_larger_route(lab: Lab) -> None:
    lab.configure("ubuntu-6000", max_model_len=2000)
    assert wait_for(lambda: lab.svc.states["ubuntu-6000"].max_model_len == 2000)
    r = messages_request(lab, "Refactor this function " + "word " * 1900)  # ~1,950 tokens of 2,000
    assert r.status_code == 200, r.text
    assert r.headers["x-homelab-route"] == "spark"
    assert lab.sims["spark"].last_body is not None and lab.sims["spark"].last_body["max_tokens"] >= 256
    assert lines(lab)[-1]["reason"] == "ubuntu-6000_context_length"


def test_no_route_with_room_is_a_400_naming_the_sizes(lab: Lab) -> None:
    for name in ("ubuntu-6000", "spark"):
        lab.configure(name, max_model_len=2000)
    assert wait_for(lambda: lab.svc.states["spark"].max_model_len == 2000)
    served = lab.sims["spark"].requests
    r = messages_request(lab, "Refactor this function " + "word " * 1900)
    assert r.status_code == 400
    message = r.json()["error"]["message"]
    assert "2000" in message and "min_output_tokens (256)" in message
    assert lab.sims["spark"].requests == served  # no upstream was asked for an answer it had no room for


def test_a_continuation_asks_for_what_the_failover_can_give(lab: Lab) -> None:
    lab.configure("spark", max_model_len=4096)
    assert wait_for(lambda: lab.svc.states["spark"].max_model_len == 4096)
    lab.configure("ubuntu-6000", fault="cut", fault_after=3)
    r = messages_request(lab, "Refactor this function", stream=True)
    assert r.status_code == 200 and "event: message_stop" in r.text, r.text
    sent = lab.sims["spark"].last_body
    assert sent is not None and sent["continue_final_message"] is True
    assert 256 <= sent["max_tokens"] < 4096  # not Claude Code's 128,000


def test_a_continuation_respects_the_clients_routes_and_reserved_slots(lab: Lab) -> None:
    key = "sk-code"

    def change(p: dict[str, Any]) -> None:
        p["clients"] = {"coder": {"key_sha256": hashlib.sha256(key.encode()).hexdigest(),
                                  "routes": ["ubuntu-6000", "win-5090"]}}
    reload_with(lab, change)
    lab.configure("ubuntu-6000", fault="cut", fault_after=3)
    served = lab.sims["spark"].requests
    r = httpx.post(lab.base_url + "/chat/completions", headers={"Authorization": f"Bearer {key}"}, timeout=20,
                   json={"model": "homelab/auto", "messages": CODE, "stream": True})
    assert "upstream_stream_failed" in r.text and "[DONE]" not in r.text  # never half an answer as whole
    assert lab.sims["spark"].requests == served  # spark is not the client's
    assert "continuation_refused:spark:not_allowed" in lines(lab)[-1]["events"]


# ---- native APIs keep their error shape mid-stream ----------------------------------------------

def test_a_native_messages_stream_ends_with_an_anthropic_error_event(lab: Lab) -> None:
    lab.configure("ubuntu-6000", messages=True, fault="cut", fault_after=3)
    reload_with(lab, lambda p: p["routes"]["ubuntu-6000"].update(messages="native"))
    r = messages_request(lab, "Refactor this function", stream=True, max_tokens=1000)
    events = [e for e in r.text.split("\n\n") if e.strip()]
    assert events[-1].startswith("event: error\ndata: ")
    last = orjson.loads(events[-1].split("data: ", 1)[1])
    assert last["type"] == "error" and last["error"]["type"] == "api_error"
    assert "data: {\"error\"" not in r.text


def test_a_native_responses_stream_ends_with_the_failure_event(lab: Lab) -> None:
    lab.configure("ubuntu-6000", responses=True, fault="cut", fault_after=3)
    reload_with(lab, lambda p: p["routes"]["ubuntu-6000"].update(responses="native"))
    r = httpx.post(lab.base_url + "/responses", timeout=20,
                   json={"model": "homelab/code", "input": "Refactor this function", "stream": True})
    events = [e for e in r.text.split("\n\n") if e.strip()]
    assert events[-1].startswith("event: response.failed\ndata: ")
    assert orjson.loads(events[-1].split("data: ", 1)[1])["response"]["status"] == "failed"


# ---- secrets stay behind the token ---------------------------------------------------------------

def test_secrets_stay_behind_the_admin_token(lab: Lab) -> None:
    digest = hashlib.sha256(b"sk-laptop").hexdigest()
    reload_with(lab, lambda p: p.update(clients={"laptop": {"key_sha256": digest}}))
    doc = admin(lab, "GET", "/admin/policy").json()
    assert doc["clients"]["laptop"]["key_sha256"] == "<redacted>" and digest not in str(doc)
    # a shadow candidate may not change who may use the lab
    candidate = {**lab.policy, "clients": {"laptop": {"key_sha256": hashlib.sha256(b"sk-new").hexdigest()}}}
    r = admin(lab, "POST", "/admin/shadow", content=yaml.safe_dump(candidate))
    assert r.status_code == 400 and "clients" in r.json()["error"]["message"]
    # /stats without the token: counts, no client names, no upstream address
    lab.stop_upstream("win-5090")
    assert wait_for(lambda: not routes(lab)["win-5090"]["probe_ok"])
    httpx.post(lab.base_url + "/chat/completions", headers={"Authorization": "Bearer sk-laptop"}, timeout=20,
               json={"model": "homelab/auto", "messages": CODE})
    public = httpx.get(lab.url + "/stats", timeout=10).text
    port = str(lab.sims["win-5090"].port)
    assert "laptop" not in public and port not in public and "127.0.0.1" not in public
    assert orjson.loads(public)["clients"]["requests"] >= 1
    private = httpx.get(lab.url + "/stats", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10).text
    assert "laptop" in private and port in private


# ---- hostile input is refused at the edge --------------------------------------------------------

@pytest.mark.parametrize("schema", [{"$schema": 5, "type": "object"}, {"$schema": [], "type": "object"},
                                    {"$schema": {}, "type": "object"}])
def test_a_bad_schema_uri_is_a_400_naming_the_field(lab: Lab, schema: dict[str, Any]) -> None:
    r = post(lab, response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "response_format.json_schema.schema"


def test_a_tool_schema_whose_ref_points_nowhere_is_refused_before_any_upstream(lab: Lab) -> None:
    requests = sum(s.requests for s in lab.sims.values())
    tool = {"type": "function", "function": {"name": "Write", "parameters": {
        "type": "object", "properties": {"path": {"$ref": "#/$defs/missing"}}}}}
    r = post(lab, tools=[tool])
    assert r.status_code == 400 and r.json()["error"]["param"] == "tools.0.function.parameters"
    assert "points nowhere" in r.json()["error"]["message"]
    m = httpx.post(lab.base_url + "/messages", timeout=10, json={
        "model": "claude-sonnet-4-5", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"name": "Write", "input_schema": {"$ref": "#/nowhere"}}]})
    assert m.status_code == 400 and "tools.0.input_schema" in m.json()["error"]["message"]
    assert sum(s.requests for s in lab.sims.values()) == requests


def test_a_huge_admin_body_is_refused_at_once_and_serving_goes_on(lab: Lab) -> None:
    r = admin(lab, "POST", "/admin/shadow", content=b"a: " + b"x" * (20 * 1024 * 1024))
    assert r.status_code == 413
    assert post(lab).status_code == 200


def test_yaml_nested_50000_deep_is_a_400_and_the_connection_lives(lab: Lab) -> None:
    with httpx.Client(headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30) as c:
        r = c.post(lab.url + "/admin/shadow", content=b"[" * 50_000)
        assert r.status_code == 400 and "nested deeper" in r.json()["error"]["message"]
        assert c.get(lab.url + "/admin/upstreams").status_code == 200  # the same keep-alive connection


def test_an_internal_error_is_a_500_that_keeps_the_connection(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> dict[str, Any]:
        raise RuntimeError("a bug")
    monkeypatch.setattr(lab.svc, "upstreams", broken)
    with socket.create_connection(("127.0.0.1", lab.port)) as s:
        ask = (f"GET /admin/upstreams HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\r\n"
               "GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n").encode()
        s.sendall(ask)
        s.settimeout(5)
        got = b""
        while got.count(b"HTTP/1.1 ") < 2:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
    assert got.startswith(b"HTTP/1.1 500") and b"internal_error" in got
    assert b"HTTP/1.1 200" in got  # the second request on the same connection was answered


# ---- request ids and header sizes ----------------------------------------------------------------

def test_a_clients_request_id_is_echoed_and_logged_and_long_headers_are_cut(lab: Lab) -> None:
    r = httpx.post(lab.base_url + "/chat/completions", timeout=20,
                   headers={"X-Request-Id": "trace-abc-123", "X-Claude-Code-Session-Id": "s" * 65536},
                   json={"model": "homelab/auto", "messages": CODE})
    assert r.status_code == 200 and r.headers["x-request-id"] == "trace-abc-123"
    line = lines(lab)[-1]
    assert line["request_id"] == "trace-abc-123" and len(line["session"]) == 512
    r = post(lab)  # no id given: one of the router's own
    bad = httpx.post(lab.base_url + "/chat/completions", timeout=20, headers={"X-Request-Id": "x" * 129},
                     json={"model": "homelab/auto", "messages": CODE})
    assert bad.headers["x-request-id"] != "x" * 129


# ---- /v1/models ---------------------------------------------------------------------------------

def test_homelab_auto_carries_the_largest_context_it_can_reach(lab: Lab) -> None:
    lab.configure("spark", max_model_len=131072)
    assert wait_for(lambda: lab.svc.states["spark"].max_model_len == 131072)
    models = {m["id"]: m for m in httpx.get(lab.base_url + "/models", timeout=10).json()["data"]}
    assert models["homelab/auto"]["context_length"] == 131072
    assert all("context_length" in m for m in models.values())


# ---- the lab with clients starts ----------------------------------------------------------------

def test_readiness_treats_a_401_as_up(lab: Lab) -> None:
    from services.up import _wait_ready

    reload_with(lab, lambda p: p.update(clients={"laptop": {"key_sha256": hashlib.sha256(b"k").hexdigest()}}))
    assert httpx.get(lab.base_url + "/models", timeout=10).status_code == 401
    assert lab.bg.run(_wait_ready(lab.url, seconds=2))


def test_homelab_router_finds_the_labs_admin_token(tmp_path: Path) -> None:
    import subprocess
    import sys

    state = tmp_path / "state"
    state.mkdir()
    (state / "admin_token").write_text("lab-token\n")
    port = free_port()
    policy = Path(__file__).resolve().parents[2] / "config" / "routing_policy.yaml"
    env = {"PATH": "/usr/bin:/bin", "HOMELAB_LOG_DIR": str(tmp_path / "logs"), "HOME": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "services.router.cli", "--policy", str(policy), "--port",
                             str(port)], cwd=tmp_path, env={**env, "PYTHONPATH": str(policy.parents[1])},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/admin/upstreams"
        assert wait_for(lambda: _answers(url), 20), proc.stdout.read1().decode() if proc.stdout else ""
        assert httpx.get(url, headers={"Authorization": "Bearer lab-token"}, timeout=5).status_code == 200
        assert httpx.get(url, headers={"Authorization": "Bearer wrong"}, timeout=5).status_code == 401
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def _answers(url: str) -> bool:
    try:
        httpx.get(url, timeout=1)
    except httpx.HTTPError:
        return False
    return True
