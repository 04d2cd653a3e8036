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
            "image": f"homelab/cameras/{c}/snapshot"}


def entity_ids(camera: str) -> dict[str, str]:
    """The entity ids discovery asks HA to create (default_entity_id)."""
    c = slug(camera)
    return {"event": f"event.{c}_alert", "last": f"sensor.{c}_last_event", "image": f"image.{c}_snapshot"}


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
    ]


def cameras_dashboard(cameras: list[str]) -> dict[str, Any]:
    """The homelab Cameras dashboard (Lovelace YAML mode): per camera its snapshot, last alert and last
    event — exactly the entities discovery creates. The phone pushes open its ``cameras`` view."""
    cards: list[dict[str, Any]] = []
    for camera in cameras:
        ids = entity_ids(camera)
        cards.append({"type": "vertical-stack", "cards": [
            {"type": "picture-entity", "entity": ids["image"], "name": camera.replace("_", " ").title(),
             "show_state": False},
            {"type": "entities", "entities": [{"entity": ids["event"], "name": "Last alert"},
                                              {"entity": ids["last"], "name": "Last event"}]}]})
    return {"title": "homelab Cameras", "views": [
        {"title": "Cameras", "path": "cameras", "icon": "mdi:cctv", "cards": cards}]}
