"""The MQTT side, and the only module that imports aiomqtt: connect with a retained birth
message and last will, publish the outbox in order with a bounded window in flight, publish
retained state and health, take command requests, reconnect with capped jittered backoff.

Delivery: a record leaves the outbox only after the broker's PUBACK for it. A PUBACK that
carries a failure reason code (MQTT 5, e.g. an ACL refusal) keeps the records and backs off.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiomqtt
import structlog
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent import __version__
from agent.aio import wait_event
from agent.config import MqttSettings, Settings
from agent.logs import Repeating
from agent.uplink.encoding import content_type
from agent.uplink.outbox import Outbox, Record

log = structlog.get_logger("agent.uplink")

# CONNACK refusals that retrying soon will not fix: credentials and authorisation.
_AUTH_CODES_V311 = {4, 5}
_AUTH_CODES_V5 = {0x86, 0x87, 0x8A, 0x8C}  # bad credentials, not authorised, banned, bad auth
MAX_REQUEST_BYTES = 16 * 1024
STABLE_S = 30.0  # a connection that lasted this long resets the backoff; a shorter one does not


@dataclass(slots=True)
class UplinkStats:
    connected: bool = False
    connects: int = 0
    connect_failures: int = 0
    published: int = 0
    publish_refused: int = 0
    publish_failures: int = 0
    state_published: int = 0
    health_published: int = 0
    requests: int = 0
    requests_oversized: int = 0

    @property
    def reconnects(self) -> int:
        return max(0, self.connects - 1)


class _SocketErrors(logging.Handler):
    """Keeps paho's socket error messages, which aiomqtt does not pass on."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.last: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        self.last = record.getMessage()


def _paho_logger() -> tuple[logging.Logger, _SocketErrors]:
    # A private Logger (not registered with logging.getLogger) dies with its client.
    logger = logging.Logger("agent.uplink.paho", logging.ERROR)
    handler = _SocketErrors()
    logger.addHandler(handler)
    return logger, handler


class _Client(aiomqtt.Client):
    """aiomqtt's client, also noting PUBACKs whose reason code is a failure (MQTT 5) and
    the socket errors paho logs."""

    refused: int = 0
    last_refusal: str = ""
    socket_errors: _SocketErrors | None = None

    def _on_publish(
        self,
        client: Any,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties,
    ) -> None:
        if getattr(reason_code, "is_failure", False):
            self.refused += 1
            self.last_refusal = str(reason_code)
        super()._on_publish(client, userdata, mid, reason_code, properties)

    def lost_because(self) -> str | None:
        """Why the socket failed, where aiomqtt only reports a timeout waiting for CONNACK
        (a TLS 1.3 server rejects a missing client certificate after the handshake)."""
        return self.socket_errors.last if self.socket_errors is not None else None


class Backoff:
    """Capped exponential backoff with jitter (each delay drawn from [d/2, d])."""

    def __init__(self, first: float = 0.5, cap: float = 30.0) -> None:
        self.first, self.cap = first, cap
        self.attempts = 0

    def next(self) -> float:
        delay = min(self.cap, self.first * (2**self.attempts))
        self.attempts += 1
        return random.uniform(delay / 2, delay)

    def reset(self) -> None:
        self.attempts = 0


RequestHandler = Callable[[bytes, Any], None]


def _tls_context(mqtt: MqttSettings) -> ssl.SSLContext | None:
    """TLS with the configured CA (or the system's), and a client certificate for mutual TLS."""
    tls = mqtt.tls
    if tls is None:
        return None
    context = ssl.create_default_context(cafile=str(tls.ca) if tls.ca else None)
    if tls.cert is not None and tls.key is not None:
        context.load_cert_chain(str(tls.cert), str(tls.key))
    return context


def _password(mqtt: MqttSettings) -> str | None:
    """Read at each connect, so a rotated password file needs no restart."""
    if mqtt.password_file is None:
        return None
    return mqtt.password_file.read_text(encoding="utf-8").rstrip("\r\n")


def _first_leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


