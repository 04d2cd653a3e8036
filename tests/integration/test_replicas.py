"""Two routers, one lab: replicas (and ``--workers``) that share caps, circuits, drains and the policy
through a real Redis — and keep serving, each with its share, when Redis goes away."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from openai import OpenAI

from services.sim_upstream import SimConfig, SimUpstream
from tests.harness import ADMIN_TOKEN, POLICY, ROOT, BackgroundLoop
from tests.harness import test_policy as policy_for
from tests.integration.replicas import RedisServer, Replica, wait_for, write_policy

CODE = "ubuntu-6000"  # cap 3 in these tests; it spills to win-5090, then spark


@pytest.fixture
def sims(bg: BackgroundLoop) -> Iterator[dict[str, SimUpstream]]:
    out: dict[str, SimUpstream] = {}
    routes = yaml.safe_load(POLICY.read_text())["routes"]
    for name in routes:
        sim = SimUpstream(SimConfig(model=routes[name]["model"], vision=routes[name].get("vision", False)))
        bg.run(sim.start())
        out[name] = sim
    yield out
    for sim in out.values():
        bg.run(sim.close())


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    yield server
    server.close()


def lab_policy(tmp_path: Path, sims: dict[str, SimUpstream], *, cap: int = 3, cooldown: float = 30.0,
               redis_url: str | None = None) -> tuple[Path, dict[str, Any]]:
    data = policy_for(sims, shared_state={"lease_seconds": 3, **({"redis_url": redis_url} if redis_url else {})})
    data["routes"][CODE]["max_concurrency"] = cap
    data["routes"]["spark"]["max_concurrency"] = 24  # where spills end: room for every request of these tests
    data["health"]["circuit_cooldown"] = cooldown
    for route in data["routes"].values():  # slow answers and long streams are the point here
        route.update(first_token_timeout=20.0, stream_idle_timeout=20.0, request_timeout=60.0)
    return write_policy(tmp_path / "policy.yaml", data), data


def two(tmp_path: Path, policy: Path, redis: RedisServer) -> tuple[Replica, Replica]:
    a = Replica(tmp_path, policy, redis_url=redis.url, name="a")
    b = Replica(tmp_path, policy, redis_url=redis.url, name="b")
    a.wait_ready()
    b.wait_ready()
    assert wait_for(lambda: a.upstreams()["replicas"] == 2 and b.upstreams()["replicas"] == 2, 10), a.upstreams()
    return a, b


def ask(url: str, model: str = "homelab/code", content: str = "write a function") -> tuple[int, str]:
    r = httpx.post(url + "/v1/chat/completions", timeout=60,
                   json={"model": model, "messages": [{"role": "user", "content": content}]})
    return r.status_code, r.headers.get("X-Homelab-Route", "")


def in_flight(replica: Replica, route: str = CODE) -> int:
    return int(replica.upstreams()["routes"][route]["in_flight"])


def test_a_cap_of_3_is_3_whichever_replica_took_the_request(sims: dict[str, SimUpstream], redis: RedisServer,
                                                            tmp_path: Path) -> None:
    sims[CODE].configure(ttft=0.8)
    policy, _ = lab_policy(tmp_path, sims)
    a, b = two(tmp_path, policy, redis)
    try:
        with ThreadPoolExecutor(24) as pool:
            results = list(pool.map(lambda i: ask((a, b)[i % 2].url), range(24)))
        assert [s for s, _ in results] == [200] * 24
        routes = Counter(route for _, route in results)
        assert sims[CODE].peak == 3, routes  # the GPU held 3, never 6 (3 per replica) — and it was full
        assert routes[CODE] >= 3 and routes["win-5090"] + routes["spark"] == 24 - routes[CODE], routes
        # every slot came back, lab-wide, seen from either replica
        assert wait_for(lambda: in_flight(a) == 0 and in_flight(b) == 0, 5)
        assert a.upstreams()["shared_state"] == "ok"
        shown = subprocess.run([sys.executable, "-m", "services.cli", "upstreams", "--router", b.url + "/v1",
                                "--token", ADMIN_TOKEN], capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert shown.returncode == 0, shown.stderr
        assert shown.stdout.startswith("shared state: ok; 2 replicas"), shown.stdout
        # one prober for the lab: the leader probes, the other reads its results
        assert [a.upstreams()["prober"], b.upstreams()["prober"]].count(True) == 1
        before = sims[CODE].probes
        time.sleep(2.0)  # probe_interval 0.2 s: one prober ~10 probes, two would be ~20
        assert 5 <= sims[CODE].probes - before <= 13, sims[CODE].probes - before
    finally:
        a.stop()
        b.stop()


def test_drain_reload_and_a_circuit_on_one_replica_hold_on_both(sims: dict[str, SimUpstream],
                                                                redis: RedisServer, tmp_path: Path) -> None:
    policy, data = lab_policy(tmp_path, sims)
    a, b = two(tmp_path, policy, redis)
    try:
        assert a.admin("POST", "/admin/drain/win-5090").status_code == 200
        assert wait_for(lambda: b.upstreams()["routes"]["win-5090"]["drained"], 2)
        assert b.admin("POST", "/admin/undrain/win-5090").status_code == 200
        assert wait_for(lambda: not a.upstreams()["routes"]["win-5090"]["drained"], 2)

        # a reload on one is the policy of both within 2 s
        data["routes"][CODE]["max_concurrency"] = 2
        write_policy(policy, data)
        assert a.admin("POST", "/admin/reload-config").status_code == 200
        assert wait_for(lambda: b.upstreams()["routes"][CODE]["max_concurrency"] == 2, 2), b.upstreams()["policy"]
        assert b.upstreams()["policy"]["version"] == a.upstreams()["policy"]["version"]
        assert not b.upstreams()["policy"]["file_differs"]

        # a shadow promoted on one is the policy of both
        data["routes"][CODE]["max_concurrency"] = 1
        assert b.admin("POST", "/admin/shadow", content=yaml.safe_dump(data, sort_keys=False)).status_code == 200
        assert b.admin("POST", "/admin/shadow/promote").status_code == 200
        assert wait_for(lambda: a.upstreams()["routes"][CODE]["max_concurrency"] == 1, 2)
        # the promoted policy is no replica's file: each says its file differs from what is in force
        report = a.upstreams()["policy"]
        assert report["file_differs"] and "differs" in report["problem"], report
        assert report["version"] == report["lab"] == b.upstreams()["policy"]["version"]

        # a replica that joins with another file takes the lab's policy, and says its file differs
        other = dict(data, routes={**data["routes"], CODE: {**data["routes"][CODE], "max_concurrency": 3}})
        c = Replica(tmp_path, write_policy(tmp_path / "other.yaml", other), redis_url=redis.url, name="c")
        try:
            c.wait_ready()
            assert c.upstreams()["routes"][CODE]["max_concurrency"] == 1
            assert c.upstreams()["policy"]["file_differs"]
        finally:
            c.stop()

        # failures seen through one replica open the circuit for both
        sims["spark"].configure(fault="http_500")
        for _ in range(2):  # each: a 500, one retry, another 500 (spark is terminal: a 503 to the client)
            assert ask(a.url, "homelab/reasoning")[0] == 503
        assert wait_for(lambda: b.upstreams()["routes"]["spark"]["circuit"] == "open", 2), b.upstreams()["routes"]
        before = sims["spark"].requests
        status, _ = ask(b.url, "homelab/reasoning")
        assert status == 503 and sims["spark"].requests == before  # b did not pay for the outage again
    finally:
        a.stop()
        b.stop()


def test_a_half_open_circuit_lets_one_trial_through_for_the_whole_lab(sims: dict[str, SimUpstream],
                                                                      redis: RedisServer, tmp_path: Path) -> None:
    policy, _ = lab_policy(tmp_path, sims, cooldown=1.0)
    a, b = two(tmp_path, policy, redis)
    try:
        sims["spark"].configure(fault="http_500")
        for _ in range(2):
            assert ask(a.url, "homelab/reasoning")[0] == 503
        assert wait_for(lambda: b.upstreams()["routes"]["spark"]["circuit"] == "open", 2)
        sims["spark"].configure(fault="none", ttft=1.5)  # healed, and the trial takes a while
        assert wait_for(lambda: a.upstreams()["routes"]["spark"]["circuit"] == "half_open"
                        and b.upstreams()["routes"]["spark"]["circuit"] == "half_open", 5)
        before = sims["spark"].requests
        with ThreadPoolExecutor(6) as pool:
            results = list(pool.map(lambda i: ask((a, b)[i % 2].url, "homelab/reasoning"), range(6)))
        assert sims["spark"].requests - before == 1, results  # one trial, lab-wide; the rest refused at once
        assert sorted(s for s, _ in results) == [200, 503, 503, 503, 503, 503]
        assert wait_for(lambda: a.upstreams()["routes"]["spark"]["circuit"] == "closed"
                        and b.upstreams()["routes"]["spark"]["circuit"] == "closed", 2)
    finally:
        a.stop()
        b.stop()


def test_slots_held_by_a_replica_killed_with_sigkill_come_back_after_the_lease(
        sims: dict[str, SimUpstream], redis: RedisServer, tmp_path: Path) -> None:
    sims[CODE].configure(ttft=30.0)  # three requests that will not finish before the kill
    policy, _ = lab_policy(tmp_path, sims)
    a, b = two(tmp_path, policy, redis)
    try:
        threads = [threading.Thread(target=lambda: _quietly(a.url), daemon=True) for _ in range(3)]
        for t in threads:
            t.start()
        assert wait_for(lambda: in_flight(b) == 3, 10)
        assert ask(b.url)[1] != CODE  # full, lab-wide: b spills
        a.kill()
        killed = time.monotonic()
        assert wait_for(lambda: in_flight(b) == 0, 10)
        back = time.monotonic() - killed
        assert back <= 3 + 1.5, back  # lease_seconds 3 (+ a sync)
        sims[CODE].configure(ttft=0.0)
        assert ask(b.url) == (200, CODE)
        assert wait_for(lambda: b.upstreams()["replicas"] == 1, 5)
    finally:
        b.stop()


def _quietly(url: str) -> None:
    with contextlib.suppress(httpx.HTTPError):  # it is killed under this request: no answer is the point
        ask(url)


class Load:
    """Clients asking both replicas continuously (each thread a client with its own connection)."""

    def __init__(self, urls: list[str], threads: int = 6, stream: bool = False, model: str = "homelab/code") -> None:
        self.urls = urls
        self.stream = stream
        self.model = model
        self.stop = threading.Event()
        self.results: list[tuple[int, str]] = []
        self.errors: list[str] = []
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]
        for t in self.threads:
            t.start()

    def _run(self, i: int) -> None:
        url = self.urls[i % len(self.urls)]
        client = OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=60)
        while not self.stop.is_set():
            try:
                if self.stream:
                    text = ""
                    for chunk in client.chat.completions.create(
                            model=self.model, stream=True,
                            messages=[{"role": "user", "content": "write a function"}]):
                        if chunk.choices and chunk.choices[0].delta.content:
                            text += chunk.choices[0].delta.content
                    self.results.append((200, text))
                else:
                    r = client.chat.completions.with_raw_response.create(
                        model=self.model, messages=[{"role": "user", "content": "write a function"}])
                    self.results.append((r.http_response.status_code, r.headers.get("X-Homelab-Route", "")))
            except Exception as exc:  # every failure is a finding: recorded, the client goes on
                self.errors.append(f"{type(exc).__name__}: {exc}")

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)


def test_redis_away_and_back_under_load_fails_no_request_and_caps_hold(
        sims: dict[str, SimUpstream], redis: RedisServer, tmp_path: Path) -> None:
    sims[CODE].configure(ttft=0.3)
    policy, _ = lab_policy(tmp_path, sims, cap=4)
    a, b = two(tmp_path, policy, redis)
    load = Load([a.url, b.url], threads=8)
    try:
        time.sleep(1.5)
        assert sims[CODE].peak <= 4
        redis.stop()
        assert wait_for(lambda: a.upstreams()["shared_state"] != "ok" and b.upstreams()["shared_state"] != "ok", 5)
        # each replica alone now, taking no more than its share (half the cap); the slots one took before
        # the outage beyond its share finish first (each request ~0.3 s)
        time.sleep(1.0)
        sims[CODE].peak = sims[CODE].active
        time.sleep(2.0)
        assert sims[CODE].peak <= 4  # 2 + 2: each its share
        assert "redis unreachable" in a.upstreams()["shared_state"]
        shown = subprocess.run([sys.executable, "-m", "services.cli", "status", "--router", a.url + "/v1"],
                               cwd=tmp_path, capture_output=True, text=True, timeout=60,
                               env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(ROOT),
                                    "HOMELAB_ADMIN_TOKEN": ADMIN_TOKEN, "HOMELAB_MQTT_URL": "mqtt://127.0.0.1:9"})
        assert shown.returncode != 0, shown.stdout + shown.stderr  # 2 here: no broker either, so "cannot tell"
        assert "! router: shared state: redis unreachable" in shown.stdout and "DEGRADED" in shown.stdout, shown.stdout
        metrics = httpx.get(a.url + "/metrics", timeout=5).text
        assert "homelab_router_shared_state{" in metrics and "} 0.0" in _line(metrics, "homelab_router_shared_state{")
        sims[CODE].peak = sims[CODE].active
        redis.start()  # empty: it forgot every lease, every replica
        assert wait_for(lambda: a.upstreams()["shared_state"] == "ok" and b.upstreams()["shared_state"] == "ok", 5)
        # the lab-wide view is back: both replicas, their leases written back, the cap lab-wide again —
        # and it held through the rejoin (the first replica back does not see the other's slots yet)
        assert wait_for(lambda: a.upstreams()["replicas"] == 2, 5)
        time.sleep(2.0)
        assert sims[CODE].peak <= 4
    finally:
        load.finish()
        a.stop()
        b.stop()
    assert load.errors == [], load.errors[:5]
    assert len(load.results) > 50 and {s for s, _ in load.results} == {200}


def _line(text: str, prefix: str) -> str:
    return next((ln for ln in text.splitlines() if ln.startswith(prefix)), "")


def test_workers_share_one_port_and_the_labs_books(sims: dict[str, SimUpstream], redis: RedisServer,
                                                   tmp_path: Path) -> None:
    sims[CODE].configure(ttft=0.8)
    policy, data = lab_policy(tmp_path, sims, redis_url=redis.url)
    w = Replica(tmp_path, policy, redis_url=None, workers=2, name="workers")
    try:
        w.wait_ready()
        assert wait_for(lambda: w.upstreams()["replicas"] == 2, 10)
        seen = {w.upstreams()["replica"] for _ in range(30)}
        assert len(seen) == 2, seen  # both workers answer on the one port
        with ThreadPoolExecutor(24) as pool:
            results = list(pool.map(lambda i: ask(w.url), range(24)))
        assert [s for s, _ in results] == [200] * 24
        assert sims[CODE].peak == 3
        # a drain that reached one worker holds on both; a reload too
        assert w.admin("POST", "/admin/drain/win-5090").status_code == 200
        time.sleep(1.2)
        assert all(w.upstreams()["routes"]["win-5090"]["drained"] for _ in range(10))
        data["routes"][CODE]["max_concurrency"] = 2
        write_policy(policy, data)
        assert w.admin("POST", "/admin/reload-config").status_code == 200
        time.sleep(2.0)
        assert {w.upstreams()["routes"][CODE]["max_concurrency"] for _ in range(10)} == {2}
        # /metrics on any worker counts every worker's requests (Prometheus's multiprocess mode)
        totals = {_requests_total(httpx.get(w.url + "/metrics", timeout=5).text) for _ in range(6)}
        assert totals == {24.0}, totals
        # one decision line per request, whole lines, though two processes wrote them
        lines = (tmp_path / "logs" / "router-decisions.jsonl").read_text().splitlines()
        assert len([json.loads(ln) for ln in lines if '"/v1/chat/completions"' in ln]) == 24
    finally:
        assert w.stop() == 0, w.output()


def _requests_total(metrics: str) -> float:
    """Chat requests answered, as /metrics counts them (every route a code request can reach)."""
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in metrics.splitlines()
               if ln.startswith("homelab_router_requests_total{")
               and any(f'route="{r}"' in ln for r in (CODE, "win-5090", "spark")))


def test_workers_without_shared_state_refuse_to_start_and_say_why(sims: dict[str, SimUpstream],
                                                                   tmp_path: Path) -> None:
    data = policy_for(sims)
    policy = write_policy(tmp_path / "policy.yaml", data)
    proc = subprocess.run([sys.executable, "-m", "services.router.cli", "--policy", str(policy), "--workers", "2",
                           "--port", "0"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(ROOT),
                               "HOMELAB_LOG_DIR": str(tmp_path / "logs")})
    assert proc.returncode == 2
    assert "shared_state" in proc.stderr and "HOMELAB_REDIS_URL" in proc.stderr, proc.stderr


def test_rolling_restarts_under_streaming_and_json_load_fail_no_request(sims: dict[str, SimUpstream],
                                                                        redis: RedisServer, tmp_path: Path) -> None:
    """Two rolling restarts (SIGHUP) under streams and back-to-back JSON requests on keep-alive
    connections, the openai SDK with its retries off: a worker told to stop finishes its streams, and an
    idle keep-alive connection is not cut under a request already on its way."""
    sims[CODE].configure(per_token=0.05, words=20)  # each stream ~1 s
    sims["win-5090"].configure(ttft=0.0)
    policy, _ = lab_policy(tmp_path, sims, cap=8, redis_url=redis.url)
    w = Replica(tmp_path, policy, redis_url=None, workers=2, name="rolling")
    streams: Load | None = None
    quick: Load | None = None
    try:
        w.wait_ready()
        assert wait_for(lambda: w.upstreams()["replicas"] == 2, 10)
        streams = Load([w.url], threads=4, stream=True)
        quick = Load([w.url], threads=4, model="homelab/chat")  # ~ms answers: connections idle only briefly
        time.sleep(1.0)
        for _ in range(2):
            before = {w.upstreams()["replica"] for _ in range(20)}
            w.proc.send_signal(signal.SIGHUP)  # uvicorn's supervisor: a new worker in service before an old stops

            def replaced(before: set[str] = before) -> bool:
                return not before & {w.upstreams()["replica"] for _ in range(12)}

            if not wait_for(replaced, 60, every=0.5):
                w.dump_stacks()
                raise AssertionError(w.output())
        time.sleep(1.0)
    finally:
        for load in (streams, quick):
            if load is not None:
                load.finish()
        w.stop()
    assert streams is not None and quick is not None
    assert streams.errors == [] and quick.errors == [], (streams.errors[:3], quick.errors[:3])
    assert len(streams.results) >= 20 and len(quick.results) >= 200, (len(streams.results), len(quick.results))
    answers = {text for _, text in streams.results}
    assert len(answers) == 1 and len(next(iter(answers)).split()) >= 20, answers  # every one whole, none cut
