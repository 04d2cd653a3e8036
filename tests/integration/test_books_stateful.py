"""The router's books, proved by a state machine: hypothesis drives the router against the simulated
upstreams with random faults before and after the first byte, clients that leave, retries, drains,
reloads and probes, and after every step checks what a user (or the GPU) would notice:

- no route ever holds more than its cap — as the upstream saw it, and as ``/admin/upstreams`` says;
- when nothing is in flight, every route's ``in_flight`` is back to 0;
- every request has exactly one decision-log line (found by the client's own ``X-Request-Id``);
- a circuit is closed only below the failure threshold.

``TestSharedBooks`` runs the same machine with the books in a real Redis (``shared_state:``): the
lab's slots are the one admission's store, so every invariant holds there too.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from tempfile import TemporaryDirectory

import httpx
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from shared.jsonl import read_jsonl
from tests.harness import ADMIN_TOKEN, BackgroundLoop, Lab
from tests.integration.replicas import RedisServer

ROUTES = ("ubuntu-4090", "ubuntu-6000", "win-5090", "spark")
MODELS = {"homelab/auto": "Refactor this function", "homelab/code": "hi", "homelab/vision": "hi",
          "homelab/chat": "hi", "homelab/reasoning": "hi"}
FAULTS = ("none", "hang", "http_500", "http_502", "http_503", "reset", "cut", "malformed", "stall", "model_missing",
          "engine_dead")
THRESHOLD = 3


class Books(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = TemporaryDirectory()
        self.bg = BackgroundLoop()
        self.lab = self._lab(Path(self.tmp.name))
        policy = self.lab.policy
        policy["health"].update(failure_threshold=THRESHOLD, circuit_cooldown=0.3, probe_interval=60,
                                retry_backoff_min=0.05, retry_backoff_max=0.15)
        caps = {"ubuntu-4090": 2, "ubuntu-6000": 2, "win-5090": 1, "spark": 3}
        for name, cap in caps.items():
            policy["routes"][name]["max_concurrency"] = cap
            policy["routes"][name]["first_token_timeout"] = 1.0
            policy["routes"][name]["stream_idle_timeout"] = 0.5
        self._reload()
        for name in ROUTES:
            self.lab.configure(name, ttft=0.1, per_token=0.02, fault_delay=1.0)
        self.pool = ThreadPoolExecutor(max_workers=8)
        self.pending: list[Future[None]] = []
        self.sent: list[str] = []
        self.lock = threading.Lock()

    # ---- helpers -------------------------------------------------------------------------------

    def _lab(self, tmp: Path) -> Lab:
        return Lab(self.bg, tmp)

    def _admin(self, method: str, path: str) -> httpx.Response:
        return httpx.request(method, self.lab.url + path, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                             timeout=10)

    def _reload(self) -> None:
        self.lab.write_policy(self.lab.policy)
        assert self._admin("POST", "/admin/reload-config").status_code == 200

    def _caps(self) -> dict[str, int]:
        return {n: int(self.lab.policy["routes"][n]["max_concurrency"]) for n in ROUTES}

    def _one(self, model: str, stream: bool, patience: float) -> None:
        rid = uuid.uuid4().hex
        with self.lock:
            self.sent.append(rid)
        body = {"model": model, "messages": [{"role": "user", "content": MODELS[model]}], "stream": stream}
        with contextlib.suppress(httpx.HTTPError):  # a client that gives up and leaves
            httpx.post(self.lab.base_url + "/chat/completions", json=body, timeout=patience,
                       headers={"X-Request-Id": rid})

    def _settle(self) -> None:
        for f in self.pending:
            f.result(30)
        self.pending.clear()

    # ---- rules ---------------------------------------------------------------------------------

    @rule(model=st.sampled_from(sorted(MODELS)), n=st.integers(1, 5), stream=st.booleans(),
          patience=st.sampled_from([0.15, 0.3, 10.0]))
    def send(self, model: str, n: int, stream: bool, patience: float) -> None:
        for _ in range(n):
            self.pending.append(self.pool.submit(self._one, model, stream, patience))
        time.sleep(0.05)

    @rule()
    def settle(self) -> None:
        self._settle()

    @rule(route=st.sampled_from(ROUTES), fault=st.sampled_from(FAULTS),
          count=st.sampled_from([None, 1, 2]), after=st.integers(0, 4))
    def fault(self, route: str, fault: str, count: int | None, after: int) -> None:
        self.lab.configure(route, fault=fault, fault_count=count, fault_after=after)

    @rule(route=st.sampled_from(ROUTES), drained=st.booleans())
    def drain(self, route: str, drained: bool) -> None:
        assert self._admin("POST", f"/admin/{'drain' if drained else 'undrain'}/{route}").status_code == 200

    @rule(route=st.sampled_from(ROUTES), cap=st.integers(1, 3))
    def reload(self, route: str, cap: int) -> None:
        self._settle()  # a new cap applies to new requests: the upstream's peak is measured under one cap
        self.lab.policy["routes"][route]["max_concurrency"] = cap
        self._reload()
        for sim in self.lab.sims.values():
            sim.peak = sim.active

    @rule()
    def probe(self) -> None:
        self.bg.run(self.lab.svc.probe_once())

    @precondition(lambda self: not self.pending)
    @rule()
    def wait_cooldown(self) -> None:
        time.sleep(0.35)

    # ---- what must hold after every step ----------------------------------------------------------

    @invariant()
    def caps_hold(self) -> None:
        caps = self._caps()
        for name in ROUTES:
            assert self.lab.sims[name].peak <= caps[name], f"{name} held {self.lab.sims[name].peak} > {caps[name]}"
        rows = self._admin("GET", "/admin/upstreams").json()["routes"]
        for name, row in rows.items():
            assert 0 <= row["in_flight"] <= caps[name], (name, row)

    @invariant()
    def circuits_agree_with_failures(self) -> None:
        for name, row in self._admin("GET", "/admin/upstreams").json()["routes"].items():
            if row["circuit"] == "closed":
                assert row["consecutive_failures"] < THRESHOLD, (name, row)

    @invariant()
    def idle_books_balance(self) -> None:
        if any(not f.done() for f in self.pending):
            return
        deadline = time.monotonic() + 3.0
        while True:
            rows = self._admin("GET", "/admin/upstreams").json()["routes"]
            busy = {n: r["in_flight"] for n, r in rows.items() if r["in_flight"]}
            if not busy:
                break
            assert time.monotonic() < deadline, f"slots still held with nothing in flight: {busy}"
            time.sleep(0.05)
        path = self.lab.log_dir / "router-decisions.jsonl"
        logged: dict[str, int] = {}
        for line in read_jsonl(path) if path.exists() else []:
            logged[line["request_id"]] = logged.get(line["request_id"], 0) + 1
        missing = [rid for rid in self.sent if rid not in logged]
        if missing:  # a client that left is written when its request is torn down: give it a moment
            time.sleep(0.5)
            logged = {}
            for line in read_jsonl(path):
                logged[line["request_id"]] = logged.get(line["request_id"], 0) + 1
        assert all(logged.get(rid) == 1 for rid in self.sent), {rid: logged.get(rid) for rid in self.sent
                                                                if logged.get(rid) != 1}

    def teardown(self) -> None:
        try:
            self._settle()
        finally:
            self.pool.shutdown(wait=True)
            self.lab.close()
            self.bg.close()
            self.tmp.cleanup()


Books.TestCase.settings = settings(max_examples=10, stateful_step_count=12, deadline=None,
                                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
TestBooks = Books.TestCase


REDIS: list[RedisServer] = []


@pytest.fixture(autouse=True, scope="module")
def _redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    REDIS.append(server)
    yield
    server.close()


class SharedBooks(Books):
    """The same books kept in Redis: one replica whose slots, circuits and drains live in the lab's store."""

    def _lab(self, tmp: Path) -> Lab:
        server = REDIS[0]
        with socket.create_connection(("127.0.0.1", server.port)) as conn:  # each example starts from nothing
            conn.sendall(b"FLUSHALL\r\n")
            assert conn.recv(16).startswith(b"+OK")
        return Lab(self.bg, tmp, policy_overrides={"shared_state": {"redis_url": server.url, "lease_seconds": 3}})

    @invariant()
    def shared_state_ok(self) -> None:
        assert self._admin("GET", "/admin/upstreams").json()["shared_state"] == "ok"


SharedBooks.TestCase.settings = settings(max_examples=5, stateful_step_count=12, deadline=None,
                                         suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
TestSharedBooks = SharedBooks.TestCase
