"""Settings every service reads: one YAML file (HOMELAB_CONFIG) with environment overrides.

Validated once at start; a bad file stops the service with a message naming the key.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from shared.ha import slug

DEFAULT_CONFIG = Path("config/homelab.yaml")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FrigateSettings(_Section):
    topic_prefix: str = "frigate"
    # "events": frigate/events opens an event; "reviews": an alert review opens it.
    trigger: str = Field(default="events", pattern="^(events|reviews)$")
    cameras: tuple[str, ...] = ()  # empty: every camera
    labels: tuple[str, ...] = ()  # empty: every label Frigate tracks
    zones: tuple[str, ...] = ()  # empty: anywhere; else the object must be in one of them
    min_score: float = Field(default=0.0, ge=0, le=1)


class RingSettings(_Section):
    token_file: Path | None = None  # ring-doorbell's cached OAuth token (no password is stored)
    mqtt_prefix: str = "ring"  # ring-mqtt's base topic; "" turns that trigger off
    poll_interval: float = Field(default=60.0, ge=0)  # 0 turns polling off
    max_age: float = Field(default=300.0, gt=0)  # older dings (replays, history) are not new events
    # Map a Ring device (doorbot id, ring-mqtt device id or device name) to a camera name.
    cameras: dict[str, str] = {}


class DedupSettings(_Section):
    identity_ttl: float = Field(default=7 * 86400, gt=0)
    window: float = Field(default=20.0, ge=0)  # same camera + kind from another trigger inside it: merged


class NotifierSettings(_Section):
    triage_threshold: float = Field(default=0.8, ge=0, le=1)  # negative at or above this: dropped locally
    classifier_model: str = "homelab/vision"
    senior_model: str = "homelab/reasoning"
    classifier_timeout: float = Field(default=15.0, gt=0)
    senior_timeout: float = Field(default=60.0, gt=0)
    snapshot_timeout: float = Field(default=5.0, gt=0)
    snapshot_retries: int = Field(default=4, ge=0)  # Frigate 404s briefly while an event is in progress
    snapshot_longest_side: int = Field(default=1024, ge=64)
    snapshot_max_bytes: int = Field(default=10 * 1024 * 1024, gt=0)
    snapshot_hosts: tuple[str, ...] = ()  # hosts snapshots may come from; empty: frigate_url's host
    ring_snapshot_wait: float = Field(default=3.0, ge=0)  # wait this long for ring-mqtt's snapshot image
    channel_timeout: float = Field(default=5.0, gt=0)
    channel_retries: int = Field(default=2, ge=0)
    concurrency: int = Field(default=8, ge=1)  # events triaged at once
    timeline_days: float = Field(default=90, gt=0)  # finished events older than this leave the timeline
    ha_state_delay: float = Field(default=1.0, ge=0)  # after a new camera's discovery, before its state
    # the first push goes out by then (from the event's arrival) whatever the classifier does: as
    # "<label> at <camera>" if it has not answered, updated under the same tag when it does
    first_push_deadline: float = Field(default=2.0, gt=0)


class CameraSettings(_Section):
    """One camera's alerting (``cameras: <camera>: {...}``); a camera not listed gets these defaults."""

    context: str | None = Field(default=None, max_length=500)  # what is normal there, for the classifier
    zones: tuple[str, ...] = ()  # push only when a Frigate object entered one of these; empty: anywhere
    snooze_minutes: tuple[int, ...] = Field(default=(30, 60), min_length=1, max_length=3)  # the push's buttons
    ring_passes_snooze: bool = True  # a doorbell ring still pushes while the camera is snoozed
    # residents: an event whose sub_label (Frigate's face recognition) names one of them is not pushed
    # (the timeline keeps it, held) unless its threat level is 2; added to the top-level known_faces
    known_faces: tuple[str, ...] = ()

    @field_validator("snooze_minutes")
    @classmethod
    def _minutes(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if any(m < 1 or m > 7 * 24 * 60 for m in v):
            raise ValueError("each snooze is 1 to 10080 minutes (a week)")
        return v


class NetdataSettings(_Section):
    interval: float = Field(default=15.0, gt=0)  # seconds between polls
    heartbeat: float = Field(default=300.0, gt=0)  # unchanged state is re-published at most this often
    remove_after: int = Field(default=40, ge=1)  # cycles a sensor may be absent before it is removed
    mounts: tuple[str, ...] = ("/",)
    timeout: float = Field(default=5.0, gt=0)


class RestartAction(_Section):
    """How to restart what serves a route: a Docker container, a systemd user unit, or a command."""

    kind: str = Field(pattern="^(docker|systemd|command)$")
    container: str | None = None
    unit: str | None = None
    argv: tuple[str, ...] = ()
    timeout: float = Field(default=120.0, gt=0)


class CudaRecovery(_Section):
    kind: str = Field(default="router", pattern="^(router|command)$")  # router: POST /admin/recover-cuda
    argv: tuple[str, ...] = ("scripts/recover-cuda.sh",)


class WatchedRoute(_Section):
    restart: RestartAction | None = None
    cuda_probe: tuple[str, ...] = ()  # a command exiting non-zero when a fresh cuInit fails
    cuda_recover: CudaRecovery | None = None


class WatchdogSettings(_Section):
    # The routes, their terminal flags and their health come from the router's admin API
    # (GET /admin/upstreams with the admin token): the policy in force, reloads and promotions
    # included, probed once for the whole lab by the router.
    interval: float = Field(default=60.0, gt=0)
    probe_timeout: float = Field(default=5.0, gt=0)
    failures_before_restart: int = Field(default=3, ge=1)
    restart_budget_per_hour: int = Field(default=3, ge=0)
    backoff: float = Field(default=60.0, ge=0)  # after a restart, wait at least this long (doubles, to 1 h)
    routes: dict[str, WatchedRoute] = {}


class AlertSettings(_Section):
    telegram_chat_id: str | None = None  # the bot token comes from HOMELAB_TELEGRAM_TOKEN
    telegram_api: str = "https://api.telegram.org"
    ha_topic: str = "homelab/alert"  # Home Assistant fallback (an automation turns it into a push)
    timeout: float = Field(default=10.0, gt=0)


class SchedulerSettings(_Section):
    jobs_file: Path = Path("config/schedules.yaml")
    tick: float = Field(default=5.0, gt=0)


class Settings(_Section):
    mqtt_url: str = "mqtt://127.0.0.1:1883"
    router_url: str = "http://127.0.0.1:8080/v1"
    frigate_url: str = "http://127.0.0.1:5000"
    netdata_url: str | None = None
    state_dir: Path = Path("state")
    log_dir: Path = Path("logs")
    admin_token: SecretStr | None = None
    router_api_key: SecretStr | None = None  # the camera pipeline's key when the router has clients:
    frigate: FrigateSettings = FrigateSettings()
    ring: RingSettings = RingSettings()
    dedup: DedupSettings = DedupSettings()
    notifier: NotifierSettings = NotifierSettings()
    netdata: NetdataSettings = NetdataSettings()
    watchdog: WatchdogSettings = WatchdogSettings()
    alerts: AlertSettings = AlertSettings()
    scheduler: SchedulerSettings = SchedulerSettings()
    cameras: dict[str, CameraSettings] = {}  # per-camera alerting; keys as Frigate / ring names them
    known_faces: tuple[str, ...] = ()  # residents, on every camera (see CameraSettings.known_faces)
    telegram_token: SecretStr | None = None
    # two instances of a service split its work with MQTT shared subscriptions ($share/homelab-<service>/…).
    # Off, every instance receives every event and the shared state directory decides (each event is still
    # handled once). Mosquitto 2.0.11 does not keep a shared subscription across its own restart: events
    # published while the broker restarts, before the instances reconnect, are then lost — on only while
    # two instances run.
    shared_subscriptions: bool = False

    def known_face(self, camera: str, name: str | None) -> str | None:
        """The resident ``name`` is, as the settings spell it, when it is one on ``camera``; else None."""
        if not name:
            return None
        want = name.strip().casefold()
        return next((k for k in (*self.known_faces, *self.camera(camera).known_faces) if k.casefold() == want), None)

    def camera(self, name: str) -> CameraSettings:
        """``name``'s settings: its own key, else the key Home Assistant would make the same entity
        id of (``back-yard`` and ``back_yard``), else the defaults."""
        got = self.cameras.get(name)
        if got is None:
            want = slug(name)
            got = next((c for k, c in self.cameras.items() if slug(k) == want), CAMERA_DEFAULTS)
        return got


CAMERA_DEFAULTS = CameraSettings()

ENV = {
    "HOMELAB_MQTT_URL": "mqtt_url",
    "HOMELAB_ROUTER_URL": "router_url",
    "HOMELAB_FRIGATE_URL": "frigate_url",
    "HOMELAB_NETDATA_URL": "netdata_url",
    "HOMELAB_STATE_DIR": "state_dir",
    "HOMELAB_LOG_DIR": "log_dir",
    "HOMELAB_ADMIN_TOKEN": "admin_token",
    "HOMELAB_ROUTER_API_KEY": "router_api_key",
    "HOMELAB_TELEGRAM_TOKEN": "telegram_token",
}


class SettingsError(Exception):
    """The settings file or environment is invalid (not retryable: fix and restart)."""


def load_settings(path: Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env
    explicit = path is not None or bool(env.get("HOMELAB_CONFIG"))
    path = path or Path(env.get("HOMELAB_CONFIG") or DEFAULT_CONFIG)
    data: dict[str, object] = {}
    if path.exists():
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise SettingsError(f"{path}: invalid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise SettingsError(f"{path}: settings must be a mapping")
        data = loaded
    elif explicit:
        raise SettingsError(f"{path}: settings file not found")
    for var, key in ENV.items():
        if env.get(var):
            data[key] = env[var]
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        e = exc.errors()[0]
        loc = ".".join(str(p) for p in e["loc"])
        raise SettingsError(f"{path}: {loc}: {e['msg']}") from exc


@dataclass(frozen=True)
class MqttTarget:
    host: str
    port: int
    username: str | None = None
    password: str | None = None

    def __repr__(self) -> str:  # never log the password
        user = f"{self.username}@" if self.username else ""
        return f"mqtt://{user}{self.host}:{self.port}"


def parse_mqtt_url(url: str) -> MqttTarget:
    """``mqtt://[user:pass@]host:port`` → MqttTarget."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "tcp") or not parts.hostname:
        raise SettingsError(f"HOMELAB_MQTT_URL: expected mqtt://[user:pass@]host:port, got {parts.scheme}://…")
    return MqttTarget(
        host=parts.hostname,
        port=parts.port or 1883,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
    )
