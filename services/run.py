"""``homelab run <service>``: one MQTT service in the foreground."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Coroutine
from typing import Any, cast

from shared.service import run_service, setup_logging
from shared.settings import Settings, SettingsError, load_settings

# service name → module whose ``main(settings)`` runs it
SERVICES = {
    "frigate_consumer": "services.frigate_consumer.main",
    "ring_listener": "services.ring_listener.main",
    "dedup": "services.dedup.main",
    "vision_notifier": "services.vision_notifier.main",
    "netdata_bridge": "services.netdata_bridge.main",
    "watchdog": "services.watchdog.main",
    "scheduler": "services.scheduler.main",
}


def service_main(name: str) -> Callable[[Settings], Coroutine[Any, Any, None]]:
    module = importlib.import_module(SERVICES[name])
    return cast(Callable[[Settings], Coroutine[Any, Any, None]], module.main)


def run(name: str, log_level: str = "INFO") -> int:
    if name not in SERVICES:
        print(f"homelab run: unknown service '{name}'; services: {', '.join(SERVICES)}", file=sys.stderr)
        return 2
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"homelab run {name}: {exc}", file=sys.stderr)
        return 2
    setup_logging(log_level)
    return run_service(service_main(name), settings)
