"""Real servers on loopback for tests: simulated upstreams and the router, in one background loop.

Tests stay synchronous (the official openai SDK is the client) while the servers run in a thread.
"""

from __future__ import annotations

import asyncio
import copy
import socket
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import uvicorn
import yaml

from services.router.app import RouterService, RouterSettings, create_app
from services.sim_upstream import SimConfig, SimUpstream

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[1]
POLICY = ROOT / "config" / "routing_policy.yaml"
ADMIN_TOKEN = "test-admin-token"


class BackgroundLoop:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-servers", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def close(self) -> None:
        async def _drain() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self.run(_drain())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_policy(sims: dict[str, SimUpstream], **overrides: Any) -> dict[str, Any]:
    """The shipped policy pointed at the given sims, with short timeouts and fast probes."""
    data = yaml.safe_load(POLICY.read_text())
    data = copy.deepcopy(data)
    for name, route in data["routes"].items():
        route["base_url"] = sims[name].base_url
        route["first_token_timeout"] = 1.0
        route["stream_idle_timeout"] = 1.0
        route["request_timeout"] = 2.0
        route["connect_timeout"] = 1.0
    # continuation checks send requests of their own: tests that count requests turn them on explicitly
    data["health"] = {"probe_interval": 0.2, "probe_timeout": 0.5, "failure_threshold": 3,
                      "circuit_cooldown": 0.5, "retry_after_max": 2, "probe_continuation": False,
                      "probe_tools": False}
    for key, value in overrides.items():
        data[key] = value
    return data


class Lab:
    """Four simulated upstreams named like the lab's routes, and a router in front of them."""

    def __init__(self, bg: BackgroundLoop, tmp: Path, policy_overrides: dict[str, Any] | None = None,
                 admin_token: str | None = ADMIN_TOKEN, probes: bool = True, mqtt_url: str | None = None) -> None:
        self.bg = bg
        self.tmp = tmp
        self.sims: dict[str, SimUpstream] = {}
        for name, vision, continuation in (("ubuntu-4090", True, True), ("ubuntu-6000", False, True),
                                           ("win-5090", False, False), ("spark", True, True)):
            model = yaml.safe_load(POLICY.read_text())["routes"][name]["model"]
            sim = SimUpstream(SimConfig(model=model, vision=vision, continuation=continuation))
            bg.run(sim.start())
            self.sims[name] = sim
        self.policy_path = tmp / "policy.yaml"
        self.policy = test_policy(self.sims, **(policy_overrides or {}))
        self.write_policy(self.policy)
        self.log_dir = tmp / "logs"
        settings = RouterSettings(policy_path=self.policy_path, admin_token=admin_token, log_dir=self.log_dir,
                                  probes=probes, mqtt_url=mqtt_url)
        self.app = create_app(settings)
        self.svc: RouterService = self.app.state.svc
        self.port = free_port()
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning",
                                access_log=False, lifespan="on", loop="asyncio")
        self.server = uvicorn.Server(config)
        self._serving = bg.submit(self.server.serve())
        bg.run(self._wait_started())

    async def _wait_started(self) -> None:
        for _ in range(500):
            if self.server.started:
                return
            await asyncio.sleep(0.01)
        raise RuntimeError("router did not start")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def write_policy(self, data: dict[str, Any]) -> None:
        self.policy_path.write_text(yaml.safe_dump(data, sort_keys=False))

    def configure(self, route: str, **changes: Any) -> None:
        self.sims[route].configure(**changes)

    def stop_upstream(self, route: str) -> None:
        self.bg.run(self.sims[route].stop_listening())

    def start_upstream(self, route: str) -> None:
        self.bg.run(self.sims[route].start())

    def close(self) -> None:
        self.server.should_exit = True
        self._serving.result(10)
        for sim in self.sims.values():
            self.bg.run(sim.close())
