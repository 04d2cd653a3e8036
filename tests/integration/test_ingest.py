"""Camera ingest against a real Mosquitto: Frigate and Ring triggers → raw → dedup → unique."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from ring_doorbell import Auth, Ring

from services.dedup.main import main as dedup_main
from services.frigate_consumer.main import main as frigate_main
from services.ring_listener.handlers import HistoryItem
from services.ring_listener.main import USER_AGENT, RingListener
from services.ring_listener.push import GuardedEventListener
from shared import topics
from shared.bus import Bus
from shared.jsonl import read_jsonl
from shared.service import Validations
from shared.settings import DedupSettings, RingSettings, Settings
from tests.broker import Broker
from tests.harness import BackgroundLoop
from tests.pipeline import FIXTURES, Collector, Service, load_jsonc, publish


def make_settings(broker: Broker, tmp: Path, **kw: Any) -> Settings:
    return Settings(mqtt_url=broker.url(), state_dir=tmp / "state", log_dir=tmp / "logs",
                    ring=RingSettings(cameras={"1234": "front_door", "3c7c3f000001": "front_door",
                                               "Front Door": "front_door"}),
                    dedup=DedupSettings(window=20), **kw)


@pytest.fixture
def settings(broker: Broker, tmp_path: Path) -> Settings:
    return make_settings(broker, tmp_path)


@pytest.fixture
def unique(bg: BackgroundLoop, broker: Broker) -> Iterator[Collector]:
    c = Collector(bg, broker.url(), topics.UNIQUE, topics.RAW)
    yield c
    c.close()


def frigate_sequence(obj: dict[str, Any], zones_later: bool = False) -> list[tuple[str, bytes]]:
    """new → update → end for one tracked object, shaped like the fixture's release."""
    new = {**obj, "end_time": None}
    if zones_later:
        new = {**new, "current_zones": [], "entered_zones": []}
    upd = {**obj, "end_time": None, "score": 0.91}
    end = {**obj, "end_time": obj["start_time"] + 12.0}
    return [("frigate/events", orjson.dumps({"type": t, "before": new, "after": a}))
            for t, a in (("new", new), ("update", upd), ("end", end))]


def fixture_object(name: str, **changes: Any) -> dict[str, Any]:
    obj: dict[str, Any] = load_jsonc(FIXTURES / "frigate" / name)["after"]
    return {**obj, **changes}


def unique_ids(c: Collector) -> list[str]:
    return [e["event_id"] for e in c.json_on(topics.UNIQUE)]


@pytest.mark.parametrize("fixture", ["docs_v0.13.2_00_frigate_events.jsonc", "docs_v0.17.2_00_frigate_events.jsonc"])
def test_frigate_sequence_gives_one_unique_event(bg: BackgroundLoop, broker: Broker, services: dict[str, Service],
                                                 unique: Collector, fixture: str) -> None:
    obj = fixture_object(fixture)
    publish(bg, broker.url(), frigate_sequence(obj))
    assert unique.wait(lambda: len(unique.on(topics.UNIQUE)) >= 1)
    time.sleep(0.3)
    events = unique.json_on(topics.UNIQUE)
    assert len(events) == 1
    ev = events[0]
    assert ev["event_id"] == f"frigate:{obj['id']}"
    assert ev["camera"] == obj["camera"] and ev["kind"] == obj["label"] == "person"
    assert ev["snapshot"]["url"].endswith(f"/api/events/{obj['id']}/snapshot.jpg")
    assert ev["trace_id"]
    assert len(unique.on(topics.RAW)) == 1  # update and end were not re-published


def test_false_positives_and_filtered_labels_give_nothing(bg: BackgroundLoop, broker: Broker, tmp_path: Path,
                                                         unique: Collector) -> None:
    from shared.settings import FrigateSettings

    s = make_settings(broker, tmp_path, frigate=FrigateSettings(labels=("person",), zones=("porch",)))
    svc = [Service(bg, frigate_main, s), Service(bg, dedup_main, s)]
    try:
        obj = fixture_object("docs_v0.17.2_00_frigate_events.jsonc")
        fp = {**obj, "id": "fp-1", "false_positive": True, "current_zones": ["porch"]}
        car = {**obj, "id": "car-1", "label": "car", "current_zones": ["porch"]}
        elsewhere = {**obj, "id": "yard-1", "current_zones": ["yard"], "entered_zones": ["yard"]}
        later = {**obj, "id": "porch-later", "current_zones": ["porch"], "entered_zones": ["porch"]}
        msgs = frigate_sequence(fp) + frigate_sequence(car) + frigate_sequence(elsewhere)
        msgs += frigate_sequence(later, zones_later=True)  # enters the porch only in its update
        publish(bg, broker.url(), msgs)
        assert unique.wait(lambda: len(unique.on(topics.UNIQUE)) >= 1)
        time.sleep(0.3)
        assert unique_ids(unique) == ["frigate:porch-later"]
    finally:
        for x in svc:
            x.stop()


