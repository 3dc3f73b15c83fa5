"""`vehicle-agent simulate` on python-can's virtual bus answers the telematics unit's frames."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import can
import cantools
import pytest

from agent import cli
from tests.support.configs import DBC_DIR, demo_text

BODY = cantools.database.load_file(DBC_DIR / "ev_body.dbc")
PT = cantools.database.load_file(DBC_DIR / "ev_powertrain.dbc")
HVAC = BODY.get_message_by_name("HVAC_Status")
CLIMATE_REQ = BODY.get_message_by_name("TCU_ClimateRequest")
OBC = PT.get_message_by_name("OBC_Status")
CHARGE_REQ = PT.get_message_by_name("TCU_ChargeRequest")
LIMIT_REQ = PT.get_message_by_name("TCU_ChargeLimitRequest")
SPEEDUP = 40.0


@pytest.fixture
def simulator(
    write_config: Callable[[str], Path], channel_tag: str
) -> Iterator[Callable[[str], tuple[can.BusABC, can.BusABC]]]:
    """Start `vehicle-agent simulate` (in a thread: the virtual bus is in-process) and hand
    the test its own bus on each of the simulator's channels."""
    threads: list[threading.Thread] = []
    buses: list[can.BusABC] = []
    codes: list[int] = []

    def start(scenario: str) -> tuple[can.BusABC, can.BusABC]:
        cfg = write_config(demo_text(channel_tag))
        body = can.Bus(interface="virtual", channel=f"body-{channel_tag}")
        pt = can.Bus(interface="virtual", channel=f"pt-{channel_tag}")
        buses.extend([body, pt])
        args = [
            "simulate",
            "-c",
            str(cfg),
            "--scenario",
            scenario,
            "--speedup",
            str(SPEEDUP),
            "--duration",
            "120",
        ]
        thread = threading.Thread(target=lambda: codes.append(cli.main(args)), daemon=True)
        thread.start()
        threads.append(thread)
        return body, pt

    yield start
    for thread in threads:
        thread.join(timeout=20)
        assert not thread.is_alive()
    assert codes == [0] * len(threads)
    for bus in buses:
        bus.shutdown()


def _next(bus: can.BusABC, frame_id: int, timeout: float = 5.0) -> can.Message:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = bus.recv(timeout=0.5)
        if msg is not None and msg.arbitration_id == frame_id:
            return msg
    raise AssertionError(f"no frame {frame_id:#x} within {timeout} s")


def _hvac(bus: can.BusABC) -> dict[str, object]:
    return dict(HVAC.decode(bytes(_next(bus, HVAC.frame_id).data)))


def _drain(bus: can.BusABC) -> None:
    while bus.recv(timeout=0) is not None:
        pass


def _send(
    bus: can.BusABC, message: cantools.database.can.Message, values: dict[str, object]
) -> None:
    bus.send(
        can.Message(
            arbitration_id=message.frame_id, is_extended_id=False, data=message.encode(values)
        )
    )


def test_climate_request_answered_within_one_cycle_and_cabin_moves(
    simulator: Callable[[str], tuple[can.BusABC, can.BusABC]],
) -> None:
    """A climate request switches climate on in the next status frame (allowing one frame
    already in flight), then the cabin temperature heads for the target; OFF switches it off."""
    body, _ = simulator("parked")
    before = _hvac(body)
    assert str(before["HVAC_ClimateActive"]) == "OFF"
    start_temp = float(before["HVAC_CabinTemp"])  # type: ignore[arg-type]
    target = 28.0
    assert start_temp < target - 2

    _drain(body)
    _send(
        body,
        CLIMATE_REQ,
        {
            "TCU_ClimateCmd": "ON",
            "TCU_ClimateTargetTemp": target,
            "TCU_ClimateFanLevel": 0,
            "TCU_ClimateReqCounter": 1,
        },
    )
    answers = [_hvac(body), _hvac(body)]
    assert any(str(a["HVAC_ClimateActive"]) == "ON" for a in answers), answers
    on = next(a for a in answers if str(a["HVAC_ClimateActive"]) == "ON")
    assert on["HVAC_TargetTemp"] == target
    assert str(on["HVAC_Mode"]) == "PRECONDITION"
    assert on["HVAC_FanLevel"] == 4  # 0 asked for automatic

    temps = [float(_hvac(body)["HVAC_CabinTemp"]) for _ in range(150)]  # type: ignore[arg-type]
    assert all(b >= a for a, b in itertools.pairwise(temps)), temps
    assert temps[-1] - start_temp >= 0.3
    assert temps[-1] < target

    _drain(body)
    _send(
        body,
        CLIMATE_REQ,
        {
            "TCU_ClimateCmd": "OFF",
            "TCU_ClimateTargetTemp": target,
            "TCU_ClimateFanLevel": 0,
            "TCU_ClimateReqCounter": 2,
        },
    )
    answers = [_hvac(body), _hvac(body)]
    assert str(answers[-1]["HVAC_ClimateActive"]) == "OFF"


