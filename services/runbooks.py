"""Runbooks as commands: ``homelab drain|undrain|reload|recover-cuda|upstreams|explain|summary``.

They talk to the router's admin API (HOMELAB_ROUTER_URL, HOMELAB_ADMIN_TOKEN, or --router/--token).
Exit codes: 0 done, 1 the router refused or failed, 2 bad usage or unreachable router.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from router_client.admin import AdminClient, AdminRefused
from router_client.client import RouterUnavailable
from shared import admin_token

COMMANDS = ("drain", "undrain", "reload", "recover-cuda", "upstreams", "explain", "summary", "cuda-probe", "shadow")


def add_arguments(sub: Any) -> None:
    for name, help_ in (("drain", "move auto traffic off a route (pins still pass)"),
                        ("undrain", "give a route its traffic back"),
                        ("recover-cuda", "run a route's CUDA recovery through the router")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("route")
        _common(p)
    _common(sub.add_parser("reload", help="re-read the routing policy (a bad file is refused)"))
    _common(sub.add_parser("upstreams", help="health, load, circuit and last error of every route"))
    sh = sub.add_parser("shadow", help="try a candidate policy on live traffic without serving it: "
                                       "load FILE | show | drop | promote")
    sh.add_argument("action", choices=("load", "show", "drop", "promote"), nargs="?", default="show")
    sh.add_argument("file", nargs="?", type=Path, help="the candidate policy (for load)")
    _common(sh)
    e = sub.add_parser("explain", help="the routing decision for a prompt (no upstream needed)")
    e.add_argument("prompt")
    e.add_argument("--image", action="store_true")
    e.add_argument("--tokens", type=int)
    e.add_argument("--policy", type=Path, default=Path("config/routing_policy.yaml"))
    s = sub.add_parser("summary", help="routing summary from router-decisions.jsonl")
    s.add_argument("--days", type=float, default=7)
    sub.add_parser("cuda-probe", help="exit 0 if a fresh cuInit(0) works on this machine, 1 if not")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--router", default=None, help="router base URL (default: HOMELAB_ROUTER_URL)")
    p.add_argument("--token", default=None,
                   help="admin token (default: HOMELAB_ADMIN_TOKEN, else the one homelab up keeps in state/)")


class NoToken(Exception):
    """No admin token anywhere the CLI looks."""


def _state_dir() -> Path:
    return Path(os.environ.get("HOMELAB_STATE_DIR") or "state")


def _client(a: argparse.Namespace) -> tuple[str, str]:
    base = (a.router or os.environ.get("HOMELAB_ROUTER_URL") or "http://127.0.0.1:8080/v1").rstrip("/")
    token = admin_token.resolve(_state_dir(), a.token)
    if not token:
        raise NoToken(f"no admin token: set HOMELAB_ADMIN_TOKEN (or pass --token); a lab started with "
                      f"`homelab up` keeps its own in {admin_token.token_file(_state_dir())}")
    return base, token


def _admin(a: argparse.Namespace, call: Callable[[AdminClient], Awaitable[dict[str, Any]]],
           what: str = "homelab") -> tuple[int, dict[str, Any]]:
    """One admin call through the router's typed client: (exit code, answer); failures said on stderr."""
    try:
        base, token = _client(a)
    except NoToken as exc:
        print(f"homelab: {exc}", file=sys.stderr)
        return 2, {}

    async def go() -> dict[str, Any]:
        async with httpx.AsyncClient() as client:
            return await call(AdminClient(base, token, client, timeout=660))

    try:
        return 0, asyncio.run(go())
    except AdminRefused as exc:
        print(f"{what}: {exc}", file=sys.stderr)
        return 1, exc.data if isinstance(exc.data, dict) else {}
    except RouterUnavailable as exc:
        print(f"homelab: {exc}", file=sys.stderr)
        return 2, {}


