"""check-config: every kind of problem is reported with its exact key path and line."""

from __future__ import annotations

import base64
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from agent import config
from agent.errors import ConfigError, Problem
from agent.vehicle import dbc
from tests.support.configs import CONFIG_DIR, DBC_DIR, ROOT

PT = DBC_DIR / "ev_powertrain.dbc"
BODY = DBC_DIR / "ev_body.dbc"

BASE = f"""\
vehicle_id: TEST-1
can:
  buses:
    - name: powertrain
      interface: virtual
      channel: pt
      fd: true
      dbc: [{PT}]
    - name: body
      interface: virtual
      channel: body
      dbc: [{BODY}]
signals:
  - path: Vehicle.Speed
    source: VCU_VehicleSpeed
  - path: Vehicle.Powertrain.TractionBattery.Charging.IsCharging
    source: OBC_ChargeState
    transform:
      map: {{IDLE: false, CHARGING: true, COMPLETE: false, FAULT: null, WAITING: false}}
"""


def problems_of(path: Path) -> list[Problem]:
    with pytest.raises(ConfigError) as info:
        dbc.load_vehicle(config.load(path))
    return info.value.problems


def line_of(text: str, needle: str) -> int:
    """1-based line of the first line containing `needle`."""
    for number, line in enumerate(text.splitlines(), start=1):
        if needle in line:
            return number
    raise AssertionError(f"{needle!r} not in text")


def only(problems: list[Problem]) -> Problem:
    assert len(problems) == 1, problems
    return problems[0]


def test_base_config_is_ok(write_config: Callable[[str], Path]) -> None:
    """The fixture's own config passes, so every failure below comes from its one change."""
    vehicle = dbc.load_vehicle(config.load(write_config(BASE)))
    assert [m.path for m in vehicle.mapped] == [
        "Vehicle.Speed",
        "Vehicle.Powertrain.TractionBattery.Charging.IsCharging",
    ]


@pytest.mark.parametrize("name", ["demo.yaml", "vehicle.yaml"])
def test_shipped_configs_are_ok_and_map_every_interface_path(name: str) -> None:
    """Both shipped configs validate and map every path of INTERFACE section 5."""
    vehicle = dbc.load_vehicle(config.load(CONFIG_DIR / name))
    paths = {m.path for m in vehicle.mapped}
    required = {
        "Vehicle.Speed",
        "Vehicle.TraveledDistance",
        "Vehicle.Powertrain.Transmission.IsParkLockEngaged",
        "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current",
        "Vehicle.Powertrain.TractionBattery.StateOfHealth",
        "Vehicle.Powertrain.TractionBattery.CurrentVoltage",
        "Vehicle.Powertrain.TractionBattery.CurrentCurrent",
        "Vehicle.Powertrain.TractionBattery.Temperature.Average",
        "Vehicle.Powertrain.TractionBattery.Range",
        "Vehicle.Powertrain.TractionBattery.Charging.IsCharging",
        "Vehicle.Powertrain.TractionBattery.Charging.ChargingPort.AnyPosition.IsChargingCableConnected",
        "Vehicle.Powertrain.TractionBattery.Charging.ChargeLimit",
        "Vehicle.Cabin.HVAC.IsAirConditioningActive",
        "Vehicle.Cabin.HVAC.AmbientAirTemperature",
        "Vehicle.Cabin.HVAC.Station.Row1.Driver.Temperature",
        "Vehicle.Exterior.AirTemperature",
        "Vehicle.LowVoltageBattery.CurrentVoltage",
        "Vehicle.Service.DistanceToService",
        "Vehicle.Service.TimeToService",
        "Vehicle.Service.IsServiceDue",
        "Vehicle.Chassis.Axle.Row1.Wheel.Left.Tire.Pressure",
        "Vehicle.Chassis.Axle.Row1.Wheel.Right.Tire.Pressure",
        "Vehicle.Chassis.Axle.Row2.Wheel.Left.Tire.Pressure",
        "Vehicle.Chassis.Axle.Row2.Wheel.Right.Tire.Pressure",
    }
    assert required <= paths, sorted(required - paths)


