"""Every request on the record once, with the status its client saw; route faults fail over."""

from __future__ import annotations

import re
import threading
import time
from typing import Any

import httpx
import orjson
import pytest
import yaml

from services.router.state import RouteState
from shared.jsonl import read_jsonl
from tests.harness import ADMIN_TOKEN, Lab

CODE = [{"role": "user", "content": "Refactor this function"}]  # auto -> ubuntu-6000, failover spark


def admin(lab: Lab, method: str, path: str, **kw: Any) -> httpx.Response:
    return httpx.request(method, lab.url + path, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                         timeout=30, **kw)


def lines(lab: Lab) -> list[dict[str, Any]]:
    path = lab.log_dir / "router-decisions.jsonl"
    return read_jsonl(path) if path.exists() else []


def counted(lab: Lab) -> float:
    """Requests counted in /metrics (every status, every route)."""
    text = httpx.get(lab.url + "/metrics", timeout=10).text
    return sum(float(m) for m in re.findall(r"^homelab_router_requests_total\{[^}]*\} (\S+)$", text, re.M))


def send(lab: Lab, endpoint: str, streaming: bool) -> tuple[int, str, str]:
    """One request as a client makes it: (HTTP status, request id, body)."""
    if endpoint == "chat":
        body: dict[str, Any] = {"model": "homelab/auto", "messages": CODE, "stream": streaming}
        r = httpx.post(lab.base_url + "/chat/completions", json=body, timeout=30)
    else:
        body = {"model": "homelab/auto", "input": "Refactor this function", "stream": streaming, "store": False}
        r = httpx.post(lab.base_url + "/responses", json=body, timeout=30)
    return r.status_code, r.headers["x-request-id"], r.text


def status_seen(http_status: int, body: str, streaming: bool) -> int:
    """What the client got: the HTTP status, or a failure when a stream ended with an in-band error
    (a chat chunk carrying ``error``, a Responses ``error`` / ``response.failed`` event)."""
    if not streaming or http_status != 200:
        return http_status
    for event in body.split("\n\n"):
        data = "".join(line[5:].strip() for line in event.splitlines() if line.startswith("data:"))
        if not data or data == "[DONE]":
            continue
        ev = orjson.loads(data)
        if (isinstance(ev.get("error"), dict) and not ev.get("choices")) or ev.get("type") in ("error",
                                                                                                 "response.failed"):
            return 502
    return http_status


def heal(lab: Lab) -> None:
    for name in lab.sims:
        lab.configure(name, fault="none")
        admin(lab, "POST", f"/admin/undrain/{name}")  # vouch for a poisoned route again
    lab.bg.run(lab.svc.probe_once())  # a good probe closes any circuit


FAULTS = ["none", "http_500", "http_502", "http_503", "http_401", "http_403", "model_missing", "cut", "stall",
          "malformed", "no_done", "context_length", "content_policy", "cuda_error", "reset", "engine_dead"]


@pytest.mark.parametrize("endpoint", ["chat", "responses"])
def test_the_fault_matrix_leaves_one_line_per_request_with_the_status_the_client_saw(lab: Lab,
                                                                                    endpoint: str) -> None:
    for name in lab.sims:
        lab.configure(name, fault_delay=3, fault_after=2)
    seen: list[tuple[str, str, bool, int, str]] = []
    before = counted(lab)
    for fault in FAULTS:
        for streaming in (False, True):
            lab.configure("ubuntu-6000", fault=fault)
            status, rid, body = send(lab, endpoint, streaming)
            seen.append((fault, endpoint, streaming, status_seen(status, body, streaming), rid))
            heal(lab)
    logged = {line["request_id"]: line for line in lines(lab) if "request_id" in line}
    ids = [line["request_id"] for line in lines(lab)]
    for fault, _, streaming, status, rid in seen:
        assert ids.count(rid) == 1, (fault, streaming)
        assert logged[rid]["status"] == status, (fault, streaming, logged[rid])
    assert counted(lab) - before == len(seen)
    by_fault = {(f, s): st for f, _, s, st, _ in seen}
    # a route that is misconfigured or no longer serves the model fails over like a dead one
    for fault in ("http_401", "http_403", "model_missing", "http_500", "context_length"):
        assert by_fault[(fault, False)] == 200, fault
        rid = next(r for f, _, s, _, r in seen if f == fault and not s)
        assert logged[rid]["route"] == "spark" and logged[rid]["fallback_path"][0] == "ubuntu-6000"
    assert by_fault[("content_policy", False)] == 400  # the client's own fault goes back to it


