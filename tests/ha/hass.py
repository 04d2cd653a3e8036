"""A real Home Assistant for tests, configured without the UI: the project's package, blueprint,
example automation and dashboards, an MQTT config entry, an owner with a long-lived token, onboarding
done, and a stand-in phone (a ``rest`` notify action that posts every push to a local server)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import yaml
from aiohttp import web

from tests.harness import ROOT, BackgroundLoop, free_port

HA_VERSION = "2025.4.4"
CACHE = Path(os.environ.get("HOMELAB_CACHE") or Path.home() / ".cache" / "homelab")
HASS = CACHE / "venvs" / f"ha-{HA_VERSION}" / "bin" / "hass"
PHONE = "stand_in_phone"  # notify.stand_in_phone: what a person would pick in the UI as the phone


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def long_lived_token(refresh_id: str, jwt_key: str) -> str:
    """An HS256 JWT as Home Assistant issues for a long-lived access token (iss = the refresh token id)."""
    header = _b64(orjson.dumps({"alg": "HS256", "typ": "JWT"}))
    now = int(time.time())
    claims = _b64(orjson.dumps({"iss": refresh_id, "iat": now, "exp": now + 10 * 365 * 86400}))
    sig = hmac.new(jwt_key.encode(), f"{header}.{claims}".encode(), hashlib.sha256).digest()
    return f"{header}.{claims}.{_b64(sig)}"


@dataclass
class Push:
    at: float
    title: str
    message: str
    data: dict[str, Any]


@dataclass
class Phone:
    """The stand-in phone: records every call Home Assistant's notify action makes."""

    bg: BackgroundLoop
    pushes: list[Push] = field(default_factory=list)
    port: int = 0
    runner: web.AppRunner | None = None

    def start(self) -> None:
        async def push(request: web.Request) -> web.Response:
            body = await request.json()
            raw = body.get("data") or "{}"
            data = orjson.loads(raw) if isinstance(raw, str) and raw not in ("", "None") else {}
            self.pushes.append(Push(time.time(), str(body.get("title")), str(body.get("message")), data or {}))
            return web.json_response({"ok": True})

        async def go() -> None:
            app = web.Application()
            app.router.add_post("/push", push)
            self.runner = web.AppRunner(app, access_log=None)
            await self.runner.setup()
            self.port = free_port()
            await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

        self.bg.run(go())

    def stop(self) -> None:
        if self.runner is not None:
            self.bg.run(self.runner.cleanup())

    def wait(self, n: int, timeout: float = 20) -> list[Push]:
        deadline = time.monotonic() + timeout
        while len(self.pushes) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        return list(self.pushes)


