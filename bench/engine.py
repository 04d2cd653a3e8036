"""The router in front of a real inference engine: time to first token and tokens/s, direct vs through
homelab-router, side by side in one run (requests alternate, so both see the same engine state).

With no --upstream it builds the tiny test model and starts llama.cpp's server (scripts/install-engine.sh);
with one, it measures any OpenAI-compatible engine you point it at, e.g. a vLLM box:

    .venv/bin/python bench/engine.py                                   # the local llama.cpp tier
    .venv/bin/python bench/engine.py --upstream http://gpu-box:8000/v1 --model Qwen/Qwen2.5-7B-Instruct
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.router_overhead import _write_results, free_port  # noqa: E402


def wait_port(port: int, proc: subprocess.Popen[bytes] | None = None, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            if proc is not None and proc.poll() is not None:
                raise SystemExit(f"process exited with {proc.returncode}") from None
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on {port}")


def start_tiny_engine(tmp: Path) -> tuple[str, str, subprocess.Popen[bytes], dict[str, Any]]:
    from tests.engines.tiny_model import write_tiny_model

    subprocess.run(["bash", str(ROOT / "scripts" / "install-engine.sh")], check=True)
    model = write_tiny_model(tmp / "tiny.gguf")
    port = free_port()
    proc = subprocess.Popen([str(ROOT / ".venv/bin/python"), "-m", "llama_cpp.server", "--model", str(model),
                             "--model_alias", "tiny", "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048",
                             "--n_threads", "1", "--interrupt_requests", "False", "--verbose", "False"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, proc)
    # the tiny model would stop after 10 tokens: ban its end-of-turn token (id 258) for a long answer
    return f"http://127.0.0.1:{port}/v1", "tiny", proc, {"logit_bias": {"258": -100}}


def policy_for(upstream: str, model: str, tmp: Path) -> Path:
    route = {"base_url": upstream, "model": model, "vision": True, "max_concurrency": 64,
             "first_token_timeout": 120, "stream_idle_timeout": 120, "request_timeout": 600}
    if os.environ.get("HOMELAB_BENCH_API_KEY"):
        route["api_key"] = os.environ["HOMELAB_BENCH_API_KEY"]
    data = {"version": 1, "routes": {"engine": route},
            "buckets": {"chat": {"route": "engine", "keywords": ["count"]}},
            "unknown_route": "engine", "image_route": "engine",
            "health": {"probe_interval": 30, "probe_continuation": False}}
    path = tmp / "policy.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


async def one(session: aiohttp.ClientSession, url: str, body: bytes,
              headers: dict[str, str]) -> tuple[float, float, int]:
    """(ms to the first content, tokens/s after it, content chunks) for one streamed answer."""
    t0 = time.perf_counter()
    first = last = 0.0
    n = 0
    async with session.post(url, data=body, headers=headers) as r:
        r.raise_for_status()
        buf = b""
        async for piece in r.content.iter_any():
            buf += piece
            while b"\n\n" in buf:
                ev, buf = buf.split(b"\n\n", 1)
                if not ev.startswith(b"data: {"):
                    continue
                chunk = orjson.loads(ev[6:])
                if any((c.get("delta") or {}).get("content") for c in chunk.get("choices") or ()):
                    now = time.perf_counter()
                    if n == 0:
                        first = now
                    last = now
                    n += 1
    rate = (n - 1) / (last - first) if n > 1 and last > first else 0.0
    return (first - t0) * 1000, rate, n


async def measure(direct: str, via: str, model: str, n: int, max_tokens: int, extra: dict[str, Any]) -> dict[str, Any]:
    prompt = [{"role": "user", "content": "Count from 1 to 500, one number a line."}]
    body_direct = orjson.dumps({"model": model, "messages": prompt, "stream": True, "max_tokens": max_tokens,
                                "temperature": 0, **extra})
    body_via = orjson.dumps({"model": "homelab/auto", "messages": prompt, "stream": True,
                             "max_tokens": max_tokens, "temperature": 0, **extra})
    key = os.environ.get("HOMELAB_BENCH_API_KEY")
    h_direct = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    h_via = {"Content-Type": "application/json"}
    rows: dict[str, list[tuple[float, float, int]]] = {"direct": [], "router": []}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as s:
        for _ in range(2):  # warm both paths
            await one(s, direct + "/chat/completions", body_direct, h_direct)
            await one(s, via + "/chat/completions", body_via, h_via)
        for i in range(n):
            order = (("direct", direct, body_direct, h_direct), ("router", via, body_via, h_via))
            for name, base, body, headers in (order if i % 2 == 0 else order[::-1]):
                rows[name].append(await one(s, base + "/chat/completions", body, headers))
    out: dict[str, Any] = {}
    for name, vals in rows.items():
        out[name] = {"ttft_ms": statistics.median(v[0] for v in vals),
                     "tps": statistics.median(v[1] for v in vals),
                     "tokens": statistics.median(v[2] for v in vals)}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--upstream", help="an engine's OpenAI base URL (default: start the local llama.cpp tier)")
    ap.add_argument("--model", help="the model name the engine serves (with --upstream)")
    ap.add_argument("--requests", type=int, default=40, help="streamed answers per side")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--write", action="store_true", help="write bench/RESULTS.md's engine section")
    a = ap.parse_args()
    if a.upstream and not a.model:
        ap.error("--upstream needs --model (the name the engine serves)")
    tmp = Path(tempfile.mkdtemp(prefix="homelab-engine-bench-"))
    engine = None
    extra: dict[str, Any] = {}
    if a.upstream:
        upstream, model = a.upstream.rstrip("/"), a.model
        label = f"{upstream} ({model})"
    else:
        upstream, model, engine, extra = start_tiny_engine(tmp)
        label = "llama.cpp (llama-cpp-python 0.3.36, CPU, 1 thread) serving the tiny test model"
    port = free_port()
    policy = policy_for(upstream, model, tmp)
    router = subprocess.Popen([str(ROOT / ".venv/bin/homelab-router"), "--policy", str(policy),
                               "--port", str(port), "--log-level", "warning"],
                              env={**os.environ, "HOMELAB_LOG_DIR": str(tmp / "logs")})
    try:
        wait_port(port, router)
        res = asyncio.run(measure(upstream, f"http://127.0.0.1:{port}/v1", model, a.requests, a.max_tokens, extra))
    finally:
        router.send_signal(signal.SIGINT)
        router.wait(10)
        if engine is not None:
            engine.terminate()
            engine.wait(10)
    d, r = res["direct"], res["router"]
    report = "\n".join([
        f"Engine: {label}; {a.requests} streamed answers per side, alternating, max_tokens {a.max_tokens} "
        f"(median {d['tokens']:.0f} content chunks).", "",
        "| | direct | through the router | added |", "|---|---|---|---|",
        f"| time to first token, median ms | {d['ttft_ms']:.2f} | {r['ttft_ms']:.2f} | "
        f"{r['ttft_ms'] - d['ttft_ms']:+.2f} |",
        f"| tokens/s after the first, median | {d['tps']:.0f} | {r['tps']:.0f} | "
        f"{(r['tps'] / d['tps'] - 1) * 100 if d['tps'] else 0:+.1f}% |"])
    print(report)
    if a.write:
        _write_results("engine", "`.venv/bin/python bench/engine.py --write`", report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
