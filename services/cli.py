"""``homelab``: the lab's command line (embedded stack, simulated upstreams, one service at a time)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from services import runbooks, up, usage
from services.run import services_help
from services.sim_upstream import cli as sim_cli
from services.table import SERVICE_TABLE
from shared.logs import FORMATS


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
    r.add_argument("service", choices=SERVICE_TABLE, metavar="SERVICE", help=services_help())
    r.add_argument("--log-level", default="INFO")
    r.add_argument("--log-format", choices=FORMATS, default=None, help="text (default) or json: one JSON object "
                   "a line for log shippers (also HOMELAB_LOG_FORMAT)")
    c = sub.add_parser("check-config", help="check every config file (settings, policy, schedules, broker ACL)")
    c.add_argument("--config", type=Path, default=None, help="settings file (default: HOMELAB_CONFIG or "
                   "config/homelab.yaml)")
    c.add_argument("--policy", type=Path, default=None, help="routing policy (default: HOMELAB_POLICY or "
                   "config/routing_policy.yaml)")
    c.add_argument("--schedules", type=Path, default=None,
                   help="jobs file (default: the settings' scheduler.jobs_file)")
    c.add_argument("--acl", type=Path, default=None, help="broker ACL (default: mosquitto/acl)")
    st = sub.add_parser("status", help="one screen for the whole lab; exit 0 well, 1 something down, 2 cannot tell")
    st.add_argument("--json", action="store_true", help="the same as JSON")
    st.add_argument("--router", default=None, help="router base URL (default: HOMELAB_ROUTER_URL)")
    hd = sub.add_parser("ha-dashboard", help="print the Home Assistant Cameras dashboard for your cameras (YAML)")
    hd.add_argument("cameras", nargs="+", help="camera names as Frigate/Ring name them (e.g. front_door back-yard)")
    cl = sub.add_parser("client", help="clients of the lab: `homelab client add NAME` makes a key")
    cl.add_argument("action", choices=("add",))
    cl.add_argument("name", help="the client's name (on every decision-log line it sends)")
    cl.add_argument("--class", dest="klass", default="interactive", choices=("camera", "interactive", "batch"),
                    help="camera takes the slots routes reserve for it; default interactive")
    cl.add_argument("--routes", nargs="*", default=None, help="the routes it may use (default: all)")
    runbooks.add_arguments(sub)
    usage.add_arguments(sub)
    a = ap.parse_args(argv)
    if a.cmd == "usage":
        return usage.run(a)
    if a.cmd == "client":
        import hashlib
        import secrets

        key = "hl-" + secrets.token_urlsafe(32)
        entry = {"key_sha256": hashlib.sha256(key.encode()).hexdigest(), "class": a.klass}
        if a.routes:
            entry["routes"] = a.routes
        import yaml

        print(f"key for {a.name} (shown once; the policy keeps only its sha256):\n  {key}\n")
        print("paste under clients: in the routing policy, then `homelab reload`:")
        print(yaml.safe_dump({"clients": {a.name: entry}}, sort_keys=False), end="")
        return 0
    if a.cmd == "ha-dashboard":
        import yaml

        from services.vision_notifier.ha import cameras_dashboard

        print("# homelab Cameras dashboard: lovelace: dashboards: homelab-cameras: {mode: yaml, "
              "filename: dashboards/homelab_cameras.yaml, title: Cameras}")
        print(yaml.safe_dump(cameras_dashboard(a.cameras), sort_keys=False), end="")
        return 0
    if a.cmd == "status":
        import os

        from services.status import run as status
        from shared.settings import SettingsError, load_settings

        try:
            settings = load_settings()
        except SettingsError as exc:
            print(f"homelab status: {exc}", file=sys.stderr)
            return 2
        router = a.router or os.environ.get("HOMELAB_ROUTER_URL") or settings.router_url
        return status(settings, router, a.json)
    if a.cmd in runbooks.COMMANDS:
        return runbooks.run(a)
    if a.cmd == "check-config":
        from services.check_config import run as check

        return check(a.config, a.policy, a.schedules, a.acl)
    if a.cmd == "run":
        from services.run import run

        return run(a.service, a.log_level.upper(), a.log_format)
    if a.cmd == "sim-upstream":
        return sim_cli.run(a)
    if a.cmd == "sim-frigate":
        return sim_cli.run_frigate(a)
    if a.cmd == "up":
        return up.run(a)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
