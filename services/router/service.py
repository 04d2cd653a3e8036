"""The router service's lifecycle and live state: the compiled policy (swapped atomically on reload
or promotion), per-route state and the one health prober of the lab, the continuation check, the
shadow policy, CUDA recovery, and the logs it writes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from services.router import toolparse
from services.router.accounting import Accounting
from services.router.clients import open_to_network
from services.router.decide import Decider, Decision, check_examples
from services.router.errors import PolicyError
from services.router.metrics import Metrics
from services.router.mqtt_state import RouterMqtt, snapshot_of
from services.router.policy import Policy, Route, load_policy, parse_policy
from services.router.preflight import Preflight
from services.router.proxy import Dispatcher
from services.router.shadow import Shadow, refuse_changes
from services.router.state import RouteState
from services.router.upstream import Upstream, auth
from shared.jsonl import JsonlWriter, log_dir

log = logging.getLogger("homelab.router")

DEFAULT_MAX_BODY = 64 * 1024 * 1024


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
    host: str = "127.0.0.1"  # where it listens: anyone who reaches a non-loopback address may use an open lab

    @classmethod
    def from_env(cls, policy_path: Path) -> RouterSettings:
        return cls(
            policy_path=policy_path,
            admin_token=os.environ.get("HOMELAB_ADMIN_TOKEN") or None,
            log_dir=log_dir(),
            max_body=int(os.environ.get("HOMELAB_MAX_BODY_BYTES", DEFAULT_MAX_BODY)),
            mqtt_url=os.environ.get("HOMELAB_MQTT_URL") or None,
        )


def served(body: bytes) -> dict[str, dict[str, Any]] | None:
    """The models an engine's ``/v1/models`` lists, by id (None when the body does not say)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    items = data.get("data") if isinstance(data, dict) else None
    if not isinstance(items, list):
        return None
    return {str(m["id"]): m for m in items if isinstance(m, dict) and "id" in m}


