"""``homelab status``: one screen for the whole lab (``--json`` for scripts).

Reads what the lab already publishes: the retained ``homelab/<service>/status`` (+ ``/since``) of every
service, the router's ``/stats``, the Netdata hosts' retained availability, the notifier's retained last
event and the scheduler's retained next runs. Exit 0 when all is well, 1 when something is down, 2 when
it cannot tell (the broker does not answer) — a scheduled ``no_agent`` check can use it as it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import orjson

from services.table import SERVICE_TABLE
from shared import admin_token
from shared.bus import payload_bytes
from shared.settings import Settings, parse_mqtt_url

LISTEN = 1.0  # seconds to gather retained messages (they arrive at once on subscribe)
TOPICS = ("homelab/+/status", "homelab/+/status/since", "homelab/netdata/+/availability",
          "homelab/vision_notifier/last_event", "homelab/scheduler/next", "homelab/cameras/+/snooze")
OK, DOWN, UNKNOWN = 0, 1, 2


async def _retained(settings: Settings, listen: float) -> dict[str, bytes]:
    t = parse_mqtt_url(settings.mqtt_url)
    got: dict[str, bytes] = {}
    async with aiomqtt.Client(t.host, t.port, username=t.username, password=t.password, timeout=3,
                              identifier=f"homelab-status-{uuid.uuid4().hex[:8]}") as client:
        for topic in TOPICS:
            await client.subscribe(topic, qos=0)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(listen):
                async for msg in client.messages:
                    if msg.retain:
                        got[str(msg.topic)] = payload_bytes(msg.payload)
    return got


def _json(raw: bytes | None) -> Any:
    if not raw:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


async def collect(settings: Settings, router_url: str, listen: float = LISTEN) -> dict[str, Any]:
    """Everything the screen shows, and the verdict (``code``: 0 well, 1 something down, 2 cannot tell)."""
    out: dict[str, Any] = {"checked_at": round(time.time(), 3), "problems": [], "warnings": []}
    problems: list[str] = out["problems"]
    warnings: list[str] = out["warnings"]
    try:
        retained = await _retained(settings, listen)
        out["broker"] = {"url": repr(parse_mqtt_url(settings.mqtt_url)), "ok": True}
    except (aiomqtt.MqttError, OSError, TimeoutError) as exc:
        retained = {}
        out["broker"] = {"url": repr(parse_mqtt_url(settings.mqtt_url)), "ok": False,
                         "error": f"{type(exc).__name__}: {exc}"}
    services: dict[str, Any] = {}
    for name in ("router", *SERVICE_TABLE):
        state = retained.get(f"homelab/{name}/status")
        since = _json(retained.get(f"homelab/{name}/status/since")) or {}
        row: dict[str, Any] = {"status": state.decode() if state else "never seen"}
        if state is None and name == "netdata_bridge" and not settings.netdata_url:
            row["status"] = "not configured"  # no Netdata to bridge (netdata_url): nothing to run
        elif state is None and out["broker"]["ok"]:
            # a part that cannot be seen is not well: never started, or never reached this broker
            problems.append(f"service {name} was never seen on the broker (not running, or on another broker?)")
        if since.get("state") == row["status"]:
            row["since"] = since.get("since")
        elif since.get("state") == "online" and row["status"] == "offline":
            row["online_since"] = since.get("since")  # then it died without a word (LWT)
        services[name] = row
        if row["status"] == "offline":
            problems.append(f"service {name} is offline")
    out["services"] = services

    base = router_url.rstrip("/").removesuffix("/v1")
    try:
        # with the lab's admin token /stats says everything (errors with their addresses); without, counts
        token = admin_token.resolve(Path(os.environ.get("HOMELAB_STATE_DIR") or "state"))
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with httpx.AsyncClient(timeout=3) as client:
            stats = (await client.get(base + "/stats", headers=headers)).raise_for_status().json()
        out["router"] = {"url": router_url, "ok": True, "uptime_s": stats.get("uptime_s")}
        shared = stats.get("shared_state")
        if shared is not None:  # replicas share the lab's books through Redis
            out["router"].update(shared_state=shared, replicas=stats.get("replicas"))
            if shared != "ok":
                problems.append(f"router: shared state: {shared}")
            if stats.get("policy_problem"):
                warnings.append(f"router: {stats['policy_problem']}")
        if stats.get("open_to_network"):
            warnings.append("the router listens beyond this machine with no clients: in its policy: anyone who "
                            "reaches it may use the lab (homelab client add NAME)")
        routes = {}
        for name, st in stats.get("routes", {}).items():
            routes[name] = {k: st.get(k) for k in ("healthy", "circuit", "in_flight", "max_concurrency", "drained",
                                                   "poisoned", "last_error", "continuation_effective", "tool_calls")}
            if st.get("model_listed") is False:  # a warning: only an answer that the model is missing fails it
                warnings.append(f"route {name}: its engine does not list the model the route names (model_listed: "
                                "false); check the route's model against the engine's /v1/models")
            if st.get("tool_calls") == "text":  # works, but an agent sees text where a call should be
                warnings.append(f"route {name} leaves tool calls as text ({st.get('tool_calls_seen') or 'markup'}): "
                                "set its tool_parser in the policy")
            # an error older than the last good probe is history, not the route's state
            if st.get("healthy") and st.get("probe_ok") and (st.get("last_error_at") or 0) <= (st.get("last_probe_at")
                                                                                               or 0):
                routes[name]["last_error"] = None
            if st.get("poisoned"):
                problems.append(f"route {name} is CUDA-poisoned")
            elif not st.get("healthy"):
                problems.append(f"route {name} is down ({st.get('circuit')}: {(st.get('last_error') or '-')[:80]})")
        out["routes"] = routes
        write_errors = sum(v.get("write_errors", 0) for v in (stats.get("logs") or {}).values())
        if write_errors:
            problems.append(f"router: {write_errors} log lines could not be written (disk?)")
    except (httpx.HTTPError, ValueError) as exc:
        out["router"] = {"url": router_url, "ok": False, "error": f"{type(exc).__name__}: {exc}"}
        out["routes"] = {}
        problems.append(f"router unreachable at {router_url}")

    hosts = {}
    for topic, raw in retained.items():
        parts = topic.split("/")
        if len(parts) == 4 and parts[1] == "netdata" and parts[3] == "availability":
            hosts[parts[2]] = raw.decode()
            if raw != b"online":
                problems.append(f"netdata host {parts[2]} is unavailable")
    out["netdata_hosts"] = hosts
    out["last_camera_event"] = _json(retained.get("homelab/vision_notifier/last_event"))
    snoozed = {}  # camera -> its snooze, while it lasts: a silenced camera is worth a line
    for topic, raw in retained.items():
        parts = topic.split("/")
        if len(parts) == 4 and parts[:2] == ["homelab", "cameras"] and parts[3] == "snooze":
            sn = _json(raw)
            until = sn.get("until") if isinstance(sn, dict) else None
            if isinstance(until, int | float) and sn.get("snoozed") and until > out["checked_at"]:
                snoozed[parts[2]] = sn
    out["snoozed_cameras"] = snoozed
    out["scheduler_next"] = _json(retained.get("homelab/scheduler/next")) or []
    out["code"] = UNKNOWN if not out["broker"]["ok"] else (DOWN if problems else OK)
    if out["code"] == UNKNOWN:
        problems.insert(0, f"cannot tell: the broker at {out['broker']['url']} does not answer")
    return out


def _ago(ts: float | None, now: float) -> str:
    if not ts:
        return ""
    secs = max(0, now - ts)
    span = f"{secs:.0f}s" if secs < 90 else f"{secs / 60:.0f}m" if secs < 5400 else f"{secs / 3600:.1f}h"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) + f" ({span} ago)"


def render(s: dict[str, Any]) -> str:
    now = s["checked_at"]
    verdict = {OK: "OK: all is well", DOWN: "DOWN", UNKNOWN: "UNKNOWN"}[s["code"]]
    lines = [f"homelab status — {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(now))}: {verdict}"]
    w_svc = max((len(n) for n in s["services"]), default=10) + 2  # columns as wide as their longest name
    w_route = max((len(n) for n in s.get("routes") or {}), default=5) + 2
    for p in s["problems"]:
        lines.append(f"  ! {p}")
    for w in s.get("warnings") or ():
        lines.append(f"  ~ {w}")
    b = s["broker"]
    lines += ["", f"broker   {b['url']}  {'ok' if b['ok'] else 'UNREACHABLE: ' + b.get('error', '')}", "",
              "services"]
    for name, row in s["services"].items():
        when = _ago(row.get("since"), now) or (f"(was online since {_ago(row['online_since'], now)})"
                                               if row.get("online_since") else "")
        lines.append(f"  {name:<{w_svc}}{row['status']:<16}{when}")
    r = s["router"]
    lines += ["", f"router   {r['url']}  {'ok' if r['ok'] else 'UNREACHABLE: ' + r.get('error', '')}"]
    if r.get("shared_state") is not None:
        lines.append(f"  {r.get('replicas')} replicas share the lab's books; shared state: "
                     f"{'ok' if r['shared_state'] == 'ok' else 'DEGRADED'}")
    if s["routes"]:
        lines.append(f"  {'route':<{w_route}}{'health':<9}{'circuit':<11}{'load':<8}{'drained':<9}{'poisoned':<10}"
                     f"{'continuation':<14}{'tool calls':<12}last error")
        for name, st in s["routes"].items():
            load = f"{st['in_flight']}/{st['max_concurrency']}"
            lines.append(f"  {name:<{w_route}}{'ok' if st['healthy'] else 'DOWN':<9}{st['circuit'] or '-':<11}"
                         f"{load:<8}{'yes' if st['drained'] else '-':<9}"
                         f"{'YES' if st['poisoned'] else '-':<10}{st.get('continuation_effective') or '-':<14}"
                         f"{st.get('tool_calls') or '-':<12}"
                         f"{(st['last_error'] or '-')[:50]}")
    lines += ["", "netdata hosts  " + (", ".join(f"{h} {a}" for h, a in sorted(s["netdata_hosts"].items()))
                                       or "none reported")]
    ev = s["last_camera_event"]
    if ev:
        push = (f"text push {ev['text_push_ms']:.0f} ms" if ev.get("text_push_ms") is not None
                else f"held ({ev['held']}): timeline only" if ev.get("held")
                else "threat level 0: timeline only" if ev.get("dropped") else "no text push")
        if ev.get("threat_level") is not None and not ev.get("dropped"):
            push += f", threat level {ev['threat_level']}"
        lines += ["", f"last camera event  {ev.get('camera')} {ev.get('label') or ''} {_ago(ev.get('at'), now)}, "
                      f"{push} (trace {ev.get('trace_id')})"]
    else:
        lines += ["", "last camera event  none yet"]
    for camera, sn in sorted((s.get("snoozed_cameras") or {}).items()):
        until = time.strftime("%a %H:%M", time.localtime(float(sn["until"])))
        lines.append(f"snoozed camera     {camera} until {until} (by {sn.get('by') or '?'}): no pushes, timeline only")
    if s["scheduler_next"]:
        lines += ["", "scheduler next runs"]
        w_job = max(len(str(j["job"])) for j in s["scheduler_next"]) + 2
        lines += [f"  {j['job']:<{w_job}}{j['next_at'] or 'done'}" for j in s["scheduler_next"]]
    return "\n".join(lines)


def run(settings: Settings, router_url: str, as_json: bool, listen: float = LISTEN) -> int:
    s = asyncio.run(collect(settings, router_url, listen))
    print(json.dumps(s, indent=2) if as_json else render(s))
    return int(s["code"])
