"""What each threat level does to the push, the buttons it carries, and the per-camera settings."""

from __future__ import annotations

import time

import pytest

from services.vision_notifier.push import actions, duration, push_data
from services.vision_notifier.triage import (
    Stage1,
    classifier_request,
    escalate,
    parse_stage1,
    senior_level,
    threat_level,
)
from shared.messages import CameraEvent
from shared.settings import CameraSettings, Settings, SettingsError, load_settings

CAM = CameraSettings()


def ev(kind: str = "person", camera: str = "front_door") -> CameraEvent:
    return CameraEvent(event_id="e1", source="frigate", camera=camera, kind=kind, label=kind, started_at=time.time())


@pytest.mark.parametrize(("answer", "kind", "want"), [
    ('{"verdict": "positive", "confidence": 0.9, "threat_level": 2}', "person", 2),
    ('{"verdict": "positive", "confidence": 0.9, "threat_level": 0}', "person", 0),  # normal for the place
    ('{"verdict": "positive", "confidence": 0.9}', "person", 1),  # no level given: from the verdict
    ('{"verdict": "negative", "confidence": 0.95}', "person", 0),
    ('{"verdict": "negative", "confidence": 0.5}', "person", 1),  # not sure: fail closed
    ('{"verdict": "negative", "confidence": 0.95, "threat_level": 0}', "ding", 1),  # a ring is at least 1
    ('{"verdict": "positive", "confidence": 0.9, "threat_level": 5}', "person", 1),  # off the schema: escalated
    ("not json", "person", 1),
])
def test_threat_level(answer: str, kind: str, want: int) -> None:
    assert threat_level(ev(kind), parse_stage1(answer), 0.8) == want


def test_an_untrusted_answer_is_never_level_0() -> None:
    s1 = Stage1(verdict="negative", confidence=1.0, synthetic=True, threat_level=0)
    assert threat_level(ev(), s1, 0.8) == 1
    assert threat_level(ev(), escalate("down"), 0.8) == 1


def test_the_senior_model_raises_with_urgent() -> None:
    assert senior_level("URGENT: a man is forcing the back door.") == ("a man is forcing the back door.", True)
    assert senior_level("  urgent:smoke in the garage") == ("smoke in the garage", True)
    assert senior_level("A courier leaves a parcel.") == ("A courier leaves a parcel.", False)


def test_the_camera_context_reaches_the_classifier() -> None:
    body = classifier_request(ev(), b"\xff\xd8", "m", "A busy street; people walk past all day.")
    text = body["messages"][1]["content"][0]["text"]
    assert "What is normal there: A busy street; people walk past all day." in text
    assert "threat_level" in body["messages"][0]["content"]
    assert "threat_level" in body["response_format"]["json_schema"]["schema"]["properties"]
    assert "normal there" not in classifier_request(ev(), b"\xff\xd8", "m")["messages"][1]["content"][0]["text"]


def test_level_1_is_a_normal_push_that_arrives_now() -> None:
    d = push_data("front_door", "frigate:1", 1, CAM)
    assert d["priority"] == "high" and d["ttl"] == 0 and d["tag"] == "frigate:1"  # Android: no Doze delay
    assert d["push"] == {"interruption-level": "active"} and d["channel"] == "homelab_camera"
    assert "alert_once" not in d and "image" not in d


def test_level_2_is_critical_on_both_phones() -> None:
    d = push_data("front_door", "frigate:1", 2, CAM, image="/api/image_proxy/image.front_door_snapshot")
    assert d["push"]["interruption-level"] == "critical"
    assert d["push"]["sound"] == {"name": "default", "critical": 1, "volume": 1.0}
    assert d["channel"] == "alarm_stream" and d["priority"] == "high" and d["ttl"] == 0
    assert d["image"] == "/api/image_proxy/image.front_door_snapshot"


def test_a_replacement_does_not_buzz_again_unless_the_level_went_up() -> None:
    same = push_data("front_door", "t", 1, CAM, replaces=1)
    assert same["alert_once"] is True and same["push"] == {"interruption-level": "passive"}
    up = push_data("front_door", "t", 2, CAM, replaces=1)
    assert "alert_once" not in up and up["push"]["interruption-level"] == "critical"


