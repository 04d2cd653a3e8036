"""netdata_bridge against a real Netdata agent and a Netdata-shaped parent, with a real Mosquitto."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from services.netdata_bridge.bridge import Bridge, host_topics
from shared.bus import Bus
from shared.settings import NetdataSettings
from tests.broker import Broker
from tests.harness import BackgroundLoop, free_port
from tests.netdata_http import UUID_4090, UUID_GB10, FakeParent, lab_hosts
from tests.pipeline import Collector

NETDATA_CONF = """
[global]
    run as user = root
    hostname = {host}
[db]
    update every = 1
    mode = ram
    retention = 600
[directories]
    config = {d}/etc
    stock config = /usr/lib/netdata/conf.d
    cache = {d}/cache
    lib = {d}/lib
    log = {d}/log
    home = {d}/lib
    plugins = /usr/lib/netdata/plugins.d
    web = /usr/share/netdata/web
[logs]
    debug = /dev/null
    error = {d}/log/error.log
    access = none
[web]
    bind to = 127.0.0.1:{port}
[plugins]
    proc = yes
    diskspace = yes
    cgroups = no
    tc = no
    idlejitter = no
    apps = no
    python.d = no
    charts.d = no
    go.d = no
    ebpf = no
    perf = no
    slabinfo = no
    fping = no
    ioping = no
    nfacct = no
    timex = no
    statsd = no
    checks = no
[health]
    enabled = no
[ml]
    enabled = no
[registry]
    enabled = no
[cloud]
    enabled = no
