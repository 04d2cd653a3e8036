"""What the phone gets (pure, no I/O): the ``data`` of Home Assistant's notify call for each push.

One ``data`` serves both companion apps (each ignores the other's keys):

- every push: Android ``priority: high`` and ``ttl: 0`` (Doze would otherwise hold it for minutes),
  the event's ``tag`` (a later push for the same event replaces it), the Cameras view on tap, and the
  buttons: snooze this camera (one per configured duration) and Open;
- level 1: iOS ``interruption-level: active``, Android's ``homelab_camera`` channel;
- level 2: iOS ``interruption-level: critical`` with a critical sound (it rings through Focus and the
  mute switch), Android's ``alarm_stream`` channel (the alarm volume, through Do Not Disturb);
- a push that replaces one the phone already showed at the same or a higher level does not buzz
  again (iOS ``passive``, Android ``alert_once``); a level that went up does.

Level 0 never reaches this module: it is timeline only.
"""

from __future__ import annotations

from typing import Any, Literal

from shared.ha import object_id
from shared.settings import CameraSettings

CAMERAS_VIEW = "/homelab-cameras/cameras"
SNOOZE_ACTION = "HOMELAB_SNOOZE"  # HOMELAB_SNOOZE:<camera object id>:<minutes>, read by the HA package
ANDROID_CHANNEL = "homelab_camera"

Level = Literal[0, 1, 2]


def display_name(camera: str) -> str:
    return camera.replace("_", " ").title()


def duration(minutes: int) -> str:
    """30 → "30 min", 60 → "1 h", 90 → "90 min", 1440 → "24 h"."""
    return f"{minutes // 60} h" if minutes % 60 == 0 else f"{minutes} min"


def snooze_action(camera: str, minutes: int) -> str:
    return f"{SNOOZE_ACTION}:{object_id(camera)}:{minutes}"


def actions(camera: str, cam: CameraSettings) -> list[dict[str, str]]:
    """"Snooze Front Door 30 min", "Snooze 1 h", "Open" (the Cameras view)."""
    out = []
    for i, minutes in enumerate(cam.snooze_minutes):
        label = f"Snooze {display_name(camera)} {duration(minutes)}" if i == 0 else f"Snooze {duration(minutes)}"
        out.append({"action": snooze_action(camera, minutes), "title": label})
    out.append({"action": "URI", "title": "Open", "uri": CAMERAS_VIEW})
    return out


def push_data(camera: str, tag: str, level: Level, cam: CameraSettings, *, replaces: Level | None = None,
              image: str | None = None) -> dict[str, Any]:
    """The notify ``data`` for a push at ``level``; ``replaces`` is the level of the push it replaces
    on the phone (same tag), if one went out."""
    if level == 0:
        raise ValueError("level 0 is timeline only: nothing to push")
    data: dict[str, Any] = {
        "tag": tag, "group": "homelab-camera", "url": CAMERAS_VIEW, "clickAction": CAMERAS_VIEW,
        "priority": "high", "ttl": 0, "actions": actions(camera, cam),
        "channel": "alarm_stream" if level == 2 else ANDROID_CHANNEL,
    }
    if level == 2:
        data["push"] = {"interruption-level": "critical", "sound": {"name": "default", "critical": 1, "volume": 1.0}}
    else:
        data["push"] = {"interruption-level": "active"}
    data.update(quiet_update(level, replaces))
    if image:
        data["image"] = image
    return data


def quiet_update(level: Level, replaces: Level | None) -> dict[str, Any]:
    """What makes a push that replaces one the phone shows at ``replaces`` arrive without a buzz, when
    the phone already told them this much (nothing when the level went up)."""
    if replaces is None or replaces < level:
        return {}
    return {"push": {"interruption-level": "passive"}, "alert_once": True}
