"""Router round two: retries only for what is transient, continuation modes, honest usage, 503 as failure,
logging that cannot fail a request, a JSON 500 with the request id, the shadow policy."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from openai import OpenAI

from services.sim_upstream.server import answer_text, prompt_tokens
from shared.jsonl import read_jsonl
from tests.harness import ADMIN_TOKEN, POLICY, ROOT, Lab

FULL = answer_text(12)
CODE = [{"role": "user", "content": "Refactor this function"}]  # auto -> coding -> ubuntu-6000, failover spark


def post(lab: Lab, messages: list[Any] = CODE, **extra: Any) -> httpx.Response:
    body = {"model": extra.pop("model", "homelab/auto"), "messages": messages, **extra}
    return httpx.post(lab.base_url + "/chat/completions", json=body, timeout=20)


def admin(lab: Lab, method: str, path: str, **kw: Any) -> httpx.Response:
    return httpx.request(method, lab.url + path, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, **kw)


def decisions(lab: Lab) -> list[dict[str, Any]]:
    return read_jsonl(lab.log_dir / "router-decisions.jsonl")


def reload_with(lab: Lab, **health: Any) -> None:
    lab.policy["health"].update(health)
    lab.write_policy(lab.policy)
    assert admin(lab, "POST", "/admin/reload-config").status_code == 200


def wait_for(cond: Any, what: str, tries: int = 100) -> None:
    for _ in range(tries):  # bounded: 100 x 0.05 s
        if cond():
            return
        threading.Event().wait(0.05)
    raise AssertionError(f"timed out waiting for {what}")


# ---- 1. retry only what is transient -----------------------------------------------------------

@pytest.mark.parametrize("streaming", [False, True])
def test_silent_upstream_that_hangs_up_is_not_retried(lab: Lab, streaming: bool) -> None:
    reload_with(lab, silent_after=0.3)
    lab.configure("ubuntu-6000", fault="silent_reset", fault_delay=0.6)  # says nothing for 0.6 s, then hangs up
    r = post(lab, stream=streaming)
    assert r.status_code == 200 and r.headers["x-homelab-route"] == "spark"
    assert lab.sims["ubuntu-6000"].requests == 1  # no retry: straight to the failover
    assert r.headers["x-homelab-fallback-path"] == "ubuntu-6000,spark"
    d = decisions(lab)[-1]
    assert "retry:ubuntu-6000" not in d.get("events", [])
    assert d["attempts"][0]["detail"].startswith("silent:")


def test_quick_reset_gets_one_retry_after_a_backoff(lab: Lab) -> None:
    lab.configure("ubuntu-6000", fault="reset", fault_count=1)
    r = post(lab)
    assert r.status_code == 200 and r.headers["x-homelab-route"] == "ubuntu-6000"
    assert r.headers["x-homelab-fallback-path"] == "ubuntu-6000,ubuntu-6000"
    first, second = lab.sims["ubuntu-6000"].arrivals
    assert second - first >= 0.05  # the jittered backoff's floor, not 1 ms
    d = decisions(lab)[-1]
    assert d["events"] == ["retry:ubuntu-6000"]
    assert d["attempts"][0]["outcome"] == "fail" and 50 <= d["attempts"][0]["backoff_ms"] <= 250
    assert d["attempts"][1]["outcome"] == "ok"


# ---- 2. continuation modes ---------------------------------------------------------------------

def _spark_continuation(lab: Lab, modes: Any) -> None:
    lab.policy["routes"]["spark"]["continuation"] = modes
    lab.write_policy(lab.policy)
    assert admin(lab, "POST", "/admin/reload-config").status_code == 200


def test_prefill_rejected_falls_back_to_instruct(lab: Lab, client: OpenAI) -> None:
    _spark_continuation(lab, ["prefill", "instruct"])
    lab.configure("ubuntu-6000", fault="cut", fault_after=3)
    lab.configure("spark", continuation=False)  # answers a prefill with 400
    r = post(lab, stream=True)
    assert r.text.rstrip().endswith("data: [DONE]") and "error" not in r.text
    chunks = [yaml.safe_load(line[6:]) for line in r.text.splitlines()
              if line.startswith("data: {")]
    text = "".join((c["choices"][0]["delta"].get("content") or "") for c in chunks if c["choices"])
    assert text == FULL  # one complete answer: the cut part and the rest, nothing repeated
    last = lab.sims["spark"].last_body
    assert last is not None and last["messages"][-2]["role"] == "assistant"
    assert last["messages"][-1]["role"] == "user" and "exactly where it stopped" in last["messages"][-1]["content"]
    d = decisions(lab)[-1]
    assert "continuation_rejected:spark:prefill" in d["events"] and "continued_on:spark:instruct" in d["events"]
    assert [a.get("mode") for a in d["attempts"]] == [None, "prefill", "instruct"]


def test_instruct_only_route_continues_through_the_sdk(lab: Lab, client: OpenAI) -> None:
    _spark_continuation(lab, "instruct")
    lab.configure("ubuntu-6000", fault="stall", fault_after=4)
    text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="homelab/auto", messages=CODE, stream=True) if c.choices)  # type: ignore[arg-type]
    assert text == FULL
    assert "continue_final_message" not in (lab.sims["spark"].last_body or {})


def test_prefill_rejected_without_instruct_names_the_original_fault(lab: Lab) -> None:
    lab.configure("ubuntu-6000", fault="cut", fault_after=3)
    lab.configure("spark", continuation=False)
    r = post(lab, stream=True)
    assert "[DONE]" not in r.text
    err = [yaml.safe_load(line[6:]) for line in r.text.splitlines() if '"error"' in line][-1]["error"]
    assert err["code"] == "upstream_stream_failed"
    assert "ubuntu-6000" in err["message"] and "stream_cut" in err["message"]
    assert "http_400" not in err["message"] and "not supported" not in err["message"]  # never the failover's 400


def test_continuation_true_still_means_prefill(lab: Lab) -> None:
    state = admin(lab, "GET", "/admin/upstreams").json()["routes"]
    assert state["spark"]["continuation_declared"] == ["prefill"]
    assert state["spark"]["continuation_effective"] == "prefill"
    assert state["win-5090"]["continuation_effective"] == "none"


# ---- 3. honest usage ---------------------------------------------------------------------------

def test_usage_after_a_continuation_covers_the_whole_answer(lab: Lab, client: OpenAI) -> None:
    lab.configure("ubuntu-6000", fault="cut", fault_after=3)
    chunks = list(client.chat.completions.create(model="homelab/auto", messages=CODE, stream=True,  # type: ignore[arg-type]
                                                 stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == FULL
    usage = [c.usage for c in chunks if c.usage is not None]
    assert len(usage) == 1  # one usage chunk, for the whole answer
    words = len(FULL.split(" "))  # the simulated engine streams one word a token
    assert usage[0].completion_tokens == words  # was the continuation's own 12
    assert usage[0].prompt_tokens == prompt_tokens(CODE, open_last=False)  # the original request's
    assert usage[0].total_tokens == usage[0].prompt_tokens + words
    d = decisions(lab)[-1]
    assert d["usage"]["completion_tokens"] == words
    assert d["attempts"][0]["usage"] == {"completion_tokens": 3, "counted": True}
    assert d["attempts"][1]["usage"]["completion_tokens"] == words - 3


def test_no_usage_chunk_unless_asked(lab: Lab) -> None:
    lab.configure("ubuntu-6000", fault="cut", fault_after=3)
    r = post(lab, stream=True)
    assert '"usage"' not in r.text and r.text.rstrip().endswith("[DONE]")


# ---- 4. 503 with room is a failure -------------------------------------------------------------

def test_an_upstream_that_503s_everything_opens_its_circuit_and_a_trial_closes_it(lab: Lab) -> None:
    reload_with(lab, probe_interval=60)  # probes by hand below: no race with the background loop
    threading.Event().wait(0.6)  # the last fast probe has run
    lab.configure("ubuntu-6000", fault="http_503", fault_probes=True)
    for _ in range(3):  # failure_threshold
        r = post(lab)
        assert (r.headers["x-homelab-route"], r.headers["x-homelab-reason"]) == ("win-5090", "ubuntu-6000_saturated")
    assert lab.svc.states["ubuntu-6000"].circuit == "open"
    lab.bg.run(lab.svc.probe_once())  # the dead upstream 503s its probe too
    seen = lab.sims["ubuntu-6000"].requests
    threading.Event().wait(1.0)  # past the circuit cooldown (0.5 s): the failing probe keeps it open
    for _ in range(5):
        r = post(lab)
        assert r.headers["x-homelab-route"] == "spark" and r.headers["x-homelab-reason"] == "ubuntu-6000_down"
    assert lab.sims["ubuntu-6000"].requests == seen  # nobody paid a 503 round trip during the outage
    lab.configure("ubuntu-6000", fault="none")
    lab.bg.run(lab.svc.probe_once())
    # a good probe lets the circuit half-open after its cooldown (one trial at a time); it never closes it
    assert lab.svc.states["ubuntu-6000"].circuit == "open"
    assert admin(lab, "GET", "/admin/upstreams").json()["routes"]["ubuntu-6000"]["circuit"] == "half_open"
    assert post(lab).headers["x-homelab-route"] == "ubuntu-6000"  # the trial answered: closed
    assert lab.svc.states["ubuntu-6000"].circuit == "closed"


def test_a_503_at_the_cap_is_busy_not_a_failure(lab: Lab) -> None:
    lab.configure("ubuntu-6000", fault="http_503")
    lab.svc.states["ubuntu-6000"].in_flight = 3  # with this request, the route is at its cap of 4
    try:
        for _ in range(4):
            assert post(lab).headers["x-homelab-route"] == "win-5090"
        assert lab.svc.states["ubuntu-6000"].circuit == "closed"
        assert lab.svc.states["ubuntu-6000"].failures == 0
    finally:
        lab.svc.states["ubuntu-6000"].in_flight = 0


# ---- 5. nothing outside the request path fails a request ---------------------------------------

def test_unwritable_log_dir_at_start_is_exit_2_with_a_message(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    env = {**os.environ, "HOMELAB_LOG_DIR": str(blocker / "logs")}
    p = subprocess.run([sys.executable, "-m", "services.router.cli", "--policy", str(POLICY), "--port", "1"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    assert "log directory" in p.stderr and "HOMELAB_LOG_DIR" in p.stderr


@pytest.mark.parametrize("trouble", ["disk_full", "removed_dir"])
def test_failed_log_writes_never_fail_requests(lab: Lab, client: OpenAI, tmp_path: Path, trouble: str) -> None:
    w = lab.svc.decisions
    w.close()
    if trouble == "disk_full":
        w.path = Path("/dev/full")  # every write: ENOSPC
    else:
        blocker = tmp_path / "gone"
        blocker.write_text("")
        w.path = blocker / "router-decisions.jsonl"  # its folder cannot exist
    for i in range(20):
        if i % 2:
            assert client.chat.completions.create(model="homelab/auto", messages=CODE).choices  # type: ignore[arg-type]
        else:
            assert "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
                model="homelab/auto", messages=CODE, stream=True) if c.choices) == FULL  # type: ignore[arg-type]
    assert w.errors == 20
    metrics = httpx.get(lab.url + "/metrics").text
    assert 'homelab_log_write_errors_total{log="' + w.path.name + '"} 20.0' in metrics
    assert httpx.get(lab.url + "/stats").json()["logs"][w.path.name]["write_errors"] == 20
    # the disk comes back: the next line is written
    w.path = lab.log_dir / "router-decisions.jsonl"
    client.chat.completions.create(model="homelab/auto", messages=CODE)  # type: ignore[arg-type]
    assert decisions(lab)[-1]["status"] == 200


def test_an_unexpected_exception_is_a_json_500_with_the_request_id(lab: Lab, client: OpenAI) -> None:
    assert lab.svc.dispatcher is not None

    async def broken(ctx: Any) -> Any:
        raise RuntimeError("a bug")

    real = lab.svc.dispatcher.chat
    lab.svc.dispatcher.chat = broken  # type: ignore[method-assign]
    try:
        r = post(lab)
        assert r.status_code == 500 and r.headers["content-type"] == "application/json"
        err = r.json()["error"]
        assert err["code"] == "internal_error" and err["request_id"] == r.headers["x-request-id"]
        assert r.headers["x-request-id"] in err["message"]
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model="homelab/auto", messages=CODE)  # type: ignore[arg-type]
    finally:
        lab.svc.dispatcher.chat = real  # type: ignore[method-assign]
    assert post(lab).status_code == 200


# ---- 6. the shadow policy ----------------------------------------------------------------------

def _candidate(lab: Lab, **change: Any) -> str:
    data = yaml.safe_load(yaml.safe_dump(lab.policy))
    data["buckets"]["coding"]["route"] = "spark"  # the change being tried: coding to the senior model
    data["size_promotions"]["table"]["coding"] = ["spark", "spark", "spark"]
    data["examples"] = [e for e in data["examples"] if e.get("expect_bucket") != "coding"]
    for k, v in change.items():
        data[k] = v
    return yaml.safe_dump(data, sort_keys=False)


def test_shadow_policy_matrix_promote_and_drop(lab: Lab) -> None:
    r = admin(lab, "POST", "/admin/shadow", content=_candidate(lab).encode())
    assert r.status_code == 200, r.text
    for _ in range(3):
        assert post(lab).headers["x-homelab-route"] == "ubuntu-6000"  # the live policy still serves
    post(lab, [{"role": "user", "content": "Review the security of this code"}])  # both say spark
    public = httpx.get(lab.url + "/stats").json()["shadow"]
    assert public["decided"] == 4 and public["agreed"] == 1
    assert "matrix" not in public  # request ids and keywords only with the admin token
    stats = admin(lab, "GET", "/stats").json()["shadow"]
    assert stats["decided"] == 4 and stats["agreed"] == 1
    (row,) = stats["matrix"]
    assert (row["live_route"], row["candidate_route"], row["count"]) == ("ubuntu-6000", "spark", 3)
    rids = [d["request_id"] for d in decisions(lab)[-4:-1]]
    assert [x["request_id"] for x in row["recent"]] == rids
    assert row["recent"][0]["keywords"] == ["function", "refactor"]
    assert "Refactor this function" not in str(stats)  # never prompt text
    assert 'homelab_router_shadow_decisions_total{candidate_route="spark",live_route="ubuntu-6000"} 3.0' \
        in httpx.get(lab.url + "/metrics").text
    assert lab.sims["spark"].requests == 1  # the shadow called no upstream
    # promote: the candidate is the live policy now
    assert admin(lab, "POST", "/admin/shadow/promote").status_code == 200
    assert post(lab).headers["x-homelab-route"] == "spark"
    assert httpx.get(lab.url + "/stats").json()["shadow"] is None
    assert admin(lab, "POST", "/admin/shadow/promote").status_code == 409
    assert admin(lab, "POST", "/admin/shadow", content=_candidate(lab).encode()).status_code == 200
    assert admin(lab, "DELETE", "/admin/shadow").status_code == 200
    assert httpx.get(lab.url + "/stats").json()["shadow"] is None


def test_invalid_shadow_candidate_is_a_400_naming_the_key(lab: Lab) -> None:
    bad = _candidate(lab, unknown_route="nowhere")
    r = admin(lab, "POST", "/admin/shadow", content=bad.encode())
    assert r.status_code == 400 and "unknown_route" in r.json()["error"]["message"]
    golden = yaml.safe_load(_candidate(lab))
    golden["examples"].append({"prompt": "Refactor this function", "expect_route": "ubuntu-6000"})
    r = admin(lab, "POST", "/admin/shadow", content=yaml.safe_dump(golden).encode())
    assert r.status_code == 400 and "golden" in r.json()["error"]["message"]
    assert httpx.get(lab.url + "/stats").json()["shadow"] is None


def test_shadow_candidate_bringing_a_command_is_refused(lab: Lab) -> None:
    data = yaml.safe_load(_candidate(lab))
    data["routes"]["ubuntu-6000"]["recover_command"] = ["sh", "-c", "touch /tmp/pwned"]
    r = admin(lab, "POST", "/admin/shadow", content=yaml.safe_dump(data).encode())
    assert r.status_code == 400
    assert "routes.ubuntu-6000.recover_command" in r.json()["error"]["message"]
    assert httpx.post(lab.url + "/admin/shadow", content=_candidate(lab).encode()).status_code in (401, 403)


def test_homelab_shadow_command(lab: Lab, tmp_path: Path) -> None:
    cand = tmp_path / "candidate.yaml"
    cand.write_text(_candidate(lab))
    env = {**os.environ, "HOMELAB_ROUTER_URL": lab.base_url, "HOMELAB_ADMIN_TOKEN": ADMIN_TOKEN}

    def homelab(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "services.cli", "shadow", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=60)

    assert homelab("load", str(cand)).returncode == 0
    post(lab)
    shown = homelab("show")
    assert shown.returncode == 0
    assert "ubuntu-6000" in shown.stdout and "spark" in shown.stdout and "refactor" in shown.stdout
    cand.write_text("version: 1\nroutes: {}\n")
    refused = homelab("load", str(cand))
    assert refused.returncode == 1 and "unknown_route: Field required" in refused.stderr


@pytest.mark.parametrize("echo", ["restart", "tail"])
def test_an_instruct_continuation_that_repeats_itself_is_trimmed(lab: Lab, client: OpenAI, echo: str) -> None:
    _spark_continuation(lab, "instruct")
    lab.configure("spark", instruct_echo=echo)  # the model starts over, or echoes the last words first
    lab.configure("ubuntu-6000", fault="cut", fault_after=6)
    text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="homelab/auto", messages=CODE, stream=True) if c.choices)  # type: ignore[arg-type]
    assert text == FULL  # one answer: nothing said twice


def test_repeat_trim_keeps_a_continuation_that_does_not_repeat() -> None:
    from services.router.continuation import RepeatTrim

    partial = "The simulated answer: word0 word1 word2"
    t = RepeatTrim(partial)
    rest = " word3 word4 word5 word6 word7 word8 word9 word10 word11."
    out = "".join(t.feed(" " + word) for word in rest.split(" ")[1:]) + t.feed("", final=True)
    assert out == rest
    long_partial = "x" * 300 + " and so on"
    t = RepeatTrim(long_partial)
    restart = [long_partial[i:i + 7] for i in range(0, len(long_partial), 7)] + [" then more."]
    assert "".join(t.feed(p) for p in restart) + t.feed("", final=True) == " then more."
