"""Signed commands end to end: the agent (in this process, so a spy on the virtual bus sees
every frame it sends), the simulator, and a real mosquitto.

Every rejection asserts its reason code AND that no frame of the command's CAN message went
out on the bus."""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cantools
import jwt
import paho.mqtt.publish as publish
import pytest

from agent import cli
from tests.support.agents import Key, Spy, agent_running, trust_entry
from tests.support.brokers import Broker, Subscriber, wait_until
from tests.support.configs import DBC_DIR, daemon_config
from tests.support.schemas import validate

BODY = cantools.database.load_file(DBC_DIR / "ev_body.dbc")
PT = cantools.database.load_file(DBC_DIR / "ev_powertrain.dbc")
CLIMATE_REQ = BODY.get_message_by_name("TCU_ClimateRequest").frame_id
HVAC = BODY.get_message_by_name("HVAC_Status")
CHARGE_REQ = PT.get_message_by_name("TCU_ChargeRequest").frame_id
LIMIT_REQ = PT.get_message_by_name("TCU_ChargeLimitRequest").frame_id
OBC = PT.get_message_by_name("OBC_Status")
COMMAND_FRAMES = (CLIMATE_REQ, CHARGE_REQ, LIMIT_REQ)


@dataclass
class Rig:
    config: Path
    vehicle: str
    port: int
    key: Key
    spy: Spy
    sub: Subscriber

    def send(self, token: bytes) -> None:
        publish.single(f"vehicles/{self.vehicle}/commands/request", token, qos=1, port=self.port)

    def responses(self) -> list[dict[str, Any]]:
        return [m.json() for m in self.sub.on("commands/response")]

    def final(self, jti: str | None, timeout: float = 15.0) -> dict[str, Any]:
        finals = ("succeeded", "failed", "timed_out", "rejected")
        return wait_until(
            lambda: next(
                (r for r in self.responses() if r["id"] == jti and r["status"] in finals), None
            ),
            timeout,
            f"a final response for {jti}",
        )

    def statuses(self, jti: str) -> list[str]:
        return [r["status"] for r in self.responses() if r["id"] == jti]

    def frames_sent(self) -> dict[int, int]:
        return {f: self.spy.count(f) for f in COMMAND_FRAMES}


@pytest.fixture
def rig_factory(
    broker: Broker, tmp_path: Path
) -> Iterator[Callable[..., tuple[Rig, Callable[[], Any]]]]:
    made: list[Rig] = []

    def make(
        scenario: str = "parked",
        trust: str = "",
        name: str = "rig",
        simulator: bool = True,
        speedup: float = 1.0,
    ) -> tuple[Rig, Callable[[], Any]]:
        folder = tmp_path / name
        folder.mkdir(exist_ok=True)
        key = Key("fleet-app")
        text = daemon_config(broker.port, folder, scenario=scenario, speedup=speedup)
        text = re.sub(r"  trust: \[\][^\n]*\n", "  trust:\n" + trust_entry(key) + trust, text)
        if not simulator:  # the car runs apart from the agent and outlives its restarts
            text = text.replace("simulator:\n  enabled: true", "simulator:\n  enabled: false")
        config = folder / "agent.yaml"
        config.write_text(text)
        vehicle = re.search(r"vehicle_id: (\S+)", text)[1]  # type: ignore[index]
        channels = re.findall(r"channel: (\S+)", text)
        rig = Rig(config, vehicle, broker.port, key, Spy(channels), Subscriber(broker.port))
        made.append(rig)
        return rig, lambda: agent_running(config)

    yield make
    for rig in made:
        rig.spy.close()
        rig.sub.close()


def _hvac_active(rig: Rig) -> str | None:
    msg = rig.spy.last(HVAC.frame_id)
    return None if msg is None else str(HVAC.decode(bytes(msg.data))["HVAC_ACActive"])


def _obc(rig: Rig) -> dict[str, Any]:
    msg = rig.spy.last(OBC.frame_id)
    assert msg is not None
    return dict(OBC.decode(bytes(msg.data)))


