"""vision_notifier against a real Mosquitto, the real router over simulated upstreams, and a local
HTTP server serving snapshots the way Frigate does."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from services.dedup.main import main as dedup_main
from services.frigate_consumer.main import main as frigate_main
from services.vision_notifier.ha import camera_discovery
from services.vision_notifier.main import Notifier
from services.vision_notifier.main import main as notifier_main
from services.vision_notifier.triage import EVENT_TYPES
from shared import topics
from shared.messages import CameraEvent, SnapshotRef
from shared.settings import NotifierSettings, Settings
from tests.broker import Broker
from tests.frigate_http import FakeFrigate
from tests.harness import BackgroundLoop, Lab
from tests.integration.test_ingest import fixture_object, frigate_sequence
from tests.pipeline import Collector, Service, publish, wait_online

POSITIVE = {"verdict": "positive", "confidence": 0.9, "objects": ["person"], "summary": "A person at the door"}
OUT = (topics.NOTIFY_TEXT, topics.NOTIFY_RICH, topics.TIMELINE, topics.TRIAGE)


@pytest.fixture
def settings(broker: Broker, lab: Lab, frigate: FakeFrigate, tmp_path: Path) -> Settings:
    lab.configure("ubuntu-4090", json_answer=POSITIVE)
    return Settings(mqtt_url=broker.url(), router_url=lab.base_url, frigate_url=frigate.url,
                    state_dir=tmp_path / "state", log_dir=tmp_path / "logs",
                    notifier=NotifierSettings(classifier_timeout=5, senior_timeout=5, channel_timeout=2,
                                              channel_retries=1, snapshot_retries=2, ha_state_delay=0.2))


@pytest.fixture
def out(bg: BackgroundLoop, broker: Broker) -> Iterator[Collector]:
    c = Collector(bg, broker.url(), *OUT, "homeassistant/#", "homelab/cameras/#", "homelab/vision_notifier/last_event")
    yield c
    c.close()


def camera_event(frigate: FakeFrigate, event_id: str = "frigate:ev-1", camera: str = "front_door") -> CameraEvent:
    return CameraEvent(event_id=event_id, source="frigate", camera=camera, kind="person", label="person",
                       score=0.9, started_at=time.time(),
                       snapshot=SnapshotRef(kind="frigate", url=f"{frigate.url}/api/events/{event_id}/snapshot.jpg"))


def send(bg: BackgroundLoop, broker: Broker, ev: CameraEvent) -> None:
    publish(bg, broker.url(), [(topics.UNIQUE, ev.model_dump_json())])


def outputs(c: Collector) -> list[tuple[str, dict[str, Any]]]:
    return [(t, orjson.loads(p)) for t, p, _ in c.messages if t in OUT]


def wait_timeline(c: Collector, n: int = 1, timeout: float = 20) -> list[dict[str, Any]]:
    assert c.wait(lambda: len(c.on(topics.TIMELINE)) >= n, timeout), outputs(c)
    return c.json_on(topics.TIMELINE)


def test_frigate_event_gives_text_then_rich_then_timeline_with_one_trace(
        bg: BackgroundLoop, broker: Broker, settings: Settings, frigate: FakeFrigate, notifier: Service,
        out: Collector) -> None:
    ingest = [Service(bg, frigate_main, settings), Service(bg, dedup_main, settings)]
    try:
        obj = fixture_object("docs_v0.17.2_00_frigate_events.jsonc", id="1700000000.1-abc", camera="front_door",
                             start_time=time.time())
        publish(bg, broker.url(), frigate_sequence(obj))
        record = wait_timeline(out)[0]
    finally:
        for s in ingest:
            s.stop()
    pushes = [t for t, _ in outputs(out) if t != topics.TRIAGE]
    assert pushes == [topics.NOTIFY_TEXT, topics.NOTIFY_RICH, topics.TIMELINE]
    text, rich = out.json_on(topics.NOTIFY_TEXT)[0], out.json_on(topics.NOTIFY_RICH)[0]
    triage = out.json_on(topics.TRIAGE)[0]
    assert len({text["trace_id"], rich["trace_id"], record["trace_id"], triage["trace_id"]}) == 1
    assert text["message"] == "A person at the door" and text["tag"] == "frigate:1700000000.1-abc"
    assert rich["tag"] == text["tag"]  # the phone replaces the fast push
    assert rich["description"].startswith("The simulated answer") and rich["degraded"] is False
    assert rich["image"] == "/api/image_proxy/image.front_door_snapshot"
    assert triage["verdict"] == "positive" and triage["escalate"] is True
    assert record["stage1"]["verdict"] == "positive" and record["stage2"]["degraded"] is False
    assert record["channels"]["text"]["ok"] and record["channels"]["rich"]["ok"]
    assert frigate.requests == 1


def test_the_classifier_gets_a_downsized_jpeg_with_the_triage_schema(bg: BackgroundLoop, broker: Broker, lab: Lab,
                                                                     frigate: FakeFrigate, notifier: Service,
                                                                     out: Collector) -> None:
    import base64
    import io

    from PIL import Image

    send(bg, broker, camera_event(frigate))
    wait_timeline(out)
    body = lab.sims["ubuntu-4090"].last_body
    assert body is not None and body["metadata"]["homelab_task"] == "camera_triage"
    assert body["response_format"]["json_schema"]["schema"]["required"] == ["verdict", "confidence"]
    url = body["messages"][1]["content"][1]["image_url"]["url"]
    with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as im:
        assert im.format == "JPEG" and max(im.size) == 1024  # 1920x1080 fitted into 1024


def test_confident_negative_is_recorded_but_not_pushed(bg: BackgroundLoop, broker: Broker, lab: Lab,
                                                       frigate: FakeFrigate, notifier: Service,
                                                       out: Collector) -> None:
    lab.configure("ubuntu-4090", json_answer={"verdict": "negative", "confidence": 0.95, "summary": "a leaf"})
    send(bg, broker, camera_event(frigate))
    record = wait_timeline(out)[0]
    assert record["dropped"] is True
    assert out.on(topics.NOTIFY_TEXT) == [] and out.on(topics.NOTIFY_RICH) == []
    assert out.json_on(topics.TRIAGE)[0]["dropped"] is True
    assert lab.sims["spark"].requests == 0  # the senior model was never asked


@pytest.mark.parametrize("answer", ["{not json", {"verdict": "negative"}, {"verdict": "maybe", "confidence": 1}])
def test_garbage_classifier_output_escalates_and_pushes(bg: BackgroundLoop, broker: Broker, lab: Lab,
                                                        frigate: FakeFrigate, notifier: Service, out: Collector,
                                                        answer: Any) -> None:
    lab.configure("ubuntu-4090", json_answer=answer)
    send(bg, broker, camera_event(frigate))
    record = wait_timeline(out)[0]
    assert record["dropped"] is False and record["stage1"]["synthetic"] is True
    assert len(out.on(topics.NOTIFY_TEXT)) == 1 and len(out.on(topics.NOTIFY_RICH)) == 1
    assert lab.sims["spark"].requests == 1


def test_senior_model_down_still_sends_a_degraded_rich_push(bg: BackgroundLoop, broker: Broker, lab: Lab,
                                                            frigate: FakeFrigate, notifier: Service,
                                                            out: Collector) -> None:
    lab.stop_upstream("spark")
    send(bg, broker, camera_event(frigate))
    record = wait_timeline(out)[0]
    rich = out.json_on(topics.NOTIFY_RICH)[0]
    assert rich["degraded"] is True and "A person at the door" in rich["description"]
    # a person reads it: no HTTP status, no route name, no address on the phone
    assert rich["description"].endswith("(description unavailable: senior model offline).")
    for internal in ("503", "spark", "127.0.0.1", "HTTP", "terminal"):
        assert internal not in rich["description"] and internal not in rich.get("message", "")
    assert record["stage2"]["degraded"] is True and "503" in record["stage2"]["error"]  # the cause: timeline
    assert out.wait(lambda: bool(out.on("homelab/vision_notifier/last_event")))
    last = out.json_on("homelab/vision_notifier/last_event")
    assert last[-1]["event_id"] == record["event_id"] and last[-1]["text_push_ok"] is True


def test_snapshot_missing_forever_escalates_without_the_classifier(bg: BackgroundLoop, broker: Broker, lab: Lab,
                                                                   frigate: FakeFrigate, notifier: Service,
                                                                   out: Collector) -> None:
    frigate.missing_for = -1
    send(bg, broker, camera_event(frigate))
    record = wait_timeline(out)[0]
    assert record["snapshot"]["ok"] is False and "404" in record["snapshot"]["error"]
    assert record["stage1"]["skipped"] is True and record["stage1"]["escalate_to_spark"] is True
    assert lab.sims["ubuntu-4090"].requests == 0
    assert len(out.on(topics.NOTIFY_TEXT)) == 1 and len(out.on(topics.NOTIFY_RICH)) == 1
    assert frigate.requests == 3  # the first try and two short retries


def test_a_brief_404_while_the_event_is_in_progress_is_retried(bg: BackgroundLoop, broker: Broker,
                                                               frigate: FakeFrigate, notifier: Service,
                                                               out: Collector) -> None:
    frigate.missing_for = 1
    send(bg, broker, camera_event(frigate))
    record = wait_timeline(out)[0]
    assert record["snapshot"]["ok"] is True and record["stage1"]["verdict"] == "positive"


def with_broken_channel(bg: BackgroundLoop, broker: Broker, settings: Settings, channel: str, error: str) -> Service:
    """The notifier, online, with one channel's port (``send_text``, ``send_rich``, ...) failing."""
    async def broken(ev: CameraEvent, payload: dict[str, Any]) -> None:
        raise ConnectionError(error)

    def configure(n: Notifier) -> None:
        setattr(n, f"send_{channel}", broken)

    async def run(s: Settings) -> None:
        await notifier_main(s, configure)

    svc = Service(bg, run, settings)
    wait_online(bg, broker)
    return svc


