"""Lenient loading (`strict: false`): real-world DBC quirks load, each one a warning with its
file, line and key path; the strict default refuses the same files with one clear line each.

The files under tests/vehicle/quirks/ were written for these tests, one quirk family each as
real cars' DBCs carry them, plus an ARXML, a KCD and a SYM file."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import can
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent import config
from agent.errors import ConfigError, Problem
from agent.vehicle import dbc, dbc_files
from agent.vehicle.dbc import frame_key
from tests.support.configs import DBC_DIR

QUIRKS = Path(__file__).resolve().parent / "quirks"

# Every quirk each file carries: (kind, line in the file, name concerned).
EXPECTED: dict[str, list[tuple[str, int, str]]] = {
    "truck_j1939.dbc": [("extended_id", 9, "EEC1"), ("extended_id", 13, "ET1")],
    "orphan_tables.dbc": [
        ("unknown_value_table", 14, "RearLamp"),
        ("unknown_value_table", 15, "Wiper"),
    ],
    "overlapping.dbc": [("overlap", 9, "WheelSpeeds")],
    "bare_points.dbc": [
        ("bare_point_number", 10, ".1"),
        ("bare_point_number", 11, ".05"),
        ("bare_point_number", 11, "-.5"),
    ],
    "orphan_comments.dbc": [
        ("unknown_comment", 13, "ADAS"),
        ("unknown_comment", 14, "1281"),
        ("unknown_comment", 15, "Checksum"),
    ],
    "mixed_multiplexed.dbc": [
        ("bare_point_number", 13, ".1"),
        ("unknown_comment", 18, "Obsolete"),
        ("unknown_value_table", 21, "LimpHome"),
        ("unknown_value_type", 23, "Phantom"),
    ],
    "charger.kcd": [("overlap", 25, "ChargerTemps")],
    "utf8_comments.dbc": [("encoding", 12, "utf8_comments.dbc")],
    "climate.arxml": [],
    "shifter.sym": [],
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_file_loads_leniently_with_each_quirk_at_its_line(name: str) -> None:
    db, quirks = dbc_files.load(QUIRKS / name, strict=False)
    assert [(q.kind, q.line, q.name) for q in quirks] == EXPECTED[name]
    assert db.messages


def test_every_file_of_the_set_loads() -> None:
    loadable = sorted(EXPECTED)
    assert sorted(p.name for p in QUIRKS.iterdir() if p.name != "broken_beyond_repair.dbc") == (
        loadable
    )
    for name in loadable:
        dbc_files.load(QUIRKS / name, strict=False)


def test_quirks_are_repaired_not_just_tolerated() -> None:
    truck, _ = dbc_files.load(QUIRKS / "truck_j1939.dbc", strict=False)
    et1 = truck.get_message_by_name("ET1")
    assert (et1.frame_id, et1.is_extended_frame) == (0x18FEF100, True)
    # Comments and attributes that referred to the unflagged id still reach the message.
    assert et1.comment == "Engine temperature 1, every second."
    assert et1.cycle_time == 1000
    assert truck.decode_message(0x18FEF100, bytes([90, 60, 0, 0, 0, 0, 0, 0])) == {
        "CoolantTemp": 50,
        "FuelTemp": 20,
    }
    pack, _ = dbc_files.load(QUIRKS / "bare_points.dbc", strict=False)
    current = pack.get_message_by_name("PackStatus").get_signal_by_name("PackCurrent")
    assert (current.scale, current.offset) == (0.05, -0.5)
    # Text inside quotes is never rewritten (".5 A" in the comment stays as written).
    assert current.comment is not None and ".5 A offset" in current.comment
    seat, _ = dbc_files.load(QUIRKS / "utf8_comments.dbc", strict=False)
    level = seat.get_message_by_name("SeatHeating").get_signal_by_name("SeatHeatLevel")
    assert level.comment == "Heizstufe für den Fahrersitz, ÁLVARO's spec"
    lights, _ = dbc_files.load(QUIRKS / "orphan_tables.dbc", strict=False)
    head = lights.get_message_by_name("Lights").get_signal_by_name("HeadLamp")
    assert head.choices is not None and str(head.choices[2]) == "High"


def _config(strict: bool | None) -> str:
    lines = ["vehicle_id: QUIRKS-1", "can:", "  buses:"]
    for index, name in enumerate(sorted(EXPECTED)):
        lines += [
            f"    - name: bus{index}",
            "      interface: virtual",
            f"      channel: quirks-{index}",
            f"      dbc: [{QUIRKS / name}]",
        ]
        if strict is not None:
            lines.append(f"      strict: {'true' if strict else 'false'}")
    lines += [
        "signals:",
        "  - path: Vehicle.Speed",
        "    source: WheelSpeed",
        "  - path: Vehicle.Powertrain.TractionBattery.CurrentVoltage",
        "    source: PackVoltage",
        "  - path: Vehicle.Cabin.HVAC.AmbientAirTemperature",
        "    source: CabinTemp",
        "  - path: Vehicle.Chassis.Axle.Row1.Wheel.Left.Speed",
        "    source: WheelSpeedFL",
    ]
    return "\n".join(lines) + "\n"


def _line_of(text: str, needle: str) -> int:
    return next(n for n, line in enumerate(text.splitlines(), 1) if needle in line)


def _bus_of(name: str) -> int:
    return sorted(EXPECTED).index(name)


def test_lenient_config_loads_with_one_warning_line_per_kind_and_file(
    write_config: Callable[[str], Path],
) -> None:
    text = _config(strict=False)
    path = write_config(text)
    vehicle = dbc.load_vehicle(config.load(path))

    def warning(name: str, message: str) -> str:
        bus = _bus_of(name)
        line = _line_of(text, f"{QUIRKS / name}")
        return f"{path}:{line}: can.buses.{bus}.dbc.0: warning: {name} {message}"

    assert [str(w) for w in vehicle.warnings] == sorted(
        [
            warning(
                "truck_j1939.dbc",
                "line 9: 2 frame ids over 11 bits without the extended flag (EEC1, ET1); "
                "taken as extended",
            ),
            warning(
                "orphan_tables.dbc",
                "line 14: 2 value tables (VAL_) for signals that do not exist "
                "(RearLamp, Wiper); ignored",
            ),
            warning(
                "overlapping.dbc",
                "line 9: The signals WheelSpeedFR_Hi and WheelSpeedFR are overlapping in "
                "message WheelSpeeds; loaded as written",
            ),
            warning(
                "bare_points.dbc",
                "line 10: 3 numbers written without a digit before the point (.1, .05, -.5); "
                "read as 0.x",
            ),
            warning(
                "orphan_comments.dbc",
                "line 13: 3 comments (CM_) on objects that do not exist (ADAS, 1281, Checksum); "
                "ignored",
            ),
            warning(
                "mixed_multiplexed.dbc",
                "line 13: number .1 written without a digit before the point; read as 0.1",
            ),
            warning(
                "mixed_multiplexed.dbc",
                "line 18: comment (CM_) on signal Obsolete of message VcuState; ignored",
            ),
            warning(
                "mixed_multiplexed.dbc",
                "line 21: value table (VAL_) for signal LimpHome of message VcuState; ignored",
            ),
            warning(
                "mixed_multiplexed.dbc",
                "line 23: signal type (SIG_VALTYPE_) for signal Phantom of VcuState; ignored",
            ),
            warning(
                "utf8_comments.dbc",
                "line 12: byte 0x81 is not cp1252 text (DBC's encoding); read as UTF-8",
            ),
            warning(
                "charger.kcd",
                "line 25: The signals HeatsinkTemp and CoolantTemp are overlapping in message "
                "ChargerTemps; loaded as written",
            ),
        ],
        key=lambda line: (int(line.split(":")[1]), line),
    )
    assert all(w.warning for w in vehicle.warnings)
    # Every file's messages are there, the unflagged ids as extended frames.
    truck = vehicle.buses[f"bus{_bus_of('truck_j1939.dbc')}"]
    assert truck.messages[frame_key(0x18FEF100, True)].name == "ET1"
    assert sum(len(bus.messages) for bus in vehicle.buses.values()) == 16
    assert [m.signal.name for m in vehicle.mapped] == [
        "WheelSpeed",
        "PackVoltage",
        "CabinTemp",
        "WheelSpeedFL",
    ]


def test_strict_default_refuses_each_quirk_with_one_clear_line(
    write_config: Callable[[str], Path],
) -> None:
    text = _config(strict=None)  # strict is the default
    path = write_config(text)
    with pytest.raises(ConfigError) as info:
        dbc.load_vehicle(config.load(path))

    def error(name: str, message: str) -> Problem:
        bus = _bus_of(name)
        line = _line_of(text, f"{QUIRKS / name}")
        return Problem(str(path), line, f"can.buses.{bus}.dbc.0", f"{name} {message}")

    problems = [p for p in info.value.problems if p.key.startswith("can.")]
    assert not any(p.warning for p in info.value.problems)
    assert problems == sorted(
        [
            error(
                "truck_j1939.dbc",
                "line 9: 2 frame ids over 11 bits without the extended flag (EEC1, ET1); "
                "set strict: false to load them (taken as extended)",
            ),
            error(
                "orphan_tables.dbc",
                "line 14: 2 value tables (VAL_) for signals that do not exist "
                "(RearLamp, Wiper); set strict: false to load them (ignored)",
            ),
            error(
                "bare_points.dbc",
                "line 10: 3 numbers written without a digit before the point (.1, .05, -.5); "
                "set strict: false to load them (read as 0.x)",
            ),
            error(
                "orphan_comments.dbc",
                "line 13: 3 comments (CM_) on objects that do not exist (ADAS, 1281, Checksum); "
                "set strict: false to load them (ignored)",
            ),
            error(
                "mixed_multiplexed.dbc",
                "line 13: number .1 written without a digit before the point "
                "(set strict: false to load it: read as 0.1)",
            ),
            error(
                "mixed_multiplexed.dbc",
                "line 18: comment (CM_) on signal Obsolete of message VcuState "
                "(set strict: false to load it: ignored)",
            ),
            error(
                "mixed_multiplexed.dbc",
                "line 21: value table (VAL_) for signal LimpHome of message VcuState "
                "(set strict: false to load it: ignored)",
            ),
            error(
                "mixed_multiplexed.dbc",
                "line 23: signal type (SIG_VALTYPE_) for signal Phantom of VcuState "
                "(set strict: false to load it: ignored)",
            ),
            error(
                "utf8_comments.dbc",
                "line 12: byte 0x81 is not cp1252 text (DBC's encoding) "
                "(set strict: false to load it: read as UTF-8)",
            ),
        ]
        + [
            Problem(
                str(path),
                _line_of(text, f"{QUIRKS / name}"),
                f"can.buses.{_bus_of(name)}.dbc.0",
                f"cannot load DBC file {QUIRKS / name}: line {line}: {reason} "
                "(strict: false loads it with a warning)",
            )
            for name, line, reason in [
                (
                    "overlapping.dbc",
                    9,
                    "The signals WheelSpeedFR_Hi and WheelSpeedFR are overlapping in message "
                    "WheelSpeeds.",
                ),
                (
                    "charger.kcd",
                    25,
                    "The signals HeatsinkTemp and CoolantTemp are overlapping in message "
                    "ChargerTemps.",
                ),
            ]
        ]
    )


def test_a_file_that_cannot_load_even_leniently_is_one_line_with_its_line(
    write_config: Callable[[str], Path],
) -> None:
    broken = QUIRKS / "broken_beyond_repair.dbc"
    text = _config(strict=False).replace(str(QUIRKS / "shifter.sym"), str(broken))
    path = write_config(text)
    with pytest.raises(ConfigError) as info:
        dbc.load_vehicle(config.load(path))
    errors = [str(p) for p in info.value.problems if not p.warning]
    assert errors == [
        f"{path}:{_line_of(text, str(broken))}: can.buses.{_bus_of('shifter.sym')}.dbc.0: "
        f"cannot load DBC file {broken}: line 10: invalid syntax at column 25 (marked >>!<<): "
        'SG_ Half : 0|8@1+ (1,0 >>!<<[0|1] "" X'
    ]


def test_check_config_prints_warnings_and_ok(write_config: Callable[[str], Path]) -> None:
    path = write_config(_config(strict=False))
    done = subprocess.run(
        [sys.executable, "-m", "agent", "check-config", "-c", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (done.returncode, done.stdout) == (0, "OK\n")
    lines = done.stderr.splitlines()
    assert len(lines) == 11
    assert all(f"{path}:" in line and ": warning: " in line for line in lines), lines


def test_replay_decodes_a_lenient_file_and_shows_its_warnings(
    write_config: Callable[[str], Path], tmp_path: Path
) -> None:
    text = _config(strict=False)
    path = write_config(text)
    log = tmp_path / "truck.log"
    channel = f"quirks-{_bus_of('truck_j1939.dbc')}"
    with can.Logger(str(log)) as writer:
        # CCVS: 29-bit id 0x0cf004fe, WheelSpeed 0x1900 / 256 = 25 km/h.
        writer.on_message_received(
            can.Message(
                timestamp=5.0,
                arbitration_id=0x0CF004FE,
                is_extended_id=True,
                data=bytes([0, 0x00, 0x19, 0, 0, 0, 0, 0]),
                channel=channel,
            )
        )
    done = subprocess.run(
        [sys.executable, "-m", "agent", "replay", "-c", str(path), str(log)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == '{"ts": 5.0, "path": "Vehicle.Speed", "value": 25.0}\n'
    warnings = [line for line in done.stderr.splitlines() if ": warning: " in line]
    assert len(warnings) == 11
    quiet = subprocess.run(
        [sys.executable, "-m", "agent", "replay", "-q", "-c", str(path), str(log)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (quiet.returncode, quiet.stderr) == (0, "")


@pytest.mark.parametrize("name", ["ev_powertrain.dbc", "ev_body.dbc"])
def test_clean_files_pass_through_untouched(name: str) -> None:
    text = (DBC_DIR / name).read_text(encoding="cp1252")
    assert dbc_files.normalise_dbc(text) == (text, [])


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                "BO_ 419361024 ET1: 8 EMS",
                ' SG_ Temp : 0|8@1+ (.5,-.25) [0|1] "" X',
                'CM_ SG_ 419361024 Gone "a ".5" comment\nover two lines";',
                'VAL_ 419361024 Nope 0 "A" 1 "B" ;',
                'VAL_ 419361024 Temp 0 "Cold" ;',
                "SIG_VALTYPE_ 5 Ghost : 1;",
                'CM_ BU_ Nobody "x";',
                "",
                "BO_ 5 Short: 1 X",
            ]
        ),
        max_size=12,
    )
)
def test_normalising_keeps_every_line_where_it_was(lines: list[str]) -> None:
    text = "\n".join(lines) + "\n"
    fixed, quirks = dbc_files.normalise_dbc(text)
    assert fixed.count("\n") == text.count("\n")
    assert all(1 <= q.line <= text.count("\n") for q in quirks)
