"""The daemon on real SocketCAN: vcan0 (CAN FD) and vcan1, a real mosquitto, the simulator as
a separate process, and can-utils (cansend, candump) as independent peers."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cantools
import jwt
import paho.mqtt.publish as publish
import pytest

from tests.support.agents import Key, trust_entry
from tests.support.brokers import Broker, Daemon, Subscriber, running, wait_until
from tests.support.configs import DBC_DIR
from tests.vcan.conftest import ip

PT = cantools.database.load_file(DBC_DIR / "ev_powertrain.dbc")
BODY = cantools.database.load_file(DBC_DIR / "ev_body.dbc")
SOC = "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current"


def _values(sub: Subscriber) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for message in sub.on("telemetry"):
        for sample in message.json()["samples"]:
            out[sample["path"]] = sample["value"]
    return out


def _health(sub: Subscriber, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    return sub.wait_for("health", lambda m: predicate(m.json()), timeout=20).json()


@contextlib.contextmanager
def car(config: Path, scenario: str = "parked") -> Iterator[subprocess.Popen[bytes]]:
    """The simulator in its own process on vcan0/vcan1."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "simulate", "-c", str(config), "--scenario", scenario],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


def cansend(channel: str, frame: str) -> None:
    subprocess.run(["cansend", channel, frame], check=True)


def test_cansend_frames_come_out_as_telemetry(
    broker: Broker, vcan_daemon: Callable[..., Daemon]
) -> None:
    """Frames written by cansend, classic and CAN FD, are decoded and published; ids nobody
    mapped are stopped by the kernel filter before they reach the agent."""
    sub = Subscriber(broker.port)
    daemon = vcan_daemon(broker.port)
    with running(daemon):
        daemon.wait_event("mqtt_connected")
        bms = PT.get_message_by_name("BMS_Status").encode(
            {
                "BMS_SOC": 55.5,
                "BMS_SOH": 97,
                "BMS_PackVoltage": 360,
                "BMS_PackCurrent": -12.5,
                "BMS_PackTempAvg": 24,
                "BMS_StatusCounter": 1,
            }
        )
        cansend("vcan0", f"100#{bms.hex().upper()}")
        cells = PT.get_message_by_name("BMS_CellStats")
        values = {s.name: 0 for s in cells.signals} | {
            "BMS_CellVoltMin": 3.711,
            "BMS_CellVoltMax": 3.725,
        }
        cansend("vcan0", f"3C0##1{cells.encode(values).hex().upper()}")  # CAN FD, 32 bytes
        svc = BODY.get_message_by_name("SVC_Maintenance")
        svc_values = {s.name: 0 for s in svc.signals} | {"SVC_DistanceToService": 1234}
        cansend("vcan1", f"18FF50E5#{svc.encode(svc_values).hex().upper()}")  # 29-bit id
        for _ in range(5):
            cansend("vcan0", "7AB#0102030405060708")  # not mapped: filtered in the kernel
        wait_until(
            lambda: (
                {
                    SOC,
                    "Vehicle.Powertrain.TractionBattery.CellVoltage.Min",
                    "Vehicle.Service.DistanceToService",
                }
                <= set(_values(sub))
            ),
            15,
            "the three frames as telemetry",
        )
        got = _values(sub)
        health = _health(sub, lambda h: h["buses"]["powertrain"]["decoded"] >= 2)
    sub.close()
    assert got[SOC] == pytest.approx(55.5)
    assert got["Vehicle.Powertrain.TractionBattery.CurrentCurrent"] == pytest.approx(-12.5)
    assert got["Vehicle.Powertrain.TractionBattery.CellVoltage.Min"] == pytest.approx(3.711)
    assert got["Vehicle.Service.DistanceToService"] == 1234
    assert health["buses"]["powertrain"]["unknown_id"] == 0  # the kernel kept 0x7AB away
    assert health["buses"]["powertrain"]["received"] == 2


def _command_rig(broker: Broker, vcan_daemon: Callable[..., Daemon]) -> tuple[Daemon, Key]:
    key = Key("fleet-app")
    return vcan_daemon(broker.port, trust=trust_entry(key)), key


def _send(broker: Broker, vehicle: str, token: bytes) -> str:
    publish.single(f"vehicles/{vehicle}/commands/request", token, qos=1, port=broker.port)
    return str(jwt.decode(token, options={"verify_signature": False})["jti"])


def test_a_command_frame_is_seen_by_candump(
    broker: Broker, vcan_daemon: Callable[..., Daemon]
) -> None:
    daemon, key = _command_rig(broker, vcan_daemon)
    sub = Subscriber(broker.port)
    dump = daemon.config.parent / "candump.log"
    with open(dump, "wb") as out:
        candump = subprocess.Popen(["candump", "-L", "vcan1,2A0:7FF"], stdout=out)
    try:
        with car(daemon.config), running(daemon):
            wait_until(lambda: len(_values(sub)) > 20, 20, "the car's values")
            token = key.token("VIN0000000000000", "hvac.start", {"target_temp_c": 19.5})
            jti = _send(broker, "VIN0000000000000", token)
            final = sub.wait_for(
                "commands/response",
                lambda m: m.json()["id"] == jti and m.json()["status"] != "accepted",
            ).json()
    finally:
        candump.send_signal(signal.SIGINT)
        candump.wait(5)
    sub.close()
    assert final["status"] == "succeeded", final
    frames = [line.split()[2] for line in dump.read_text().splitlines()]
    expected = BODY.get_message_by_name("TCU_ClimateRequest").encode(
        {
            "TCU_ClimateCmd": "ON",
            "TCU_ClimateTargetTemp": 19.5,
            "TCU_ClimateFanLevel": 0,
            "TCU_ClimateReqCounter": 0,
        }
    )
    assert frames == [f"2A0#{expected.hex().upper()}"] * 3


