"""The decode path: every reference message round-trips; bad frames are counted, not raised."""

from __future__ import annotations

import math
import random
from functools import cache
from pathlib import Path

import cantools
import pytest
from cantools.database.can import Message, Signal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent import config
from agent.vehicle import dbc
from agent.vehicle.decode import Decoder, build_decoders
from agent.vehicle.model import Frame
from tests.support.configs import DBC_DIR, demo_text

DBC_FILES = {"powertrain": DBC_DIR / "ev_powertrain.dbc", "body": DBC_DIR / "ev_body.dbc"}


def _all_signals_config() -> str:
    """A config mapping every signal of every reference message, untransformed."""
    lines = [
        "vehicle_id: ROUNDTRIP",
        "can:",
        "  buses:",
    ]
    for name, path in DBC_FILES.items():
        lines += [
            f"    - name: {name}",
            "      interface: virtual",
            f"      channel: rt-{name}",
            f"      fd: {'true' if name == 'powertrain' else 'false'}",
            f"      dbc: [{path}]",
        ]
    lines.append("signals:")
    for name, path in DBC_FILES.items():
        for message in cantools.database.load_file(path).messages:
            for signal in message.signals:
                lines += [
                    f"  - path: Test.{message.name}.{signal.name}",
                    f"    source: {message.name}.{signal.name}",
                    f"    bus: {name}",
                ]
    lines.append("vss: {unknown_paths: warn}  # Test.* paths: typed by their mapping")
    return "\n".join(lines) + "\n"


@cache
def _vehicle(tmp: str) -> dbc.Vehicle:
    path = Path(tmp) / "all-signals.yaml"
    path.write_text(_all_signals_config())
    return dbc.load_vehicle(config.load(path))


@pytest.fixture(scope="module")
def all_signals(tmp_path_factory: pytest.TempPathFactory) -> dbc.Vehicle:
    return _vehicle(str(tmp_path_factory.mktemp("rt")))


def _messages() -> list[tuple[str, Message]]:
    return [
        (bus, message)
        for bus, path in DBC_FILES.items()
        for message in cantools.database.load_file(path).messages
    ]


def _random_raw(signal: Signal, rng: random.Random) -> int | float:
    if signal.is_float:
        return rng.uniform(-1e6, 1e6)
    low, high = dbc.raw_range(signal)
    choices = dbc.choices_of(signal)
    if choices and rng.random() < 0.7:
        return rng.choice(list(choices))  # mostly valid states, sometimes undefined ones
    return rng.choice([low, high, rng.randint(low, high)])


def _expected(signal: Signal, raw: int | float) -> object:
    """What the agent must emit for `raw`, worked out from the DBC, not from cantools' decoder.
    A choice signal on a path outside the catalog is typed as a string (INTERFACE section 7):
    a raw value without a name is dropped (None here)."""
    choices = dbc.choices_of(signal) if not signal.is_float else {}
    if choices:
        return choices.get(int(raw))
    return raw * signal.conversion.scale + signal.conversion.offset


def _frame(message: Message, data: bytes) -> Frame:
    return Frame(
        arbitration_id=message.frame_id,
        data=data,
        timestamp=12.5,
        is_extended_id=message.is_extended_frame,
        is_fd=message.is_fd,
    )


def _branches(message: Message) -> list[int | None]:
    if not message.is_multiplexed():
        return [None]
    selector = next(s for s in message.signals if s.is_multiplexer)
    return sorted({i for s in message.signals for i in (s.multiplexer_ids or ())}) or [
        selector.minimum
    ]


