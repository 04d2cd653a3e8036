"""``homelab run <service>``: one MQTT service in the foreground."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, cast

from shared import topics
from shared.service import run_service, setup_logging
from shared.settings import Settings, SettingsError, load_settings


@dataclass(frozen=True)
class ServiceInfo:
    """One MQTT service: where its main lives, what it does, and the topics it reads and writes (the
    same table ``homelab run --help``, ``homelab check-config`` and the ACL check use)."""

    module: str
    summary: str
    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()


_HA = ("homeassistant/config", "homeassistant/status")
# service name → what it is
SERVICE_TABLE: dict[str, ServiceInfo] = {
    "frigate_consumer": ServiceInfo("services.frigate_consumer.main", "Frigate events/reviews → camera events",
                                    reads=("frigate/events", "frigate/reviews", "frigate/available",
                                           topics.HA_STATUS),
                                    writes=(topics.RAW, "homeassistant/binary_sensor/frigate/config")),
    "ring_listener": ServiceInfo("services.ring_listener.main", "Ring push, ring-mqtt and polled dings → camera events",
                                 reads=("ring/loc/camera/dev/ding/state",), writes=(topics.RAW,)),
    "dedup": ServiceInfo("services.dedup.main", "three triggers → one event (identity + window)",
                         reads=(topics.RAW, topics.UNIQUE), writes=(topics.UNIQUE,)),
    "vision_notifier": ServiceInfo("services.vision_notifier.main",
                                   "snapshot → triage → text push, rich push, timeline",
                                   reads=(topics.UNIQUE, "ring/loc/camera/dev/snapshot/image", topics.HA_STATUS),
                                   writes=(topics.TRIAGE, topics.NOTIFY_TEXT, topics.NOTIFY_RICH, topics.TIMELINE,
                                           "homeassistant/event/cam/config")),
    "netdata_bridge": ServiceInfo("services.netdata_bridge.main", "Netdata parent → per-host sensors in HA",
                                  reads=(topics.HA_STATUS,),
                                  writes=("homelab/netdata/host/state", "homeassistant/sensor/host/config")),
    "watchdog": ServiceInfo("services.watchdog.main", "probes routes, restarts what is dead, CUDA recovery",
                            writes=("homelab/watchdog/events", "homelab/alert")),
    "scheduler": ServiceInfo("services.scheduler.main", "scheduled checks (Hermes-style schedules)",
                             reads=(topics.NOTIFY_TEXT, topics.TIMELINE),
                             writes=("homelab/alert", "frigate/events")),
}
SERVICES = {name: info.module for name, info in SERVICE_TABLE.items()}


def services_help() -> str:
    return "; ".join(f"{name} ({info.summary})" for name, info in SERVICE_TABLE.items())


def service_main(name: str) -> Callable[[Settings], Coroutine[Any, Any, None]]:
    module = importlib.import_module(SERVICES[name])
    return cast(Callable[[Settings], Coroutine[Any, Any, None]], module.main)


def run(name: str, log_level: str = "INFO", log_format: str | None = None) -> int:
    if name not in SERVICES:
        print(f"homelab run: unknown service '{name}'; services: {', '.join(SERVICES)}", file=sys.stderr)
        return 2
    from services.check_config import check_all

    problems = check_all()
    if problems:
        print(f"homelab run {name}: the configuration has errors (homelab check-config):", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        return 2
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"homelab run {name}: {exc}", file=sys.stderr)
        return 2
    try:
        setup_logging(log_level, log_format)
    except ValueError as exc:
        print(f"homelab run {name}: {exc}", file=sys.stderr)
        return 2
    return run_service(service_main(name), settings)
