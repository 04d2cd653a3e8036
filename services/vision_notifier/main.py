"""vision_notifier's I/O: unique events in; triage through the router; three independent channels out.

Per event: held (the camera is snoozed, or the object is outside its zones)? timeline only. Else
snapshot → stage 1 (fast classifier, JSON schema, the camera's context) → a threat level: 0 is timeline
only; 1 and 2 get the text push (push.py says how each level reaches the phone), stage 2 (senior model)
writes the description, the rich push replaces the text one on the phone (same tag), and the timeline
records it all. The first push never waits past ``first_push_deadline``: if stage 1 has not answered,
"<label> at <camera>" goes out, and stage 1's answer updates it or (level 0) takes it back. Every
failure fails closed: a missing snapshot, bad classifier JSON or a router error is level 1; a senior
model that cannot answer gives a degraded description. One channel failing never delays or silences
the others.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from router_client import CallFailed, RouterClient
from services.vision_notifier.announcer import Announcer
from services.vision_notifier.channels import Channels, Send
from services.vision_notifier.ha import SNOOZE_SET, camera_topics, entity_ids, snooze_camera
from services.vision_notifier.push import Level, display_name, push_data, quiet_update
from services.vision_notifier.ring_images import RingImages
from services.vision_notifier.snapshot import SnapshotError, allowed_hosts, fetch_frigate, prepare
from services.vision_notifier.snooze import Snoozes
from services.vision_notifier.store import NotifierStore
from services.vision_notifier.triage import (
    Stage1,
    classifier_request,
    degraded_description,
    escalate,
    event_type,
    parse_stage1,
    senior_level,
    senior_request,
    threat_level,
    title,
)
from shared import topics
from shared.bus import Bus
from shared.ha import object_id
from shared.logs import trace
from shared.messages import CameraEvent, FaceNamed, SnoozeSet
from shared.service import Validations, every
from shared.settings import CameraSettings, Settings

SERVICE = "vision_notifier"
RING_SNAPSHOTS = "+/+/camera/+/snapshot/image"
log = logging.getLogger("homelab.vision_notifier")



PUSHES = ("first", "text", "rich")  # the channels that reach the phone


@dataclass(slots=True)
class Flight:
    """An event being handled: its threat level so far, and the resident Frigate named (if any)."""

    level: int = 1
    known: str | None = None


def _shown(task: asyncio.Task[dict[str, Any]] | None) -> bool:
    """Whether this channel's push reached Home Assistant (so the phone shows it)."""
    return task is not None and task.done() and not task.cancelled() and bool(task.result().get("ok"))


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 1)


