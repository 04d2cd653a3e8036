"""``homelab up``: the embedded default — a local broker if none, four simulated upstreams, the router
and the MQTT services, each a supervised child process."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from services.broker import local_config, port_answers
from services.router.policy import load_policy
from shared import admin_token
from shared.service import stop_event

FRIGATE_PORT = 5000
READY_WAIT = 30.0  # seconds for every route to answer its first probe before the banner says so anyway

# The lab's rough time to first token per route (seconds); scaled down by default.
LAB_TTFT = {"ubuntu-6000": 3.0, "win-5090": 2.0, "spark": 5.0}


@dataclass
class Child:
    name: str
    argv: list[str]
    proc: asyncio.subprocess.Process | None = None
    restarts: int = 0
    # the port it listens on, and what to tell the user when another program holds it
    port: int | None = None
    host: str = "127.0.0.1"
    remedy: str = ""


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--policy", type=Path, default=Path("config/routing_policy.yaml"))
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--latency-scale", type=float, default=0.2,
                    help="multiply the lab's time to first token of the big models (2-5 s); 1 = real")
    ap.add_argument("--vision-ttft", type=float, default=0.6, help="the vision model's time to first token (s)")
    ap.add_argument("--no-sims", action="store_true", help="do not start simulated upstreams")
    ap.add_argument("--no-services", action="store_true", help="router only: no MQTT services")


def _children(a: argparse.Namespace) -> list[Child]:
    policy = load_policy(a.policy)
    exe = [sys.executable, "-m", "services.cli"]
    out = []
    if not a.no_sims:
        for name, route in policy.routes.items():
            port = int(route.base_url.split(":")[2].split("/")[0])
            ttft = a.vision_ttft if name == "ubuntu-4090" else LAB_TTFT.get(name, 1.0) * a.latency_scale
            argv = [*exe, "sim-upstream", "--port", str(port), "--model", route.model,
                    "--ttft", f"{ttft:.3f}", "--per-token", f"{0.02 * a.latency_scale:.4f}"]
            if not route.vision:
                argv.append("--no-vision")
            if not route.continuation:
                argv.append("--no-continuation")
            # the lab's engines: LM Studio on the Windows box, vLLM on the others; the vLLM models write
            # their tool calls as markup (GLM-4.5, Qwen) that the route's tool_parser turns into calls
            argv += ["--engine", "lmstudio" if name == "win-5090" else "vllm", "--tool-call-any"]
            if route.tool_parser != "none":
                argv += ["--tool-format", route.tool_parser, "--no-auto-tool-choice"]
            out.append(Child(f"sim:{name}", argv, port=port,
                             remedy=f"the simulated upstream of route {name}: free the port, or give the route "
                                    f"another base_url in {a.policy} (or run with --no-sims against real upstreams)"))
    out.append(Child("router", [*exe, "router", "--policy", str(a.policy), "--host", a.host,
                                "--port", str(a.port)], port=a.port, host=a.host,
                     remedy="the router: choose another with --port"))
    if not a.no_services:
        from services.run import SERVICES

        # the bridge only runs when there is a Netdata to bridge
        netdata = bool(_configured_netdata())  # settings already apply HOMELAB_NETDATA_URL
        out += [Child(name, [*exe, "run", name]) for name in SERVICES if name != "netdata_bridge" or netdata]
        if not os.environ.get("HOMELAB_FRIGATE_URL") and not a.no_sims:
            # no Frigate configured: a simulated one serves snapshots, so a hand-published event
            # goes through the whole triage path
            out.append(Child("sim:frigate", [*exe, "sim-frigate", "--port", str(FRIGATE_PORT)], port=FRIGATE_PORT,
                             remedy="the simulated Frigate: set HOMELAB_FRIGATE_URL to your Frigate, or free "
                                    "the port"))
    return out


def _configured_netdata() -> str | None:
    from shared.settings import SettingsError, load_settings

    try:
        return load_settings().netdata_url
    except SettingsError:
        return None


def _local_broker(state_dir: Path) -> Child | None:
    """Start Mosquitto from mosquitto/ when no broker is configured and none answers on :1883."""
    if os.environ.get("HOMELAB_MQTT_URL") or port_answers():
        return None
    if shutil.which("mosquitto") is None:
        print("homelab up: no MQTT broker on 127.0.0.1:1883 and no mosquitto binary; "
              "install mosquitto or set HOMELAB_MQTT_URL", file=sys.stderr)
        return None
    data = (state_dir / "mosquitto").resolve()
    data.mkdir(parents=True, exist_ok=True)
    conf = data / "mosquitto.conf"
    conf.write_text(local_config(1883, data))
    return Child("mosquitto", ["mosquitto", "-c", str(conf)])


def port_free(host: str, port: int) -> bool:
    """Can a server bind there (as our servers do, with SO_REUSEADDR)? False when a program listens."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def port_conflicts(children: list[Child]) -> list[str]:
    """One line per port the lab needs that another program holds (checked before anything starts)."""
    return [f"homelab up: port {c.port} is in use by another program; it is for {c.remedy}"
            for c in children if c.port is not None and not port_free(c.host, c.port)]


