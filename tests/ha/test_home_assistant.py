"""Against a running Home Assistant 2025.4.4 fed by the real pipeline: the push a phone gets (as the
call Home Assistant makes to a stand-in phone) and the entities a person sees."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from services.dedup.main import main as dedup_main
from services.frigate_consumer.main import main as frigate_main
from services.netdata_bridge.main import main as netdata_main
from services.vision_notifier.ha import entity_ids
from services.vision_notifier.main import main as notifier_main
from services.vision_notifier.push import Level, push_data
from shared import topics
from shared.settings import CameraSettings, NetdataSettings, NotifierSettings, Settings
from tests.broker import Broker
from tests.frigate_http import FakeFrigate
from tests.ha.hass import PHONE, HomeAssistant, Phone, Push
from tests.harness import BackgroundLoop, Lab
from tests.netdata_http import FakeParent, lab_hosts
from tests.pipeline import Collector, Service, publish

CAMERAS = ["front_door", "back-yard", "Garden Cam"]  # a hyphen, a space and capitals too
POSITIVE = {"verdict": "positive", "confidence": 0.9, "objects": ["person"], "summary": "A person at the door"}


@dataclass
class World:
    bg: BackgroundLoop
    broker: Broker
    ha: HomeAssistant
    phone: Phone
    lab: Lab
    frigate: FakeFrigate
    settings: Settings
    services: list[Service]


@pytest.fixture(scope="module")
def world(bg: BackgroundLoop, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("ha")
    broker = Broker(tmp / "broker")
    phone = Phone(bg)
    phone.start()
    (tmp / "lab").mkdir()
    lab = Lab(bg, tmp / "lab", mqtt_url=broker.url())
    lab.configure("ubuntu-4090", json_answer=POSITIVE)
    frigate = FakeFrigate(bg)
    parent = FakeParent(bg, lab_hosts())
    birth = Collector(bg, broker.url(), topics.HA_STATUS)
    ha = HomeAssistant(tmp / "config", int(broker.url().rsplit(":", 1)[1]), phone.port, CAMERAS,
                       blueprint_only=("porch",))
    ha.start()
    assert birth.wait(lambda: b"online" in birth.on(topics.HA_STATUS), 30), "no MQTT birth message from HA"
    birth.close()
    settings = Settings(mqtt_url=broker.url(), router_url=lab.base_url, frigate_url=frigate.url,
                        netdata_url=parent.url, state_dir=tmp / "state", log_dir=tmp / "logs",
                        notifier=NotifierSettings(classifier_timeout=8, senior_timeout=5, channel_timeout=3,
                                                  snapshot_retries=2),  # ha_state_delay as shipped (1 s)
                        cameras={"driveway": CameraSettings(zones=("drive",))}, known_faces=("Alice",),
                        netdata=NetdataSettings(interval=2))
    services = [Service(bg, m, settings) for m in (frigate_main, dedup_main, notifier_main, netdata_main)]
    w = World(bg, broker, ha, phone, lab, frigate, settings, services)
    try:
        yield w
    finally:
        for s in services:
            if s.alive():
                s.stop()
        ha.stop()
        parent.close()
        frigate.close()
        lab.close()
        phone.stop()
        broker.stop()


@pytest.fixture(autouse=True)
def fresh(world: World) -> Iterator[None]:
    """Each test starts with the phone chosen, pushes on, no quiet hours, no blueprint hand-off."""
    ha = world.ha
    ha.call("input_text", "set_value", entity_id="input_text.homelab_notify_target", value=PHONE)
    ha.call("input_text", "set_value", entity_id="input_text.homelab_cameras_via_blueprint", value="")
    ha.call("input_boolean", "turn_off", entity_id="input_boolean.homelab_pushes_paused")
    ha.call("input_boolean", "turn_off", entity_id="input_boolean.homelab_quiet_hours")
    ha.call("persistent_notification", "dismiss_all")
    world.phone.pushes.clear()
    yield


def frigate_event(w: World, camera: str) -> str:
    fid = f"{time.time():.6f}-{camera.replace(' ', '')}"
    obj = {"id": fid, "camera": camera, "label": "person", "score": 0.9, "top_score": 0.9, "false_positive": False,
           "start_time": time.time(), "end_time": None, "current_zones": [], "entered_zones": []}
    publish(w.bg, w.broker.url(), [("frigate/events", orjson.dumps({"type": "new", "before": obj, "after": obj}))])
    return f"frigate:{fid}"


def notify(w: World, camera: str, event_type: str = "person", tag: str | None = None, level: Level = 1) -> str:
    """What the notifier publishes for an event (text, then rich), for tests of HA's side alone."""
    tag = tag or f"t-{time.time_ns()}"
    text = {"event_id": tag, "trace_id": tag, "camera": camera, "title": f"{camera}: person", "message": "A person",
            "tag": tag, "event_type": event_type, "verdict": "positive", "degraded": False, "threat_level": level,
            "alert_at": time.time(),
            "zones": [], "push": push_data(camera, tag, level, CameraSettings())}
    rich = {**text, "message": "A person at the door", "description": "A person at the door", "has_image": False,
            "image": "/api/image_proxy/x", "push": push_data(camera, tag, level, CameraSettings(), replaces=level)}
    publish(w.bg, w.broker.url(), [(topics.NOTIFY_TEXT, orjson.dumps(text)), (topics.NOTIFY_RICH, orjson.dumps(rich))])
    return tag