def _run(rig: Rig, token: bytes) -> dict[str, Any]:
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    rig.send(token)
    return rig.final(jti)


def test_every_reference_command_succeeds_and_the_car_responds(
    rig_factory: Callable[..., tuple[Rig, Callable[[], Any]]],
) -> None:
    """Positive controls: accepted, then succeeded, the frame went out and the feedback
    signal changed on the bus."""
    rig, running = rig_factory(scenario="plugged_in")
    key, car = rig.key, rig.vehicle
    with running():
        wait_until(lambda: rig.sub.on("state"), 15, "the first state")
        time.sleep(1.0)  # every signal seen once

        assert _hvac_active(rig) == "OFF"
        token = key.token(car, "hvac.start", {"target_temp_c": 22.5, "duration_min": 10})
        result = _run(rig, token)
        jti = result["id"]
        assert result["status"] == "succeeded", result
        assert rig.statuses(jti) == ["accepted", "succeeded"]
        assert rig.spy.count(CLIMATE_REQ) == 3  # repeat: 3
        sent = BODY.decode_message(CLIMATE_REQ, bytes(rig.spy.last(CLIMATE_REQ).data))
        assert (str(sent["TCU_ClimateCmd"]), sent["TCU_ClimateTargetTemp"]) == ("ON", 22.5)
        assert _hvac_active(rig) == "ON"

        result = _run(rig, key.token(car, "hvac.stop"))
        assert result["status"] == "succeeded", result
        assert _hvac_active(rig) == "OFF"

        assert str(_obc(rig)["OBC_ChargeState"]) == "CHARGING"
        assert _run(rig, key.token(car, "charging.stop"))["status"] == "succeeded"
        assert str(_obc(rig)["OBC_ChargeState"]) == "IDLE"
        assert _run(rig, key.token(car, "charging.start"))["status"] == "succeeded"
        assert str(_obc(rig)["OBC_ChargeState"]) == "CHARGING"

        result = _run(rig, key.token(car, "charging.set_limit", {"soc_pct": 90}))
        assert result["status"] == "succeeded", result
        assert _obc(rig)["OBC_ChargeLimit"] == 90

        states_before = len(rig.sub.on("state"))
        assert _run(rig, key.token(car, "state.snapshot"))["status"] == "succeeded"
        wait_until(lambda: len(rig.sub.on("state")) > states_before, 5, "a fresh P/state")


def _flip_payload_bit(token: bytes) -> bytes:
    header, payload, signature = token.split(b".")
    body = base64.urlsafe_b64decode(payload + b"=" * (-len(payload) % 4))
    index = body.index(b"hvac") + 1
    body = body[:index] + bytes([body[index] ^ 0x01]) + body[index + 1 :]  # "hvac" -> "hwac"
    return b".".join([header, base64.urlsafe_b64encode(body).rstrip(b"="), signature])