def ring_mqtt_ding(device: str, ts: float) -> list[tuple[str, bytes]]:
    base = f"ring/loc1/camera/{device}/ding"
    return [(f"{base}/state", b"ON"),
            (f"{base}/attributes", orjson.dumps({"lastDing": ts, "lastDingTime": "2026-11-27T06:00:00Z"}))]


def push_notification(ding_id: int, created_at: str) -> dict[str, Any]:
    return {"data": {
        "android_config": json.dumps({"category": "com.ring.pn.live-event.ding"}),
        "data": json.dumps({"device": {"id": 1234, "name": "Front Door", "kind": "lpd_v2"},
                            "event": {"ding": {"id": ding_id, "created_at": created_at, "subtype": "human"}}}),
    }}


class PushHarness:
    """The real ring-doorbell listener (guarded), built offline, feeding a RingListener on a real bus."""

    def __init__(self, bg: BackgroundLoop, settings: Settings, history: list[HistoryItem]) -> None:
        self.bg = bg
        self.history = history

        async def setup() -> None:
            self.bus = Bus(settings.mqtt_url, "ring_listener_push", client_id="test-ring-push")
            await self.bus.__aenter__()
            await asyncio.wait_for(self.bus.connected.wait(), 10)
            self.auth = Auth(USER_AGENT, {"access_token": "t", "refresh_token": "r", "expires_at": 9e12})
            ring = Ring(self.auth)

            async def fetch() -> list[HistoryItem]:
                return list(self.history)

            self.rl = RingListener(settings, self.bus, Validations(settings, "ring_listener"), fetch)
            self.listener = GuardedEventListener(ring, None, on_error=self.rl.on_push_error)
            self.listener.add_notification_callback(self.rl.on_push)
            self.task = asyncio.create_task(self.rl.push_events())

        bg.run(setup())

    def push(self, notification: Any) -> None:
        async def go() -> None:
            self.listener._on_notification(notification, "persistent-id")
            await asyncio.sleep(0)

        self.bg.run(go())

    def poll(self) -> None:
        self.bg.run(self.rl.poll_once())

    def close(self) -> None:
        async def down() -> None:
            self.task.cancel()
            await self.bus.close()
            await self.auth.async_close()

        self.bg.run(down())


def iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def test_one_ding_from_three_triggers_is_one_event_two_dings_are_two(
        bg: BackgroundLoop, broker: Broker, settings: Settings, services: dict[str, Service],
        unique: Collector) -> None:
    now = float(int(time.time()))
    first, second = now - 90, now - 30  # a minute apart
    history = [HistoryItem(id=9001, doorbot_id=1234, device_name="Front Door", kind="ding", created_at=first)]
    h = PushHarness(bg, settings, history)
    try:
        h.push(push_notification(9001, iso(first)))
        publish(bg, broker.url(), ring_mqtt_ding("3c7c3f000001", first + 1))
        h.poll()
        assert unique.wait(lambda: len(unique.on(topics.RAW)) >= 3)
        time.sleep(0.3)
        assert unique_ids(unique) == ["ring:9001"]

        h.history.append(HistoryItem(id=9002, doorbot_id=1234, device_name="Front Door", kind="ding",
                                     created_at=second))
        publish(bg, broker.url(), ring_mqtt_ding("3c7c3f000001", second))
        h.push(push_notification(9002, iso(second)))
        h.poll()
        assert unique.wait(lambda: len(unique.on(topics.RAW)) >= 6)
        time.sleep(0.3)
        ids = unique_ids(unique)
        assert len(ids) == 2 and ids[0] == "ring:9001"
        srcs = sorted(e["source"] for e in unique.json_on(topics.RAW))
        assert srcs == ["ring_mqtt", "ring_mqtt", "ring_poll", "ring_poll", "ring_push", "ring_push"]
    finally:
        h.close()