def test_interface_down_then_up(broker: Broker, vcan_daemon: Callable[..., Daemon]) -> None:
    """The daemon keeps running while vcan1 is down, counts it, and receives again within
    the reopen backoff's cap (5 s) of the interface coming back."""
    daemon = vcan_daemon(broker.port)
    sub = Subscriber(broker.port)
    with car(daemon.config), running(daemon):
        _health(sub, lambda h: h["buses"]["body"]["received"] > 10)
        ip("set", "vcan1", "down")
        try:
            daemon.wait_event("can_bus_failed", bus="body")
            time.sleep(2.0)
            assert daemon.alive()
        finally:
            ip("set", "vcan1", "up")
        up_at = time.monotonic()
        back = daemon.wait_event("can_bus_receiving", bus="body", timeout=10)
        receiving_after = time.monotonic() - up_at
        # outages counts an outage when it starts and down_s is live: wait for the figures
        # of the ended outage.
        health = _health(
            sub,
            lambda h: h["buses"]["body"]["outages"] >= 1 and h["buses"]["body"]["down_s"] > 2.0,
        )
    sub.close()
    assert back["outage_s"] > 2.0  # counted from the failure to the first frame again
    assert receiving_after < 6.0  # the backoff grows while down (capped at 5 s)
    body = health["buses"]["body"]
    assert body["bus_errors"] >= 1 and body["reopens"] >= 1 and body["down_s"] > 2.0


def test_a_missing_interface_is_retried_not_a_crash(
    broker: Broker, vcan_daemon: Callable[..., Daemon]
) -> None:
    daemon = vcan_daemon(broker.port, body_channel="vcan7")
    sub = Subscriber(broker.port)
    with running(daemon):
        event = daemon.wait_event("can_bus_unavailable", bus="body")
        assert "vcan7" in event["error"]
        daemon.wait_event("mqtt_connected")
        time.sleep(2.0)
        assert daemon.alive()
        failures = [e for e in daemon.events() if e.get("event") == "can_bus_reopen_failed"]
        assert 1 <= len(failures) <= 10  # backing off, not spinning
        ip("add", "dev", "vcan7", "type", "vcan")
        ip("set", "vcan7", "up")
        try:
            daemon.wait_event("can_bus_reopened", bus="body", timeout=5)
        finally:
            ip("del", "vcan7")
    sub.close()


def test_a_command_to_a_down_interface_fails_clearly(
    broker: Broker, vcan_daemon: Callable[..., Daemon]
) -> None:
    daemon, key = _command_rig(broker, vcan_daemon)
    sub = Subscriber(broker.port)
    with car(daemon.config), running(daemon):
        wait_until(lambda: len(_values(sub)) > 20, 20, "the car's values")
        ip("set", "vcan1", "down")
        try:
            daemon.wait_event("can_bus_failed", bus="body")
            token = key.token("VIN0000000000000", "hvac.start", {"target_temp_c": 21})
            jti = _send(broker, "VIN0000000000000", token)
            final = sub.wait_for(
                "commands/response",
                lambda m: m.json()["id"] == jti and m.json()["status"] != "accepted",
            ).json()
        finally:
            ip("set", "vcan1", "up")
    sub.close()
    assert final["status"] == "failed"
    assert "TCU_ClimateRequest" in final["detail"] and "body" in final["detail"]


def test_error_frames_are_counted(broker: Broker, vcan_daemon: Callable[..., Daemon]) -> None:
    """An error frame on the bus (here written with cansend's error flag) is counted, never
    decoded and never fatal."""
    daemon = vcan_daemon(broker.port)
    sub = Subscriber(broker.port)
    with running(daemon):
        daemon.wait_event("mqtt_connected")
        for _ in range(3):
            cansend("vcan0", "20000004#0000000000000000")  # CAN_ERR_FLAG | CAN_ERR_CRTL
        health = _health(sub, lambda h: h["buses"]["powertrain"]["error_frames"] >= 3)
        assert daemon.alive()
    sub.close()
    assert health["buses"]["powertrain"]["error_frames"] == 3
    assert health["buses"]["powertrain"]["decoded"] == 0


def test_read_dtcs_over_isotp_on_vcan(broker: Broker, vcan_daemon: Callable[..., Daemon]) -> None:
    """UDS over ISO-TP on real SocketCAN, the simulator's ECUs answering in their own
    process: single frame (BMS on vcan0), multi-frame (HVAC on vcan1), a silent OBC."""
    daemon, key = _command_rig(broker, vcan_daemon)
    sub = Subscriber(broker.port)
    with car(daemon.config), running(daemon):
        wait_until(lambda: len(_values(sub)) > 20, 20, "the car's values")
        jti = _send(
            broker, "VIN0000000000000", key.token("VIN0000000000000", "diagnostics.read_dtcs")
        )
        final = sub.wait_for(
            "commands/response",
            lambda m: m.json()["id"] == jti and m.json()["status"] != "accepted",
            timeout=20,
        ).json()
    sub.close()
    assert final["status"] == "succeeded", final
    assert final["result"]["bms"] == {"dtcs": [{"code": "0A1B2C", "status": 0x2F}]}
    assert [d["code"] for d in final["result"]["hvac"]["dtcs"]] == ["C15500", "B10013", "123456"]
    assert final["result"]["obc"] == {"error": "no answer within 2 s"}
