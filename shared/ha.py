"""Home Assistant MQTT discovery as data: builders return (topic, payload) pairs."""

from __future__ import annotations

import re
from typing import Any

from shared.topics import HA_PREFIX

ORIGIN = {"name": "homelab", "sw": "0.1.0", "url": "https://github.com/homelab/homelab"}
_ID = re.compile(r"[^a-zA-Z0-9_-]+")


def object_id(*parts: str) -> str:
    """An id HA accepts in a discovery topic: [a-zA-Z0-9_-]."""
    return _ID.sub("_", "_".join(parts)).strip("_").lower()


_SLUG = re.compile(r"[^a-z0-9_]+")


def slug(*parts: str) -> str:
    """An entity id's object part as HA makes it: lowercase, [a-z0-9_] only (no hyphens)."""
    return _SLUG.sub("_", "_".join(parts).lower()).strip("_")


def device(identifier: str, name: str, model: str, manufacturer: str = "homelab") -> dict[str, Any]:
    return {"identifiers": [identifier], "name": name, "manufacturer": manufacturer, "model": model,
            "sw_version": ORIGIN["sw"]}


def availability(*topics: str) -> dict[str, Any]:
    return {"availability": [{"topic": t, "payload_available": "online", "payload_not_available": "offline"}
                             for t in topics],
            "availability_mode": "all"}


def discovery(component: str, node: str, obj: str, config: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """``homeassistant/<component>/<node>/<object>/config`` with origin and unique_id filled in."""
    node_id, oid = object_id(node), object_id(obj)
    payload = {"unique_id": object_id(node, obj), "origin": ORIGIN, **config}
    if "default_entity_id" in config and "object_id" not in config:
        # Home Assistant before 2025.10 names the entity from object_id (default_entity_id is newer)
        payload["object_id"] = str(config["default_entity_id"]).split(".", 1)[1]
    return f"{HA_PREFIX}/{component}/{node_id}/{oid}/config", payload