def test_unknown_key(write_config: Callable[[str], Path]) -> None:
    text = BASE.replace(
        "    source: VCU_VehicleSpeed\n", "    source: VCU_VehicleSpeed\n    dedband: 1\n"
    )
    path = write_config(text)
    problem = only(problems_of(path))
    assert problem.key == "signals.0.dedband"
    assert problem.line == line_of(text, "dedband")
    assert problem.file == str(path)
    assert "unknown key" in problem.message and "'deadband'" in problem.message


def test_unknown_top_level_section(write_config: Callable[[str], Path]) -> None:
    text = BASE + "telemetri:\n  batch_interval_ms: 100\n"
    problem = only(problems_of(write_config(text)))
    assert (problem.key, problem.line) == ("telemetri", line_of(text, "telemetri"))
    assert "'telemetry'" in problem.message


def test_wrong_type(write_config: Callable[[str], Path]) -> None:
    text = BASE + "telemetry:\n  batch_interval_ms: fast\n"
    problem = only(problems_of(write_config(text)))
    assert (problem.key, problem.line) == (
        "telemetry.batch_interval_ms",
        line_of(text, "batch_interval_ms"),
    )
    assert "integer" in problem.message and "'fast'" in problem.message


def test_out_of_range(write_config: Callable[[str], Path]) -> None:
    text = BASE + "mqtt:\n  host: broker.local\n  port: 70000\n"
    problem = only(problems_of(write_config(text)))
    assert (problem.key, problem.line) == ("mqtt.port", line_of(text, "port: 70000"))
    assert "65535" in problem.message


def test_a_bus_receive_buffer_is_checked_and_null_keeps_the_kernels(
    write_config: Callable[[str], Path],
) -> None:
    text = BASE.replace("      channel: pt\n", "      channel: pt\n      rcvbuf_kb: 8\n")
    problem = only(problems_of(write_config(text)))
    assert (problem.key, problem.line) == ("can.buses.0.rcvbuf_kb", line_of(text, "rcvbuf_kb"))
    assert "64" in problem.message
    text = BASE.replace("      channel: pt\n", "      channel: pt\n      rcvbuf_kb: null\n")
    buses = config.load(write_config(text)).settings.can.buses
    assert [bus.rcvbuf_kb for bus in buses] == [None, 1024]  # 1024 KB unless told


def test_negative_deadband_is_out_of_range(write_config: Callable[[str], Path]) -> None:
    text = BASE.replace(
        "    source: VCU_VehicleSpeed\n", "    source: VCU_VehicleSpeed\n    deadband: -1\n"
    )
    problem = only(problems_of(write_config(text)))
    assert (problem.key, problem.line) == ("signals.0.deadband", line_of(text, "deadband"))


def test_missing_required_key(write_config: Callable[[str], Path]) -> None:
    text = BASE.replace("vehicle_id: TEST-1\n", "")
    problem = only(problems_of(write_config(text)))
    assert (problem.key, problem.line, problem.message) == (
        "vehicle_id",
        1,
        "required key is missing",
    )


def test_missing_dbc_file(write_config: Callable[[str], Path]) -> None:
    text = BASE.replace(f"dbc: [{BODY}]", "dbc: [nowhere/missing.dbc]")
    path = write_config(text)
    problem = only(problems_of(path))
    assert (problem.key, problem.line) == ("can.buses.1.dbc.0", line_of(text, "missing.dbc"))
    # Relative paths resolve against the config file's own folder.
    assert str(path.parent / "nowhere" / "missing.dbc") in problem.message
    assert "not found" in problem.message


def test_unparsable_dbc_file(write_config: Callable[[str], Path], tmp_path: Path) -> None:
    broken = tmp_path / "broken.dbc"
    broken.write_text('VERSION ""\nBO_ 100 Oops: 8 X\n SG_ Half : 0|8@1+ (1,0 [0|1] "" X\n')
    text = BASE.replace(f"dbc: [{BODY}]", "dbc: [broken.dbc]")
    problems = problems_of(write_config(text))
    first = problems[0]
    assert (first.key, first.line) == ("can.buses.1.dbc.0", line_of(text, "broken.dbc"))
    assert first.message == (
        f"cannot load DBC file {broken}: line 3: invalid syntax at column 25 (marked >>!<<): "
        'SG_ Half : 0|8@1+ (1,0 >>!<<[0|1] "" X'
    )


