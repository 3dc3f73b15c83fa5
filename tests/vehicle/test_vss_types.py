"""Samples carry their path's VSS datatype (INTERFACE section 7), whatever the frames hold.

- a property test: random bytes on a DBC full of real-world sentinels, every sample's JSON
  type is its path's catalog datatype, within range and allowed values, numbers rounded;
- the simulator's log replayed through the reference mapping conforms to the built-in VSS 6.0
  catalog on every sample.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent import config
from agent.sim.runner import record
from agent.sim.scenario import load_scenario
from agent.vehicle import dbc
from agent.vehicle.catalog import Leaf, builtin
from agent.vehicle.decode import build_decoders
from agent.vehicle.model import Frame
from agent.vehicle.replay import replay
from agent.vehicle.vsscheck import PathType
from tests.support.configs import demo_text

MESSY_DBC = """\
VERSION ""

NS_ :

BS_:

BU_: ECU

BO_ 256 BMS: 8 ECU
 SG_ SOC : 0|10@1+ (0.1,0) [0|102.3] "%" ECU
 SG_ PackTemp : 16|8@1- (0.5,0) [-64|63.5] "degC" ECU
 SG_ Odo : 24|24@1+ (0.1,0) [0|1677721.5] "km" ECU
 SG_ Gear : 48|3@1+ (1,0) [0|7] "" ECU
 SG_ Ign : 51|3@1+ (1,0) [0|7] "" ECU
 SG_ Cable : 54|2@1+ (1,0) [0|3] "" ECU
 SG_ Flag : 56|1@1+ (1,0) [0|1] "" ECU
 SG_ Pressure : 57|7@1+ (5,0) [0|635] "kPa" ECU

BO_ 257 M2: 8 ECU
 SG_ Fan : 0|8@1+ (1,0) [0|255] "%" ECU
 SG_ SOH : 8|16@1- (0.01,0) [-327.68|327.67] "%" ECU
 SG_ Speed : 24|16@1+ (0.01,0) [0|655.35] "km/h" ECU
 SG_ Service : 40|16@1- (1,0) [-32768|32767] "days" ECU

BO_ 258 F3: 4 ECU
 SG_ Ext : 0|32@1- (1,0) [-100|100] "degC" ECU

SIG_VALTYPE_ 258 Ext : 1;

VAL_ 256 SOC 1022 "Invalid" 1023 "NoDataExists" ;
VAL_ 256 Gear 0 "P" 1 "R" 2 "N" 3 "D" 4 "SNA" ;
VAL_ 256 Ign 0 "LOCK" 1 "OFF" 2 "ACC" 3 "ON" 4 "START" ;
VAL_ 256 Cable 0 "NO" 1 "YES" 2 "ERR" 3 "SNA" ;
VAL_ 257 Fan 255 "Unavailable" ;
"""

MESSY_SIGNALS = """\
signals:
  - {path: Vehicle.Powertrain.TractionBattery.StateOfCharge.Current, source: SOC}
  - {path: Vehicle.Powertrain.TractionBattery.Temperature.Average, source: PackTemp}
  - path: Vehicle.TraveledDistance
    source: Odo
    transform: {linear: {scale: 1000}}
  - path: Vehicle.Powertrain.Transmission.SelectedGear
    source: Gear
    transform: {map: {P: 126, R: -1, N: 0, D: 127, SNA: null}}
  - {path: Vehicle.LowVoltageSystemState, source: Ign}
  - path: CABLE_PATH
    source: Cable
    transform: {map: {NO: false, YES: true, ERR: null, SNA: null}}
  - {path: Vehicle.Cabin.HVAC.IsAirConditioningActive, source: Flag}
  - {path: Vehicle.Chassis.Axle.Row1.Wheel.Left.Tire.Pressure, source: Pressure, invalid: [127]}
  - {path: Vehicle.Cabin.HVAC.Station.Row1.Driver.FanSpeed, source: Fan}
  - {path: Vehicle.Powertrain.TractionBattery.StateOfHealth, source: SOH, decimals: 1}
  - {path: Vehicle.Speed, source: Speed}
  - path: Vehicle.Service.TimeToService
    source: Service
    transform: {linear: {scale: 86400}}
  - {path: Vehicle.Exterior.AirTemperature, source: Ext}
""".replace(
    "CABLE_PATH",
    "Vehicle.Powertrain.TractionBattery.Charging.ChargingPort.AnyPosition.IsChargingCableConnected",
)

JSON_KIND = {bool: "boolean", str: "string", int: "integer", float: "float"}


def conformity(leaf: Leaf | None, value: Any) -> str | None:
    """Why `value` does not fit the catalog's leaf, or None when it does."""
    if leaf is None:
        return "not in the catalog"
    got = JSON_KIND[type(json.loads(json.dumps(value)))]
    if got != leaf.kind:
        return f"JSON type {got}, catalog says {leaf.datatype}"
    if leaf.kind in ("integer", "float"):
        if not math.isfinite(value):
            return "not finite"
        low, high = leaf.bounds
        if (low is not None and value < low) or (high is not None and value > high):
            return f"{value} outside {low}..{high}"
    if leaf.allowed is not None and value not in leaf.allowed:
        return f"{value!r} not allowed"
    return None