def settle(w: World, seconds: float = 2.0) -> list[Push]:
    time.sleep(seconds)
    return list(w.phone.pushes)


def notifications(ha: HomeAssistant) -> list[dict[str, Any]]:
    r = httpx.get(ha.url + "/api/states", headers=ha.headers, timeout=10)
    return [s for s in r.json() if s["entity_id"].startswith("persistent_notification.")] or _ws_notifications(ha)


def _ws_notifications(ha: HomeAssistant) -> list[dict[str, Any]]:
    """Persistent notifications are not states since 2023.6: read them through the websocket API."""
    import asyncio

    import aiohttp

    async def go() -> list[dict[str, Any]]:
        async with aiohttp.ClientSession() as s, s.ws_connect(ha.url + "/api/websocket") as ws:
            await ws.receive_json()
            await ws.send_json({"type": "auth", "access_token": ha.token})
            await ws.receive_json()
            await ws.send_json({"id": 1, "type": "persistent_notification/get"})
            msg = await ws.receive_json()
            return list(msg.get("result") or [])

    return asyncio.run(go())


# ---- discovery: what a person sees --------------------------------------------------------------

def test_discovery_gives_every_entity_with_state_and_availability(world: World) -> None:
    for camera in CAMERAS:
        frigate_event(world, camera)
    world.phone.wait(2 * len(CAMERAS))
    ha = world.ha
    for camera in CAMERAS:
        ids = entity_ids(camera)
        for eid in ids.values():
            st = ha.state(eid)
            assert st is not None, f"{eid} was not created"
            # a button's state is when it was last pressed: unknown until then
            bad = ("unavailable",) if eid.startswith("button.") else ("unavailable", "unknown")
            assert st["state"] not in bad, (eid, st["state"])
    for route in ("ubuntu-4090", "ubuntu-6000", "win-5090", "spark"):
        r = route.replace("-", "_")
        st = ha.state(f"binary_sensor.router_{r}_healthy")
        assert st is not None and st["state"] == "on", (route, st)
    deadline = time.monotonic() + 20
    while (ha.state("sensor.workstation_cpu") or {}).get("state") in (None, "unknown", "unavailable") \
            and time.monotonic() < deadline:
        time.sleep(0.5)
    assert float(ha.state("sensor.workstation_cpu")["state"]) > 0  # type: ignore[index]
    assert ha.state("sensor.ubuntu_4090_gpu0_temperature")["state"] == "71.0"  # type: ignore[index]
    assert ha.state("sensor.spark_gpu0_memory_used") is None  # unified memory: no VRAM sensor


# ---- the push a phone gets ------------------------------------------------------------------------

def test_one_frigate_event_gives_one_text_then_one_rich_call(world: World) -> None:
    event_id = frigate_event(world, "front_door")
    pushes = world.phone.wait(2)
    pushes = settle(world, 1.5)  # and nothing more comes
    assert len(pushes) == 2, [(p.title, p.message) for p in pushes]
    text, rich = pushes
    assert text.data["tag"] == rich.data["tag"] == event_id
    assert text.message == "A person at the door" and text.data["priority"] == "high"
    assert rich.message.startswith("The simulated answer") and rich.data["clickAction"] == "/homelab-cameras/cameras"
    # the image URL is one HA's image proxy serves, with the snapshot the notifier published
    image = rich.data["image"]
    r = httpx.get(world.ha.url + image, headers=world.ha.headers, timeout=10)
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg" and r.content[:2] == b"\xff\xd8"


