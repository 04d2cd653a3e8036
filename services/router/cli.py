"""``homelab-router``: serve the router, or ``explain`` a routing decision without any upstream."""

from __future__ import annotations

import argparse
import faulthandler
import logging
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from services.router.app import RouterSettings, compile_policy, create_app
from services.router.clients import open_to_network
from services.router.decide import AUTO
from services.router.draining import DrainingHttpTools
from services.router.errors import PolicyError, RequestError
from services.router.policy import Policy, load_policy
from services.router.service import policy_from_file
from shared.jsonl import check_writable
from shared.logs import FORMATS, setup_logging

DEFAULT_POLICY = Path(os.environ.get("HOMELAB_POLICY") or "config/routing_policy.yaml")


def explain(prompt: str, *, image: bool, tokens: int | None, model: str, policy_path: Path) -> str:
    decider = compile_policy(load_policy(policy_path))
    est = tokens if tokens is not None else len(prompt) // 4 + 4
    c = decider.classifier.classify(prompt)
    lines = [f"prompt: {prompt[:120]!r}{'…' if len(prompt) > 120 else ''}",
             f"model: {model}  image: {'yes' if image else 'no'}  tokens: {est}", "scores:"]
    for bucket in decider.policy.buckets:
        score = c.scores.get(bucket, 0)
        hits = ", ".join(c.matched.get(bucket, ()))
        lines.append(f"  {bucket:<16} {score}" + (f"  ({hits})" if hits else ""))
    d = decider.decide(model=model, text=prompt, has_image=image, tokens=est)
    lines += [f"bucket: {d.bucket or '-'}", f"route:  {d.route}", f"reason: {d.reason}",
              f"model sent upstream: {decider.policy.routes[d.route].model}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "explain":
        ap = argparse.ArgumentParser(prog="homelab-router explain",
                                     description="Print each bucket's score and the chosen route.")
        ap.add_argument("prompt")
        ap.add_argument("--image", action="store_true", help="the request carries an image")
        ap.add_argument("--tokens", type=int, help="estimated prompt tokens (default: from the prompt)")
        ap.add_argument("--model", default=AUTO)
        ap.add_argument("--policy", type=Path, default=DEFAULT_POLICY)
        a = ap.parse_args(argv[1:])
        try:
            print(explain(a.prompt, image=a.image, tokens=a.tokens, model=a.model, policy_path=a.policy))
        except (PolicyError, RequestError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return 0

    ap = argparse.ArgumentParser(
        prog="homelab-router", description="Serve homelab-router.",
        epilog="subcommands:\n  explain PROMPT   print each bucket's score and the route a prompt would take "
               "(no upstream needed;\n                   homelab-router explain --help)",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy", type=Path, default=DEFAULT_POLICY)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--log-level", default="info")
    ap.add_argument("--log-format", choices=FORMATS, default=None,
                    help="text (default) or json: one JSON object a line (also HOMELAB_LOG_FORMAT)")
    ap.add_argument("--access-log", action="store_true", help="one line per HTTP request on stderr (uvicorn's)")
    ap.add_argument("--workers", type=int, default=None, metavar="N",
                    help="N worker processes on one port, sharing the lab's books through the policy's "
                         "shared_state (Redis); SIGHUP replaces them one at a time, dropping no request")
    a = ap.parse_args(argv)
    setup_logging(a.log_level, a.log_format)
    try:
        settings = RouterSettings.from_env(a.policy)
        settings.host = a.host
        check_writable(settings.log_dir)
        if a.workers is not None:
            return _workers(a, settings)
        app = create_app(settings)
    except PolicyError as exc:
        print(f"homelab-router: invalid policy: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"homelab-router: {exc.strerror or exc} (set HOMELAB_LOG_DIR to a writable folder)", file=sys.stderr)
        return 2
    _warn_if_open(a.host, app.state.svc.policy)
    if a.access_log:
        logging.getLogger("uvicorn.access").setLevel(logging.INFO)
    uvicorn.run(app, host=a.host, port=a.port, loop="uvloop", http=DrainingHttpTools, access_log=a.access_log,
                log_level="warning", timeout_keep_alive=75, log_config=None)
    return 0


def _warn_if_open(host: str, policy: Policy) -> None:
    if open_to_network(host, policy):
        logging.getLogger("homelab.router").warning(
            "listening on %s with no clients: in the policy: anyone who reaches it may use the lab "
            "(homelab client add NAME makes a key)", host)


def _workers(a: argparse.Namespace, settings: RouterSettings) -> int:
    """``--workers N``: uvicorn's supervisor holds the one listening socket and runs N workers on it (a
    SIGHUP brings each replacement into service before the old one stops taking requests; the old one
    finishes its streams). The workers share the lab's books through Redis, or they may not run."""
    if a.workers < 1:
        print("homelab-router: --workers needs at least 1", file=sys.stderr)
        return 2
    policy = policy_from_file(settings.policy_path).policy  # checked here, once, with a clear error
    if not (settings.redis_url or policy.shared_state.redis_url):
        print("homelab-router: --workers needs shared state, so that the workers share caps, circuits, drains "
              "and the policy: set shared_state: {redis_url: redis://127.0.0.1:6379/0} in the policy "
              f"({settings.policy_path}) or HOMELAB_REDIS_URL", file=sys.stderr)
        return 2
    _warn_if_open(a.host, policy)
    metrics_dir = tempfile.mkdtemp(prefix="homelab-router-metrics-")
    os.environ.update({
        WORKER_POLICY: str(settings.policy_path.resolve()), WORKER_HOST: a.host,
        WORKER_LOG: f"{a.log_level} {a.log_format or ''}".strip(),
        # Prometheus's multiprocess mode: /metrics on any worker counts every worker's requests
        "PROMETHEUS_MULTIPROC_DIR": metrics_dir,
        # several processes append to the same JSONL logs: whole lines, one rotation
        "HOMELAB_LOG_SHARED": "1",
    })
    if a.access_log:
        logging.getLogger("uvicorn.access").setLevel(logging.INFO)
    try:
        uvicorn.run("services.router.cli:worker_app", factory=True, workers=a.workers, host=a.host, port=a.port,
                    loop="uvloop", http=DrainingHttpTools, access_log=a.access_log, log_level="warning",
                    timeout_keep_alive=75, log_config=None, timeout_worker_healthcheck=30)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


WORKER_POLICY, WORKER_HOST, WORKER_LOG = "HOMELAB_ROUTER_POLICY", "HOMELAB_ROUTER_HOST", "HOMELAB_ROUTER_LOG"


def worker_app() -> FastAPI:
    """One worker of ``--workers N`` (uvicorn calls this in each worker process)."""
    level, _, fmt = os.environ.get(WORKER_LOG, "info").partition(" ")
    setup_logging(level, fmt or None)
    # `kill -USR2 <worker>` writes every thread's stack to stderr: what a stuck worker is doing
    faulthandler.register(signal.SIGUSR2, all_threads=True)
    settings = RouterSettings.from_env(Path(os.environ[WORKER_POLICY]))
    settings.host = os.environ.get(WORKER_HOST, settings.host)
    return create_app(settings)


if __name__ == "__main__":
    raise SystemExit(main())
