"""The lab's one prober: each route's ``GET /v1/models`` on a timer, and the capability checks
(continuation, tool calls) a route gets once per policy.

A probe says whether the engine answers; it never closes a circuit (the circuit follows the
traffic: after its cooldown one trial request goes through, and only an answer closes it). A model
the engine does not list is a warning (``model_listed: false``), never a route marked down: engines
list names their own way (Ollama ``qwen2.5:latest``, llama.cpp its file and any name answers).

A capability check runs once per policy version and route, when the route answers its probe and
has no request in flight (it never takes a client's slot); after a transport error it is tried
again after 30 s, then 60 s, and given up after three tries — never once per probe.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

import aiohttp
import orjson

from services.router import toolparse
from services.router.policy import Policy, Route
from services.router.state import Check, RouteState
from services.router.upstream import Upstream, auth
from shared.jsonl import JsonlWriter

log = logging.getLogger("homelab.router.prober")

CONTINUATION, TOOLS = "continuation", "tools"


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


def listed(models: dict[str, dict[str, Any]], model: str) -> dict[str, Any] | None:
    """The entry an engine lists for ``model``, matched as engines name models: exactly; ``name`` as
    Ollama's ``name:latest``; a path or publisher prefix (LM Studio ``publisher/name``, llama.cpp
    ``models/name.gguf``); or the one model of an engine that serves one (llama.cpp answers any name)."""
    if model in models:
        return models[model]
    if ":" not in model and f"{model}:latest" in models:
        return models[f"{model}:latest"]
    base = model.rsplit("/", 1)[-1].removesuffix(".gguf").lower()
    for mid, entry in models.items():
        if mid.rsplit("/", 1)[-1].removesuffix(".gguf").lower() == base:
            return entry
    if len(models) == 1:
        return next(iter(models.values()))
    return None


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


# The continuation check's conversation: the engine's own opening is sent back as a prefill.
CHECK_USER = "Say hello."
CHECK_OPENING_TOKENS = 4


class Prober:
    def __init__(self, policy: Callable[[], Policy], states: Callable[[], dict[str, RouteState]],
                 upstream: Callable[[], Upstream | None], recoveries: JsonlWriter) -> None:
        self._policy = policy
        self._states = states
        self._upstream = upstream
        self.recoveries = recoveries
        self._tasks: set[asyncio.Task[Any]] = set()

    # ---- health -------------------------------------------------------------------------------

    async def run(self, active: Callable[[], bool] = lambda: True, after: Callable[[], None] | None = None) -> None:
        """Probe every ``probe_interval`` while ``active()`` (the lab's leader, with shared state);
        ``after``: each round's results, for the other replicas."""
        while True:
            if active():
                await self.probe_once()
                if after is not None:
                    after()
            await asyncio.sleep(self._policy().health.probe_interval)

    async def probe_once(self) -> None:
        await asyncio.gather(*(self.probe(name) for name in self._policy().routes), return_exceptions=True)

    async def probe(self, name: str) -> None:
        policy = self._policy()
        route = policy.routes[name]
        st = self._states()[name]
        up = self._upstream()
        assert up is not None
        try:
            async with up.session.get(route.models_url, headers=auth(route.api_key),
                                      timeout=aiohttp.ClientTimeout(total=policy.health.probe_timeout)) as r:
                body = await r.read()
                ok = r.status == 200
                err = None if ok else f"probe: http_{r.status}"
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            ok, err = False, f"probe: {type(exc).__name__}: {exc}"
        if ok:
            self._read_models(name, route, st, body)
        if ok != st.healthy:
            log.warning("route %s is now %s%s", name, "up" if ok else "down", f" ({err})" if err else "")
        st.probe_result(ok, err)
        if ok:
            self._due_checks(name, route, st, policy)

    @staticmethod
    def _read_models(name: str, route: Route, st: RouteState, body: bytes) -> None:
        models = served(body)
        if models is None:
            return
        entry = listed(models, route.model)
        now_listed = entry is not None
        if not now_listed and st.model_listed is not False:
            log.warning("route %s: the engine does not list '%s' (it lists: %s); the route stays up, and only "
                        "an answer that the model is missing fails it", name, route.model,
                        ", ".join(list(models)[:10]))
        st.model_listed = now_listed
        if entry is not None:
            st.max_model_len = context_of(entry)

    # ---- capability checks: once per policy, bounded retries, never a client's slot ---------------

    def _due_checks(self, name: str, route: Route, st: RouteState, policy: Policy) -> None:
        if st.in_flight:
            return  # a client is using the route: its slots are the client's, check when it is idle
        now = time.monotonic()
        wanted = []
        if policy.health.probe_continuation and "prefill" in route.continuation:
            wanted.append((CONTINUATION, self.check_continuation))
        if policy.health.probe_tools:
            wanted.append((TOOLS, self.check_tools))
        for kind, check in wanted:
            c = st.checks.setdefault(kind, Check())
            if c.due(now):
                c.running = True
                self._spawn(self._guarded(name, c, check))

    async def _guarded(self, name: str, c: Check, check: Callable[[str], Coroutine[Any, Any, str]]) -> None:
        try:
            verdict = await check(name)
        except Exception:  # a bug in a check must not retry forever or kill the prober
            log.exception("capability check of %s failed", name)
            c.running, c.done = False, True
            return
        if verdict.startswith("unverified: transport"):
            c.failed(time.monotonic())
        else:
            c.running, c.done = False, True

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def policy_changed(self) -> None:
        """A new policy may declare new modes or point a route elsewhere: every check runs again."""
        for st in self._states().values():
            st.checks.clear()
            st.continuation_blocked.clear()
            st.continuation_verdict = None

    async def check_continuation(self, name: str) -> str:
        """Does this upstream really continue an assistant prefill? Returns the verdict (also logged).

        The engine's own opening of an answer is sent back as an assistant turn twice: with
        ``continue_final_message`` and as a new turn. An engine that continues renders the prefill open
        (fewer prompt tokens) and writes what follows it (not its opening again); one that starts a new
        turn (llama.cpp's chat template) renders both the same and writes the same; one that refuses
        answers 4xx. Only clear evidence — a 4xx, or the prompt tokens and the text agreeing — changes
        the mode; anything else is ``unverified`` and the declared mode stays.
        """
        policy = self._policy()
        route = policy.routes[name]
        st = self._states()[name]
        common = {"model": route.model, "max_tokens": CHECK_OPENING_TOKENS, "temperature": 0, "stream": False}
        try:
            so, opening_answer = await self._ask(route, {**common, "messages": [
                {"role": "user", "content": CHECK_USER}]})
            opening = _text(opening_answer)
            if so != 200 or not opening.strip():
                return self._verdict(name, route, st, f"unverified: no opening to continue (HTTP {so})")
            convo = [{"role": "user", "content": CHECK_USER}, {"role": "assistant", "content": opening}]
            sa, a = await self._ask(route, {**common, "messages": convo, "continue_final_message": True,
                                            "add_generation_prompt": False})
            if 400 <= sa < 500:
                st.continuation_blocked["prefill"] = f"prefill refused: HTTP {sa}"
                return self._verdict(name, route, st, st.continuation_blocked["prefill"])
            sb, b = await self._ask(route, {**common, "messages": convo})
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            return f"unverified: transport: {type(exc).__name__}"
        verdict = "unverified: the answers were not clear"
        if sa == 200 and sb == 200:
            pa, pb = _prompt_tokens(a), _prompt_tokens(b)
            ta, tb = _text(a), _text(b)
            if pa is not None and pb is not None:
                if pa < pb and ta != tb:
                    verdict = "continues"
                    st.continuation_blocked.pop("prefill", None)
                elif pa >= pb and ta == tb:
                    verdict = (f"starts a new turn instead of continuing a prefill (prompt tokens {pa} with the "
                               f"prefill, {pb} as a new turn; the same answer {ta[:40]!r} both times)")
                    st.continuation_blocked["prefill"] = verdict
                else:
                    verdict = (f"unverified: prompt tokens {pa} with the prefill, {pb} as a new turn, answers "
                               f"{ta[:40]!r} and {tb[:40]!r} disagree on what the engine did")
        return self._verdict(name, route, st, verdict)

    def _verdict(self, name: str, route: Route, st: RouteState, verdict: str) -> str:
        st.continuation_verdict = verdict
        mode = st.effective_continuation(route.continuation)
        self.recoveries.write({"action": "continuation_check", "route": name, "verdict": verdict,
                               "continuation_effective": mode})
        if "prefill" in st.continuation_blocked:
            log.error("route %s declares prefill continuation but its upstream %s: %s; continuing there %s",
                      name, route.base_url, verdict, "by instruction instead" if mode == "instruct" else "is off")
        return verdict

    async def check_tools(self, name: str) -> str:
        """Ask the route for a tool call once and say what came back (``tool_calls`` in /admin/upstreams):
        ``native``, ``parsed``, ``text`` (markup no one turns into calls: the log and ``homelab status``
        warn) or ``unknown``."""
        route = self._policy().routes[name]
        st = self._states()[name]
        choices = ["none"] if route.tool_parser != "none" else ["auto", "none"]
        verdict, seen = "unknown", None
        try:
            for choice in choices:
                status, message = await self._ask_tool(route, choice)
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
            return f"unverified: transport: {type(exc).__name__}"
        st.tool_calls, st.tool_calls_seen = verdict, seen
        self.recoveries.write({"action": "tool_check", "route": name, "tool_calls": verdict, "seen": seen})
        if verdict == "text":
            hint = f"set tool_parser: {seen.split()[0]}" if seen and seen.endswith(" markup") else "set its tool_parser"
            log.warning("route %s leaves tool calls as text (%s) and has no tool parser that reads them: %s",
                        name, seen, hint)
        return verdict

    async def _ask_tool(self, route: Route, choice: str) -> tuple[int, dict[str, Any]]:
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
        up = self._upstream()
        assert up is not None
        async with asyncio.timeout(route.first_token_timeout):
            status, raw, _ = await up.post_json(route, orjson.dumps(body), route.chat_url)
        try:
            return status, orjson.loads(raw)
        except orjson.JSONDecodeError:
            return status, None


def _text(answer: Any) -> str:
    try:
        content = answer["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return ""
    return content if isinstance(content, str) else ""


def _prompt_tokens(answer: Any) -> int | None:
    usage = answer.get("usage") if isinstance(answer, dict) else None
    value = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    return value if isinstance(value, int) else None
