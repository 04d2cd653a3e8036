"""A local Mosquitto from mosquitto/mosquitto.conf, for the embedded default and the tests."""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

BASE_CONF = Path(__file__).resolve().parents[1] / "mosquitto" / "mosquitto.conf"


def local_config(port: int, data_dir: Path, *, password_file: Path | None = None, acl_file: Path | None = None,
                 base: Path = BASE_CONF) -> str:
    """The repo's broker config with the listener, data dir and auth swapped for a local run."""
    conf = base.read_text()
    conf = re.sub(r"^persistence_location .*$", f"persistence_location {data_dir}/", conf, flags=re.M)
    conf = re.sub(r"^listener .*$", f"listener {port} 127.0.0.1", conf, flags=re.M)
    if password_file is not None:
        conf = re.sub(r"^password_file .*$", f"password_file {password_file}", conf, flags=re.M)
    else:
        conf = re.sub(r"^allow_anonymous .*$", "allow_anonymous true", conf, flags=re.M)
        conf = re.sub(r"^password_file .*$", "", conf, flags=re.M)
    acl = f"acl_file {acl_file}" if acl_file is not None else ""
    conf = re.sub(r"^acl_file .*$", acl, conf, flags=re.M)
    if os.geteuid() == 0:
        # as root mosquitto drops to user "mosquitto", which cannot write a data dir made by root
        conf += "\nuser root\n"
    return conf


def port_answers(host: str = "127.0.0.1", port: int = 1883) -> bool:
    """Does anything accept a TCP connection there (a broker on :1883 by default)?"""
    try:
        socket.create_connection((host, port), 0.3).close()
        return True
    except OSError:
        return False
