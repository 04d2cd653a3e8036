"""One router process vs ``--workers 2`` sharing the lab's books through Redis, side by side in one run,
with nginx answering directly and a bare Starlette + aiohttp relay as the yardsticks.

Cells (JSON chat completions, wrk, the same body and upstream for all):
  direct            nginx itself
  bare relay        Starlette + aiohttp, one process: the least a Python relay can do
  router            homelab-router as it ships, one process, no shared state
  router + redis    one process with shared_state (every slot taken and given back by a Lua call)
  workers 2 + redis homelab-router --workers 2 with shared_state

    .venv/bin/python bench/replicas.py [--duration 10] [--write]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.router_overhead import BODY, _write_results, bench_policy, free_port, nginx_conf, wrk  # noqa: E402

BARE_RELAY = '''
import aiohttp
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

UPSTREAM = "{upstream}"
session = None


async def relay(request):
    global session
    if session is None:
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    body = await request.body()
    async with session.post(UPSTREAM, data=body, headers={{"Content-Type": "application/json"}}) as r:
        data = await r.read()
        return Response(data, status_code=r.status, media_type="application/json")


app = Starlette(routes=[Route("/v1/chat/completions", relay, methods=["POST"])])
'''


def wait_port(port: int, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--write", action="store_true", help="write bench/RESULTS.md's replicas section")
    a = ap.parse_args()
    for tool in ("nginx", "wrk", "redis-server"):
        if not shutil.which(tool):
            print(f"needs {tool}: apt-get install -y nginx-light wrk redis-server", file=sys.stderr)
            return 2
    tmp = Path(tempfile.mkdtemp(prefix="homelab-bench-replicas-"))
    json_port, sse_port, redis_port = free_port(), free_port(), free_port()
    procs: list[subprocess.Popen[bytes]] = []
    nginx = subprocess.Popen(["nginx", "-c", str(nginx_conf(tmp, json_port, sse_port)), "-g", "daemon off;"],
                             stderr=subprocess.DEVNULL)
    redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no", "--dir", str(tmp)], stdout=subprocess.DEVNULL)
    procs += [nginx, redis]
    plain = bench_policy(tmp, json_port, sse_port)
    shared_doc = yaml.safe_load(plain.read_text())
    shared_doc["shared_state"] = {"redis_url": f"redis://127.0.0.1:{redis_port}/0"}
    shared = tmp / "shared.yaml"
    shared.write_text(yaml.safe_dump(shared_doc))
    env = {**os.environ, "HOMELAB_LOG_DIR": str(tmp / "logs"), "HOMELAB_ADMIN_TOKEN": "bench"}
    env.pop("HOMELAB_REDIS_URL", None)
    direct = f"http://127.0.0.1:{json_port}/v1/chat/completions"
    (tmp / "bare_relay.py").write_text(BARE_RELAY.format(upstream=direct))
    router = str(ROOT / ".venv/bin/homelab-router")
    cells: list[tuple[str, list[str] | None, dict[str, str]]] = [
        ("direct (nginx)", None, {}),
        ("bare relay (Starlette + aiohttp)", [sys.executable, "-m", "uvicorn", "bare_relay:app", "--loop", "uvloop",
                                              "--http", "httptools", "--log-level", "warning", "--no-access-log"],
         {"PYTHONPATH": str(tmp)}),
        ("router, one process", [router, "--policy", str(plain), "--log-level", "warning"], {}),
        ("router + shared_state, one process", [router, "--policy", str(shared), "--log-level", "warning"], {}),
        ("router + shared_state, --workers 2", [router, "--policy", str(shared), "--log-level", "warning",
                                                "--workers", "2"], {}),
    ]
    d = a.duration
    results: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
    try:
        wait_port(json_port)
        wait_port(redis_port)
        for name, argv, extra in cells:
            if argv is None:
                url, proc = direct, None
            else:
                port = free_port()
                argv = [*argv, "--port", str(port)]
                proc = subprocess.Popen(argv, env={**env, **extra}, cwd=tmp)
                wait_port(port)
                time.sleep(1.0)  # workers and probes settle
                url = f"http://127.0.0.1:{port}/v1/chat/completions"
            try:
                wrk(url, BODY, 8, 2)  # warm-up
                one = wrk(url, BODY, 1, d)
                many = wrk(url, BODY, 32, d)
            finally:
                if proc is not None:
                    stop(proc)
            results.append((name, one, many))
            print(f"{name}: 1 conn p50 {one['p50']:.3f} ms; 32 conns {many['rps']:.0f} req/s, p99 {many['p99']:.2f} ms",
                  flush=True)
    finally:
        for p in procs:
            stop(p)
    base = {name: many["rps"] for name, _, many in results}
    relay = base["bare relay (Starlette + aiohttp)"]
    one_proc = base["router, one process"]
    lines = ["| cell | p50 @1 (ms) | p99 @1 (ms) | req/s @32 | p50 @32 (ms) | p99 @32 (ms) | errors | "
             "÷ one router | ÷ bare relay |", "|---|---|---|---|---|---|---|---|---|"]
    for name, one, many in results:
        lines.append(f"| {name} | {one['p50']:.3f} | {one['p99']:.3f} | {many['rps']:.0f} | {many['p50']:.2f} | "
                     f"{many['p99']:.2f} | {one['errors'] + many['errors']} | {many['rps'] / one_proc:.2f}× | "
                     f"{many['rps'] / relay:.2f}× |")
    p50 = {name: one["p50"] for name, one, _ in results}
    added = p50["router + shared_state, one process"] - p50["router, one process"]
    report = "\n".join(lines) + (
        f"\n\nWhat Redis adds at 1 connection (p50, shared_state vs none, one process): {added * 1000:+.0f} µs "
        "(a Lua call to take the slot; giving it back is not waited for).\n")
    print(report)
    if a.write:
        _write_results("replicas", f"`.venv/bin/python bench/replicas.py --duration {d} --write`", report)
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