def context_of(entry: dict[str, Any]) -> int | None:
    """The context window a models entry reports (vLLM: ``max_model_len``; others: ``context_length``)."""
    for key in ("max_model_len", "context_length", "max_context_length"):
        value = entry.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _markup_in(text: str) -> str | None:
    """The tool-call markup format a text is written in, if any."""
    for fmt in toolparse.FORMATS[1:]:
        try:
            _, calls = toolparse.parse(fmt, text)
        except toolparse.ParseError:
            continue
        if calls:
            return fmt
    return None


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
        self.metrics = Metrics(self._route_rows, lambda: self.writers)
        self.acct = Accounting(self.metrics, self.decisions, self.failures, self.validations)
        self.shadow: Shadow | None = None
        self.session: aiohttp.ClientSession | None = None
        self.dispatcher: Dispatcher | None = None
        self.poison_listeners: list[Callable[[str, str], Awaitable[None]]] = []
        self._recover_locks: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.started = time.time()

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
            self.dispatcher = Dispatcher(session, lambda: self.states, self.acct, self._on_poisoned)
            async with asyncio.TaskGroup() as tg:
                background = []
                if self.settings.probes:
                    background.append(tg.create_task(self._probe_loop(), name="router-health-probes"))
                if self.settings.mqtt_url:
                    mqtt = RouterMqtt(self.settings.mqtt_url, snapshot_of(
                        lambda: self.states,
                        lambda: {n: r.max_concurrency for n, r in self.policy.routes.items()}),
                        clients=lambda: self.acct.today)
                    self.poison_listeners.append(mqtt.poisoned)
                    self.acct.live_power = lambda route: mqtt.power_of(
                        self.policy.routes[route].power_sensor if route in self.policy.routes else None)
                    background.append(tg.create_task(mqtt.run(), name="router-mqtt"))
                try:
                    yield
                finally:
                    for task in background:
                        task.cancel()
        for w in self.writers:
            w.close()

    # ---- health probes: the lab's one prober (the watchdog reads its results) -----------------

    async def probe_once(self) -> None:
        await asyncio.gather(*(self._probe(name) for name in self.policy.routes), return_exceptions=True)

    async def _probe(self, name: str) -> None:
        policy = self.policy
        route = policy.routes[name]
        st = self.states[name]
        assert self.session is not None
        try:
            async with self.session.get(route.models_url, headers=auth(route.api_key),
                                        timeout=aiohttp.ClientTimeout(total=policy.health.probe_timeout)) as r:
                body = await r.read()
                ok = r.status == 200
                err = None if ok else f"probe: http_{r.status}"
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            ok, err = False, f"probe: {type(exc).__name__}: {exc}"
        if ok:
            models = served(body)
            if models is not None and route.model not in models:
                ok, err = False, (f"probe: the engine does not serve '{route.model}' "
                                  f"(it serves: {', '.join(list(models)[:10])})")
            elif models is not None:
                st.max_model_len = context_of(models[route.model])
        if ok != st.healthy:
            log.warning("route %s is now %s%s", name, "up" if ok else "down", f" ({err})" if err else "")
        st.probe_result(ok, err)
        if ok and st.continuation_checked_at is None and self._needs_continuation_check(name):
            st.continuation_checked_at = time.time()  # once; reload and promotion check again
            self._spawn(self.check_continuation(name))
        if ok and st.tools_checked_at is None and policy.health.probe_tools:
            st.tools_checked_at = time.time()
            self._spawn(self.check_tools(name))

    async def _probe_loop(self) -> None:
        while True:
            await self.probe_once()
            await asyncio.sleep(self.policy.health.probe_interval)

    # ---- continuation capability: checked, not trusted -------------------------------------------

    def _needs_continuation_check(self, name: str) -> bool:
        policy = self.policy
        return policy.health.probe_continuation and "prefill" in policy.routes[name].continuation

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def after_policy_change(self) -> None:
        """A new policy may declare new modes or point a route elsewhere: check continuation and tools again."""
        for name, st in self.states.items():
            st.tools_checked_at = None  # the next good probe asks again
            st.continuation_blocked.clear()
            st.continuation_checked_at = None
            if self.session is not None and self._needs_continuation_check(name) and st.healthy:
                st.continuation_checked_at = time.time()
                self._spawn(self.check_continuation(name))

    async def check_continuation(self, name: str) -> str:
        """Does this upstream really continue an assistant prefill? Returns the verdict (also logged).

        Two one-token requests over the same conversation ending in an assistant turn: with
        ``continue_final_message`` and as a new turn. An engine that continues renders the prefill
        open (no end-of-turn, no new assistant header), so its prompt is shorter; one that starts a
        new turn (llama.cpp's chat template) renders both the same, and one that refuses answers 4xx.
        """
        route = self.policy.routes[name]
        st = self.states[name]
        assert self.session is not None
        convo = [{"role": "user", "content": "Say hello."}, {"role": "assistant", "content": "Hello"}]
        common = {"model": route.model, "messages": convo, "max_tokens": 1, "temperature": 0, "stream": False}
        bodies = ({**common, "continue_final_message": True, "add_generation_prompt": False}, common)
        results: list[tuple[int, Any]] = []
        try:
            for body in bodies:
                results.append(await self._ask(route, body))
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            st.continuation_checked_at = None  # try again when the route answers
            return f"unverified: {type(exc).__name__}"
        (sa, a), (sb, b) = results
        verdict = "unverified"
        if 400 <= sa < 500:
            verdict = f"prefill refused: HTTP {sa}"
            st.continuation_blocked["prefill"] = verdict
        elif sa == 200 and sb == 200:
            pa = ((a or {}).get("usage") or {}).get("prompt_tokens")
            pb = ((b or {}).get("usage") or {}).get("prompt_tokens")
            if isinstance(pa, int) and isinstance(pb, int):
                if pa >= pb:
                    verdict = (f"starts a new turn instead of continuing a prefill (prompt tokens {pa} with the "
                               f"prefill, {pb} as a new turn)")
                    st.continuation_blocked["prefill"] = verdict
                else:
                    verdict = "continues"
                    st.continuation_blocked.pop("prefill", None)
        st.continuation_checked_at = time.time()
        mode = st.effective_continuation(route.continuation)
        self.recoveries.write({"action": "continuation_check", "route": name, "verdict": verdict,
                               "continuation_effective": mode})
        if "prefill" in st.continuation_blocked:
            log.error("route %s declares prefill continuation but its upstream %s: %s; continuing there %s",
                      name, route.base_url, verdict,
                      "by instruction instead" if mode == "instruct" else "is off")
        return verdict

    async def check_tools(self, name: str) -> str:
        """Ask the route for a tool call once and say what came back (``tool_calls`` in /admin/upstreams):
        ``native``, ``parsed``, ``text`` (markup no one turns into calls: the log and ``homelab status``
        warn) or ``unknown``."""
        route = self.policy.routes[name]
        st = self.states[name]
        choices = ["none"] if route.tool_parser != "none" else ["auto", "none"]
        verdict, seen = "unknown", None
        try:
            for choice in choices:
                status, message = await self._ask_tool(name, choice)
                if status == 400 and choice == "auto":  # vLLM without --tool-call-parser: what does it write?
                    seen = "the engine has no tool parser of its own (400 to tool_choice auto)"
                    continue
                if message.get("tool_calls"):
                    verdict = "native"
                    break
                text = message.get("content")
                fmt = _markup_in(text if isinstance(text, str) else "")
                if fmt is not None:
                    verdict, seen = ("parsed" if fmt == route.tool_parser else "text"), f"{fmt} markup"
                elif seen is not None:
                    verdict = "text"
                break
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            st.tools_checked_at = None  # again at the next good probe
            return f"unverified: {type(exc).__name__}"
        st.tool_calls, st.tool_calls_seen = verdict, seen
        self.recoveries.write({"action": "tool_check", "route": name, "tool_calls": verdict, "seen": seen})
        if verdict == "text":
            hint = f"set tool_parser: {seen.split()[0]}" if seen and seen.endswith(" markup") else "set its tool_parser"
            log.warning("route %s leaves tool calls as text (%s) and has no tool parser that reads them: %s",
                        name, seen, hint)
        return verdict

    async def _ask_tool(self, name: str, choice: str) -> tuple[int, dict[str, Any]]:
        route = self.policy.routes[name]
        tool = {"type": "function", "function": {"name": "ping", "description": "Answers pong.",
                                                 "parameters": {"type": "object", "properties": {}}}}
        body = {"model": route.model, "max_tokens": 128, "temperature": 0, "stream": False, "tools": [tool],
                "tool_choice": choice, "messages": [{"role": "user", "content": "Call the ping tool now."}]}
        status, answer = await self._ask(route, body)
        try:
            message = answer["choices"][0]["message"]
        except (KeyError, IndexError, TypeError):
            message = {}
        return status, message if isinstance(message, dict) else {}

    async def _ask(self, route: Route, body: dict[str, Any]) -> tuple[int, Any]:
        """One small request of the router's own to a route (the capability checks): (status, decoded
        answer or None), through the same wire as the request path."""
        assert self.session is not None
        async with asyncio.timeout(route.first_token_timeout):
            status, raw, _ = await Upstream(self.session).post_json(route, orjson.dumps(body), route.chat_url)
        try:
            return status, orjson.loads(raw)
        except orjson.JSONDecodeError:
            return status, None

    # ---- policy: reload, shadow, promotion ----------------------------------------------------

    def reload(self) -> Decider:
        """Re-read the policy file; on any error raise PolicyError and keep serving the old policy."""
        return self.install(compile_policy(load_policy(self.settings.policy_path)))

    def install(self, decider: Decider) -> Decider:
        """Make a compiled policy the live one (reload, shadow promotion)."""
        for name in decider.policy.routes:
            self.states.setdefault(name, RouteState(name))
        for name in list(self.states):
            if name not in decider.policy.routes:
                del self.states[name]
        self.decider = decider  # one assignment: requests in flight keep the policy they started with
        return decider

    def load_shadow(self, text: str) -> Shadow:
        """A candidate policy sent over HTTP: it may change decisions, never commands or addresses."""
        candidate = parse_policy(text, "candidate")
        refuse_changes(self.policy, candidate)
        self.shadow = Shadow(compile_policy(candidate))
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

    def stats(self, *, admin: bool) -> dict[str, Any]:
        """``/stats``: the shadow's request ids and keywords only for the admin."""
        policy = self.policy
        shadow = self.shadow
        return {
            "uptime_s": round(time.time() - self.started, 1),
            "routes": {n: st.snapshot(policy.routes[n].max_concurrency, policy.routes[n].continuation)
                       for n, st in self.states.items()},
            "logs": self.log_stats(),
            "shadow": None if shadow is None else shadow.report() if admin else shadow.summary(),
            "clients": {n: {k: round(v, 6) for k, v in c.items()} for n, c in self.acct.clients.items()},
            "open_to_network": self.open_to_network,
            "metrics": self.metrics.snapshot(),
        }

    def upstreams(self) -> dict[str, Any]:
        policy = self.policy
        out = {}
        for name, st in self.states.items():
            r = policy.routes[name]
            out[name] = {**st.snapshot(r.max_concurrency, r.continuation), "model": r.model, "base_url": r.base_url,
                         "terminal": r.terminal, "vision": r.vision}
        return {"routes": out}

    # ---- CUDA recovery ------------------------------------------------------------------------

    def recover_lock(self, route: str) -> asyncio.Lock:
        return self._recover_locks.setdefault(route, asyncio.Lock())

    async def recover(self, name: str) -> dict[str, Any]:
        """Run the route's recovery command (the caller holds its lock): killed after
        ``recover_timeout``; the route is vouched for again only on exit 0."""
        route = self.policy.routes[name]
        st = self.states[name]
        assert route.recover_command
        st.recovering = True
        t0 = time.monotonic()
        returncode: int | None = None
        try:
            proc = await asyncio.create_subprocess_exec(
                *route.recover_command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
            try:
                async with asyncio.timeout(route.recover_timeout):
                    out, _ = await proc.communicate()
                returncode = proc.returncode
                ok = returncode == 0
                text = out.decode("utf-8", "replace")[-2000:]
            except TimeoutError:
                proc.kill()
                await proc.wait()
                ok, text = False, f"killed: no exit within recover_timeout ({route.recover_timeout:g}s)"
        except OSError as exc:
            ok, text = False, str(exc)
        finally:
            st.recovering = False
        if ok:
            st.poisoned = False
        record = {"route": name, "action": "recover_cuda", "ok": ok, "returncode": returncode,
                  "seconds": round(time.monotonic() - t0, 3), "output": text}
        self.recoveries.write(record)
        return record