@pytest.mark.parametrize(("bus", "message"), _messages(), ids=[m.name for _, m in _messages()])
def test_every_message_round_trips(all_signals: dbc.Vehicle, bus: str, message: Message) -> None:
    """Raw values encoded by cantools come back scaled, choices as names, mux branches only."""
    decoder = build_decoders(all_signals)[bus]
    rng = random.Random(message.frame_id)
    dropped = 0
    for mux in _branches(message):
        for _ in range(50):
            active = [
                s for s in message.signals if s.multiplexer_ids is None or mux in s.multiplexer_ids
            ]
            raw = {s.name: _random_raw(s, rng) for s in active}
            if mux is not None:
                selector = next(s for s in message.signals if s.is_multiplexer)
                raw[selector.name] = mux
            data = message.encode(raw, scaling=False, strict=False)
            got = {s.path: s.value for s in decoder.decode(_frame(message, data))}
            everything = {
                f"Test.{message.name}.{s.name}": _expected(s, raw[s.name]) for s in active
            }
            expected = {path: value for path, value in everything.items() if value is not None}
            dropped += len(everything) - len(expected)
            assert set(got) == set(expected)
            for path, value in expected.items():
                if isinstance(value, float):
                    assert got[path] == pytest.approx(value, rel=1e-12, abs=1e-9), path
                else:
                    assert got[path] == value, path
    assert decoder.stats.failed == 0
    assert decoder.stats.frames == decoder.stats.decoded
    assert decoder.stats.invalid_values == dropped


def test_demo_transforms(demo_vehicle: dbc.Vehicle) -> None:
    """The demo mapping's transforms: linear, map by name, map by raw number, plain choices."""
    decoders = build_decoders(demo_vehicle)
    pt, body = demo_vehicle.buses["powertrain"], demo_vehicle.buses["body"]

    def run(bus: str, message: Message, values: dict[str, object]) -> dict[str, object]:
        data = message.encode(values, strict=False)
        return {s.path: s.value for s in decoders[bus].decode(_frame(message, data))}

    got = run(
        "powertrain",
        pt.by_name["BMS_Range"],
        {"BMS_RangeEst": 312.4, "BMS_EnergyRemaining": 50, "BMS_CapacityNominal": 75},
    )
    assert got["Vehicle.Powertrain.TractionBattery.Range"] == 312_400  # VSS: uint32 metres

    got = run(
        "powertrain",
        pt.by_name["OBC_Status"],
        {
            "OBC_CableState": "LOCKED",
            "OBC_ChargeState": "CHARGING",
            "OBC_ChargePower": 11,
            "OBC_ChargeLimit": 80,
            "OBC_ACVoltage": 230,
            "OBC_ChargeTimeRemaining": 90,
        },
    )
    assert (
        got[
            "Vehicle.Powertrain.TractionBattery.Charging.ChargingPort.AnyPosition.IsChargingCableConnected"
        ]
        is True
    )
    assert got["Vehicle.Powertrain.TractionBattery.Charging.IsCharging"] is True
    assert got["Vehicle.Powertrain.TractionBattery.Charging.ChargeLimit"] == 80

    got = run(
        "powertrain",
        pt.by_name["VCU_Status"],
        {
            "VCU_VehicleSpeed": 87.25,
            "VCU_GearPos": "R",
            "VCU_ParkLock": "RELEASED",
            "VCU_Ignition": "ACC",
            "VCU_Odometer": 12345.6,
            "VCU_Counter": 3,
        },
    )
    assert got["Vehicle.Speed"] == pytest.approx(87.25)
    assert got["Vehicle.Powertrain.Transmission.SelectedGear"] == -1
    assert got["Vehicle.Powertrain.Transmission.IsParkLockEngaged"] is False
    assert got["Vehicle.LowVoltageSystemState"] == "ACC"
    assert got["Vehicle.TraveledDistance"] == 12_345_600  # VSS: uint32 metres

    got = run(
        "body",
        body.by_name["HVAC_Status"],
        {
            "HVAC_CabinTemp": 31.2,
            "HVAC_ExteriorTemp": -7.5,
            "HVAC_TargetTemp": 21.5,
            "HVAC_ClimateActive": "ON",
            "HVAC_ACActive": "ON",
            "HVAC_HeaterActive": "OFF",
            "HVAC_FanLevel": 7,
            "HVAC_Mode": "PRECONDITION",
            "HVAC_Counter": 0,
        },
    )
    assert got["Vehicle.Cabin.HVAC.IsAirConditioningActive"] is True  # raw-number map key
    assert got["Vehicle.Exterior.AirTemperature"] == pytest.approx(-7.5)
    assert got["Vehicle.Cabin.HVAC.Station.Row1.Driver.Temperature"] == pytest.approx(21.5)
    assert got["Vehicle.Cabin.HVAC.Station.Row1.Driver.FanSpeed"] == 100  # VSS: uint8 percent

    tpms = body.by_name["TPMS_Status"]
    got = run(
        "body",
        tpms,
        {
            "TPMS_WheelIndex": 2,
            "TPMS_PressureRL": 2.1,
            "TPMS_TempRL": 20,
            "TPMS_SensorBatteryLow": "OK",
        },
    )
    assert got == {"Vehicle.Chassis.Axle.Row2.Wheel.Left.Tire.Pressure": 210}  # uint16 kPa

    got = run(
        "body",
        body.by_name["SVC_Maintenance"],
        {
            "SVC_DistanceToService": -120,
            "SVC_TimeToService": -3,
            "SVC_ServiceDue": "OVERDUE",
            "SVC_LvBatteryVoltage": 11.7,
            "SVC_WarnBrake": "OFF",
            "SVC_WarnBattery": "ON",
            "SVC_WarnTyre": "OFF",
            "SVC_WarnService": "ON",
            "SVC_WarnPowertrain": "OFF",
        },
    )
    assert got["Vehicle.Service.DistanceToService"] == -120
    assert got["Vehicle.Service.TimeToService"] == -3 * 86400  # VSS: int32 seconds
    assert got["Vehicle.Service.IsServiceDue"] is True
    assert got["Vehicle.LowVoltageBattery.CurrentVoltage"] == pytest.approx(11.7)


