"""The daemon against a real mosquitto: telemetry, seq, status, restarts, SIGTERM, kill -9."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.brokers import Broker, Daemon, Subscriber, retained, running, wait_until
from tests.support.schemas import validate

SCENARIO = """\
mode: parked
initial:
  soc: 55.5
  cabin_temp: 23.4
  exterior_temp: 23.4
  target_temp: 19.5
  charge_limit: 85
  tyres_bar: [2.3, 2.4, 2.5, 2.6]
  distance_to_service: 3210
  lv_voltage: 12.4
"""


def _values(sub: Subscriber) -> dict[str, object]:
    """Every path's latest value across the telemetry received so far."""
    values: dict[str, object] = {}
    for message in sub.on("telemetry"):
        for sample in message.json()["samples"]:
            values[sample["path"]] = sample["value"]
    return values


def _seqs(sub: Subscriber) -> list[int]:
    return [m.json()["seq"] for m in sub.on("telemetry")]


def test_telemetry_matches_the_simulator_state(
    broker: Broker, make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    """With the simulator in-process, the published values are the scenario's state."""
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text(SCENARIO)
    sub = Subscriber(broker.port)
    daemon = make_daemon(broker.port, scenario=str(scenario))
    with running(daemon):
        # 29 mapped paths and the computed battery power
        wait_until(lambda: len(_values(sub)) >= 30, 20, "every mapped path in telemetry")
        values = _values(sub)
        message = sub.on("telemetry")[0].json()
        assert message["v"] == 1 and message["vehicle_id"].startswith("TEST-")
    sub.close()
    soc = values["Vehicle.Powertrain.TractionBattery.StateOfCharge.Current"]
    assert soc == pytest.approx(55.5, abs=0.15)
    assert values["Vehicle.Powertrain.TractionBattery.Charging.ChargeLimit"] == 85
    assert values["Vehicle.Powertrain.TractionBattery.Charging.IsCharging"] is False
    assert (
        values[
            "Vehicle.Powertrain.TractionBattery.Charging.ChargingPort.AnyPosition.IsChargingCableConnected"
        ]
        is False
    )
    assert values["Vehicle.Speed"] == 0
    assert values["Vehicle.Powertrain.Transmission.IsParkLockEngaged"] is True
    assert values["Vehicle.Powertrain.Transmission.SelectedGear"] == 126
    assert values["Vehicle.LowVoltageSystemState"] == "OFF"
    assert values["Vehicle.Cabin.HVAC.AmbientAirTemperature"] == pytest.approx(23.4, abs=0.11)
    assert values["Vehicle.Cabin.HVAC.Station.Row1.Driver.Temperature"] == 19.5
    assert values["Vehicle.Service.DistanceToService"] == 3210
    assert values["Vehicle.Service.IsServiceDue"] is False
    tyres = [
        values[f"Vehicle.Chassis.Axle.Row{r}.Wheel.{s}.Tire.Pressure"]
        for r, s in ((1, "Left"), (1, "Right"), (2, "Left"), (2, "Right"))
    ]
    assert tyres == [pytest.approx(p) for p in (230.0, 240.0, 250.0, 260.0)]


def test_seq_rises_by_one_and_continues_after_restart(
    broker: Broker, make_daemon: Callable[..., Daemon]
) -> None:
    sub = Subscriber(broker.port)
    daemon = make_daemon(broker.port, scenario="driving")
    with running(daemon):
        wait_until(lambda: len(_seqs(sub)) >= 5, 20, "5 telemetry messages")
    first_run = _seqs(sub)
    assert daemon.wait(0) == 0
    with running(daemon):
        wait_until(lambda: len(_seqs(sub)) >= len(first_run) + 5, 20, "5 more after restart")
    sub.close()
    seqs = _seqs(sub)
    first = int(daemon.wait_event("outbox_created")["seq_from"])  # a new file: from the clock
    assert seqs[0] == first > 10**12
    assert seqs == list(range(first, first + len(seqs))), seqs
    assert seqs[len(first_run)] == first_run[-1] + 1


def test_status_is_retained_and_the_will_says_offline(
    broker: Broker, make_daemon: Callable[..., Daemon]
) -> None:
    """online:true while running, online:false after SIGTERM, and via the will after kill -9."""
    daemon = make_daemon(broker.port)
    topic = "vehicles/+/status"
    daemon.start()
    daemon.wait_event("mqtt_connected")
    status = retained(broker.port, topic)
    assert status["online"] is True and "reason" not in status
    assert status["agent_version"] and status["boot_id"]
    time.sleep(1.0)  # the stop's time must be told apart from the connection's
    stopped_at = time.time()
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(5) == 0
    offline = retained(broker.port, topic)
    assert offline["online"] is False and offline["reason"] == "stopped"
    validate("status", status, "online")
    validate("status", offline, "stopped")
    assert offline["boot_id"] == status["boot_id"]
    assert offline["ts"] >= stopped_at - 0.1 > status["ts"], "an orderly stop carries its time"

    daemon.start()
    wait_until(lambda: retained(broker.port, topic)["online"] is True, 15, "online again")
    second = retained(broker.port, topic)
    assert second["boot_id"] != status["boot_id"]
    time.sleep(1.5)
    killed_at = time.time()
    daemon.signal(signal.SIGKILL)
    daemon.wait(5)
    will = wait_until(
        lambda: (r := retained(broker.port, topic))["online"] is False and r, 10, "the last will"
    )
    assert will["boot_id"] == second["boot_id"]
    # The will was made when the connection was: its time is the connection's, not the loss's.
    assert will["reason"] == "connection_lost"
    validate("status", will, "will")
    assert will["ts"] == pytest.approx(second["ts"], abs=1.0) and will["ts"] < killed_at - 1.0


def test_reconnects_after_the_broker_restarts(
    broker: Broker, make_daemon: Callable[..., Daemon]
) -> None:
    daemon = make_daemon(broker.port, scenario="driving")
    with running(daemon):
        daemon.wait_event("mqtt_connected", reconnects=0)
        broker.stop()
        daemon.wait_event("mqtt_disconnected")
        time.sleep(1.0)
        broker.start()
        daemon.wait_event("mqtt_connected", reconnects=1, timeout=20)
        sub = Subscriber(broker.port)
        sub.wait_for("telemetry", timeout=10)
        sub.close()
        assert daemon.alive()


def test_sigterm_flushes_the_last_batch_and_exits_0_within_5s(
    broker: Broker, make_daemon: Callable[..., Daemon]
) -> None:
    """A long batch interval keeps samples waiting; SIGTERM must publish them. (The first
    batch after start goes out at once, so a back end sees the car's state; what comes
    after it waits for the interval, or for the stop.)"""
    sub = Subscriber(broker.port)
    daemon = make_daemon(
        broker.port,
        telemetry="  batch_interval_ms: 600000\n  batch_max_samples: 100000\n",
    )
    daemon.start()
    first = sub.wait_for("telemetry", timeout=10).json()
    time.sleep(1.5)  # frames decoded, samples batched, nothing more published yet
    assert len(sub.on("telemetry")) == 1
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(5) == 0
    last = sub.wait_for("telemetry", lambda m: m.json()["seq"] != first["seq"], timeout=5)
    sub.close()
    assert first["seq"] == daemon.wait_event("outbox_created")["seq_from"]
    assert last.json()["seq"] == first["seq"] + 1 and last.json()["samples"]
    paths = {s["path"] for m in (first, last.json()) for s in m["samples"]}
    assert len(paths) >= 29
    assert daemon.wait_event("stop_done")["outbox"] == 0


def test_state_and_health_are_published(broker: Broker, make_daemon: Callable[..., Daemon]) -> None:
    sub = Subscriber(broker.port)
    daemon = make_daemon(broker.port)
    with running(daemon):
        # The first state goes out at connect time, before every signal was seen; the periodic
        # one (every 2 s here) carries them all.
        # 29 mapped paths and the computed battery power.
        state = sub.wait_for("state", lambda m: len(m.json()["values"]) == 30).json()
        health = sub.wait_for("health").json()
        # A second health message shows counters moving.
        later = sub.wait_for("health", lambda m: m.json()["uptime_s"] > health["uptime_s"]).json()
        stats = daemon.wait_event("stats")  # every 2 s in this config, never per frame
    sub.close()
    assert set(stats["frames_per_s"]) == {"powertrain", "body"}
    assert stats["frames_per_s"]["powertrain"] > 0 and stats["connected"] is True
    lines = daemon.log.read_text().splitlines()
    assert len(lines) < 60, "one log line per frame would be thousands"
    assert state["values"]["Vehicle.Powertrain.Transmission.IsParkLockEngaged"] is True
    assert len(state["values"]) == 30
    assert later["buses"]["powertrain"]["received"] > health["buses"]["powertrain"]["received"]
    assert later["buses"]["body"]["decoded"] > 0
    assert later["mqtt"]["connected"] is True
    assert later["outbox"]["depth"] >= 0
    assert {"decode_errors", "samples", "dropped", "commands"} <= set(later)
    # Every documented key from the first message on, zeros included.
    assert health["commands"]["accepted"] == health["commands"]["rejected"] == 0
    assert set(health["dropped"]) >= {
        "dropped_telemetry",
        "dropped_event",
        "dropped_response",
        "dropped_samples",
        "expired_telemetry",
        "expired_samples",
        "unstored_samples",
    }
    assert {"outages", "down_s"} <= set(health["buses"]["powertrain"])
    # The VSS typing's drops (INTERFACE section 7): none from the reference car.
    assert later["samples"]["invalid_values"] == later["samples"]["out_of_range"] == 0
    assert later["buses"]["powertrain"]["invalid_values"] == 0


def test_untrusted_command_requests_are_rejected_by_the_daemon(
    broker: Broker, make_daemon: Callable[..., Daemon]
) -> None:
    """The daemon as a subprocess answers requests it cannot trust (the full command matrix
    is in test_commands.py): HS256 is refused, a 20 kB request is refused unparsed."""
    import jwt
    import paho.mqtt.publish as publish

    sub = Subscriber(broker.port)
    daemon = make_daemon(broker.port, vehicle_id="CMD-1")
    with running(daemon):
        daemon.wait_event("mqtt_connected")
        token = jwt.encode({"jti": "abc-123", "cmd": "hvac.start"}, "k" * 32, algorithm="HS256")
        publish.single("vehicles/CMD-1/commands/request", token, qos=1, port=broker.port)
        publish.single("vehicles/CMD-1/commands/request", b"x" * 20000, qos=1, port=broker.port)
        first = sub.wait_for("commands/response").json()
        second = sub.wait_for("commands/response", lambda m: b"MALFORMED" in m.payload).json()
        health = sub.wait_for(
            "health", lambda m: m.json()["commands"].get("rejected", 0) >= 2
        ).json()
    sub.close()
    assert (first["id"], first["status"], first["reason"]) == (None, "rejected", "BAD_SIGNATURE")
    assert (second["id"], second["reason"]) == (None, "MALFORMED")
    reasons = health["commands"]["reasons"]
    assert {r: n for r, n in reasons.items() if n} == {"BAD_SIGNATURE": 1, "MALFORMED": 1}
    assert len(reasons) == 14, "every reason code is reported, zeros included"
