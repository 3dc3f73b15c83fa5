"""check-config's output stays one line per problem: repeats across one DBC collapse into a
line with a count and the first names, a DBC that fails to load hides its follow-on problems,
a signal on the wrong bus says which bus has it, and YAML slips are told in plain words."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

RADAR_DBC = """\
VERSION ""

NS_ :

BS_:

BU_: R

BO_ 1792 RadarTrack: 8 R
 SG_ TrackRange : 0|16@1+ (0.01,0) [0|655.35] "m" Vector__XXX
"""


# Real VSS paths (speeds, km/h like the test DBCs' signals), so that checks against the VSS
# catalog add nothing to the exact output these tests expect.
SPEEDS = [
    "Vehicle.Speed",
    *(
        f"Vehicle.Chassis.Axle.Row{row}.Wheel.{side}.Speed"
        for row in (1, 2)
        for side in ("Left", "Right")
    ),
]


def _fd_dbc(count: int) -> str:
    """A DBC with `count` CAN FD messages (VFrameFormat 14 = StandardCAN_FD)."""
    lines = ['VERSION ""', "", "NS_ :", "", "BS_:", "", "BU_: BMS", ""]
    for i in range(count):
        lines += [f"BO_ {0x100 + i} FdMsg{i:03d}: 64 BMS"]
        lines += [f' SG_ Value{i:03d} : 0|16@1+ (1,0) [0|65535] "km/h" Vector__XXX', ""]
    formats = ",".join(['"StandardCAN"', '"ExtendedCAN"'] + ['"reserved"'] * 12)
    lines.append(f'BA_DEF_ BO_ "VFrameFormat" ENUM {formats},"StandardCAN_FD","ExtendedCAN_FD";')
    lines.append('BA_DEF_DEF_ "VFrameFormat" "StandardCAN";')
    lines += [f'BA_ "VFrameFormat" BO_ {0x100 + i} 14;' for i in range(count)]
    return "\n".join(lines) + "\n"


def _check(path: Path) -> tuple[int, str, list[str]]:
    done = subprocess.run(
        [sys.executable, "-m", "agent", "check-config", "-c", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.returncode, done.stdout, done.stderr.splitlines()


def _bus(name: str, dbc: str, fd: bool = False) -> str:
    lines = f"    - name: {name}\n      interface: virtual\n      channel: {name}\n"
    return lines + ("      fd: true\n" if fd else "") + f"      dbc: [{dbc}]\n"


def test_many_fd_messages_on_a_classic_bus_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "fd331.dbc").write_text(_fd_dbc(331))
    path = tmp_path / "car.yaml"
    path.write_text(
        "vehicle_id: FLOOD\ncan:\n  buses:\n"
        + _bus("pt", "fd331.dbc")
        + "signals:\n  - path: Vehicle.Speed\n    source: Value000\n"
    )
    assert _check(path) == (
        2,
        "",
        [
            f"{path}:4: can.buses.0.fd: 331 messages in fd331.dbc are CAN FD frames "
            "(FdMsg000, FdMsg001, FdMsg002 and 328 more); set fd: true"
        ],
    )


def test_a_dbc_that_fails_to_load_hides_the_no_such_signal_cascade(tmp_path: Path) -> None:
    signals = "".join(
        f"  - path: {path}\n    source: Value{i:03d}\n    bus: pt\n"
        for i, path in enumerate(SPEEDS)
    )
    path = tmp_path / "car.yaml"
    path.write_text(
        "vehicle_id: FLOOD\ncan:\n  buses:\n"
        + _bus("pt", "nowhere.dbc", fd=True)
        + "signals:\n"
        + signals
    )
    assert _check(path) == (
        2,
        "",
        [f"{path}:8: can.buses.0.dbc.0: DBC file not found: {tmp_path / 'nowhere.dbc'}"],
    )


def test_a_cascade_is_hidden_only_for_the_failed_bus(tmp_path: Path) -> None:
    (tmp_path / "radar.dbc").write_text(RADAR_DBC)
    path = tmp_path / "car.yaml"
    path.write_text(
        "vehicle_id: FLOOD\ncan:\n  buses:\n"
        + _bus("pt", "nowhere.dbc")
        + _bus("radar", "radar.dbc")
        + "signals:\n"
        + f"  - path: {SPEEDS[0]}\n    source: Value001\n    bus: pt\n"
        + f"  - path: {SPEEDS[1]}\n    source: TrackRang\n    bus: radar\n"
    )
    assert _check(path) == (
        2,
        "",
        [
            f"{path}:7: can.buses.0.dbc.0: DBC file not found: {tmp_path / 'nowhere.dbc'}",
            f"{path}:17: signals.1.source: no DBC signal 'TrackRang' on bus 'radar' "
            "(did you mean 'TrackRange'?)",
        ],
    )


def test_a_signal_on_the_wrong_bus_says_which_bus_has_it(tmp_path: Path) -> None:
    (tmp_path / "radar.dbc").write_text(RADAR_DBC)
    (tmp_path / "pt.dbc").write_text(_fd_dbc(8))
    path = tmp_path / "car.yaml"
    path.write_text(
        "vehicle_id: FLOOD\ncan:\n  buses:\n"
        + _bus("pt", "pt.dbc", fd=True)
        + _bus("radar", "radar.dbc")
        + "signals:\n  - path: Vehicle.Speed\n    source: Value007\n    bus: radar\n"
    )
    assert _check(path) == (
        2,
        "",
        [f"{path}:16: signals.0.bus: 'Value007' is on bus 'pt', not 'radar'"],
    )


INDENTED = (
    "this line is indented differently from the lines above it "
    "(keys of one mapping, and the dashes of one list, start in the same column)"
)


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        # PyYAML: "expected <block end>, but found '?'"
        (
            "vehicle_id: X\nsignals:\n  - path: A.B\n    source: S\n  bus: radar\n",
            5,
            INDENTED,
        ),
        # PyYAML: "expected <block end>, but found '<block mapping start>'"
        (
            "vehicle_id: X\nsignals:\n  - path: A.B\n    source: S\n   bus: radar\n",
            5,
            INDENTED,
        ),
        # PyYAML: "mapping values are not allowed here"
        (
            "vehicle_id: X\nsignals:\n  - path: A.B\n      source: S\n",
            4,
            "unexpected ':' here: this line may be indented deeper than the key above it, "
            "or a value containing ': ' needs quotes",
        ),
        # PyYAML: "found character '\\t' that cannot start any token"
        (
            "vehicle_id: X\nsignals:\n\t- path: A.B\n",
            3,
            "a tab character: YAML indents with spaces only",
        ),
        # PyYAML: "expected ',' or ']', but got '<stream end>'"
        (
            "vehicle_id: X\ncan: [1, 2\nsignals: []\n",
            2,
            "the '[' opened on this line is not closed",
        ),
        # PyYAML: "found unexpected end of stream" (while scanning a quoted scalar)
        ('vehicle_id: "X\nsignals: []\n', 1, "the quote opened on this line is not closed"),
    ],
)
def test_yaml_syntax_errors_in_plain_words(
    tmp_path: Path, text: str, line: int, message: str
) -> None:
    path = tmp_path / "car.yaml"
    path.write_text(text)
    assert _check(path) == (2, "", [f"{path}:{line}: (document): YAML syntax error: {message}"])


def test_frame_ids_defined_twice_are_one_line_per_pair_of_files(tmp_path: Path) -> None:
    (tmp_path / "a.dbc").write_text(_fd_dbc(8))
    (tmp_path / "b.dbc").write_text(_fd_dbc(8).replace("FdMsg", "Copy"))
    (tmp_path / "c.dbc").write_text(_fd_dbc(1).replace("FdMsg", "Once"))
    path = tmp_path / "car.yaml"
    path.write_text(
        "vehicle_id: FLOOD\ncan:\n  buses:\n"
        + _bus("pt", "a.dbc, b.dbc, c.dbc", fd=True)
        + "signals:\n  - path: Vehicle.Speed\n    source: FdMsg000.Value000\n"
    )
    assert _check(path) == (
        2,
        "",
        [
            f"{path}:8: can.buses.0.dbc.1: 8 frame ids are already defined in a.dbc "
            "(0x100 Copy000, 0x101 Copy001, 0x102 Copy002 and 5 more)",
            f"{path}:8: can.buses.0.dbc.2: frame id 0x100 (Once000) is already defined "
            "as FdMsg000 in a.dbc",
        ],
    )
