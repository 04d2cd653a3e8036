"""Pure handlers: a decoded Frigate message in, the CameraEvent to publish (if any) out."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from shared.messages import CameraEvent, FaceNamed, FrigateEvent, FrigateObject, FrigateReview, SnapshotRef
from shared.settings import FrigateSettings

MAX_OPEN = 10_000  # events tracked at once; the oldest is forgotten first


class FrigateIngest:
    """``new`` opens an event, ``update`` refreshes it, ``end`` closes it; one CameraEvent per event.

    An event is published the first time it passes the filters (a zone entered in an update
    counts), whatever message type that is, so a consumer that missed ``new`` still reports it.

    A camera with alert zones (``cameras: <camera>: zones``, read through ``alert_zones``) gets one
    more: when its object first enters one of them after the event was published outside them (a
    person walking up from the street onto the porch), a second event ``frigate:<id>@zones`` goes
    out — the notifier pushes that one; the first reached the timeline only.
    """

    def __init__(self, cfg: FrigateSettings, frigate_url: str,
                 alert_zones: Callable[[str], tuple[str, ...]] = lambda camera: ()) -> None:
        self.cfg = cfg
        self.base = frigate_url.rstrip("/")
        self.alert_zones = alert_zones
        self.opened: OrderedDict[str, float] = OrderedDict()
        self.zoned: set[str] = set()  # opened events whose object has been in its camera's alert zones
        self.named: dict[str, str] = {}  # opened events whose face Frigate has named (sub_label)
        self.faces: list[FaceNamed] = []  # names given in an update, for the caller to publish (take_faces)

    def passes(self, obj: FrigateObject) -> bool:
        c = self.cfg
        if obj.false_positive:
            return False
        if c.cameras and obj.camera not in c.cameras:
            return False
        if c.labels and obj.label not in c.labels:
            return False
        if c.zones and not set(c.zones) & (set(obj.current_zones) | set(obj.entered_zones)):
            return False
        score = obj.top_score if obj.top_score is not None else obj.score
        return not (c.min_score and (score is None or score < c.min_score))

    def snapshot(self, frigate_id: str) -> SnapshotRef:
        return SnapshotRef(kind="frigate", url=f"{self.base}/api/events/{frigate_id}/snapshot.jpg")

    def _in_alert_zones(self, obj: FrigateObject) -> bool:
        wanted = self.alert_zones(obj.camera)
        return bool(wanted) and bool(set(wanted) & (set(obj.entered_zones) | set(obj.current_zones)))

    def on_event(self, ev: FrigateEvent) -> CameraEvent | None:
        obj = ev.after
        if obj.id in self.opened:
            if obj.sub_label and self.named.get(obj.id) != obj.sub_label:
                # a face named after the event went out: the notifier decides whether it is a resident's
                self.named[obj.id] = obj.sub_label
                self.faces.append(FaceNamed(event_id=f"frigate:{obj.id}", camera=obj.camera, sub_label=obj.sub_label,
                                            at=obj.start_time))
            if ev.type == "end":
                del self.opened[obj.id]
                self.zoned.discard(obj.id)
                self.named.pop(obj.id, None)
            elif obj.id not in self.zoned and self._in_alert_zones(obj):
                self.zoned.add(obj.id)  # it walked into an alert zone: the event the notifier pushes
                return self._event(obj, f"frigate:{obj.id}@zones")
            return None
        if not self.passes(obj):
            return None
        if ev.type != "end":
            self.opened[obj.id] = obj.start_time
            if self._in_alert_zones(obj):
                self.zoned.add(obj.id)
            if obj.sub_label:
                self.named[obj.id] = obj.sub_label
            while len(self.opened) > MAX_OPEN:
                gone = self.opened.popitem(last=False)[0]
                self.zoned.discard(gone)
                self.named.pop(gone, None)
        return self._event(obj, f"frigate:{obj.id}")

    def take_faces(self) -> list[FaceNamed]:
        """The names given in updates since the last call."""
        faces, self.faces = self.faces, []
        return faces

    def _event(self, obj: FrigateObject, event_id: str) -> CameraEvent:
        zones = tuple(dict.fromkeys((*obj.entered_zones, *obj.current_zones)))
        return CameraEvent(
            event_id=event_id, source="frigate", camera=obj.camera, kind=obj.label, label=obj.label,
            sub_label=obj.sub_label, score=obj.top_score if obj.top_score is not None else obj.score,
            zones=zones, started_at=obj.start_time, ended_at=obj.end_time, snapshot=self.snapshot(obj.id),
        )

    def on_review(self, rv: FrigateReview) -> CameraEvent | None:
        """With ``trigger: reviews``: an ``alert`` review opens the event of its first detection."""
        item = rv.after
        if item.severity != "alert" or rv.type == "genai":
            return None
        c = self.cfg
        if c.cameras and item.camera not in c.cameras:
            return None
        label = item.data.objects[0] if item.data.objects else "alert"
        if c.labels and not set(c.labels) & set(item.data.objects):
            return None
        if c.zones and not set(c.zones) & set(item.data.zones):
            return None
        key = item.data.detections[0] if item.data.detections else item.id
        if key in self.opened:
            if rv.type == "end":
                del self.opened[key]
            return None
        if rv.type != "end":
            self.opened[key] = item.start_time
        return CameraEvent(
            event_id=f"frigate:{key}", source="frigate", camera=item.camera, kind=label, label=label,
            zones=item.data.zones, started_at=item.start_time, ended_at=item.end_time,
            snapshot=self.snapshot(key) if item.data.detections else None,
        )
