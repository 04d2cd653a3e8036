"""Helpers for tests against a real broker: collectors, publishers, services run as tasks."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import aiomqtt
import orjson

from shared import topics
from shared.settings import Settings, parse_mqtt_url
from tests.broker import Broker
from tests.harness import BackgroundLoop

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def load_jsonc(path: Path) -> Any:
    """Strip // comments (outside strings) and parse."""
    out, in_str, esc, i, text = [], False, False, 0, path.read_text()
    while i < len(text):
        ch = text[i]
        if in_str:
            out.append(ch)
            esc = ch == "\\" and not esc
            if ch == '"' and not esc:
                in_str = False
        elif ch == '"':
            in_str = True
            out.append(ch)
        elif text.startswith("//", i):
            while i < len(text) and text[i] != "\n":
                i += 1
            continue
        else:
            out.append(ch)
        i += 1
    return orjson.loads(re.sub(r",(\s*[}\]])", r"\1", "".join(out)))


class Collector:
    """Subscribes (clean session) and keeps every message, for assertions."""

    _n = 0

    def __init__(self, bg: BackgroundLoop, url: str, *topics: str) -> None:
        Collector._n += 1
        self.client_id = f"test-collector-{Collector._n}-{id(self)}"
        self.bg = bg
        self.target = parse_mqtt_url(url)
        self.topics = topics
        self.messages: list[tuple[str, bytes, bool]] = []
        self.arrived: list[float] = []  # time.time() each message arrived, in the same order
        self._ready = asyncio.Event()
        self._task = bg.submit(self._run())
        bg.run(self._wait_ready())

    async def _wait_ready(self) -> None:
        await asyncio.wait_for(self._ready.wait(), 10)

    async def _run(self) -> None:
        t = self.target
        while True:
            try:
                # a persistent session: the broker keeps what it publishes while we reconnect
                async with aiomqtt.Client(t.host, t.port, username=t.username, password=t.password,
                                          identifier=self.client_id, clean_session=False) as c:
                    for topic in self.topics:
                        await c.subscribe(topic, qos=1)
                    self._ready.set()
                    async for m in c.messages:
                        p = m.payload
                        self.arrived.append(time.time())
                        self.messages.append((str(m.topic), bytes(p) if isinstance(p, bytes | bytearray)
                                              else str(p).encode(), bool(m.retain)))
            except aiomqtt.MqttError:
                await asyncio.sleep(0.1)

    def on(self, topic: str) -> list[bytes]:
        return [p for t, p, _ in self.messages if t == topic]

    def json_on(self, topic: str) -> list[dict[str, Any]]:
        return [orjson.loads(p) for p in self.on(topic)]

    def wait(self, pred: Callable[[], bool], timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred():
                return True
            time.sleep(0.02)
        return pred()

    def close(self) -> None:
        self._task.cancel()


def publish(bg: BackgroundLoop, url: str, items: list[tuple[str, bytes | str]], retain: bool = False) -> None:
    async def go() -> None:
        t = parse_mqtt_url(url)
        async with aiomqtt.Client(t.host, t.port, username=t.username, password=t.password) as c:
            for topic, payload in items:
                await c.publish(topic, payload, qos=1, retain=retain)

    bg.run(go())


class Service:
    """A service's main running as a task in the background loop; stop() is a graceful SIGTERM."""

    def __init__(self, bg: BackgroundLoop, main: Callable[[Settings], Coroutine[Any, Any, None]],
                 settings: Settings) -> None:
        self.bg, self.main, self.settings = bg, main, settings
        self.task: asyncio.Task[None] | None = None
        self.start()

    def start(self) -> None:
        async def create() -> asyncio.Task[None]:
            return asyncio.create_task(self.main(self.settings))

        self.task = self.bg.run(create())

    def stop(self) -> None:
        task = self.task

        async def cancel() -> None:
            assert task is not None
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        self.bg.run(cancel())
        self.task = None

    def alive(self) -> bool:
        return self.task is not None and not self.task.done()


def wait_online(bg: BackgroundLoop, broker: Broker, service: str = "vision_notifier") -> None:
    """Until the service says ``online`` on its status topic."""
    c = Collector(bg, broker.url(), topics.status(service))
    try:
        assert c.wait(lambda: c.on(topics.status(service))[-1:] == [b"online"])
    finally:
        c.close()