def test_no_snapshot_means_no_image_key(world: World) -> None:
    world.frigate.missing_for = -1  # Frigate never has the snapshot
    try:
        frigate_event(world, "front_door")
        _, rich = world.phone.wait(2)
    finally:
        world.frigate.missing_for = 0
    assert "image" not in rich.data  # omitted, not image: ""


def test_a_degraded_description_reads_as_a_person_writes_it(world: World) -> None:
    world.lab.stop_upstream("spark")
    try:
        frigate_event(world, "front_door")
        _, rich = world.phone.wait(2)
    finally:
        world.lab.start_upstream("spark")
    assert rich.message.endswith("(description unavailable: senior model offline).")
    for internal in ("503", "spark", "127.0.0.1", "HTTP"):
        assert internal not in rich.message


@pytest.mark.parametrize("camera", CAMERAS)
def test_every_camera_name_notifies(world: World, camera: str) -> None:
    event_id = frigate_event(world, camera)
    pushes = world.phone.wait(2)
    assert [p.data.get("tag") for p in pushes] == [event_id, event_id]


def test_quiet_hours_hold_back_all_but_a_doorbell_ring(world: World) -> None:
    ha = world.ha
    now = datetime.now(UTC)
    start, end = (now - timedelta(hours=1)).strftime("%H:%M:%S"), (now + timedelta(hours=1)).strftime("%H:%M:%S")
    ha.call("input_datetime", "set_datetime", entity_id="input_datetime.homelab_quiet_start", time=start)
    ha.call("input_datetime", "set_datetime", entity_id="input_datetime.homelab_quiet_end", time=end)
    ha.call("input_boolean", "turn_on", entity_id="input_boolean.homelab_quiet_hours")
    notify(world, "front_door", "person")
    assert settle(world) == []  # quiet: nothing at all, neither text nor rich
    notify(world, "front_door", "ding")
    assert len(world.phone.wait(2)) == 2  # a ring gets through
    ha.call("input_boolean", "turn_off", entity_id="input_boolean.homelab_quiet_hours")
    world.phone.pushes.clear()
    notify(world, "front_door", "person")
    assert len(world.phone.wait(2)) == 2


def test_pause_switch(world: World) -> None:
    world.ha.call("input_boolean", "turn_on", entity_id="input_boolean.homelab_pushes_paused")
    notify(world, "front_door")
    assert settle(world) == []


@pytest.mark.parametrize("camera", ["front_door", "back-yard", "Garden Cam"])
def test_a_camera_handed_to_the_blueprint_gets_one_push_and_a_cooldown(world: World, camera: str) -> None:
    world.ha.call("input_text", "set_value", entity_id="input_text.homelab_cameras_via_blueprint",
                  value=", ".join(CAMERAS))
    tag = notify(world, camera)
    pushes = settle(world, 2.5)
    # the blueprint's progressive push (text, then the description under the same tag), not two sets
    assert [(p.message, p.data["tag"]) for p in pushes] == [("A person", tag), ("A person at the door", tag)]
    assert pushes[1].data.get("alert_once") is True and pushes[0].data["actions"][0]["title"].startswith("Snooze")
    notify(world, camera)  # a second alert inside the cooldown
    assert len(settle(world, 2.0)) == 2


def test_a_missing_phone_still_reaches_the_user(world: World) -> None:
    world.ha.call("input_text", "set_value", entity_id="input_text.homelab_notify_target", value="")
    notify(world, "front_door")
    time.sleep(2)
    notes = _ws_notifications(world.ha)
    assert any("A person at the door" in n["message"] and "choose one" in n["message"] for n in notes), notes


@pytest.mark.parametrize("topic", ["camera", "alert"])
def test_a_wrong_phone_still_reaches_the_user(world: World, topic: str) -> None:
    world.ha.call("input_text", "set_value", entity_id="input_text.homelab_notify_target", value="mobile_app_pixel_9")
    if topic == "camera":
        notify(world, "front_door")
        want = "A person at the door"
    else:
        publish(world.bg, world.broker.url(), [("homelab/alert", orjson.dumps(
            {"title": "homelab: upstream_health", "message": "spark is down"}))])
        want = "spark is down"
    deadline = time.monotonic() + 15
    notes: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        notes = _ws_notifications(world.ha)
        if any(n.get("notification_id") == "homelab_push_failed" for n in notes):
            break
        time.sleep(0.3)
    failed = [n for n in notes if n.get("notification_id") == "homelab_push_failed"]
    assert failed, notes
    assert want in failed[0]["message"] and "mobile_app_pixel_9" in failed[0]["message"]


