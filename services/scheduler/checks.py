"""Built-in script-only checks. Each returns the alert text; an empty string is a silent tick."""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import orjson
from prometheus_client.parser import text_string_to_metric_families

from router_client.admin import AdminClient, AdminRefused
from router_client.client import CallFailed
from shared import admin_token, topics
from shared.bus import Bus
from shared.jsonl import iter_jsonl
from shared.settings import Settings

Check = Callable[[Settings, httpx.AsyncClient, dict[str, Any]], Awaitable[str]]


def _router_base(settings: Settings) -> str:
    return settings.router_url.rstrip("/").removesuffix("/v1")


async def upstream_health(settings: Settings, client: httpx.AsyncClient, opts: dict[str, Any]) -> str:
    # /stats carries the same per-route state as /admin/upstreams: with the lab's admin token the errors
    # keep their addresses, without one it still answers (counts, no names)
    given = settings.admin_token.get_secret_value() if settings.admin_token else None
    router = AdminClient(_router_base(settings), admin_token.resolve(settings.state_dir, given), client, timeout=10)
    try:
        stats = await router.stats()
    except AdminRefused as exc:
        return f"router /stats answered HTTP {exc.status}"
    except CallFailed:
        return f"router unreachable at {_router_base(settings)}"
    bad = []
    for name, st in stats["routes"].items():
        if not st["healthy"] or st["drained"]:
            what = ("drained" if st["drained"] else "poisoned" if st["poisoned"] else
                    f"circuit {st['circuit']}" if st["circuit"] != "closed" else "failing probes")
            bad.append(f"{name}: {what}" + (f" ({st['last_error']})" if st.get("last_error") else ""))
    return "upstreams not healthy:\n" + "\n".join(bad) if bad else ""


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus' histogram_quantile over cumulative (le, count) buckets."""
    buckets = sorted(buckets)
    total = buckets[-1][1] if buckets else 0.0
    if total <= 0:
        return 0.0
    rank = q * total
    prev_le, prev_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * ((rank - prev_count) / max(count - prev_count, 1e-12))
        prev_le, prev_count = le, count
    return prev_le


async def router_p95(settings: Settings, client: httpx.AsyncClient, opts: dict[str, Any]) -> str:
    threshold = float(opts.get("threshold_s", 4.0))
    try:
        text = (await client.get(f"{_router_base(settings)}/metrics", timeout=10)).text
    except httpx.HTTPError as exc:
        return f"router metrics unreachable: {type(exc).__name__}"
    per_route: dict[str, dict[float, float]] = {}
    for fam in text_string_to_metric_families(text):
        if fam.name != "homelab_router_request_seconds":
            continue
        for s in fam.samples:
            if s.name.endswith("_bucket"):
                per_route.setdefault(s.labels["route"], {})[float(s.labels["le"])] = s.value
    slow = []
    for route, b in sorted(per_route.items()):
        p95 = histogram_quantile(0.95, list(b.items()))
        if p95 > threshold:
            slow.append(f"{route}: p95 {p95:.2f}s > {threshold:g}s")
    return "router latency:\n" + "\n".join(slow) if slow else ""


async def gpu_temperature(settings: Settings, client: httpx.AsyncClient, opts: dict[str, Any]) -> str:
    from services.netdata_bridge.metrics import extract

    threshold = float(opts.get("threshold_c", 85))
    base = (opts.get("netdata_url") or settings.netdata_url or "").rstrip("/")
    if not base:
        return ""
    try:
        info = (await client.get(f"{base}/api/v1/info", timeout=10)).json()
        hot = []
        for h in info.get("mirrored_hosts_status", []):
            if not h.get("reachable", True):
                continue
            path = "/api/v1/allmetrics" if not h.get("hops") else f"/host/{h['hostname']}/api/v1/allmetrics"
            metrics = (await client.get(f"{base}{path}", params={"format": "json"}, timeout=10)).json()
            for key, r in extract(metrics).items():
                if key.endswith("_temperature") and r.value > threshold:
                    hot.append(f"{h['hostname']} {key.removesuffix('_temperature')}: {r.value:g} °C")
    except (httpx.HTTPError, ValueError) as exc:
        return f"netdata unreachable: {type(exc).__name__}"
    return f"GPU temperature over {threshold:g} °C:\n" + "\n".join(hot) if hot else ""