def test_dbc_signal_that_does_not_exist(write_config: Callable[[str], Path]) -> None:
    text = BASE.replace("source: VCU_VehicleSpeed", "source: VCU_VehicleSped")
    problem = only(problems_of(write_config(text)))
    assert (problem.key, problem.line) == ("signals.0.source", line_of(text, "VCU_VehicleSped"))
    assert "no DBC signal 'VCU_VehicleSped'" in problem.message
    assert "did you mean 'VCU_VehicleSpeed'" in problem.message


def test_message_dot_signal_that_does_not_exist(write_config: Callable[[str], Path]) -> None:
    text = BASE.replace("source: VCU_VehicleSpeed", "source: BMS_Status.VCU_VehicleSpeed")
    problem = only(problems_of(write_config(text)))
    assert (problem.key, problem.line) == ("signals.0.source", line_of(text, "BMS_Status."))


def _ambiguous_dbc(tmp_path: Path) -> Path:
    """A DBC whose `Temp` is in two messages and whose BMS_SOC repeats the powertrain's."""
    path = tmp_path / "extra.dbc"
    path.write_text(
        'VERSION ""\n\nNS_ :\n\nBS_:\n\nBU_: X\n\n'
        'BO_ 1792 ExtraA: 8 X\n SG_ Temp : 0|8@1+ (1,0) [0|255] "" X\n'
        ' SG_ BMS_SOC : 8|8@1+ (1,0) [0|100] "%" X\n\n'
        'BO_ 1793 ExtraB: 8 X\n SG_ Temp : 0|8@1+ (1,0) [0|255] "" X\n'
    )
    return path


def test_ambiguous_across_buses(write_config: Callable[[str], Path], tmp_path: Path) -> None:
    extra = _ambiguous_dbc(tmp_path)
    text = BASE.replace(f"dbc: [{BODY}]", f"dbc: [{BODY}, {extra}]") + (
        "  - path: Vehicle.Powertrain.TractionBattery.StateOfCharge.Current\n    source: BMS_SOC\n"
    )
    problem = only(problems_of(write_config(text)))
    assert (problem.key, problem.line) == ("signals.2.source", line_of(text, "source: BMS_SOC"))
    assert "ambiguous" in problem.message
    assert "BMS_Status on powertrain" in problem.message
    assert "ExtraA on body" in problem.message


def test_ambiguity_resolved_by_bus_or_message(
    write_config: Callable[[str], Path], tmp_path: Path
) -> None:
    extra = _ambiguous_dbc(tmp_path)
    text = BASE.replace(f"dbc: [{BODY}]", f"dbc: [{BODY}, {extra}]") + (
        "  - path: Vehicle.Powertrain.TractionBattery.StateOfCharge.Current\n"
        "    source: BMS_SOC\n"
        "    bus: powertrain\n"
        "  - path: Vehicle.Cabin.HVAC.AmbientAirTemperature\n"
        "    source: ExtraB.Temp\n"
    )
    vehicle = dbc.load_vehicle(config.load(write_config(text)))
    found = {m.path: (m.bus, m.message.name) for m in vehicle.mapped}
    assert found["Vehicle.Powertrain.TractionBattery.StateOfCharge.Current"] == (
        "powertrain",
        "BMS_Status",
    )
    assert found["Vehicle.Cabin.HVAC.AmbientAirTemperature"] == ("body", "ExtraB")


def test_ambiguous_across_messages(write_config: Callable[[str], Path], tmp_path: Path) -> None:
    extra = _ambiguous_dbc(tmp_path)
    text = BASE.replace(f"dbc: [{BODY}]", f"dbc: [{BODY}, {extra}]") + (
        "  - path: Vehicle.Cabin.HVAC.AmbientAirTemperature\n    source: Temp\n    bus: body\n"
    )
    problem = only(problems_of(write_config(text)))
    assert (problem.key, problem.line) == ("signals.2.source", line_of(text, "source: Temp"))
    assert "ExtraA on body" in problem.message and "ExtraB on body" in problem.message


