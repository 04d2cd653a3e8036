"""Pure triage decisions and the messages they produce (no I/O)."""

from __future__ import annotations

import base64
from typing import Any, Literal

import jsonschema
import orjson
from pydantic import BaseModel, ConfigDict, Field

from shared.messages import CameraEvent
from shared.schemas import load_schema

SCHEMA = load_schema("camera_triage")
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
EVENT_TYPES = ("ding", "motion", "person", "vehicle", "animal", "package", "other")
_VEHICLES = {"car", "truck", "bus", "motorcycle", "bicycle", "boat", "vehicle"}
_ANIMALS = {"dog", "cat", "bird", "horse", "bear", "deer", "animal", "cow", "sheep"}


class _Msg(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Stage1(_Msg):
    """The classifier's verdict, or the synthetic one that replaces it when it cannot be trusted."""

    verdict: Literal["negative", "positive", "ambiguous"]
    confidence: float = Field(ge=0, le=1)
    objects: tuple[str, ...] = ()
    summary: str | None = None
    synthetic: bool = False
    escalate_to_spark: bool = False
    reason: str | None = None
    threat_level: Literal[0, 1, 2] | None = None  # as the classifier gave it (None: it did not say)


def escalate(reason: str) -> Stage1:
    """Fail closed: anything we cannot trust escalates, never suppresses."""
    return Stage1(verdict="ambiguous", confidence=0.0, synthetic=True, escalate_to_spark=True, reason=reason)


def parse_stage1(content: str) -> Stage1:
    """The classifier's answer, validated against the schema; invalid → escalate."""
    try:
        data = orjson.loads(content)
    except orjson.JSONDecodeError as exc:
        return escalate(f"classifier answer is not JSON: {exc}")
    if isinstance(data, dict) and data.get("escalate_to_spark"):
        return escalate(str(data.get("reason") or "the router replaced an invalid answer"))
    try:
        VALIDATOR.validate(data)
    except jsonschema.ValidationError as exc:
        return escalate(f"classifier answer does not match the schema: {exc.message}")
    return Stage1(verdict=data["verdict"], confidence=float(data["confidence"]),
                  objects=tuple(str(o) for o in data.get("objects") or ()), summary=data.get("summary"),
                  threat_level=data.get("threat_level"))


def dropped(s1: Stage1, threshold: float) -> bool:
    """A confident negative: nothing to push (the timeline still records it)."""
    return s1.verdict == "negative" and s1.confidence >= threshold and not s1.synthetic


def threat_level(ev: CameraEvent, s1: Stage1, threshold: float) -> Literal[0, 1, 2]:
    """0: timeline only, 1: a normal push, 2: a critical push.

    Fails closed: an answer we cannot trust is 1; a classifier that gives no level is read from its
    verdict (a confident negative 0, anything else 1). A doorbell ring is at least 1: somebody pressed it.
    """
    if s1.synthetic:
        lvl: Literal[0, 1, 2] = 1
    elif s1.threat_level is not None:
        lvl = s1.threat_level
    else:
        lvl = 0 if dropped(s1, threshold) else 1
    return 1 if lvl == 0 and event_type(ev) == "ding" else lvl


URGENT = "URGENT:"


def senior_level(text: str) -> tuple[str, bool]:
    """The senior model's description and whether it asks to act now (it opens with ``URGENT:``)."""
    stripped = text.lstrip()
    if stripped[:len(URGENT)].upper() == URGENT:
        return stripped[len(URGENT):].strip(), True
    return text, False


def event_type(ev: CameraEvent) -> str:
    for k in (ev.kind, ev.label or ""):
        k = k.lower()
        if k in EVENT_TYPES:
            return k
        if k in _VEHICLES:
            return "vehicle"
        if k in _ANIMALS:
            return "animal"
    return "other"


def title(ev: CameraEvent) -> str:
    what = {"ding": "Doorbell", "motion": "Motion", "person": "Person", "vehicle": "Vehicle",
            "animal": "Animal", "package": "Package"}.get(event_type(ev), (ev.label or ev.kind).capitalize())
    return f"{what} at {ev.camera.replace('_', ' ').title()}"


def data_url(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()


CLASSIFIER_SYSTEM = (
    "You triage home security camera snapshots. Answer only JSON. threat_level: 0 when there is nothing "
    "to act on (what is normal at this place, an empty scene), 1 when it is worth knowing (a visitor, a "
    "delivery, a car arriving), 2 only when someone should act now (a break-in, a fire, a person in danger).")


def classifier_request(ev: CameraEvent, jpeg: bytes, model: str, context: str | None = None) -> dict[str, Any]:
    normal = f" What is normal there: {context.strip()}" if context and context.strip() else ""
    return {
        "model": model,
        "messages": [
            {"role": "system", "content": CLASSIFIER_SYSTEM},
            {"role": "user", "content": [
                {"type": "text", "text": f"Camera {ev.camera} reported {ev.label or ev.kind}.{normal} Is there "
                                         "anything a home owner should be alerted about (a person, a vehicle "
                                         "arriving, a package, an animal at the door), and how urgent is it?"},
                {"type": "image_url", "image_url": {"url": data_url(jpeg)}},
            ]},
        ],
        "metadata": {"homelab_task": "camera_triage", "event_id": ev.event_id, "trace_id": ev.trace_id},
        "response_format": {"type": "json_schema",
                            "json_schema": {"name": "camera_triage", "schema": SCHEMA, "strict": True}},
        "temperature": 0,
    }


def senior_request(ev: CameraEvent, jpeg: bytes | None, s1: Stage1, model: str,
                   context: str | None = None) -> dict[str, Any]:
    hint = f" A first look said: {s1.summary}." if s1.summary else ""
    if context and context.strip():
        hint += f" What is normal there: {context.strip()}"
    parts: list[dict[str, Any]] = [{"type": "text", "text": (
        f"Describe what is happening at camera {ev.camera} for a phone notification: two short sentences, "
        f"who or what is there and what they are doing.{hint} Only if someone must act right now (a break-in, "
        f"a fire, a person in danger), begin with {URGENT}")}]
    if jpeg is not None:
        parts.append({"type": "image_url", "image_url": {"url": data_url(jpeg)}})
    return {"model": model, "messages": [{"role": "user", "content": parts}],
            "metadata": {"homelab_task": "camera_description", "event_id": ev.event_id, "trace_id": ev.trace_id},
            "max_tokens": 200}


def degraded_description(ev: CameraEvent, s1: Stage1, reason: str) -> str:
    """Built from the classifier's output when the senior model cannot answer: an alert still goes out.

    ``reason`` is what a person reads on the phone ("senior model offline"); the technical cause goes
    to the timeline and the logs, never to the phone.
    """
    seen = ", ".join(s1.objects) or (ev.label or ev.kind)
    base = s1.summary or f"{seen.capitalize()} detected"
    return f"{base} at {ev.camera.replace('_', ' ')} (description unavailable: {reason})."