def test_the_phone_chosen_in_the_ui_survives_a_restart(world: World) -> None:
    ha = world.ha
    ha.call("input_text", "set_value", entity_id="input_text.homelab_notify_target", value="mobile_app_pixel_9")
    ha.call("input_boolean", "turn_on", entity_id="input_boolean.homelab_quiet_hours")
    ha.restart()
    assert ha.state("input_text.homelab_notify_target")["state"] == "mobile_app_pixel_9"  # type: ignore[index]
    assert ha.state("input_boolean.homelab_quiet_hours")["state"] == "on"  # type: ignore[index]


def test_the_shipped_yaml_loads_without_errors(world: World) -> None:
    errors = [e for e in world.ha.errors() if "homelab" in e or "blueprint" in e or "package" in e.lower()]
    assert not [e for e in errors if "not found" not in e], errors  # (a wrong phone is logged on purpose)
    automations = world.ha.template("{{ states.automation | map(attribute='entity_id') | list }}")
    for a in ("homelab_fast_camera_push", "homelab_camera_push_with_description_and_snapshot",
              "homelab_front_door_push_quiet_hours_2_min_cooldown"):
        assert a in automations, automations


# ---- what a person sees: the dashboards in a real browser ----------------------------------------

VIEWS = [("system-health", "overview"), ("system-health", "gpus"), ("homelab-cameras", "cameras")]
SHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


def ws_call(ha: HomeAssistant, message: dict[str, Any]) -> dict[str, Any]:
    """One command on Home Assistant's websocket API, as its frontend sends them."""
    import asyncio

    import aiohttp

    async def go() -> dict[str, Any]:
        async with aiohttp.ClientSession() as s, s.ws_connect(ha.url + "/api/websocket") as ws:
            await ws.receive_json()
            await ws.send_json({"type": "auth", "access_token": ha.token})
            await ws.receive_json()
            await ws.send_json({"id": 1, **message})
            return dict(await ws.receive_json())

    return asyncio.run(go())


def a_day_of_gpu_history(ha: HomeAssistant) -> None:
    """What a lab that has run for a day has in Home Assistant's long-term statistics: hourly means of each
    GPU's temperature and power (imported, as HA's recorder would have compiled them), so the dashboard's
    graphs are drawn as a person sees them after a day, not as specks of the last minute."""
    import math
    from datetime import UTC, datetime, timedelta

    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    series = {"temperature": ("°C", 62.0, 9.0), "power": ("W", 280.0, 120.0)}
    for i, host in enumerate(("ubuntu_4090", "ubuntu_6000", "win_5090", "spark")):
        for metric, (unit, base, swing) in series.items():
            scale = 0.25 if host == "spark" and metric == "power" else 1.0
            stats = [{"start": (now - timedelta(hours=h)).isoformat(),
                      "mean": round(scale * (base + swing * math.sin((h + 3 * i) / 3.0)), 1),
                      "min": round(scale * (base - swing), 1), "max": round(scale * (base + swing), 1)}
                     for h in range(24, 0, -1)]
            got = ws_call(ha, {"type": "recorder/import_statistics", "metadata": {
                "has_mean": True, "has_sum": False, "name": None, "source": "recorder",
                "statistic_id": f"sensor.{host}_gpu0_{metric}", "unit_of_measurement": unit}, "stats": stats})
            assert got.get("success"), got


