"""`compute:` paths: battery power from voltage and current, in replay and in the daemon."""

from __future__ import annotations

import io
import itertools
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

from agent import config
from agent.config import SignalSettings
from agent.sim.runner import record
from agent.sim.scenario import load_scenario
from agent.vehicle import dbc
from agent.vehicle.compute import Computer
from agent.vehicle.model import Sample
from agent.vehicle.replay import replay
from agent.vehicle.vsscheck import PathType
from tests.support.brokers import Broker, Daemon, Subscriber, running, wait_until
from tests.support.configs import demo_text

BATTERY = "Vehicle.Powertrain.TractionBattery"
VOLTS, AMPS, POWER = (
    f"{BATTERY}.CurrentVoltage",
    f"{BATTERY}.CurrentCurrent",
    f"{BATTERY}.CurrentPower",
)


def _check_power(samples: Iterable[tuple[float, str, Any]]) -> int:
    """Walk samples in order: each power value is volts * amps of the newest values, rounded
    to the inputs' two decimals, stamped with the newer input's time. Returns how many."""
    newest: dict[str, tuple[float, Any]] = {}
    checked = 0
    for ts, path, value in samples:
        if path in (VOLTS, AMPS):
            newest[path] = (ts, value)
        elif path == POWER:
            (v_ts, volts), (a_ts, amps) = newest[VOLTS], newest[AMPS]
            assert type(value) is float
            assert value == round(volts * amps, 2)
            assert ts == max(v_ts, a_ts)
            checked += 1
    return checked


@pytest.fixture(scope="module")
def drive(tmp_path_factory: pytest.TempPathFactory) -> tuple[dbc.Vehicle, Path]:
    folder = tmp_path_factory.mktemp("compute")
    cfg = folder / "demo.yaml"
    cfg.write_text(demo_text())
    vehicle = dbc.load_vehicle(config.load(cfg))
    log = folder / "drive.log"
    record(vehicle, load_scenario("driving"), log, duration_s=60, start_ts=1.7e9)
    return vehicle, log


def _rows(text: str) -> list[tuple[float, str, Any]]:
    return [(r["ts"], r["path"], r["value"]) for r in map(json.loads, text.splitlines())]


def test_replay_every_frame_derives_power_from_the_newest_inputs(
    drive: tuple[dbc.Vehicle, Path],
) -> None:
    vehicle, log = drive
    out = io.StringIO()
    summary = replay(vehicle, log, out, every_frame=True)
    rows = _rows(out.getvalue())
    checked = _check_power(rows)
    assert checked > 20
    assert summary.computed.computed == checked
    assert f"computed {checked};" in summary.line()
    assert "invalid values 0, out of range 0" in summary.line()
    assert any(value != 0 for _, path, value in rows if path == POWER)  # the car does drive


def test_replay_applies_the_computed_paths_policy(drive: tuple[dbc.Vehicle, Path]) -> None:
    """demo.yaml: deadband 500 W, min_interval 1 s for the power."""
    vehicle, log = drive
    out = io.StringIO()
    replay(vehicle, log, out)
    power = [(ts, value) for ts, path, value in _rows(out.getvalue()) if path == POWER]
    assert len(power) >= 2
    for (t0, v0), (t1, v1) in itertools.pairwise(power):
        assert t1 - t0 >= 1.0 - 1e-9
        assert abs(v1 - v0) > 500 or t1 - t0 >= 60 - 1e-9


def _computer(expression: str, ptype: PathType | None = None) -> Computer:
    sig = SignalSettings(path="Vehicle.X", compute=expression)
    return Computer([sig], {"Vehicle.X": ptype} if ptype else {})


def _feed(computer: Computer, *samples: tuple[str, float, Any]) -> list[Sample]:
    batch = [Sample(path, ts, value) for path, ts, value in samples]
    computer.feed(batch)
    return batch[len(samples) :]


def test_a_missing_input_gives_no_value_until_it_arrives() -> None:
    computer = _computer("Vehicle.A - Vehicle.B")
    assert _feed(computer, ("Vehicle.A", 1.0, 5.0)) == []
    assert computer.stats.no_value == 1
    assert _feed(computer, ("Vehicle.B", 2.0, 1.5)) == [Sample("Vehicle.X", 2.0, 3.5)]


def test_evaluated_only_when_an_input_changes_with_the_newest_input_time() -> None:
    computer = _computer("max(Vehicle.A, Vehicle.B) + abs(Vehicle.A)")
    _feed(computer, ("Vehicle.A", 1.0, -2), ("Vehicle.B", 1.0, 1))
    assert _feed(computer, ("Vehicle.A", 2.0, -2)) == []  # same value: nothing new
    assert _feed(computer, ("Vehicle.B", 3.0, 4)) == [Sample("Vehicle.X", 3.0, 6.0)]


def test_division_by_zero_and_non_numbers_give_no_value() -> None:
    computer = _computer("Vehicle.A / Vehicle.B")
    assert _feed(computer, ("Vehicle.A", 1.0, 1.0), ("Vehicle.B", 1.0, 0.0)) == []
    assert _feed(computer, ("Vehicle.B", 2.0, True)) == []
    assert computer.stats.no_value == 2


def test_typed_rounded_and_range_checked_like_decoded_samples() -> None:
    integer = _computer("Vehicle.A * 1000", PathType("integer", 0, 4_294_967_295))
    assert _feed(integer, ("Vehicle.A", 1.0, 12.3456)) == [Sample("Vehicle.X", 1.0, 12346)]
    assert _feed(integer, ("Vehicle.A", 2.0, -1.0)) == []
    assert integer.stats.out_of_range == 1
    rounded = _computer("Vehicle.A * Vehicle.B", PathType("float", decimals=2))
    got = _feed(rounded, ("Vehicle.A", 1.0, 371.7), ("Vehicle.B", 1.0, -5.3))
    assert got == [Sample("Vehicle.X", 1.0, -1970.01)]


def test_daemon_publishes_the_computed_power(
    broker: Broker, make_daemon: Callable[..., Daemon]
) -> None:
    """Against a real mosquitto, every value published in order: each power sample is the
    product of the newest published voltage and current."""
    sub = Subscriber(broker.port)
    daemon = make_daemon(broker.port, scenario="driving", speedup=4.0, every_value=True)

    def samples() -> list[tuple[float, str, Any]]:
        return [
            (s["ts"], s["path"], s["value"])
            for m in sub.on("telemetry")
            for s in m.json()["samples"]
        ]

    with running(daemon):
        wait_until(
            lambda: sum(1 for _, p, v in samples() if p == POWER and v != 0) >= 5,
            30,
            "non-zero battery power in telemetry",
        )
    sub.close()
    assert _check_power(samples()) >= 5
