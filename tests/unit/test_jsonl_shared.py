"""A JSONL log written by several processes at once (the router's ``--workers``): whole lines, every
line once, through rotations that any of them may start."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import orjson

from shared.jsonl import log_files

ROOT = Path(__file__).resolve().parents[2]

WRITER = """
import sys
import time
from pathlib import Path
from shared.jsonl import JsonlWriter
w = JsonlWriter(Path(sys.argv[1]), max_bytes=40_000, backups=50)
for i in range(int(sys.argv[3])):
    w.write({"writer": sys.argv[2], "i": i, "pad": "x" * (i % 97)})
    time.sleep(0.001)  # a few seconds of writing: several rotations, each by whichever writer fills the file
w.close()
"""


def test_three_processes_share_one_log_whole_lines_every_line_once(tmp_path: Path) -> None:
    log = tmp_path / "router-decisions.jsonl"
    n = 3000
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HOMELAB_LOG_SHARED": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(log), name, str(n)], env=env)
             for name in ("a", "b", "c")]
    assert [p.wait(120) for p in procs] == [0, 0, 0]
    files = log_files(log)
    assert len(files) >= 3  # it rotated, more than once
    seen: dict[str, list[int]] = {"a": [], "b": [], "c": []}
    for f in files:
        data = gzip.decompress(f.read_bytes()) if f.suffix == ".gz" else f.read_bytes()
        for line in data.splitlines():
            rec = orjson.loads(line)  # a torn or interleaved line would not parse
            seen[rec["writer"]].append(rec["i"])
    for name, got in seen.items():
        assert sorted(got) == list(range(n)), (name, len(got), len(set(got)))
