"""The router service's lifecycle and live state: the compiled policy (swapped atomically on reload
or promotion), per-route state and the one health prober of the lab, the continuation check, the
shadow policy, CUDA recovery, and the logs it writes."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from services.router.accounting import Accounting
from services.router.clients import open_to_network
from services.router.decide import Decider, Decision, check_examples
from services.router.errors import PolicyError
from services.router.lab import LabState
from services.router.metrics import Metrics
from services.router.mqtt_state import RouterMqtt, snapshot_of
from services.router.policy import Policy, parse_policy, read_policy
from services.router.preflight import Preflight
from services.router.prober import Prober
from services.router.proxy import Dispatcher
from services.router.recovery import Recovery
from services.router.redact import scrub
from services.router.shadow import Shadow, refuse_changes
from services.router.state import RouteState
from services.router.upstream import Upstream
from shared import admin_token
from shared.jsonl import JsonlWriter, log_dir

log = logging.getLogger("homelab.router")

DEFAULT_MAX_BODY = 64 * 1024 * 1024


def compile_candidate(text: str, source: str = "candidate") -> Decider:
    """A policy's text parsed, validated and compiled (a shadow candidate's is run off the event loop: it
    may be big); the decider keeps the text, for the replicas that share it."""
    decider = compile_policy(parse_policy(text, source))
    decider.text = text
    return decider


def policy_from_file(path: Path) -> Decider:
    """The policy file, compiled (PolicyError names the key and the problem)."""
    return compile_candidate(read_policy(path), str(path))


def version_of(text: str) -> str:
    """A policy text's version: the replicas that share state compare these."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def compile_policy(policy: Policy) -> Decider:
    """A policy ready to serve: golden cases must pass, or it is rejected."""
    decider = Decider(policy)
    failures = check_examples(decider)
    if failures:
        raise PolicyError("golden cases failed: " + "; ".join(failures))
    return decider


@dataclass
class RouterSettings:
    policy_path: Path
    admin_token: str | None = None
    log_dir: Path = field(default_factory=log_dir)
    max_body: int = DEFAULT_MAX_BODY
    probes: bool = True
    mqtt_url: str | None = None  # publish route health and load (HA discovery) when set
    redis_url: str | None = None  # HOMELAB_REDIS_URL: share the lab's books with other replicas (over the policy's)
    host: str = "127.0.0.1"  # where it listens: anyone who reaches a non-loopback address may use an open lab

    @classmethod
    def from_env(cls, policy_path: Path) -> RouterSettings:
        return cls(
            policy_path=policy_path,
            # HOMELAB_ADMIN_TOKEN, else the lab's own token file (state/admin_token), as `homelab` finds it
            admin_token=admin_token.resolve(Path(os.environ.get("HOMELAB_STATE_DIR") or "state")),
            log_dir=log_dir(),
            max_body=int(os.environ.get("HOMELAB_MAX_BODY_BYTES", DEFAULT_MAX_BODY)),
            mqtt_url=os.environ.get("HOMELAB_MQTT_URL") or None,
            redis_url=os.environ.get("HOMELAB_REDIS_URL") or None,
        )


