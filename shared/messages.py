"""Every topic's payload as a pydantic model. Strict for our own topics, tolerant for Frigate / Ring."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Source = Literal["frigate", "ring_push", "ring_mqtt", "ring_poll"]


# A camera name or an id becomes part of MQTT topics, entity ids and file names: bounded.
Name = Annotated[str, Field(min_length=1, max_length=256)]

# NaN and infinities are no time and no score: a payload carrying them is invalid (JSON has neither;
# Python's encoder writes them anyway).
class _Ours(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class _Theirs(BaseModel):
    # Frigate and Ring add fields every release: unknown keys are ignored, not errors.
    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)


def new_trace_id() -> str:
    return uuid.uuid4().hex


class SnapshotRef(_Ours):
    """How to get the event's image."""

    kind: Literal["frigate", "ring_mqtt", "ring_api", "url"]
    url: str | None = None  # frigate: <frigate>/api/events/<id>/snapshot.jpg
    topic: str | None = None  # ring_mqtt: ring/<loc>/camera/<device>/snapshot/image
    device_id: str | None = None  # ring_api: the doorbot id


class CameraEvent(_Ours):
    """One camera event from any source (homelab/camera/event/raw and .../unique)."""

    event_id: Name  # identity: "frigate:<id>", "ring:<ding id>", "ring_mqtt:<device>:<kind>:<ts>"
    source: Source
    camera: Name
    kind: str  # motion, ding, person, car, ...
    label: str | None = None
    sub_label: str | None = None
    score: float | None = None
    zones: tuple[str, ...] = ()
    started_at: float
    ended_at: float | None = None
    snapshot: SnapshotRef | None = None
    trace_id: str = Field(default_factory=new_trace_id)


class FaceNamed(_Ours):
    """homelab/camera/event/face: Frigate named the face (``sub_label``) of an event it had already
    published without one — the notifier holds that event's pushes, or takes back one already sent,
    when the name is a resident's."""

    event_id: Name
    camera: Name
    sub_label: str = Field(min_length=1, max_length=100)
    at: float


# ---- Frigate (input) ---------------------------------------------------------------------------

class FrigateObject(_Theirs):
    id: Name
    camera: Name
    label: str
    # a recognised face or plate: "Alice", or Frigate 0.14+'s ["Alice", 0.93] (the name and its score)
    sub_label: str | None = None
    score: float | None = None
    top_score: float | None = None
    false_positive: bool = False
    start_time: float
    end_time: float | None = None
    current_zones: tuple[str, ...] = ()
    entered_zones: tuple[str, ...] = ()
    has_snapshot: bool = True

    @field_validator("sub_label", mode="before")
    @classmethod
    def _sub_label(cls, v: Any) -> Any:
        # null, "name", or [name, score] depending on the release
        if isinstance(v, list | tuple):
            return str(v[0]) if v else None
        return v

    @field_validator("current_zones", "entered_zones", mode="before")
    @classmethod
    def _zones(cls, v: Any) -> Any:
        return () if v is None else v



class FrigateEvent(_Theirs):
    """``frigate/events``."""

    type: Literal["new", "update", "end"]
    before: FrigateObject | None = None
    after: FrigateObject


class FrigateReviewData(_Theirs):
    detections: tuple[str, ...] = ()
    objects: tuple[str, ...] = ()
    zones: tuple[str, ...] = ()


class FrigateReviewItem(_Theirs):
    id: Name
    camera: Name
    severity: Literal["alert", "detection"]
    start_time: float
    end_time: float | None = None
    data: FrigateReviewData = FrigateReviewData()


class FrigateReview(_Theirs):
    """``frigate/reviews`` (0.14+)."""

    type: Literal["new", "update", "end", "genai"]
    before: FrigateReviewItem | None = None
    after: FrigateReviewItem


# ---- ring-mqtt (input) --------------------------------------------------------------------------

class RingDingAttributes(_Theirs):
    lastDing: float | None = None
    lastDingTime: str | None = None


class RingMotionAttributes(_Theirs):
    lastMotion: float | None = None
    lastMotionTime: str | None = None
    personDetected: bool | None = None


class Invalid(_Ours):
    """A line of structured-validation.jsonl: a payload that did not validate, and why."""

    source: str
    topic: str
    error: str
    payload: str


# ---- Home Assistant (input) ---------------------------------------------------------------------

class SnoozeSet(_Theirs):
    """homelab/cameras/<camera>/snooze/set (retained), written by the HA package (a push's snooze button,
    the dashboard's cancel button): no camera push until ``until`` (epoch seconds); 0 or a past time
    cancels it. Retained and absolute, so replaying it is harmless and a restart reads it back."""

    until: float = Field(ge=0)
    by: str | None = Field(default=None, max_length=100)  # "phone", "dashboard", ...