def test_rich_channel_broken_text_and_timeline_still_arrive(bg: BackgroundLoop, broker: Broker, settings: Settings,
                                                            frigate: FakeFrigate, out: Collector) -> None:
    svc = with_broken_channel(bg, broker, settings, "rich", "phone gateway down")
    try:
        send(bg, broker, camera_event(frigate))
        record = wait_timeline(out)[0]
    finally:
        svc.stop()
    assert len(out.on(topics.NOTIFY_TEXT)) == 1 and out.on(topics.NOTIFY_RICH) == []
    assert record["channels"]["rich"]["ok"] is False and "phone gateway down" in record["channels"]["rich"]["error"]
    assert record["channels"]["text"]["ok"] is True


def test_broker_restart_mid_flow_loses_nothing(bg: BackgroundLoop, broker: Broker, lab: Lab, frigate: FakeFrigate,
                                               notifier: Service, out: Collector) -> None:
    lab.configure("spark", ttft=1.5)  # the broker restarts while the senior model is writing
    send(bg, broker, camera_event(frigate))
    assert out.wait(lambda: len(out.on(topics.NOTIFY_TEXT)) == 1)
    broker.restart()
    wait_timeline(out)
    time.sleep(0.5)
    # at least once on the wire: a copy in flight at the restart may arrive twice, byte-identical
    # (the phone replaces it: same tag); one distinct message per channel is the contract
    assert [len(set(out.on(t))) for t in (topics.NOTIFY_TEXT, topics.NOTIFY_RICH, topics.TIMELINE)] == [1, 1, 1]


