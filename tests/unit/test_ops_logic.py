"""Schedules, due jobs and the watchdog's decisions, with an injected clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.scheduler.checks import histogram_quantile
from services.scheduler.jobs import JobSpec, Plan
from services.scheduler.schedule import parse_duration, parse_schedule
from services.watchdog.core import WatchdogCore
from shared.settings import RestartAction, WatchdogSettings, WatchedRoute

NOW = datetime(2026, 11, 27, 10, 7, 30, tzinfo=UTC)


@pytest.mark.parametrize(("text", "kind", "first"), [
    ("30m", "once", NOW + timedelta(minutes=30)),
    ("in 30m", "once", NOW + timedelta(minutes=30)),
    ("in 1h30m", "once", NOW + timedelta(minutes=90)),
    ("2 hours", "once", NOW + timedelta(hours=2)),
    ("every 5m", "every", NOW + timedelta(minutes=5)),
    ("every 2h", "every", NOW + timedelta(hours=2)),
    ("Every 1d", "every", NOW + timedelta(days=1)),
    ("*/15 * * * *", "cron", datetime(2026, 11, 27, 10, 15, tzinfo=UTC)),
    ("0 9 * * 1", "cron", datetime(2026, 11, 30, 9, 0, tzinfo=UTC)),  # next Monday 09:00
    ("2026-12-01T09:00:00+00:00", "once", datetime(2026, 12, 1, 9, 0, tzinfo=UTC)),
    ("2026-12-01T09:00:00", "once", datetime(2026, 12, 1, 9, 0, tzinfo=UTC)),  # naive: UTC
])
def test_schedule_table(text: str, kind: str, first: datetime) -> None:
    s = parse_schedule(text, NOW)
    assert s.kind == kind
    assert (s.at if kind == "once" else s.next_run(NOW)) == first


@pytest.mark.parametrize("bad", ["every", "every 5 parsecs", "soon", "61 * * * *", "in -5m", "0m", "every 0s", ""])
def test_bad_schedules_are_clear_errors(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_schedule(bad, NOW)


def test_durations() -> None:
    assert parse_duration("1h30m") == timedelta(minutes=90)
    assert parse_duration("45 s") == timedelta(seconds=45)
    with pytest.raises(ValueError):
        parse_duration("5m then 3h?")


def test_due_jobs_with_an_injected_clock() -> None:
    specs = [JobSpec(name="health", schedule="every 5m", check="upstream_health"),
             JobSpec(name="recheck", schedule="in 30m", check="upstream_health"),
             JobSpec(name="p95", schedule="*/15 * * * *", check="router_p95")]
    plan = Plan.build(specs, NOW)
    ran: list[tuple[int, str]] = []
    t = NOW
    for minute in range(0, 61):
        t = NOW + timedelta(minutes=minute)
        ran += [(minute, j.name) for j in plan.due(t)]
    assert [m for m, n in ran if n == "health"] == list(range(5, 61, 5))
    assert [m for m, n in ran if n == "recheck"] == [30]  # one-shot: once
    # cron at :15, :30, :45, :00 → minutes 8, 23, 38, 53 after 10:07:30
    assert [m for m, n in ran if n == "p95"] == [8, 23, 38, 53]
    assert plan.next_wake() is not None and plan.next_wake() > t  # type: ignore[operator]


def test_a_job_is_a_check_or_a_command() -> None:
    with pytest.raises(ValueError):
        JobSpec(name="x", schedule="every 5m")
    with pytest.raises(ValueError):
        JobSpec(name="x", schedule="every 5m", check="a", command=("echo",))


def test_histogram_quantile() -> None:
    buckets = [(0.1, 50.0), (1.0, 90.0), (5.0, 100.0), (float("inf"), 100.0)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.1)
    assert histogram_quantile(0.95, buckets) == pytest.approx(3.0)
    assert histogram_quantile(0.95, []) == 0.0


def watchdog(**kw: object) -> WatchdogCore:
    routes = {"win-5090": WatchedRoute(restart=RestartAction(kind="command", argv=("true",))),
              "spark": WatchedRoute(restart=RestartAction(kind="command", argv=("true",)))}
    cfg = WatchdogSettings(failures_before_restart=3, restart_budget_per_hour=2, backoff=60, routes=routes)
    return WatchdogCore(cfg.model_copy(update=kw), terminal={"spark"})


def kinds(actions: list) -> list[str]:  # type: ignore[type-arg]
    return [a.kind for a in actions]


def test_watchdog_restarts_after_n_failures_with_backoff_and_budget() -> None:
    w = watchdog()
    t = 0.0
    assert kinds(w.on_probe("win-5090", False, t)) == []
    assert kinds(w.on_probe("win-5090", False, t + 60)) == []
    assert kinds(w.on_probe("win-5090", False, t + 120)) == ["restart"]
    assert kinds(w.on_probe("win-5090", False, t + 150)) == []  # backoff: 60 s after the restart
    assert kinds(w.on_probe("win-5090", False, t + 181)) == ["restart"]
    assert kinds(w.on_probe("win-5090", False, t + 600)) == ["page"]  # budget of 2/h spent
    assert kinds(w.on_probe("win-5090", False, t + 700)) == []  # paged once
    assert kinds(w.on_probe("win-5090", True, t + 800)) == ["recovered"]
    assert kinds(w.on_probe("win-5090", False, t + 4000)) == []  # an hour later the budget is back
    w.on_probe("win-5090", False, t + 4060)
    assert kinds(w.on_probe("win-5090", False, t + 4120)) == ["restart"]


def test_terminal_or_unconfigured_routes_page_and_are_never_restarted() -> None:
    w = watchdog()
    spark = [k for i in range(10) for k in kinds(w.on_probe("spark", False, i * 60.0))]
    spark += kinds(w.on_cuda("spark", False, 700.0))
    assert spark == ["page"]  # restart configured, yet a terminal route only pages, once
    w1 = watchdog()
    assert kinds(w1.on_cuda("spark", False, 0.0)) == ["page"]
    w2 = watchdog()
    out = [k for i in range(5) for k in kinds(w2.on_probe("ubuntu-6000", False, i * 60.0))]
    assert out == ["page"]


def test_cuda_failure_recovers_a_route() -> None:
    w = watchdog()
    assert kinds(w.on_cuda("win-5090", True, 0)) == []
    assert kinds(w.on_cuda("win-5090", False, 0)) == ["recover_cuda"]