"""


class Netdata:
    """Debian's netdata agent with a throwaway config on a free port."""

    def __init__(self, workdir: Path, host: str = "labtest") -> None:
        if shutil.which("netdata") is None:
            raise RuntimeError("netdata is not installed (scripts/install.sh installs Debian's package)")
        self.dir = workdir
        for sub in ("etc", "cache", "lib", "log"):
            (workdir / sub).mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.conf = workdir / "etc" / "netdata.conf"
        self.conf.write_text(NETDATA_CONF.format(host=host, d=workdir, port=self.port))
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(["netdata", "-D", "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("netdata did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            self.proc = None


class Harness:
    def __init__(self, bg: BackgroundLoop, broker: Broker, base_url: str, state: Path, **cfg: Any) -> None:
        self.bg = bg

        async def setup() -> None:
            self.session = aiohttp.ClientSession()
            self.bus = Bus(broker.url(), "netdata_bridge")
            await self.bus.__aenter__()
            await asyncio.wait_for(self.bus.connected.wait(), 10)
            self.bridge = Bridge(NetdataSettings(**cfg), base_url, self.bus, self.session, state)

        bg.run(setup())

    def cycle(self) -> int:
        async def run() -> int:
            stats = await self.bridge.cycle()
            for _ in range(200):  # until the outbox is flushed to the broker
                if self.bus.pending() == 0:
                    break
                await asyncio.sleep(0.01)
            return stats.messages

        return self.bg.run(run())

    def close(self) -> None:
        async def down() -> None:
            await self.bus.close()
            await self.session.close()

        self.bg.run(down())


@pytest.fixture
def ha(bg: BackgroundLoop, broker: Broker) -> Iterator[Collector]:
    c = Collector(bg, broker.url(), "homeassistant/#", "homelab/netdata/#")
    yield c
    c.close()


def configs(c: Collector) -> dict[str, dict[str, Any]]:
    """The current retained discovery configs (an empty payload removes one)."""
    out: dict[str, dict[str, Any]] = {}
    for t, p, _ in c.messages:
        if t.startswith("homeassistant/sensor/"):
            if p:
                out[t] = orjson.loads(p)
            else:
                out.pop(t, None)
    return out


def entities(c: Collector) -> set[str]:
    return {cfg["default_entity_id"] for cfg in configs(c).values()}


def last(c: Collector, topic: str) -> Any:
    payloads = c.on(topic)
    return payloads[-1] if payloads else None


def state(c: Collector, host: str) -> dict[str, Any]:
    p = last(c, host_topics(host)["state"])
    return orjson.loads(p) if p else {}


def settle(c: Collector) -> None:
    time.sleep(0.3)


def test_real_netdata_agent_gives_cpu_ram_load_disk(bg: BackgroundLoop, broker: Broker, ha: Collector,
                                                   tmp_path: Path) -> None:
    nd = Netdata(tmp_path / "netdata")
    h = Harness(bg, broker, nd.url, tmp_path / "state.json", timeout=2)
    try:
        for _ in range(100):  # netdata's first values are null or 0 right after start
            h.cycle()
            s = state(ha, "labtest")
            if all(s.get(k) for k in ("ram_used", "ram_available", "disk_root_used")) and s.get("cpu") is not None \
                    and s.get("load1") is not None:
                break
            time.sleep(0.2)
        settle(ha)
        s = state(ha, "labtest")
        assert 0 <= s["cpu"] <= 100 and s["ram_used"] > 0 and s["ram_available"] > 0
        assert s["disk_root_used"] > 0 and s["load1"] >= 0
        ids = entities(ha)
        assert {"sensor.labtest_cpu", "sensor.labtest_ram_used", "sensor.labtest_load15",
                "sensor.labtest_disk_root_available"} <= ids
        assert not any("gpu" in i for i in ids)  # this machine has no GPU: no ghost sensors
        cfg = next(c for c in configs(ha).values() if c["default_entity_id"] == "sensor.labtest_ram_used")
        assert (cfg["unit_of_measurement"], cfg["device_class"], cfg["state_class"]) == ("MiB", "data_size",
                                                                                         "measurement")
        assert last(ha, host_topics("labtest")["availability"]) == b"online"

        nd.stop()  # Netdata stopped mid-run: unavailable, not stale
        h.cycle()
        settle(ha)
        assert last(ha, host_topics("labtest")["availability"]) == b"offline"
        nd.start()
        for _ in range(100):
            h.cycle()
            if last(ha, host_topics("labtest")["availability"]) == b"online":
                break
            time.sleep(0.2)
        assert last(ha, host_topics("labtest")["availability"]) == b"online"
    finally:
        h.close()
        nd.stop()


@pytest.fixture
def parent(bg: BackgroundLoop) -> Iterator[FakeParent]:
    p = FakeParent(bg, lab_hosts())
    yield p
    p.close()


def test_gpu_and_multi_host_sensors(bg: BackgroundLoop, broker: Broker, ha: Collector, parent: FakeParent,
                                    tmp_path: Path) -> None:
    parent.unreachable.add("win-5090")
    h = Harness(bg, broker, parent.url, tmp_path / "state.json")
    try:
        h.cycle()
        settle(ha)
        ids = entities(ha)
        assert {"sensor.ubuntu_4090_gpu0_utilization", "sensor.ubuntu_4090_gpu0_memory_used",
                "sensor.ubuntu_4090_gpu0_memory_total", "sensor.ubuntu_4090_gpu0_temperature",
                "sensor.ubuntu_4090_gpu0_power", "sensor.ubuntu_6000_gpu0_power", "sensor.workstation_cpu"} <= ids
        # the GB10: no VRAM sensors and no null memory utilization; its memory pressure is its RAM
        assert "sensor.spark_gpu0_memory_used" not in ids and "sensor.spark_gpu0_memory_utilization" not in ids
        assert {"sensor.spark_gpu0_utilization", "sensor.spark_ram_used", "sensor.spark_ram_available"} <= ids
        # an unreachable child: unavailable, nothing announced for it
        assert last(ha, host_topics("win-5090")["availability"]) == b"offline"
        assert not any(i.startswith("sensor.win_5090") for i in ids)
        s = state(ha, "ubuntu-4090")
        assert s["gpu0_memory_used"] == round(18e9 / 1024**2, 1) and s["gpu0_temperature"] == 71.0
        assert s["cpu"] == 35.0  # steal was null: summed without it
        temp = next(c for c in configs(ha).values() if c["default_entity_id"] == "sensor.ubuntu_4090_gpu0_temperature")
        assert UUID_4090.lower() in temp["unique_id"] and temp["unit_of_measurement"] == "°C"
        assert temp["device"]["identifiers"] == ["netdata_ubuntu-4090"] and temp["origin"]["name"] == "homelab"
        assert UUID_GB10.lower() in next(c["unique_id"] for c in configs(ha).values()
                                         if c["default_entity_id"] == "sensor.spark_gpu0_utilization")

        parent.unreachable.discard("win-5090")  # the child comes back
        h.cycle()
        settle(ha)
        assert last(ha, host_topics("win-5090")["availability"]) == b"online"
        assert "sensor.win_5090_gpu0_utilization" in entities(ha)
    finally:
        h.close()


def test_unchanged_values_wait_for_the_heartbeat(bg: BackgroundLoop, broker: Broker, ha: Collector,
                                                 parent: FakeParent, tmp_path: Path) -> None:
    h = Harness(bg, broker, parent.url, tmp_path / "state.json", heartbeat=3600)
    try:
        first = h.cycle()
        assert first > 40  # discovery + availability + state for five hosts
        assert h.cycle() == 0  # nothing changed: nothing published
        parent.hosts["ubuntu-4090"] = {**parent.hosts["ubuntu-4090"]}
        parent.hosts["ubuntu-4090"]["system.load"]["dimensions"]["load1"]["value"] = 3.5
        assert h.cycle() == 1  # one host's state
    finally:
        h.close()


def test_parent_down_marks_everything_unavailable_and_recovers(bg: BackgroundLoop, broker: Broker,
                                                               ha: Collector, parent: FakeParent,
                                                               tmp_path: Path) -> None:
    h = Harness(bg, broker, parent.url, tmp_path / "state.json")
    try:
        h.cycle()
        parent.down = True
        h.cycle()
        settle(ha)
        assert all(last(ha, host_topics(n)["availability"]) == b"offline" for n in parent.hosts)
        parent.down = False
        h.cycle()
        settle(ha)
        assert all(last(ha, host_topics(n)["availability"]) == b"online" for n in parent.hosts)
    finally:
        h.close()


def test_a_sensor_gone_for_good_is_removed_and_a_late_one_appears(bg: BackgroundLoop, broker: Broker,
                                                                  ha: Collector, parent: FakeParent,
                                                                  tmp_path: Path) -> None:
    h = Harness(bg, broker, parent.url, tmp_path / "state.json", remove_after=3)
    try:
        h.cycle()
        hosts = parent.hosts
        gone = {k: v for k, v in hosts["ubuntu-6000"].items() if "power_draw" not in k}
        hosts["ubuntu-6000"] = gone
        hosts["workstation"]["disk_space._data"] = {**hosts["workstation"]["disk_space._"], "name": "disk_space._data"}
        for _ in range(2):
            h.cycle()
        settle(ha)
        assert "sensor.ubuntu_6000_gpu0_power" in entities(ha)  # briefly absent: kept
        assert state(ha, "ubuntu-6000")["gpu0_power"] is None  # shown as unknown, never a stale value
        h.cycle()
        settle(ha)
        assert "sensor.ubuntu_6000_gpu0_power" not in entities(ha)  # removed with an empty retained config
        h.close()
        # a restarted bridge still knows what it announced
        h = Harness(bg, broker, parent.url, tmp_path / "state.json", remove_after=3, mounts=("/", "/data"))
        h.cycle()
        settle(ha)
        assert "sensor.workstation_disk_data_used" in entities(ha)
    finally:
        h.close()


def test_the_bridge_service_re_announces_when_home_assistant_comes_online(
        bg: BackgroundLoop, broker: Broker, ha: Collector, parent: FakeParent, tmp_path: Path) -> None:
    from services.netdata_bridge.main import main as bridge_main
    from shared.settings import Settings
    from tests.pipeline import Service, publish

    s = Settings(mqtt_url=broker.url(), netdata_url=parent.url, state_dir=tmp_path / "state",
                 log_dir=tmp_path / "logs", netdata=NetdataSettings(interval=30))
    svc = Service(bg, bridge_main, s)
    try:
        def n_configs() -> int:
            return sum(1 for t, _, _ in ha.messages if t.startswith("homeassistant/sensor/"))

        assert ha.wait(lambda: n_configs() >= 61)
        first = n_configs()
        publish(bg, broker.url(), [("homeassistant/status", b"online")])
        assert ha.wait(lambda: n_configs() >= 2 * first, 15)  # every config again, after a short random delay
    finally:
        svc.stop()
