"""Keyword classifier: case-insensitive whole words/phrases; highest score wins, ties by tie_break."""

from __future__ import annotations

from dataclasses import dataclass

from services.router.policy import Policy


def _is_word_char(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


@dataclass(frozen=True, slots=True)
class Classification:
    bucket: str | None
    scores: dict[str, int]
    matched: dict[str, tuple[str, ...]]


class Classifier:
    """Score = how many of a bucket's keywords occur in the text as whole words or phrases."""

    def __init__(self, policy: Policy) -> None:
        self._keywords: list[tuple[str, str]] = [
            (kw.lower(), name) for name, bucket in policy.buckets.items() for kw in bucket.keywords
        ]
        order = list(policy.tie_break) + [b for b in policy.buckets if b not in policy.tie_break]
        self._rank = {b: i for i, b in enumerate(order)}

    def classify(self, text: str) -> Classification:
        low = text.lower()
        n = len(low)
        matched: dict[str, list[str]] = {}
        for kw, bucket in self._keywords:
            # str.find scans in C; the boundary check runs only on candidate hits.
            start = low.find(kw)
            klen = len(kw)
            while start != -1:
                end = start + klen
                if (start == 0 or not _is_word_char(low[start - 1])) and (
                    end == n or not _is_word_char(low[end])
                ):
                    matched.setdefault(bucket, []).append(kw)
                    break
                start = low.find(kw, start + 1)
        if not matched:
            return Classification(None, {}, {})
        scores = {b: len(kws) for b, kws in matched.items()}
        rank = self._rank
        best = min(scores, key=lambda b: (-scores[b], rank[b]))
        return Classification(best, scores, {b: tuple(k) for b, k in matched.items()})