def test_ring_mqtt_replay_after_its_restart_fires_nothing_again(
        bg: BackgroundLoop, broker: Broker, settings: Settings, services: dict[str, Service],
        unique: Collector) -> None:
    ts = time.time() - 10
    publish(bg, broker.url(), ring_mqtt_ding("3c7c3f000001", ts))
    assert unique.wait(lambda: len(unique.on(topics.UNIQUE)) == 1)
    services["dedup"].stop()
    services["dedup"].start()
    for _ in range(3):  # ring-mqtt republishes state every 30 s after it restarts
        publish(bg, broker.url(), ring_mqtt_ding("3c7c3f000001", ts))
    old = time.time() - 3600  # and stale dings from long ago
    publish(bg, broker.url(), ring_mqtt_ding("3c7c3f000001", old))
    time.sleep(0.8)
    assert len(unique.on(topics.UNIQUE)) == 1


DING = json.dumps({"category": "com.ring.pn.live-event.ding"})


@pytest.mark.parametrize(("bad", "library_raises"), [
    ({"data": {}}, False),  # the library itself logs and drops this one
    ({}, True),
    ({"data": {"android_config": "{not json", "data": "{}"}}, True),
    ({"data": {"android_config": DING, "data": json.dumps(  # a ding without id: KeyError in 0.9.14
        {"device": {"id": 1234}, "event": {"ding": {"created_at": "2026-01-01T00:00:00Z"}}})}}, True),
    ({"data": {"android_config": DING, "data": json.dumps(
        {"device": {"id": 1234}, "event": {"ding": {"id": "abc", "created_at": 5}}})}}, True),
    ({"data": {"android_config": json.dumps({"category": 7}), "data": json.dumps([1, 2])}}, True),
])
def test_real_listener_survives_malformed_pushes(bg: BackgroundLoop, broker: Broker, settings: Settings,
                                                 services: dict[str, Service], unique: Collector, bad: Any,
                                                 library_raises: bool) -> None:
    h = PushHarness(bg, settings, [])
    try:
        for _ in range(4):  # more than the receiver's 3-errors-in-a-row limit
            h.push(bad)
        now = time.time()
        h.push(push_notification(4242, iso(now - 5)))
        assert unique.wait(lambda: "ring:4242" in unique_ids(unique))
        logged = read_jsonl(settings.log_dir / "structured-validation.jsonl")
        assert sum(1 for r in logged if r["source"] == "ring_listener") == (4 if library_raises else 0)
        assert h.listener.errors == (4 if library_raises else 0)
    finally:
        h.close()


def test_ring_listener_without_token_runs_on_ring_mqtt(bg: BackgroundLoop, broker: Broker,
                                                       services: dict[str, Service], unique: Collector) -> None:
    assert services["ring"].alive()
    publish(bg, broker.url(), ring_mqtt_ding("3c7c3f000001", time.time() - 2))
    assert unique.wait(lambda: len(unique.on(topics.UNIQUE)) == 1)
    assert unique.json_on(topics.UNIQUE)[0]["camera"] == "front_door"


def test_malformed_payloads_are_logged_and_skipped(bg: BackgroundLoop, broker: Broker, settings: Settings,
                                                   services: dict[str, Service], unique: Collector) -> None:
    publish(bg, broker.url(), [
        ("frigate/events", b"{not json"), ("frigate/events", b'{"type": "new"}'),
        ("frigate/events", b'{"type": "explode", "after": {}}'), ("frigate/events", b""),
        ("ring/loc1/camera/dev/ding/state", b"MAYBE"), ("ring/loc1/camera/dev/ding/attributes", b"[]"),
        (topics.RAW, b'{"event_id": 1}'),
    ])
    obj = fixture_object("docs_v0.17.2_00_frigate_events.jsonc", id="after-garbage")
    publish(bg, broker.url(), frigate_sequence(obj))
    assert unique.wait(lambda: "frigate:after-garbage" in unique_ids(unique))
    logged = read_jsonl(settings.log_dir / "structured-validation.jsonl")
    assert {r["source"] for r in logged} == {"frigate_consumer", "ring_listener", "dedup"}
    assert len(logged) == 7
    assert all(s.alive() for s in services.values())
