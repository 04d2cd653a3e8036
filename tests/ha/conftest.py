"""The real-Home-Assistant tier (scripts/install-ha.sh installs it; scripts/test.sh runs that)."""

from __future__ import annotations

import pytest

from tests.ha.hass import HASS


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if not HASS.exists():
        for item in items:
            if "tests/ha/" in str(item.path):
                item.add_marker(pytest.mark.usefixtures("_need_home_assistant"))


@pytest.fixture(scope="session")
def _need_home_assistant() -> None:
    pytest.fail(f"Home Assistant is not installed at {HASS}: run `bash scripts/install-ha.sh` "
                "(scripts/test.sh runs it; ~3-4 min the first time, cached after)", pytrace=False)