class RouterService:
    """The router's live state: the compiled policy and per-route state."""

    def __init__(self, settings: RouterSettings, decider: Decider) -> None:
        self.settings = settings
        self.decider = decider
        self.states: dict[str, RouteState] = {name: RouteState(name) for name in decider.policy.routes}
        d = settings.log_dir
        self.decisions = JsonlWriter(d / "router-decisions.jsonl")
        self.failures = JsonlWriter(d / "upstream-failures.jsonl")
        self.recoveries = JsonlWriter(d / "recovery-events.jsonl")
        self.validations = JsonlWriter(d / "structured-validation.jsonl")
        self.writers = (self.decisions, self.failures, self.recoveries, self.validations)
        self.metrics = Metrics(self._route_rows, lambda: self.writers, lambda: self.lab)
        self.acct = Accounting(self.metrics, self.decisions, self.failures, self.validations)
        self.shadow: Shadow | None = None
        self.session: aiohttp.ClientSession | None = None
        self.dispatcher: Dispatcher | None = None
        self.poison_listeners: list[Callable[[str, str], Awaitable[None]]] = []
        self.recovery = Recovery(lambda: self.policy, lambda: self.states, self.recoveries)
        self.upstream: Upstream | None = None
        self.prober = Prober(lambda: self.policy, lambda: self.states, lambda: self.upstream, self.recoveries)
        self.started = time.time()
        self.policy_problem: str | None = None  # why the lab's policy is not the one in force here
        shared = decider.policy.shared_state
        url = settings.redis_url or shared.redis_url
        self.lab: LabState | None = None
        if url:
            self.lab = LabState(url, shared.lease_seconds, lambda: self.states,
                                lambda: self.policy.health.circuit_cooldown)
            self.lab.on_policy = self._lab_policy
            for st in self.states.values():
                st.lab = self.lab

    @property
    def policy(self) -> Policy:
        return self.decider.policy

    @property
    def open_to_network(self) -> bool:
        """Listening beyond this machine with no ``clients:``: every laptop on the LAN may use the lab."""
        return open_to_network(self.settings.host, self.policy)

    def _route_rows(self) -> list[tuple[RouteState, int]]:
        routes = self.policy.routes
        return [(st, routes[n].max_concurrency) for n, st in self.states.items() if n in routes]

    async def _on_poisoned(self, route: str, detail: str) -> None:
        for listener in self.poison_listeners:
            try:
                await listener(route, detail)
            except Exception:  # a listener must never break the request path
                log.exception("poison listener failed for %s", route)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=60)
        async with aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                         skip_auto_headers=("User-Agent",)) as session:
            self.session = session
            self.upstream = Upstream(session)  # the one wire: the request path and the prober's checks
            self.dispatcher = Dispatcher(self.upstream, lambda: self.states, self.acct, self._on_poisoned)
            lab = self.lab
            async with asyncio.TaskGroup() as tg:
                background = []
                if lab is not None:
                    await self._join_lab(lab)
                    background.append(tg.create_task(lab.run(), name="router-shared-state"))
                if self.settings.probes:
                    # with shared state, the lab's one prober is its leader's (alone again, each probes)
                    background.append(tg.create_task(self.prober.run(
                        active=lambda: lab is None or lab.leader or not lab.ok,
                        after=None if lab is None else lambda: lab.probed(self.states)), name="router-health-probes"))
                if self.settings.mqtt_url:
                    mqtt = RouterMqtt(self.settings.mqtt_url, snapshot_of(
                        lambda: self.states,
                        lambda: {n: r.max_concurrency for n, r in self.policy.routes.items()}),
                        clients=lambda: self.acct.today, replica=None if lab is None else lab.id)
                    self.poison_listeners.append(mqtt.poisoned)
                    self.acct.live_power = lambda route: mqtt.power_of(
                        self.policy.routes[route].power_sensor if route in self.policy.routes else None)
                    background.append(tg.create_task(mqtt.run(), name="router-mqtt"))
                try:
                    yield
                finally:
                    for task in background:
                        task.cancel()
            if lab is not None:
                await lab.close()
        for w in self.writers:
            w.close()

    # ---- the lab's one prober (the watchdog reads its results) -----------------------------------

    async def probe_once(self) -> None:
        await self.prober.probe_once()

    async def check_continuation(self, name: str) -> str:
        return await self.prober.check_continuation(name)

    async def check_tools(self, name: str) -> str:
        return await self.prober.check_tools(name)

    def after_policy_change(self) -> None:
        """A new policy may declare new modes or point a route elsewhere: the checks run again (at the
        next good probe of each route)."""
        self.prober.policy_changed()

    # ---- policy: reload, shadow, promotion ----------------------------------------------------

    def reload(self) -> Decider:
        """Re-read the policy file; on any error raise PolicyError and keep serving the old policy."""
        return self.install(self._from_file())

    def _from_file(self) -> Decider:
        return policy_from_file(self.settings.policy_path)

    # ---- the lab's policy (replicas that share state) --------------------------------------------

    @property
    def policy_version(self) -> str | None:
        text = self.decider.text
        return None if text is None else version_of(text)

    async def share_policy(self) -> None:
        """A reload or promotion here is the lab's policy: every replica has it within a sync or two."""
        text = self.decider.text
        if self.lab is not None and text is not None:
            self.policy_problem = None
            await self.lab.publish_policy(version_of(text), text)

    async def _join_lab(self, lab: LabState) -> None:
        """At start: take the lab's policy if it has one (else this one's becomes it), and its state."""
        text = self.decider.text
        if text is None:  # built from a Policy object (tests): nothing to share
            text = ""
        joined = await lab.join_policy(version_of(text), text)
        if joined is not None and joined[0] != version_of(text):
            self._lab_policy(*joined)
        await lab.rejoin()

    def _lab_policy(self, version: str, text: str) -> None:
        """Another replica reloaded or promoted: its policy is in force here too — unless it changes what
        only this replica's own file may (commands, addresses, keys, who may use the lab)."""
        if version == self.policy_version:
            self.policy_problem = None
            return
        try:
            candidate = compile_candidate(text, "the lab's shared policy")
            refuse_changes(self._from_file().policy, candidate.policy)
        except PolicyError as exc:
            self.policy_problem = (f"the lab's policy {version} is not in force here (this replica keeps its own "
                                   f"{self.policy_version}): {exc}")
            log.error("shared state: %s", self.policy_problem)
            return
        self.install(candidate)
        self.policy_problem = None
        self.after_policy_change()
        log.info("shared state: the lab's policy %s is in force (reloaded or promoted by another replica)", version)

    def install(self, decider: Decider) -> Decider:
        """Make a compiled policy the live one (reload, shadow promotion)."""
        for name in decider.policy.routes:
            self.states.setdefault(name, RouteState(name, lab=self.lab))
        for name in list(self.states):
            if name not in decider.policy.routes:
                del self.states[name]
        self.decider = decider  # one assignment: requests in flight keep the policy they started with
        return decider

    def load_shadow(self, candidate: Decider) -> Shadow:
        """A candidate policy sent over HTTP (parsed and compiled by :func:`compile_candidate`): it may
        change decisions, never commands, addresses or who may use the lab."""
        refuse_changes(self.policy, candidate.policy)
        self.shadow = Shadow(candidate)
        return self.shadow

    def promote_shadow(self, shadow: Shadow) -> Decider:
        """The candidate becomes live — checked again against the policy in force now (a reload since
        it was loaded may have changed what it must not)."""
        refuse_changes(self.policy, shadow.decider.policy)
        decider = self.install(shadow.decider)
        self.shadow = None
        return decider

    def observe_shadow(self, request_id: str, decision: Decision, pre: Preflight, header_route: str | None) -> None:
        """Decide a live request by the shadow policy too (scheduled after the live decision, no I/O)."""
        shadow = self.shadow
        if shadow is None:
            return
        try:
            cand = shadow.observe(request_id, decision, model=pre.model, text=pre.text, has_image=pre.has_image,
                                  tokens=pre.tokens, header_route=header_route,
                                  metadata_bucket=pre.metadata.get("homelab_bucket"))
            self.metrics.shadow.labels(decision.route, cand).inc()
        except Exception:  # the shadow never affects serving
            self.metrics.internal_errors.labels("shadow").inc()
            log.exception("shadow decision failed for %s", request_id)

    # ---- what the service tells ----------------------------------------------------------------

    def log_stats(self) -> dict[str, Any]:
        return {w.path.name: {"write_errors": w.errors, "rotations": w.rotations} for w in self.writers}

    def stats(self, *, admin: bool, lab_in_flight: dict[str, int] | None = None) -> dict[str, Any]:
        """``/stats``. Without the admin token: counts only — no client names, no upstream addresses,
        no shadow request ids or keywords. With shared state, each route's ``in_flight`` is the lab's."""
        policy = self.policy
        shadow = self.shadow
        cooldown = policy.health.circuit_cooldown
        routes = {n: st.snapshot(policy.routes[n].max_concurrency, policy.routes[n].continuation, cooldown)
                  for n, st in self.states.items()}
        for n, count in (lab_in_flight or {}).items():
            if n in routes:
                routes[n]["in_flight"] = count
                routes[n]["saturated"] = count >= policy.routes[n].max_concurrency
        clients: dict[str, Any] = {n: {k: round(v, 6) for k, v in c.items()} for n, c in self.acct.clients.items()}
        metrics = self.metrics.snapshot()
        if not admin:
            routes = {n: {k: scrub(v) for k, v in row.items()} for n, row in routes.items()}
            clients = {"count": len(clients), "requests": sum(int(c["requests"]) for c in clients.values())}
            metrics = {k: rows for k, rows in metrics.items()
                       if not any("client" in r["labels"] for r in rows)}
        return {
            "uptime_s": round(time.time() - self.started, 1),
            "routes": routes,
            "logs": self.log_stats(),
            "shadow": None if shadow is None else shadow.report() if admin else shadow.summary(),
            "clients": clients,
            "open_to_network": self.open_to_network,
            "metrics": metrics,
            **self._shared_state(admin),
        }

    def _shared_state(self, admin: bool) -> dict[str, Any]:
        """How this replica's link to the lab's shared books is (nothing when it runs alone)."""
        lab = self.lab
        if lab is None:
            return {}
        status = lab.status if admin else scrub(lab.status)
        return {"shared_state": status, "replicas": lab.replicas,
                "policy_problem": self.policy_problem if admin else None}

    def upstreams(self, lab_in_flight: dict[str, int] | None = None) -> dict[str, Any]:
        """``/admin/upstreams``: each route's state; with shared state, ``in_flight`` is the lab's
        (``lab_in_flight``, read from its books) and the link to the lab is reported."""
        policy = self.policy
        cooldown = policy.health.circuit_cooldown
        out = {}
        for name, st in self.states.items():
            r = policy.routes[name]
            row = {**st.snapshot(r.max_concurrency, r.continuation, cooldown), "model": r.model,
                   "base_url": r.base_url, "terminal": r.terminal, "vision": r.vision}
            if lab_in_flight and name in lab_in_flight:
                row["in_flight_here"] = row["in_flight"]
                row["in_flight"] = lab_in_flight[name]
                row["saturated"] = row["in_flight"] >= r.max_concurrency
            out[name] = row
        doc: dict[str, Any] = {"routes": out}
        lab = self.lab
        if lab is not None:
            doc["shared_state"] = lab.status
            doc["replicas"] = lab.replicas
            doc["replica"] = lab.id
            doc["prober"] = lab.leader or not lab.ok
            doc["policy"] = self.policy_report()
        return doc

    def policy_report(self) -> dict[str, Any]:
        """Which policy is in force here, the lab's, and whether this replica's own file differs."""
        lab = self.lab
        in_force = self.policy_version
        try:
            file_version: str | None = version_of(self.settings.policy_path.read_text(encoding="utf-8"))
        except OSError:
            file_version = None
        report: dict[str, Any] = {"version": in_force, "lab": lab.shared_policy if lab else None,
                                  "file": file_version, "file_differs": file_version != in_force}
        if self.policy_problem:
            report["problem"] = self.policy_problem
        elif report["file_differs"]:
            report["problem"] = ("this replica's policy file differs from the policy in force (a reload here makes "
                                 "the file the lab's policy)")
        return report