class HomeAssistant:
    """One Home Assistant process with a fresh config directory."""

    def __init__(self, config_dir: Path, mqtt_port: int, phone_port: int, cameras: list[str],
                 blueprint_only: tuple[str, ...] = ()) -> None:
        """``cameras`` get the dashboard and the example blueprint automation; ``blueprint_only`` the
        automation alone."""
        if not HASS.exists():
            raise RuntimeError(f"Home Assistant {HA_VERSION} is not installed at {HASS}: run "
                               "`bash scripts/install-ha.sh` (scripts/test.sh runs it; ~3-4 min the first time)")
        self.dir = config_dir
        self.port = free_port()
        self.mqtt_port = mqtt_port
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = config_dir / "hass.out"
        refresh_id, jwt_key = uuid.uuid4().hex, uuid.uuid4().hex + uuid.uuid4().hex
        self.token = long_lived_token(refresh_id, jwt_key)
        self._write_config(phone_port, cameras, blueprint_only, refresh_id, jwt_key)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _write_config(self, phone_port: int, cameras: list[str], blueprint_only: tuple[str, ...], refresh_id: str,
                      jwt_key: str) -> None:
        from services.vision_notifier.ha import cameras_dashboard

        d = self.dir
        ha = ROOT / "homeassistant"
        (d / "packages").mkdir(parents=True)
        shutil.copy(ha / "packages" / "homelab_notify.yaml", d / "packages")
        (d / "blueprints" / "automation" / "homelab").mkdir(parents=True)
        shutil.copy(ha / "blueprints" / "automation" / "homelab" / "camera_push.yaml",
                    d / "blueprints" / "automation" / "homelab")
        (d / "dashboards").mkdir()
        shutil.copy(ha / "dashboards" / "system_health.yaml", d / "dashboards")
        (d / "dashboards" / "homelab_cameras.yaml").write_text(yaml.safe_dump(cameras_dashboard(cameras)))
        # the shipped example (front_door) and the same for every test camera; quiet hours moved away
        # from now (the example's 23:00-06:30 would hold everything back at night)
        from services.vision_notifier.ha import entity_ids

        example = yaml.safe_load((ha / "automations" / "front_door_push.yaml").read_text())[0]
        now = datetime.now(UTC)
        autos = []
        for camera in (*cameras, *blueprint_only):
            a = yaml.safe_load(yaml.safe_dump(example))
            a["id"] = f"homelab_push_{entity_ids(camera)['event'].split('.')[1]}"
            if camera != "front_door":
                a["alias"] = a["alias"].replace("front door", camera)
            inp = a["use_blueprint"]["input"]
            inp.update(camera_event=entity_ids(camera)["event"], notify_target=PHONE,
                       quiet_start=(now + timedelta(hours=3)).strftime("%H:%M:00"),
                       quiet_end=(now + timedelta(hours=4)).strftime("%H:%M:00"))
            autos.append(a)
        (d / "automations.yaml").write_text(yaml.safe_dump(autos, sort_keys=False))
        # configuration.yaml exactly as docs/home-assistant.md tells a user, plus the test's own parts
        (d / "configuration.yaml").write_text(f"""
homeassistant:
  name: homelab test
  time_zone: UTC
  packages: !include_dir_named packages
http:
  server_host: 127.0.0.1
  server_port: {self.port}
frontend:
config:
history:
recorder:
  commit_interval: 1
automation: !include automations.yaml
lovelace:
  mode: storage
  dashboards:
    system-health:
      mode: yaml
      filename: dashboards/system_health.yaml
      title: System Health
      icon: mdi:server
    homelab-cameras:
      mode: yaml
      filename: dashboards/homelab_cameras.yaml
      title: Cameras
      icon: mdi:cctv
logger:
  default: warning
notify:
  - platform: rest
    name: {PHONE}
    resource: http://127.0.0.1:{phone_port}/push
    method: POST_JSON
    title_param_name: title
    data:
      data: "{{{{ data | tojson if data is defined else '{{}}' }}}}"
""")
        storage = d / ".storage"
        storage.mkdir()
        now = datetime.now(UTC).isoformat()
        user = uuid.uuid4().hex

        def store(key: str, data: Any, version: int = 1, minor: int = 1) -> None:
            (storage / key).write_bytes(orjson.dumps({"version": version, "minor_version": minor, "key": key,
                                                      "data": data}))

        store("auth", {
            "users": [{"id": user, "group_ids": ["system-admin"], "is_owner": True, "is_active": True,
                       "name": "Owner", "system_generated": False, "local_only": False}],
            "groups": [{"id": "system-admin", "name": "Administrators"}, {"id": "system-users", "name": "Users"},
                       {"id": "system-read-only", "name": "Read Only"}],
            "credentials": [],
            "refresh_tokens": [{"id": refresh_id, "user_id": user, "client_id": None, "client_name": "homelab tests",
                                "client_icon": None, "token_type": "long_lived_access_token", "created_at": now,
                                "access_token_expiration": 315360000.0, "token": uuid.uuid4().hex + uuid.uuid4().hex,
                                "jwt_key": jwt_key, "last_used_at": None, "last_used_ip": None,
                                "credential_id": None, "version": HA_VERSION}],
        })
        store("onboarding", {"done": ["user", "core_config", "analytics", "integration"]}, version=4)
        store("core.config_entries", {"entries": [{
            "entry_id": uuid.uuid4().hex, "version": 1, "minor_version": 2, "domain": "mqtt", "title": "Mosquitto",
            "data": {"broker": "127.0.0.1", "port": self.mqtt_port}, "options": {},
            "pref_disable_new_entities": False, "pref_disable_polling": False, "source": "user",
            "unique_id": None, "disabled_by": None, "discovery_keys": {}, "subentries": [],
            "created_at": now, "modified_at": now}]}, minor=5)

    def start(self, timeout: float = 90) -> None:
        """Start and wait until REST answers with the token and MQTT is connected."""
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([str(HASS), "--config", str(self.dir), "--skip-pip", "--log-no-color"],
                                         stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Home Assistant exited:\n{self.log.read_text()[-4000:]}")
            try:
                r = httpx.get(self.url + "/api/config", headers=self.headers, timeout=2)
                if r.status_code == 200 and "mqtt" in r.json().get("components", []) and self._mqtt_up():
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"Home Assistant did not come up in {timeout:g}s:\n{self.log.read_text()[-4000:]}")

    def _mqtt_up(self) -> bool:
        r = httpx.post(self.url + "/api/template", headers=self.headers, timeout=5,
                       json={"template": "{{ states('input_boolean.homelab_quiet_hours') }}"})
        return r.status_code == 200 and r.text in ("on", "off")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def state(self, entity_id: str) -> dict[str, Any] | None:
        r = httpx.get(f"{self.url}/api/states/{entity_id}", headers=self.headers, timeout=10)
        return r.json() if r.status_code == 200 else None

    def call(self, domain: str, service: str, **data: Any) -> httpx.Response:
        r = httpx.post(f"{self.url}/api/services/{domain}/{service}", headers=self.headers, json=data, timeout=20)
        r.raise_for_status()
        return r

    def template(self, tpl: str) -> str:
        r = httpx.post(self.url + "/api/template", headers=self.headers, json={"template": tpl}, timeout=10)
        r.raise_for_status()
        return r.text

    def errors(self) -> list[str]:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return [line for line in text.splitlines() if " ERROR " in line]
