"""The simulated Frigate API (services.sim_upstream.frigate) run in the tests' background loop."""

from __future__ import annotations

from services.sim_upstream.frigate import SimFrigate
from tests.harness import BackgroundLoop


class FakeFrigate(SimFrigate):
    def __init__(self, bg: BackgroundLoop) -> None:
        super().__init__()
        self.bg = bg
        bg.run(self.start())

    def close(self) -> None:  # type: ignore[override]
        self.bg.run(SimFrigate.close(self))
