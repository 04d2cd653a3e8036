"""``homelab check-config``: every config file checked before it bites, each error naming file and key.

Checks ``config/homelab.yaml`` (``HOMELAB_CONFIG``), the routing policy (``HOMELAB_POLICY``) with its
golden examples, the scheduler's jobs file, and that the broker ACL (``mosquitto/acl``) lets every
service read and write the topics it uses. ``homelab up`` and ``homelab run`` refuse to start on a
config that fails it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import yaml
from pydantic import ValidationError

DEFAULT_POLICY = Path("config/routing_policy.yaml")
DEFAULT_ACL = Path("mosquitto/acl")
# clients of the broker that are not homelab services (allowed in the ACL)
EXTERNAL_USERS = ("homeassistant", "healthcheck", "frigate", "ring-mqtt", "router")


def _pydantic(path: Path, exc: ValidationError) -> list[str]:
    out = []
    for e in exc.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        out.append(f"{path}: {loc}: {e['msg'].removeprefix('Value error, ')}")
    return out


def check_policy(path: Path) -> list[str]:
    from services.router.app import compile_policy
    from services.router.errors import PolicyError
    from services.router.policy import load_policy

    try:
        policy = load_policy(path)
    except PolicyError as exc:
        return [str(exc)]
    try:
        compile_policy(policy)
    except PolicyError as exc:
        return [f"{path}: examples: {exc}"]
    return []


def check_schedules(path: Path) -> list[str]:
    from datetime import datetime

    from services.scheduler.checks import CHECKS
    from services.scheduler.jobs import JobsFile
    from services.scheduler.schedule import parse_schedule

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        return [f"{path}: cannot read: {exc.strerror}"]
    except yaml.YAMLError as exc:
        return [f"{path}: invalid YAML: {exc}"]
    try:
        jobs = JobsFile.model_validate(data).jobs
    except ValidationError as exc:
        return _pydantic(path, exc)
    problems = []
    now = datetime.now().astimezone()
    for i, job in enumerate(jobs):
        try:
            parse_schedule(job.schedule, now)
        except ValueError as exc:
            problems.append(f"{path}: jobs.{i}.schedule ({job.name}): {exc}")
        if job.check and job.check not in CHECKS:
            problems.append(f"{path}: jobs.{i}.check ({job.name}): unknown check '{job.check}'; "
                            f"checks: {', '.join(CHECKS)}")
    return problems


def parse_acl(text: str) -> dict[str, list[tuple[str, str]]]:
    """Mosquitto ACL → user → [(access, pattern)]."""
    users: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("user "):
            current = users.setdefault(line.split(None, 1)[1].strip(), [])
        elif line.startswith("topic ") and current is not None:
            parts = line.split(None, 2)
            access, pattern = (parts[1], parts[2]) if len(parts) == 3 else ("readwrite", parts[1])
            current.append((access, pattern.strip()))
    return users


def topic_matches(pattern: str, topic: str) -> bool:
    """MQTT wildcard match (``+`` one level, ``#`` the rest)."""
    regex = "^" + "/".join("[^/]+" if p == "+" else ".*" if p == "#" else re.escape(p)
                           for p in pattern.split("/")) + "$"
    return re.match(regex, topic) is not None or (pattern.endswith("/#") and topic == pattern[:-2])


def check_acl(path: Path) -> list[str]:
    from services.table import SERVICE_TABLE
    from shared import topics

    try:
        users = parse_acl(path.read_text(encoding="utf-8"))
    except OSError as exc:
        return [f"{path}: cannot read: {exc.strerror}"]
    problems = []
    for name, info in SERVICE_TABLE.items():
        rules = users.get(name)
        if rules is None:
            problems.append(f"{path}: user {name}: missing (the service connects as '{name}')")
            continue
        need = [("write", t) for t in (*info.writes, topics.status(name))] + [("read", t) for t in info.reads]
        for access, topic in need:
            if not any(topic_matches(pattern, topic) and acc in (access, "readwrite") for acc, pattern in rules):
                problems.append(f"{path}: user {name}: cannot {access} {topic}")
    for user in users:
        if user not in SERVICE_TABLE and user not in EXTERNAL_USERS:
            problems.append(f"{path}: user {user}: not a homelab service or a known client "
                            f"({', '.join((*SERVICE_TABLE, *EXTERNAL_USERS))})")
    return problems


def check_all(config: Path | None = None, policy: Path | None = None, schedules: Path | None = None,
              acl: Path | None = None) -> list[str]:
    """Every problem found, one line each (``file: key: message``); empty when all is well."""
    from shared.settings import SettingsError, load_settings

    problems: list[str] = []
    try:
        jobs_file = load_settings(config).scheduler.jobs_file
    except SettingsError as exc:
        problems.append(str(exc))
        jobs_file = Path("config/schedules.yaml")
    policy = policy or Path(os.environ.get("HOMELAB_POLICY") or DEFAULT_POLICY)
    problems += check_policy(policy)
    schedules = schedules or jobs_file
    if schedules.exists():
        problems += check_schedules(schedules)
    acl = acl or DEFAULT_ACL
    if acl.exists():
        problems += check_acl(acl)
    return problems


def open_lab_warning(config: Path | None, policy: Path | None) -> str | None:
    """The router reached over the network (``router_url`` not loopback) with no ``clients:``."""
    from urllib.parse import urlsplit

    from services.router.clients import open_to_network
    from services.router.errors import PolicyError
    from services.router.policy import load_policy
    from shared.settings import SettingsError, load_settings

    try:
        url = load_settings(config).router_url
        loaded = load_policy(policy or Path(os.environ.get("HOMELAB_POLICY") or DEFAULT_POLICY))
    except (SettingsError, PolicyError):
        return None
    if open_to_network(urlsplit(url).hostname or "", loaded):
        return (f"warning: the router is reached at {url} (beyond this machine) and the policy has no clients: "
                "anyone who reaches it may use the lab (homelab client add NAME)")
    return None


def run(config: Path | None, policy: Path | None, schedules: Path | None, acl: Path | None) -> int:
    warning = open_lab_warning(config, policy)
    if warning:
        print(warning)
    problems = check_all(config, policy, schedules, acl)
    if problems:
        for p in problems:
            print(p)
        print(f"{len(problems)} problem{'s' if len(problems) != 1 else ''} found")
        return 1
    print("configuration OK: settings, routing policy (with its golden examples), schedules, broker ACL")
    return 0
