"""The real-agent tier: real coding agents (Codex CLI, aider) talking to the router."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CACHE = Path(os.environ.get("HOMELAB_CACHE") or Path.home() / ".cache" / "homelab")
CODEX = CACHE / "npm" / "codex-0.171.0" / "node_modules" / ".bin" / "codex"
AIDER = CACHE / "venvs" / "aider-0.86.2" / "bin" / "aider"
# Claude Code's native binary, from the platform package npm installs beside @anthropic-ai/claude-code
CLAUDE = CACHE / "npm" / "claude-code-2.1.332" / "node_modules" / "@anthropic-ai" / "claude-code-linux-x64" / "claude"


def _need(path: Path, what: str) -> Path:
    if not path.exists():
        pytest.fail(f"{what} is not installed at {path}: run `bash scripts/install-agents.sh` "
                    "(scripts/test.sh runs it; ~3-4 min the first time, cached after)", pytrace=False)
    return path


@pytest.fixture(scope="session")
def codex() -> Path:
    return _need(CODEX, "Codex CLI 0.171.0")


@pytest.fixture(scope="session")
def claude_code() -> Path:
    return _need(CLAUDE, "Claude Code 2.1.332")


@pytest.fixture(scope="session")
def aider() -> Path:
    return _need(AIDER, "aider 0.86.2")
