"""MQTT topic names: the contract (DESIGN.md §4)."""

from __future__ import annotations

RAW = "homelab/camera/event/raw"
UNIQUE = "homelab/camera/event/unique"
TRIAGE = "homelab/camera/triage"
NOTIFY_RICH = "homelab/notify/rich"
NOTIFY_TEXT = "homelab/notify/text"
NOTIFY_CLEAR = "homelab/notify/clear"  # take a push back (HA: clear_notification with its tag)
TIMELINE = "homelab/timeline"
FACE = "homelab/camera/event/face"  # Frigate named the face of an event already published (a later update)
HA_STATUS = "homeassistant/status"
HA_PREFIX = "homeassistant"


def status(service: str) -> str:
    """Retained ``online``/``offline`` (LWT) of one service."""
    return f"homelab/{service}/status"
