"""Pure handlers of the ingest services: no broker, no network."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from services.dedup.core import Deduper, DedupStore
from services.frigate_consumer.handlers import FrigateIngest
from services.ring_listener.handlers import HistoryItem, PushDing, RingMqttIngest, from_history, from_push
from shared.messages import CameraEvent, FrigateEvent, FrigateReview
from shared.settings import DedupSettings, FrigateSettings, RingSettings, SettingsError, load_settings, parse_mqtt_url
from tests.pipeline import FIXTURES, load_jsonc

NOW = 1_800_000_000.0


def ev(event_id: str, source: str = "ring_push", at: float = NOW, camera: str = "front", kind: str = "ding"
       ) -> CameraEvent:
    return CameraEvent(event_id=event_id, source=source, camera=camera, kind=kind, started_at=at)  # type: ignore[arg-type]


def test_dedup_identity_window_and_restart(tmp_path: Path) -> None:
    store = DedupStore(tmp_path / "d.sqlite3")
    d = Deduper(store, DedupSettings(window=20))
    assert d.decide(ev("ring:1"), NOW).verdict == "forward"
    assert d.decide(ev("ring:1", "ring_poll"), NOW).verdict == "duplicate"  # same ding id
    merged = d.decide(ev("ring_mqtt:dev:ding:1", "ring_mqtt", NOW + 2), NOW)
    assert (merged.verdict, merged.merged_into) == ("merged", "ring:1")
    assert d.decide(ev("ring:2", at=NOW + 5), NOW).verdict == "forward"  # same trigger, another ding
    assert d.decide(ev("ring:3", at=NOW + 60), NOW).verdict == "forward"  # a minute later
    assert d.decide(ev("ring:9", camera="back"), NOW).verdict == "forward"  # another camera
    store.close()
    store = DedupStore(tmp_path / "d.sqlite3")  # a restart remembers everything
    d2 = Deduper(store, DedupSettings(window=20))
    assert d2.decide(ev("ring:1"), NOW).verdict == "duplicate"
    assert d2.counts == {"forward": 4, "duplicate": 2, "merged": 1}
    store.close()


def frigate(name: str, type_: str = "new", **changes: object) -> FrigateEvent:
    data = load_jsonc(FIXTURES / "frigate" / name)
    data["type"] = type_
    data["after"].update(changes)
    return FrigateEvent.model_validate(data)


@pytest.mark.parametrize("name", ["docs_v0.13.2_00_frigate_events.jsonc", "docs_v0.17.2_00_frigate_events.jsonc"])
def test_frigate_payloads_of_each_release_decode(name: str) -> None:
    e = frigate(name)
    assert e.after.sub_label in (None, "John Smith", "Bob") or isinstance(e.after.sub_label, str)
    ingest = FrigateIngest(FrigateSettings(), "http://frigate:5000/")
    out = ingest.on_event(e)
    assert out is not None and out.snapshot is not None
    assert out.snapshot.url == f"http://frigate:5000/api/events/{e.after.id}/snapshot.jpg"
    assert ingest.on_event(frigate(name, "update")) is None
    assert ingest.on_event(frigate(name, "end")) is None
    assert ingest.opened == {}


def test_frigate_filters() -> None:
    name = "docs_v0.17.2_00_frigate_events.jsonc"
    f = FrigateIngest(FrigateSettings(min_score=0.99), "http://f")
    assert f.on_event(frigate(name)) is None
    f = FrigateIngest(FrigateSettings(cameras=("garage",)), "http://f")
    assert f.on_event(frigate(name)) is None
    f = FrigateIngest(FrigateSettings(), "http://f")
    assert f.on_event(frigate(name, false_positive=True)) is None


def test_walking_into_an_alert_zone_later_gives_the_event_that_pushes() -> None:
    """The person is on the street when Frigate opens the event and steps onto the porch later."""
    name = "docs_v0.17.2_00_frigate_events.jsonc"
    zones = {"front_door": ("porch",)}
    f = FrigateIngest(FrigateSettings(), "http://f", lambda camera: zones.get(camera, ()))
    first = f.on_event(frigate(name, camera="front_door", id="a", entered_zones=["street"], current_zones=["street"]))
    assert first is not None and first.event_id == "frigate:a" and first.zones == ("street",)
    assert f.on_event(frigate(name, "update", camera="front_door", id="a", entered_zones=["street"],
                              current_zones=["street"])) is None
    walked = f.on_event(frigate(name, "update", camera="front_door", id="a", entered_zones=["street", "porch"],
                                current_zones=["porch"]))
    assert walked is not None and walked.event_id == "frigate:a@zones" and "porch" in walked.zones
    assert f.on_event(frigate(name, "update", camera="front_door", id="a", entered_zones=["street", "porch"],
                              current_zones=["porch"])) is None  # once
    # already in the zone when it opened: one event; a camera without alert zones: one event
    assert f.on_event(frigate(name, camera="front_door", id="b", entered_zones=["porch"])) is not None
    assert f.on_event(frigate(name, "update", camera="front_door", id="b", entered_zones=["porch"])) is None
    assert f.on_event(frigate(name, camera="garage", id="c")) is not None
    assert f.on_event(frigate(name, "update", camera="garage", id="c", entered_zones=["porch"])) is None
    assert f.on_event(frigate(name, "end", camera="front_door", id="a")) is None and f.zoned == {"b"}


def test_frigate_review_alert_opens_the_event() -> None:
    data = load_jsonc(FIXTURES / "frigate" / "docs_v0.14.1_01_frigate_reviews.jsonc")
    f = FrigateIngest(FrigateSettings(trigger="reviews"), "http://f")
    out = f.on_review(FrigateReview.model_validate(data))
    assert out is not None and out.event_id == "frigate:1718987128.947436-g92ztx" and out.kind == "person"
    assert f.on_review(FrigateReview.model_validate(data)) is None
    data["after"]["severity"] = "detection"
    data["after"]["id"] = "other"
    data["after"]["data"]["detections"] = ["zzz"]
    assert f.on_review(FrigateReview.model_validate(data)) is None


def test_ring_handlers() -> None:
    cfg = RingSettings(cameras={"1234": "front_door"})
    out = from_push(PushDing(id=77, doorbot_id=1234, device_name="Front Door", kind="ding", now=NOW - 3), cfg, NOW)
    assert out is not None and (out.event_id, out.camera, out.kind) == ("ring:77", "front_door", "ding")
    assert from_push(PushDing(77, 1234, "Front Door", "ding", NOW, is_update=True), cfg, NOW) is None
    assert from_push(PushDing(78, 1234, "Front Door", "intercom_unlock", NOW), cfg, NOW) is None
    assert from_history(HistoryItem(5, 99, "Back Yard", "motion", NOW - 1000), cfg, NOW) is None  # too old
    h = from_history(HistoryItem(5, 99, "Back Yard", "motion", NOW - 10), cfg, NOW)
    assert h is not None and h.camera == "back_yard" and h.source == "ring_poll"
    m = RingMqttIngest(cfg)
    attrs = orjson.dumps({"lastMotion": NOW - 5, "personDetected": True})
    got = m.on_message("ring/loc/camera/abc/motion/attributes", attrs, NOW)
    assert got is not None and got.label == "person" and got.snapshot is not None
    assert got.snapshot.topic == "ring/loc/camera/abc/snapshot/image"
    assert m.on_message("ring/loc/camera/abc/ding/state", b"ON", NOW) is None
    with pytest.raises(ValueError, match="ON or OFF"):
        m.on_message("ring/loc/camera/abc/ding/state", b"maybe", NOW)
    assert m.on_message("ring/loc/alarm/abc/ding/state", b"whatever", NOW) is None  # not a camera topic


def test_settings_env_overrides_and_errors(tmp_path: Path) -> None:
    f = tmp_path / "h.yaml"
    f.write_text("mqtt_url: mqtt://a:1\ndedup: {window: 5}\n")
    s = load_settings(f, env={"HOMELAB_MQTT_URL": "mqtt://u:p%40ss@broker:1884", "HOMELAB_STATE_DIR": "/x"})
    assert s.mqtt_url == "mqtt://u:p%40ss@broker:1884" and s.dedup.window == 5 and str(s.state_dir) == "/x"
    t = parse_mqtt_url(s.mqtt_url)
    assert (t.host, t.port, t.username, t.password) == ("broker", 1884, "u", "p@ss")
    assert "p@ss" not in repr(t)
    f.write_text("dedup: {windw: 5}\n")
    with pytest.raises(SettingsError, match=r"dedup\.windw"):
        load_settings(f, env={})
    with pytest.raises(SettingsError, match="not found"):
        load_settings(tmp_path / "missing.yaml", env={})
    with pytest.raises(SettingsError, match="mqtt://"):
        parse_mqtt_url("http://x")