async def weekly_summary(settings: Settings, client: httpx.AsyncClient, opts: dict[str, Any]) -> str:
    days = float(opts.get("days", 7))
    since = time.time() - days * 86400
    every = [r for r in iter_jsonl(settings.log_dir / "router-decisions.jsonl", rotated=True)
             if r.get("ts", 0) >= since]
    rows = [r for r in every if "route" in r]  # routed requests; the others were refused before routing
    refused = Counter(f"{r.get('status')} {r.get('reason')}" for r in every if "route" not in r)
    if not rows and not refused:
        return f"routing summary ({days:g} d): no requests"
    if not rows:
        return f"routing summary ({days:g} d): no routed requests; refused: " + ", ".join(
            f"{k} ×{v}" for k, v in refused.most_common(5))
    by_route = Counter(r["route"] for r in rows)
    by_reason = Counter(r["reason"] for r in rows)
    errors = sum(1 for r in rows if r.get("status", 200) >= 400)
    lat = sorted(r["latency_ms"] for r in rows if "latency_ms" in r)
    p95 = lat[int(len(lat) * 0.95) - 1] if len(lat) >= 20 else (lat[-1] if lat else 0.0)
    moved = sum(1 for r in rows if len(r.get("fallback_path") or []) > 1)
    lines = [f"routing summary ({days:g} d): {len(rows)} requests, {errors} errors "
             f"({100 * errors / len(rows):.1f}%), {moved} moved off their first route",
             f"latency p50 {statistics.median(lat):.0f} ms, p95 {p95:.0f} ms" if lat else "latency: -",
             "by route: " + ", ".join(f"{k} {v}" for k, v in by_route.most_common()),
             "by reason: " + ", ".join(f"{k} {v}" for k, v in by_reason.most_common(8))]
    if refused:
        lines.append(f"refused before routing: {sum(refused.values())} (" + ", ".join(
            f"{k} ×{v}" for k, v in refused.most_common(5)) + ")")
    return "\n".join(lines)


async def camera_e2e(settings: Settings, client: httpx.AsyncClient, opts: dict[str, Any]) -> str:
    """A known sample Frigate event must come out as a text push, a rich push and a timeline record."""
    timeout = float(opts.get("timeout_s", 60))
    prefix = settings.frigate.topic_prefix
    camera = str(opts.get("camera", "homelab_selftest"))
    fid = f"{time.time():.3f}-selftest-{uuid.uuid4().hex[:6]}"
    event_id = f"frigate:{fid}"
    obj = {"id": fid, "camera": camera, "label": "person", "score": 0.9, "top_score": 0.9, "false_positive": False,
           "start_time": time.time(), "end_time": None, "current_zones": [], "entered_zones": []}
    seen: set[str] = set()
    wanted = {topics.NOTIFY_TEXT, topics.NOTIFY_RICH, topics.TIMELINE}
    async with Bus(settings.mqtt_url, "scheduler/selftest", subscribe=sorted(wanted), persistent=False,
                   client_id=f"homelab-selftest-{uuid.uuid4().hex[:8]}") as bus:
        await asyncio.wait_for(bus.connected.wait(), 10)
        await bus.publish(f"{prefix}/events", orjson.dumps({"type": "new", "before": obj, "after": obj}), wait=True)
        try:
            async with asyncio.timeout(timeout):
                async for msg in bus.messages():
                    if orjson.loads(msg.payload).get("event_id") == event_id:
                        seen.add(msg.topic)
                        if seen == wanted:
                            return ""
        except TimeoutError:
            pass
    missing = ", ".join(sorted(wanted - seen))
    return f"camera pipeline self-test: {missing} did not arrive within {timeout:g}s (event {event_id})"


CHECKS: dict[str, Check] = {
    "upstream_health": upstream_health,
    "router_p95": router_p95,
    "gpu_temperature": gpu_temperature,
    "weekly_summary": weekly_summary,
    "camera_e2e": camera_e2e,
}
