from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from openai import OpenAI

from tests.harness import BackgroundLoop, Lab


@pytest.fixture(scope="session")
def bg() -> Iterator[BackgroundLoop]:
    loop = BackgroundLoop()
    yield loop
    loop.close()


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
