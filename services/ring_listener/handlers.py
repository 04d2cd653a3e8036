"""Pure handlers for the three Ring triggers: push (ring-doorbell), ring-mqtt topics, polled history."""

from __future__ import annotations

import re
from dataclasses import dataclass

import orjson
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


class RingDevices:
    """What ring-mqtt says of each device, learnt from what it publishes: its device id, its name (from
    its Home Assistant discovery: ``homeassistant/<type>/<location>/<device id>_<entity>/config`` with
    ``device: {ids, name}``) and its location (from its topics). The Ring push and the history name a
    device by its API id and its name; ring-mqtt by its own id: the name joins them, so one press seen
    both ways is one camera — and a push can take ring-mqtt's snapshot of that camera."""

    def __init__(self, cfg: RingSettings) -> None:
        self.cfg = cfg
        self.names: dict[str, str] = {}  # ring-mqtt device id -> its name
        self.locations: dict[str, str] = {}  # ring-mqtt device id -> its location id

    def on_discovery(self, payload: bytes) -> None:
        """A Home Assistant discovery config: a ring-mqtt one teaches a device's name."""
        try:
            cfg = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return
        if not isinstance(cfg, dict):
            return
        state = cfg.get("state_topic") or cfg.get("json_attributes_topic") or cfg.get("image_topic") or ""
        dev = cfg.get("device")
        if not isinstance(state, str) or not state.startswith(f"{self.cfg.mqtt_prefix}/") or not isinstance(dev, dict):
            return
        parts = state.split("/")
        name, ids = dev.get("name"), dev.get("ids") or dev.get("identifiers")
        device = parts[3] if len(parts) > 3 else None
        if isinstance(ids, list) and ids and isinstance(ids[0], str):
            device = ids[0]
        if device and isinstance(name, str) and name and len(self.names) < 256:
            self.names[device[:128]] = name[:128]
            self.locations[device[:128]] = parts[1][:128] if len(parts) > 1 else ""

    def seen(self, location: str, device: str) -> None:
        if device not in self.locations and len(self.locations) < 256:
            self.locations[device] = location

    def camera(self, device: str) -> str:
        """The camera a ring-mqtt device id is: as configured, else by its name, else by its id."""
        return camera_name(self.cfg, device, self.names.get(device))

    def snapshot_of(self, camera: str) -> SnapshotRef | None:
        """ring-mqtt's snapshot topic for ``camera`` (a push's or the history's), when ring-mqtt has it."""
        for device, location in self.locations.items():
            if self.camera(device) == camera and location:
                return SnapshotRef(kind="ring_mqtt", device_id=device,
                                   topic=f"{self.cfg.mqtt_prefix}/{location}/camera/{device}/snapshot/image")
        return None


def from_push(ev: PushDing, cfg: RingSettings, now: float, devices: RingDevices | None = None) -> CameraEvent | None:
    kind = ring_kind(ev.kind)
    if kind is None or ev.is_update:  # battery doorbells send an update with the image: same ding
        return None
    if now - ev.now > cfg.max_age:
        return None
    camera = camera_name(cfg, ev.doorbot_id, ev.device_name)
    # the Ring API's image is not the notifier's to fetch: ring-mqtt's snapshot of the same camera is
    snapshot = devices.snapshot_of(camera) if devices is not None else None
    return CameraEvent(
        event_id=f"ring:{ev.id}", source="ring_push", camera=camera,
        kind=kind, label="person" if kind == "ding" else None, started_at=ev.now,
        snapshot=snapshot or SnapshotRef(kind="ring_api", device_id=str(ev.doorbot_id)))


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

    def __init__(self, cfg: RingSettings, devices: RingDevices | None = None) -> None:
        self.cfg = cfg
        self.devices = devices or RingDevices(cfg)
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
        self.devices.seen(location, device)
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
            event_id=f"ring_mqtt:{device}:{kind}:{int(ts)}", source="ring_mqtt", camera=self.devices.camera(device),
            kind=kind, label=label, started_at=float(ts),
            snapshot=SnapshotRef(kind="ring_mqtt", topic=f"{self.cfg.mqtt_prefix}/{location}/camera/{device}/"
                                                          "snapshot/image", device_id=device))