class Uplink:
    def __init__(
        self,
        *,
        settings: Settings,
        outbox: Outbox,
        boot_id: str,
        state: Callable[[], dict[str, Any] | None],
        health: Callable[[], dict[str, Any]],
        on_request: RequestHandler,
        window: int = 64,
        auth_retry_s: float = 60.0,
    ) -> None:
        self._settings = settings
        self._mqtt = settings.mqtt
        self._outbox = outbox
        self._boot_id = boot_id
        self._state = state
        self._health = health
        self._on_request = on_request
        self._window = window
        self._auth_retry_s = auth_retry_s
        self.prefix = settings.topic_prefix
        self._wake = asyncio.Event()
        self._state_now = asyncio.Event()
        self._stopping = asyncio.Event()
        self._stop_deadline = 0.0
        self._done = asyncio.Event()
        self._lost = Repeating(log, "mqtt_disconnected", level="warning")
        self._reconnect_logged = False
        self.stats = UplinkStats()
        self.v5 = self._mqtt.protocol == "5"

    # --- what other components call -------------------------------------------------
    def notify(self) -> None:
        """New records are in the outbox."""
        self._wake.set()

    def request_state(self) -> None:
        """Publish the retained state now (e.g. `state.snapshot`)."""
        self._state_now.set()

    async def stop(self, drain_s: float) -> None:
        """Publish what the outbox holds for up to `drain_s`, say goodbye, disconnect."""
        self._stop_deadline = time.monotonic() + drain_s
        self._stopping.set()
        self._wake.set()
        await wait_event(self._done, drain_s + 1.5)

    # --- the connection ----------------------------------------------------------------
    def topic(self, suffix: str) -> str:
        return f"{self.prefix}/{suffix}"

    def _status(self, online: bool, reason: str | None = None) -> bytes:
        """P/status. `ts` is now: for the last will (made at connect time) that is the time of
        the connection it belongs to, since the broker sends it unchanged whenever it is lost.
        `reason` says why offline: `connection_lost` (the will) or `stopped` (orderly)."""
        body: dict[str, Any] = {
            "online": online,
            "agent_version": __version__,
            "boot_id": self._boot_id,
            "ts": round(time.time(), 3),
        }
        if reason is not None:
            body["reason"] = reason
        return json.dumps(body, separators=(",", ":")).encode()

    def _client(self) -> _Client:
        m = self._mqtt
        will = aiomqtt.Will(
            self.topic("status"), self._status(False, "connection_lost"), qos=1, retain=True
        )
        kwargs: dict[str, Any] = {}
        if self.v5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = 3600  # queued command requests survive a tunnel
            kwargs.update(protocol=aiomqtt.ProtocolVersion.V5, clean_start=False, properties=props)
        else:
            kwargs.update(protocol=aiomqtt.ProtocolVersion.V311, clean_session=False)
        logger, errors = _paho_logger()
        client = _Client(
            m.host,
            m.port,
            identifier=self._settings.vehicle_id,
            username=m.username,
            password=_password(m),
            will=will,
            keepalive=m.keepalive_s,
            tls_context=_tls_context(m),
            timeout=10.0,
            max_inflight_messages=self._window,
            logger=logger,
            # Many small PUBLISH packets in flight: without TCP_NODELAY, Nagle's algorithm and
            # the broker's delayed ACKs stall each window by tens of milliseconds.
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
            **kwargs,
        )
        client.socket_errors = errors
        return client

    async def run(self) -> None:
        backoff = Backoff()
        try:
            while not self._stopping.is_set():
                client: _Client | None = None
                connected_at: float | None = None
                try:
                    client = self._client()
                    async with client:
                        self.stats.connected = True
                        self.stats.connects += 1
                        connected_at = time.monotonic()
                        # In an episode of lost connections only the first reconnect is
                        # logged: a flapping link's disconnect lines carry the count.
                        if not (self._lost.active and self._reconnect_logged):
                            self._reconnect_logged = self._lost.active
                            log.info(
                                "mqtt_connected",
                                host=self._mqtt.host,
                                port=self._mqtt.port,
                                reconnects=self.stats.reconnects,
                            )
                        await self._session(client)
                        return
                except* (aiomqtt.MqttError, OSError, ssl.SSLError) as group:
                    self.stats.connected = False
                    cause = client.lost_because() if client is not None else None
                    # Only a connection that held resets the backoff: one taken over at once
                    # by another client with our id must not reconnect at full speed.
                    if connected_at is not None and time.monotonic() - connected_at >= STABLE_S:
                        backoff.reset()
                    delay = self._failed(_first_leaf(group), backoff, cause)
                if self._stopping.is_set():
                    return
                await wait_event(self._stopping, delay)
        finally:
            self.stats.connected = False
            self._done.set()

    def _failed(self, exc: BaseException, backoff: Backoff, cause: str | None = None) -> float:
        """Log one clear line for a lost or refused connection; the delay before retrying."""
        self.stats.connect_failures += 1
        text = str(exc)
        if cause:
            text = f"{text}: {cause}" if text else cause
        rc = getattr(exc, "rc", None)
        code = getattr(rc, "value", rc)
        auth = isinstance(exc, MqttConnectError) and code in (
            _AUTH_CODES_V5 if self.v5 else _AUTH_CODES_V311
        )
        if auth:
            delay = random.uniform(0.8, 1.0) * self._auth_retry_s
            log.error(
                "mqtt_auth_refused",
                error=text,
                retry_s=round(delay, 1),
                hint="check mqtt.username, mqtt.password_file and the broker's users",
            )
            return delay
        delay = backoff.next()
        if isinstance(exc, ssl.SSLError) or "SSL" in text or "CERTIFICATE_VERIFY_FAILED" in text:
            log.error(
                "mqtt_tls_failed",
                error=text,
                retry_s=round(delay, 1),
                hint="check mqtt.tls (ca for the broker, cert/key for mutual TLS)",
            )
        else:
            fields: dict[str, Any] = {"retry_s": round(delay, 1), "attempt": backoff.attempts}
            if "taken over" in text.lower():
                fields["hint"] = "another client with this client id takes the connection over"
            if not self._lost.active:
                self._reconnect_logged = False  # a new episode: its first reconnect is logged
            self._lost.failed(error=text or type(exc).__name__, **fields)
        return delay

    async def _session(self, client: _Client) -> None:
        await client.publish(self.topic("status"), self._status(True), qos=1, retain=True)
        await self._subscribe(client)
        self._state_now.set()  # a fresh connection gets the current state at once
        async with asyncio.TaskGroup() as tg:
            receiver = tg.create_task(self._receive(client))
            state = tg.create_task(self._state_loop(client))
            health = tg.create_task(self._health_loop(client))
            stable = tg.create_task(self._stable())
            await self._drain(client)  # returns once stopping and drained (or out of time)
            for task in (receiver, state, health, stable):
                task.cancel()
        with contextlib.suppress(aiomqtt.MqttError):
            await client.publish(
                self.topic("status"),
                self._status(False, "stopped"),
                qos=1,
                retain=True,
                timeout=1.0,
            )
        log.info("mqtt_goodbye", published=self.stats.published, outbox=self._outbox.depth())

    async def _stable(self) -> None:
        """A connection that held for STABLE_S ends an episode of lost connections."""
        await asyncio.sleep(STABLE_S)
        self._lost.cleared(host=self._mqtt.host, port=self._mqtt.port)

    async def _subscribe(self, client: _Client) -> None:
        topic = self.topic("commands/request")
        result = await client.subscribe(topic, qos=1)
        failed = [
            str(code)
            for code in result
            if (code >= 0x80 if isinstance(code, int) else getattr(code, "is_failure", False))
        ]
        if failed:
            log.error(
                "mqtt_subscribe_refused",
                topic=topic,
                reason=", ".join(failed),
                hint="the broker's ACL does not let this vehicle read its command topic",
            )

    async def _drain(self, client: _Client) -> None:
        """Publish the outbox in order with up to `window` messages in flight (a sliding
        window: a new message goes out as soon as any PUBACK comes back, so a broker that
        delays its acknowledgements costs throughput only once per window, not per round).
        Returns once stopping and drained, or when the stop deadline has passed."""
        in_flight: set[int] = set()
        self._outbox.in_flight = in_flight  # the outbox never drops these to make room
        completed: list[int] = []
        progress = asyncio.Event()
        cursor = 0  # highest id handed to a publish
        refused_seen = client.refused
        tasks: set[asyncio.Task[None]] = set()

        async def send(
            record_id: int, topic: str, payload: bytes, properties: Properties | None
        ) -> None:
            try:
                await client.publish(topic, payload, qos=1, properties=properties, timeout=30.0)
                completed.append(record_id)
            finally:
                in_flight.discard(record_id)
                progress.set()

        try:
            async with asyncio.TaskGroup() as tg:
                while True:
                    if completed:
                        if client.refused != refused_seen:
                            # Some of these were refused and we cannot tell which: keep them
                            # all (at-least-once) once nothing is in flight, then retry slowly.
                            if in_flight:
                                await self._wait(progress, 1.0)
                                continue
                            self.stats.publish_refused += client.refused - refused_seen
                            refused_seen = client.refused
                            log.error(
                                "mqtt_publish_refused",
                                reason=client.last_refusal,
                                records=len(completed),
                                kept=True,
                                hint="the broker's ACL does not let this vehicle publish "
                                "its topics",
                            )
                            completed.clear()
                            cursor = 0
                            if self._stopping.is_set():
                                return  # the records stay in the outbox for the next start
                            await self._wait(self._stopping, self._auth_retry_s / 4)
                            continue
                        done = completed[:]
                        completed.clear()
                        self._outbox.ack(done)
                        self.stats.published += len(done)
                    stopping = self._stopping.is_set()
                    if stopping and time.monotonic() >= self._stop_deadline:
                        for task in tasks:
                            task.cancel()  # unacknowledged: they stay in the outbox
                        return
                    room = self._window - len(in_flight)
                    records = self._outbox.pending(room, after=cursor) if room > 0 else []
                    for record in records:
                        in_flight.add(record.id)
                        cursor = record.id
                        task = tg.create_task(
                            send(
                                record.id,
                                self._destination(record.topic),
                                record.payload,
                                self._properties(record),
                            )
                        )
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
                    if records:
                        continue
                    if not in_flight and not completed:
                        if stopping:
                            return
                        self._wake.clear()
                        await self._wait(self._wake, 1.0)
                    else:
                        progress.clear()
                        if not completed:
                            await self._wait(progress, 1.0)
        finally:
            self._outbox.in_flight = set()

    def _destination(self, topic: str) -> str:
        """Outbox topics are suffixes under the prefix; "@topic" is a full topic (an MQTT 5
        request's response topic)."""
        return topic[1:] if topic.startswith("@") else self.topic(topic)

    def _properties(self, record: Record) -> Properties | None:
        """MQTT 5: a response's correlation data; telemetry's content type when it is not plain
        JSON (CBOR, zstd), read from the payload so that older records are labelled as they
        are. Plain JSON goes without one: no bytes spent on saying the default."""
        if not self.v5:
            return None
        kind = None
        if record.kind == "telemetry" and record.payload[:1] != b"{":
            kind = content_type(record.payload)
        if record.correlation is None and kind is None:
            return None
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        if record.correlation is not None:
            props.CorrelationData = record.correlation
        if kind is not None:
            props.ContentType = kind
        return props

    @staticmethod
    async def _wait(event: asyncio.Event, seconds: float) -> None:
        await wait_event(event, seconds)

    async def _receive(self, client: _Client) -> None:
        request_topic = self.topic("commands/request")
        async for message in client.messages:
            if not message.topic.matches(request_topic):
                continue
            self.stats.requests += 1
            payload = message.payload
            if not isinstance(payload, bytes | bytearray):
                payload = str(payload).encode() if payload is not None else b""
            if len(payload) > MAX_REQUEST_BYTES:
                self.stats.requests_oversized += 1
            self._on_request(bytes(payload), message.properties)

    async def _state_loop(self, client: _Client) -> None:
        interval = self._settings.telemetry.state_interval_s
        while True:
            await wait_event(self._state_now, interval)
            self._state_now.clear()
            body = self._state()
            if body is None:
                continue
            payload = json.dumps(body, separators=(",", ":")).encode()
            await client.publish(self.topic("state"), payload, qos=1, retain=True)
            self.stats.state_published += 1

    async def _health_loop(self, client: _Client) -> None:
        interval = self._settings.telemetry.health_interval_s
        while True:
            await asyncio.sleep(interval)
            payload = json.dumps(self._health(), separators=(",", ":")).encode()
            await client.publish(self.topic("health"), payload, qos=0)
            self.stats.health_published += 1