def test_dashboards_in_a_real_browser(world: World, tmp_path: Path) -> None:
    """Debian's Chromium, headless, logged in with the owner's token: every card shows a live entity."""
    import os

    from playwright.sync_api import sync_playwright

    a_day_of_gpu_history(world.ha)

    for camera in ("front_door", "back-yard", "Garden Cam"):
        frigate_event(world, camera)
    world.phone.wait(6)
    # one camera snoozed, as the dashboard then shows it (until when, and the button that cancels it)
    world.ha.call("script", "homelab_camera_snooze", camera="Garden Cam", minutes=60, by="dashboard")
    wait_state(world.ha, "sensor.garden_cam_snooze", lambda s: s.startswith("until "))
    out = Path(os.environ.get("HOMELAB_SCREENSHOTS_DIR") or tmp_path)  # =docs/screenshots to refresh the docs
    out.mkdir(parents=True, exist_ok=True)
    ha = world.ha
    tokens = orjson.dumps({"access_token": ha.token, "token_type": "Bearer", "expires_in": 315360000,
                           "hassUrl": ha.url, "clientId": ha.url + "/", "expires": int(time.time() * 1000) + 10**12,
                           "refresh_token": ""}).decode()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(ha.url + "/auth/authorize?response_type=code")  # any page of HA's origin
            page.evaluate(f"localStorage.setItem('hassTokens', JSON.stringify({tokens}))")
            for dashboard, view in VIEWS:
                page.goto(f"{ha.url}/{dashboard}/{view}")
                page.wait_for_selector("hui-view, hui-panel-view, hui-sections-view", timeout=30_000)
                cards = page.locator("hui-entities-card, hui-picture-entity-card, hui-glance-card, "
                                     "hui-gauge-card, hui-sensor-card, hui-tile-card, hui-statistics-graph-card")
                cards.first.wait_for(timeout=30_000)
                page.wait_for_timeout(2500)  # images and history settle
                page.screenshot(path=str(out / f"{dashboard}-{view}.png"), full_page=True)
                assert cards.count() > 0, f"{dashboard}/{view}: no cards"
                missing = page.locator("hui-warning").all_inner_texts()
                assert not missing, f"{dashboard}/{view}: {missing}"  # "Entity not available: …"
                body = page.locator("home-assistant").inner_text()
                for broken in ("Unavailable", "Entity not available", "History integration disabled"):
                    assert broken not in body, f"{dashboard}/{view}: {broken}"
                if view == "cameras":  # the snoozed camera: until when, and the way to cancel it
                    assert page.get_by_text("Cancel snooze").count() == 3
                    assert page.get_by_text("until ").count() == 1, page.get_by_text("until ").all_inner_texts()
        finally:
            browser.close()
    assert sorted(f.name for f in out.glob("*.png")) == sorted(f"{d}-{v}.png" for d, v in VIEWS)
    world.ha.call("button", "press", entity_id="button.garden_cam_cancel_snooze")
    wait_state(world.ha, "sensor.garden_cam_snooze", lambda s: s == "off")


# ---- alerts people keep on: levels, snooze from the phone, zones, the first push on time -----------

def fire(ha: HomeAssistant, event_type: str, data: dict[str, Any]) -> None:
    r = httpx.post(f"{ha.url}/api/events/{event_type}", headers=ha.headers, json=data, timeout=10)
    r.raise_for_status()


