"""``homelab sim-upstream``: run one simulated OpenAI-compatible model server."""

from __future__ import annotations

import argparse
import asyncio
from typing import get_args

from services.sim_upstream.server import ENGINES, Fault, SimConfig, SimUpstream
from shared.service import stop_event


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--model", default="sim-model")
    ap.add_argument("--ttft", type=float, default=0.0, help="seconds to the first token")
    ap.add_argument("--per-token", type=float, default=0.0, help="seconds between tokens")
    ap.add_argument("--words", type=int, default=12, help="answer length in words")
    ap.add_argument("--no-vision", action="store_true", help="answer image parts with 400 (LM Studio)")
    ap.add_argument("--slots", type=int, default=None, help="concurrent requests before 503 busy")
    ap.add_argument("--no-continuation", action="store_true", help="refuse assistant-prefill continuation")
    ap.add_argument("--engine", default="vllm", choices=ENGINES,
                    help="reproduce this engine's error bodies, stream endings and prefill behaviour")
    ap.add_argument("--fault", default="none", choices=get_args(Fault), metavar="FAULT",
                    help="one of: " + ", ".join(get_args(Fault)))
    ap.add_argument("--fault-after", type=int, default=2)
    ap.add_argument("--fault-delay", type=float, default=30.0)
    ap.add_argument("--tool-format", default="native",
                    choices=("native", "hermes", "glm45", "llama3_json", "mistral"),
                    help="how tool calls come back: native tool_calls (vLLM with a parser), or a model's markup "
                         "as text")
    ap.add_argument("--no-auto-tool-choice", action="store_true",
                    help='answer tools with tool_choice auto with 400, as vLLM without --enable-auto-tool-choice')
    ap.add_argument("--tool-call-any", action="store_true",
                    help="offered tools and a user turn last: call the first tool offered (with no arguments)")


async def _serve(sim: SimUpstream) -> None:
    await sim.start()
    print(f"sim-upstream {sim.config.model} on {sim.base_url}", flush=True)
    await stop_event().wait()
    await sim.close()


def add_frigate_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--port", type=int, default=5000)
    ap.add_argument("--host", default="127.0.0.1")


def run_frigate(a: argparse.Namespace) -> int:
    from services.sim_upstream.frigate import SimFrigate

    async def serve() -> None:
        sim = SimFrigate(a.host, a.port)
        await sim.start()
        print(f"sim-frigate on {sim.url}", flush=True)
        await stop_event().wait()
        await sim.close()

    asyncio.run(serve())
    return 0


def run(a: argparse.Namespace) -> int:
    cfg = SimConfig(model=a.model, ttft=a.ttft, per_token=a.per_token, words=a.words, vision=not a.no_vision,
                    slots=a.slots, continuation=not a.no_continuation, fault=a.fault,
                    fault_after=a.fault_after, fault_delay=a.fault_delay, engine=a.engine, tool_format=a.tool_format,
                    auto_tool_choice=not a.no_auto_tool_choice, tool_call_any=a.tool_call_any)
    asyncio.run(_serve(SimUpstream(cfg, a.host, a.port)))
    return 0
