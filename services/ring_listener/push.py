"""ring-doorbell's realtime listener, guarded: one malformed push is logged and skipped, and a dead
push receiver is noticed and the listener restarted (upstream issues #526, #537, #552)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ring_doorbell import Ring, RingEvent, RingEventListener

from services.ring_listener.handlers import PushDing

log = logging.getLogger("homelab.ring_listener")


class GuardedEventListener(RingEventListener):
    """The library's notification handler has no try/except: a push without ``id`` raises ``KeyError``
    and three in a row shut the receiver down. Here every notification is handled on its own."""

    def __init__(self, ring: Ring, credentials: dict[str, Any] | None = None,
                 credentials_updated_callback: Callable[[dict[str, Any]], None] | None = None, *,
                 on_error: Callable[[Any, Exception], None]) -> None:
        super().__init__(ring, credentials, credentials_updated_callback)
        self._on_error = on_error
        self.errors = 0

    def _on_notification(self, notification: Any, persistent_id: str, obj: Any | None = None) -> None:
        try:
            super()._on_notification(notification, persistent_id, obj)
        except Exception as exc:  # one bad push must never reach the receiver's error counter
            self.errors += 1
            self._on_error(notification, exc)

    def receiver_alive(self) -> bool:
        receiver = self._receiver
        return bool(self.started and receiver is not None and receiver.is_started())


def to_push_ding(ev: RingEvent) -> PushDing:
    return PushDing(id=ev.id, doorbot_id=ev.doorbot_id, device_name=ev.device_name, kind=str(ev.kind),
                    now=float(ev.now), is_update=bool(ev.is_update))
