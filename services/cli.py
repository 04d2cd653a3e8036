"""``homelab``: the lab's command line (embedded stack, simulated upstreams, one service at a time)."""

from __future__ import annotations

import argparse
import sys

from services import runbooks, up
from services.sim_upstream import cli as sim_cli


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "router":
        from services.router.cli import main as router_main

        return router_main(argv[1:])
    ap = argparse.ArgumentParser(prog="homelab", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sim = sub.add_parser("sim-upstream", help="run a simulated OpenAI-compatible upstream")
    sim_cli.add_arguments(sim)
    fr = sub.add_parser("sim-frigate", help="run a simulated Frigate API (snapshots)")
    sim_cli.add_frigate_arguments(fr)
    u = sub.add_parser("up", help="run the embedded default: simulated upstreams and the router")
    up.add_arguments(u)
    sub.add_parser("router", help="run homelab-router (same flags as homelab-router)")
    r = sub.add_parser("run", help="run one MQTT service in the foreground")
    r.add_argument("service", help="frigate_consumer | ring_listener | dedup")
    r.add_argument("--log-level", default="INFO")
    runbooks.add_arguments(sub)
    a = ap.parse_args(argv)
    if a.cmd in runbooks.COMMANDS:
        return runbooks.run(a)
    if a.cmd == "run":
        from services.run import run

        return run(a.service, a.log_level.upper())
    if a.cmd == "sim-upstream":
        return sim_cli.run(a)
    if a.cmd == "sim-frigate":
        return sim_cli.run_frigate(a)
    if a.cmd == "up":
        return up.run(a)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
