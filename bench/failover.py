"""How fast traffic moves away from an upstream that dies, measured against real servers on loopback.

For each way of dying (refused, silent before headers, silent after the role chunk), the time from
the fault to the first answer from the failover route, next to the configured timeout.

    .venv/bin/python bench/failover.py [--write]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.router_overhead import _write_results  # noqa: E402
from tests.harness import BackgroundLoop, Lab  # noqa: E402

CODE = {"model": "homelab/auto", "messages": [{"role": "user", "content": "Refactor this function"}]}


HTTP = httpx.Client(timeout=30)


def one(lab: Lab, stream: bool) -> tuple[float, str]:
    t0 = time.perf_counter()
    r = HTTP.post(lab.base_url + "/chat/completions", json={**CODE, "stream": stream})
    r.read()
    return (time.perf_counter() - t0) * 1000, r.headers.get("x-homelab-route", "?")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--write", action="store_true")
    a = ap.parse_args()
    bg = BackgroundLoop()
    rows = []
    try:
        for fault, stream, timeout_key in (("refuse", False, None), ("hang", False, "request_timeout"),
                                           ("hang", True, "first_token_timeout"),
                                           ("slow_first_token", True, "first_token_timeout")):
            moved, after = [], []
            timeout = 0.0
            for _ in range(a.runs):
                with tempfile.TemporaryDirectory() as tmp:
                    lab = Lab(bg, Path(tmp), probes=False)
                    try:
                        one(lab, stream)  # warm
                        timeout = lab.policy["routes"]["ubuntu-6000"].get(timeout_key, 0) if timeout_key else 0
                        if fault == "refuse":
                            lab.stop_upstream("ubuntu-6000")
                        else:
                            lab.configure("ubuntu-6000", fault=fault, fault_delay=30)
                        ms, route = one(lab, stream)
                        assert route == "spark", route
                        moved.append(ms)
                        for _ in range(3):  # open the circuit
                            one(lab, stream)
                        ms, route = one(lab, stream)
                        assert route == "spark"
                        after.append(ms)
                    finally:
                        lab.close()
            label = f"{fault}{' (stream)' if stream else ''}"
            med = statistics.median(moved)
            rows.append(f"| {label} | {timeout * 1000:.0f} | {med:.1f} | {med - timeout * 1000:.1f} | "
                        f"{statistics.median(after):.1f} |")
    finally:
        bg.close()
    report = "\n".join([
        "| upstream dies by | configured timeout ms | first request after the fault, ms (median) | "
        "beyond the timeout, ms | once the circuit is open, ms |",
        "|---|---|---|---|---|", *rows])
    print(report)
    if a.write:
        _write_results("failover", "`.venv/bin/python bench/failover.py --write`", report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