def test_a_context_hop_is_logged_as_the_answer_the_client_got(lab: Lab) -> None:
    lab.configure("ubuntu-6000", fault="context_length")
    r = httpx.post(lab.base_url + "/chat/completions", json={"model": "homelab/auto", "messages": CODE}, timeout=20)
    assert r.status_code == 200
    line = lines(lab)[-1]
    assert (line["status"], line["route"], line["reason"]) == (200, "spark", "ubuntu-6000_context_length")
    assert "error" not in line
    assert [a["outcome"] for a in line["attempts"]] == ["context", "ok"]


@pytest.mark.parametrize("field", ["metadata", "stream", "tools", "response_format", "stream_options"])
def test_null_in_an_optional_field_is_as_if_it_were_absent(lab: Lab, field: str) -> None:
    body = {"model": "homelab/auto", "messages": CODE, field: None}
    r = httpx.post(lab.base_url + "/chat/completions", json=body, timeout=20)
    assert r.status_code == 200, r.text
    assert lines(lab)[-1]["status"] == 200
    assert field not in (lab.sims["ubuntu-6000"].last_body or {})


def test_a_client_that_leaves_during_a_continuation_is_on_the_record(lab: Lab) -> None:
    lab.configure("ubuntu-6000", fault="cut", fault_after=2)
    lab.configure("spark", per_token=0.3)  # the continuation takes its time
    body = {"model": "homelab/auto", "messages": CODE, "stream": True}
    with httpx.stream("POST", lab.base_url + "/chat/completions", json=body, timeout=20) as r:
        rid = r.headers["x-request-id"]
        got = b""
        for piece in r.iter_bytes():
            got += piece
            if got.count(b"data:") >= 4:  # the cut part and the start of the continuation
                break
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any(x.get("request_id") == rid for x in lines(lab)):
        time.sleep(0.05)
    (line,) = [x for x in lines(lab) if x.get("request_id") == rid]
    assert "client_disconnected" in line["events"]
    assert any(e.startswith("mid_stream:ubuntu-6000") for e in line["events"])
    assert lab.svc.states["spark"].in_flight == 0  # the continuation gave its slot back


def test_a_route_whose_engine_no_longer_lists_its_model_is_a_warning_until_it_answers_so(lab: Lab) -> None:
    """Engines list names their own way: a model missing from the list only warns; the answer that the
    model does not exist is what fails the route over."""
    lab.configure("win-5090", listed=["some-other-model", "and-another"])
    lab.bg.run(lab.svc.probe_once())
    up = admin(lab, "GET", "/admin/upstreams").json()["routes"]["win-5090"]
    assert up["probe_ok"] is True and up["model_listed"] is False
    r = httpx.post(lab.base_url + "/chat/completions", json={"model": "homelab/chat", "messages": CODE}, timeout=20)
    assert r.headers["x-homelab-route"] == "win-5090"  # it still answers the name
    lab.configure("win-5090", model="some-other-model", fault="model_missing")
    r = httpx.post(lab.base_url + "/chat/completions", json={"model": "homelab/chat", "messages": CODE}, timeout=20)
    assert r.status_code == 200 and r.headers["x-homelab-route"] == "spark"


def test_a_hung_recovery_command_is_killed_and_releases_the_route(lab: Lab) -> None:
    policy = dict(lab.policy)
    policy["routes"] = {k: dict(v) for k, v in lab.policy["routes"].items()}
    policy["routes"]["ubuntu-6000"].update(recover_command=["sleep", "30"], recover_timeout=0.5)
    lab.write_policy(policy)
    assert admin(lab, "POST", "/admin/reload-config").status_code == 200
    t0 = time.monotonic()
    r = admin(lab, "POST", "/admin/recover-cuda", json={"route": "ubuntu-6000"})
    assert r.status_code == 500 and "killed" in r.json()["output"]
    assert time.monotonic() - t0 < 10
    assert lab.svc.states["ubuntu-6000"].recovering is False
    r = admin(lab, "POST", "/admin/recover-cuda", json={"route": "ubuntu-6000"})
    assert r.json().get("error", {}).get("code") != "in_progress"  # the lock was released


@pytest.mark.parametrize(("key", "value"), [("terminal", False), ("base_url", "http://127.0.0.1:1/v1"),
                                            ("recover_command", ["sh", "-c", "true"])])
