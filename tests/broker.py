"""A real mosquitto process for tests, started from mosquitto/mosquitto.conf on a free port."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from services.broker import local_config
from tests.harness import ROOT, free_port


class Broker:
    def __init__(self, workdir: Path, *, users: dict[str, str] | None = None, acl: bool = False) -> None:
        if shutil.which("mosquitto") is None:
            raise RuntimeError("mosquitto is not installed (scripts/install.sh installs it)")
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "data").mkdir(exist_ok=True)
        self.port = free_port()
        self.users = users or {}
        pw: Path | None = None
        if self.users:
            pw = self.dir / "passwords"
            pw.write_text("")
            for user, password in self.users.items():
                subprocess.run(["mosquitto_passwd", "-b", str(pw), user, password], check=True)
            pw.chmod(0o600)
        conf = local_config(self.port, self.dir / "data", password_file=pw,
                            acl_file=ROOT / "mosquitto" / "acl" if acl else None)
        self.conf = self.dir / "mosquitto.conf"
        self.conf.write_text(conf)
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def url(self, user: str | None = None) -> str:
        cred = f"{user}:{self.users[user]}@" if user else ""
        return f"mqtt://{cred}127.0.0.1:{self.port}"

    def start(self) -> None:
        self.log = open(self.dir / "mosquitto.log", "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(["mosquitto", "-c", str(self.conf)], stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"mosquitto exited: {(self.dir / 'mosquitto.log').read_text()}") from None
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start")

    def stop(self) -> None:
        """A graceful stop (SIGTERM): the broker saves its persistence file."""
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None
            self.log.close()

    def restart(self) -> None:
        self.stop()
        self.start()