def test_map_key_that_is_not_a_choice(write_config: Callable[[str], Path]) -> None:
    text = BASE.replace("CHARGING: true,", "CHARGIN: true,")
    problem = only(problems_of(write_config(text)))
    assert problem.key == "signals.1.transform.map.CHARGIN"
    assert problem.line == line_of(text, "CHARGIN")
    assert "not a choice of OBC_ChargeState" in problem.message and "CHARGING" in problem.message


def test_map_number_outside_raw_range(write_config: Callable[[str], Path]) -> None:
    text = BASE.replace("map: {IDLE: false, CHARGING: true,", "map: {IDLE: false, 9: true,")
    problem = only(problems_of(write_config(text)))
    assert (problem.key, problem.line) == ("signals.1.transform.map.9", line_of(text, "9: true"))
    assert "0..7" in problem.message


def test_map_name_on_signal_without_choices(write_config: Callable[[str], Path]) -> None:
    text = BASE.replace(
        "    source: VCU_VehicleSpeed\n",
        "    source: VCU_VehicleSpeed\n    transform:\n      map: {STOPPED: true}\n",
    )
    problem = only(problems_of(write_config(text)))
    assert (problem.key, problem.line) == (
        "signals.0.transform.map.STOPPED",
        line_of(text, "STOPPED"),
    )
    assert "no value table" in problem.message


def test_yaml_11_words_stay_strings_as_map_keys(write_config: Callable[[str], Path]) -> None:
    """`ON`/`OFF` are choice names here, not YAML 1.1 booleans."""
    text = BASE + (
        "  - path: Vehicle.Cabin.HVAC.IsAirConditioningActive\n"
        "    source: HVAC_ACActive\n"
        "    transform:\n"
        "      map: {OFF: false, ON: true}\n"
    )
    vehicle = dbc.load_vehicle(config.load(write_config(text)))
    transform = vehicle.mapped[2].settings.transform
    assert transform is not None
    assert transform.map == {"OFF": False, "ON": True}


def test_two_transforms_at_once(write_config: Callable[[str], Path]) -> None:
    text = BASE.replace(
        "      map: {IDLE: false, CHARGING: true, COMPLETE: false, FAULT: null, WAITING: false}",
        "      map: {IDLE: false}\n      linear: {scale: 2}",
    )
    problem = only(problems_of(write_config(text)))
    assert (problem.key, problem.line) == ("signals.1.transform", line_of(text, "transform:"))
    assert "exactly one" in problem.message


def test_duplicate_vss_path(write_config: Callable[[str], Path]) -> None:
    text = BASE + "  - path: Vehicle.Speed\n    source: VCU_Odometer\n"
    problem = only(problems_of(write_config(text)))
    lines = [n for n, line in enumerate(text.splitlines(), 1) if "path: Vehicle.Speed" in line]
    assert (problem.key, problem.line) == ("signals.2.path", lines[1])
    assert f"first at signals.0, line {lines[0]}" in problem.message


def test_unknown_bus_name(write_config: Callable[[str], Path]) -> None:
    text = BASE.replace(
        "    source: VCU_VehicleSpeed\n", "    source: VCU_VehicleSpeed\n    bus: chassis\n"
    )
    problem = only(problems_of(write_config(text)))
    assert (problem.key, problem.line) == ("signals.0.bus", line_of(text, "bus: chassis"))
    assert "unknown bus 'chassis'" in problem.message and "powertrain, body" in problem.message


def test_duplicate_bus_name(write_config: Callable[[str], Path]) -> None:
    text = BASE.replace("    - name: body", "    - name: powertrain")
    problems = problems_of(write_config(text))
    dup = [p for p in problems if p.key == "can.buses.1.name"]
    assert dup and dup[0].line == line_of(text, "channel: body") - 2


