"""The lab-wide books, shared by every router replica and worker through Redis (policy
``shared_state:``, or ``HOMELAB_REDIS_URL``).

What is shared, and where it lives (keys under ``homelab:router:``):

- **slots** — ``slots:<route>``, a sorted set of leases (member: the lease id, score: when it
  expires, in Redis's own clock). ``TAKE`` (:mod:`services.router.lab_scripts`) checks the cap and takes a lease
  in one round trip; ``GIVE`` gives it back. Each replica renews its leases every ``lease_seconds / 3``: a replica
  that dies holding slots loses them after ``lease_seconds``. The half-open circuit's one trial is
  ``trial:<route>`` (set with the lease that carries it).
- **route** — ``route:<route>``, a hash: ``drained``, ``poisoned``, ``recovering``, the circuit
  (``circuit``, ``failures`` counted by every replica through ``FAILED``, ``opened_at``), the last
  error, and ``probe``: what the lab's one prober saw (JSON).
- **policy** — ``policy``: the text in force and its version; a reload or promotion on one replica
  is read by the others at their next sync (every :data:`SYNC_EVERY` seconds).
- **replicas** — ``replicas``: each replica's heartbeat, as a lease; ``leader``: the replica whose
  prober probes for the lab.

This module is the store behind :func:`services.router.slots.take` (the one admission) and behind
:class:`services.router.state.RouteState`'s changes: nothing else writes these keys.

When Redis cannot be reached, each replica goes on alone with its share of each cap (the cap divided
by the replicas last seen, at least 1), says so (``shared_state`` in ``/admin/upstreams``, the
``homelab_router_shared_state`` metric) and rejoins when Redis answers again: its leases are written
back (so slots taken meanwhile count), the lab's route state is read again.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any, Literal

import orjson
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from services.router.lab_scripts import COUNT, FAILED, GIVE, RENEW, TAKE
from services.router.state import RouteState

log = logging.getLogger("homelab.router.lab")

PREFIX = "homelab:router:"
SYNC_EVERY = 0.5  # seconds between two reads of the lab's route state and policy version
RECONNECT_EVERY = 0.5  # seconds between two tries while Redis is away
OP_TIMEOUT = 0.5  # a Redis call slower than this counts as Redis being away
# after Redis is back, each replica also keeps to its share this long: every other replica has tried to
# reconnect (RECONNECT_EVERY) and written its held slots back by then
SETTLE = 2 * RECONNECT_EVERY + 2 * OP_TIMEOUT + 0.5

# The fields a probe (the leader's) writes, and every replica reads.
PROBE_FIELDS = ("healthy", "last_probe_at", "model_listed", "max_model_len", "tool_calls", "tool_calls_seen",
                "continuation_blocked", "continuation_verdict")
FLAGS = ("drained", "poisoned", "recovering")

Verdict = Literal["saturated", "reserved", "down"]


def replica_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Lease:
    """A slot held in the lab's books (its id in ``slots:<route>``)."""

    __slots__ = ("id", "route", "trial")

    def __init__(self, lease_id: str, route: str, trial: bool) -> None:
        self.id = lease_id
        self.route = route
        self.trial = trial


