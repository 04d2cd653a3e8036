"""Running unattended: logs that rotate without loss, retention, homelab status, check-config, log format."""

from __future__ import annotations

import gzip
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from services.dedup.main import main as dedup_main
from services.frigate_consumer.main import main as frigate_main
from services.vision_notifier.store import NotifierStore
from shared.jsonl import JsonlWriter, disk_use, log_files, read_jsonl
from shared.logs import TextFormatter, setup_logging, trace
from shared.messages import CameraEvent
from shared.settings import Settings
from tests.broker import Broker
from tests.harness import ROOT, BackgroundLoop, Lab
from tests.pipeline import Service, wait_online

# ---- rotation and retention ----------------------------------------------------------------------


def test_rotation_loses_and_splits_no_line(tmp_path: Path) -> None:
    w = JsonlWriter(tmp_path / "router-decisions.jsonl", max_bytes=20_000, backups=50)
    n_threads, per_thread = 4, 2_500

    def writer(k: int) -> None:
        for i in range(per_thread):
            assert w.write({"thread": k, "i": i, "pad": "x" * (i % 37)})

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    w.close()
    assert w.rotations > 10 and w.errors == 0
    files = log_files(w.path)
    assert all(f.suffix == ".gz" for f in files[:-1]) and files[-1] == w.path
    for f in files[:-1]:  # every rotated file is whole lines
        assert gzip.decompress(f.read_bytes()).endswith(b"\n")
    rows = read_jsonl(w.path, rotated=True)
    assert len(rows) == n_threads * per_thread
    for k in range(n_threads):  # each thread's lines, all there, in order
        assert [r["i"] for r in rows if r["thread"] == k] == list(range(per_thread))


