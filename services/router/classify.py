"""Keyword classifier: case-insensitive whole words/phrases; highest score wins, ties by tie_break.

Speed matters (it runs on every auto-routed request): the text is lowered, encoded and split into
words once with C-level bytes operations; a one-word keyword is a set lookup, a phrase is looked up
in the space-joined words only when all its words are present. Punctuation separates words, so a
phrase such as "tl;dr" matches "TL;DR" and "tl dr".
"""

from __future__ import annotations

from dataclasses import dataclass

from services.router.policy import Policy

# Bytes that are not part of a word become spaces: ASCII letters, digits, "_" and every
# non-ASCII byte (UTF-8 letters) are word bytes.
_WORD = set(b"abcdefghijklmnopqrstuvwxyz0123456789_") | set(range(0x80, 0x100))
_TABLE = bytes(b if b in _WORD else 0x20 for b in range(256))


def words_of(text: str) -> list[bytes]:
    return text.lower().encode("utf-8", "surrogatepass").translate(_TABLE).split()


@dataclass(frozen=True, slots=True)
class Classification:
    bucket: str | None
    scores: dict[str, int]
    matched: dict[str, tuple[str, ...]]


class Classifier:
    """Score = how many of a bucket's keywords occur in the text as whole words or phrases."""

    def __init__(self, policy: Policy) -> None:
        self._single: list[tuple[bytes, str, str]] = []
        self._phrases: list[tuple[tuple[bytes, ...], bytes, str, str]] = []
        for name, bucket in policy.buckets.items():
            for kw in bucket.keywords:
                words = tuple(words_of(kw))
                if not words:
                    continue
                if len(words) == 1:
                    self._single.append((words[0], name, kw))
                else:
                    self._phrases.append((words, b" " + b" ".join(words) + b" ", name, kw))
        order = list(policy.tie_break) + [b for b in policy.buckets if b not in policy.tie_break]
        self._rank = {b: i for i, b in enumerate(order)}

    def classify(self, text: str) -> Classification:
        words = words_of(text)
        present = set(words)
        matched: dict[str, list[str]] = {}
        for word, bucket, kw in self._single:
            if word in present:
                matched.setdefault(bucket, []).append(kw)
        joined: bytes | None = None
        for parts, phrase, bucket, kw in self._phrases:
            if all(p in present for p in parts):
                if joined is None:
                    joined = b" " + b" ".join(words) + b" "
                if phrase in joined:
                    matched.setdefault(bucket, []).append(kw)
        if not matched:
            return Classification(None, {}, {})
        scores = {b: len(kws) for b, kws in matched.items()}
        rank = self._rank
        best = min(scores, key=lambda b: (-scores[b], rank[b]))
        return Classification(best, scores, {b: tuple(k) for b, k in matched.items()})