def test_map_miss_is_dropped_and_counted(demo_vehicle: dbc.Vehicle) -> None:
    """A value the `map` does not cover is dropped, never passed through."""
    decoder = build_decoders(demo_vehicle)["powertrain"]
    obc = demo_vehicle.buses["powertrain"].by_name["OBC_Status"]
    # Raw charge state 6 has no name and no map entry.
    data = obc.encode(
        {
            "OBC_CableState": 0,
            "OBC_ChargeState": 6,
            "OBC_ChargePower": 0,
            "OBC_ChargeLimit": 80,
            "OBC_ACVoltage": 0,
            "OBC_ChargeTimeRemaining": 0,
        },
        scaling=False,
        strict=False,
    )
    paths = {s.path for s in decoder.decode(_frame(obc, data))}
    assert "Vehicle.Powertrain.TractionBattery.Charging.IsCharging" not in paths
    assert (
        "Vehicle.Powertrain.TractionBattery.Charging.ChargingPort.AnyPosition.IsChargingCableConnected"
        in paths
    )
    assert decoder.stats.unmapped_values == 1


def test_short_unknown_error_remote_and_long_frames(demo_vehicle: dbc.Vehicle) -> None:
    """Each kind of odd frame lands in its own counter; a padded frame still decodes."""
    decoder = build_decoders(demo_vehicle)["powertrain"]
    assert decoder.decode(Frame(0x100, b"\x01\x02\x03")) == []  # BMS_Status is 8 bytes
    assert decoder.decode(Frame(0x7FF, bytes(8))) == []
    assert decoder.decode(Frame(0x100, bytes(8), is_extended_id=True)) == []  # 29-bit 0x100
    assert decoder.decode(Frame(0x100, bytes(8), is_error_frame=True)) == []
    assert decoder.decode(Frame(0x100, b"", is_remote_frame=True)) == []
    padded = decoder.decode(Frame(0x100, bytes([0xE8, 0x03]) + bytes(10), is_fd=True))
    assert any(s.path.endswith("StateOfCharge.Current") and s.value == 100.0 for s in padded)
    stats = decoder.stats
    assert (stats.short, stats.unknown_id, stats.error_frames, stats.remote_frames) == (1, 2, 1, 1)
    assert stats.decoded == 1 and stats.frames == 6