class LabState:
    """One replica's link to the lab's shared books."""

    def __init__(self, url: str, lease_seconds: float, states: Callable[[], dict[str, RouteState]],
                 cooldown: Callable[[], float]) -> None:
        self.url = url
        self.lease_ms = int(lease_seconds * 1000)
        self.lease_seconds = lease_seconds
        self._states = states
        self._cooldown = cooldown
        self.id = replica_id()
        self.redis = aioredis.Redis.from_url(url, socket_timeout=OP_TIMEOUT, socket_connect_timeout=OP_TIMEOUT,
                                             retry=Retry(NoBackoff(), 0), client_name=f"homelab-router:{self.id}")
        self._take = self.redis.register_script(TAKE)
        self._give = self.redis.register_script(GIVE)
        self._renew = self.redis.register_script(RENEW)
        self._failed = self.redis.register_script(FAILED)
        self._count = self.redis.register_script(COUNT)
        self.ok = False  # Redis answered the last call
        self.problem: str | None = "not connected yet"
        self.replicas = 1  # alive at the last heartbeat (each worker counts)
        self.leader = False
        self.held: dict[str, Lease] = {}
        self._ids = itertools.count(1)
        self._lost: set[tuple[str, str]] = set()  # leases given back while Redis was away: gone at rejoin
        self._pending: dict[str, dict[Any, str]] = {}  # route fields written while Redis was away
        self._tasks: set[asyncio.Task[Any]] = set()
        self._takes: list[tuple[Lease, int, int, asyncio.Future[int]]] = []  # waiting for the next batch
        self._taking = False
        self._gives: list[Lease] = []
        self._giving = False
        self._rejoined_at = -SETTLE
        self._policy_pending: tuple[str, str] | None = None  # a policy to publish when Redis is back
        self.on_policy: Callable[[str, str], None] | None = None  # (version, text) of a newer shared policy
        self.shared_policy: str | None = None  # the version the lab has in force

    # ---- keys -----------------------------------------------------------------------------------

    @staticmethod
    def _slots(route: str) -> str:
        return f"{PREFIX}slots:{route}"

    @staticmethod
    def _trial(route: str) -> str:
        return f"{PREFIX}trial:{route}"

    @staticmethod
    def _route(route: str) -> str:
        return f"{PREFIX}route:{route}"

    # ---- the link's health --------------------------------------------------------------------

    @property
    def status(self) -> str:
        return "ok" if self.ok else f"redis unreachable at {self._where()}: {self.problem} (each replica serves " \
                                    f"alone with its share of each cap: the cap / {self.replicas})"

    def _where(self) -> str:
        return self.url.split("@")[-1]  # never the password

    def _lost_link(self, exc: BaseException) -> None:
        if self.ok:
            log.error("shared state: Redis at %s unreachable (%s); serving alone with a share of each cap "
                      "(1/%d)", self._where(), exc, self.replicas)
        self.ok = False
        self.problem = f"{type(exc).__name__}: {exc}"[:200]
        self.leader = False

    @property
    def settling(self) -> bool:
        """Just back after Redis was away: the other replicas may not have written their slots back yet,
        so for a moment a take must fit this replica's share as well as the lab's count."""
        return time.monotonic() - self._rejoined_at < SETTLE

    def share(self, cap: int) -> int:
        """This replica's part of a cap while it cannot see the others."""
        return max(1, cap // max(1, self.replicas))

    # ---- slots ------------------------------------------------------------------------------

    async def take(self, route: str, cap: int, limit: int, trial: bool) -> Lease | Verdict | None:
        """A lease on one of ``route``'s slots, why not, or None when Redis did not answer.

        Takes are sent in batches, one call on the wire at a time: every take that asks while a call
        is out goes in the next one (one round trip for one request alone; many under load)."""
        lease = Lease(f"{self.id}:{next(self._ids)}", route, trial)
        answer: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._takes.append((lease, cap, limit, answer))
        if not self._taking:
            self._taking = True
            self._spawn(self._send_takes())
        try:
            verdict = await answer  # a request that leaves meanwhile cancels it: _send_takes gives it back
        except (RedisError, OSError):
            return None  # the link is down (the batch said so); the replica goes on alone
        if verdict == 0:
            return "saturated"
        if verdict == -1:
            return "reserved"
        if verdict < 0:
            return "down"
        lease.trial = verdict == 2
        self.held[lease.id] = lease
        return lease

    async def _send_takes(self) -> None:
        try:
            while self._takes:
                batch, self._takes = self._takes, []
                keys: list[str] = []
                args: list[Any] = [self.lease_ms]
                for lease, cap, limit, _ in batch:
                    keys += [self._slots(lease.route), self._trial(lease.route)]
                    args += [lease.id, cap, limit, int(lease.trial)]
                try:
                    verdicts = await self._take(keys=keys, args=args)
                except (RedisError, OSError) as exc:
                    for lease, _, _, answer in batch:
                        self._lost.add((lease.route, lease.id))  # taken, perhaps, before the answer was lost
                        if not answer.done():
                            answer.set_exception(exc)
                    self._lost_link(exc)
                    continue
                for (lease, _, _, answer), verdict in zip(batch, verdicts, strict=True):
                    if not answer.done():
                        answer.set_result(int(verdict))
                    elif int(verdict) > 0:  # its request left while the take was on the wire: give it back
                        self.held[lease.id] = lease
                        self.give(lease)
        finally:
            self._taking = False

    def local(self, route: str, trial: bool) -> Lease:
        """A slot taken while Redis is away: written to the lab's books when it is back."""
        lease = Lease(f"{self.id}:{next(self._ids)}", route, trial)
        self.held[lease.id] = lease
        return lease

    def give(self, lease: Lease) -> None:
        """Give a lease back (in the background, in batches: the request that held it does not wait)."""
        if self.held.pop(lease.id, None) is None:
            return
        if not self.ok:
            self._lost.add((lease.route, lease.id))
            return
        self._gives.append(lease)
        if not self._giving:
            self._giving = True
            self._spawn(self._send_gives())

    async def _send_gives(self) -> None:
        try:
            while self._gives:
                batch, self._gives = self._gives, []
                keys = [k for lease in batch for k in (self._slots(lease.route), self._trial(lease.route))]
                try:
                    await self._give(keys=keys, args=[lease.id for lease in batch])
                except (RedisError, OSError) as exc:
                    self._lost.update((lease.route, lease.id) for lease in batch)
                    self._lost_link(exc)
        finally:
            self._giving = False

    # ---- route state -----------------------------------------------------------------------

    def failed(self, st: RouteState, error: str, threshold: int) -> None:
        """One failure of a route, counted lab-wide; the circuit as the lab has it comes back."""
        if self.ok:
            self._spawn(self._count_failure(st, error, threshold))

    async def _count_failure(self, st: RouteState, error: str, threshold: int) -> None:
        try:
            failures, circuit, open_ms = await self._failed(
                keys=[self._route(st.name)],
                args=[error[:500], threshold, int(self._cooldown() * 1000), f"{time.time():.3f}"])
        except (RedisError, OSError) as exc:
            self._lost_link(exc)
            return
        st.failures = int(failures)
        if circuit == b"open":
            if st.circuit != "open" or open_ms < 100:
                st.opened_at = time.monotonic() - int(open_ms) / 1000
            if st.circuit == "closed" or open_ms < 100:
                st.circuit = "open"

    def write(self, st: RouteState, **fields: Any) -> None:
        """Route fields (drain, poison, recovery, a success's closed circuit) for every replica."""
        encoded: dict[Any, str] = {k: _encode(v) for k, v in fields.items()}
        if not self.ok:
            self._pending.setdefault(st.name, {}).update(encoded)
            return
        self._spawn(self._hset(st.name, encoded))

    async def _hset(self, route: str, fields: dict[Any, str]) -> None:
        try:
            await self.redis.hset(self._route(route), mapping=fields)
        except (RedisError, OSError) as exc:
            self._pending.setdefault(route, {}).update(fields)
            self._lost_link(exc)

    def probed(self, states: dict[str, RouteState]) -> None:
        """The leader's probe results, for every replica."""
        if not (self.ok and self.leader):
            return
        for st in states.values():
            probe = {k: getattr(st, k) for k in PROBE_FIELDS}
            self._spawn(self._hset(st.name, {"probe": orjson.dumps(probe).decode()}))

    async def recovery_lock(self, route: str, seconds: float) -> bool:
        """The lab's one recovery of ``route`` (True: this replica runs it). Alone, the replica decides."""
        if not self.ok:
            return True
        try:
            return bool(await self.redis.set(f"{PREFIX}recovery:{route}", self.id, nx=True,
                                             px=int(seconds * 1000) + 5000))
        except (RedisError, OSError) as exc:
            self._lost_link(exc)
            return True

    async def recovery_done(self, route: str) -> None:
        if self.ok:
            with contextlib.suppress(RedisError, OSError):
                await self.redis.delete(f"{PREFIX}recovery:{route}")

    # ---- policy ------------------------------------------------------------------------------

    async def publish_policy(self, version: str, text: str) -> None:
        """A reload or promotion here: in force on every replica at its next sync (while Redis is away:
        when it is back)."""
        self.shared_policy = version
        fields: dict[Any, str] = {"version": version, "text": text, "by": self.id, "at": f"{time.time():.3f}"}
        try:
            await self.redis.hset(f"{PREFIX}policy", mapping=fields)
            self._policy_pending = None
        except (RedisError, OSError) as exc:
            self._policy_pending = (version, text)
            self._lost_link(exc)

    async def join_policy(self, version: str, text: str) -> tuple[str, str] | None:
        """At start: the lab's policy (version, text) if it has one, else this replica's becomes it."""
        try:
            got = await self.redis.hmget(f"{PREFIX}policy", ["version", "text"])
        except (RedisError, OSError) as exc:
            self._lost_link(exc)
            return None
        if got[0] is None or got[1] is None:
            await self.publish_policy(version, text)
            return None
        self.shared_policy = _text(got[0])
        return self.shared_policy, _text(got[1])

    # ---- the loop: heartbeat, leases, the lab's state -------------------------------------------

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def run(self) -> None:
        """Keep this replica in the lab: sync every :data:`SYNC_EVERY` s, renew every ``lease / 3``."""
        renew_every = self.lease_seconds / 3
        last_renew = -renew_every
        while True:
            if not self.ok:
                await self.rejoin()
                if not self.ok:
                    await asyncio.sleep(RECONNECT_EVERY)
                    continue
                last_renew = -renew_every
            now = time.monotonic()
            try:
                if now - last_renew >= renew_every:
                    await self.renew()
                    last_renew = now
                await self.sync()
            except (RedisError, OSError) as exc:
                self._lost_link(exc)
            except Exception as exc:  # a bug here must never stop the replica serving: alone, it goes on
                log.exception("shared state: unexpected error")
                self._lost_link(exc)
            await asyncio.sleep(SYNC_EVERY)

    async def rejoin(self) -> None:
        try:
            await self.redis.ping()
            back = not self.ok and self.problem != "not connected yet"
            if back:
                self._rejoined_at = time.monotonic()  # settling: see renew() and slots.take
            await self.renew()  # the leases held (some taken meanwhile) are in the lab's books again
            if self._lost:
                async with self.redis.pipeline(transaction=False) as p:
                    for route, lease_id in self._lost:
                        p.zrem(self._slots(route), lease_id)
                    await p.execute()
                self._lost.clear()
            if self._pending:
                async with self.redis.pipeline(transaction=False) as p:
                    for route, fields in self._pending.items():
                        p.hset(self._route(route), mapping=fields)
                    await p.execute()
                self._pending.clear()
            if self._policy_pending is not None:
                await self.redis.hset(f"{PREFIX}policy", mapping={  # the newest reload here wins
                    "version": self._policy_pending[0], "text": self._policy_pending[1], "by": self.id})
                self._policy_pending = None
        except (RedisError, OSError) as exc:
            self.problem = f"{type(exc).__name__}: {exc}"[:200]
            return
        if back:
            log.warning("shared state: Redis at %s is back; %d replicas share the lab's books", self._where(),
                        self.replicas)
        elif not self.ok:
            log.info("shared state: joined the lab's books at %s (%d replicas)", self._where(), self.replicas)
        self.ok = True
        self.problem = None
        with contextlib.suppress(RedisError, OSError):
            await self.sync()

    async def renew(self) -> None:
        keys = [f"{PREFIX}replicas", f"{PREFIX}leader"]
        args: list[Any] = [self.lease_ms, self.id, 1]
        for lease in list(self.held.values()):
            keys += [self._slots(lease.route), self._trial(lease.route)]
            args += [lease.id, int(lease.trial)]
        replicas, leader = await self._renew(keys=keys, args=args)
        alive = max(1, int(replicas))
        # settling after an outage (a restarted Redis knows nobody yet): the others are not counted yet
        self.replicas = max(alive, self.replicas) if self.settling else alive
        if bool(leader) != self.leader:
            log.info("shared state: this replica %s the lab's prober", "is now" if leader else "is no longer")
        self.leader = bool(leader)

    async def sync(self) -> None:
        """Read the lab's route state and policy version into this replica."""
        states = self._states()
        names = list(states)
        async with self.redis.pipeline(transaction=False) as p:
            p.time()
            p.hget(f"{PREFIX}policy", "version")
            for name in names:
                p.hgetall(self._route(name))
            got = await p.execute()
        server_ms = got[0][0] * 1000 + got[0][1] // 1000
        version = got[1].decode() if got[1] else None
        for name, row in zip(names, got[2:], strict=True):
            st = states.get(name)
            if st is not None:
                self._apply(st, {k.decode(): v.decode() for k, v in row.items()}, server_ms)
        if version and version != self.shared_policy and self.on_policy is not None:
            text = await self.redis.hget(f"{PREFIX}policy", "text")
            if text is not None:
                self.shared_policy = version
                self.on_policy(version, _text(text))

    async def in_flight(self) -> dict[str, int]:
        """Each route's slots taken lab-wide now (expired leases not counted); {} while Redis is away."""
        names = list(self._states())
        if not self.ok or not names:
            return {}
        try:
            counts = await self._count(keys=[self._slots(n) for n in names])
        except (RedisError, OSError) as exc:
            self._lost_link(exc)
            return {}
        return {name: int(n) for name, n in zip(names, counts, strict=True)}

    def _apply(self, st: RouteState, row: dict[str, str], server_ms: int) -> None:
        for flag in FLAGS:
            if flag in row:
                setattr(st, flag, row[flag] == "1")
        if "failures" in row:
            st.failures = int(row["failures"])
        circuit = row.get("circuit")
        if circuit == "open":
            opened_ms = int(row.get("opened_at") or 0)
            opened_at = time.monotonic() - max(0, server_ms - opened_ms) / 1000
            if st.circuit == "closed" or abs(st.opened_at - opened_at) > 0.5:
                st.circuit = "open"
                st.opened_at = opened_at
        elif circuit == "closed" and st.circuit != "closed":
            st.circuit = "closed"
        if "last_error" in row:
            st.last_error = row["last_error"]
            st.last_error_at = float(row.get("last_error_at") or 0) or None
        if "probe" in row and not self.leader:
            probe = orjson.loads(row["probe"])
            for key in PROBE_FIELDS:
                if key in probe:
                    setattr(st, key, probe[key])

    async def close(self) -> None:
        """Leaving the lab: give back what is held, step down as the prober, stop the heartbeat."""
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        if self.ok:
            with contextlib.suppress(RedisError, OSError):
                async with self.redis.pipeline(transaction=False) as p:
                    for lease in self.held.values():
                        p.zrem(self._slots(lease.route), lease.id)
                    p.zrem(f"{PREFIX}replicas", self.id)
                    await p.execute()
                if self.leader:
                    holder = await self.redis.get(f"{PREFIX}leader")
                    if holder == self.id.encode():
                        await self.redis.delete(f"{PREFIX}leader")
        await self.redis.aclose()


def _encode(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if value is None:
        return ""
    return str(value)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