def test_fd_frame_on_classic_bus(write_config: Callable[[str], Path]) -> None:
    text = BASE.replace("      fd: true\n", "      fd: false\n")
    problem = only(problems_of(write_config(text)))
    assert (problem.key, problem.line) == ("can.buses.0.fd", line_of(text, "fd: false"))
    assert "BMS_CellStats" in problem.message


def _trust(public_key: str) -> str:
    return (
        "commands:\n  trust:\n    - kid: fleet-app\n"
        f'      public_key: "{public_key}"\n      allow: ["hvac.*"]\n'
    )


def test_invalid_public_key(write_config: Callable[[str], Path]) -> None:
    text = BASE + _trust(base64.b64encode(b"\x01" * 31).decode())
    problem = only(problems_of(write_config(text)))
    assert (problem.key, problem.line) == (
        "commands.trust.0.public_key",
        line_of(text, "public_key"),
    )
    assert "32 bytes" in problem.message


def test_public_key_that_is_not_base64(write_config: Callable[[str], Path]) -> None:
    text = BASE + _trust("not a key!")
    problem = only(problems_of(write_config(text)))
    assert problem.key == "commands.trust.0.public_key"
    assert "base64" in problem.message


def test_valid_public_keys_raw_and_pem(write_config: Callable[[str], Path]) -> None:
    public = Ed25519PrivateKey.generate().public_key()
    raw = base64.b64encode(public.public_bytes_raw()).decode()
    pem = public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()
    text = (
        BASE
        + _trust(raw)
        + (
            "    - kid: workshop\n      public_key: |\n"
            + "".join(f"        {line}\n" for line in pem.splitlines())
        )
    )
    loaded = config.load(write_config(text))
    assert [k.kid for k in loaded.settings.commands.trust] == ["fleet-app", "workshop"]
    assert config.public_key_bytes(loaded.settings.commands.trust[1].public_key) == (
        public.public_bytes_raw()
    )


def test_yaml_syntax_error_has_a_line(write_config: Callable[[str], Path]) -> None:
    text = BASE + "telemetry:\n  batch_interval_ms: [1, 2\n"
    problem = only(problems_of(write_config(text)))
    assert problem.key == "(document)"
    assert problem.line >= line_of(text, "batch_interval_ms")
    assert "YAML syntax error" in problem.message


def test_duplicate_yaml_key(write_config: Callable[[str], Path]) -> None:
    text = BASE + "telemetry:\n  batch_interval_ms: 100\n  batch_interval_ms: 200\n"
    problem = only(problems_of(write_config(text)))
    lines = [n for n, line in enumerate(text.splitlines(), 1) if "batch_interval_ms" in line]
    assert (problem.key, problem.line) == ("telemetry.batch_interval_ms", lines[1])
    assert f"first given on line {lines[0]}" in problem.message


def test_several_problems_are_all_reported(write_config: Callable[[str], Path]) -> None:
    text = BASE.replace("source: VCU_VehicleSpeed", "source: Nope") + "mqtt:\n  port: 0\n"
    keys = [p.key for p in problems_of(write_config(text))]
    # Shape problems stop before DBC checks (they need a valid shape), so port comes first.
    assert keys == ["mqtt.port"]
    fixed = text.replace("port: 0", "port: 1883")
    assert [p.key for p in problems_of(write_config(fixed))] == ["signals.0.source"]


def test_cli_prints_ok(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "agent", "check-config", "-c", str(CONFIG_DIR / "demo.yaml")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "OK\n", "")