def test_notifier_restart_mid_flow_completes_the_event_once(bg: BackgroundLoop, broker: Broker, lab: Lab,
                                                            frigate: FakeFrigate, notifier: Service,
                                                            out: Collector) -> None:
    lab.configure("spark", ttft=1.5)
    send(bg, broker, camera_event(frigate))
    assert out.wait(lambda: len(out.on(topics.NOTIFY_TEXT)) == 1)
    notifier.stop()  # mid stage 2
    notifier.start()
    wait_timeline(out)
    send(bg, broker, camera_event(frigate))  # a redelivery of the same event changes nothing
    time.sleep(0.8)
    assert [len(out.on(t)) for t in (topics.NOTIFY_TEXT, topics.NOTIFY_RICH, topics.TIMELINE)] == [1, 1, 1]


def test_new_camera_discovery_comes_before_its_state(bg: BackgroundLoop, broker: Broker, frigate: FakeFrigate,
                                                     notifier: Service, out: Collector) -> None:
    send(bg, broker, camera_event(frigate, camera="side_gate"))
    wait_timeline(out)
    order = [t for t, _, _ in out.messages]
    first_state = min(order.index(t) for t in order if t.startswith("homelab/cameras/side_gate/"))
    configs = [i for i, t in enumerate(order) if t.startswith("homeassistant/") and "side_gate" in t]
    assert len(configs) == len(camera_discovery("side_gate", False)) and max(configs) < first_state
    discovery = {t: orjson.loads(p) for t, p, _ in out.messages if t.startswith("homeassistant/event/")}
    event_cfg = next(iter(discovery.values()))
    assert event_cfg["event_types"] == list(EVENT_TYPES)
    assert event_cfg["device"]["identifiers"] and event_cfg["origin"]["name"] == "homelab"
    states = out.json_on("homelab/cameras/side_gate/event")
    assert states and all(s["event_type"] in event_cfg["event_types"] for s in states)
    assert out.on("homelab/cameras/side_gate/snapshot")[0][:2] == b"\xff\xd8"  # a JPEG for the image entity


