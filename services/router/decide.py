"""The routing decision (DESIGN.md §3 steps 2-5): pure, deterministic, no I/O."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

from services.router.classify import Classifier
from services.router.errors import RequestError, UnknownModel
from services.router.policy import Policy

AUTO = "homelab/auto"


@dataclass(frozen=True, slots=True)
class Decision:
    route: str
    bucket: str | None
    reason: str
    # A pin (header naming a route, or a pinned model) passes through drain.
    pinned: bool
    scores: dict[str, int] = field(default_factory=dict)
    matched: dict[str, tuple[str, ...]] = field(default_factory=dict)


class Decider:
    """A policy compiled for fast decisions (steps 2-5); rebuilt whenever the policy is reloaded."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.text: str | None = None  # the policy's YAML, when it was compiled from text (shared with replicas)
        self.classifier = Classifier(policy)
        self.aliases = policy.alias_map()
        self.globs = policy.alias_globs()
        self.served = policy.served_models()

    def catalog(self) -> list[str]:
        return [AUTO, *self.aliases, *self.served]

    def alias(self, model: str) -> str | None:
        """The route an alias pins: an exact name first, then the longest matching pattern."""
        route = self.aliases.get(model)
        if route is None:
            route = next((r for pattern, r in self.globs if fnmatch.fnmatchcase(model, pattern)), None)
        return route

    def decide(
        self,
        *,
        model: str,
        text: str,
        has_image: bool,
        tokens: int,
        header_route: str | None = None,
        metadata_bucket: object = None,
    ) -> Decision:
        p = self.policy
        decision: Decision | None = None
        # Step 2: overrides, first that applies.
        if header_route:
            if header_route in p.routes:
                decision = Decision(header_route, None, "header_override", pinned=True)
            elif header_route in p.buckets:
                decision = Decision(p.buckets[header_route].route, header_route, "header_override", False)
            else:
                raise RequestError(
                    f"X-Homelab-Route: unknown bucket or route '{header_route}'. "
                    f"Buckets: {', '.join(p.buckets)}; routes: {', '.join(p.routes)}",
                    param="X-Homelab-Route",
                )
        elif (pinned := self.alias(model)) is not None:
            decision = Decision(pinned, None, "pinned", pinned=True)
        elif model in self.served:
            decision = Decision(self.served[model], None, "pinned", pinned=True)
        elif model.startswith("homelab/") and model != AUTO:
            raise UnknownModel(model, self.catalog())
        elif metadata_bucket is not None:
            if not isinstance(metadata_bucket, str) or metadata_bucket not in p.buckets:
                raise RequestError(
                    f"metadata.homelab_bucket: unknown bucket '{metadata_bucket}'. "
                    f"Buckets: {', '.join(p.buckets)}",
                    param="metadata.homelab_bucket",
                )
            decision = Decision(p.buckets[metadata_bucket].route, metadata_bucket, "metadata_hint", False)

        if decision is not None:
            # Step 4 for overrides: a blind pin is overridden; a pin that can see is kept.
            if has_image and not p.routes[decision.route].vision:
                return Decision(p.image_route, decision.bucket, "image_present", decision.pinned)
            return decision

        # Step 3: classify (homelab/auto, or any model name we do not know, e.g. gpt-4o).
        c = self.classifier.classify(text)
        if has_image:
            return Decision(p.image_route, c.bucket, "image_present", False, c.scores, c.matched)
        if c.bucket is None:
            return Decision(p.unknown_route, None, "no_match", False, c.scores, c.matched)
        route = p.buckets[c.bucket].route
        reason = "bucket_match"
        # Step 5: size promotion (auto-routed, text-only).
        sp = p.size_promotions
        if sp is not None and c.bucket in sp.table:
            promoted = sp.table[c.bucket][sp.band(tokens)]
            if promoted != route:
                route, reason = promoted, "size_promotion"
        return Decision(route, c.bucket, reason, False, c.scores, c.matched)


def check_examples(router: Decider) -> list[str]:
    """Run the policy's golden cases; return one message per failure (empty: all pass)."""
    failures = []
    for i, ex in enumerate(router.policy.examples):
        try:
            d = router.decide(
                model=ex.model or AUTO,
                text=ex.prompt,
                has_image=ex.image,
                tokens=ex.tokens if ex.tokens is not None else len(ex.prompt) // 4 + 4,
            )
        except RequestError as exc:
            failures.append(f"examples[{i}] {ex.prompt!r}: {exc.message}")
            continue
        if d.route != ex.expect_route or (ex.expect_bucket is not None and d.bucket != ex.expect_bucket):
            failures.append(
                f"examples[{i}] {ex.prompt!r}: expected {ex.expect_bucket or '*'} -> {ex.expect_route}, "
                f"got {d.bucket} -> {d.route} ({d.reason})"
            )
    return failures
