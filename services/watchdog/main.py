"""watchdog's I/O: the router's view of every route, restart actions (Docker SDK, systemd --user, a
command), CUDA recovery, recovery-events.jsonl, MQTT, and the operator's alert.

The lab has one prober, the router: each tick reads ``GET /admin/upstreams`` (the policy in force,
reloads and promotions included: which routes exist, which are terminal, whether each one's probe
answers), so the watchdog never disagrees with what serves the traffic."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import httpx
import orjson

from router_client.admin import AdminClient, AdminRefused
from router_client.client import CallFailed
from services.watchdog.core import Action, WatchdogCore
from shared import admin_token
from shared.alerts import Alerter
from shared.bus import Bus
from shared.jsonl import JsonlWriter
from shared.service import every
from shared.settings import RestartAction, Settings

SERVICE = "watchdog"
EVENTS = "homelab/watchdog/events"
log = logging.getLogger("homelab.watchdog")


async def run_argv(argv: tuple[str, ...] | list[str], limit: float) -> tuple[int, str]:
    """Run a command; (exit code, last output). 127: not runnable, 124: over ``limit`` seconds."""
    try:
        proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.STDOUT)
    except OSError as exc:
        return 127, str(exc)
    try:
        async with asyncio.timeout(limit):
            out, _ = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return 124, f"timed out after {limit:g}s"
    return proc.returncode or 0, out.decode("utf-8", "replace")[-2000:]


async def restart(action: RestartAction) -> tuple[bool, str]:
    if action.kind == "docker":
        import docker  # the Docker SDK, only where Docker is used

        def go() -> str:
            client = docker.from_env()
            try:
                client.containers.get(action.container).restart(timeout=30)
            finally:
                client.close()
            return f"container {action.container} restarted"

        try:
            return True, await asyncio.to_thread(go)
        except Exception as exc:  # docker.errors.* and connection errors alike: reported, not raised
            return False, f"{type(exc).__name__}: {exc}"
    argv = ("systemctl", "--user", "restart", str(action.unit)) if action.kind == "systemd" else action.argv
    code, out = await run_argv(argv, action.timeout)
    return code == 0, out.strip() or f"exit {code}"


class Watchdog:
    def __init__(self, settings: Settings, bus: Bus | None, client: httpx.AsyncClient) -> None:
        self.settings = settings
        self.cfg = settings.watchdog
        self.core = WatchdogCore(self.cfg, set())
        self.router_base = settings.router_url.rstrip("/").removesuffix("/v1")
        given = settings.admin_token.get_secret_value() if settings.admin_token else None
        self.admin = AdminClient(self.router_base, admin_token.resolve(settings.state_dir, given), client,
                                 timeout=self.cfg.probe_timeout)
        self.router_reachable = True
        self.bus = bus
        self.client = client
        self.alerter = Alerter(settings, bus, client)
        self.events = JsonlWriter(settings.log_dir / "recovery-events.jsonl", keep_open=False)

    async def routes(self) -> dict[str, dict[str, Any]] | None:
        """Every route's state as the router sees it, or None when the router cannot say."""
        try:
            routes = await self.admin.upstreams()
        except CallFailed as exc:
            if self.router_reachable:
                log.warning("watchdog: cannot read the router's routes at %s/admin/upstreams (%s); no route is "
                          "judged until it answers", self.router_base, exc)
            self.router_reachable = False
            return None
        if not self.router_reachable:
            log.warning("watchdog: the router answers again")
        self.router_reachable = True
        return routes

    async def cuda_ok(self, route: str) -> bool | None:
        watched = self.cfg.routes.get(route)
        if watched is None or not watched.cuda_probe:
            return None
        code, _ = await run_argv(watched.cuda_probe, 30)
        return code == 0

    async def tick(self, now: float | None = None) -> list[dict[str, Any]]:
        now = time.monotonic() if now is None else now
        routes = await self.routes()
        if routes is None:
            return []
        self.core.terminal = {name for name, r in routes.items() if r.get("terminal")}
        results = await asyncio.gather(*(self._route(name, bool(r.get("probe_ok")), now)
                                         for name, r in routes.items()))
        return [r for rs in results for r in rs]

    async def _route(self, name: str, probe_ok: bool, now: float) -> list[dict[str, Any]]:
        actions = self.core.on_probe(name, probe_ok, now)
        cuda = await self.cuda_ok(name)
        if cuda is not None:
            actions += self.core.on_cuda(name, cuda, now)
        return [await self.execute(a) for a in actions]

    async def execute(self, a: Action) -> dict[str, Any]:
        record: dict[str, Any] = {"source": SERVICE, "route": a.route, "action": a.kind, "reason": a.reason}
        if a.kind == "restart":
            restart_cfg = self.cfg.routes[a.route].restart
            assert restart_cfg is not None
            ok, out = await restart(restart_cfg)
            record.update(ok=ok, output=out, how=restart_cfg.kind)
        elif a.kind == "recover_cuda":
            ok, out = await self._recover_cuda(a.route)
            record.update(ok=ok, output=out)
        elif a.kind == "page":
            record["channel"] = await self.alerter.send(f"homelab: {a.route} needs you", a.reason, SERVICE)
        log.warning("watchdog %s %s: %s%s", a.kind, a.route, a.reason,
                    f" ({'ok' if record.get('ok') else 'failed'})" if "ok" in record else "")
        self.events.write(record)
        if self.bus is not None:
            await self.bus.publish(EVENTS, orjson.dumps(record))
        return record

    async def _recover_cuda(self, route: str) -> tuple[bool, str]:
        watched = self.cfg.routes.get(route)
        how = watched.cuda_recover if watched and watched.cuda_recover else None
        if how is None or how.kind == "router":
            try:
                record = await self.admin.recover_cuda(route)
            except AdminRefused as exc:  # the command failed (500, its record), or the route may not
                return False, orjson.dumps(exc.data).decode()[-500:]
            except CallFailed as exc:
                return False, str(exc)
            return True, orjson.dumps(record).decode()[-500:]
        code, out = await run_argv(how.argv, 600)
        return code == 0, out


async def main(settings: Settings) -> None:
    async with httpx.AsyncClient() as client, Bus(settings.mqtt_url, SERVICE, state_dir=settings.state_dir) as bus:
        dog = Watchdog(settings, bus, client)
        log.info("watchdog: the router's routes every %ss", settings.watchdog.interval)
        await every(settings.watchdog.interval, dog.tick, "watchdog tick")