def test_scheduled_camera_selftest(bg: BackgroundLoop, broker: Broker, settings: Settings, notifier: Service) -> None:
    from services.scheduler.checks import camera_e2e

    async def run(timeout_s: float) -> str:
        import httpx

        async with httpx.AsyncClient() as client:
            return await camera_e2e(settings, client, {"timeout_s": timeout_s})

    ingest = [Service(bg, frigate_main, settings), Service(bg, dedup_main, settings)]
    try:
        wait_online(bg, broker, "dedup")
        assert bg.run(run(20)) == ""  # silent tick: the known sample went all the way
        notifier.stop()
        failed = bg.run(run(2))
        assert "homelab/notify/rich" in failed and "did not arrive" in failed
    finally:
        for s in ingest:
            s.stop()


def test_the_pipeline_works_under_the_per_service_acl(bg: BackgroundLoop, lab: Lab, frigate: FakeFrigate,
                                                      tmp_path: Path) -> None:
    """Every service as its own broker user under mosquitto/acl: nothing it needs is denied."""
    users = {u: f"{u}-pw" for u in ("frigate", "frigate_consumer", "dedup", "vision_notifier", "homeassistant")}
    b = Broker(tmp_path / "acl-broker", users=users, acl=True)
    lab.configure("ubuntu-4090", json_answer=POSITIVE)

    def as_user(user: str) -> Settings:
        return Settings(mqtt_url=b.url(user), router_url=lab.base_url, frigate_url=frigate.url,
                        state_dir=tmp_path / user, log_dir=tmp_path / "logs",
                        notifier=NotifierSettings(ha_state_delay=0.1))

    ha = Collector(bg, b.url("homeassistant"), *OUT, "homeassistant/#", "homelab/cameras/#", "homelab/+/status")
    svcs = [Service(bg, frigate_main, as_user("frigate_consumer")), Service(bg, dedup_main, as_user("dedup")),
            Service(bg, notifier_main, as_user("vision_notifier"))]
    try:
        assert ha.wait(lambda: {t for t, p, _ in ha.messages if p == b"online"} >= {
            topics.status(s) for s in ("frigate_consumer", "dedup", "vision_notifier")})
        obj = fixture_object("docs_v0.17.2_00_frigate_events.jsonc", id="acl-1", camera="porch", start_time=time.time())
        publish(bg, b.url("frigate"), frigate_sequence(obj))
        assert ha.wait(lambda: len(ha.on(topics.TIMELINE)) == 1, 20), [t for t, _, _ in ha.messages]
        assert len(ha.on(topics.NOTIFY_TEXT)) == 1 and len(ha.on(topics.NOTIFY_RICH)) == 1
        assert ha.on("homelab/cameras/porch/snapshot") and any(t.startswith("homeassistant/image/")
                                                               for t, _, _ in ha.messages)
    finally:
        for s in svcs:
            s.stop()
        ha.close()
        b.stop()


