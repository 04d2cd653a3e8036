"""The camera pipeline over months, at its MQTT edge with a real Mosquitto: dedup's store holds what its
windows need and no more; a snooze ends when it was set to end, however often the notifier restarts."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from services.dedup.main import main as dedup_main
from shared import topics
from shared.settings import DedupSettings, Settings
from tests.broker import Broker
from tests.harness import BackgroundLoop
from tests.pipeline import Collector, Service, publish, wait_online


def raw_event(i: int, at: float, camera: str = "driveway") -> bytes:
    return orjson.dumps({"event_id": f"frigate:ev-{i}", "source": "frigate", "camera": camera, "kind": "person",
                         "label": "person", "score": 0.9, "started_at": at, "trace_id": f"t{i}"})


def rows(state: Path) -> dict[str, int]:
    db = sqlite3.connect(f"file:{state / 'dedup.sqlite3'}?mode=ro", uri=True)
    try:
        return {t: int(db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]) for t in ("seen", "outbox")}
    finally:
        db.close()


def test_dedup_prunes_as_it_goes(bg: BackgroundLoop, broker: Broker, tmp_path: Path) -> None:
    settings = Settings(mqtt_url=broker.url(), state_dir=tmp_path / "state", log_dir=tmp_path / "logs",
                        dedup=DedupSettings(identity_ttl=2.0, window=0))
    unique = Collector(bg, broker.url(), topics.UNIQUE)
    dedup = Service(bg, dedup_main, settings)
    try:
        wait_online(bg, broker, "dedup")
        now = time.time()
        publish(bg, broker.url(), [(topics.RAW, raw_event(i, now)) for i in range(200)])
        assert unique.wait(lambda: len(unique.on(topics.UNIQUE)) == 200, 20)
        assert rows(settings.state_dir)["seen"] == 200
        time.sleep(2.6)  # the identity window has passed (and a prune's cadence: a quarter of it)
        publish(bg, broker.url(), [(topics.RAW, raw_event(1000, time.time()))])
        assert unique.wait(lambda: len(unique.on(topics.UNIQUE)) == 201, 10)
        time.sleep(0.2)
        held = rows(settings.state_dir)
        assert held["seen"] == 1 and held["outbox"] == 0  # the same process, no restart: what the window needs
    finally:
        dedup.stop()
        unique.close()


def _snooze_state(c: Collector, camera: str) -> dict[str, Any]:
    return dict(c.json_on(f"homelab/cameras/{camera}/snooze")[-1])


def test_a_capped_snooze_keeps_its_end_across_restarts(bg: BackgroundLoop, broker: Broker, tmp_path: Path) -> None:
    from services.vision_notifier.main import main as notifier_main
    from tests.pipeline import wait_online

    settings = Settings(mqtt_url=broker.url(), state_dir=tmp_path / "state", log_dir=tmp_path / "logs")
    states = Collector(bg, broker.url(), "homelab/cameras/+/snooze")
    n = Service(bg, notifier_main, settings)
    try:
        wait_online(bg, broker)
        far = time.time() + 400 * 86400  # a typo: more than a year ahead, capped at 30 days
        publish(bg, broker.url(), [("homelab/cameras/garden/snooze/set",
                                    orjson.dumps({"until": far, "by": "phone"}))], retain=True)
        assert states.wait(lambda: any(s.get("snoozed") for s in states.json_on("homelab/cameras/garden/snooze")))
        end = _snooze_state(states, "garden")["until"]
        assert end < far and abs(end - (time.time() + 30 * 86400)) < 60
        for _ in range(2):  # restarted twice, a moment apart: the retained set message is read back each time
            n.stop()
            time.sleep(1.0)
            seen = len(states.on("homelab/cameras/garden/snooze"))
            n.start()
            assert states.wait(lambda seen=seen: len(states.on("homelab/cameras/garden/snooze")) > seen)
            assert _snooze_state(states, "garden")["until"] == end  # not "now + 30 days" again
    finally:
        if n.alive():
            n.stop()
        states.close()


# ---- exactly one push per channel across a broker outage ---------------------------------------

def test_a_broker_outage_pushes_each_event_once(bg: BackgroundLoop, broker: Broker, lab: Any, frigate: Any,
                                                tmp_path: Path) -> None:
    from services.vision_notifier.main import main as notifier_main
    from shared.settings import NotifierSettings
    from tests.integration.test_notifier import POSITIVE, camera_event, send
    from tests.pipeline import wait_online

    lab.configure("ubuntu-4090", json_answer=POSITIVE, ttft=1.0)  # the pushes come while the broker is away
    settings = Settings(mqtt_url=broker.url(), router_url=lab.base_url, frigate_url=frigate.url,
                        state_dir=tmp_path / "state", log_dir=tmp_path / "logs",
                        notifier=NotifierSettings(classifier_timeout=5, senior_timeout=5, channel_timeout=1,
                                                  channel_retries=2, first_push_deadline=30, ha_state_delay=0.1))
    out = Collector(bg, broker.url(), topics.NOTIFY_TEXT, topics.NOTIFY_RICH, topics.TIMELINE)
    n = Service(bg, notifier_main, settings)
    try:
        wait_online(bg, broker)
        events = [camera_event(frigate, f"frigate:outage-{i}") for i in range(6)]
        for ev in events:
            send(bg, broker, ev)
        time.sleep(0.4)  # the notifier has them; its classifier answers in a second
        broker.stop()
        time.sleep(6.0)  # every channel's timeout and retries run out meanwhile
        broker.start()
        ids = {ev.event_id for ev in events}
        assert out.wait(lambda: {e["event_id"] for e in out.json_on(topics.TIMELINE)} >= ids, 30)
        time.sleep(1.0)
        for topic in (topics.NOTIFY_TEXT, topics.NOTIFY_RICH):
            got = [e["event_id"] for e in out.json_on(topic)]
            assert sorted(got) == sorted(ids), (topic, got)  # each event once: no copy added by a retry
    finally:
        if n.alive():
            n.stop()
        out.close()


# ---- two instances of one service --------------------------------------------------------------

@pytest.mark.parametrize("split", [False, True])
def test_two_notifiers_share_the_work_without_a_fight(bg: BackgroundLoop, broker: Broker, lab: Any, frigate: Any,
                                                      tmp_path: Path, split: bool) -> None:
    """Two vision_notifier processes with the same settings: each its own MQTT client (no "already
    connected" kicks), every event pushed once — split by the broker (shared subscriptions) or by the
    shared state directory."""
    from services.vision_notifier.main import main as notifier_main
    from shared.settings import NotifierSettings
    from tests.integration.test_notifier import POSITIVE, camera_event, send
    from tests.pipeline import wait_online

    lab.configure("ubuntu-4090", json_answer=POSITIVE)
    settings = Settings(mqtt_url=broker.url(), router_url=lab.base_url, frigate_url=frigate.url,
                        state_dir=tmp_path / "state", log_dir=tmp_path / "logs", shared_subscriptions=split,
                        notifier=NotifierSettings(classifier_timeout=5, senior_timeout=5, ha_state_delay=0.1))
    out = Collector(bg, broker.url(), topics.NOTIFY_TEXT, topics.NOTIFY_RICH, topics.TIMELINE)
    pair = [Service(bg, notifier_main, settings), Service(bg, notifier_main, settings)]
    try:
        wait_online(bg, broker)
        time.sleep(1.0)
        events = [camera_event(frigate, f"frigate:pair-{i}") for i in range(6)]
        for ev in events:
            send(bg, broker, ev)
        ids = {ev.event_id for ev in events}
        assert out.wait(lambda: {e["event_id"] for e in out.json_on(topics.TIMELINE)} >= ids, 30)
        time.sleep(1.0)
        for topic in (topics.NOTIFY_TEXT, topics.NOTIFY_RICH, topics.TIMELINE):
            assert sorted(e["event_id"] for e in out.json_on(topic)) == sorted(ids), topic
        assert all(s.alive() for s in pair)
        log = (tmp_path / "broker" / "mosquitto.log")
        text = log.read_text(errors="replace") if log.exists() else ""
        assert "already connected" not in text  # nobody was kicked off the broker
    finally:
        for s in pair:
            if s.alive():
                s.stop()
        out.close()


# ---- known faces --------------------------------------------------------------------------------

def _notifier_settings(broker: Broker, lab: Any, frigate: Any, tmp_path: Path, **kw: Any) -> Settings:
    from shared.settings import NotifierSettings

    return Settings(mqtt_url=broker.url(), router_url=lab.base_url, frigate_url=frigate.url,
                    state_dir=tmp_path / "state", log_dir=tmp_path / "logs",
                    notifier=NotifierSettings(classifier_timeout=5, senior_timeout=5, ha_state_delay=0.1), **kw)


def test_a_residents_face_is_held_and_counted_unless_it_is_a_threat(bg: BackgroundLoop, broker: Broker, lab: Any,
                                                                      frigate: Any, tmp_path: Path) -> None:
    from services.vision_notifier.main import main as notifier_main
    from shared.messages import CameraEvent
    from shared.settings import CameraSettings
    from tests.integration.test_notifier import POSITIVE, camera_event, send
    from tests.pipeline import wait_online

    lab.configure("ubuntu-4090", json_answer=POSITIVE)
    settings = _notifier_settings(broker, lab, frigate, tmp_path, known_faces=("Alice",),
                                  cameras={"garage": CameraSettings(known_faces=("Carol",))})
    out = Collector(bg, broker.url(), topics.NOTIFY_TEXT, topics.NOTIFY_RICH, topics.TIMELINE,
                    "homelab/cameras/+/known_faces")
    n = Service(bg, notifier_main, settings)
    try:
        wait_online(bg, broker)

        def face(event_id: str, name: str | None, camera: str = "front_door") -> CameraEvent:
            return camera_event(frigate, event_id, camera).model_copy(update={"sub_label": name})

        send(bg, broker, face("frigate:alice", "alice"))  # Frigate's spelling may differ in case
        send(bg, broker, face("frigate:bob", "Bob"))  # a stranger: pushed as today
        send(bg, broker, face("frigate:carol-garage", "Carol", "garage"))  # a resident on this camera only
        send(bg, broker, face("frigate:carol-door", "Carol"))  # ... not on the front door
        assert out.wait(lambda: len(out.on(topics.TIMELINE)) >= 4, 20)
        records = {r["event_id"]: r for r in out.json_on(topics.TIMELINE)}
        assert records["frigate:alice"]["held"] == {"reason": "known face", "name": "Alice"}
        assert records["frigate:carol-garage"]["held"]["name"] == "Carol"
        assert "held" not in records["frigate:bob"] and "held" not in records["frigate:carol-door"]
        pushed = {e["event_id"] for e in out.json_on(topics.NOTIFY_TEXT)}
        assert pushed == {"frigate:bob", "frigate:carol-door"}
        counts = out.json_on("homelab/cameras/front_door/known_faces")
        assert counts[-1]["held"] == 1 and counts[-1]["last"] == "Alice"
        # a threat (level 2) gets through whoever it is
        lab.configure("ubuntu-4090", json_answer={**POSITIVE, "threat_level": 2})
        send(bg, broker, face("frigate:alice-2", "Alice"))
        assert out.wait(lambda: "frigate:alice-2" in {e["event_id"] for e in out.json_on(topics.NOTIFY_TEXT)}, 20)
    finally:
        n.stop()
        out.close()


def test_a_face_named_in_a_later_update_takes_the_push_back(bg: BackgroundLoop, broker: Broker, lab: Any,
                                                             frigate: Any, tmp_path: Path) -> None:
    from services.dedup.main import main as dedup_main
    from services.frigate_consumer.main import main as frigate_main
    from services.vision_notifier.main import main as notifier_main
    from tests.integration.test_ingest import fixture_object
    from tests.integration.test_notifier import POSITIVE
    from tests.pipeline import wait_online

    lab.configure("ubuntu-4090", json_answer=POSITIVE)
    settings = _notifier_settings(broker, lab, frigate, tmp_path, known_faces=("Alice",))
    out = Collector(bg, broker.url(), topics.NOTIFY_TEXT, topics.NOTIFY_CLEAR, topics.TIMELINE)
    svc = [Service(bg, frigate_main, settings), Service(bg, dedup_main, settings),
           Service(bg, notifier_main, settings)]
    try:
        wait_online(bg, broker)
        obj = fixture_object("docs_v0.17.2_00_frigate_events.jsonc", id="1700000000.5-face", camera="front_door",
                             start_time=time.time(), sub_label=None)
        new = {"type": "new", "before": obj, "after": {**obj, "end_time": None}}
        publish(bg, broker.url(), [("frigate/events", orjson.dumps(new))])
        assert out.wait(lambda: len(out.on(topics.TIMELINE)) >= 1, 20)  # pushed: a stranger, so far
        assert [e["event_id"] for e in out.json_on(topics.NOTIFY_TEXT)] == ["frigate:1700000000.5-face"]
        named = {**obj, "end_time": None, "sub_label": ["Alice", 0.93]}  # Frigate 0.14+'s [name, score]
        publish(bg, broker.url(), [("frigate/events", orjson.dumps({"type": "update", "before": obj, "after": named}))])
        assert out.wait(lambda: bool(out.on(topics.NOTIFY_CLEAR)), 10)
        clear = out.json_on(topics.NOTIFY_CLEAR)[-1]
        assert clear["tag"] == "frigate:1700000000.5-face" and "Alice" in clear["reason"]
        assert out.wait(lambda: len(out.on(topics.TIMELINE)) >= 2, 10)
        assert out.json_on(topics.TIMELINE)[-1]["held"] == {"reason": "known face", "name": "Alice"}
    finally:
        for s in svc:
            s.stop()
        out.close()


# ---- Ring as it comes ---------------------------------------------------------------------------

def ring_mqtt_discovery(device: str, name: str, location: str = "loc1") -> tuple[str, bytes]:
    """A discovery config as ring-mqtt publishes it for a camera's ding sensor (retained)."""
    return (f"homeassistant/binary_sensor/{location}/{device}_ding/config", orjson.dumps({
        "name": f"{name} Ding", "unique_id": f"{device}_ding",
        "availability_topic": f"ring/{location}/camera/{device}/status",
        "state_topic": f"ring/{location}/camera/{device}/ding/state",
        "json_attributes_topic": f"ring/{location}/camera/{device}/ding/attributes",
        "device": {"ids": [device], "name": name, "mf": "Ring", "mdl": "Doorbell Pro"}}))


def test_a_press_seen_by_the_push_and_by_ring_mqtt_is_one_event(bg: BackgroundLoop, broker: Broker,
                                                                 tmp_path: Path) -> None:
    """Default settings (no ring.cameras): ring-mqtt names the device by its id, the push by its name;
    what ring-mqtt publishes joins them, and the push's event takes ring-mqtt's snapshot topic."""
    from services.ring_listener.main import main as ring_main
    from tests.integration.test_ingest import PushHarness, iso, push_notification, ring_mqtt_ding

    settings = Settings(mqtt_url=broker.url(), state_dir=tmp_path / "state", log_dir=tmp_path / "logs",
                        dedup=DedupSettings(window=20))
    assert settings.ring.cameras == {}
    device = "3c7c3f0a1b2c"
    publish(bg, broker.url(), [ring_mqtt_discovery(device, "Front Door")], retain=True)
    out = Collector(bg, broker.url(), topics.RAW, topics.UNIQUE)
    svc = [Service(bg, ring_main, settings), Service(bg, dedup_main, settings)]
    h = PushHarness(bg, settings, [])
    try:
        time.sleep(1.0)  # the listener has read the retained discovery
        h.bg.run(h.rl.on_mqtt(*ring_mqtt_discovery(device, "Front Door")))
        h.bg.run(h.rl.on_mqtt(f"ring/loc1/camera/{device}/ding/state", b"OFF"))
        now = float(int(time.time()))
        h.push(push_notification(7001, iso(now)))
        publish(bg, broker.url(), ring_mqtt_ding(device, now + 1))
        assert out.wait(lambda: len(out.on(topics.RAW)) >= 2, 10)
        time.sleep(0.5)
        raw = out.json_on(topics.RAW)
        assert {e["camera"] for e in raw} == {"front_door"}  # one camera, whichever path saw it
        assert [e["event_id"] for e in out.json_on(topics.UNIQUE)] == ["ring:7001"]  # one press, one event
        pushed = next(e for e in raw if e["source"] == "ring_push")
        assert pushed["snapshot"] == {"kind": "ring_mqtt", "device_id": device,
                                      "topic": f"ring/loc1/camera/{device}/snapshot/image"}
    finally:
        h.close()
        for s in svc:
            s.stop()
        out.close()
