"""Which instance of a service this process is: a stable slot per state directory (0 for the first
process, 1 for a second one started beside it, …), held by a lock file for the process's lifetime.

The slot names the MQTT client (``homelab-<service>-<host>-<slot>``): two instances never share a
client id (the broker would kick one off whenever the other connects), and a restarted instance takes
its old slot back, so its persistent session — and what the broker queued for it meanwhile — is its own
again.
"""

from __future__ import annotations

import fcntl
import re
import socket
from pathlib import Path
from typing import IO

MAX_SLOTS = 64


class InstanceSlot:
    def __init__(self, state_dir: Path, service: str) -> None:
        self.state_dir = state_dir
        self.service = service
        self._file: IO[str] | None = None

    def claim(self) -> int:
        folder = self.state_dir / "instances"
        folder.mkdir(parents=True, exist_ok=True)
        name = re.sub(r"[^\w.-]", "_", self.service)
        for n in range(MAX_SLOTS):
            f = open(folder / f"{name}.{n}.lock", "a+")  # noqa: SIM115 - held until release()
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.close()
                continue
            self._file = f
            return n
        raise RuntimeError(f"{MAX_SLOTS} instances of {self.service} already run on {self.state_dir}")

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


def host() -> str:
    """This machine's name as a client id may carry it."""
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"
