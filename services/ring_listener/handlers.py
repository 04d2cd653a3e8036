"""Pure handlers for the three Ring triggers: push (ring-doorbell), ring-mqtt topics, polled history."""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydantic import ValidationError

from shared.messages import CameraEvent, RingDingAttributes, RingMotionAttributes, SnapshotRef
from shared.settings import RingSettings

_SLUG = re.compile(r"[^a-z0-9]+")


def slug(name: str) -> str:
    return _SLUG.sub("_", name.lower()).strip("_") or "ring"


def camera_name(cfg: RingSettings, *keys: object) -> str:
    """The configured camera for any of a device's keys (id, ring-mqtt id, name), else a slug of the last
    one given (the most readable: the device name where there is one)."""
    for k in keys:
        if k is not None and str(k) in cfg.cameras:
            return cfg.cameras[str(k)]
    last = next((k for k in reversed(keys) if k), "ring")
    return slug(str(last))


def ring_kind(kind: str) -> str | None:
    k = kind.lower()
    if k in ("ding", "motion"):
        return k
    if k in ("on_demand", "intercom_unlock", "unknown"):
        return None  # not a camera alert
    return "motion" if "motion" in k else "ding" if "ding" in k else None


@dataclass(frozen=True, slots=True)
class PushDing:
    """What the pipeline needs of ring-doorbell's RingEvent (kept apart so handlers stay pure)."""

    id: int | str
    doorbot_id: int | str
    device_name: str | None
    kind: str
    now: float
    is_update: bool = False


def from_push(ev: PushDing, cfg: RingSettings, now: float) -> CameraEvent | None:
    kind = ring_kind(ev.kind)
    if kind is None or ev.is_update:  # battery doorbells send an update with the image: same ding
        return None
    if now - ev.now > cfg.max_age:
        return None
    return CameraEvent(
        event_id=f"ring:{ev.id}", source="ring_push", camera=camera_name(cfg, ev.doorbot_id, ev.device_name),
        kind=kind, label="person" if kind == "ding" else None, started_at=ev.now,
        snapshot=SnapshotRef(kind="ring_api", device_id=str(ev.doorbot_id)))


@dataclass(frozen=True, slots=True)
class HistoryItem:
    id: int | str
    doorbot_id: int | str
    device_name: str | None
    kind: str
    created_at: float


def from_history(item: HistoryItem, cfg: RingSettings, now: float) -> CameraEvent | None:
    kind = ring_kind(item.kind)
    if kind is None or now - item.created_at > cfg.max_age:
        return None
    return CameraEvent(
        event_id=f"ring:{item.id}", source="ring_poll", camera=camera_name(cfg, item.doorbot_id, item.device_name),
        kind=kind, label="person" if kind == "ding" else None, started_at=item.created_at,
        snapshot=SnapshotRef(kind="ring_api", device_id=str(item.doorbot_id)))


class RingMqttIngest:
    """ring-mqtt topics. A ding or motion is announced by its attributes (``lastDing`` / ``lastMotion``):
    state ``ON`` carries no id and ring-mqtt republishes it after a restart, so it is validated but
    fires nothing. Old timestamps (a replay) are not new events.
    """

    def __init__(self, cfg: RingSettings) -> None:
        self.cfg = cfg
        p = re.escape(cfg.mqtt_prefix)
        self.pattern = re.compile(rf"^{p}/([^/]+)/camera/([^/]+)/(ding|motion)/(state|attributes)$")

    def subscription(self) -> str:
        return f"{self.cfg.mqtt_prefix}/#"

    def on_message(self, topic: str, payload: bytes, now: float) -> CameraEvent | None:
        """Raise ValueError (with the reason) for a malformed payload on a topic we read."""
        m = self.pattern.match(topic)
        if m is None:
            return None
        location, device, kind, leaf = m.groups()
        if leaf == "state":
            if payload not in (b"ON", b"OFF"):
                raise ValueError(f"state must be ON or OFF, got {payload[:40]!r}")
            return None
        try:
            if kind == "ding":
                ts = RingDingAttributes.model_validate_json(payload).lastDing
                person = None
            else:
                attrs = RingMotionAttributes.model_validate_json(payload)
                ts, person = attrs.lastMotion, attrs.personDetected
        except ValidationError as exc:
            e = exc.errors()[0]
            raise ValueError(f"{'.'.join(str(p) for p in e['loc']) or 'payload'}: {e['msg']}") from exc
        if ts is None or now - ts > self.cfg.max_age or ts - now > 60:
            return None
        label = "person" if kind == "ding" or person else None
        return CameraEvent(
            event_id=f"ring_mqtt:{device}:{kind}:{int(ts)}", source="ring_mqtt", camera=camera_name(self.cfg, device),
            kind=kind, label=label, started_at=float(ts),
            snapshot=SnapshotRef(kind="ring_mqtt", topic=f"{self.cfg.mqtt_prefix}/{location}/camera/{device}/"
                                                          "snapshot/image", device_id=device))