def test_a_shadow_candidate_cannot_change_what_runs_or_where(lab: Lab, key: str, value: Any) -> None:
    data = yaml.safe_load(lab.policy_path.read_text())
    data["routes"]["spark"][key] = value
    r = admin(lab, "POST", "/admin/shadow", content=yaml.safe_dump(data).encode())
    assert r.status_code == 400
    assert f"routes.spark.{key}" in r.json()["error"]["message"]


def test_promotion_checks_the_candidate_against_the_policy_in_force(lab: Lab) -> None:
    data = yaml.safe_load(lab.policy_path.read_text())
    data["routes"]["ubuntu-6000"]["recover_command"] = ["sh", "-c", "true"]
    lab.write_policy(data)
    assert admin(lab, "POST", "/admin/reload-config").status_code == 200
    assert admin(lab, "POST", "/admin/shadow", content=yaml.safe_dump(data).encode()).status_code == 200
    del data["routes"]["ubuntu-6000"]["recover_command"]  # the operator drops the command from the file
    lab.write_policy(data)
    assert admin(lab, "POST", "/admin/reload-config").status_code == 200
    r = admin(lab, "POST", "/admin/shadow/promote")
    assert r.status_code == 409 and "recover_command" in r.json()["error"]["message"]
    assert lab.svc.policy.routes["ubuntu-6000"].recover_command is None


@pytest.mark.policy(health={"probe_interval": 3600, "probe_timeout": 0.5, "failure_threshold": 3,
                            "circuit_cooldown": 0.5, "probe_continuation": False})
def test_half_open_admits_one_trial_at_a_time(lab: Lab) -> None:
    lab.bg.run(lab.svc.probe_once())  # no probe will close the circuit during the test
    st = lab.svc.states["win-5090"]
    gate = threading.Event()
    lab.configure("win-5090", ttft=1.0)
    # open the circuit, then let its cooldown pass
    st.circuit, st.opened_at, st.healthy = "open", time.monotonic() - 10, True
    results: list[str] = []

    def go() -> None:
        gate.wait()
        r = httpx.post(lab.base_url + "/chat/completions", json={"model": "homelab/chat", "messages": CODE},
                       timeout=20)
        results.append(r.headers["x-homelab-route"])

    threads = [threading.Thread(target=go) for _ in range(3)]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join(20)
    assert sorted(results) == ["spark", "spark", "win-5090"]  # one trial; the others went on
    assert st.circuit == "closed" and st.trial is False


def test_route_state_half_open_trial_is_one_slot() -> None:
    st = RouteState("r")
    st.circuit, st.opened_at = "open", time.monotonic() - 10
    assert st.available(1.0) and st.circuit == "half_open"
    trial = st.take()
    assert trial and not st.available(1.0)
    st.give_back(trial)
    assert st.available(1.0)


def test_stats_show_no_shadow_details_without_the_admin_token(lab: Lab) -> None:
    data = yaml.safe_load(lab.policy_path.read_text())
    assert admin(lab, "POST", "/admin/shadow", content=yaml.safe_dump(data).encode()).status_code == 200
    httpx.post(lab.base_url + "/chat/completions", json={"model": "homelab/auto", "messages": CODE}, timeout=20)
    public = httpx.get(lab.url + "/stats", timeout=10).json()["shadow"]
    assert public["decided"] == 1 and "matrix" not in public
    assert "matrix" in admin(lab, "GET", "/stats").json()["shadow"]


def test_embeddings_are_on_the_record(lab: Lab) -> None:
    r = httpx.post(lab.base_url + "/embeddings", json={"model": "x", "input": "hello"}, timeout=20)
    assert r.status_code == 200
    line = lines(lab)[-1]
    assert (line["endpoint"], line["status"], line["request_id"]) == ("/v1/embeddings", 200,
                                                                      r.headers["x-request-id"])
    assert orjson.loads(r.content)["data"]


def test_an_open_lab_listening_beyond_loopback_is_called_out(lab: Lab) -> None:
    from services.status import collect
    from shared.settings import Settings

    assert httpx.get(lab.url + "/stats", timeout=10).json()["open_to_network"] is False
    lab.svc.settings.host = "0.0.0.0"  # as `homelab-router --host 0.0.0.0` sets it (no clients: in the policy)
    assert httpx.get(lab.url + "/stats", timeout=10).json()["open_to_network"] is True
    s = lab.bg.run(collect(Settings(mqtt_url="mqtt://127.0.0.1:1", router_url=lab.base_url), lab.base_url,
                           listen=0.1))
    assert any("no clients" in w for w in s["warnings"])
