"""Router replicas as real processes (``homelab-router``, one each, or ``--workers N`` on one port)
sharing the lab's books through a real ``redis-server`` that the tests start on a free port (and stop,
and start again)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.harness import ADMIN_TOKEN, ROOT, free_port


def wait_for(check: Callable[[], bool], seconds: float = 10.0, every: float = 0.05) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(every)
    return check()


class RedisServer:
    """Debian's redis-server on a free loopback port, no persistence (a restart forgets everything,
    as a Redis without a disk would)."""

    def __init__(self, tmp: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed: `bash scripts/install.sh --dev` installs Debian's "
                        "redis-server (or: apt-get install redis-server)")
        self.binary = binary
        self.dir = tmp / "redis"
        self.dir.mkdir(exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen([self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", str(self.dir)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert wait_for(self.answers, 10), "redis-server did not start"

    def answers(self) -> bool:
        import socket

        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def close(self) -> None:
        self.stop()


class Replica:
    """One ``homelab-router`` process (``workers``: its ``--workers N``)."""

    def __init__(self, tmp: Path, policy: Path, *, redis_url: str | None, port: int | None = None,
                 workers: int | None = None, name: str = "replica") -> None:
        self.port = port or free_port()
        self.log = tmp / f"{name}-{self.port}.log"
        self.log_dir = tmp / "logs"
        env = {**os.environ, "HOMELAB_ADMIN_TOKEN": ADMIN_TOKEN, "HOMELAB_LOG_DIR": str(self.log_dir),
               "HOMELAB_STATE_DIR": str(tmp / "state"), "PYTHONPATH": str(ROOT)}
        env.pop("HOMELAB_REDIS_URL", None)
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        if redis_url:
            env["HOMELAB_REDIS_URL"] = redis_url
        argv = [sys.executable, "-m", "services.router.cli", "--policy", str(policy), "--port", str(self.port)]
        if workers is not None:
            argv += ["--workers", str(workers)]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(argv, cwd=tmp, env=env, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-12000:]

    def wait_ready(self, seconds: float = 30) -> Replica:
        def ready() -> bool:
            try:
                return httpx.get(self.url + "/admin/upstreams", headers=self.headers, timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        assert wait_for(ready, seconds), self.output()
        return self

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    def admin(self, method: str, path: str, **kw: Any) -> httpx.Response:
        # a new connection each time: under --workers, each call may reach another worker
        with httpx.Client(timeout=10) as c:
            return c.request(method, self.url + path, headers=self.headers, **kw)

    def upstreams(self) -> dict[str, Any]:
        r = self.admin("GET", "/admin/upstreams")
        r.raise_for_status()
        doc: dict[str, Any] = r.json()
        return doc

    def stop(self, seconds: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(seconds)
            except subprocess.TimeoutExpired:
                self.dump_stacks()  # what the stuck process is doing, into its log for the failure message
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        return self.proc.returncode

    def dump_stacks(self) -> None:
        """Every worker's stacks into the log (``--workers`` registers SIGUSR2 with faulthandler)."""
        children = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout
        for pid in children.split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGUSR2)
        time.sleep(1.0)

    def kill(self) -> None:
        """SIGKILL, the whole process group (every worker): no chance to give anything back."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(5)


def write_policy(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