def _shadow(a: argparse.Namespace) -> int:
    if a.action == "load":
        if a.file is None:
            print("homelab shadow load: give the candidate policy file", file=sys.stderr)
            return 2
        try:
            text = a.file.read_text(encoding="utf-8")
        except OSError as exc:
            print(f"homelab shadow: {exc}", file=sys.stderr)
            return 2
        code, _ = _admin(a, lambda c: c.shadow_load(text), "homelab shadow")
        if code == 0:
            print(f"shadow policy loaded from {a.file}: every live request is now also decided by it")
        return code
    call: Callable[[AdminClient], Awaitable[dict[str, Any]]] = {
        "show": AdminClient.shadow, "drop": AdminClient.shadow_drop, "promote": AdminClient.shadow_promote}[a.action]
    code, data = _admin(a, call)
    if code != 0:
        return code
    if a.action == "promote":
        print("shadow policy promoted: it is the live policy now (the file on disk is unchanged)")
        return 0
    report = data.get("shadow") or data.get("final")
    if report is None:
        print("no shadow policy loaded")
        return 0
    print(f"decided {report['decided']}, agreed {report['agreed']}, disagreed {report['disagreed']}")
    if report["matrix"]:
        print(f"{'live route':<16}{'candidate':<16}{'count':<7}recent (request id: candidate keywords)")
        for row in report["matrix"]:
            recent = "; ".join(f"{x['request_id']}: {','.join(x['keywords']) or '-'}" for x in row["recent"][-3:])
            print(f"{row['live_route']:<16}{row['candidate_route']:<16}{row['count']:<7}{recent}")
    if a.action == "drop":
        print("shadow policy dropped")
    return 0


def cuda_probe() -> int:
    """A fresh cuInit(0) through libcuda (what breaks after an eGPU link flap while nvidia-smi still works)."""
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError as exc:
        print(f"cuda-probe: libcuda.so.1 not loadable: {exc}", file=sys.stderr)
        return 1
    rc = int(lib.cuInit(0))
    count = ctypes.c_int(0)
    if rc == 0:
        lib.cuDeviceGetCount(ctypes.byref(count))
    print(f"cuInit(0) = {rc}, devices = {count.value}")
    return 0 if rc == 0 else 1


def run(a: argparse.Namespace) -> int:
    cmd = a.cmd
    if cmd == "cuda-probe":
        return cuda_probe()
    if cmd == "explain":
        from services.router.cli import main as router_main

        argv = ["explain", a.prompt, "--policy", str(a.policy)] + (["--image"] if a.image else []) + (
            ["--tokens", str(a.tokens)] if a.tokens is not None else [])
        return router_main(argv)
    if cmd == "summary":
        from services.scheduler.checks import weekly_summary
        from shared.settings import load_settings

        async def summarize() -> str:
            async with httpx.AsyncClient() as client:
                return await weekly_summary(load_settings(), client, {"days": a.days})

        print(asyncio.run(summarize()))
        return 0
    if cmd == "shadow":
        return _shadow(a)
    if cmd in ("drain", "undrain"):
        code, data = _admin(a, lambda c: c.drain(a.route) if cmd == "drain" else c.undrain(a.route))
        if code == 0:
            drained = "drained (auto traffic goes to its failover; pins still pass)"
            print(f"{a.route}: {drained if cmd == 'drain' else 'back in service'}")
        return code
    if cmd == "reload":
        code, data = _admin(a, AdminClient.reload)
        if code == 0:
            print(f"policy reloaded: routes {', '.join(data['routes'])}")
        return code
    if cmd == "recover-cuda":
        code, data = _admin(a, lambda c: c.recover_cuda(a.route))
        if code == 0:
            print(f"{a.route}: CUDA recovery ok in {data.get('seconds')} s")
        return code

    async def routes(c: AdminClient) -> dict[str, Any]:
        doc = await c.upstreams_doc()
        if doc.get("shared_state") is not None:  # routers that share the lab's books: say how that is first
            print(f"shared state: {doc['shared_state']}; {doc.get('replicas')} replicas (this one: "
                  f"{doc.get('replica')})")
        routes: dict[str, Any] = doc["routes"]
        return routes

    code, data = _admin(a, routes)
    if code == 0:
        print(f"{'route':<14}{'healthy':<9}{'load':<8}{'circuit':<11}{'drained':<9}{'poisoned':<10}last error")
        for name, st in data.items():
            print(f"{name:<14}{'yes' if st['healthy'] else 'NO':<9}{st['in_flight']}/{st['max_concurrency']:<6}"
                  f"{st['circuit']:<11}{'yes' if st['drained'] else '-':<9}{'YES' if st['poisoned'] else '-':<10}"
                  f"{(st['last_error'] or '-')[:60]}")
    return code
