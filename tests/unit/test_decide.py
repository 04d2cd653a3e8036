"""The routing decision on the example policy (the contract), no I/O."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.router.decide import Decider, check_examples
from services.router.errors import RequestError, UnknownModel
from services.router.policy import load_policy

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "routing_policy.example.yaml"
SHIPPED = Path(__file__).resolve().parents[2] / "config" / "routing_policy.yaml"


@pytest.fixture(scope="module")
def router() -> Decider:
    return Decider(load_policy(FIXTURE))


def auto(router: Decider, text: str, *, image: bool = False, tokens: int | None = None, model: str = "homelab/auto",
         header: str | None = None, hint: object = None) -> tuple[str | None, str, str]:
    d = router.decide(model=model, text=text, has_image=image, tokens=tokens or len(text) // 4 + 4,
                      header_route=header, metadata_bucket=hint)
    return d.bucket, d.route, d.reason


@pytest.mark.parametrize(
    ("prompt", "bucket", "route"),
    [
        ("Describe this screenshot", "vision", "ubuntu-4090"),
        ("Send me an SMS when it finishes", "notification", "win-5090"),
        ("Classify this review into tags", "fast", "ubuntu-4090"),  # classify+tags(2) beat review(1)
        ("Tell me about volcanoes", "general_chat", "win-5090"),
        ("Please paraphrase this paragraph", "utility", "win-5090"),
        ("Give me an executive summary", "medium_summary", "win-5090"),
        ("Implement a FastAPI endpoint", "coding", "ubuntu-6000"),
        ("Plan a multi-step agent with tool use", "agentic", "ubuntu-6000"),  # 3 agentic vs plan(1)
        ("Write a threat model for the lab", "reasoning", "spark"),
        ("Review the security of this code", "reasoning", "spark"),
        ("TL;DR of this thread", "medium_summary", "win-5090"),
    ],
)
def test_each_bucket_is_reached_by_its_keywords(router: Decider, prompt: str, bucket: str, route: str) -> None:
    assert auto(router, prompt)[:2] == (bucket, route)


def test_keywords_match_whole_words_only(router: Decider) -> None:
    # "coder" / "decode" contain "code"; "pinging" contains "ping"/"ring"-like fragments.
    assert auto(router, "the decoder and the encoder") == (None, "spark", "no_match")
    assert auto(router, "bring the offering") == (None, "spark", "no_match")
    assert auto(router, "CODE!")[0] == "coding"


def test_highest_score_wins_and_ties_break_by_tie_break(router: Decider) -> None:
    # one coding keyword vs one reasoning keyword: coding comes first in tie_break
    assert auto(router, "code review")[0] == "coding"
    # two reasoning keywords beat one coding keyword
    assert auto(router, "security review of the code")[0] == "reasoning"
    # summarize briefly: fast (1) ties medium_summary (1); fast is earlier in tie_break
    assert auto(router, "summarize briefly")[0] == "fast"


def test_nothing_matched_goes_to_unknown_route(router: Decider) -> None:
    assert auto(router, "good morning") == (None, "spark", "no_match")


def test_an_image_goes_to_image_route_whatever_the_keywords_or_a_blind_pin(router: Decider) -> None:
    assert auto(router, "Refactor this function", image=True)[1:] == ("ubuntu-4090", "image_present")
    assert auto(router, "hi", image=True, model="homelab/code")[1:] == ("ubuntu-4090", "image_present")
    assert auto(router, "hi", image=True, model="gemma-4-31b")[1:] == ("ubuntu-4090", "image_present")
    assert auto(router, "hi", image=True, header="win-5090")[1:] == ("ubuntu-4090", "image_present")
    # a pin to a route that can see is kept
    assert auto(router, "hi", image=True, model="homelab/reasoning")[1:] == ("spark", "pinned")
    # an image never gets size-promoted off the image route
    assert auto(router, "classify", image=True, tokens=100_000)[1] == "ubuntu-4090"


@pytest.mark.parametrize(
    ("prompt", "tokens", "route", "reason"),
    [
        ("Tell me about Rome", 30_000, "spark", "size_promotion"),
        ("Tell me about Rome", 12_000, "win-5090", "bucket_match"),
        ("classify this", 12_000, "ubuntu-6000", "size_promotion"),
        ("classify this", 8_192, "ubuntu-4090", "bucket_match"),  # the band is <= 8K
        ("classify this", 8_193, "ubuntu-6000", "size_promotion"),
        ("classify this", 24_577, "spark", "size_promotion"),
        ("refactor this", 100_000, "ubuntu-6000", "bucket_match"),
    ],
)
def test_size_promotion_bands(router: Decider, prompt: str, tokens: int, route: str, reason: str) -> None:
    assert auto(router, prompt, tokens=tokens)[1:] == (route, reason)


def test_overrides_header_then_pin_then_metadata(router: Decider) -> None:
    assert auto(router, "refactor", header="spark")[1:] == ("spark", "header_override")
    assert auto(router, "refactor", header="utility") == ("utility", "win-5090", "header_override")
    assert auto(router, "refactor", model="homelab/chat")[1:] == ("win-5090", "pinned")
    assert auto(router, "refactor", model="qwen3.6-35b-a3b-fp8")[1:] == ("spark", "pinned")
    assert auto(router, "refactor", hint="reasoning") == ("reasoning", "spark", "metadata_hint")
    # the header wins over a pin and a hint
    assert auto(router, "x", header="win-5090", model="homelab/reasoning", hint="coding")[1] == "win-5090"


def test_a_foreign_model_name_is_classified(router: Decider) -> None:
    assert auto(router, "Implement the function", model="gpt-4o")[:2] == ("coding", "ubuntu-6000")


def test_unknown_alias_is_404_listing_valid_ones(router: Decider) -> None:
    with pytest.raises(UnknownModel) as exc:
        auto(router, "x", model="homelab/nope")
    assert exc.value.status == 404
    assert "homelab/code" in exc.value.message and "homelab/auto" in exc.value.message


def test_unknown_header_or_hint_is_a_clear_400(router: Decider) -> None:
    with pytest.raises(RequestError, match="unknown bucket or route 'gpu9'"):
        auto(router, "x", header="gpu9")
    with pytest.raises(RequestError, match="homelab_bucket"):
        auto(router, "x", hint="nope")


def test_shipped_policy_golden_cases_pass() -> None:
    r = Decider(load_policy(SHIPPED))
    assert r.policy.examples, "the shipped policy carries the lab's safety cases"
    assert check_examples(r) == []
