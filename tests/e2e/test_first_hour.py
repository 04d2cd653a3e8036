"""The first hour, as a new user lives it: a fresh clone with an empty home directory runs the README's
run command, waits for the banner, runs every command the banner and the README's quick-start
blocks show, exactly as shown, and stops the lab with Ctrl-C, leaving nothing running.

It uses the lab's default ports (8080, 9401-9404, 5000) and the broker on 127.0.0.1:1883 when one
runs (else the lab's own); pip reuses this machine's wheel cache so the install takes seconds."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.harness import ROOT

README_MARK = "<!-- first-hour -->"


def banner_commands(banner: str) -> list[str]:
    """The commands the banner shows (a trailing backslash continues a command on the next line)."""
    commands: list[str] = []
    pending = ""
    for raw in banner.splitlines():
        line = raw.strip()
        if pending:
            pending += "\n" + raw
            if not line.endswith("\\"):
                commands.append(pending)
                pending = ""
            continue
        line = line.removeprefix("camera pipeline: ")
        if re.match(r"^(curl|mosquitto_sub|\.venv/bin/)", line):
            if line.endswith("\\"):
                pending = line
            else:
                commands.append(line.split("   (")[0])
    return commands


def readme_blocks() -> list[str]:
    """The README's quick-start blocks: the code blocks marked ``<!-- first-hour -->``."""
    text = (ROOT / "README.md").read_text()
    return re.findall(re.escape(README_MARK) + r"\s*```sh\n(.*?)```", text, re.S)


def test_the_readme_marks_its_quick_start_blocks() -> None:
    blocks = readme_blocks()
    assert len(blocks) >= 2 and any("mosquitto_pub" in b for b in blocks)


def test_a_new_user_s_first_hour(tmp_path: Path) -> None:
    lab = tmp_path / "homelab"
    home = tmp_path / "home"
    home.mkdir()
    subprocess.run(["git", "clone", "-q", str(ROOT), str(lab)], check=True, timeout=120)
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "LANG": "C.UTF-8",
           # the machine's wheel cache: the install is as a new user's, only faster
           "PIP_CACHE_DIR": os.environ.get("PIP_CACHE_DIR") or str(Path.home() / ".cache" / "pip")}
    up = subprocess.Popen(["bash", "scripts/up.sh"], cwd=lab, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, start_new_session=True)
    seen: list[str] = []
    assert up.stdout is not None
    # read everything it prints for as long as it runs (a full pipe would stall the lab)
    reader = threading.Thread(target=lambda: seen.extend(iter(up.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        deadline = time.monotonic() + 600
        while not any("Ctrl-C stops everything" in x for x in list(seen)):
            if up.poll() is not None and not reader.is_alive():
                pytest.fail("homelab up ended before its banner:\n" + "".join(seen[-60:]))
            if time.monotonic() > deadline:
                pytest.fail("no banner within 10 minutes:\n" + "".join(seen[-60:]))
            time.sleep(0.2)
        seen = list(seen)
        banner = "".join(seen[max(i for i, x in enumerate(seen) if "homelab-router is up" in x):])
        assert "admin token (new, shown once" in banner
        assert oct((lab / "state" / "admin_token").stat().st_mode & 0o777) == "0o600"

        commands = banner_commands(banner)
        assert len(commands) >= 6, banner
        for command in commands:
            forever = command.startswith("mosquitto_sub")
            p = subprocess.run(["bash", "-c", f"timeout 5 {command}" if forever else command], cwd=lab, env=env,
                               capture_output=True, text=True, timeout=60)
            if forever:  # it watches the bus until stopped: it showed the lab's retained state
                assert p.returncode == 124 and "homelab/router/status online" in p.stdout, (command, p.stderr)
                assert "homeassistant/" in p.stdout and "\ufffd" not in p.stdout
            else:
                assert p.returncode == 0, (command, p.stdout[-2000:], p.stderr[-2000:])
                assert "Traceback" not in p.stderr
            if "homelab status" in command:
                assert "OK: all is well" in p.stdout and "never seen" not in p.stdout, p.stdout
            if "homelab upstreams" in command:
                assert "ubuntu-4090" in p.stdout

        for block in readme_blocks():
            script = block + "\nsleep 6\nkill $(jobs -p) 2>/dev/null; wait\n"
            p = subprocess.run(["bash", "-c", script], cwd=lab, env=env, capture_output=True, text=True,
                               timeout=60)
            assert "command not found" not in p.stderr and "Traceback" not in p.stderr, (block, p.stderr)
            if "mosquitto_pub" in block:  # the camera event went the whole way, on one trace
                assert "homelab/timeline" in p.stdout and "homelab/notify/rich" in p.stdout, p.stdout[-3000:]
            else:
                assert p.returncode == 0, (block, p.stdout[-2000:], p.stderr[-2000:])
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGINT)  # Ctrl-C, as a person stops it
            try:
                up.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(up.pid, signal.SIGKILL)
                up.wait(10)
                pytest.fail("homelab up did not stop on Ctrl-C")
        reader.join(10)
        up.stdout.close()
    assert up.returncode in (0, -signal.SIGINT, 130), up.returncode
    left = subprocess.run(["pgrep", "-af", str(lab)], capture_output=True, text=True).stdout.strip()
    assert not left, f"still running after Ctrl-C:\n{left}"
