"""frigate_consumer's I/O: MQTT in and out, Frigate availability exposed to Home Assistant."""

from __future__ import annotations

import logging

import orjson

from services.frigate_consumer.handlers import FrigateIngest
from shared import topics
from shared.bus import Bus
from shared.ha import availability, device, discovery
from shared.messages import FrigateEvent, FrigateReview
from shared.service import Validations
from shared.settings import Settings

SERVICE = "frigate_consumer"
log = logging.getLogger("homelab.frigate_consumer")


def availability_discovery(settings: Settings) -> tuple[str, dict[str, object]]:
    prefix = settings.frigate.topic_prefix
    return discovery("binary_sensor", "homelab_frigate", "available", {
        "name": "Frigate available",
        "state_topic": f"{prefix}/available",
        "payload_on": "online",
        "payload_off": "offline",
        "device_class": "connectivity",
        "entity_category": "diagnostic",
        "device": device("homelab_frigate", "Frigate", "NVR"),
        **availability(topics.status(SERVICE)),
    })


async def main(settings: Settings) -> None:
    prefix = settings.frigate.topic_prefix
    ingest = FrigateIngest(settings.frigate, settings.frigate_url, lambda camera: settings.camera(camera).zones)
    validations = Validations(settings, SERVICE)
    events_topic, reviews_topic = f"{prefix}/events", f"{prefix}/reviews"
    trigger = events_topic if settings.frigate.trigger == "events" else reviews_topic
    disc_topic, disc = availability_discovery(settings)

    async def announce(bus: Bus) -> None:
        await bus.publish(disc_topic, orjson.dumps(disc), retain=True)

    # instances split Frigate's events between them (a shared subscription): each handled once
    async with Bus(settings.mqtt_url, SERVICE, shared=[trigger], split=settings.shared_subscriptions,
                   state_dir=settings.state_dir, on_connect=announce,
                   on_ha_online=announce) as bus:
        log.info("frigate_consumer: listening on %s", trigger)
        async for msg in bus.messages():
            with validations.guard(msg.topic, msg.payload):
                if msg.topic == events_topic:
                    ev = validations.decode(FrigateEvent, msg.topic, msg.payload)
                    out = ingest.on_event(ev) if ev else None
                else:
                    rv = validations.decode(FrigateReview, msg.topic, msg.payload)
                    out = ingest.on_review(rv) if rv else None
                if out is not None:
                    log.info("frigate event %s camera=%s label=%s trace=%s", out.event_id, out.camera, out.kind,
                             out.trace_id)
                    await bus.publish(topics.RAW, out)
                for face in ingest.take_faces():
                    log.info("frigate event %s: face named %s", face.event_id, face.sub_label)
                    await bus.publish(topics.FACE, face)
