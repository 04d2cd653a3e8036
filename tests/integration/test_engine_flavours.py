"""Each engine's own error bodies, status codes and stream endings (vLLM, llama.cpp, LM Studio, Ollama),
recognised by content; continuation capability checked, not trusted."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from services.sim_upstream.server import ENGINES, answer_text
from shared.jsonl import read_jsonl
from tests.harness import ADMIN_TOKEN, Lab

FULL = answer_text(12)
CODE = [{"role": "user", "content": "Refactor this function"}]  # auto -> ubuntu-6000, failover spark


def post(lab: Lab, **extra: Any) -> httpx.Response:
    body = {"model": "homelab/auto", "messages": CODE, **extra}
    return httpx.post(lab.base_url + "/chat/completions", json=body, timeout=20)


def admin(lab: Lab, method: str, path: str) -> httpx.Response:
    return httpx.request(method, lab.url + path, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})


@pytest.mark.parametrize("streaming", [False, True])
@pytest.mark.parametrize("engine", ENGINES)
def test_context_error_of_every_engine_goes_to_the_context_route(lab: Lab, engine: str, streaming: bool) -> None:
    lab.configure("ubuntu-6000", engine=engine, fault="context_length")
    r = post(lab, stream=streaming)
    assert r.status_code == 200
    assert r.headers["x-homelab-route"] == "spark"
    if streaming:
        assert r.text.rstrip().endswith("data: [DONE]")
    else:
        assert r.json()["choices"][0]["message"]["content"] == FULL
    if not (engine == "llamacpp" and streaming):  # an empty 200 says nothing about why: a plain failover
        assert r.headers["x-homelab-reason"] == "ubuntu-6000_context_length"


def test_lmstudio_context_error_with_http_200_is_not_an_answer(lab: Lab) -> None:
    lab.configure("ubuntu-6000", engine="lmstudio", fault="context_length", context_status=200)
    for streaming in (False, True):
        r = post(lab, stream=streaming)
        assert r.status_code == 200 and r.headers["x-homelab-route"] == "spark"
        assert r.headers["x-homelab-reason"] == "ubuntu-6000_context_length"
        assert "choices" in (r.json() if not streaming else r.text)


@pytest.mark.parametrize("engine", ["lmstudio", "ollama", "vllm"])
def test_context_error_with_nowhere_to_go_is_an_openai_400(lab: Lab, engine: str) -> None:
    for name in ("ubuntu-6000", "spark"):
        lab.configure(name, engine=engine, fault="context_length")
    r = post(lab)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == "context_length_exceeded" and isinstance(err["message"], str) and err["message"]


def test_llamacpp_empty_200_stream_is_a_failure_not_an_empty_success(lab: Lab) -> None:
    lab.configure("ubuntu-6000", engine="llamacpp", fault="context_length", fault_count=1)
    r = post(lab, stream=True)
    assert r.headers["x-homelab-route"] == "spark" and FULL.split()[-1] in r.text
    failures = read_jsonl(lab.log_dir / "upstream-failures.jsonl")
    assert failures[0]["detail"].startswith("stream_cut")
    # the next request on the route is answered by it
    r = post(lab, stream=True)
    assert r.headers["x-homelab-route"] == "ubuntu-6000" and r.text.rstrip().endswith("[DONE]")


def test_vllm_engine_death_json_is_retried_then_fails_over(lab: Lab) -> None:
    lab.configure("ubuntu-6000", engine="vllm", fault="engine_dead")
    r = post(lab)
    assert r.status_code == 200 and r.headers["x-homelab-route"] == "spark"
    assert lab.sims["ubuntu-6000"].requests == 2  # a 500: one retry, then the failover


def test_vllm_error_event_followed_by_done_is_not_a_clean_end(lab: Lab) -> None:
    lab.configure("ubuntu-6000", engine="vllm", fault="engine_dead", fault_after=3)
    lab.configure("spark", continuation=False)
    r = post(lab, stream=True)
    assert "[DONE]" not in r.text and "upstream_stream_failed" in r.text
    assert "EngineCore" in r.text  # the original fault is named
    lab.configure("spark", continuation=True)
    r = post(lab, stream=True)  # with a route that continues: one complete answer
    text = "".join(httpx.Response(200, content=line[6:]).json()["choices"][0]["delta"].get("content") or ""
                   for line in r.text.splitlines() if line.startswith("data: {") and '"choices":[{' in line)
    assert text == FULL and r.text.rstrip().endswith("[DONE]")


@pytest.mark.parametrize("message", ["CUDA error: an illegal memory access was encountered",
                                     "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB",
                                     "cuBLAS failed: CUBLAS_STATUS_EXECUTION_FAILED"])
def test_cuda_poisoning_is_recognised_in_any_wording(lab: Lab, message: str) -> None:
    from services.router.outcomes import error_kind

    assert error_kind(message) == "cuda"
    assert error_kind("This model's maximum context length is 32768 tokens.") == "context"
    assert error_kind("the prompt is longer than the context length currently available") == "context"
    assert error_kind("n_keep: 13055>= n_ctx: 4096") == "context"
    assert error_kind("blocked", "content_policy_violation") == "content_policy"
    assert error_kind("Internal server error") == "other"


# ---- continuation: checked, not trusted ---------------------------------------------------------

@pytest.mark.parametrize(("engine", "declared", "effective"), [
    ("vllm", ["prefill"], "prefill"),
    ("llamacpp", ["prefill"], "none"),
    ("llamacpp", ["prefill", "instruct"], "instruct"),
    ("lmstudio", ["prefill", "instruct"], "instruct"),
])
def test_continuation_capability_is_checked(lab: Lab, engine: str, declared: list[str], effective: str) -> None:
    lab.configure("spark", engine=engine)
    lab.policy["routes"]["spark"]["continuation"] = declared
    lab.policy["health"]["probe_continuation"] = True
    lab.write_policy(lab.policy)
    assert admin(lab, "POST", "/admin/reload-config").status_code == 200
    verdict = lab.bg.run(lab.svc.check_continuation("spark"))
    state = admin(lab, "GET", "/admin/upstreams").json()["routes"]["spark"]
    assert state["continuation_effective"] == effective, verdict
    if engine == "vllm":
        assert verdict == "continues" and state["continuation_blocked"] == {}
    else:
        assert "new turn" in state["continuation_blocked"]["prefill"]
    checks = [r for r in read_jsonl(lab.log_dir / "recovery-events.jsonl") if r.get("action") == "continuation_check"]
    assert checks[-1]["route"] == "spark" and checks[-1]["continuation_effective"] == effective


def test_a_route_that_cannot_continue_is_not_spliced(lab: Lab) -> None:
    """llama.cpp-style: a prefill starts a new turn. Once detected, a cut answer is never spliced with a
    fresh one; with instruct allowed it is finished by instruction."""
    lab.configure("spark", engine="llamacpp")
    lab.policy["health"]["probe_continuation"] = True
    lab.write_policy(lab.policy)
    assert admin(lab, "POST", "/admin/reload-config").status_code == 200
    lab.bg.run(lab.svc.check_continuation("spark"))
    lab.configure("ubuntu-6000", fault="cut", fault_after=3)
    r = post(lab, stream=True)
    assert "[DONE]" not in r.text and "upstream_stream_failed" in r.text  # not "The simulated answer: The simulated…"
    assert r.text.count("simulated") == 1


def test_the_check_runs_at_start_when_the_route_answers(lab: Lab) -> None:
    lab.configure("spark", engine="llamacpp")
    lab.policy["health"]["probe_continuation"] = True
    lab.write_policy(lab.policy)
    assert admin(lab, "POST", "/admin/reload-config").status_code == 200

    async def settled() -> None:
        for _ in range(100):
            if "prefill" in lab.svc.states["spark"].continuation_blocked:
                return
            await asyncio.sleep(0.05)

    lab.bg.run(settled())
    assert admin(lab, "GET", "/admin/upstreams").json()["routes"]["spark"]["continuation_effective"] == "none"
