"""``homelab up``: the embedded default — a local broker if none, four simulated upstreams, the router
and the MQTT services, each a supervised child process."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from services.broker import local_config, port_answers
from services.router.policy import load_policy
from shared.service import stop_event

# The lab's rough time to first token per route (seconds); scaled down by default.
LAB_TTFT = {"ubuntu-6000": 3.0, "win-5090": 2.0, "spark": 5.0}


@dataclass
class Child:
    name: str
    argv: list[str]
    proc: asyncio.subprocess.Process | None = None
    restarts: int = 0


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
            # the lab's engines: LM Studio on the Windows box, vLLM on the others
            argv += ["--engine", "lmstudio" if name == "win-5090" else "vllm"]
            out.append(Child(f"sim:{name}", argv))
    out.append(Child("router", [*exe, "router", "--policy", str(a.policy), "--host", a.host,
                                "--port", str(a.port)]))
    if not a.no_services:
        from services.run import SERVICES

        # the bridge only runs when there is a Netdata to bridge
        netdata = bool(_configured_netdata())  # settings already apply HOMELAB_NETDATA_URL
        out += [Child(name, [*exe, "run", name]) for name in SERVICES if name != "netdata_bridge" or netdata]
        if not os.environ.get("HOMELAB_FRIGATE_URL") and not a.no_sims and not port_answers(port=5000):
            # no Frigate configured: a simulated one serves snapshots, so a hand-published event
            # goes through the whole triage path
            out.append(Child("sim:frigate", [*exe, "sim-frigate", "--port", "5000"]))
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


async def _wait_ready(url: str, seconds: float = 30.0) -> bool:
    async with aiohttp.ClientSession() as s:
        for _ in range(int(seconds * 10)):
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with s.get(url) as r:
                    if r.status == 200:
                        return True
            await asyncio.sleep(0.1)
    return False


def banner(host: str, port: int) -> str:
    base = f"http://{host}:{port}/v1"
    return f"""
homelab-router is up: {base}

  curl -s {base}/chat/completions -H 'Content-Type: application/json' \\
    -d '{{"model": "homelab/auto", "messages": [{{"role": "user", "content": "Refactor this function"}}]}}'

  python -c "from openai import OpenAI; c = OpenAI(base_url='{base}', api_key='none'); \\
print(c.chat.completions.create(model='homelab/auto', messages=[{{'role': 'user', 'content': 'hi'}}]).model)"

  homelab-router explain "Review the security of this code"
  camera pipeline: mosquitto_sub -v -t 'homelab/#'   (publish a Frigate event to frigate/events)
  metrics: http://{host}:{port}/metrics   stats: http://{host}:{port}/stats   (Ctrl-C stops everything)
"""


async def _main(a: argparse.Namespace) -> int:
    stop = stop_event()
    children = _children(a)
    os.environ.setdefault("HOMELAB_ROUTER_URL", f"http://{a.host}:{a.port}/v1")
    broker = None if a.no_services else _local_broker(Path(os.environ.get("HOMELAB_STATE_DIR") or "state"))
    if broker is not None:
        children.insert(0, broker)
    async with asyncio.TaskGroup() as tg:
        for c in children:
            tg.create_task(_supervise(c, stop), name=f"supervise-{c.name}")
        if await _wait_ready(f"http://{a.host}:{a.port}/v1/models"):
            print(banner(a.host, a.port), flush=True)
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
