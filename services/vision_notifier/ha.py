"""Home Assistant discovery for each camera: an event entity, a last-event sensor, a snapshot image."""

from __future__ import annotations

from typing import Any

from services.vision_notifier.triage import EVENT_TYPES
from shared import topics
from shared.ha import availability, device, discovery, object_id, slug

SERVICE = "vision_notifier"


def camera_topics(camera: str) -> dict[str, str]:
    c = object_id(camera)
    return {"event": f"homelab/cameras/{c}/event", "last": f"homelab/cameras/{c}/last_event",
            "image": f"homelab/cameras/{c}/snapshot", "snooze": f"homelab/cameras/{c}/snooze",
            "snooze_set": f"homelab/cameras/{c}/snooze/set", "faces": f"homelab/cameras/{c}/known_faces"}


SNOOZE_SET = "homelab/cameras/+/snooze/set"  # retained {"until": epoch s (0: none), "by": ...}, from HA


def snooze_camera(topic: str) -> str | None:
    """The camera object id of a snooze/set topic, or None for any other topic."""
    parts = topic.split("/")
    if len(parts) == 5 and parts[:2] == ["homelab", "cameras"] and parts[3:] == ["snooze", "set"] and parts[2]:
        return parts[2]
    return None


def entity_ids(camera: str) -> dict[str, str]:
    """The entity ids discovery asks HA to create (default_entity_id)."""
    c = slug(camera)
    return {"event": f"event.{c}_alert", "last": f"sensor.{c}_last_event", "image": f"image.{c}_snapshot",
            "snooze": f"sensor.{c}_snooze", "cancel": f"button.{c}_cancel_snooze",
            "faces": f"sensor.{c}_known_faces_held"}


def camera_discovery(camera: str, doorbell: bool) -> list[tuple[str, dict[str, Any]]]:
    c = object_id(camera)
    t, ids = camera_topics(camera), entity_ids(camera)
    dev = device(f"homelab_camera_{c}", camera.replace("_", " ").title(), "homelab camera")
    common = {"device": dev, **availability(topics.status(SERVICE))}
    return [
        discovery("event", f"homelab_{c}", "alert", {
            "name": "Alert", "default_entity_id": ids["event"], "state_topic": t["event"],
            "event_types": list(EVENT_TYPES), "device_class": "doorbell" if doorbell else "motion",
            **common}),
        discovery("sensor", f"homelab_{c}", "last_event", {
            "name": "Last event", "default_entity_id": ids["last"], "state_topic": t["last"],
            "value_template": "{{ value_json.title }}", "json_attributes_topic": t["last"],
            "icon": "mdi:cctv", **common}),
        discovery("image", f"homelab_{c}", "snapshot", {
            "name": "Snapshot", "default_entity_id": ids["image"], "image_topic": t["image"],
            "content_type": "image/jpeg", **common}),
        # the snooze set from the phone's button (until when, in HA's time zone) and its cancel button
        discovery("sensor", f"homelab_{c}", "snooze", {
            "name": "Snooze", "default_entity_id": ids["snooze"], "state_topic": t["snooze"],
            "value_template": "{{ ('until ' ~ (value_json.until | timestamp_custom('%a %H:%M'))) "
                              "if value_json.snoozed else 'off' }}",
            "json_attributes_topic": t["snooze"], "icon": "mdi:bell-sleep", **common}),
        # events not pushed because Frigate named a resident's face (known_faces)
        discovery("sensor", f"homelab_{c}", "known_faces_held", {
            "name": "Known faces held", "default_entity_id": ids["faces"], "state_topic": t["faces"],
            "value_template": "{{ value_json.held }}", "json_attributes_topic": t["faces"],
            "state_class": "total_increasing", "icon": "mdi:account-check", **common}),
        discovery("button", f"homelab_{c}", "cancel_snooze", {
            "name": "Cancel snooze", "default_entity_id": ids["cancel"], "command_topic": t["snooze_set"],
            "payload_press": '{"until": 0, "by": "dashboard"}', "retain": True, "icon": "mdi:bell-ring",
            **common}),
    ]


def cameras_dashboard(cameras: list[str]) -> dict[str, Any]:
    """The homelab Cameras dashboard (Lovelace YAML mode): per camera its snapshot, last alert, last
    event, snooze (until when) and the button that cancels it — exactly the entities discovery creates.
    The phone pushes open its ``cameras`` view."""
    cards: list[dict[str, Any]] = []
    for camera in cameras:
        ids = entity_ids(camera)
        cards.append({"type": "vertical-stack", "cards": [
            {"type": "picture-entity", "entity": ids["image"], "name": camera.replace("_", " ").title(),
             "show_state": False},
            {"type": "entities", "entities": [{"entity": ids["event"], "name": "Last alert"},
                                              {"entity": ids["last"], "name": "Last event"},
                                              {"entity": ids["snooze"], "name": "Snoozed"},
                                              {"entity": ids["faces"], "name": "Known faces held"},
                                              {"entity": ids["cancel"], "name": "Cancel snooze"}]}]})
    return {"title": "homelab Cameras", "views": [
        {"title": "Cameras", "path": "cameras", "icon": "mdi:cctv", "cards": cards}]}