def _obc(bus: can.BusABC) -> dict[str, object]:
    return dict(OBC.decode(bytes(_next(bus, OBC.frame_id).data)))


def test_charge_requests_need_the_cable_and_the_limit_stops_charging(
    simulator: Callable[[str], tuple[can.BusABC, can.BusABC]],
) -> None:
    """Plugged in: stop and start work; a limit below the state of charge ends charging."""
    _, pt = simulator("plugged_in")
    assert str(_obc(pt)["OBC_ChargeState"]) == "CHARGING"
    _drain(pt)
    _send(pt, CHARGE_REQ, {"TCU_ChargeCmd": "STOP", "TCU_ChargeReqCounter": 0})
    assert str([_obc(pt) for _ in range(2)][-1]["OBC_ChargeState"]) == "IDLE"
    _drain(pt)
    _send(pt, CHARGE_REQ, {"TCU_ChargeCmd": "START", "TCU_ChargeReqCounter": 1})
    status = [_obc(pt) for _ in range(2)][-1]
    assert str(status["OBC_ChargeState"]) == "CHARGING"
    assert status["OBC_ChargePower"] == pytest.approx(11.0)
    _drain(pt)
    _send(pt, LIMIT_REQ, {"TCU_ChargeLimitReq": 50, "TCU_ChargeLimitValid": "VALID"})
    status = [_obc(pt) for _ in range(3)][-1]
    assert status["OBC_ChargeLimit"] == 50
    assert str(status["OBC_ChargeState"]) == "COMPLETE"  # the car is above 50 %


def test_charge_start_refused_without_cable(
    simulator: Callable[[str], tuple[can.BusABC, can.BusABC]],
) -> None:
    _, pt = simulator("parked")
    _drain(pt)
    _send(pt, CHARGE_REQ, {"TCU_ChargeCmd": "START", "TCU_ChargeReqCounter": 0})
    for _ in range(3):
        status = _obc(pt)
        assert str(status["OBC_CableState"]) == "DISCONNECTED"
        assert str(status["OBC_ChargeState"]) == "IDLE"


def test_every_reference_message_is_sent_at_its_cycle_time(
    simulator: Callable[[str], tuple[can.BusABC, can.BusABC]],
) -> None:
    """Over a stretch of frames, each ECU message's share matches its DBC cycle time."""
    body, pt = simulator("driving")
    for bus in (pt, body):
        _drain(bus)
    # Frames queue up on the virtual bus; count those the simulator stamped inside the window.
    t0 = time.time()
    time.sleep(2.0)
    t1 = time.time()
    counts: dict[int, int] = {}
    for bus in (pt, body):
        while (msg := bus.recv(timeout=0)) is not None:
            if t0 <= msg.timestamp < t1:
                counts[msg.arbitration_id] = counts.get(msg.arbitration_id, 0) + 1
    sent = {m.frame_id: m for db in (PT, BODY) for m in db.messages if "TCU" not in m.senders}
    assert set(counts) == set(sent)
    # Ratios, not rates: a loaded CI machine may run slower, but cycle times stay in proportion.
    base = counts[0x100] / 1.0  # BMS_Status, 100 ms
    for frame_id, message in sent.items():
        expected = base * 100 / message.cycle_time
        assert counts[frame_id] == pytest.approx(expected, rel=0.35, abs=2), message.name
    fd = PT.get_message_by_name("BMS_CellStats")
    assert fd.is_fd
