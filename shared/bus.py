"""The MQTT bus every service shares (aiomqtt on paho).

One connection per service with: a retained ``homelab/<service>/status`` (``online``, LWT
``offline``); QoS 1; a persistent session (a client id of its own per instance: service, host and the
instance's slot in its state directory, clean_session off) so the broker keeps messages for a service
while it restarts; reconnect in one place with capped, jittered backoff, restoring subscriptions; an
outbox, so a publish made while the broker is away is sent when it is back.

Work topics (``shared``) are, with ``split``, subscribed as MQTT shared subscriptions
(``$share/homelab-<service>/…``, Mosquitto 2.0): instances of one service split them, each message
handled by one. State topics (``subscribe``) reach every instance.

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
import socket
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import aiomqtt
import orjson
from pydantic import BaseModel

from shared.instance import InstanceSlot, host
from shared.settings import parse_mqtt_url
from shared.topics import HA_STATUS, status

log = logging.getLogger("homelab.bus")

RECONNECT_CAP = 10.0
# paho leaves Nagle on: small QoS 1 messages would wait for delayed ACKs (~40 ms a hop)
NODELAY = ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)
SEND_WINDOW = 100  # QoS 1 messages in flight at once
ECHO_MEMORY = 20_000  # echoes remembered per bus
CONFIRM_GRACE = 0.5  # seconds after a reconnect to collect echoes before resending


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    payload: bytes
    retain: bool = False


_DEATH = Message("", b"")  # put in the inbox when the connection task died


@dataclass(slots=True)
class _Outgoing:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    done: asyncio.Future[None]
    attempted: bool = False  # sent at least once: the broker may have it although no PUBACK came


def _encode(payload: bytes | str | BaseModel) -> bytes:
    if isinstance(payload, BaseModel):
        return payload.model_dump_json(exclude_none=True).encode()
    if isinstance(payload, str):
        return payload.encode()
    return payload


MAX_TOPIC_BYTES = 65_535


class BusDied(RuntimeError):
    """The bus's connection task ended with an error: the service must stop (and be restarted), not
    go on looking alive while nothing moves."""


def check_topic(topic: str) -> None:
    """A topic a broker accepts for a publish, or a ValueError that says why not."""
    size = len(topic.encode("utf-8"))
    if not topic or size > MAX_TOPIC_BYTES:
        raise ValueError(f"MQTT topic of {size} bytes (1 to {MAX_TOPIC_BYTES} allowed): {topic[:80]!r}")
    if "+" in topic or "#" in topic or "\x00" in topic:
        raise ValueError(f"MQTT topic with a wildcard or NUL cannot be published to: {topic[:80]!r}")


def payload_bytes(p: object) -> bytes:
    """An MQTT payload as bytes, whatever type aiomqtt gives it."""
    if isinstance(p, bytes | bytearray):
        return bytes(p)
    return b"" if p is None else str(p).encode()


def _since(state: str) -> bytes:
    """``homelab/<service>/status/since``: when the status last changed (``homelab status`` shows it; a
    crash's LWT ``offline`` cannot carry a time, so then only the last ``online`` time is known)."""
    return orjson.dumps({"state": state, "since": round(time.time(), 3)})


class Bus:
    def __init__(self, url: str, service: str, *, subscribe: list[str] | tuple[str, ...] = (),
                 shared: list[str] | tuple[str, ...] = (), split: bool = False, state_dir: Path | None = None,
                 persistent: bool = True, client_id: str | None = None,
                 on_connect: Callable[[Bus], Coroutine[Any, Any, None]] | None = None,
                 confirm: tuple[str, ...] = (), outbox_limit: int | None = None,
                 on_ha_online: Callable[[Bus], Coroutine[Any, Any, None]] | None = None) -> None:
        self.target = parse_mqtt_url(url)
        # Topics whose messages we read back (our own publications echoed by the broker): after a
        # lost connection, an unacked message whose echo arrives is not sent again, so a broker
        # restart does not double it. Costs one extra delivery per message on these topics.
        self.confirm = confirm
        # For state that is re-published anyway: past this many queued messages the oldest go.
        self.outbox_limit = outbox_limit
        self._echoes: collections.OrderedDict[int, None] = collections.OrderedDict()
        self.service = service
        # ``shared``: the service's work; with ``split`` the instances share it out (one gets each message)
        self.subscriptions = list(subscribe) + [f"$share/homelab-{service}/{t}" if split else t for t in shared]
        self.persistent = persistent
        self.client_id = client_id or f"homelab-{service}"
        # the instance's slot in its state directory names its client (held while the bus runs)
        self._slot = InstanceSlot(state_dir, service) if state_dir is not None and client_id is None else None
        self.on_connect = on_connect
        # Home Assistant says ``online`` on homeassistant/status: re-send discovery (after a short
        # random delay, in its own task, so the service's own messages are never held up)
        self.on_ha_online = on_ha_online
        self.connected = asyncio.Event()
        self.connects = 0
        self._outbox: collections.deque[_Outgoing] = collections.deque()
        self._outbox_ready = asyncio.Event()
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._client: aiomqtt.Client | None = None
        self._closing = False
        self._died: BaseException | None = None

    @property
    def status_topic(self) -> str:
        return status(self.service)

    async def __aenter__(self) -> Bus:
        if self._slot is not None:
            self.client_id = f"homelab-{self.service}-{host()}-{self._slot.claim()}"
        self._task = asyncio.create_task(self._run(), name=f"mqtt-{self.service}")
        self._task.add_done_callback(self._ended)
        return self

    def _ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or self._closing:
            return
        exc = task.exception()
        if exc is not None:
            log.critical("%s: the MQTT connection task died: %r; stopping the service", self.service, exc)
            self._died = exc
            self._inbox.put_nowait(_DEATH)

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
                    await client.publish(self.status_topic + "/since", _since("offline"), qos=1, retain=True)
        # aiomqtt may turn the cancellation into an MqttError ("Disconnected during message iteration"):
        # the flag stops the reconnect loop either way
        self._closing = True
        task, self._task = self._task, None
        try:
            if task.done():
                return  # it died (reported through messages()) or was cancelled already
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        finally:
            if self._slot is not None:
                self._slot.release()

    async def publish(self, topic: str, payload: bytes | str | BaseModel, *, qos: int = 1,
                      retain: bool = False, wait: bool = False) -> asyncio.Future[None]:
        """Queue a message; it is sent now or after the next reconnect. ``wait``: until the broker acks.

        Returns the future the broker's acknowledgement resolves. A topic MQTT cannot carry (empty,
        wildcards, over 65,535 bytes) is a ValueError here, never a dead sender later."""
        check_topic(topic)
        item = _Outgoing(topic, _encode(payload), qos, retain, asyncio.get_running_loop().create_future())
        self._outbox.append(item)
        if self.outbox_limit is not None:
            while len(self._outbox) > self.outbox_limit:
                dropped = self._outbox.popleft()
                if not dropped.done.done():
                    dropped.done.set_exception(ConnectionError("dropped from a full outbox"))
                    dropped.done.exception()  # retrieved: nobody waits on state messages
        self._outbox_ready.set()
        if wait:
            await asyncio.shield(item.done)
        return item.done

    async def subscribe(self, topic: str) -> None:
        if topic not in self.subscriptions:
            self.subscriptions.append(topic)
            if self._client is not None and self.connected.is_set():
                await self._client.subscribe(topic, qos=1)

    async def messages(self) -> AsyncIterator[Message]:
        while True:
            msg = await self._inbox.get()
            if msg is _DEATH:
                raise BusDied(f"{self.service}: the MQTT connection task died: {self._died!r}") from self._died
            yield msg

    def take_received(self) -> list[Message]:
        """Messages received (and acked to the broker) but not yet taken: handle them before leaving."""
        out = []
        while not self._inbox.empty():
            msg = self._inbox.get_nowait()
            if msg is not _DEATH:
                out.append(msg)
        return out

    def pending(self) -> int:
        """Messages received but not yet taken by the service, plus messages not yet sent."""
        return self._inbox.qsize() + len(self._outbox)

    async def _run(self) -> None:
        t = self.target
        delay = 0.2
        while not self._closing:
            will = aiomqtt.Will(self.status_topic, b"offline", qos=1, retain=True)
            try:
                async with aiomqtt.Client(
                    t.host, t.port, username=t.username, password=t.password, identifier=self.client_id,
                    clean_session=not self.persistent, will=will, keepalive=30, timeout=5,
                    socket_options=NODELAY,
                ) as client:
                    self._client = client
                    client.pending_calls_threshold = SEND_WINDOW + 10  # our own window, not a leak
                    ha = (HA_STATUS,) if self.on_ha_online is not None else ()
                    for topic in (*self.subscriptions, *self.confirm, *ha):
                        await client.subscribe(topic, qos=1)
                    await client.publish(self.status_topic, b"online", qos=1, retain=True)
                    self.connects += 1
                    if self.connects > 1:
                        log.warning("%s: MQTT reconnected to %r", self.service, t)
                    self.connected.set()
                    await self.publish(self.status_topic + "/since", _since("online"), retain=True)
                    delay = 0.2
                    try:
                        await self._serve(client)
                    except* aiomqtt.MqttError:
                        raise
                    except* Exception:
                        # a bug, not the network: say offline (the LWT only fires on a lost connection),
                        # then let the task die so that the service stops
                        with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
                            async with asyncio.timeout(1):
                                await client.publish(self.status_topic, b"offline", qos=1, retain=True)
                        raise
            except* aiomqtt.MqttError as eg:
                exc = eg.exceptions[0]
                # A reconnect is a warning, not an error.
                log.warning("%s: MQTT connection to %r lost or refused (%s); retrying in %.1fs",
                            self.service, t, exc, delay)
            finally:
                self._client = None
                self.connected.clear()
            if self._closing:
                return
            await asyncio.sleep(delay * random.uniform(0.5, 1.0) + 0.05)
            delay = min(delay * 2, RECONNECT_CAP)

    async def _serve(self, client: aiomqtt.Client) -> None:
        """One connection's life: the sender, the on-connect hook, and the messages in."""
        async with asyncio.TaskGroup() as tg:
                tg.create_task(self._sender(client), name=f"mqtt-send-{self.service}")
                if self.on_connect is not None:
                    tg.create_task(self.on_connect(self), name=f"mqtt-on-connect-{self.service}")
                async for m in client.messages:
                    topic, payload = str(m.topic), payload_bytes(m.payload)
                    if topic == HA_STATUS and self.on_ha_online is not None:
                        if payload == b"online":
                            tg.create_task(self._ha_online(), name=f"mqtt-ha-online-{self.service}")
                        continue
                    if topic in self.confirm:
                        self._echoes[hash((topic, payload))] = None
                        if len(self._echoes) > ECHO_MEMORY:
                            self._echoes.popitem(last=False)
                        if topic not in self.subscriptions:
                            continue
                    self._inbox.put_nowait(Message(topic, payload, bool(m.retain)))

    async def _ha_online(self) -> None:
        assert self.on_ha_online is not None
        await asyncio.sleep(random.uniform(0.5, 2.0))  # HA asks every integration at once: spread out
        try:
            await self.on_ha_online(self)
        except Exception:  # a failed re-announce must not drop the connection
            log.exception("%s: re-announcing to Home Assistant failed", self.service)

    async def _sender(self, client: aiomqtt.Client) -> None:
        """Send the outbox in order, up to SEND_WINDOW messages awaiting their PUBACK at once.

        A message leaves the outbox only once the broker acked it; after a lost connection the
        unacked ones go again (QoS 1 is at least once: consumers dedup by event id).
        """
        if self.confirm and any(m.attempted for m in self._outbox):
            # let the broker deliver what it queued for our session (echoes included) first
            await asyncio.sleep(CONFIRM_GRACE)
            confirmed = [m for m in self._outbox if m.attempted and hash((m.topic, m.payload)) in self._echoes]
            for item in confirmed:
                self._outbox.remove(item)
                if not item.done.done():
                    item.done.set_result(None)
            if confirmed:
                log.warning("%s: %d unacked messages were delivered before the connection dropped; not resent",
                            self.service, len(confirmed))
        while True:
            if not self._outbox:
                self._outbox_ready.clear()
                await self._outbox_ready.wait()
                continue
            batch = [self._outbox[i] for i in range(min(SEND_WINDOW, len(self._outbox)))]
            for m in batch:
                m.attempted = True
            results = await asyncio.gather(
                *(client.publish(m.topic, m.payload, qos=m.qos, retain=m.retain) for m in batch),
                return_exceptions=True)
            failed: BaseException | None = None
            for item, result in zip(batch, results, strict=True):
                if isinstance(result, BaseException):
                    failed = failed or result
                    continue
                self._outbox.remove(item)
                if not item.done.done():
                    item.done.set_result(None)
            if failed is not None:
                raise failed