def test_ring_mqtt_event_uses_the_snapshot_topic(bg: BackgroundLoop, broker: Broker, lab: Lab,
                                                 notifier: Service, out: Collector) -> None:
    from services.sim_upstream.frigate import sample_jpeg

    topic = "ring/loc1/camera/3c7c3f000001/snapshot/image"
    ev = CameraEvent(event_id="ring_mqtt:3c7c3f000001:ding:1", source="ring_mqtt", camera="front_door", kind="ding",
                     label="person", started_at=time.time(), snapshot=SnapshotRef(kind="ring_mqtt", topic=topic))
    send(bg, broker, ev)
    publish(bg, broker.url(), [(topic, sample_jpeg(640, 360))])  # ring-mqtt's image arrives a moment later
    record = wait_timeline(out)[0]
    assert record["snapshot"]["ok"] is True and record["stage1"]["skipped"] is False
    assert lab.sims["ubuntu-4090"].requests == 1
    assert out.json_on(topics.NOTIFY_TEXT)[0]["event_type"] == "ding"


@pytest.mark.parametrize("pause", [0.0, 0.002])
def test_a_snapshot_that_arrives_in_pieces_is_read_whole(bg: BackgroundLoop, frigate: FakeFrigate,
                                                        pause: float) -> None:
    from services.vision_notifier.snapshot import fetch_frigate
    from shared.settings import NotifierSettings

    frigate.piece, frigate.pause = 1460, pause  # one TCP segment at a time, as over a real network
    cfg = NotifierSettings(snapshot_retries=0)

    async def fetch() -> bytes:
        async with aiohttp.ClientSession() as s:
            return await fetch_frigate(s, f"{frigate.url}/api/events/x/snapshot.jpg", cfg, {frigate.url[7:]})

    for _ in range(5 if pause else 30):
        assert bg.run(fetch()) == frigate.body  # every byte, every time (was: whatever had arrived)


def test_a_truncated_snapshot_is_an_error_not_half_an_image(bg: BackgroundLoop, frigate: FakeFrigate) -> None:
    from services.vision_notifier.snapshot import SnapshotError, fetch_frigate
    from shared.settings import NotifierSettings

    frigate.truncate_at = len(frigate.body) // 2
    cfg = NotifierSettings(snapshot_retries=1)

    async def fetch() -> bytes:
        async with aiohttp.ClientSession() as s:
            return await fetch_frigate(s, f"{frigate.url}/api/events/x/snapshot.jpg", cfg, {frigate.url[7:]})

    with pytest.raises(SnapshotError, match="no snapshot"):
        bg.run(fetch())
    assert frigate.requests == 2  # a broken transfer is worth one more try
