"""The real-engine tier: llama.cpp's OpenAI server (llama-cpp-python[server]) with a tiny model made here."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.engines.tiny_model import write_tiny_model
from tests.harness import free_port

N_CTX = 512  # tokens: the tiny vocabulary is byte-level, so a 2 KB prompt is over it


@dataclass
class Engine:
    base_url: str
    model: str
    process: subprocess.Popen[bytes]
    log: Path


def _need_engine() -> None:
    if importlib.util.find_spec("llama_cpp") is None:  # not imported here: it holds files open at exit
        pytest.fail("llama-cpp-python[server] is not installed: run `bash scripts/install-engine.sh` "
                    "(scripts/test.sh runs it; the first build takes ~3-4 min, cached after)", pytrace=False)


@pytest.fixture(scope="session")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """One llama.cpp server on a free port for the whole run (started once: ~1 s)."""
    _need_engine()
    tmp = tmp_path_factory.mktemp("llama")
    model = write_tiny_model(tmp / "tiny.gguf")
    port = free_port()
    log = tmp / "server.log"
    # interrupt_requests False: the default cuts a running stream when another request arrives
    argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--model_alias", "tiny",
            "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(N_CTX), "--n_threads", "1",
            "--interrupt_requests", "False", "--verbose", "False"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    base = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(base + "/models", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"llama.cpp server did not start:\n{log.read_text()[-3000:]}", pytrace=False)
        time.sleep(0.2)
    yield Engine(base, "tiny", proc, log)
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
