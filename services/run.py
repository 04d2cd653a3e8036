"""``homelab run <service>``: one MQTT service in the foreground."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Coroutine
from typing import Any, cast

from services.check_config import check_all
from services.table import SERVICE_TABLE
from shared.service import run_service, setup_logging
from shared.settings import Settings, SettingsError, load_settings

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