def test_cli_prints_one_line_per_problem_and_exits_2(write_config: Callable[[str], Path]) -> None:
    text = BASE.replace("source: VCU_VehicleSpeed", "source: Nope").replace(
        "CHARGING: true,", "CHARGIN: true,"
    )
    path = write_config(text)
    result = subprocess.run(
        [sys.executable, "-m", "agent", "check-config", "-c", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines == [
        f"{path}:{line_of(text, 'Nope')}: signals.0.source: no DBC signal 'Nope' on any bus",
        f"{path}:{line_of(text, 'CHARGIN')}: signals.1.transform.map.CHARGIN: "
        "'CHARGIN' is not a choice of OBC_ChargeState "
        "(choices: IDLE, CHARGING, COMPLETE, FAULT, WAITING)",
    ]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("content", ["", "- just\n- a list\n", "\x00\x01binary", "a: [unclosed\n"])
def test_cli_never_tracebacks_on_garbage(tmp_path: Path, content: str) -> None:
    path = tmp_path / "garbage.yaml"
    path.write_text(content)
    result = subprocess.run(
        [sys.executable, "-m", "agent", "check-config", "-c", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert all(line.startswith(f"{path}:") for line in result.stderr.splitlines()), result.stderr


def test_cli_missing_file() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "agent", "check-config", "-c", "/nonexistent/agent.yaml"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert (
        result.stderr
        == "/nonexistent/agent.yaml:1: (file): cannot read: No such file or directory\n"
    )


# --- the VSS catalog (INTERFACE section 7) ---


def _check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", "check-config", "-c", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )


def test_a_path_outside_the_catalog_is_refused_with_a_hint(
    write_config: Callable[[str], Path],
) -> None:
    old = "Vehicle.Powertrain.TractionBattery.Charging.IsChargingCableConnected"
    text = BASE + f"  - path: {old}\n    source: OBC_CableState\n"
    problem = only(problems_of(write_config(text)))
    assert (problem.key, problem.line) == ("signals.2.path", line_of(text, old))
    assert "not in the VSS 6.0 catalog" in problem.message
    assert "ChargingPort" in problem.message and "unknown_paths: warn" in problem.message


def test_unknown_paths_warn_prints_a_warning_and_exits_0(
    write_config: Callable[[str], Path],
) -> None:
    text = BASE + "  - {path: Vehicle.Custom.Thing, source: BMS_SOC}\nvss: {unknown_paths: warn}\n"
    path = write_config(text)
    result = _check_config(path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "OK\n"
    line = line_of(text, "Vehicle.Custom.Thing")
    assert result.stderr.splitlines() == [
        f"{path}:{line}: signals.2.path: warning: Vehicle.Custom.Thing is not in the VSS 6.0 "
        "catalog"
    ]


def test_a_choice_signal_on_a_boolean_path_needs_a_map(
    write_config: Callable[[str], Path],
) -> None:
    text = (
        BASE
        + "  - path: Vehicle.Powertrain.Transmission.IsParkLockEngaged\n"
        + ("    source: VCU_GearPos\n")
    )
    problem = only(problems_of(write_config(text)))
    assert (problem.key, problem.line) == ("signals.2.source", line_of(text, "VCU_GearPos"))
    assert "boolean" in problem.message and "P, R, N, D" in problem.message


def test_a_map_on_a_boolean_path_must_cover_every_choice(
    write_config: Callable[[str], Path],
) -> None:
    text = BASE.replace("COMPLETE: false, FAULT: null, ", "")
    problem = only(problems_of(write_config(text)))
    assert (problem.key, problem.line) == ("signals.1.transform.map", line_of(text, "map:"))
    assert "COMPLETE, FAULT" in problem.message


def test_map_values_must_have_the_paths_type(write_config: Callable[[str], Path]) -> None:
    text = BASE.replace("CHARGING: true,", "CHARGING: 'yes',")
    problem = only(problems_of(write_config(text)))
    assert (problem.key, problem.line) == (
        "signals.1.transform.map.CHARGING",
        line_of(text, "map:"),
    )
    assert "'yes' is not a boolean" in problem.message


def test_numbers_on_a_string_path_are_refused(write_config: Callable[[str], Path]) -> None:
    text = BASE + "  - {path: Vehicle.LowVoltageSystemState, source: BMS_SOC}\n"
    problem = only(problems_of(write_config(text)))
    assert (problem.key, problem.line) == ("signals.2.source", line_of(text, "LowVoltage"))
    assert "string path" in problem.message


def test_invalid_entries_must_be_choices_or_raw_values(write_config: Callable[[str], Path]) -> None:
    text = BASE + (
        "  - path: Vehicle.LowVoltageSystemState\n    source: VCU_Ignition\n"
        "    invalid:\n      - START\n      - NoData\n      - 9\n"
    )
    problems = problems_of(write_config(text))
    assert [(p.key, p.line) for p in problems] == [
        ("signals.2.invalid.1", line_of(text, "NoData")),
        ("signals.2.invalid.2", line_of(text, "- 9")),
    ]


def test_a_unit_mismatch_warns_with_the_converting_transform(
    write_config: Callable[[str], Path],
) -> None:
    text = BASE + "  - {path: Vehicle.TraveledDistance, source: VCU_Odometer}\n"
    path = write_config(text)
    result = _check_config(path)
    assert result.returncode == 0 and result.stdout == "OK\n"
    line = line_of(text, "VCU_Odometer")
    assert result.stderr.splitlines() == [
        f"{path}:{line}: signals.2.source: warning: the DBC gives km, VSS wants m for "
        "Vehicle.TraveledDistance; convert with transform: {linear: {scale: 1000}}"
    ]
    fixed = text.replace(
        "source: VCU_Odometer}", "source: VCU_Odometer, transform: {linear: {scale: 1000}}}"
    )
    assert _check_config(write_config(fixed)).stderr == ""


def test_unit_spellings_are_normalised() -> None:
    from agent.vehicle import units

    assert units.canonical("kph") == units.canonical("km/h") == "km/h"
    assert units.canonical("degC") == units.canonical("°C") == units.canonical("Celsius")
    assert units.canonical("%") == "percent"
    assert units.conversion("Fahrenheit", "Celsius") == pytest.approx((5 / 9, -160 / 9))
    assert units.conversion("bar", "kPa") == (100.0, 0.0)
    assert units.conversion("km", "V") is None


def test_an_overlay_adds_and_refines_paths(
    write_config: Callable[[str], Path], tmp_path: Path
) -> None:
    overlay = tmp_path / "car.vspec"
    overlay.write_text(
        "Vehicle.Custom:\n  type: branch\n  description: ours\n"
        "Vehicle.Custom.Boost:\n  type: sensor\n  datatype: uint8\n  unit: percent\n  max: 100\n"
        "Vehicle.Speed:\n  max: 250\n"
    )
    text = BASE + (
        f"  - {{path: Vehicle.Custom.Boost, source: BMS_SOC}}\nvss:\n  overlays: [{overlay}]\n"
    )
    vehicle = dbc.load_vehicle(config.load(write_config(text)))
    assert vehicle.types["Vehicle.Custom.Boost"].kind == "integer"
    assert vehicle.types["Vehicle.Custom.Boost"].high == 100
    assert vehicle.types["Vehicle.Speed"].high == 250


def test_overlay_problems_name_the_overlays_own_lines(
    write_config: Callable[[str], Path], tmp_path: Path
) -> None:
    overlay = tmp_path / "bad.vspec"
    overlay.write_text(
        "Vehicle.Custom.A:\n  type: sensor\n  datatype: float\n"
        "Vehicle.Custom.B:\n  type: sensor\n  datatype: quaternion\n"
    )
    text = BASE + f"vss:\n  overlays: [{overlay}]\n"
    problem = only(problems_of(write_config(text)))
    assert (problem.file, problem.line, problem.key) == (str(overlay), 4, "Vehicle.Custom.B")
    assert "datatype" in problem.message


def test_compute_must_read_mapped_paths(write_config: Callable[[str], Path]) -> None:
    text = BASE + (
        "  - path: Vehicle.Powertrain.TractionBattery.CurrentPower\n"
        "    compute: Vehicle.Speed * Vehicle.Powertrain.TractionBattery.CurrentCurrent\n"
    )
    problem = only(problems_of(write_config(text)))
    assert (problem.key, problem.line) == ("signals.2.compute", line_of(text, "compute:"))
    assert "CurrentCurrent, which no signal maps" in problem.message


def test_compute_and_source_are_exclusive(write_config: Callable[[str], Path]) -> None:
    text = BASE + (
        "  - path: Vehicle.Powertrain.TractionBattery.CurrentPower\n"
        "    source: BMS_SOC\n    compute: Vehicle.Speed * 2\n"
    )
    problem = only(problems_of(write_config(text)))
    assert problem.key == "signals.2" and "exactly one of 'source'" in problem.message
