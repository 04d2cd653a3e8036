"""The MQTT bus every service shares (aiomqtt on paho).

One connection per service with: a retained ``homelab/<service>/status`` (``online``, LWT
``offline``); QoS 1; a persistent session (fixed client id, clean_session off) so the broker keeps
messages for a service while it restarts; reconnect in one place with capped, jittered backoff,
restoring subscriptions; an outbox, so a publish made while the broker is away is sent when it is back.

    async with Bus(settings.mqtt_url, "dedup", subscribe=[RAW]) as bus:
        async for msg in bus.messages():
            ...
            await bus.publish(UNIQUE, event)
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import aiomqtt
from pydantic import BaseModel

from shared.settings import parse_mqtt_url
from shared.topics import status

log = logging.getLogger("homelab.bus")

RECONNECT_CAP = 10.0


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    payload: bytes
    retain: bool = False


@dataclass(slots=True)
class _Outgoing:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    done: asyncio.Future[None]


def _encode(payload: bytes | str | BaseModel) -> bytes:
    if isinstance(payload, BaseModel):
        return payload.model_dump_json(exclude_none=True).encode()
    if isinstance(payload, str):
        return payload.encode()
    return payload


def _payload_bytes(p: object) -> bytes:
    if isinstance(p, bytes | bytearray):
        return bytes(p)
    return b"" if p is None else str(p).encode()


class Bus:
    def __init__(self, url: str, service: str, *, subscribe: list[str] | tuple[str, ...] = (),
                 persistent: bool = True, client_id: str | None = None,
                 on_connect: Callable[[Bus], Coroutine[Any, Any, None]] | None = None) -> None:
        self.target = parse_mqtt_url(url)
        self.service = service
        self.subscriptions = list(subscribe)
        self.persistent = persistent
        self.client_id = client_id or f"homelab-{service}"
        self.on_connect = on_connect
        self.connected = asyncio.Event()
        self.connects = 0
        self._outbox: collections.deque[_Outgoing] = collections.deque()
        self._outbox_ready = asyncio.Event()
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._client: aiomqtt.Client | None = None

    @property
    def status_topic(self) -> str:
        return status(self.service)

    async def __aenter__(self) -> Bus:
        self._task = asyncio.create_task(self._run(), name=f"mqtt-{self.service}")
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def close(self, drain: float = 2.0) -> None:
        """Send what is queued (bounded), say ``offline`` and disconnect."""
        if self._task is None:
            return
        if self._outbox and self.connected.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(drain):
                    while self._outbox and self.connected.is_set():  # noqa: ASYNC110 - bounded drain
                        await asyncio.sleep(0.01)
        client = self._client
        if client is not None and self.connected.is_set():
            with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                async with asyncio.timeout(1):
                    await client.publish(self.status_topic, b"offline", qos=1, retain=True)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def publish(self, topic: str, payload: bytes | str | BaseModel, *, qos: int = 1,
                      retain: bool = False, wait: bool = False) -> None:
        """Queue a message; it is sent now or after the next reconnect. ``wait``: until the broker acks."""
        item = _Outgoing(topic, _encode(payload), qos, retain, asyncio.get_running_loop().create_future())
        self._outbox.append(item)
        self._outbox_ready.set()
        if wait:
            await asyncio.shield(item.done)

    async def subscribe(self, topic: str) -> None:
        if topic not in self.subscriptions:
            self.subscriptions.append(topic)
            if self._client is not None and self.connected.is_set():
                await self._client.subscribe(topic, qos=1)

    async def messages(self) -> AsyncIterator[Message]:
        while True:
            yield await self._inbox.get()

    def take_received(self) -> list[Message]:
        """Messages received (and acked to the broker) but not yet taken: handle them before leaving."""
        out = []
        while not self._inbox.empty():
            out.append(self._inbox.get_nowait())
        return out

    def pending(self) -> int:
        """Messages received but not yet taken by the service, plus messages not yet sent."""
        return self._inbox.qsize() + len(self._outbox)

    async def _run(self) -> None:
        t = self.target
        delay = 0.2
        while True:
            will = aiomqtt.Will(self.status_topic, b"offline", qos=1, retain=True)
            try:
                async with aiomqtt.Client(
                    t.host, t.port, username=t.username, password=t.password, identifier=self.client_id,
                    clean_session=not self.persistent, will=will, keepalive=30, timeout=5,
                ) as client:
                    self._client = client
                    for topic in self.subscriptions:
                        await client.subscribe(topic, qos=1)
                    await client.publish(self.status_topic, b"online", qos=1, retain=True)
                    self.connects += 1
                    if self.connects > 1:
                        log.warning("%s: MQTT reconnected to %r", self.service, t)
                    self.connected.set()
                    delay = 0.2
                    async with asyncio.TaskGroup() as tg:
                        tg.create_task(self._sender(client), name=f"mqtt-send-{self.service}")
                        if self.on_connect is not None:
                            tg.create_task(self.on_connect(self), name=f"mqtt-on-connect-{self.service}")
                        async for m in client.messages:
                            self._inbox.put_nowait(Message(str(m.topic), _payload_bytes(m.payload), bool(m.retain)))
            except* aiomqtt.MqttError as eg:
                exc = eg.exceptions[0]
                # A reconnect is a warning, not an error.
                log.warning("%s: MQTT connection to %r lost or refused (%s); retrying in %.1fs",
                            self.service, t, exc, delay)
            finally:
                self._client = None
                self.connected.clear()
            await asyncio.sleep(delay * random.uniform(0.5, 1.0) + 0.05)
            delay = min(delay * 2, RECONNECT_CAP)

    async def _sender(self, client: aiomqtt.Client) -> None:
        while True:
            if not self._outbox:
                self._outbox_ready.clear()
                await self._outbox_ready.wait()
                continue
            item = self._outbox[0]
            # raises MqttError on a lost connection: the item stays first in the outbox
            await client.publish(item.topic, item.payload, qos=item.qos, retain=item.retain)
            self._outbox.popleft()
            if not item.done.done():
                item.done.set_result(None)
