"""scheduler's I/O: run due jobs (built-in checks or scripts); non-empty output is sent as an alert."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

import httpx
import orjson

from services.scheduler.checks import CHECKS
from services.scheduler.jobs import JobSpec, Plan, load_jobs
from services.watchdog.main import run_argv
from shared.alerts import Alerter
from shared.bus import Bus
from shared.jsonl import JsonlWriter
from shared.settings import Settings

SERVICE = "scheduler"
log = logging.getLogger("homelab.scheduler")


async def run_job(spec: JobSpec, settings: Settings, client: httpx.AsyncClient) -> str:
    """A job's output (the alert text); a failing job reports its failure instead."""
    try:
        async with asyncio.timeout(spec.timeout):
            if spec.check:
                if spec.check not in CHECKS:
                    return f"job {spec.name}: unknown check {spec.check!r} (known: {', '.join(CHECKS)})"
                return (await CHECKS[spec.check](settings, client, spec.options)).strip()
            code, out = await run_argv(spec.command, spec.timeout)
            return out.strip() if code == 0 else f"job {spec.name} exited {code}: {out.strip()[-500:]}"
    except TimeoutError:
        return f"job {spec.name} did not finish within {spec.timeout:g}s"


NEXT_RUNS = "homelab/scheduler/next"


async def main(settings: Settings) -> None:
    jobs = load_jobs(settings.scheduler.jobs_file)
    plan = Plan.build(jobs, datetime.now(UTC))
    record = JsonlWriter(settings.log_dir / "scheduler.jsonl", keep_open=False)
    async with httpx.AsyncClient() as client, Bus(settings.mqtt_url, SERVICE, state_dir=settings.state_dir) as bus:
        alerter = Alerter(settings, bus, client)
        log.info("scheduler: %d jobs", len(jobs))
        published: list[tuple[str, str | None]] | None = None
        while True:
            for spec in plan.due(datetime.now(UTC)):
                out = await run_job(spec, settings, client)
                channel = await alerter.send(f"homelab: {spec.name}", out, SERVICE) if out else "silent"
                record.write({"job": spec.name, "output": out[:2000], "alert": channel})
            upcoming = [(p.spec.name, p.next_at.isoformat() if p.next_at else None) for p in plan.jobs]
            if upcoming != published:  # retained: `homelab status` shows the next runs
                await bus.publish(NEXT_RUNS, orjson.dumps([{"job": n, "next_at": t} for n, t in upcoming]),
                                  retain=True)
                published = upcoming
            await asyncio.sleep(settings.scheduler.tick)