class Notifier:
    def __init__(self, settings: Settings, bus: Bus, session: aiohttp.ClientSession, store: NotifierStore) -> None:
        self.settings = settings
        self.cfg = settings.notifier
        self.bus = bus
        self.session = session
        self.store = store
        key = settings.router_api_key.get_secret_value() if settings.router_api_key else None
        self.router = RouterClient(settings.router_url, session, api_key=key)  # class camera in the policy
        self.hosts = allowed_hosts(self.cfg, settings.frigate_url)
        self.ring = RingImages()
        # the fast path (snapshot + classifier) is bounded; waiting on the senior model must not
        # hold it, or a slow description would delay the next event's fast push
        self.fast = asyncio.Semaphore(self.cfg.concurrency)
        self.slow = asyncio.Semaphore(self.cfg.concurrency * 4)
        # the three channels are ports: each is sent on its own, with its own timeout and retries
        self.snoozes = Snoozes(store, bus)
        self.ha = Announcer(bus, store, self.snoozes, self.cfg.ha_state_delay)
        self.channels = Channels(bus, store, self.cfg, self.ha)
        self.send_text: Send = self.channels.text
        self.send_rich: Send = self.channels.rich
        self.send_timeline: Send = self.channels.timeline
        self.send_clear: Send = self.channels.clear
        self.flights: dict[str, Flight] = {}  # events in progress here, by event id

    # ---- entry points ------------------------------------------------------------------------

    async def handle(self, ev: CameraEvent) -> None:
        if not self.store.begin(ev, self.bus.client_id):
            log.info("already handled %s (a redelivery, or another instance has it): skipped", ev.event_id)
            return
        await self.run(ev, set())

    async def run(self, ev: CameraEvent, already_sent: set[str]) -> None:
        """Process one event; never raises (one bad event must not stop the service)."""
        self.flights[ev.event_id] = Flight(known=self.settings.known_face(ev.camera, ev.sub_label))
        with trace(ev.trace_id):  # every line about this event carries its trace id
            try:
                await self._process(ev, already_sent)
            except Exception:
                log.exception("event %s failed unexpectedly", ev.event_id)
            finally:
                self.flights.pop(ev.event_id, None)

    async def on_face(self, face: FaceNamed) -> None:
        """Frigate named the face of an event after it went out: a resident's holds every push of it not
        yet sent, and takes back one already sent (unless the event is threat level 2)."""
        name = self.settings.known_face(face.camera, face.sub_label)
        if name is None:
            return
        for event_id in (face.event_id, f"{face.event_id}@zones"):
            flight = self.flights.get(event_id)
            if flight is not None:
                flight.known = name
                log.info("event %s: the face is %s's (a resident): its pushes are held", event_id, name)
                continue
            record = self.store.record(event_id)
            if record is not None and self.store.owner(event_id) in (None, self.bus.client_id):
                await self._take_back(event_id, record, name)

    async def _take_back(self, event_id: str, record: dict[str, Any], name: str) -> None:
        """A finished event turned out to be a resident's: its push comes off the phone (through the
        clear channel, as any take-back)."""
        ev = self.store.event(event_id)
        if ev is None or record.get("held") or (record.get("threat_level") or 0) >= 2:
            return
        sent = record.get("channels") or {}
        if not any((sent.get(c) or {}).get("ok") for c in PUSHES):
            return
        channels = {**sent, "clear": await self._clear(ev, f"known face: {name}", set())}
        record = {**record, "channels": channels, "held": {"reason": "known face", "name": name},
                  "cleared": f"Frigate named {name} (a known face) after the push went out: taken back"}
        self.store.finish(event_id, record)
        await self.bus.publish(topics.TIMELINE, orjson.dumps(record))
        await self._face_held(ev.camera, name)
        log.info("event %s: %s's face named after the push: taken back", event_id, name)

    async def _clear(self, ev: CameraEvent, reason: str, already_sent: set[str]) -> dict[str, Any]:
        """Take the event's push back off the phone (the notify package clears the tag)."""
        clear = {"event_id": ev.event_id, "trace_id": ev.trace_id, "camera": ev.camera, "tag": ev.event_id,
                 "reason": reason}
        return await self._channel("clear", ev, clear, self.send_clear, already_sent)

    async def _face_held(self, camera: str, name: str) -> None:
        held = self.store.face_held(object_id(camera))
        await self.bus.publish(camera_topics(camera)["faces"], orjson.dumps(
            {"held": held, "last": name, "at": round(time.time(), 3)}), retain=True)

    def _withheld(self, ev: CameraEvent) -> str | None:
        """The resident whose face holds this event's pushes (below threat level 2), or None."""
        flight = self.flights.get(ev.event_id)
        return flight.known if flight is not None and flight.known and flight.level < 2 else None

    async def on_ring_image(self, topic: str, payload: bytes) -> None:
        await self.ring.on_image(topic, payload)

    async def announce_all(self) -> None:
        await self.ha.announce_all()

    # ---- the flow ------------------------------------------------------------------------------

    async def _process(self, ev: CameraEvent, already_sent: set[str]) -> None:
        t0 = time.perf_counter()
        cam = self.settings.camera(ev.camera)
        await self.ha.ensure(ev.camera, ev.source.startswith("ring"))
        record: dict[str, Any] = {"event_id": ev.event_id, "trace_id": ev.trace_id, "camera": ev.camera,
                                  "source": ev.source, "kind": ev.kind, "label": ev.label,
                                  "zones": list(ev.zones), "started_at": ev.started_at, "received_at": time.time()}
        held = self._held(ev, cam)
        if held:
            record["held"] = held
        look = asyncio.create_task(self._first_look(ev, cam, record, t0))
        # the first push never waits past the deadline: "<label> at <camera>" goes out, the triage updates it
        first: asyncio.Task[dict[str, Any]] | None = None
        flight = self.flights[ev.event_id]  # run() opened it
        if not held and not flight.known:  # a resident's face waits for the classifier (level 2 still pushes)
            left = self.cfg.first_push_deadline - (time.perf_counter() - t0)
            done, _ = await asyncio.wait({look}, timeout=max(0.0, left))
            if not done:
                what = f"{(ev.label or ev.kind).capitalize()} at {display_name(ev.camera)}"
                payload = self._text_payload(ev, cam, 1, what, s1=None, alert_at=record["received_at"])
                first = asyncio.create_task(self._channel("first", ev, payload, self.send_text, already_sent))
        jpeg, s1, stage1_ms = await look
        level = threat_level(ev, s1, self.cfg.triage_threshold)
        flight.level = level
        if not held and (who := self._withheld(ev)) is not None:
            held = {"reason": "known face", "name": who}
            record["held"] = held
            await self._face_held(ev.camera, who)
        record["stage1"] = {**s1.model_dump(exclude_none=True), "ms": stage1_ms, "skipped": jpeg is None}
        record["threat_level"] = level
        record["dropped"] = level == 0
        await self.bus.publish(topics.TRIAGE, orjson.dumps({
            "event_id": ev.event_id, "trace_id": ev.trace_id, "camera": ev.camera, "verdict": s1.verdict,
            "confidence": s1.confidence, "escalate": level > 0, "synthetic": s1.synthetic,
            "reason": s1.reason, "dropped": level == 0, "degraded": s1.synthetic, "threat_level": level,
            **({"held": held["reason"]} if held else {})}))
        channels: dict[str, Any] = {}
        record["channels"] = channels
        if held or level == 0:
            if held:
                log.info("event %s: held (%s): timeline only", ev.event_id, held["reason"])
            else:
                log.info("event %s: threat level 0 (%s %.2f): timeline only", ev.event_id, s1.verdict, s1.confidence)
            if first is not None:  # the deadline push went out: take it back
                channels["first"] = await first
                because = "threat level 0" if not held else f"{held['reason']}" + (
                    f": {held['name']}" if held.get("name") else "")
                channels["clear"] = await self._clear(ev, because, already_sent)
                record["cleared"] = (f"the first push went out at the deadline; then it was held ({because}), so it "
                                     "was cleared from the phone")
            await self._timeline(ev, record, already_sent)
            return

        message = s1.summary or f"{(ev.label or ev.kind).capitalize()} detected"
        text = self._text_payload(ev, cam, level, message, s1=s1, alert_at=record["received_at"])
        text_task = asyncio.create_task(self._update(first, ev, text, already_sent))
        t2 = time.perf_counter()
        async with self.slow:
            description, degraded, why = await self._describe(ev, jpeg, s1, cam)
        description, urgent = senior_level(description)
        rich_level: Level = 2 if urgent else level  # the senior model may raise the level, never lower it
        flight.level = rich_level
        record["stage2"] = {"ms": _ms(t2), "degraded": degraded, **({"error": why} if why else {}),
                            **({"raised_to": 2} if urgent and level < 2 else {})}
        ids = entity_ids(ev.camera)
        proxy = f"/api/image_proxy/{ids['image']}"
        # whether the phone shows the text push decides whether this one buzzes: give a text push still on
        # its way a moment (it is out in milliseconds unless its channel is failing)
        await asyncio.wait({text_task}, timeout=min(1.0, self.cfg.channel_timeout))
        rich = {**text, "message": description, "description": description, "threat_level": rich_level,
                "degraded": degraded or s1.synthetic, "image": proxy,
                "image_entity": ids["image"], "image_topic": camera_topics(ev.camera)["image"],
                "has_image": jpeg is not None,
                # quiet only over a push the phone got: a text channel that failed must not make this silent
                "push": push_data(ev.camera, ev.event_id, rich_level, cam, image=proxy if jpeg is not None else None,
                                  replaces=level if _shown(text_task) else (1 if _shown(first) else None))}
        rich_task = asyncio.create_task(self._channel("rich", ev, rich, self.send_rich, already_sent,
                                                      jpeg=jpeg))
        if first is not None:
            channels["first"] = await first
        channels["text"], channels["rich"] = await asyncio.gather(text_task, rich_task)
        record["threat_level"] = rich_level
        if (who := self._withheld(ev)) is not None:  # Frigate named a resident while this event was pushed
            record["held"] = {"reason": "known face", "name": who}
            if any(c.get("ok") for c in channels.values()):
                channels["clear"] = await self._clear(ev, f"known face: {who}", already_sent)
                record["cleared"] = f"Frigate named {who} (a known face) after the push went out: taken back"
            await self._face_held(ev.camera, who)
        record["total_ms"] = _ms(t0)
        await self._timeline(ev, record, already_sent)

    async def _first_look(self, ev: CameraEvent, cam: CameraSettings, record: dict[str, Any],
                          t0: float) -> tuple[bytes | None, Stage1, float]:
        """Snapshot and classifier (the bounded fast path): the image, if any, stage 1's verdict, and how
        long the classifier took (ms)."""
        async with self.fast:
            try:
                jpeg = await self._snapshot(ev)
                record["snapshot"] = {"ok": True, "bytes": len(jpeg), "ms": _ms(t0)}
            except SnapshotError as exc:
                record["snapshot"] = {"ok": False, "error": str(exc), "ms": _ms(t0)}
                log.warning("event %s: %s; escalating without the classifier", ev.event_id, exc)
                return None, escalate(f"no snapshot: {exc}"), 0.0
            t1 = time.perf_counter()
            s1 = await self._classify(ev, jpeg, cam)
            return jpeg, s1, _ms(t1)

    async def _update(self, first: asyncio.Task[dict[str, Any]] | None, ev: CameraEvent, text: dict[str, Any],
                      already_sent: set[str]) -> dict[str, Any]:
        """The classifier's text push; after a deadline push, its update (never arriving before it, and
        without a second buzz unless the level went up)."""
        if first is not None:
            await asyncio.wait({first})
            if _shown(first):
                text = {**text, "push": {**text["push"], **quiet_update(text["threat_level"], 1)}}
        return await self._channel("text", ev, text, self.send_text, already_sent)

    def _text_payload(self, ev: CameraEvent, cam: CameraSettings, level: Level, message: str,
                      s1: Stage1 | None, alert_at: float) -> dict[str, Any]:
        # alert_at: when the notifier got the event (the blueprint's cooldown tells alerts apart by it)
        return {"event_id": ev.event_id, "alert_at": alert_at, "trace_id": ev.trace_id, "camera": ev.camera,
                "title": title(ev), "message": message, "tag": ev.event_id, "event_type": event_type(ev),
                "verdict": s1.verdict if s1 else None, "degraded": s1.synthetic if s1 else False,
                "threat_level": level, "zones": list(ev.zones), "provisional": s1 is None,
                "push": push_data(ev.camera, ev.event_id, level, cam)}

    def _held(self, ev: CameraEvent, cam: CameraSettings) -> dict[str, Any] | None:
        """Why this event gets no push at all (it still reaches the timeline), or None."""
        snoozed = self.snoozes.active(ev.camera)
        if snoozed is not None and not (cam.ring_passes_snooze and event_type(ev) == "ding"):
            return {"reason": "snoozed", "until": snoozed[0], "by": snoozed[1]}
        if cam.zones and ev.source == "frigate" and not set(cam.zones) & set(ev.zones):
            return {"reason": "outside zones", "zones": list(cam.zones)}
        return None

    async def _timeline(self, ev: CameraEvent, record: dict[str, Any], already_sent: set[str]) -> None:
        res = await self._channel("timeline", ev, record, self.send_timeline, already_sent)
        record.setdefault("channels", {})["timeline"] = res
        self.store.finish(ev.event_id, record)
        sent = record.get("channels", {})
        text = sent.get("first") or sent.get("text") or {}  # the first push the phone got
        # retained: `homelab status` shows the last event and how long its text push took
        await self.bus.publish(LAST_EVENT, orjson.dumps({
            "event_id": ev.event_id, "trace_id": ev.trace_id, "camera": ev.camera, "label": ev.label,
            "at": record.get("received_at"), "dropped": record.get("dropped", False),
            "threat_level": record.get("threat_level"), "held": (record.get("held") or {}).get("reason"),
            "text_push_ok": text.get("ok"), "text_push_ms": text.get("ms"), "total_ms": record.get("total_ms")}),
            retain=True)

    # ---- stages ------------------------------------------------------------------------------

    async def _snapshot(self, ev: CameraEvent) -> bytes:
        ref = ev.snapshot
        if ref is None:
            raise SnapshotError("the event carries no snapshot reference")
        if ref.kind in ("frigate", "url") and ref.url:
            raw = await fetch_frigate(self.session, ref.url, self.cfg, self.hosts)
        elif ref.kind == "ring_mqtt" and ref.topic:
            raw = await self.ring.get(ref.topic, ev.started_at, self.cfg.ring_snapshot_wait)
        else:
            raise SnapshotError(f"no way to fetch a {ref.kind} snapshot here")
        return await asyncio.to_thread(prepare, raw, self.cfg)

    async def _classify(self, ev: CameraEvent, jpeg: bytes, cam: CameraSettings) -> Stage1:
        body = classifier_request(ev, jpeg, self.cfg.classifier_model, cam.context)
        try:
            answer = await self.router.chat(body, time_limit=self.cfg.classifier_timeout)
            return parse_stage1(RouterClient.content(answer))
        except CallFailed as exc:
            return escalate(f"classifier unavailable: {exc}")

    async def _describe(self, ev: CameraEvent, jpeg: bytes | None, s1: Stage1,
                        cam: CameraSettings) -> tuple[str, bool, str | None]:
        body = senior_request(ev, jpeg, s1, self.cfg.senior_model, cam.context)
        try:
            answer = await self.router.chat(body, time_limit=self.cfg.senior_timeout)
            text = RouterClient.content(answer).strip()
            if text:
                return text, False, None
            why, reason = "the senior model answered nothing", "senior model gave no description"
        except CallFailed as exc:
            why, reason = f"senior model unavailable: {exc}", "senior model offline"
        log.warning("event %s: %s; sending a degraded description", ev.event_id, why)
        return degraded_description(ev, s1, reason), True, why

    # ---- channels ----------------------------------------------------------------------------

    async def _channel(self, name: str, ev: CameraEvent, payload: dict[str, Any], send: Send,
                       already_sent: set[str], jpeg: bytes | None = None) -> dict[str, Any]:
        if name in PUSHES and (who := self._withheld(ev)) is not None:
            return {"ok": False, "held": f"known face: {who}"}  # a resident's: never sent
        return await self.channels.deliver(name, ev, payload, send, already_sent, jpeg)