FINAL_STATUSES = frozenset({"succeeded", "failed", "timed_out", "rejected"})


async def send_token(
    settings: Settings,
    token: bytes,
    command_id: str | None,
    timeout_s: float,
    on_response: Callable[[dict[str, Any]], None],
) -> dict[str, Any] | None:
    """Publish a token to the vehicle's request topic and hand each response for it to
    `on_response` until a final one (returned), or None after `timeout_s`."""
    m = settings.mqtt
    prefix = settings.topic_prefix
    protocol = aiomqtt.ProtocolVersion.V5 if m.protocol == "5" else aiomqtt.ProtocolVersion.V311
    identifier = f"{settings.vehicle_id}-send-{random.randrange(1 << 32):08x}"
    final: dict[str, Any] | None = None
    async with aiomqtt.Client(
        m.host,
        m.port,
        identifier=identifier,
        username=m.username,
        password=_password(m),
        tls_context=_tls_context(m),
        protocol=protocol,
        timeout=10.0,
    ) as client:
        await client.subscribe(f"{prefix}/commands/response", qos=1)
        await client.publish(f"{prefix}/commands/request", token, qos=1)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                async for message in client.messages:
                    try:
                        body = json.loads(message.payload)
                    except (TypeError, ValueError):
                        continue
                    if not isinstance(body, dict) or body.get("id") != command_id:
                        continue
                    on_response(body)
                    if body.get("status") in FINAL_STATUSES:
                        final = body
                        break
    return final