def test_level_0_is_never_pushed() -> None:
    with pytest.raises(ValueError, match="timeline only"):
        push_data("front_door", "t", 0, CAM)


def test_every_push_has_snooze_and_open_buttons() -> None:
    got = actions("front_door", CAM)
    assert [a["title"] for a in got] == ["Snooze Front Door 30 min", "Snooze 1 h", "Open"]
    assert [a["action"] for a in got[:2]] == ["HOMELAB_SNOOZE:front_door:30", "HOMELAB_SNOOZE:front_door:60"]
    assert got[2] == {"action": "URI", "title": "Open", "uri": "/homelab-cameras/cameras"}
    custom = actions("Garden Cam", CameraSettings(snooze_minutes=(15, 120, 1440)))
    assert [a["title"] for a in custom] == ["Snooze Garden Cam 15 min", "Snooze 2 h", "Snooze 24 h", "Open"]
    assert custom[0]["action"] == "HOMELAB_SNOOZE:garden_cam:15"
    assert duration(90) == "90 min"


def test_per_camera_settings_with_defaults_for_the_rest() -> None:
    s = Settings.model_validate({"cameras": {"back-yard": {"zones": ["lawn"], "context": "Dogs play here.",
                                                           "ring_passes_snooze": False}}})
    assert s.camera("back-yard").zones == ("lawn",)
    assert s.camera("back_yard").context == "Dogs play here."  # the name as HA's entity ids spell it
    assert s.camera("front_door") == CameraSettings()
    assert s.camera("front_door").snooze_minutes == (30, 60) and s.camera("front_door").ring_passes_snooze


@pytest.mark.parametrize(("bad", "where"), [
    ("cameras: {front_door: {zone: [porch]}}", "cameras.front_door.zone"),  # a typo is an error, not a default
    ("cameras: {front_door: {snooze_minutes: [0]}}", "cameras.front_door.snooze_minutes"),
    ("cameras: {front_door: {snooze_minutes: []}}", "cameras.front_door.snooze_minutes"),
    ("notifier: {first_push_deadline: 0}", "notifier.first_push_deadline"),
])
def test_bad_camera_settings_name_the_key(tmp_path: object, bad: str, where: str) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "homelab.yaml"
    path.write_text(bad)
    with pytest.raises(SettingsError, match=where.replace(".", r"\.")):
        load_settings(path, env={})


@pytest.mark.parametrize(("event", "says"), [
    ({"text_push_ms": 2016.4, "threat_level": 1}, "text push 2016 ms, threat level 1"),
    ({"held": "snoozed", "dropped": False, "threat_level": 1}, "held (snoozed): timeline only, threat level 1"),
    ({"dropped": True, "threat_level": 0}, "(5s ago), threat level 0: timeline only (trace t1)"),
])
def test_homelab_status_says_what_became_of_the_last_camera_event(event: dict[str, object], says: str) -> None:
    from services.status import OK, render

    now = time.time()
    s = {"checked_at": now, "code": OK, "problems": [], "services": {}, "routes": {}, "netdata_hosts": {},
         "broker": {"url": "mqtt://127.0.0.1:1883", "ok": True}, "router": {"url": "http://r", "ok": True},
         "scheduler_next": [], "last_camera_event": {"camera": "front_door", "label": "person", "at": now - 5,
                                                     "trace_id": "t1", **event}}
    line = next(x for x in render(s).splitlines() if x.startswith("last camera event"))
    assert says in line and "front_door person" in line


def test_homelab_status_lists_snoozed_cameras() -> None:
    from services.status import OK, render

    now = time.time()
    s = {"checked_at": now, "code": OK, "problems": [], "services": {}, "routes": {}, "netdata_hosts": {},
         "broker": {"url": "mqtt://127.0.0.1:1883", "ok": True}, "router": {"url": "http://r", "ok": True},
         "scheduler_next": [], "last_camera_event": None,
         "snoozed_cameras": {"front_door": {"snoozed": True, "until": now + 1800, "by": "phone"}}}
    until = time.strftime("%a %H:%M", time.localtime(now + 1800))
    assert f"snoozed camera     front_door until {until} (by phone): no pushes, timeline only" in render(s)
