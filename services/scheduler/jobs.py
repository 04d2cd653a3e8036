"""Jobs from YAML and the due-job logic, with an injected clock."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from services.scheduler.schedule import Schedule, parse_schedule


class JobSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    schedule: str
    check: str | None = None  # a built-in check (services.scheduler.checks.CHECKS)
    command: tuple[str, ...] = ()  # or a script: its output is the alert, empty output a silent tick
    options: dict[str, Any] = Field(default_factory=dict)
    enabled: bool = True
    timeout: float = Field(default=120.0, gt=0)

    @model_validator(mode="after")
    def _one(self) -> JobSpec:
        if bool(self.check) == bool(self.command):
            raise ValueError(f"job {self.name}: give exactly one of check or command")
        return self


class JobsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    jobs: list[JobSpec]


def load_jobs(path: Path) -> list[JobSpec]:
    try:
        data = yaml.safe_load(path.read_text())
        return [j for j in JobsFile.model_validate(data).jobs if j.enabled]
    except (OSError, yaml.YAMLError, ValidationError) as exc:
        raise ValueError(f"{path}: {exc}") from exc


@dataclass
class Planned:
    spec: JobSpec
    schedule: Schedule
    next_at: datetime | None
    runs: int = 0


@dataclass
class Plan:
    jobs: list[Planned] = field(default_factory=list)

    @classmethod
    def build(cls, specs: list[JobSpec], now: datetime) -> Plan:
        plan = cls()
        for spec in specs:
            sched = parse_schedule(spec.schedule, now)
            first = sched.at if sched.kind == "once" else sched.next_run(now)
            plan.jobs.append(Planned(spec, sched, first))
        return plan

    def due(self, now: datetime) -> list[JobSpec]:
        """Jobs whose time has come; each is rescheduled (a one-shot is done after its run)."""
        out = []
        for p in self.jobs:
            if p.next_at is not None and p.next_at <= now:
                out.append(p.spec)
                p.runs += 1
                p.next_at = None if p.schedule.kind == "once" else p.schedule.next_run(now)
        return out

    def next_wake(self) -> datetime | None:
        times = [p.next_at for p in self.jobs if p.next_at is not None]
        return min(times) if times else None
