"""The fault table: each upstream fault x route ends on the documented path, never a truncated success."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from services.sim_upstream.server import answer_text
from shared.jsonl import read_jsonl
from tests.harness import ADMIN_TOKEN, Lab

FULL = answer_text(12)
CODE = [{"role": "user", "content": "Refactor this function"}]  # auto -> coding -> ubuntu-6000, failover spark
IMAGE = [{"role": "user", "content": [{"type": "text", "text": "who is at the door?"},
                                      {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,AA=="}}]}]


def post(lab: Lab, messages: list[Any] = CODE, **extra: Any) -> httpx.Response:
    body = {"model": extra.pop("model", "homelab/auto"), "messages": messages, **extra}
    return httpx.post(lab.base_url + "/chat/completions", json=body, timeout=20)


def stream(client: OpenAI, messages: list[Any] = CODE, model: str = "homelab/auto") -> tuple[str, dict[str, str]]:
    """Read a whole stream through the SDK; return the text and the response headers."""
    with client.chat.completions.with_streaming_response.create(
            model=model, messages=messages, stream=True) as raw:  # type: ignore[arg-type]
        text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
        return text, dict(raw.headers)


def admin(lab: Lab, method: str, path: str, **kw: Any) -> httpx.Response:
    return httpx.request(method, lab.url + path, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, **kw)


def last_decision(lab: Lab) -> dict[str, Any]:
    return read_jsonl(lab.log_dir / "router-decisions.jsonl")[-1]


# ---- before the first byte --------------------------------------------------------------------

@pytest.mark.parametrize("streaming", [False, True])
def test_refused_fails_over(lab: Lab, streaming: bool) -> None:
    lab.stop_upstream("ubuntu-6000")
    r = post(lab, stream=streaming)
    assert r.status_code == 200
    assert r.headers["x-homelab-route"] == "spark"
    assert r.headers["x-homelab-fallback-path"] == "ubuntu-6000,spark"
    assert r.headers["x-homelab-reason"] == "ubuntu-6000_down"
    if streaming:
        assert r.text.rstrip().endswith("data: [DONE]")
    else:
        assert r.json()["choices"][0]["message"]["content"] == FULL
        assert r.json()["model"] == "qwen3.6-35b-a3b-fp8"


@pytest.mark.parametrize("fault", ["http_500", "http_502", "reset"])
def test_transient_failure_gets_one_retry_then_fails_over(lab: Lab, fault: str) -> None:
    lab.configure("ubuntu-6000", fault=fault)
    r = post(lab)
    assert r.status_code == 200
    assert r.headers["x-homelab-route"] == "spark"
    assert lab.sims["ubuntu-6000"].requests == 2  # first try + one bounded retry
    assert "retry:ubuntu-6000" in last_decision(lab)["events"]


def test_transient_failure_that_heals_is_answered_by_the_same_route(lab: Lab) -> None:
    lab.configure("ubuntu-6000", fault="http_500", fault_count=1)
    r = post(lab, stream=True)
    assert r.headers["x-homelab-route"] == "ubuntu-6000"
    assert r.headers["x-homelab-fallback-path"] == "ubuntu-6000,ubuntu-6000"  # every attempt shows
    assert lab.sims["ubuntu-6000"].requests == 2
    assert lab.sims["spark"].requests == 0


@pytest.mark.parametrize("streaming", [False, True])
def test_hang_before_headers_fails_over_without_retry(lab: Lab, client: OpenAI, streaming: bool) -> None:
    lab.configure("ubuntu-6000", fault="hang")
    if streaming:
        text, headers = stream(client)
        assert text == FULL
    else:
        raw = client.chat.completions.with_raw_response.create(model="homelab/auto", messages=CODE)  # type: ignore[arg-type]
        headers = dict(raw.headers)
        assert raw.parse().choices[0].message.content == FULL
    assert headers["x-homelab-route"] == "spark"
    assert lab.sims["ubuntu-6000"].requests == 1  # a silent upstream is not retried
    failures = read_jsonl(lab.log_dir / "upstream-failures.jsonl")
    assert [f["detail"].split(":")[0] for f in failures] == ["timeout"]


def test_slow_first_token_fails_over(lab: Lab, client: OpenAI) -> None:
    lab.configure("ubuntu-6000", fault="slow_first_token")  # headers and a role chunk at once, no content
    text, headers = stream(client)
    assert text == FULL
    assert headers["x-homelab-route"] == "spark"
    assert lab.sims["ubuntu-6000"].requests == 1
    failures = read_jsonl(lab.log_dir / "upstream-failures.jsonl")
    assert "no first token" in failures[0]["detail"]


def test_busy_503_spills(lab: Lab) -> None:
    lab.configure("ubuntu-6000", fault="http_503")
    r = post(lab)
    assert (r.headers["x-homelab-route"], r.headers["x-homelab-reason"]) == ("win-5090", "ubuntu-6000_saturated")
    assert r.headers["x-homelab-fallback-path"] == "ubuntu-6000,win-5090"


def test_429_with_a_short_retry_after_is_honoured_once(lab: Lab) -> None:
    lab.configure("ubuntu-6000", fault="http_429", retry_after=0.2, fault_count=1)
    r = post(lab)
    assert r.headers["x-homelab-route"] == "ubuntu-6000"
    assert lab.sims["ubuntu-6000"].requests == 2


def test_429_with_a_long_retry_after_spills(lab: Lab) -> None:
    lab.configure("ubuntu-6000", fault="http_429", retry_after=60)
    r = post(lab)
    assert r.headers["x-homelab-route"] == "win-5090"
    assert lab.sims["ubuntu-6000"].requests == 1


def test_context_length_goes_once_to_a_larger_route(lab: Lab) -> None:
    lab.configure("ubuntu-6000", fault="context_length")
    r = post(lab)
    assert r.status_code == 200
    assert (r.headers["x-homelab-route"], r.headers["x-homelab-reason"]) == ("spark", "ubuntu-6000_context_length")
    assert lab.sims["ubuntu-6000"].requests == 1


def test_context_length_everywhere_passes_the_400_through(lab: Lab, client: OpenAI) -> None:
    lab.configure("ubuntu-6000", fault="context_length")
    lab.configure("spark", fault="context_length")
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="homelab/auto", messages=CODE)  # type: ignore[arg-type]
    assert exc.value.code == "context_length_exceeded"
    assert lab.sims["spark"].requests == 1  # one hop, not a loop


def test_content_policy_400_passes_through_untouched(lab: Lab, client: OpenAI) -> None:
    lab.configure("ubuntu-6000", fault="content_policy")
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="homelab/auto", messages=CODE)  # type: ignore[arg-type]
    assert exc.value.code == "content_policy_violation"
    assert lab.sims["ubuntu-6000"].requests == 1
    assert lab.sims["spark"].requests == 0


def test_cuda_error_poisons_the_route(lab: Lab) -> None:
    lab.configure("ubuntu-6000", fault="cuda_error")
    r = post(lab)
    assert r.headers["x-homelab-route"] == "spark"
    assert lab.sims["ubuntu-6000"].requests == 1  # a poisoned upstream is not retried
    state = admin(lab, "GET", "/admin/upstreams").json()["routes"]["ubuntu-6000"]
    assert state["poisoned"] is True and state["healthy"] is False
    assert "CUDA error" in state["last_error"]
    kinds = [f["kind"] for f in read_jsonl(lab.log_dir / "upstream-failures.jsonl")]
    assert "cuda_poisoned" in kinds
    # later requests skip it without trying
    r2 = post(lab)
    assert r2.headers["x-homelab-route"] == "spark"
    assert r2.headers["x-homelab-reason"] == "ubuntu-6000_down"
    assert lab.sims["ubuntu-6000"].requests == 1


# ---- after the first byte ---------------------------------------------------------------------

@pytest.mark.parametrize("fault", ["cut", "stall", "malformed"])
def test_mid_stream_failure_is_continued_on_a_route_that_can(lab: Lab, client: OpenAI, fault: str) -> None:
    lab.configure("ubuntu-6000", fault=fault, fault_after=3)
    text, headers = stream(client)
    assert text == FULL  # one complete answer, no gap, no repeat
    assert headers["x-homelab-route"] == "ubuntu-6000"
    prefill = lab.sims["spark"].last_body
    assert prefill is not None and prefill["continue_final_message"] is True
    assert prefill["messages"][-1]["role"] == "assistant"
    d = last_decision(lab)
    assert "continued_on:spark:prefill" in d["events"] and d["route"] == "spark"
    assert d["fallback_path"] == ["ubuntu-6000", "spark"]


@pytest.mark.parametrize("fault", ["cut", "stall", "malformed"])
def test_mid_stream_failure_without_continuation_ends_with_an_error(lab: Lab, client: OpenAI, fault: str) -> None:
    lab.configure("ubuntu-6000", fault=fault, fault_after=3)
    lab.configure("spark", continuation=False)  # the failover refuses a prefill
    received = ""
    with pytest.raises(openai.APIError) as exc:
        for chunk in client.chat.completions.create(model="homelab/auto", messages=CODE, stream=True):  # type: ignore[arg-type]
            received += chunk.choices[0].delta.content or "" if chunk.choices else ""
    assert "incomplete" in str(exc.value)
    assert received and FULL.startswith(received) and received != FULL
    # raw wire: an error event and no [DONE]
    lab.configure("ubuntu-6000", fault=fault, fault_after=3)
    r = post(lab, stream=True)
    assert '"upstream_stream_failed"' in r.text
    assert "[DONE]" not in r.text
    assert last_decision(lab)["status"] == 502


def test_missing_done_after_a_proper_finish_is_finalised(lab: Lab, client: OpenAI) -> None:
    lab.configure("ubuntu-6000", fault="no_done", fault_delay=60)  # keeps the connection open for a minute
    text, _ = stream(client)  # the client's 20 s timeout would fail this if the router waited
    assert text == FULL
    assert "finalised_without_done" in last_decision(lab)["events"]


def test_in_band_cuda_error_mid_stream_is_not_a_success(lab: Lab) -> None:
    lab.configure("ubuntu-6000", fault="malformed", fault_after=1)
    lab.configure("spark", fault="http_500")
    r = post(lab, stream=True)
    assert "[DONE]" not in r.text and "upstream_stream_failed" in r.text


# ---- caps, drain, terminal ---------------------------------------------------------------------

def test_a_burst_over_the_cap_spills_at_once(lab: Lab) -> None:
    lab.policy["routes"]["spark"]["max_concurrency"] = 10
    lab.write_policy(lab.policy)
    assert admin(lab, "POST", "/admin/reload-config").status_code == 200
    lab.configure("win-5090", ttft=1.0)
    lab.configure("spark", ttft=1.0)
    routes: list[str] = []
    lock = threading.Lock()

    def one() -> None:
        r = post(lab, [{"role": "user", "content": "please paraphrase this"}])  # utility -> win-5090
        with lock:
            routes.append(r.headers["x-homelab-route"])

    threads = [threading.Thread(target=one) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert Counter(routes) == {"win-5090": 3, "spark": 7}
    assert lab.sims["win-5090"].requests == 3  # nothing waited for a slot there


def test_image_request_at_the_eyes_cap_spills_only_to_a_route_that_sees(lab: Lab) -> None:
    lab.svc.states["ubuntu-4090"].in_flight = 8  # at its cap
    r = post(lab, IMAGE)
    assert (r.headers["x-homelab-route"], r.headers["x-homelab-reason"]) == ("spark", "ubuntu-4090_saturated")
    lab.svc.states["ubuntu-4090"].in_flight = 0
    text_r = post(lab, [{"role": "user", "content": "describe this screenshot"}])  # vision bucket, text only
    assert text_r.headers["x-homelab-route"] == "ubuntu-4090"


def test_image_request_with_the_eyes_down_goes_to_spark_never_blind(lab: Lab) -> None:
    lab.stop_upstream("ubuntu-4090")
    r = post(lab, IMAGE)
    assert r.status_code == 200 and r.headers["x-homelab-route"] == "spark"
    assert lab.sims["win-5090"].requests == 0 and lab.sims["ubuntu-6000"].requests == 0


def test_drain_moves_auto_traffic_and_leaves_pins_alone(lab: Lab) -> None:
    assert admin(lab, "POST", "/admin/drain/ubuntu-6000").status_code == 200
    r = post(lab)
    assert (r.headers["x-homelab-route"], r.headers["x-homelab-reason"]) == ("spark", "ubuntu-6000_drained")
    pinned = post(lab, model="homelab/code")
    assert pinned.headers["x-homelab-route"] == "ubuntu-6000"
    assert admin(lab, "POST", "/admin/undrain/ubuntu-6000").status_code == 200
    assert post(lab).headers["x-homelab-route"] == "ubuntu-6000"


@pytest.mark.parametrize("how", ["down", "saturated", "poisoned"])
def test_terminal_spark_never_falls_back(lab: Lab, client: OpenAI, how: str) -> None:
    if how == "down":
        lab.stop_upstream("spark")
    elif how == "saturated":
        lab.svc.states["spark"].in_flight = 6
    else:
        lab.configure("spark", fault="cuda_error")
    with pytest.raises(openai.APIStatusError) as exc:
        client.chat.completions.create(model="homelab/reasoning", messages=CODE)  # type: ignore[arg-type]
    assert exc.value.status_code == 503
    assert "spark" in exc.value.message
    assert exc.value.code == "upstream_unavailable"
    assert lab.sims["win-5090"].requests == 0 and lab.sims["ubuntu-6000"].requests == 0
    lab.svc.states["spark"].in_flight = 0


def test_everything_down_is_a_clean_503(lab: Lab, client: OpenAI) -> None:
    for name in lab.sims:
        lab.stop_upstream(name)
    with pytest.raises(openai.InternalServerError) as exc:
        client.chat.completions.create(model="homelab/auto", messages=CODE, stream=True)  # type: ignore[arg-type]
    assert exc.value.status_code == 503
    assert last_decision(lab)["fallback_path"] == ["ubuntu-6000", "spark"]


def test_a_flapping_route_loses_and_regains_traffic(lab: Lab) -> None:
    lab.stop_upstream("ubuntu-6000")
    for _ in range(3):
        assert post(lab).headers["x-homelab-route"] == "spark"
    lab.start_upstream("ubuntu-6000")
    routes = []
    for _ in range(60):  # bounded: the probe interval is 0.2 s
        routes.append(post(lab).headers["x-homelab-route"])
        if routes[-1] == "ubuntu-6000":
            break
        threading.Event().wait(0.1)
    assert routes[-1] == "ubuntu-6000"


# ---- a 503 a person can act on ----------------------------------------------------------------

def _sentences(message: str) -> list[str]:
    return [s for s in message.replace("e.g.", "eg").split(". ") if s]


def test_a_down_terminal_route_says_which_route_why_and_what_to_do(lab: Lab) -> None:
    lab.stop_upstream("spark")
    lab.bg.run(lab.svc.probe_once())
    r = post(lab, [{"role": "user", "content": "review the architecture"}])  # reasoning -> spark, terminal
    assert r.status_code == 503
    message = r.json()["error"]["message"]
    assert message.startswith("Route 'spark' cannot answer: its engine fails its health probe")
    assert "terminal" in message and "homelab upstreams" in message and "X-Homelab-Route" in message
    assert str(lab.sims["spark"].port) not in message and "127.0.0.1" not in message  # no address for a client
    assert len(_sentences(message)) == 3  # the route and why; what that means; what to do


def test_a_full_route_says_so_and_when_to_come_back(lab: Lab) -> None:
    lab.policy["routes"]["spark"]["max_concurrency"] = 1
    lab.write_policy(lab.policy)
    assert admin(lab, "POST", "/admin/reload-config").status_code == 200
    lab.configure("spark", ttft=1.5)
    busy = threading.Thread(target=lambda: post(lab, [{"role": "user", "content": "review the architecture"}]))
    busy.start()
    threading.Event().wait(0.4)
    r = post(lab, [{"role": "user", "content": "review the architecture"}])
    busy.join()
    assert r.status_code == 503 and r.headers["retry-after"] == "2"
    assert r.json()["error"]["message"] == ("Route 'spark' is busy: all 1 of its slots are taken. "
                                            "Retry in a few seconds.")


def test_a_drained_pin_says_how_to_undrain_it(lab: Lab) -> None:
    assert admin(lab, "POST", "/admin/drain/spark").status_code == 200
    r = post(lab, [{"role": "user", "content": "hi"}], model="homelab/reasoning")
    if r.status_code == 200:  # a pin passes its own drain
        assert r.headers["x-homelab-route"] == "spark"
    r = post(lab, [{"role": "user", "content": "review the architecture"}])  # auto: drained, terminal
    assert r.status_code == 503
    assert r.json()["error"]["message"] == ("Route 'spark' is drained for maintenance. Undrain it "
                                            "(`homelab undrain spark`) or pin another route with X-Homelab-Route.")
