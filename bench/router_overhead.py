"""Router overhead, side by side with the upstream called directly, in one run.

The upstream is Debian's nginx answering a fixed completion and a fixed SSE stream (never the
bottleneck); the load generator is Debian's wrk. Prints a Markdown report; --write appends nothing
and rewrites the router section of bench/RESULTS.md.

    .venv/bin/python bench/router_overhead.py [--duration 10] [--write]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
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
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.router.classify import Classifier  # noqa: E402
from services.router.policy import load_policy  # noqa: E402

COMPLETION = ('{"id":"chatcmpl-bench","object":"chat.completion","created":1,"model":"bench-model",'
              '"choices":[{"index":0,"finish_reason":"stop","message":{"role":"assistant","content":"ok"}}],'
              '"usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6}}')
CHUNK = ('data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1,"model":"bench-model",'
         '"choices":[{"index":0,"delta":{"content":"%s"},"finish_reason":null}]}\\n\\n')
WORDS = ("Hello", " from", " nginx", ",", " a", " twelve", " chunk", " stream", " for", " the", " relay", ".")
SSE = ("".join(CHUNK % w for w in WORDS) +
       'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1,"model":"bench-model",'
       '"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\\n\\ndata: [DONE]\\n\\n')
# nginx answers the router's health probe: it must list every route's model (the probe checks it)
MODELS = json.dumps({"object": "list", "data": [
    {"id": r["model"], "object": "model"}
    for r in yaml.safe_load((ROOT / "config" / "routing_policy.yaml").read_text())["routes"].values()]},
    separators=(",", ":"))
BODY = '{"model":"homelab/auto","messages":[{"role":"user","content":"Refactor this function please"}]}'
SBODY = BODY[:-1] + ',"stream":true}'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def nginx_conf(tmp: Path, json_port: int, sse_port: int) -> Path:
    conf = f"""
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy; fastcgi_temp_path {tmp}/fcgi;
  uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;
  keepalive_requests 1000000;
  server {{
    listen 127.0.0.1:{json_port};
    location = /v1/models {{ default_type application/json; return 200 '{MODELS}'; }}
    location / {{ default_type application/json; return 200 '{COMPLETION}'; }}
  }}
  server {{
    listen 127.0.0.1:{sse_port};
    location = /v1/models {{ default_type application/json; return 200 '{MODELS}'; }}
    location / {{ default_type text/event-stream; return 200 '{SSE}'; }}
  }}
}}
"""
    path = tmp / "nginx.conf"
    path.write_text(conf)
    return path


def bench_policy(tmp: Path, json_port: int, sse_port: int) -> Path:
    data = yaml.safe_load((ROOT / "config" / "routing_policy.yaml").read_text())
    for name, route in data["routes"].items():
        port = sse_port if name == "win-5090" else json_port
        route["base_url"] = f"http://127.0.0.1:{port}/v1"
        route["max_concurrency"] = 1000
    path = tmp / "policy.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def wrk(url: str, body: str, conns: int, duration: int, extra: dict[str, str] | None = None) -> dict[str, Any]:
    script = Path(tempfile.mkstemp(suffix=".lua")[1])
    headers = "".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in (extra or {}).items())
    script.write_text(f'wrk.method = "POST"\nwrk.body = [[{body}]]\n'
                      f'wrk.headers["Content-Type"] = "application/json"\n{headers}')
    threads = 1 if conns == 1 else 2
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{conns}", f"-d{duration}s", "--latency", "-s", str(script),
                          url], capture_output=True, text=True, check=True).stdout
    script.unlink()

    def ms(token: str) -> float:
        v = float(re.sub(r"[a-z]+", "", token))
        return v / 1000 if token.endswith("us") else v * 1000 if token.endswith("s") and not token.endswith(
            "ms") else v

    lat = {m.group(1): ms(m.group(2)) for m in re.finditer(r"^\s+(50|75|90|99)%\s+(\S+)", out, re.M)}
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += sum(int(x) for x in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errors += int(m.group(1))
    return {"p50": lat["50"], "p99": lat["99"], "rps": rps, "errors": errors}


async def ttfb(url: str, body: str, n: int) -> list[float]:
    """Time to the first streamed bytes, sequential requests on one keep-alive connection."""
    out = []
    async with aiohttp.ClientSession() as s:
        for _ in range(n):
            t0 = time.perf_counter()
            async with s.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
                await r.content.readany()
                out.append((time.perf_counter() - t0) * 1000)
                await r.read()
    return out


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def classifier_times() -> list[tuple[int, float]]:
    clf = Classifier(load_policy(ROOT / "config" / "routing_policy.yaml"))
    words = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dogs", "while", "we", "refactor",
             "some", "code", "and", "review", "the", "plan", "for", "a", "camera", "alert"]
    rows = []
    for tokens in (1024, 8192, 32768, 131072):
        text = ""
        i = 0
        while len(text) < tokens * 4:
            text += words[i % len(words)] + " "
            i += 1
        reps = max(3, 2_000_000 // len(text))
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(reps):
                clf.classify(text)
            best = min(best, (time.perf_counter() - t0) / reps)
        rows.append((tokens, best * 1e6))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--write", action="store_true", help="write bench/RESULTS.md's router section")
    a = ap.parse_args()
    for tool in ("nginx", "wrk"):
        if not shutil.which(tool):
            print(f"needs {tool}: apt-get install -y nginx-light wrk", file=sys.stderr)
            return 2
    tmp = Path(tempfile.mkdtemp(prefix="homelab-bench-"))
    json_port, sse_port, router_port = free_port(), free_port(), free_port()
    nginx = subprocess.Popen(["nginx", "-c", str(nginx_conf(tmp, json_port, sse_port)), "-g", "daemon off;"],
                             stderr=subprocess.DEVNULL)
    env = {**os.environ, "HOMELAB_LOG_DIR": str(tmp / "logs"), "HOMELAB_ADMIN_TOKEN": "bench"}
    policy = bench_policy(tmp, json_port, sse_port)
    router = subprocess.Popen([str(ROOT / ".venv/bin/homelab-router"), "--policy",
                               str(policy), "--port", str(router_port),
                               "--log-level", "warning"], env=env)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", router_port), 0.1).close()
                break
            except OSError:
                time.sleep(0.1)
        direct = f"http://127.0.0.1:{json_port}/v1/chat/completions"
        via = f"http://127.0.0.1:{router_port}/v1/chat/completions"
        d = a.duration
        wrk(via, BODY, 8, 2)  # warm-up
        rows = []
        for conns in (1, 32, 128):
            rd = wrk(direct, BODY, conns, d)
            rr = wrk(via, BODY, conns, d)
            rows.append((conns, rd, rr))
        sse_direct = f"http://127.0.0.1:{sse_port}/v1/chat/completions"
        chat = SBODY.replace("homelab/auto", "homelab/chat")
        srows = []
        for conns in (1, 32):
            rd = wrk(sse_direct, SBODY, conns, d)
            rr = wrk(via, chat, conns, d)
            srows.append((conns, rd, rr))
        # the same JSON load with a shadow policy loaded (every request decided twice)
        candidate = yaml.safe_load(policy.read_text())
        candidate["buckets"]["coding"]["route"] = "spark"
        candidate["size_promotions"]["table"]["coding"] = ["spark", "spark", "spark"]
        candidate["examples"] = [e for e in candidate.get("examples", []) if e.get("expect_bucket") != "coding"]
        loaded = subprocess.run(["curl", "-sf", "-o", "/dev/null", "-X", "POST", "-H", "Authorization: Bearer bench",
                                 "--data-binary", yaml.safe_dump(candidate), f"http://127.0.0.1:{router_port}/admin/shadow"])
        assert loaded.returncode == 0, "shadow policy refused"
        shadow_rows = []
        for conns in (1, 32):
            rd = wrk(direct, BODY, conns, d)
            rr = wrk(via, BODY, conns, d)
            shadow_rows.append((conns, rd, rr))
        td = asyncio.run(ttfb(sse_direct, SBODY, 300))
        # through the router, pinned to the route whose upstream streams (win-5090 = homelab/chat)
        tr = asyncio.run(ttfb(via, SBODY.replace("homelab/auto", "homelab/chat"), 300))
        rss = rss_mb(router.pid)
        clf = classifier_times()
    finally:
        router.send_signal(signal.SIGINT)
        nginx.send_signal(signal.SIGQUIT)
        router.wait(10)
        nginx.wait(10)

    lines = ["| connections | direct p50 ms | router p50 ms | added p50 ms | direct p99 ms | router p99 ms "
             "| added p99 ms | direct req/s | router req/s | router errors |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for conns, rd, rr in rows:
        lines.append(_row(conns, rd, rr))
    lines += ["", f"Streaming ({len(WORDS)} content chunks + finish + [DONE] per answer):", "",
              lines[0], lines[1]]
    for conns, rd, rr in srows:
        lines.append(_row(conns, rd, rr))
    lines += ["", "JSON with a shadow policy loaded (each request also decided by a candidate policy):", "",
              lines[0], lines[1]]
    for conns, rd, rr in shadow_rows:
        lines.append(_row(conns, rd, rr))
    md, mr = statistics.median(td), statistics.median(tr)
    lines += ["", f"Streaming time to first byte (300 sequential, median): direct {md:.3f} ms, router {mr:.3f} ms, "
              f"added {mr - md:.3f} ms", "", f"Router RSS after the run: {rss:.1f} MB", "",
              "| classifier input | time per classification | µs per 1K tokens |", "|---|---|---|"]
    for tokens, us in clf:
        lines.append(f"| {tokens // 1024}K tokens | {us:.1f} µs | {us / (tokens / 1024):.1f} |")
    report = "\n".join(lines)
    print(report)
    if a.write:
        _write_results("router", f"`.venv/bin/python bench/router_overhead.py --duration {d} --write`", report)
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


def _row(conns: int, rd: dict[str, Any], rr: dict[str, Any]) -> str:
    return (f"| {conns} | {rd['p50']:.3f} | {rr['p50']:.3f} | {rr['p50'] - rd['p50']:.3f} | "
            f"{rd['p99']:.3f} | {rr['p99']:.3f} | {rr['p99'] - rd['p99']:.3f} | {rd['rps']:.0f} | "
            f"{rr['rps']:.0f} | {rr['errors']} |")


def _write_results(section: str, command: str, report: str) -> None:
    path = ROOT / "bench" / "RESULTS.md"
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    start, end = f"<!-- {section}:start -->", f"<!-- {section}:end -->"
    block = (f"{start}\nCommand: {command}  \nRun: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
             f"{os.cpu_count()} cores\n\n{report}\n{end}")
    if start in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + f"\n\n## {section}\n\n" + block + "\n"
    path.write_text(text)


if __name__ == "__main__":
    raise SystemExit(main())
