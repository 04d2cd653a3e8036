"""A real mosquitto process for tests, started from mosquitto/mosquitto.conf on a free port."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

from tests.harness import ROOT, free_port

BASE_CONF = ROOT / "mosquitto" / "mosquitto.conf"


class Broker:
    def __init__(self, workdir: Path, *, users: dict[str, str] | None = None, acl: bool = False) -> None:
        if shutil.which("mosquitto") is None:
            raise RuntimeError("mosquitto is not installed (scripts/install.sh installs it)")
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "data").mkdir(exist_ok=True)
        self.port = free_port()
        self.users = users or {}
        conf = BASE_CONF.read_text()
        conf = re.sub(r"^persistence_location .*$", f"persistence_location {self.dir / 'data'}/", conf, flags=re.M)
        conf = re.sub(r"^listener .*$", f"listener {self.port} 127.0.0.1", conf, flags=re.M)
        if self.users:
            pw = self.dir / "passwords"
            pw.write_text("")
            for user, password in self.users.items():
                subprocess.run(["mosquitto_passwd", "-b", str(pw), user, password], check=True)
            pw.chmod(0o600)
            conf = re.sub(r"^password_file .*$", f"password_file {pw}", conf, flags=re.M)
        else:
            conf = re.sub(r"^allow_anonymous .*$", "allow_anonymous true", conf, flags=re.M)
            conf = re.sub(r"^password_file .*$", "", conf, flags=re.M)
        if acl:
            conf = re.sub(r"^acl_file .*$", f"acl_file {ROOT / 'mosquitto' / 'acl'}", conf, flags=re.M)
        else:
            conf = re.sub(r"^acl_file .*$", "", conf, flags=re.M)
        if os.geteuid() == 0:
            # as root mosquitto drops to user "mosquitto", which cannot write this test's data dir
            conf += "\nuser root\n"
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