PRUNE_EVERY = 6 * 3600.0
LAST_EVENT = f"homelab/{SERVICE}/last_event"


async def _prune(store: NotifierStore, days: float) -> None:
    dropped = store.prune(days)
    if dropped:
        log.info("timeline: %d events older than %g days removed", dropped, days)


async def main(settings: Settings, configure: Callable[[Notifier], None] | None = None) -> None:
    """Run the notifier; ``configure`` may swap a channel port (tests break one channel that way)."""
    store = NotifierStore(settings.state_dir / "notifier.sqlite3")
    validations = Validations(settings, SERVICE)
    ring_sub = f"{settings.ring.mqtt_prefix}/+/camera/+/snapshot/image" if settings.ring.mqtt_prefix else None
    ring_pattern = re.compile(r"^[^/]+/[^/]+/camera/[^/]+/snapshot/image$")
    # events are split between instances (a shared subscription); snoozes and Ring images reach each one
    subs = [SNOOZE_SET, topics.FACE] + ([ring_sub] if ring_sub else [])

    async def reannounce(_: Bus) -> None:
        await n.announce_all()

    try:
        async with aiohttp.ClientSession() as session, \
                Bus(settings.mqtt_url, SERVICE, subscribe=subs, shared=[topics.UNIQUE],
                    split=settings.shared_subscriptions, state_dir=settings.state_dir,
                    on_ha_online=reannounce,
                    confirm=(topics.NOTIFY_TEXT, topics.NOTIFY_RICH, topics.NOTIFY_CLEAR, topics.TIMELINE)) as bus:
            n = Notifier(settings, bus, session, store)
            if configure is not None:
                configure(n)
            async with asyncio.TaskGroup() as tg:
                await n.snoozes.show_all()
                retention = tg.create_task(every(PRUNE_EVERY, lambda: _prune(store, n.cfg.timeline_days),
                                                 "timeline retention"), name="timeline-retention")
                for pending, sent in store.pending(bus.client_id):
                    log.info("resuming %s after a restart (sent: %s)", pending.event_id,
                             ", ".join(sorted(sent)) or "-")
                    tg.create_task(n.run(pending, sent), name=f"event-{pending.event_id}")
                async for msg in bus.messages():
                    with validations.guard(msg.topic, msg.payload):
                        if msg.topic == topics.UNIQUE:
                            ev = validations.decode(CameraEvent, msg.topic, msg.payload)
                            if ev is not None:
                                tg.create_task(n.handle(ev), name=f"event-{ev.event_id}")
                        elif (camera := snooze_camera(msg.topic)) is not None:
                            if msg.payload:  # an empty retained message deletes it: nothing to do
                                snooze = validations.decode(SnoozeSet, msg.topic, msg.payload)
                                if snooze is not None:
                                    await n.snoozes.on_set(camera, snooze)
                        elif msg.topic == topics.FACE:
                            face = validations.decode(FaceNamed, msg.topic, msg.payload)
                            if face is not None:
                                await n.on_face(face)
                        elif ring_pattern.match(msg.topic):
                            await n.on_ring_image(msg.topic, msg.payload)
                retention.cancel()
    finally:
        store.close()
