"""Prometheus metrics for the router (one registry per app, so tests can run several)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from services.router.state import RouteState
from shared.jsonl import JsonlWriter

if TYPE_CHECKING:
    from services.router.lab import LabState

_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class _RouteCollector(Collector):
    """Reads route state at scrape time: no per-request cost for gauges."""

    def __init__(self, source: Callable[[], Iterable[tuple[RouteState, int]]]) -> None:
        self._source = source

    def collect(self) -> Iterable[Metric]:
        in_flight = GaugeMetricFamily("homelab_router_in_flight", "Requests in flight", labels=["route"])
        cap = GaugeMetricFamily("homelab_router_max_concurrency", "Route cap", labels=["route"])
        healthy = GaugeMetricFamily("homelab_router_route_healthy", "1 if the route takes traffic",
                                    labels=["route"])
        circuit = GaugeMetricFamily("homelab_router_circuit_open", "1 if the circuit is open",
                                    labels=["route"])
        drained = GaugeMetricFamily("homelab_router_route_drained", "1 if drained", labels=["route"])
        poisoned = GaugeMetricFamily("homelab_router_route_poisoned", "1 if CUDA-poisoned", labels=["route"])
        for st, max_c in self._source():
            in_flight.add_metric([st.name], st.in_flight)
            cap.add_metric([st.name], max_c)
            healthy.add_metric([st.name], float(st.healthy and not st.poisoned and st.circuit != "open"))
            circuit.add_metric([st.name], float(st.circuit == "open"))
            drained.add_metric([st.name], float(st.drained))
            poisoned.add_metric([st.name], float(st.poisoned))
        yield from (in_flight, cap, healthy, circuit, drained, poisoned)


class _LogCollector(Collector):
    """Write errors and rotations of the JSONL logs, read from the writers at scrape time."""

    def __init__(self, source: Callable[[], Iterable[JsonlWriter]]) -> None:
        self._source = source

    def collect(self) -> Iterable[Metric]:
        errors = CounterMetricFamily("homelab_log_write_errors", "Log lines that could not be written",
                                     labels=["log"])
        rotations = CounterMetricFamily("homelab_log_rotations", "Log files rotated", labels=["log"])
        for w in self._source():
            errors.add_metric([w.path.name], w.errors)
            rotations.add_metric([w.path.name], w.rotations)
        yield from (errors, rotations)


class _LabCollector(Collector):
    """This replica's link to the lab's shared books (when replicas share state)."""

    def __init__(self, source: Callable[[], LabState | None]) -> None:
        self._source = source

    def collect(self) -> Iterable[Metric]:
        lab = self._source()
        if lab is None:
            return
        ok = GaugeMetricFamily("homelab_router_shared_state", "1 while the lab's shared books (Redis) answer; 0: "
                               "this replica serves alone with its share of each cap", labels=["replica"])
        ok.add_metric([lab.id], float(lab.ok))
        replicas = GaugeMetricFamily("homelab_router_replicas", "Router replicas and workers sharing the lab's "
                                     "books, as last seen", labels=["replica"])
        replicas.add_metric([lab.id], lab.replicas)
        yield from (ok, replicas)


class Metrics:
    def __init__(self, routes: Callable[[], Iterable[tuple[RouteState, int]]],
                 logs: Callable[[], Iterable[JsonlWriter]] = tuple,
                 lab: Callable[[], LabState | None] = lambda: None) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("homelab_router_requests", "Requests answered",
                                ["route", "bucket", "reason", "status"], registry=r)
        self.latency = Histogram("homelab_router_request_seconds", "Total request time",
                                 ["route"], buckets=_BUCKETS, registry=r)
        self.upstream = Histogram("homelab_router_upstream_seconds", "Time waiting on upstreams",
                                  ["route"], buckets=_BUCKETS, registry=r)
        self.overhead = Histogram("homelab_router_overhead_seconds", "Router time outside upstream waits",
                                  buckets=_BUCKETS, registry=r)
        self.ttft = Histogram("homelab_router_ttft_seconds", "Time to the first streamed content",
                              ["route"], buckets=_BUCKETS, registry=r)
        self.spills = Counter("homelab_router_spills", "Requests spilled at a cap or busy upstream",
                              ["from_route", "to_route"], registry=r)
        self.failovers = Counter("homelab_router_failovers", "Requests moved after a failure",
                                 ["from_route", "to_route", "cause"], registry=r)
        self.upstream_errors = Counter("homelab_router_upstream_errors", "Upstream failures",
                                       ["route", "kind"], registry=r)
        self.internal_errors = Counter("homelab_router_internal_errors", "Unexpected exceptions caught",
                                       ["where"], registry=r)
        self.tool_parse_errors = Counter("homelab_router_tool_parse_errors", "Answers whose tool-call markup did "
                                         "not parse (sent as the engine wrote them)", ["route", "format"],
                                         registry=self.registry)
        self.tool_calls_parsed = Counter("homelab_router_tool_calls_parsed", "Tool calls turned from an engine's "
                                         "markup into tool_calls", ["route", "format"], registry=self.registry)
        self.tool_schema_mismatches = Counter("homelab_router_tool_schema_mismatches", "Parsed tool calls whose "
                                              "arguments do not match the tool's schema (sent all the same)",
                                              ["route", "tool"], registry=self.registry)
        self.client_requests = Counter("homelab_client_requests", "Requests per client and route",
                                       ["client", "route"], registry=self.registry)
        self.client_tokens = Counter("homelab_client_tokens", "Tokens per client, route and kind (prompt, completion)",
                                     ["client", "route", "kind"], registry=self.registry)
        self.client_gpu_seconds = Counter("homelab_client_gpu_seconds", "Seconds the route's GPU worked for a client",
                                          ["client", "route"], registry=self.registry)
        self.client_energy = Counter("homelab_client_energy_wh", "Energy a client used on a route (Wh, from the "
                                     "route's watts)", ["client", "route"], registry=self.registry)
        self.shadow = Counter("homelab_router_shadow_decisions", "Live requests also decided by the shadow policy",
                              ["live_route", "candidate_route"], registry=r)
        self._live: tuple[Collector, ...] = (_RouteCollector(routes), _LogCollector(logs), _LabCollector(lab))
        for collector in self._live:
            r.register(collector)

    def exposition(self) -> tuple[bytes, str]:
        """``/metrics``. Under ``--workers`` (Prometheus's multiprocess mode) the counters are every
        worker's, summed; the gauges read at scrape time are this worker's view."""
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        for collector in self._live:
            registry.register(collector)
        return generate_latest(registry), CONTENT_TYPE_LATEST

    def snapshot(self) -> dict[str, Any]:
        """The counters as plain JSON for /stats."""
        out: dict[str, Any] = {}
        for metric in self.registry.collect():
            rows = []
            for s in metric.samples:
                if s.name.endswith(("_created", "_bucket")):
                    continue
                rows.append({"name": s.name, "labels": s.labels, "value": s.value})
            out[metric.name] = rows
        return out
