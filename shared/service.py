"""What every MQTT service shares at its edge: decoding with a logged, skipped failure; the run loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from shared.jsonl import JsonlWriter
from shared.logs import setup_logging

__all__ = ["Validations", "every", "run_service", "setup_logging", "stop_event"]
from shared.messages import Invalid
from shared.settings import Settings

M = TypeVar("M", bound=BaseModel)
log = logging.getLogger("homelab.service")


class Validations:
    """structured-validation.jsonl for one service: every payload that did not decode, and why."""

    def __init__(self, settings: Settings, source: str) -> None:
        self.source = source
        self.writer = JsonlWriter(settings.log_dir / "structured-validation.jsonl", keep_open=False)
        self.count = 0

    def invalid(self, topic: str, payload: bytes, error: str) -> None:
        self.count += 1
        log.warning("%s: skipped a malformed payload on %s: %s", self.source, topic, error[:200])
        rec = Invalid(source=self.source, topic=topic, error=error[:1000],
                      payload=payload[:500].decode("utf-8", "replace"))
        self.writer.write(rec.model_dump())

    @contextlib.contextmanager
    def guard(self, topic: str, payload: bytes) -> Iterator[None]:
        """Handle one message: whatever it breaks is logged and recorded, and the service goes on."""
        try:
            yield
        except Exception as exc:
            log.exception("%s: a message on %s could not be handled", self.source, topic[:200])
            self.invalid(topic[:1000], payload, f"{type(exc).__name__}: {exc}")

    def decode(self, model: type[M], topic: str, payload: bytes) -> M | None:
        """Decode a payload into ``model``; a bad one is logged and skipped (None), never raised."""
        try:
            return model.model_validate_json(payload)
        except ValidationError as exc:
            e = exc.errors()[0]
            where = ".".join(str(p) for p in e["loc"]) or "payload"
            self.invalid(topic, payload, f"{where}: {e['msg']}")
        except (ValueError, RecursionError) as exc:  # pydantic raises ValueError on bad JSON too
            self.invalid(topic, payload, f"{type(exc).__name__}: {exc}")
        return None


def stop_event() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM (call inside the running loop)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    return stop


async def every(interval: float, job: Callable[[], Coroutine[Any, Any, object]], what: str) -> None:
    """Run ``job`` forever, ``interval`` seconds apart; one failing run is logged, never fatal."""
    while True:
        try:
            await job()
        except Exception:
            log.exception("%s failed", what)
        await asyncio.sleep(interval)


def run_service(main: Callable[[Settings], Coroutine[Any, Any, None]], settings: Settings) -> int:
    """Run a service's main until SIGINT/SIGTERM, then let it shut down cleanly (exit 0). A main that
    fails ends the process with exit 1, so that its supervisor sees it and restarts it: a service
    whose work stopped never stays up looking alive."""

    async def runner() -> None:
        task = asyncio.create_task(main(settings), name=main.__module__)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    try:
        asyncio.run(runner())
    except Exception:
        log.critical("%s stopped on an error; exiting 1 for the supervisor to restart it", main.__module__,
                     exc_info=True)
        return 1
    return 0