def wait_state(ha: HomeAssistant, entity_id: str, pred: Any, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    state = None
    while time.monotonic() < deadline:
        state = (ha.state(entity_id) or {}).get("state")
        if state is not None and pred(state):
            return str(state)
        time.sleep(0.2)
    raise AssertionError(f"{entity_id} is {state!r}")


def ring(w: World, camera: str) -> str:
    """A doorbell ring as the ring listener would publish it (after dedup)."""
    from shared.messages import CameraEvent, SnapshotRef

    eid = f"ring:{time.time_ns()}"
    ev = CameraEvent(event_id=eid, source="ring_push", camera=camera, kind="ding", started_at=time.time(),
                     snapshot=SnapshotRef(kind="frigate", url=f"{w.frigate.url}/api/events/{eid}/snapshot.jpg"))
    publish(w.bg, w.broker.url(), [(topics.UNIQUE, ev.model_dump_json())])
    return eid


def restart_notifier(w: World) -> None:
    notifier = next(s for s in w.services if s.main is notifier_main)
    notifier.stop()
    notifier.start()


@pytest.fixture
def timeline(world: World) -> Iterator[Collector]:
    c = Collector(world.bg, world.broker.url(), topics.TIMELINE)
    yield c
    c.close()


def held(timeline: Collector, event_id: str, timeout: float = 20) -> dict[str, Any]:
    def rec() -> dict[str, Any] | None:
        return next((r for r in timeline.json_on(topics.TIMELINE) if r["event_id"] == event_id), None)

    assert timeline.wait(lambda: rec() is not None, timeout), f"{event_id} never reached the timeline"
    return rec()  # type: ignore[return-value]


@pytest.mark.parametrize("level", [0, 1, 2])
def test_each_threat_level_as_the_phone_gets_it(world: World, level: int) -> None:
    world.lab.configure("ubuntu-4090", json_answer={**POSITIVE, "threat_level": level})
    try:
        event_id = frigate_event(world, "front_door")
        if level == 0:
            assert settle(world, 4.0) == []  # never buzzes: nothing reaches the phone
            return
        text, rich = world.phone.wait(2)
    finally:
        world.lab.configure("ubuntu-4090", json_answer=POSITIVE)
    for p in (text, rich):
        d = p.data
        assert d["tag"] == event_id and d["priority"] == "high" and d["ttl"] == 0  # Android: now, not after Doze
        assert [a["title"] for a in d["actions"]] == ["Snooze Front Door 30 min", "Snooze 1 h", "Open"]
        assert d["actions"][2]["uri"] == "/homelab-cameras/cameras"
    if level == 2:  # rings through Focus / Do Not Disturb on both phones
        assert text.data["push"] == {"interruption-level": "critical",
                                     "sound": {"name": "default", "critical": 1, "volume": 1.0}}
        assert text.data["channel"] == "alarm_stream"
    else:
        assert text.data["push"] == {"interruption-level": "active"} and text.data["channel"] == "homelab_camera"
    # the described push replaces the first without buzzing again
    assert rich.data["push"] == {"interruption-level": "passive"} and rich.data["alert_once"] is True


def test_snooze_from_the_phone_holds_across_restarts_until_cancelled(world: World, timeline: Collector) -> None:
    ha = world.ha
    frigate_event(world, "front_door")
    text, _ = world.phone.wait(2)
    tap = text.data["actions"][0]  # "Snooze Front Door 30 min", as the companion app fires it when tapped
    world.phone.pushes.clear()
    fire(ha, "mobile_app_notification_action", {"action": tap["action"], "tag": text.data["tag"]})
    until = wait_state(ha, "sensor.front_door_snooze", lambda s: s.startswith("until "))
    attrs = ha.state("sensor.front_door_snooze")["attributes"]  # type: ignore[index]
    assert attrs["snoozed"] is True and attrs["by"] == "phone"
    assert 29 * 60 < attrs["until"] - time.time() <= 30 * 60 + 1  # HA rounds it to the second

    try:
        quiet = frigate_event(world, "front_door")
        assert held(timeline, quiet)["held"]["reason"] == "snoozed"  # on the timeline, marked snoozed
        other = frigate_event(world, "back-yard")  # only that camera
        assert [p.data["tag"] for p in world.phone.wait(2)] == [other, other]
        world.phone.pushes.clear()
        rang = ring(world, "front_door")  # a ring still pushes
        assert [p.data["tag"] for p in world.phone.wait(2)] == [rang, rang]
        world.phone.pushes.clear()

        ha.restart()
        assert wait_state(ha, "sensor.front_door_snooze", lambda s: s.startswith("until ")) == until
        restart_notifier(world)
        again = frigate_event(world, "front_door")
        assert held(timeline, again)["held"]["reason"] == "snoozed"
        assert [p for p in world.phone.pushes if p.data.get("tag") == again] == []
    finally:  # cancelled from the dashboard's button, whatever happened above
        ha.call("button", "press", entity_id="button.front_door_cancel_snooze")
    wait_state(ha, "sensor.front_door_snooze", lambda s: s == "off")
    back = frigate_event(world, "front_door")
    assert [p.data["tag"] for p in world.phone.wait(2)] == [back, back]


def test_zones_decide_what_pushes(world: World, timeline: Collector) -> None:
    def at(zones: list[str], fid: str | None = None, kind: str = "new") -> str:
        fid = fid or f"{time.time():.6f}-drive"
        obj = {"id": fid, "camera": "driveway", "label": "car", "score": 0.9, "top_score": 0.9,
               "false_positive": False, "start_time": time.time(), "end_time": None, "current_zones": zones[-1:],
               "entered_zones": zones}
        publish(world.bg, world.broker.url(),
                [("frigate/events", orjson.dumps({"type": kind, "before": obj, "after": obj}))])
        return f"frigate:{fid}"

    street = at(["street"])
    assert held(timeline, street)["held"] == {"reason": "outside zones", "zones": ["drive"]}
    assert world.phone.pushes == []
    drive = at(["street", "drive"])
    assert [p.data["tag"] for p in world.phone.wait(2)] == [drive, drive]
    world.phone.pushes.clear()
    # the car was on the street when Frigate saw it and turns into the drive later: that pushes
    walked = at(["street", "drive"], fid=street.split(":", 1)[1], kind="update")
    assert [p.data["tag"] for p in world.phone.wait(2)] == [f"{walked}@zones"] * 2


def test_a_slow_classifier_never_holds_the_first_push_and_level_0_takes_it_back(world: World,
                                                                                timeline: Collector) -> None:
    from tests.integration.test_alerts import slow_classifier

    lab = world.lab
    deadline = world.settings.notifier.first_push_deadline
    slow_classifier(lab, 5.0)
    lab.configure("ubuntu-4090", json_answer={"verdict": "negative", "confidence": 0.95, "threat_level": 0})
    try:
        sent = time.time()
        event_id = frigate_event(world, "front_door")
        first = world.phone.wait(1)[0]
        assert first.message == "Person at Front Door" and first.data["tag"] == event_id
        late = first.at - sent - deadline
        print(f"first push {late * 1000:+.0f} ms after the deadline")
        assert late < 0.3, f"the first push came {late:.2f} s after the deadline"
        cleared = world.phone.wait(2, timeout=15)[1]
    finally:
        lab.configure("ubuntu-4090", json_answer=POSITIVE, ttft=0.0)
    assert cleared.message == "clear_notification" and cleared.data == {"tag": event_id}
    assert "cleared" in held(timeline, event_id)["cleared"]


def test_the_blueprint_follows_a_real_alert_and_takes_it_back(world: World) -> None:
    """porch is handed to its blueprint automation: a slow classifier's deadline push and its withdrawal
    come from the blueprint, once (the package stays out)."""
    from tests.integration.test_alerts import slow_classifier

    world.ha.call("input_text", "set_value", entity_id="input_text.homelab_cameras_via_blueprint", value="porch")
    lab = world.lab
    slow_classifier(lab, 4.0)
    lab.configure("ubuntu-4090", json_answer={"verdict": "negative", "confidence": 0.95, "threat_level": 0})
    try:
        event_id = frigate_event(world, "porch")
        world.phone.wait(2, timeout=15)
    finally:
        lab.configure("ubuntu-4090", json_answer=POSITIVE, ttft=0.0)
    pushes = settle(world, 1.0)
    assert [(p.message, p.data.get("tag")) for p in pushes] == [
        ("Person at Porch", event_id), ("clear_notification", event_id)]
    assert pushes[0].data["actions"][0]["title"] == "Snooze Porch 30 min"


def test_a_residents_face_never_reaches_the_phone_and_one_named_later_is_taken_back(world: World,
                                                                                   timeline: Collector) -> None:
    def seen(sub_label: Any, fid: str | None = None, kind: str = "new") -> str:
        fid = fid or f"{time.time():.6f}-face"
        obj = {"id": fid, "camera": "front_door", "label": "person", "score": 0.9, "top_score": 0.9,
               "false_positive": False, "start_time": time.time(), "end_time": None, "current_zones": [],
               "entered_zones": [], "sub_label": sub_label}
        publish(world.bg, world.broker.url(),
                [("frigate/events", orjson.dumps({"type": kind, "before": obj, "after": obj}))])
        return f"frigate:{fid}"

    alice = seen(["Alice", 0.93])  # Frigate 0.14+ face recognition: a resident
    assert held(timeline, alice)["held"] == {"reason": "known face", "name": "Alice"}
    assert settle(world, 2.0) == []  # nothing for the family
    assert wait_state(world.ha, "sensor.front_door_known_faces_held", lambda s: s not in ("unknown", "0")) != "0"
    stranger = seen(None)  # a stranger, so far: pushed as always
    assert [p.data["tag"] for p in world.phone.wait(2)] == [stranger, stranger]
    world.phone.pushes.clear()
    seen("Alice", fid=stranger.split(":", 1)[1], kind="update")  # Frigate names her a moment later
    cleared = world.phone.wait(1, timeout=15)[0]
    assert cleared.message == "clear_notification" and cleared.data == {"tag": stranger}