async def _supervise(child: Child, stop: asyncio.Event) -> None:
    backoff = 0.5
    while not stop.is_set():
        child.proc = await asyncio.create_subprocess_exec(*child.argv, env=os.environ.copy())
        waiter = asyncio.ensure_future(child.proc.wait())
        stopper = asyncio.ensure_future(stop.wait())
        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if stop.is_set():
            stopper.cancel()
            if child.proc.returncode is None:
                child.proc.terminate()
                try:
                    await asyncio.wait_for(waiter, 5)
                except TimeoutError:
                    child.proc.kill()
            return
        stopper.cancel()
        child.restarts += 1
        print(f"homelab up: {child.name} exited with {child.proc.returncode}; restarting in {backoff:.1f}s",
              file=sys.stderr, flush=True)
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, 10.0)


async def _wait_ready(base: str, seconds: float = 30.0) -> bool:
    """The router answers (a lab with ``clients:`` answers a keyless request with 401: that is up too)."""
    async with aiohttp.ClientSession() as s:
        for _ in range(int(seconds * 10)):
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with s.get(base + "/v1/models") as r:
                    if r.status in (200, 401):
                        return True
            await asyncio.sleep(0.1)
    return False


async def _routes_down(base: str, seconds: float = READY_WAIT) -> list[str]:
    """Wait until every route has answered a health probe; the routes that still have not, after ``seconds``."""
    down: list[str] = []
    async with aiohttp.ClientSession() as s:
        for _ in range(int(seconds * 10)):
            with contextlib.suppress(aiohttp.ClientError, OSError, ValueError):
                async with s.get(base + "/stats") as r:
                    routes = (await r.json()).get("routes", {})
                down = [n for n, st in routes.items() if not (st.get("last_probe_at") and st.get("probe_ok"))]
                if routes and not down:
                    return []
            await asyncio.sleep(0.1)
    return down


def venv_bin() -> str:
    """Where this install's commands are, as a person types it from here (``.venv/bin``)."""
    bindir = Path(sys.executable).parent
    with contextlib.suppress(ValueError):
        return str(bindir.relative_to(Path.cwd()))
    return str(bindir)


def banner(host: str, port: int, new_token: str | None = None, token_file: Path | None = None) -> str:
    base = f"http://{host}:{port}/v1"
    b = venv_bin()
    token = ""
    if new_token is not None and token_file is not None:
        token = (f"\n  admin token (new, shown once; kept in {token_file}, mode 0600, where `{b}/homelab` finds it):"
                 f"\n    {new_token}\n")
    return f"""
homelab-router is up: {base}   (every route answered its health probe)
{token}
  curl -s {base}/chat/completions -H 'Content-Type: application/json' \\
    -d '{{"model": "homelab/auto", "messages": [{{"role": "user", "content": "Refactor this function"}}]}}'

  {b}/python -c "from openai import OpenAI; c = OpenAI(base_url='{base}', api_key='none'); \\
print(c.chat.completions.create(model='homelab/auto', messages=[{{'role': 'user', 'content': 'hi'}}]).model)"

  {b}/homelab-router explain "Review the security of this code"
  {b}/homelab status
  {b}/homelab upstreams
  camera pipeline: mosquitto_sub -v -t 'homelab/#' -t 'homeassistant/#' -T 'homelab/cameras/+/snapshot'
  metrics: http://{host}:{port}/metrics   stats: http://{host}:{port}/stats   (Ctrl-C stops everything)
  (`source {b}/activate` puts homelab and homelab-router on your PATH)
"""


async def _main(a: argparse.Namespace) -> int:
    stop = stop_event()
    state_dir = Path(os.environ.get("HOMELAB_STATE_DIR") or "state")
    children = _children(a)
    broker = None if a.no_services else _local_broker(state_dir)
    if broker is not None:
        children.insert(0, broker)
    conflicts = port_conflicts(children)
    if conflicts:
        for line in conflicts:
            print(line, file=sys.stderr)
        return 2
    os.environ.setdefault("HOMELAB_ROUTER_URL", f"http://{a.host}:{a.port}/v1")
    if not a.no_services:  # the router publishes its routes' health (and its status) on the bus too
        os.environ.setdefault("HOMELAB_MQTT_URL", "mqtt://127.0.0.1:1883")
    new_token: str | None = None
    if not os.environ.get("HOMELAB_ADMIN_TOKEN"):
        token, created = admin_token.ensure(state_dir)
        os.environ["HOMELAB_ADMIN_TOKEN"] = token  # the router and the watchdog get it; the CLI reads the file
        new_token = token if created else None
    base = f"http://{a.host}:{a.port}"
    async with asyncio.TaskGroup() as tg:
        for c in children:
            tg.create_task(_supervise(c, stop), name=f"supervise-{c.name}")
        if await _wait_ready(base):
            down = await _routes_down(base)
            if down:
                print(f"homelab up: routes not answering their health probe yet: {', '.join(down)}",
                      file=sys.stderr, flush=True)
            print(banner(a.host, a.port, new_token, admin_token.token_file(state_dir)), flush=True)
        else:
            print("homelab up: the router did not come up; see the messages above", file=sys.stderr)
            stop.set()
        await stop.wait()
    return 0


def run(a: argparse.Namespace) -> int:
    from services.check_config import check_all

    problems = check_all(policy=a.policy)
    if problems:
        print("homelab up: the configuration has errors (homelab check-config):", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        return 2
    return asyncio.run(_main(a))