def _flip_signature_bit(token: bytes) -> bytes:
    header, payload, signature = token.split(b".")
    raw = bytearray(base64.urlsafe_b64decode(signature + b"=" * (-len(signature) % 4)))
    raw[10] ^= 0x04
    return b".".join([header, payload, base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=")])


def test_rejections_have_their_reason_and_send_nothing(
    rig_factory: Callable[..., tuple[Rig, Callable[[], Any]]],
) -> None:
    revoked, expired, readonly = Key("old-laptop"), Key("contractor"), Key("dashboard")
    trust = (
        trust_entry(revoked, extra="revoked: true")
        + trust_entry(expired, extra="not_after: 2020-01-01T00:00:00Z")
        + trust_entry(readonly, allow='["state.*"]')
    )
    rig, running = rig_factory(scenario="parked", trust=trust)
    key, car = rig.key, rig.vehicle
    start = {"target_temp_c": 21.0}
    now = time.time()
    stranger = Key("stranger")
    impostor = Key("fleet-app")  # the trusted kid, another private key
    public_raw = key.private.public_key().public_bytes_raw()
    claims = {
        "jti": "hs-1",
        "aud": car,
        "iat": int(now),
        "exp": int(now) + 60,
        "cmd": "hvac.start",
        "params": start,
    }
    cases: list[tuple[str, bytes, str]] = [
        (
            "flipped bit in the payload",
            _flip_payload_bit(key.token(car, "hvac.start", start)),
            "BAD_SIGNATURE",
        ),
        (
            "flipped bit in the signature",
            _flip_signature_bit(key.token(car, "hvac.start", start)),
            "BAD_SIGNATURE",
        ),
        ("unknown key", stranger.token(car, "hvac.start", start), "UNKNOWN_KEY"),
        ("kid of A, signature of B", impostor.token(car, "hvac.start", start), "BAD_SIGNATURE"),
        (
            "alg none",
            jwt.encode(claims, None, algorithm="none", headers={"kid": "fleet-app"}).encode(),
            "BAD_SIGNATURE",
        ),
        (
            "HS256 with the public key as secret",
            jwt.encode(
                claims, public_raw, algorithm="HS256", headers={"kid": "fleet-app"}
            ).encode(),
            "BAD_SIGNATURE",
        ),
        ("revoked key", revoked.token(car, "hvac.start", start), "KEY_REVOKED"),
        ("key past not_after", expired.token(car, "hvac.start", start), "KEY_REVOKED"),
        (
            "allow does not cover the command",
            readonly.token(car, "hvac.start", start),
            "NOT_PERMITTED",
        ),
        ("aud of another vehicle", key.token("OTHER-CAR", "hvac.start", start), "WRONG_VEHICLE"),
        ("expired", key.token(car, "hvac.start", start, iat=now - 400, ttl=200), "EXPIRED"),
        (
            "iat in the future beyond skew",
            key.token(car, "hvac.start", start, iat=now + 120),
            "NOT_YET_VALID",
        ),
        ("lifetime over max_ttl_s", key.token(car, "hvac.start", start, ttl=301), "TTL_TOO_LONG"),
        ("unknown command", key.token(car, "hvac.defrost", {}), "UNKNOWN_COMMAND"),
        ("missing parameter", key.token(car, "hvac.start", {}), "BAD_PARAMS"),
        (
            "wrong-type parameter",
            key.token(car, "hvac.start", {"target_temp_c": "warm"}),
            "BAD_PARAMS",
        ),
        (
            "boolean is not a number",
            key.token(car, "hvac.start", {"target_temp_c": True}),
            "BAD_PARAMS",
        ),
        (
            "out-of-range parameter",
            key.token(car, "hvac.start", {"target_temp_c": 35}),
            "BAD_PARAMS",
        ),
        (
            "NaN parameter",
            key.token(car, "hvac.start", {"target_temp_c": float("nan")}),
            "BAD_PARAMS",
        ),
        (
            "extra parameter",
            key.token(car, "hvac.start", {"target_temp_c": 21, "fan": 3}),
            "BAD_PARAMS",
        ),
        ("cable not connected", key.token(car, "charging.start"), "PRECONDITION_FAILED"),
        (
            "a huge integer for iat",
            key.token(car, "hvac.start", start, iat=0, exp=10**400),
            "MALFORMED",
        ),
        ("exp before iat", key.token(car, "hvac.start", start, exp=int(now) - 10), "MALFORMED"),
        (
            "a huge integer parameter",
            key.token(car, "hvac.start", {"target_temp_c": 10**400}),
            "BAD_PARAMS",
        ),
        ("garbage bytes", bytes(range(256)) * 4, "MALFORMED"),
        ("empty payload", b"", "MALFORMED"),
        ("1 MiB payload", b"A" * (1024 * 1024), "MALFORMED"),
    ]
    with running():
        wait_until(lambda: rig.sub.on("state"), 15, "the first state")
        time.sleep(1.0)
        before = rig.frames_sent()
        for label, token, reason in cases:
            count = len(rig.responses())
            rig.send(token)
            wait_until(lambda count=count: len(rig.responses()) > count, 10, label)
            response = rig.responses()[count]
            assert (response["status"], response["reason"]) == ("rejected", reason), (
                label,
                response,
            )
            untrusted = ("garbage bytes", "empty payload", "1 MiB payload")
            if reason in ("BAD_SIGNATURE", "UNKNOWN_KEY") or label in untrusted:
                assert response["id"] is None or response["id"] == "hs-1", (label, response)
        time.sleep(0.5)
        assert rig.frames_sent() == before  # not one command frame for any of them


def test_preconditions_driving_and_low_charge(
    rig_factory: Callable[..., tuple[Rig, Callable[[], Any]]],
    tmp_path: Path,
) -> None:
    low = tmp_path / "low.yaml"
    low.write_text("mode: parked\ninitial: {soc: 15.0}\n")
    for scenario, needle in (("driving", "IsParkLockEngaged"), (str(low), "StateOfCharge")):
        rig, running = rig_factory(scenario=scenario, name=Path(scenario).stem)
        with running():
            wait_until(lambda rig=rig: rig.sub.on("state"), 15, "the first state")
            time.sleep(1.0)
            before = rig.frames_sent()
            result = _run(rig, rig.key.token(rig.vehicle, "hvac.start", {"target_temp_c": 20}))
            assert (result["status"], result["reason"]) == ("rejected", "PRECONDITION_FAILED")
            assert needle in result["detail"]
            assert "False" not in result["detail"] and "True" not in result["detail"]
            time.sleep(0.3)
            assert rig.frames_sent() == before


def test_a_jti_acts_once_even_after_a_restart(
    rig_factory: Callable[..., tuple[Rig, Callable[[], Any]]],
) -> None:
    rig, running = rig_factory(scenario="parked")
    token = rig.key.token(rig.vehicle, "hvac.start", {"target_temp_c": 24}, ttl=300)
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    with running():
        wait_until(lambda: rig.sub.on("state"), 15, "the first state")
        time.sleep(1.0)
        assert _run(rig, token)["status"] == "succeeded"
        frames = rig.spy.count(CLIMATE_REQ)
        count = len(rig.responses())
        rig.send(token)  # a redelivery, or an attacker's replay: the same bytes
        wait_until(lambda: len(rig.responses()) > count, 10, "the replay's answer")
        replay = rig.responses()[count]
        assert (replay["id"], replay["reason"]) == (jti, "REPLAY")
        assert replay["detail"] == "already handled: succeeded"  # the stored result
    with running():
        wait_until(lambda: rig.sub.on("state"), 15, "state after restart")
        count = len(rig.responses())
        rig.send(token)
        wait_until(lambda: len(rig.responses()) > count, 10, "the replay after restart")
        assert rig.responses()[count]["reason"] == "REPLAY"
        time.sleep(0.5)
    assert rig.spy.count(CLIMATE_REQ) == frames


def test_hvac_duration_switches_climate_off_across_a_restart(
    rig_factory: Callable[..., tuple[Rig, Callable[[], Any]]],
) -> None:
    """duration_min: 1, then the agent restarts: the stop still comes, about a minute later.
    The simulator runs on its own here, so the car keeps its state while the agent restarts."""
    rig, running = rig_factory(scenario="parked", simulator=False)
    car = threading.Thread(
        target=cli.main,
        args=(["simulate", "-c", str(rig.config), "--scenario", "parked", "--duration", "80"],),
        daemon=True,
    )
    car.start()
    with running():
        wait_until(lambda: rig.sub.on("state"), 15, "the first state")
        time.sleep(1.0)
        result = _run(
            rig, rig.key.token(rig.vehicle, "hvac.start", {"target_temp_c": 23, "duration_min": 1})
        )
        assert result["status"] == "succeeded"
        started = time.monotonic()
    assert _hvac_active(rig) == "ON"
    with running():
        wait_until(lambda: _hvac_active(rig) == "OFF", 90, "climate off after duration_min")
        elapsed = time.monotonic() - started
        event = rig.sub.wait_for("events", lambda m: m.json()["type"] == "command").json()
    assert 55 <= elapsed <= 80
    assert event["name"] == "hvac.stop" and event["data"]["automatic"] is True
    validate("events", event)
    assert event["data"]["origin"] == result["id"]
    sent = BODY.decode_message(CLIMATE_REQ, bytes(rig.spy.last(CLIMATE_REQ).data))
    assert str(sent["TCU_ClimateCmd"]) == "OFF"


def test_mqtt5_response_topic_and_correlation_data(
    rig_factory: Callable[..., tuple[Rig, Callable[[], Any]]],
) -> None:
    """A requester that names a response topic gets the answers there too, with its
    correlation data, as well as on P/commands/response."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    rig, running = rig_factory(scenario="parked")
    got: list[tuple[str, bytes, bytes | None]] = []
    app = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    app.on_message = lambda _c, _u, m: got.append(
        (m.topic, bytes(m.payload), getattr(m.properties, "CorrelationData", None))
    )
    app.connect("127.0.0.1", rig.port)
    app.loop_start()
    app.subscribe("backend/replies/#", qos=1)
    token = rig.key.token(rig.vehicle, "state.snapshot")
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    with running():
        wait_until(lambda: rig.sub.on("state"), 15, "the first state")
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = "backend/replies/phone-7"
        props.CorrelationData = b"corr-42"
        app.publish(
            f"vehicles/{rig.vehicle}/commands/request", token, qos=1, properties=props
        ).wait_for_publish(5)
        assert rig.final(jti)["status"] == "succeeded"
        wait_until(lambda: len(got) >= 2, 10, "both answers on the response topic")
    app.loop_stop()
    app.disconnect()
    assert [(t, json.loads(p)["status"], c) for t, p, c in got] == [
        ("backend/replies/phone-7", "accepted", b"corr-42"),
        ("backend/replies/phone-7", "succeeded", b"corr-42"),
    ]


def test_rejections_go_to_the_response_topic_too(
    rig_factory: Callable[..., tuple[Rig, Callable[[], Any]]],
) -> None:
    """Every rejection, from a request that cannot be read to a replay, reaches the
    requester's response topic with its correlation data, as well as P/commands/response."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    rig, running = rig_factory(scenario="parked")
    got: list[tuple[bytes | None, dict[str, Any]]] = []
    app = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    app.on_message = lambda _c, _u, m: got.append(
        (getattr(m.properties, "CorrelationData", None), json.loads(m.payload))
    )
    app.connect("127.0.0.1", rig.port)
    app.loop_start()
    app.subscribe("backend/replies/#", qos=1)
    key, car = rig.key, rig.vehicle
    done = key.token(car, "state.snapshot")
    requests: list[tuple[bytes, bytes, str]] = [
        (b"not a token", b"c-garbage", "MALFORMED"),
        (b"x" * 20000, b"c-huge", "MALFORMED"),
        (_flip_signature_bit(key.token(car, "hvac.start", {})), b"c-sig", "BAD_SIGNATURE"),
        (key.token(car, "hvac.start", {"target_temp_c": 99}), b"c-params", "BAD_PARAMS"),
        (key.token(car, "hvac.start", {}, iat=time.time() - 400, ttl=200), b"c-exp", "EXPIRED"),
        (done, b"c-replay", "REPLAY"),
    ]
    with running():
        wait_until(lambda: rig.sub.on("state"), 15, "the first state")
        _run(rig, done)  # the replay below repeats it
        for payload, correlation, _reason in requests:
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = "backend/replies/phone-7"
            props.CorrelationData = correlation
            app.publish(
                f"vehicles/{car}/commands/request", payload, qos=1, properties=props
            ).wait_for_publish(5)
        wait_until(lambda: len(got) >= len(requests), 10, "every rejection on the reply topic")
    app.loop_stop()
    app.disconnect()
    answers = {c: (body["status"], body["reason"]) for c, body in got}
    assert answers == {c: ("rejected", reason) for _p, c, reason in requests}
    on_shared = [r for r in rig.responses() if r["status"] == "rejected"]
    assert len(on_shared) == len(requests)


def test_every_outcome_reaches_the_response_topic(
    rig_factory: Callable[..., tuple[Rig, Callable[[], Any]]],
) -> None:
    """The outcomes a healthy car never gives, each on the requester's response topic with its
    correlation data, in order, and the same on P/commands/response: a precondition that does
    not hold (rejected), feedback that never comes (timed_out), a bus that is down (failed).
    No car runs here (the powertrain bus is up, with nobody on it), and the body bus is a
    SocketCAN interface that does not exist, so it is down from the start."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    rig, running = rig_factory(scenario="parked", simulator=False)
    text, down = re.subn(
        r"(- name: body\n)      interface: virtual\n      channel: \S+\n",
        r"\g<1>      interface: socketcan\n      channel: nosuchcan9\n",
        rig.config.read_text(),
    )
    assert down == 1
    rig.config.write_text(text)
    got: list[tuple[str, bytes | None, dict[str, Any]]] = []
    app = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    app.on_message = lambda _c, _u, m: got.append(
        (m.topic, getattr(m.properties, "CorrelationData", None), json.loads(m.payload))
    )
    app.connect("127.0.0.1", rig.port)
    app.loop_start()
    app.subscribe("backend/replies/#", qos=1)
    key, car = rig.key, rig.vehicle
    requests = [  # (token, correlation data, the statuses expected)
        (key.token(car, "charging.start"), b"c-pre", ["rejected"]),
        (key.token(car, "charging.stop"), b"c-timeout", ["accepted", "timed_out"]),
        (key.token(car, "hvac.stop"), b"c-down", ["accepted", "failed"]),
    ]
    ids = {c: jwt.decode(t, options={"verify_signature": False})["jti"] for t, c, _ in requests}
    with running():
        # No car, so no P/state: the first health message says the agent is up and subscribed.
        wait_until(lambda: rig.sub.on("health"), 15, "the first health message")
        for token, correlation, _statuses in requests:
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = "backend/replies/phone-7"
            props.CorrelationData = correlation
            app.publish(
                f"vehicles/{car}/commands/request", token, qos=1, properties=props
            ).wait_for_publish(5)
        for jti in ids.values():
            rig.final(jti, timeout=20)  # charging.stop waits out its 5 s feedback timeout
        wait_until(lambda: len(got) >= 5, 10, "every answer on the reply topic")
        time.sleep(0.3)  # nothing more comes
    app.loop_stop()
    app.disconnect()
    assert {topic for topic, _c, _b in got} == {"backend/replies/phone-7"}
    for _token, correlation, statuses in requests:
        jti = ids[correlation]
        mine = [body for _t, c, body in got if c == correlation]
        assert [b["status"] for b in mine] == statuses, (correlation, mine)
        assert {b["id"] for b in mine} == {jti}
        assert mine == [r for r in rig.responses() if r["id"] == jti]  # the same answers
        for body in mine:
            validate("command-response", body)
    by_status = {b["status"]: b for _t, _c, b in got if b["status"] != "accepted"}
    assert by_status["rejected"]["reason"] == "PRECONDITION_FAILED"
    assert "IsChargingCableConnected=unknown" in by_status["rejected"]["detail"]
    assert "no confirmation within 5 s" in by_status["timed_out"]["detail"]
    assert "IsCharging" in by_status["timed_out"]["detail"]
    assert "bus 'body' is down" in by_status["failed"]["detail"]
    # charging.stop's frames went out (repeat: 3 by default), to no car: hence timed_out.
    assert rig.spy.count(CHARGE_REQ) == 3


def _charging_events(rig: Rig) -> list[dict[str, Any]]:
    events = [m.json() for m in rig.sub.on("events") if m.json()["type"] == "charging"]
    for event in events:
        validate("events", event)
    return events


def test_charging_schedule_charges_only_in_the_cheap_window(
    rig_factory: Callable[..., tuple[Rig, Callable[[], Any]]],
) -> None:
    """A schedule whose cheap window starts 15 s from now: the charger waits, charges in the
    window, and the target is reached by departure; the events come in order."""
    from datetime import UTC, datetime, timedelta

    rig, running = rig_factory(scenario="plugged_in", speedup=30.0)
    with running():
        wait_until(lambda: rig.sub.on("state"), 15, "the first state")
        time.sleep(1.0)
        # The car arrives charging: stop it so the state of charge holds still, then read it
        # exactly from a fresh P/state.
        assert _run(rig, rig.key.token(rig.vehicle, "charging.stop"))["status"] == "succeeded"
        count = len(rig.sub.on("state"))
        assert _run(rig, rig.key.token(rig.vehicle, "state.snapshot"))["status"] == "succeeded"
        wait_until(lambda: len(rig.sub.on("state")) > count, 5, "a fresh state")
        soc = rig.sub.on("state")[-1].json()["values"][
            "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current"
        ]
        start = datetime.now(UTC)

        def at(seconds: float) -> str:
            return (start + timedelta(seconds=seconds)).isoformat()

        tariff = [
            {"start": at(0), "end": at(15), "price": 0.5},
            {"start": at(15), "end": at(90), "price": 0.1},
            {"start": at(90), "end": at(150), "price": 0.5},
        ]
        params = {"departure": at(150), "target_soc_pct": min(100.0, soc + 0.2), "tariff": tariff}
        result = _run(rig, rig.key.token(rig.vehicle, "charging.schedule", params))
        assert result["status"] == "succeeded", result
        wait_until(
            lambda: any(e["name"] == "target_reached" for e in _charging_events(rig)),
            120,
            "target_reached",
        )
    events = _charging_events(rig)
    assert [e["name"] for e in events] == ["plan_accepted", "slot_started", "target_reached"]
    plan = events[0]["data"]
    assert plan["feasible"] is True
    (slot,) = plan["slots"]
    slot_start = datetime.fromisoformat(slot["start"])
    assert slot_start >= start + timedelta(seconds=15)  # inside the cheap window
    # The car's own charge state over time: idle from the plan until the slot, then charging.
    states = [
        (m.timestamp, str(OBC.decode(bytes(m.data))["OBC_ChargeState"]))
        for m in list(rig.spy.frames)
        if m.arbitration_id == OBC.frame_id
    ]
    before = [s for t, s in states if start.timestamp() + 2 < t < slot_start.timestamp() - 1]
    during = [s for t, s in states if t >= slot_start.timestamp()]
    assert before and set(before) == {"IDLE"}
    assert "CHARGING" in during


def test_charging_schedule_replans_on_unplug_and_resumes_after_restart(
    rig_factory: Callable[..., tuple[Rig, Callable[[], Any]]], tmp_path: Path
) -> None:
    """The car (a separate simulator, 10x) is unplugged and plugged back mid-plan, then the
    agent restarts: a re-plan event, a new plan on plugging in, and the plan resumed."""
    from datetime import UTC, datetime, timedelta

    scenario = tmp_path / "unplug.yaml"
    scenario.write_text(
        "mode: plugged_in\n"
        "events:\n"
        "  - {at_s: 150, set: {cable: DISCONNECTED, charge_state: IDLE}}\n"
        "  - {at_s: 220, set: {cable: CONNECTED}}\n"
    )
    rig, running = rig_factory(scenario="plugged_in", simulator=False, speedup=10.0)
    car = threading.Thread(
        target=cli.main,
        args=(
            [
                "simulate",
                "-c",
                str(rig.config),
                "--scenario",
                str(scenario),
                "--speedup",
                "10",
                "--duration",
                "600",
            ],
        ),
        daemon=True,
    )
    car.start()
    start = datetime.now(UTC)

    def at(seconds: float) -> str:
        return (start + timedelta(seconds=seconds)).isoformat()

    params = {
        "departure": at(300),
        "target_soc_pct": 99.0,
        "tariff": [{"start": at(0), "end": at(300), "price": 0.2}],
    }

    def names() -> list[str]:
        return [e["name"] for e in _charging_events(rig)]

    with running():
        wait_until(lambda: rig.sub.on("state"), 15, "the first state")
        time.sleep(1.0)
        result = _run(rig, rig.key.token(rig.vehicle, "charging.schedule", params, ttl=300))
        assert result["status"] == "succeeded", result
        wait_until(lambda: "replan" in names(), 30, "the re-plan on unplugging")
        wait_until(lambda: names().count("slot_started") >= 2, 30, "charging again")
    with running():
        wait_until(lambda: names().count("slot_started") >= 3, 30, "resumed after restart")
    events = _charging_events(rig)
    reasons = [(e["name"], e["data"].get("reason")) for e in events]
    assert reasons[:6] == [
        ("plan_accepted", "new_schedule"),
        ("slot_started", None),
        ("replan", "cable_disconnected"),
        ("plan_accepted", "cable_connected"),
        ("slot_started", None),
        ("plan_accepted", "resumed_after_restart"),
    ]
    assert reasons[6] == ("slot_started", None)


def test_read_dtcs_single_and_multi_frame_and_a_silent_ecu(
    rig_factory: Callable[..., tuple[Rig, Callable[[], Any]]],
) -> None:
    """UDS ReadDTCInformation over ISO-TP on the virtual bus: the BMS answers in one frame,
    the HVAC in several, the OBC not at all: its error is in the result, not a failed
    command."""
    rig, running = rig_factory(scenario="parked")
    with running():
        wait_until(lambda: rig.sub.on("state"), 15, "the first state")
        result = _run(rig, rig.key.token(rig.vehicle, "diagnostics.read_dtcs"))
    assert result["status"] == "succeeded", result
    ecus = result["result"]
    assert ecus["bms"] == {"dtcs": [{"code": "0A1B2C", "status": 0x2F}]}  # a single frame
    assert ecus["hvac"] == {
        "dtcs": [  # 15 bytes: first frame, flow control, consecutive
            {"code": "C15500", "status": 0x09},
            {"code": "B10013", "status": 0x28},
            {"code": "123456", "status": 0x08},
        ]
    }
    assert ecus["obc"] == {"error": "no answer within 2 s"}
    assert ecus["partial"] is True, "a silent ECU makes the result partial"
    assert "obc" in result["detail"]
    validate("command-response", result)
    validate("command-response", ecus, "read_dtcs_result")
    # The ISO-TP frames on the bus: requests from the agent, answers from the ECUs.
    ids = {m.arbitration_id for m in list(rig.spy.frames)}
    assert {0x7E0, 0x7E8, 0x7E1, 0x7E9, 0x7E2} <= ids and 0x7EA not in ids


def test_periodic_dtc_scan_publishes_new_and_cleared(
    rig_factory: Callable[..., tuple[Rig, Callable[[], Any]]], tmp_path: Path
) -> None:
    """The scenario stores a new HVAC code and clears the BMS one; the scan reports both."""
    scenario = tmp_path / "dtcs.yaml"
    scenario.write_text(
        "mode: parked\n"
        "events:\n"
        "  - {at_s: 4, set: {dtcs: {bms: [], hvac: [[0xC15500, 9], [0x0B0C0D, 8]]}}}\n"
    )
    rig, running = rig_factory(scenario=str(scenario))
    rig.config.write_text(
        rig.config.read_text().replace("  timeout_s: 2\n", "  timeout_s: 1\n  scan_interval_s: 1\n")
    )
    with running():

        def dtc_events() -> list[tuple[str, dict[str, Any]]]:
            return [
                (m.json()["name"], m.json()["data"])
                for m in rig.sub.on("events")
                if m.json()["type"] == "dtc"
            ]

        wait_until(
            lambda: ("dtc_cleared", {"ecu": "bms", "code": "0A1B2C"}) in dtc_events(),
            30,
            "the cleared BMS code",
        )
    events = dtc_events()
    assert ("dtc_new", {"ecu": "bms", "code": "0A1B2C", "status": 0x2F}) in events
    assert ("dtc_new", {"ecu": "hvac", "code": "0B0C0D", "status": 8}) in events
    assert not [e for e in events if e[1]["ecu"] == "obc"]  # silence clears nothing
    new_hvac = [e for e in events if e[0] == "dtc_new" and e[1]["ecu"] == "hvac"]
    assert [e[1]["code"] for e in new_hvac] == ["123456", "B10013", "C15500", "0B0C0D"]
