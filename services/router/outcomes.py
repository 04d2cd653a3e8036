"""What an upstream's answer means, read once into a typed outcome.

Engines word their errors differently (vLLM, llama.cpp, LM Studio, Ollama) and put them at HTTP
200 or 4xx/5xx, with ``error`` as an object or a string: they are recognised by their words. A
fault that belongs to the route (a wrong key, a model the engine no longer serves, a 5xx, a
reset) fails over; only what is wrong with the client's own request goes back to it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import orjson
from starlette.responses import Response

from services.router.policy import Policy

OutcomeKind = Literal["ok", "busy", "fail", "poisoned", "context", "client"]
ErrorKind = Literal["context", "cuda", "content_policy", "model_missing", "other"]

_CONTEXT_SIGNS = (
    "context length", "context_length", "context window", "maximum context", "n_ctx",
    "prompt is longer than", "too many tokens", "'max_tokens' or 'max_completion_tokens' is too large",
    "exceeds the context", "exceed context", "input is too long", "reduce the length",
)
_CUDA_SIGNS = ("cuda error", "cuda_error", "cudaerror", "illegal memory access", "cublas_status",
               "device-side assert", "cuda out of memory")
_POLICY_SIGNS = ("content_policy", "content policy", "content_filter", "content filter")
# The engine no longer serves the model the route names (vLLM: "The model `x` does not exist.",
# Ollama: "model 'x' not found, try pulling it first", LM Studio: "Model ... not found").
_MODEL_SIGNS = ("does not exist", "not found", "no such model", "not loaded", "unknown model")


class UpstreamFault(Exception):
    """An upstream failed during an answer (a cut, a stall, a malformed chunk, an in-band error)."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


def error_kind(text: str, code: str = "") -> ErrorKind:
    """Recognise an engine's error by its words."""
    low = f"{code} {text}".lower()
    if any(sign in low for sign in _CUDA_SIGNS):
        return "cuda"
    if any(sign in low for sign in _POLICY_SIGNS):
        return "content_policy"
    if any(sign in low for sign in _CONTEXT_SIGNS):
        return "context"
    if "model_not_found" in low or ("model" in low and any(sign in low for sign in _MODEL_SIGNS)):
        return "model_missing"
    return "other"


@dataclass(frozen=True, slots=True)
class ErrorBody:
    """An upstream's error body, parsed once."""

    raw: bytes
    text: str
    code: str
    openai_shaped: bool  # ``{"error": {...}}``: relayed to the client as it is

    @classmethod
    def parse(cls, raw: bytes) -> ErrorBody:
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return cls(raw, raw[:300].decode("utf-8", "replace"), "", False)
        return cls.of_object(body, raw)

    @classmethod
    def of_object(cls, body: object, raw: bytes) -> ErrorBody:
        """From a body already decoded (``raw`` is what it was decoded from)."""
        err = body.get("error") if isinstance(body, dict) else None
        if isinstance(err, dict):
            return cls(raw, str(err.get("message") or err), str(err.get("code") or err.get("type") or ""), True)
        if err is not None:
            return cls(raw, str(err), "", False)
        return cls(raw, raw[:300].decode("utf-8", "replace"), "", False)

    @classmethod
    def of_message(cls, message: str) -> ErrorBody:
        """An error that arrived as an in-band stream event."""
        return cls(orjson.dumps({"error": message}), message, "", False)

    @property
    def kind(self) -> ErrorKind:
        return error_kind(self.text, self.code)


def error_answer(raw: bytes) -> ErrorBody | None:
    """A 200 whose body is an error and no answer (some LM Studio versions), else None."""
    if b'"error"' not in raw[:512]:
        return None
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if isinstance(body, dict) and "error" in body and not body.get("choices"):
        return ErrorBody.of_object(body, raw)
    return None


@dataclass(slots=True)
class Outcome:
    """One attempt's result. ``cause`` is the short label counted in metrics (``http_503``,
    ``timeout``, ``reset``…); ``detail`` is ``cause: what happened`` for the logs."""

    kind: OutcomeKind
    cause: str = ""
    detail: str = ""
    retryable: bool = False
    retry_after: float | None = None
    status: int = 200
    error: ErrorBody | None = None
    response: Response | None = None  # an ``ok`` attempt's answer for the client

    @classmethod
    def failed(cls, cause: str, text: str, *, retryable: bool = False, status: int = 0,
               kind: OutcomeKind = "fail", error: ErrorBody | None = None,
               retry_after: float | None = None) -> Outcome:
        return cls(kind, cause, f"{cause}: {text}", retryable, retry_after, status, error)


def classify(status: int, err: ErrorBody, retry_after: str | None = None) -> Outcome:
    """What an error answer means, whatever the engine's format."""
    text, kind = err.text, err.kind
    if kind == "cuda":
        return Outcome.failed("cuda_error", text, kind="poisoned", status=status, error=err)
    if kind == "context":
        return Outcome.failed("context_length", text, kind="context", status=status, error=err)
    label = f"http_{status}"
    if kind == "model_missing" and status in (200, 400, 404):
        # the router names the model: an engine that does not serve it is the route's fault
        return Outcome.failed("model_missing", text, status=status, error=err)
    if status in (500, 502):
        return Outcome.failed(label, text or "empty body", retryable=True, status=status, error=err)
    if status in (504, 401, 403, 404) or (status == 200 and kind != "content_policy"):
        # a wrong key, a vanished path or model, a gateway timeout: the route's fault, fail over
        return Outcome.failed(label, text or "empty body", status=status, error=err)
    if status in (503, 429):
        ra = parse_retry_after(retry_after) if status == 429 else None
        return Outcome.failed(label, text, kind="busy", status=status, error=err, retry_after=ra)
    if status >= 500:
        return Outcome.failed(label, text, status=status, error=err)
    return Outcome.failed(label, text, kind="client", status=status if status != 200 else 400, error=err)


def hangup(policy: Policy, t0: float, exc: BaseException) -> Outcome:
    """A reset or disconnect before the answer: transient when quick, a silent upstream when not."""
    waited = time.perf_counter() - t0
    what = f"{type(exc).__name__}: {exc}"
    if waited > policy.health.silent_after:
        return Outcome.failed("silent", f"no answer for {waited:.1f}s, then {what}")
    return Outcome.failed("reset", what, retryable=True)


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return max(0.0, seconds) if seconds == seconds else None  # NaN is no delay