def rounded(ptype: PathType, value: Any) -> bool:
    """Numbers carry no float noise: a float is exactly its rounding to the path's decimals."""
    if ptype.kind != "float" or ptype.decimals is None:
        return True
    return bool(value == round(value, ptype.decimals)) and repr(value) == repr(
        round(value, ptype.decimals)
    )


@pytest.fixture(scope="module")
def messy(tmp_path_factory: pytest.TempPathFactory) -> dbc.Vehicle:
    folder = tmp_path_factory.mktemp("messy")
    (folder / "messy.dbc").write_text(MESSY_DBC)
    cfg = folder / "messy.yaml"
    cfg.write_text(
        "vehicle_id: MESSY\ncan:\n  buses:\n"
        "    - {name: b, interface: virtual, channel: messy, dbc: [messy.dbc]}\n" + MESSY_SIGNALS
    )
    return dbc.load_vehicle(config.load(cfg))


LENGTHS = {256: 8, 257: 8, 258: 4}
frames = st.lists(
    st.sampled_from(sorted(LENGTHS)).flatmap(
        lambda i: st.builds(
            lambda data, i=i: Frame(i, data), st.binary(min_size=LENGTHS[i], max_size=LENGTHS[i])
        )
    ),
    min_size=1,
    max_size=40,
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(frames=frames)
def test_every_sample_has_its_paths_vss_type_whatever_the_frames(
    messy: dbc.Vehicle, frames: list[Frame]
) -> None:
    decoder = build_decoders(messy)["b"]
    catalog = builtin()
    for frame in frames:
        for sample in decoder.decode(frame):
            leaf = catalog.get(sample.path)
            assert conformity(leaf, sample.value) is None, (sample, conformity(leaf, sample.value))
            assert rounded(messy.types[sample.path], sample.value), sample
    stats = decoder.stats
    assert stats.frames == stats.decoded == len(frames)


def test_sentinels_nulls_and_ranges_are_dropped_and_counted(messy: dbc.Vehicle) -> None:
    decoder = build_decoders(messy)["b"]
    soc_nodata = (1023).to_bytes(2, "little") + bytes(6)  # SOC NoDataExists, the rest zero
    got = {s.path: s.value for s in decoder.decode(Frame(256, soc_nodata))}
    assert "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current" not in got
    assert got["Vehicle.TraveledDistance"] == 0 and got["Vehicle.LowVoltageSystemState"] == "LOCK"
    assert decoder.stats.invalid_values == 1
    soc_high = (1010).to_bytes(2, "little") + bytes(6)  # 101.0 %: over the catalog's max
    decoder.decode(Frame(256, soc_high))
    assert decoder.stats.out_of_range == 1
    # Gear SNA (4) maps to null, ignition 7 has no name, cable ERR maps to null,
    # pressure 127 is listed as invalid: four drops.
    raw = 4 << 48 | 7 << 51 | 2 << 54 | 127 << 57
    got = {s.path: s.value for s in decoder.decode(Frame(256, raw.to_bytes(8, "little")))}
    assert decoder.stats.invalid_values == 1 + 4
    assert "Vehicle.Powertrain.Transmission.SelectedGear" not in got
    # Fan 255 is a choice (a sentinel on a numeric path); 150 % is out of range.
    decoder.decode(Frame(257, bytes([255]) + bytes(7)))
    decoder.decode(Frame(257, bytes([150]) + bytes(7)))
    assert (decoder.stats.invalid_values, decoder.stats.out_of_range) == (6, 2)
    # Speed 12.6 is 12.6, never 12.600000000000001; SOH rounds to its configured decimals.
    data = bytearray(8)
    data[1:3] = (-1234).to_bytes(2, "little", signed=True)  # SOH -12.34: out of range
    data[3:5] = (1260).to_bytes(2, "little")
    got = {s.path: s.value for s in decoder.decode(Frame(257, bytes(data)))}
    assert repr(got["Vehicle.Speed"]) == "12.6"
    data[1:3] = (9876).to_bytes(2, "little", signed=True)
    got = {s.path: s.value for s in decoder.decode(Frame(257, bytes(data)))}
    assert got["Vehicle.Powertrain.TractionBattery.StateOfHealth"] == 98.8


@pytest.mark.parametrize("scenario", ["parked", "driving", "plugged_in"])
def test_the_simulators_log_conforms_to_the_vss_catalog(tmp_path: Path, scenario: str) -> None:
    """Every sample of the reference car, every frame: path, datatype, min/max, allowed."""
    cfg = tmp_path / "demo.yaml"
    cfg.write_text(demo_text())
    vehicle = dbc.load_vehicle(config.load(cfg))
    log = tmp_path / "car.log"
    record(vehicle, load_scenario(scenario), log, duration_s=120, start_ts=1.7e9)
    out = io.StringIO()
    summary = replay(vehicle, log, out, every_frame=True)
    catalog = builtin()
    seen: set[str] = set()
    for line in out.getvalue().splitlines():
        row = json.loads(line)
        seen.add(row["path"])
        problem = conformity(catalog.get(row["path"]), row["value"])
        assert problem is None, (row, problem)
        assert rounded(vehicle.types[row["path"]], row["value"]), row
    assert seen == {s.path for s in vehicle.loaded.settings.signals}  # every path, all conform
    assert summary.total("invalid_values") == summary.total("out_of_range") == 0