def test_a_simulated_month_stays_under_the_cap(tmp_path: Path) -> None:
    """A month of a busy lab (~30 decisions a minute) written fast: disk use stays bounded."""
    max_bytes, backups = 256 * 1024, 3
    w = JsonlWriter(tmp_path / "router-decisions.jsonl", max_bytes=max_bytes, backups=backups)
    line = {"request_id": "0123456789abcdef", "model": "homelab/auto", "bucket": "coding", "route": "ubuntu-6000",
            "reason": "bucket_match", "fallback_path": ["ubuntu-6000"], "status": 200, "latency_ms": 812.5}
    for i in range(30 * 60 * 24 * 30 // 10):  # a tenth of the month's lines, each ten times as long
        w.write({**line, "i": i, "scores": {f"k{j}": j for j in range(10)}, "note": "y" * 600})
    w.close()
    assert w.rotations > backups  # the oldest files were deleted
    assert len(log_files(w.path)) <= backups + 1
    assert disk_use(w.path) <= max_bytes * (backups + 1)
    rows = read_jsonl(w.path, rotated=True)
    assert rows[-1]["i"] == 30 * 60 * 24 * 30 // 10 - 1  # the newest lines are all kept
    assert [r["i"] for r in rows] == list(range(rows[0]["i"], rows[-1]["i"] + 1))  # nothing missing in between


def test_summary_reads_rotated_files(tmp_path: Path) -> None:
    w = JsonlWriter(tmp_path / "router-decisions.jsonl", max_bytes=2_000, backups=20)
    for i in range(200):
        w.write({"request_id": str(i), "route": "spark", "reason": "bucket_match", "status": 200, "latency_ms": 5.0})
    w.close()
    assert w.rotations > 5
    env = {**os.environ, "HOMELAB_LOG_DIR": str(tmp_path)}
    p = subprocess.run([sys.executable, "-m", "services.cli", "summary"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0 and "200 requests" in p.stdout and "spark 200" in p.stdout


def test_timeline_keeps_its_days_and_gives_the_space_back(tmp_path: Path) -> None:
    store = NotifierStore(tmp_path / "notifier.sqlite3")
    now = time.time()
    for i in range(3000):
        ev = CameraEvent(event_id=f"frigate:{i}", source="frigate", camera="porch", kind="person",
                         started_at=now, trace_id=f"t{i}")
        store.begin(ev)
        store.finish(ev.event_id, {"event_id": ev.event_id, "pad": "z" * 2000})
    store.begin(CameraEvent(event_id="frigate:pending", source="frigate", camera="porch", kind="person",
                            started_at=now, trace_id="tp"))
    old_age = now - 100 * 86400
    store.db.execute("UPDATE events SET received_at = ? WHERE event_id != 'frigate:2999'", (old_age,))
    before = (tmp_path / "notifier.sqlite3").stat().st_size
    assert store.prune(90) == 2999
    after = (tmp_path / "notifier.sqlite3").stat().st_size
    assert after < before / 10  # the space went back to the disk
    assert store.record("frigate:2999") is not None  # inside the window: kept
    assert [e.event_id for e, _ in store.pending()] == ["frigate:pending"]  # in progress: kept whatever its age
    assert store.prune(90) == 0
    store.close()


# ---- logs for people and for shippers ------------------------------------------------------------

def test_json_log_lines_carry_the_trace_id(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("INFO", "json")
    try:
        log = logging.getLogger("homelab.vision_notifier")
        with trace("abc123"):
            log.warning("event %s: degraded", "frigate:1")
        log.info("no event here")
    finally:
        logging.getLogger().handlers.clear()
    first, second = (json.loads(x) for x in capsys.readouterr().err.splitlines())
    assert first["trace_id"] == "abc123" and first["level"] == "warning"
    assert first["message"] == "event frigate:1: degraded" and first["logger"] == "homelab.vision_notifier"
    assert "trace_id" not in second
    rec = logging.LogRecord("x", logging.INFO, __file__, 1, "hello", (), None)
    rec.trace_id = "t9"
    assert TextFormatter().format(rec).endswith("hello trace=t9")


def test_setup_logging_quiets_http_client_chatter() -> None:
    setup_logging("INFO", "text")
    assert not logging.getLogger("httpx").isEnabledFor(logging.INFO)
    assert logging.getLogger("homelab.router").isEnabledFor(logging.INFO)
    with pytest.raises(ValueError, match="log format"):
        setup_logging("INFO", "yaml")
    logging.getLogger().handlers.clear()


def test_router_log_format_json_on_stderr(tmp_path: Path) -> None:
    env = {**os.environ, "HOMELAB_LOG_DIR": str(tmp_path / "logs")}
    port = str(_free_port())
    proc = subprocess.Popen([sys.executable, "-m", "services.router.cli", "--port", port, "--log-format", "json",
                             "--policy", str(ROOT / "config" / "routing_policy.yaml")],  # nothing listens there
                            cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        deadline = time.monotonic() + 30  # bounded: the first probes of the absent upstreams fail at once
        while sum("is now down" in x for x in lines) < 4 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)  # and no second line for the same state
    finally:
        proc.terminate()
        proc.wait(10)
        reader.join(5)
        assert proc.stderr is not None
        proc.stderr.close()
    records = [json.loads(line) for line in lines if line.startswith("{")]
    assert records, lines
    assert all({"ts", "level", "logger", "message"} <= set(x) for x in records)
    assert any("is now down" in x["message"] for x in records)  # a state change, once per route
    assert len([x for x in records if "ubuntu-4090 is now down" in x["message"]]) == 1


def _free_port() -> int:
    from tests.harness import free_port

    return free_port()


# ---- check-config ----------------------------------------------------------------------------------

def homelab(*args: str, env: dict[str, str] | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "services.cli", *args], cwd=cwd,
                          env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=60)


def test_check_config_passes_on_the_shipped_files() -> None:
    p = homelab("check-config")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "configuration OK" in p.stdout


@pytest.mark.parametrize(("file", "edit", "expect"), [
    ("config/homelab.yaml", lambda t: t.replace("notifier:", "notifer:", 1) if "notifier:" in t
     else t + "\nnotifer: {}\n", "homelab.yaml: notifer"),
    ("config/homelab.yaml", lambda t: t + "\ndedup:\n  window: -3\n", "homelab.yaml: dedup.window"),
    ("config/routing_policy.yaml", lambda t: t.replace("failover: spark", "failover: sparkk", 1),
     "failover: unknown route 'sparkk'"),
    ("config/routing_policy.yaml", lambda t: t.replace("expect_route: spark}", "expect_route: win-5090}", 1),
     "routing_policy.yaml: examples: golden cases failed"),
    ("config/schedules.yaml", lambda t: t.replace("schedule:", "shedule:", 1), "schedules.yaml: jobs.0.shedule"),
    ("config/schedules.yaml",
     lambda t: t + "\n  - {name: typo, schedule: \"every 5 parsecs\", check: upstream_health}\n",
     "schedules.yaml: jobs."),
    ("mosquitto/acl", lambda t: t.replace("topic readwrite homelab/notify/#", "topic read homelab/notify/#"),
     "acl: user vision_notifier: cannot write homelab/notify/"),
    ("mosquitto/acl", lambda t: t.replace("user dedup", "user dedupe"), "acl: user dedup: missing"),
])
def test_check_config_names_the_file_and_key(tmp_path: Path, file: str, edit: Any, expect: str) -> None:
    work = tmp_path / "lab"
    for part in ("config", "mosquitto"):
        shutil.copytree(ROOT / part, work / part)
    target = work / file
    target.write_text(edit(target.read_text()))
    p = homelab("check-config", cwd=work, env={"PYTHONPATH": str(ROOT)})
    assert p.returncode == 1, p.stdout + p.stderr
    assert expect in p.stdout, p.stdout
    # and every service refuses to start on it, with the same message
    r = homelab("run", "dedup", cwd=work, env={"PYTHONPATH": str(ROOT), "HOMELAB_MQTT_URL": "mqtt://127.0.0.1:1"})
    assert r.returncode == 2 and expect in r.stderr and "check-config" in r.stderr
    u = homelab("up", "--no-sims", cwd=work, env={"PYTHONPATH": str(ROOT)})
    assert u.returncode == 2 and expect in u.stderr


def test_help_lists_what_the_code_accepts() -> None:
    from services.sim_upstream.server import ENGINES
    from services.table import SERVICE_TABLE

    run_help = homelab("run", "--help").stdout
    for name in SERVICE_TABLE:
        assert name in run_help
    sim_help = homelab("sim-upstream", "--help").stdout
    for engine in ENGINES:
        assert engine in sim_help
    assert "silent_reset" in sim_help
    assert homelab("run", "nonsense").returncode == 2


# ---- homelab status ---------------------------------------------------------------------------------

@pytest.fixture
def settings(broker: Broker, lab: Lab, tmp_path: Path) -> Settings:
    return Settings(mqtt_url=broker.url(), router_url=lab.base_url, state_dir=tmp_path / "state",
                    log_dir=tmp_path / "logs")


def status(settings: Settings, *flags: str) -> tuple[int, Any, str]:
    env = {"HOMELAB_MQTT_URL": settings.mqtt_url, "HOMELAB_ROUTER_URL": settings.router_url}
    j = homelab("status", "--json", *flags, env=env)
    text = homelab("status", *flags, env=env)
    assert j.returncode == text.returncode
    return j.returncode, json.loads(j.stdout), text.stdout


def test_status_of_a_running_lab_with_one_part_stopped(bg: BackgroundLoop, broker: Broker, lab: Lab,
                                                      settings: Settings) -> None:
    services = {"dedup": Service(bg, dedup_main, settings), "frigate_consumer": Service(bg, frigate_main, settings)}
    try:
        for name in services:
            wait_online(bg, broker, name)
        code, s, text = status(settings)
        # what it cannot see is not well: the services this test did not start were never on the broker
        # (the whole lab up and well, status OK, is the first-hour test's: tests/e2e/test_first_hour.py)
        unseen = {p.split()[1] for p in s["problems"] if "never seen" in p}
        assert code == 1 and unseen == {"router", "ring_listener", "vision_notifier", "watchdog", "scheduler"}
        assert s["services"]["netdata_bridge"]["status"] == "not configured"  # no netdata_url: nothing to run
        assert s["services"]["dedup"]["status"] == "online" and s["services"]["dedup"]["since"] > time.time() - 60
        assert s["routes"]["spark"]["healthy"] is True and s["broker"]["ok"] is True
        assert "DOWN" in text and "! service scheduler was never seen" in text
        # one part stopped: a service
        services["dedup"].stop()
        code, s, text = status(settings)
        assert code == 1 and "service dedup is offline" in s["problems"]
        assert "! service dedup is offline" in text
        services["dedup"] = Service(bg, dedup_main, settings)
        wait_online(bg, broker, "dedup")
        # one part stopped: an upstream
        lab.stop_upstream("ubuntu-6000")
        deadline = time.monotonic() + 10
        while lab.svc.states["ubuntu-6000"].healthy and time.monotonic() < deadline:
            time.sleep(0.1)
        code, s, text = status(settings)
        assert code == 1 and any(p.startswith("route ubuntu-6000 is down") for p in s["problems"])
        lab.start_upstream("ubuntu-6000")
        # the broker gone: cannot tell
        broker.stop()
        code, s, text = status(settings)
        assert code == 2 and s["broker"]["ok"] is False and "cannot tell" in text
    finally:
        for svc in services.values():
            if svc.alive():
                svc.stop()
