"""Policy validation: an invalid policy fails with a message naming the key and the problem."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from services.router.app import compile_policy
from services.router.errors import PolicyError
from services.router.policy import load_policy, parse_policy

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "routing_policy.example.yaml"


def example() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(FIXTURE.read_text())
    return data


def test_example_policy_loads_as_is() -> None:
    p = load_policy(FIXTURE)
    assert set(p.routes) == {"ubuntu-4090", "ubuntu-6000", "win-5090", "spark"}
    assert p.routes["ubuntu-4090"].spill is not None
    assert p.routes["ubuntu-4090"].spill.image == "spark"
    assert p.routes["spark"].terminal
    assert p.size_promotions is not None and p.size_promotions.thresholds == (8192, 24576)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["routes"]["win-5090"].update(failover="nowhere"), "routes.win-5090.failover: unknown route"),
        (lambda d: d["routes"]["spark"].update(max_concurrency=0), "routes.spark.max_concurrency"),
        (lambda d: d["routes"]["spark"].update(max_concurency=3), "routes.spark.max_concurency: Extra inputs"),
        (lambda d: d.update(image_route="win-5090"), "image_route: 'win-5090' cannot see images"),
        (lambda d: d["routes"]["ubuntu-6000"]["spill"].update(image="win-5090"),
         "routes.ubuntu-6000.spill.image: 'win-5090' cannot see images"),
        (lambda d: d["buckets"]["coding"].update(route="gpu9"), "buckets.coding.route: unknown route 'gpu9'"),
        (lambda d: d.update(tie_break=["vision", "nope"]), "tie_break: unknown bucket 'nope'"),
        (lambda d: d["size_promotions"]["table"].update(fast=["spark"]), "table.fast has 1 routes"),
        (lambda d: d["routes"]["spark"].update(failover="win-5090"), "routes.spark: a terminal route"),
        (lambda d: d["routes"]["spark"].update(aliases=["homelab/code"]), "'homelab/code' is also on route"),
        (lambda d: d.pop("routes"), "routes: Field required"),
        (lambda d: d.update(version=2), "version"),
    ],
)
def test_invalid_policy_names_the_key(mutate: Any, message: str) -> None:
    data = example()
    mutate(data)
    with pytest.raises(PolicyError) as exc:
        parse_policy(yaml.safe_dump(data), "p.yaml")
    assert message in str(exc.value)
    assert str(exc.value).startswith("p.yaml: ")


def test_bad_yaml_and_missing_file_are_clear() -> None:
    with pytest.raises(PolicyError, match="invalid YAML"):
        parse_policy("routes: [", "p.yaml")
    with pytest.raises(PolicyError, match="must be a mapping"):
        parse_policy("- 1", "p.yaml")
    with pytest.raises(PolicyError, match="cannot read the policy"):
        load_policy(Path("/nonexistent/policy.yaml"))


def test_a_failing_golden_case_rejects_the_policy() -> None:
    data = example()
    data["examples"] = [{"prompt": "refactor this function", "expect_route": "spark"}]
    with pytest.raises(PolicyError, match=r"golden cases failed.*expected \* -> spark, got coding -> ubuntu-6000"):
        compile_policy(parse_policy(yaml.safe_dump(data)))
