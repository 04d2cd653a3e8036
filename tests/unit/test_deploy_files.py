"""Deployment files parse, and every command they name exists (console scripts and subcommands)."""

from __future__ import annotations

import configparser
import re
import shlex
import tomllib
from pathlib import Path

import yaml

from services.run import SERVICES
from services.runbooks import COMMANDS

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"])
HOMELAB_SUBCOMMANDS = {"run", "up", "router", "sim-upstream", "sim-frigate", *COMMANDS}


def check_command(argv: list[str]) -> None:
    exe = Path(argv[0]).name
    assert exe in SCRIPTS, f"{exe} is not a console script of this project ({sorted(SCRIPTS)})"
    if exe == "homelab":
        assert argv[1] in HOMELAB_SUBCOMMANDS, argv
        if argv[1] == "run":
            assert argv[2] in SERVICES or argv[2] == "%i", argv


def test_compose_services_and_commands() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"mosquitto", "router", *SERVICES} <= set(services)
    for name, svc in services.items():
        if name == "mosquitto":
            continue
        check_command(svc["command"])
        assert svc.get("restart") == "unless-stopped" or compose["x-service"]["restart"] == "unless-stopped"
        assert "healthcheck" in svc or "healthcheck" in compose["x-service"]
    assert services["ring_listener"]["dns"]
    assert all(p.startswith("127.0.0.1:") for s in services.values() for p in s.get("ports", []))
    for cmd in ("homelab", "homelab-router"):
        assert cmd in SCRIPTS


def test_systemd_units() -> None:
    units = list((ROOT / "deploy" / "systemd").glob("*.service"))
    assert {u.name for u in units} == {"homelab-router.service", "homelab@.service"}
    for unit in units:
        cp = configparser.ConfigParser(strict=False, interpolation=None)
        cp.read_string(unit.read_text())
        argv = shlex.split(cp["Service"]["ExecStart"].replace("%h", "/home/u"))
        check_command(argv)
        assert cp["Service"]["Restart"] == "always"


def test_hermes_skills_call_existing_commands() -> None:
    skills = sorted((ROOT / "hermes" / "skills").glob("*/*/SKILL.md"))
    assert len(skills) >= 7
    for path in skills:
        text = path.read_text()
        front = yaml.safe_load(text.split("---")[1])
        assert front["name"] == path.parent.name and front["description"]
        for cmd in re.findall(r"`homelab ([a-z-]+)", text):
            assert cmd in COMMANDS, f"{path}: homelab {cmd} does not exist"
    config = yaml.safe_load((ROOT / "hermes" / "config.example.yaml").read_text())
    assert config["model"]["provider"] == "custom" and config["model"]["base_url"].endswith("/v1")


def test_mosquitto_acl_names_every_service() -> None:
    acl = (ROOT / "mosquitto" / "acl").read_text()
    users = set(re.findall(r"^user (\S+)", acl, re.M))
    assert {*SERVICES, "router", "homeassistant"} <= users


def test_deploy_step_two_makes_passwords_the_broker_and_its_health_check_accept(tmp_path: Path) -> None:
    """docs/deploy.md step 2 on a fresh checkout: the script makes the password file, shows each password
    once, keeps them in .env, and Compose's broker health check logs in with the one it made."""
    import subprocess
    import time

    from services.broker import local_config
    from tests.harness import free_port

    (tmp_path / "scripts").mkdir()
    (tmp_path / "mosquitto").mkdir()
    (tmp_path / "scripts" / "mqtt-passwords.sh").write_bytes((ROOT / "scripts" / "mqtt-passwords.sh").read_bytes())
    (tmp_path / "mosquitto" / "acl").write_bytes((ROOT / "mosquitto" / "acl").read_bytes())
    p = subprocess.run(["bash", "scripts/mqtt-passwords.sh"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    env = dict(line.split("=", 1) for line in (tmp_path / ".env").read_text().splitlines())
    users = re.findall(r"^user (\S+)", (ROOT / "mosquitto" / "acl").read_text(), re.M)
    assert {f"MQTT_PASSWORD_{u.upper().replace('-', '_')}" for u in users} == set(env)
    assert all(secret in p.stdout for secret in env.values())  # shown to the user, once
    assert oct((tmp_path / ".env").stat().st_mode & 0o777) == "0o600"
    again = subprocess.run(["bash", "scripts/mqtt-passwords.sh"], cwd=tmp_path, capture_output=True, text=True)
    assert again.returncode == 0 and not any(s in again.stdout for s in env.values())  # kept, not replaced
    # the broker with that file, and the health check exactly as docker-compose.yml runs it
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    (tmp_path / "data").mkdir()
    conf.write_text(local_config(port, tmp_path / "data", password_file=tmp_path / "mosquitto" / "passwords"))
    broker = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
        check = compose["services"]["mosquitto"]["healthcheck"]["test"][1:]  # after "CMD"

        def health(password: str) -> int:
            # Compose substitutes ${VAR} from .env and turns $$ into $
            argv = [a.replace("${MQTT_PASSWORD_HEALTHCHECK}", password).replace("$$", "$") for a in check]
            return subprocess.run([*argv, "-p", str(port)], capture_output=True, timeout=10).returncode

        assert health(env["MQTT_PASSWORD_HEALTHCHECK"]) == 0
        assert health("healthcheck") != 0  # the old fixed password is refused
    finally:
        broker.terminate()
        broker.wait(5)
