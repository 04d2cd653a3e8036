"""Operations against real parts: watchdog with dying upstreams, alerts with a Telegram stand-in,
the broker's ACL, runbook commands against the router, and the built-in checks."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import orjson
import pytest
from aiohttp import web
from pydantic import SecretStr

from services.scheduler.checks import gpu_temperature, router_p95, upstream_health, weekly_summary
from services.sim_upstream.http import serve
from services.watchdog.main import Watchdog
from shared.alerts import Alerter
from shared.bus import Bus
from shared.jsonl import read_jsonl
from shared.settings import AlertSettings, RestartAction, Settings, WatchdogSettings, WatchedRoute
from tests.broker import Broker
from tests.harness import ADMIN_TOKEN, ROOT, BackgroundLoop, Lab, free_port
from tests.netdata_http import FakeParent, lab_hosts
from tests.pipeline import Collector


def sim_process(port: int) -> list[str]:
    return [sys.executable, "-m", "services.cli", "sim-upstream", "--port", str(port), "--model", "gemma-4-31b"]


def wait_port(port: int, up: bool, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=0.5)
            if up:
                return True
        except httpx.HTTPError:
            if not up:
                return True
        time.sleep(0.1)
    return False


class Dog:
    def __init__(self, bg: BackgroundLoop, settings: Settings, broker: Broker) -> None:
        self.bg = bg

        async def setup() -> None:
            self.client = httpx.AsyncClient()
            self.bus = Bus(broker.url(), "watchdog")
            await self.bus.__aenter__()
            await asyncio.wait_for(self.bus.connected.wait(), 10)
            self.dog = Watchdog(settings, self.bus, self.client)

        bg.run(setup())

    def tick(self, now: float) -> list[dict[str, Any]]:
        return self.bg.run(self.dog.tick(now), timeout=60)

    def close(self) -> None:
        async def down() -> None:
            await self.bus.close()
            await self.client.aclose()

        self.bg.run(down())


def watchdog_settings(lab: Lab, tmp: Path, broker: Broker, port: int, restart: list[str],
                      budget: int = 3) -> Settings:
    """The lab's router now serves a policy whose win-5090 is at ``port`` (a reload: the watchdog
    follows the router's live policy, never a file of its own)."""
    policy = dict(lab.policy)
    policy["routes"] = {k: dict(v) for k, v in lab.policy["routes"].items()}
    policy["routes"]["win-5090"]["base_url"] = f"http://127.0.0.1:{port}/v1"
    lab.write_policy(policy)
    r = httpx.post(lab.url + "/admin/reload-config", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10)
    assert r.status_code == 200, r.text
    routes = {"win-5090": WatchedRoute(restart=RestartAction(kind="command", argv=tuple(restart), timeout=20)),
              "spark": WatchedRoute(restart=RestartAction(kind="command", argv=("sh", "-c", f"echo no > {tmp}/x")))}
    return Settings(mqtt_url=broker.url(), log_dir=tmp / "logs", state_dir=tmp / "state",
                    router_url=lab.base_url, admin_token=SecretStr(ADMIN_TOKEN),
                    watchdog=WatchdogSettings(failures_before_restart=2, restart_budget_per_hour=budget, backoff=0,
                                              probe_timeout=1, routes=routes))


