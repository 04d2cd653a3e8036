"""The admin token of a lab started by ``homelab up``: generated on first start, kept with mode 0600
in the state directory, and found there by the CLI and the watchdog when ``HOMELAB_ADMIN_TOKEN`` is
not set. A deployment that sets ``HOMELAB_ADMIN_TOKEN`` never uses the file."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

FILE = "admin_token"


def token_file(state_dir: Path) -> Path:
    return state_dir / FILE


def load(state_dir: Path) -> str | None:
    try:
        token = token_file(state_dir).read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return token or None


def ensure(state_dir: Path) -> tuple[str, bool]:
    """The lab's token, created (0600) when there is none yet; True when it was just created."""
    found = load(state_dir)
    if found is not None:
        return found, False
    state_dir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(token_file(state_dir), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(token + "\n")
    return token, True


def resolve(state_dir: Path, explicit: str | None = None) -> str | None:
    """The token to send: the one given, else ``HOMELAB_ADMIN_TOKEN``, else the lab's file."""
    return explicit or os.environ.get("HOMELAB_ADMIN_TOKEN") or load(state_dir)
