"""``homelab usage``: who used which GPU, for how long, at what energy — from the decision logs
(rotated files included), as a table, and as a stacked bar chart of GPU-hours per client per day."""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from shared.jsonl import iter_jsonl, log_dir

Row = dict[str, float]


def parse_since(text: str) -> float:
    """``7d``, ``12h``, ``30m`` → seconds."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([dhm])", text.strip())
    if m is None:
        raise ValueError(f"--since {text!r}: a number and d, h or m (e.g. 7d)")
    return float(m.group(1)) * {"d": 86400, "h": 3600, "m": 60}[m.group(2)]


def collect(path: Path, since: float, now: float | None = None) -> list[dict[str, Any]]:
    """The answered requests of the window (refusals carry no route and no GPU time)."""
    start = (now or time.time()) - since
    return [d for d in iter_jsonl(path, rotated=True)
            if d.get("route") and isinstance(d.get("ts"), int | float) and d["ts"] >= start]


def table(lines: list[dict[str, Any]], by: str) -> tuple[list[str], dict[str, Row], dict[str, Row]]:
    """Rows keyed by client, route or day; and each route's GPU-seconds by client (the share)."""
    rows: dict[str, Row] = defaultdict(lambda: defaultdict(float))
    shares: dict[str, Row] = defaultdict(lambda: defaultdict(float))
    for d in lines:
        key = {"client": d.get("client") or "anonymous", "route": d["route"],
               "day": time.strftime("%Y-%m-%d", time.localtime(d["ts"]))}[by]
        found = d.get("usage")
        usage: dict[str, Any] = found if isinstance(found, dict) else {}
        r = rows[key]
        r["requests"] += 1
        r["tokens"] += float(usage.get("prompt_tokens") or d.get("tokens") or 0) + float(
            usage.get("completion_tokens") or 0)
        r["gpu_h"] += float(d.get("gpu_s") or 0) / 3600
        r["kwh"] += float(d.get("energy_wh") or 0) / 1000
        shares[d["route"]][d.get("client") or "anonymous"] += float(d.get("gpu_s") or 0)
    return sorted(rows), rows, shares


def render(keys: list[str], rows: dict[str, Row], shares: dict[str, Row], by: str) -> str:
    w = max([len(by), *(len(k) for k in keys)]) + 2
    out = [f"{by:<{w}}{'requests':>10}{'tokens':>12}{'GPU-hours':>12}{'kWh':>10}"]
    for k in keys:
        r = rows[k]
        out.append(f"{k:<{w}}{int(r['requests']):>10}{int(r['tokens']):>12}{r['gpu_h']:>12.4f}{r['kwh']:>10.4f}")
    out.append("")
    out.append("share of each GPU's time")
    for route in sorted(shares):
        total = sum(shares[route].values()) or 1.0
        parts = ", ".join(f"{c} {100 * s / total:.0f}%" for c, s in sorted(shares[route].items(), key=lambda x: -x[1]))
        out.append(f"  {route}: {parts}")
    return "\n".join(out)


def plot(lines: list[dict[str, Any]], target: Path) -> None:
    """A stacked bar chart: GPU-hours per client, one bar a day."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise RuntimeError("the chart needs matplotlib, which scripts/install.sh installs; by hand: "
                           ".venv/bin/pip install -e '.[plot]'") from exc
    hours: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for d in lines:
        day = time.strftime("%Y-%m-%d", time.localtime(d["ts"]))
        hours[d.get("client") or "anonymous"][day] += float(d.get("gpu_s") or 0) / 3600
    days = sorted({day for per in hours.values() for day in per})
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=100)
    x = list(range(len(days)))
    bottom = [0.0] * len(days)
    for client in sorted(hours):
        values = [hours[client].get(day, 0.0) for day in days]
        ax.bar(x, values, bottom=bottom, label=client, width=0.6)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    # a week's room at least: one day is a thin bar with its date, not a slab filling the chart
    slots = max(len(days), 7)
    ax.set_xlim(-0.5 - (slots - len(days)) / 2, len(days) - 0.5 + (slots - len(days)) / 2)
    ax.set_xticks(x, [time.strftime("%a %d %b", time.strptime(d, "%Y-%m-%d")) for d in days])
    ax.set_title("GPU-hours per client per day")
    ax.set_ylabel("GPU-hours")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)  # beside the bars, never on them
    if len(days) > 7:
        fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(target)
    plt.close(fig)


def add_arguments(sub: Any) -> None:
    u = sub.add_parser("usage", help="who used which GPU, how long, how much energy (from the decision logs)")
    u.add_argument("--since", default="7d", help="the window: 7d, 24h, 30m (default 7d)")
    u.add_argument("--by", choices=("client", "route", "day"), default="client")
    u.add_argument("--plot", type=Path, default=None, help="also write a stacked bar chart (PNG) of GPU-hours")
    u.add_argument("--log", type=Path, default=None,
                   help="the decision log (default: $HOMELAB_LOG_DIR/router-decisions.jsonl)")


def run(a: argparse.Namespace) -> int:
    try:
        since = parse_since(a.since)
    except ValueError as exc:
        print(f"homelab usage: {exc}", file=sys.stderr)
        return 2
    path = a.log or log_dir() / "router-decisions.jsonl"
    lines = collect(path, since)
    if not lines:
        print(f"homelab usage: no answered requests in {path} (and its rotated files) in the last {a.since}")
        return 0
    keys, rows, shares = table(lines, a.by)
    print(render(keys, rows, shares, a.by))
    if a.plot is not None:
        try:
            plot(lines, a.plot)
        except RuntimeError as exc:
            print(f"homelab usage: {exc}", file=sys.stderr)
            return 2
        print(f"\nchart: {a.plot}")
    return 0
