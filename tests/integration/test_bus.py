"""The bus under faults: broker restarts, service restarts, auth, and fuzzed input on every topic."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from services.dedup.main import main as dedup_main
from shared import topics
from shared.settings import Settings
from tests.broker import Broker
from tests.harness import BackgroundLoop
from tests.integration.test_ingest import fixture_object, frigate_sequence, make_settings
from tests.pipeline import Collector, Service, publish


@pytest.fixture
def settings(broker: Broker, tmp_path: Path) -> Settings:
    return make_settings(broker, tmp_path)


@pytest.fixture
def stack(services: dict[str, Service]) -> dict[str, Service]:
    return services  # the ingest services (conftest), under this module's name


def events(prefix: str, n: int) -> list[tuple[str, bytes]]:
    base = fixture_object("docs_v0.17.2_00_frigate_events.jsonc")
    out: list[tuple[str, bytes]] = []
    for i in range(n):
        out += frigate_sequence({**base, "id": f"{prefix}-{i}", "start_time": base["start_time"] + i * 100})
    return out


def wait_ids(c: Collector, n: int, timeout: float = 20) -> Counter[str]:
    """How many distinct messages each event produced on the unique topic.

    QoS 1 is at least once: a message in flight when the broker stops (to a subscriber, or from a
    publisher whose PUBACK was lost) can arrive again, byte-identical, after the restart. Consumers
    are idempotent by event_id (vision_notifier is), so such a copy is counted once here. Two
    different unique messages for one event (a second trace, a second decision) count twice.
    """
    c.wait(lambda: len({p for p in c.on(topics.UNIQUE)}) >= n, timeout)
    time.sleep(0.5)  # a late duplicate would show up here
    return Counter(orjson.loads(p)["event_id"] for p in set(c.on(topics.UNIQUE)))


def test_broker_restart_mid_stream_loses_and_doubles_nothing(bg: BackgroundLoop, broker: Broker,
                                                             stack: dict[str, Service]) -> None:
    out = Collector(bg, broker.url(), topics.UNIQUE)
    try:
        publish(bg, broker.url(), events("before", 100))
        broker.restart()  # while those are still flowing through the services
        publish(bg, broker.url(), events("after", 20))
        ids = wait_ids(out, 120)
        assert len(ids) == 120 and set(ids.values()) == {1}
        assert all(s.alive() for s in stack.values())
    finally:
        out.close()


def test_dedup_restart_mid_stream_completes_every_event_once(bg: BackgroundLoop, broker: Broker,
                                                             stack: dict[str, Service]) -> None:
    out = Collector(bg, broker.url(), topics.UNIQUE)
    try:
        publish(bg, broker.url(), events("a", 15))
        stack["dedup"].stop()
        publish(bg, broker.url(), events("b", 15))  # queued by the broker for dedup's session
        stack["dedup"].start()
        publish(bg, broker.url(), events("a", 15))  # replays of already-forwarded events
        ids = wait_ids(out, 30)
        assert len(ids) == 30 and set(ids.values()) == {1}
    finally:
        out.close()


def test_status_is_retained_with_a_will(bg: BackgroundLoop, broker: Broker, settings: Settings) -> None:
    svc = Service(bg, dedup_main, settings)
    c = Collector(bg, broker.url(), "homelab/+/status")
    try:
        assert c.wait(lambda: (topics.status("dedup"), b"online") in [(t, p) for t, p, _ in c.messages])
        svc.stop()
        assert c.wait(lambda: c.on(topics.status("dedup"))[-1:] == [b"offline"]), c.messages
    finally:
        c.close()


def test_auth_broker_needs_credentials(bg: BackgroundLoop, tmp_path: Path) -> None:
    b = Broker(tmp_path / "auth-broker", users={"dedup": "s3cret", "tester": "pw"})
    try:
        s = Settings(mqtt_url=b.url("dedup"), state_dir=tmp_path / "s", log_dir=tmp_path / "l")
        svc = Service(bg, dedup_main, s)
        out = Collector(bg, b.url("tester"), topics.UNIQUE)
        ev = {"event_id": "frigate:x", "source": "frigate", "camera": "c", "kind": "person", "started_at": 1.0}
        publish(bg, b.url("tester"), [(topics.RAW, orjson.dumps(ev))])
        assert out.wait(lambda: len(out.on(topics.UNIQUE)) == 1)
        with pytest.raises(Exception, match=r"[Nn]ot authori[sz]ed|[Bb]ad user name or password"):
            publish(bg, b.url(), [(topics.RAW, b"{}")])
        svc.stop()
        out.close()
    finally:
        b.stop()


INPUT_TOPICS = ["frigate/events", "frigate/reviews", topics.RAW, "ring/loc/camera/dev/ding/state",
                "ring/loc/camera/dev/ding/attributes", "ring/loc/camera/dev/motion/attributes",
                "homeassistant/status"]
json_values = st.recursive(st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(),
                           lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids,
                                                                                      max_size=4), max_leaves=12)


def _dumps(v: object) -> bytes:
    return json.dumps(v).encode()  # the stdlib takes integers of any size


payloads = st.one_of(st.binary(max_size=200), json_values.map(_dumps),
                     st.fixed_dictionaries({"type": st.sampled_from(["new", "update", "end", "x"]),
                                            "after": json_values}).map(_dumps))


def test_fuzzed_payloads_on_every_input_topic_never_stop_the_pipeline(bg: BackgroundLoop, broker: Broker,
                                                                      settings: Settings,
                                                                      stack: dict[str, Service]) -> None:
    batch: list[tuple[str, bytes]] = []

    @hsettings(max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(st.sampled_from(INPUT_TOPICS), payloads)
    def collect(topic: str, payload: bytes) -> None:
        batch.append((topic, payload))

    collect()
    assert len(batch) >= 1000
    publish(bg, broker.url(), batch)
    out = Collector(bg, broker.url(), topics.UNIQUE)
    try:
        publish(bg, broker.url(), events("valid-after-fuzz", 1))
        assert out.wait(lambda: "frigate:valid-after-fuzz-0" in [e["event_id"] for e in out.json_on(topics.UNIQUE)],
                        30)
        assert all(s.alive() for s in stack.values())
    finally:
        out.close()
