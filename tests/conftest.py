from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from openai import OpenAI

from shared.settings import Settings
from tests.broker import Broker
from tests.frigate_http import FakeFrigate
from tests.harness import BackgroundLoop, Lab
from tests.pipeline import Service, wait_online


@pytest.fixture(scope="session")
def bg() -> Iterator[BackgroundLoop]:
    loop = BackgroundLoop()
    yield loop
    loop.close()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A real mosquitto from mosquitto/mosquitto.conf on a free port, with persistence."""
    b = Broker(tmp_path / "broker")
    yield b
    b.stop()


@pytest.fixture
def lab(bg: BackgroundLoop, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Lab]:
    marker = request.node.get_closest_marker("policy")
    overrides = marker.kwargs if marker else None
    lab = Lab(bg, tmp_path, overrides)
    yield lab
    lab.close()


@pytest.fixture
def client(lab: Lab) -> Iterator[OpenAI]:
    c = OpenAI(base_url=lab.base_url, api_key="unused", max_retries=0, timeout=20)
    yield c
    c.close()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "policy(**overrides): top-level policy keys for the lab fixture")


@pytest.fixture
def services(bg: BackgroundLoop, settings: Settings) -> Iterator[dict[str, Service]]:
    """The ingest services (frigate_consumer, ring_listener, dedup) on the module's ``settings``."""
    from services.dedup.main import main as dedup_main
    from services.frigate_consumer.main import main as frigate_main
    from services.ring_listener.main import main as ring_main

    svc = {"frigate": Service(bg, frigate_main, settings), "ring": Service(bg, ring_main, settings),
           "dedup": Service(bg, dedup_main, settings)}
    yield svc
    for s in svc.values():
        if s.alive():
            s.stop()


@pytest.fixture
def frigate(bg: BackgroundLoop) -> Iterator[FakeFrigate]:
    """A Frigate HTTP API on loopback that serves snapshots."""
    f = FakeFrigate(bg)
    yield f
    f.close()


@pytest.fixture
def notifier(bg: BackgroundLoop, broker: Broker, settings: Settings) -> Iterator[Service]:
    """vision_notifier on the module's ``settings``, online."""
    from services.vision_notifier.main import main as notifier_main

    s = Service(bg, notifier_main, settings)
    wait_online(bg, broker)
    yield s
    if s.alive():
        s.stop()