def test_float_nan_is_dropped_and_counted(tmp_path: Path) -> None:
    """A float signal carrying NaN is not valid JSON: dropped and counted."""
    dbc_file = tmp_path / "float.dbc"
    dbc_file.write_text(
        'VERSION ""\n\nNS_ :\n\nBS_:\n\nBU_: X\n\n'
        'BO_ 1 F: 4 X\n SG_ Val : 0|32@1- (1,0) [0|0] "" X\n\n'
        "SIG_VALTYPE_ 1 Val : 1;\n"
    )
    cfg = tmp_path / "f.yaml"
    cfg.write_text(
        f"vehicle_id: F\ncan:\n  buses:\n    - {{name: b, interface: virtual, channel: f, "
        f"dbc: [{dbc_file}]}}\nsignals:\n  - {{path: Test.Val, source: Val}}\n"
        "vss: {unknown_paths: warn}\n"
    )
    vehicle = dbc.load_vehicle(config.load(cfg))
    decoder = Decoder("b", vehicle.mapped, vehicle.types)
    import struct

    assert decoder.decode(Frame(1, struct.pack("<f", float("nan")))) == []
    assert decoder.decode(Frame(1, struct.pack("<f", float("inf")))) == []
    (sample,) = decoder.decode(Frame(1, struct.pack("<f", 1.5)))
    assert sample.value == 1.5
    assert decoder.stats.nonfinite == 2


_KNOWN = [
    (0x100, False),
    (0x101, False),
    (0x3C0, False),
    (0x120, False),
    (0x200, False),
    (0x280, False),
    (0x390, False),
    (0x18FF50E5, True),
]


@cache
def _demo() -> tuple[dbc.Vehicle, dict[str, Decoder]]:
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="va-prop-"))
    path = folder / "demo.yaml"
    path.write_text(demo_text("prop"))
    vehicle = dbc.load_vehicle(config.load(path))
    return vehicle, build_decoders(vehicle)


def _bucket(vehicle: dbc.Vehicle, bus: str, frame: Frame) -> str:
    """Where a frame must be counted, worked out from the mapping, not from the decoder."""
    if frame.is_error_frame:
        return "error_frames"
    if frame.is_remote_frame:
        return "remote_frames"
    lengths = {
        dbc.frame_key(m.message.frame_id, m.message.is_extended_frame): m.message.length
        for m in vehicle.mapped
        if m.bus == bus
    }
    length = lengths.get(dbc.frame_key(frame.arbitration_id, frame.is_extended_id))
    if length is None:
        return "unknown_id"
    return "short" if len(frame.data) < length else "decoded"


_frames = st.builds(
    Frame,
    arbitration_id=st.one_of(st.integers(0, 0x1FFFFFFF), st.sampled_from([i for i, _ in _KNOWN])),
    data=st.binary(min_size=0, max_size=64),
    timestamp=st.floats(allow_nan=True, allow_infinity=True),
    is_extended_id=st.booleans(),
    is_error_frame=st.booleans(),
    is_remote_frame=st.booleans(),
    is_fd=st.booleans(),
)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames=st.lists(_frames, max_size=20))
def test_arbitrary_frames_never_raise_and_counters_add_up(frames: list[Frame]) -> None:
    """Any id, any length 0-64, any flags: no exception, and every frame counted once."""
    vehicle, decoders = _demo()
    for bus, decoder in decoders.items():
        before = decoder.stats.as_dict()
        expected = dict.fromkeys(before, 0)
        emitted = 0
        for frame in frames:
            expected[_bucket(vehicle, bus, frame)] += 1
            samples = decoder.decode(frame)
            emitted += len(samples)
            for sample in samples:
                assert isinstance(sample.value, bool | int | float | str)
                if isinstance(sample.value, float):
                    assert math.isfinite(sample.value)
        after = decoder.stats.as_dict()
        delta = {key: after[key] - before[key] for key in after}
        assert delta["frames"] == len(frames)
        assert delta["failed"] == 0
        for bucket in ("decoded", "unknown_id", "short", "error_frames", "remote_frames"):
            assert delta[bucket] == expected[bucket], bucket
        assert delta["samples"] == emitted


