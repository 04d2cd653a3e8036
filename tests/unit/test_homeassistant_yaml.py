"""The Home Assistant YAML we ship parses, and every entity it names is one that discovery creates."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.vision_notifier.ha import camera_discovery, entity_ids
from services.vision_notifier.triage import EVENT_TYPES

HA = Path(__file__).resolve().parents[2] / "homeassistant"
# an entity id (not trigger.event.data, not an action such as input_text.set_value)
ENTITY = re.compile(r"(?<![.\w])(?!input_text\.set_value)(?:event|sensor|image|binary_sensor|button|input_text|"
                    r"input_boolean|input_datetime|script)\.[a-z0-9_]+\b")


class _Loader(yaml.SafeLoader):
    pass


def _tag(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    return f"!input {loader.construct_scalar(node)}" if isinstance(node, yaml.ScalarNode) else None


_Loader.add_constructor("!input", _tag)


def load(path: Path) -> Any:
    return yaml.load(path.read_text(), Loader=_Loader)


def files() -> list[Path]:
    return sorted(p for p in HA.rglob("*.yaml") if "dashboards" not in p.parts or p.name == "homelab_cameras.yaml")


@pytest.mark.parametrize("path", files(), ids=lambda p: str(p.relative_to(HA)))
def test_yaml_parses(path: Path) -> None:
    assert load(path) is not None


def test_every_referenced_entity_is_created() -> None:
    package = load(HA / "packages" / "homelab_notify.yaml")
    defined = {f"{domain}.{name}" for domain in ("input_text", "input_boolean", "input_datetime", "script")
               for name in package.get(domain, {})}
    created = set(entity_ids("front_door").values())
    for topic, cfg in camera_discovery("front_door", doorbell=True):
        assert cfg["default_entity_id"] in created
        assert cfg["unique_id"] and cfg["origin"]["name"] == "homelab" and cfg["availability"]
        assert topic.startswith("homeassistant/") and topic.endswith("/config")
    referenced = set()
    for path in files():
        referenced |= set(ENTITY.findall(path.read_text()))
    assert referenced, "the YAML should reference entities"
    missing = referenced - defined - created
    assert not missing, f"entities referenced but never created: {sorted(missing)}"


def test_automations_read_the_fields_the_notifier_publishes() -> None:
    text = (HA / "packages" / "homelab_notify.yaml").read_text()
    blueprint = (HA / "blueprints" / "automation" / "homelab" / "camera_push.yaml").read_text()
    used = set(re.findall(r"payload_json\.([a-z_]+)", text + blueprint))
    published = {"title", "message", "tag", "description", "image", "has_image", "camera", "event_type",
                 "threat_level", "zones", "push", "alert_at"}
    assert used <= published
    assert "ding" in EVENT_TYPES


def test_system_health_dashboard_references_exactly_what_the_bridge_creates() -> None:
    from services.netdata_bridge.bridge import sensor_discovery
    from services.netdata_bridge.metrics import extract
    from tests.netdata_http import lab_hosts

    created = {sensor_discovery(host, r)[1]["default_entity_id"]
               for host, metrics in lab_hosts().items() for r in extract(metrics).values()}
    dashboard = HA / "dashboards" / "system_health.yaml"
    views = load(dashboard)["views"]
    assert [v["title"] for v in views] == ["Overview", "GPUs"]  # storage is on the overview, a gauge a disk
    referenced = set(ENTITY.findall(dashboard.read_text()))
    assert referenced == created
    assert "sensor.spark_gpu0_memory_used" not in referenced  # unified memory: no VRAM sensor


def test_blueprint_says_which_home_assistant_it_needs() -> None:
    bp = load(HA / "blueprints" / "automation" / "homelab" / "camera_push.yaml")["blueprint"]
    assert bp["homeassistant"]["min_version"] >= "2024.10.0"  # triggers:/conditions:/actions: syntax


def test_choices_made_in_the_ui_are_not_overwritten_at_start() -> None:
    package = load(HA / "packages" / "homelab_notify.yaml")
    for domain in ("input_text", "input_boolean", "input_datetime"):
        for name, cfg in package[domain].items():
            assert "initial" not in cfg, f"{domain}.{name}: `initial:` overrides what the user set at every restart"


def test_pushes_open_a_view_the_project_ships() -> None:
    from services.vision_notifier.push import push_data
    from shared.settings import CameraSettings

    views = {f"/homelab-cameras/{v['path']}" for v in load(HA / "dashboards" / "homelab_cameras.yaml")["views"]}
    data = push_data("front_door", "t", 1, CameraSettings())
    opens = [a["uri"] for a in data["actions"] if a["action"] == "URI"]
    assert opens and {data["clickAction"], data["url"], *opens} <= views