def router_sees(lab: Lab, route: str, up: bool, timeout: float = 10) -> bool:
    """Wait until the router's own probe agrees (it probes every 0.2 s in the tests)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = httpx.get(lab.url + "/admin/upstreams", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=5)
        if r.json()["routes"][route]["probe_ok"] is up:
            return True
        time.sleep(0.05)
    return False


def test_watchdog_restarts_a_dead_upstream_with_a_real_command(bg: BackgroundLoop, broker: Broker, lab: Lab,
                                                               tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(sim_process(port), cwd=ROOT, stdout=subprocess.DEVNULL)
    assert wait_port(port, True)
    # the restart action really starts the server again (detached, as a supervisor would)
    restart = ["sh", "-c", f"setsid {' '.join(sim_process(port))} >/dev/null 2>&1 < /dev/null &"]
    dog = Dog(bg, watchdog_settings(lab, tmp_path, broker, port, restart), broker)
    events = Collector(bg, broker.url(), "homelab/watchdog/events")
    try:
        assert router_sees(lab, "win-5090", True)
        assert dog.tick(0) == []
        proc.send_signal(signal.SIGKILL)
        proc.wait(5)
        assert wait_port(port, False)
        assert router_sees(lab, "win-5090", False)
        assert dog.tick(60) == []  # one failure: not yet
        acts = dog.tick(120)
        assert [(a["route"], a["action"], a["ok"]) for a in acts] == [("win-5090", "restart", True)]
        assert wait_port(port, True)  # the command's effect
        assert router_sees(lab, "win-5090", True)
        acts = dog.tick(180)
        assert [(a["route"], a["action"]) for a in acts] == [("win-5090", "recovered")]
        logged = read_jsonl(tmp_path / "logs" / "recovery-events.jsonl")
        assert [e["action"] for e in logged if e.get("source") == "watchdog"] == ["restart", "recovered"]
        assert events.wait(lambda: len(events.on("homelab/watchdog/events")) == 2)
    finally:
        events.close()
        dog.close()
        subprocess.run(["pkill", "-f", f"sim-upstream --port {port}"], check=False)


def test_watchdog_budget_stops_a_restart_loop_and_pages(bg: BackgroundLoop, broker: Broker, lab: Lab,
                                                        tmp_path: Path) -> None:
    port = free_port()  # nothing ever listens here
    tries = tmp_path / "tries"
    dog = Dog(bg, watchdog_settings(lab, tmp_path, broker, port, ["sh", "-c", f"echo try >> {tries}"], budget=2),
              broker)
    alerts = Collector(bg, broker.url(), "homelab/alert")
    try:
        lab.stop_upstream("spark")  # and the terminal route dies too
        assert router_sees(lab, "spark", False) and router_sees(lab, "win-5090", False)
        actions = [(a["route"], a["action"]) for t in range(10) for a in dog.tick(t * 60.0)]
        assert actions.count(("win-5090", "restart")) == 2  # the budget
        assert actions.count(("win-5090", "page")) == 1
        assert actions.count(("spark", "page")) == 1
        assert ("spark", "restart") not in actions and not (tmp_path / "x").exists()
        assert tries.read_text().count("try") == 2
        assert alerts.wait(lambda: len(alerts.on("homelab/alert")) == 2)  # no Telegram set: HA fallback
        pages = [orjson.loads(p) for p in alerts.on("homelab/alert")]
        assert any("budget" in p["message"] for p in pages) and any("terminal" in p["message"] for p in pages)
    finally:
        alerts.close()
        dog.close()


class TelegramStandIn:
    def __init__(self, bg: BackgroundLoop, status: int) -> None:
        self.bg, self.status, self.got = bg, status, []  # type: ignore[var-annotated]
        app = web.Application()
        app.router.add_post("/bot{token}/sendMessage", self._send)
        self.runner, self.port = bg.run(serve(app))

    async def _send(self, request: web.Request) -> web.Response:
        self.got.append((request.match_info["token"], await request.json()))
        if self.status != 200:
            return web.json_response({"ok": False, "description": "Internal Server Error"}, status=self.status)
        return web.json_response({"ok": True, "result": {}})

    def close(self) -> None:
        self.bg.run(self.runner.cleanup())


@pytest.mark.parametrize(("status", "channel"), [(200, "telegram"), (502, "homeassistant")])
def test_alerts_go_to_telegram_then_home_assistant(bg: BackgroundLoop, broker: Broker, tmp_path: Path,
                                                   status: int, channel: str) -> None:
    tg = TelegramStandIn(bg, status)
    out = Collector(bg, broker.url(), "homelab/alert")
    settings = Settings(mqtt_url=broker.url(), telegram_token=SecretStr("123:abc"),
                        alerts=AlertSettings(telegram_chat_id="42", telegram_api=f"http://127.0.0.1:{tg.port}"))

    async def send() -> str:
        async with httpx.AsyncClient() as client, Bus(broker.url(), "alerts-test") as bus:
            await asyncio.wait_for(bus.connected.wait(), 10)
            return await Alerter(settings, bus, client).send("homelab: test", "spark is down", "test")

    try:
        assert bg.run(send()) == channel
        assert tg.got and tg.got[0][0] == "123:abc" and tg.got[0][1]["chat_id"] == "42"
        if channel == "homeassistant":
            assert out.wait(lambda: len(out.on("homelab/alert")) == 1)
            assert orjson.loads(out.on("homelab/alert")[0])["message"] == "spark is down"
        else:
            time.sleep(0.3)
            assert out.on("homelab/alert") == []
    finally:
        out.close()
        tg.close()


USERS = {"dedup": "d-pass", "vision_notifier": "v-pass", "homeassistant": "h-pass"}


def test_acl_each_service_publishes_only_its_topics(bg: BackgroundLoop, tmp_path: Path) -> None:
    b = Broker(tmp_path / "acl-broker", users=USERS, acl=True)
    watcher = Collector(bg, b.url("homeassistant"), "homelab/#")

    async def pub(user: str, topic: str) -> None:
        async with aiomqtt.Client("127.0.0.1", b.port, username=user, password=USERS[user]) as c:
            await c.publish(topic, b"x", qos=1)

    try:
        bg.run(pub("dedup", "homelab/camera/event/unique"))  # its own output
        bg.run(pub("dedup", "homelab/notify/text"))  # not its topic: dropped by the broker
        bg.run(pub("vision_notifier", "homelab/notify/text"))
        bg.run(pub("vision_notifier", "homelab/camera/event/unique"))  # not its topic
        assert watcher.wait(lambda: len(watcher.messages) >= 2)
        time.sleep(0.5)
        got = sorted(t for t, _, _ in watcher.messages)
        assert got == ["homelab/camera/event/unique", "homelab/notify/text"]
        with pytest.raises(aiomqtt.MqttError):
            async def anonymous() -> None:
                async with aiomqtt.Client("127.0.0.1", b.port) as c:
                    await c.publish("homelab/x", b"x")
            bg.run(anonymous())
        with pytest.raises(aiomqtt.MqttError):
            async def wrong() -> None:
                async with aiomqtt.Client("127.0.0.1", b.port, username="dedup", password="nope") as c:
                    await c.publish("homelab/x", b"x")
            bg.run(wrong())
    finally:
        watcher.close()
        b.stop()


def homelab(lab: Lab, *args: str, token: str = ADMIN_TOKEN) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HOMELAB_ROUTER_URL": lab.base_url, "HOMELAB_ADMIN_TOKEN": token,
           "HOMELAB_LOG_DIR": str(lab.log_dir)}
    return subprocess.run([sys.executable, "-m", "services.cli", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=60)


def test_runbook_commands(lab: Lab) -> None:
    r = homelab(lab, "drain", "ubuntu-6000")
    assert r.returncode == 0 and "drained" in r.stdout
    assert lab.svc.states["ubuntu-6000"].drained
    r = homelab(lab, "upstreams")
    assert r.returncode == 0 and "ubuntu-6000" in r.stdout and "yes" in r.stdout
    assert homelab(lab, "undrain", "ubuntu-6000").returncode == 0 and not lab.svc.states["ubuntu-6000"].drained
    r = homelab(lab, "drain", "gpu9")
    assert r.returncode == 1 and "Unknown route 'gpu9'" in r.stderr
    r = homelab(lab, "reload", token="wrong")
    assert r.returncode == 1 and "401" in r.stderr
    assert homelab(lab, "reload").returncode == 0
    r = homelab(lab, "recover-cuda", "spark")
    assert r.returncode == 1 and "terminal" in r.stderr
    r = homelab(lab, "explain", "Review the security of this code")
    assert r.returncode == 0 and "route:  spark" in r.stdout
    httpx.post(lab.base_url + "/chat/completions", json={"model": "homelab/auto",
                                                         "messages": [{"role": "user", "content": "hi"}]})
    r = homelab(lab, "summary")
    assert r.returncode == 0 and "1 requests" in r.stdout and "spark 1" in r.stdout
    r = subprocess.run([sys.executable, "-m", "services.cli", "upstreams", "--router", "http://127.0.0.1:9/v1",
                        "--token", "x"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "cannot reach the router" in r.stderr
    env = {k: v for k, v in os.environ.items() if k != "HOMELAB_ADMIN_TOKEN"}
    r = subprocess.run([sys.executable, "-m", "services.cli", "upstreams"], cwd=ROOT, capture_output=True,
                       text=True, timeout=30, env={**env, "HOMELAB_STATE_DIR": str(lab.tmp / "no-state")})
    assert r.returncode == 2 and r.stderr.startswith("homelab: no admin token:")  # a clear word, not a protocol error


def test_builtin_checks(bg: BackgroundLoop, lab: Lab, tmp_path: Path) -> None:
    settings = Settings(router_url=lab.base_url, admin_token=SecretStr(ADMIN_TOKEN), log_dir=lab.log_dir)
    parent = FakeParent(bg, lab_hosts())

    async def run(check: Any, **opts: Any) -> str:
        async with httpx.AsyncClient() as client:
            out: str = await check(settings, client, opts)
            return out

    try:
        assert bg.run(run(upstream_health)) == ""
        lab.svc.states["win-5090"].drained = True
        assert "win-5090: drained" in bg.run(run(upstream_health))
        httpx.post(lab.base_url + "/chat/completions", json={"model": "homelab/auto",
                                                             "messages": [{"role": "user", "content": "hi"}]})
        assert bg.run(run(router_p95, threshold_s=4)) == ""
        assert "spark: p95" in bg.run(run(router_p95, threshold_s=0.0001))
        assert bg.run(run(gpu_temperature, netdata_url=parent.url, threshold_c=85)) == ""
        for chart in parent.hosts["spark"].values():  # the GB10 runs cool
            if chart["context"] == "nvidia_smi.gpu_temperature":
                next(iter(chart["dimensions"].values()))["value"] = 60.0
        hot = bg.run(run(gpu_temperature, netdata_url=parent.url, threshold_c=70))
        assert "ubuntu-4090 gpu0: 71 °C" in hot and "spark" not in hot
        assert "1 requests" in bg.run(run(weekly_summary, days=7))
    finally:
        parent.close()
