"""The MQTT services: where each one's main lives, what it does, the topics it reads and writes.

One table, read by ``homelab run`` (and its ``--help``), ``homelab check-config`` and the ACL check.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared import topics


@dataclass(frozen=True)
class ServiceInfo:
    """One MQTT service: where its main lives, what it does, and the topics it reads and writes (the
    same table ``homelab run --help``, ``homelab check-config`` and the ACL check use)."""

    module: str
    summary: str
    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()


_HA = ("homeassistant/config", "homeassistant/status")
# service name → what it is
SERVICE_TABLE: dict[str, ServiceInfo] = {
    "frigate_consumer": ServiceInfo("services.frigate_consumer.main", "Frigate events/reviews → camera events",
                                    reads=("frigate/events", "frigate/reviews", "frigate/available",
                                           topics.HA_STATUS),
                                    writes=(topics.RAW, "homeassistant/binary_sensor/frigate/config")),
    "ring_listener": ServiceInfo("services.ring_listener.main", "Ring push, ring-mqtt and polled dings → camera events",
                                 reads=("ring/loc/camera/dev/ding/state",), writes=(topics.RAW,)),
    "dedup": ServiceInfo("services.dedup.main", "three triggers → one event (identity + window)",
                         reads=(topics.RAW, topics.UNIQUE), writes=(topics.UNIQUE,)),
    "vision_notifier": ServiceInfo("services.vision_notifier.main",
                                   "snapshot → triage → text push, rich push, timeline; per-camera snooze",
                                   reads=(topics.UNIQUE, "ring/loc/camera/dev/snapshot/image", topics.HA_STATUS,
                                          "homelab/cameras/cam/snooze/set"),
                                   writes=(topics.TRIAGE, topics.NOTIFY_TEXT, topics.NOTIFY_RICH, topics.NOTIFY_CLEAR,
                                           topics.TIMELINE, "homelab/cameras/cam/snooze",
                                           "homeassistant/event/cam/config")),
    "netdata_bridge": ServiceInfo("services.netdata_bridge.main", "Netdata parent → per-host sensors in HA",
                                  reads=(topics.HA_STATUS,),
                                  writes=("homelab/netdata/host/state", "homeassistant/sensor/host/config")),
    "watchdog": ServiceInfo("services.watchdog.main", "probes routes, restarts what is dead, CUDA recovery",
                            writes=("homelab/watchdog/events", "homelab/alert")),
    "scheduler": ServiceInfo("services.scheduler.main", "scheduled checks (Hermes-style schedules)",
                             reads=(topics.NOTIFY_TEXT, topics.TIMELINE),
                             writes=("homelab/alert", "frigate/events")),
}