def test_nested_multiplexing_falls_back_to_cantools(tmp_path: Path) -> None:
    """Extended multiplexing (a selector that is itself multiplexed) decodes correctly."""
    dbc_file = tmp_path / "nested.dbc"
    dbc_file.write_text(
        'VERSION ""\n\nNS_ :\n\nBS_:\n\nBU_: X\n\n'
        "BO_ 5 Nested: 8 X\n"
        ' SG_ Outer M : 0|4@1+ (1,0) [0|15] "" X\n'
        ' SG_ Inner m1M : 4|4@1+ (1,0) [0|15] "" X\n'
        ' SG_ Deep m2 : 8|8@1+ (0.5,0) [0|127] "" X\n'
        ' SG_ Other m3 : 8|8@1+ (1,0) [0|255] "" X\n\n'
        "SG_MUL_VAL_ 5 Inner Outer 1-1;\n"
        "SG_MUL_VAL_ 5 Deep Inner 2-2;\n"
        "SG_MUL_VAL_ 5 Other Inner 3-3;\n"
    )
    cfg = tmp_path / "n.yaml"
    cfg.write_text(
        f"vehicle_id: N\ncan:\n  buses:\n    - {{name: b, interface: virtual, channel: n, "
        f"dbc: [{dbc_file}]}}\nsignals:\n  - {{path: Test.Deep, source: Deep}}\n"
        "  - {path: Test.Other, source: Other}\nvss: {unknown_paths: warn}\n"
    )
    vehicle = dbc.load_vehicle(config.load(cfg))
    decoder = Decoder("b", vehicle.mapped, vehicle.types)
    message = vehicle.buses["b"].by_name["Nested"]
    deep = message.encode({"Outer": 1, "Inner": 2, "Deep": 21.5}, strict=False)
    other = message.encode({"Outer": 1, "Inner": 3, "Other": 200}, strict=False)
    neither = bytes([0x02, 0x00, 0xFF]) + bytes(5)  # Outer = 2: Inner not selected
    assert [(s.path, s.value) for s in decoder.decode(Frame(5, deep))] == [("Test.Deep", 21.5)]
    assert [(s.path, s.value) for s in decoder.decode(Frame(5, other))] == [("Test.Other", 200)]
    assert decoder.decode(Frame(5, neither)) == []
    assert decoder.stats.decoded == 3


def test_a_tap_takes_the_samples_of_the_frames_that_carry_its_paths(
    demo_vehicle: dbc.Vehicle,
) -> None:
    """Campaigns' tap: a frame that can carry a tapped path hands all its samples to the sink
    as well as to the caller; a frame that cannot hands nothing; no sink taps nothing."""
    decoder = build_decoders(demo_vehicle)["powertrain"]
    pt = demo_vehicle.buses["powertrain"]
    tapped = "Vehicle.Powertrain.TractionBattery.Temperature.Average"
    sink: list[object] = []
    decoder.set_tap({tapped, "Vehicle.Not.Decoded.Here"}, sink)  # type: ignore[arg-type]
    carrier = next(m for m in demo_vehicle.mapped if m.path == tapped).message
    other = pt.by_name["BMS_Range"]
    with_tap = decoder.decode(_frame(carrier, bytes(carrier.length)))
    assert tapped in {s.path for s in with_tap} and sink == with_tap
    decoder.decode(_frame(other, bytes(other.length)))
    assert sink == with_tap  # nothing more: BMS_Range carries no tapped path
    decoder.set_tap({tapped}, None)
    decoder.decode(_frame(carrier, bytes(carrier.length)))
    assert sink == with_tap
