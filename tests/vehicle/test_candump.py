"""vehicle/candump.py reads candump text logs into the same frames as python-can's
CanutilsLogReader: every field python-can sets, over generated and hand-written lines of every
shape it accepts, and the same exception on the first line it refuses, after the same frames."""

from __future__ import annotations

import random
import tempfile
from pathlib import Path
from typing import Any

import can
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.vehicle import candump
from agent.vehicle.candump import CandumpReader

FIELDS = (
    "timestamp",
    "arbitration_id",
    "is_extended_id",
    "is_remote_frame",
    "is_error_frame",
    "channel",
    "dlc",
    "data",
    "is_fd",
    "is_rx",
    "bitrate_switch",
    "error_state_indicator",
)


def _fields(frame: Any) -> tuple[Any, ...]:
    """A frame's fields with their types (data as bytes: python-can keeps a bytearray; the
    timestamp by its repr, which tells every float apart, NaN and -0.0 included)."""
    values = []
    for name in FIELDS:
        value = getattr(frame, name)
        if name == "data":
            value = bytes(value)
        values.append((type(value).__name__, value) if name != "timestamp" else repr(value))
    return tuple(values)


def _python_can(path: Path) -> tuple[list[tuple[Any, ...]], str | None]:
    frames = []
    error = None
    with can.LogReader(str(path)) as reader:
        try:
            for message in reader:
                frames.append(_fields(message))
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
    return frames, error


def _ours(path: Path) -> tuple[list[tuple[Any, ...]], str | None]:
    frames = []
    error = None
    with CandumpReader(path) as reader:
        try:
            for frame in reader:
                frames.append(_fields(frame))
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
    return frames, error


def _same_as_python_can(path: Path) -> list[tuple[Any, ...]]:
    want = _python_can(path)
    got = _ours(path)
    assert got[1] == want[1]
    assert len(got[0]) == len(want[0])
    for index, (g, w) in enumerate(zip(got[0], want[0], strict=True)):
        assert g == w, f"frame {index}"
    return got[0]


def _varied_lines(rng: random.Random, count: int) -> list[str]:
    """candump lines of every shape python-can reads, the way candump -L and python-can's
    own writer write them and a few ways they do not."""
    lines = []
    ts = 1_700_000_000.0
    for _ in range(count):
        ts += rng.random() / 100
        stamp = rng.choice((f"{ts:.6f}", f"{ts:.3f}", f"{ts - 1_700_000_000:.6f}", "0.0"))
        channel = rng.choice(("can0", "vcan1", "demo-powertrain", "0", "12", "can_fd.1"))
        extended = rng.random() < 0.3
        can_id = rng.randrange(1 << 29) if extended else rng.randrange(1 << 11)
        ident = f"{can_id:08X}" if extended else f"{can_id:03X}"
        if rng.random() < 0.1:
            ident = ident.lower()
        shape = rng.random()
        if shape < 0.15:  # CAN FD, every flag combination, up to 64 bytes
            data = rng.randbytes(rng.choice((0, 1, 8, 12, 16, 20, 24, 32, 48, 64)))
            frame = f"{ident}##{rng.randrange(4)}{data.hex().upper()}"
        elif shape < 0.2:  # remote, with and without a length
            frame = f"{ident}#{rng.choice(('R', 'r', 'R0', 'R8', 'R15'))}"
        elif shape < 0.23:  # an error frame, as candump and python-can write it
            frame = f"{0x20000080 | rng.randrange(0x100):08X}#{rng.randbytes(8).hex().upper()}"
        elif shape < 0.25:  # the error flag without the bus-error bit: a data frame
            frame = f"20000001#{rng.randbytes(8).hex()}"
        else:
            data = rng.randbytes(rng.randrange(9))
            text = data.hex()
            frame = f"{ident}#{text.upper() if rng.random() < 0.8 else text}"
        line = f"({stamp}) {channel} {frame}"
        tail = rng.random()
        if tail < 0.1:
            line += rng.choice((" R", " T", " r", " t"))
        elif tail < 0.13:
            line = rng.choice(("  ", "\t")) + line + rng.choice((" ", "\t", "  "))
        elif tail < 0.15:
            line = line.replace(" ", "\t", 1)
        lines.append(line)
        if rng.random() < 0.02:
            lines.append(rng.choice(("", "   ", "\t")))
    return lines


def test_varied_log_gives_python_cans_frames(tmp_path: Path) -> None:
    log = tmp_path / "varied.log"
    log.write_text("\n".join(_varied_lines(random.Random(14), 5000)) + "\n")
    frames = _same_as_python_can(log)
    assert len(frames) == 5000
    # The log holds every kind of frame (the comparison is not vacuous).
    by = {name: [f[i] for f in frames] for i, name in enumerate(FIELDS)}
    assert {("bool", True), ("bool", False)} <= set(by["is_fd"])
    assert ("bool", True) in by["bitrate_switch"] and ("bool", True) in by["error_state_indicator"]
    assert ("bool", True) in by["is_remote_frame"] and ("bool", True) in by["is_error_frame"]
    assert ("bool", False) in by["is_rx"]
    assert ("int", 0) in by["channel"] and ("str", "can0") in by["channel"]
    assert ("NoneType", None) in by["channel"]  # error frames carry no channel in python-can
    assert ("int", 15) in by["dlc"]  # a remote frame's length
    assert ("bytes", bytes(64)) not in by["data"] and max(len(d[1]) for d in by["data"]) == 64


def test_blocks_split_lines_anywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Lines cut by the block size, CRLF and CR line ends, no newline at the end; ids past
    the reader's cache of id texts."""
    monkeypatch.setattr(candump, "BLOCK_CHARS", 37)
    monkeypatch.setattr(candump, "IDS_CACHED", 3)
    lines = _varied_lines(random.Random(3), 400)
    log = tmp_path / "crlf.log"
    log.write_bytes(("\r\n".join(lines[:200]) + "\r" + "\n".join(lines[200:])).encode())
    assert len(_same_as_python_can(log)) == 400


def test_exactly_python_cans_frames_for_odd_lines(tmp_path: Path) -> None:
    """Lines off the common shape that python-can still reads: each as python-can has it."""
    lines = [
        "(1.5) can0 123#ABC",  # odd digit count: the last digit is a byte of its own
        "(1.5) can0 123#",  # no data
        "(1.5) can0 1#01",  # a one-digit id is standard, a four-digit one extended
        "(1.5) can0 0123#01",
        "(1.5) can0 300000123#01",  # more than 29 bits: cut to 29
        "(1.5) can0 123##9AA",  # FD flags beyond BRS and ESI: python-can keeps the two bits
        "(1.5) can0 123##1",  # FD, no data
        "(1.5) can0 123##1R",  # an FD remote frame
        "(1.5) can0 123#R3 T",
        "(1.50) x 123#aB",
        "(-2.25) can0 123#01",
        "(1e3) can0 123#01",
        "[1.5] can0 123#01",  # python-can cuts the first and last character, whatever they are
        "(nan) can0 123#01",
        "(1.5)\tcan0\t123#01",
        "(1.5)\xa0can0\u2003123#01",  # str.split() splits on Unicode spaces too
        "(1.5) \u0661\u0662 123#01",  # Arabic-Indic digits: isdigit(), so channel 12
        "(1.5) can0 123#01 X",  # 4 fields not ending in R/T: the 3-field split fails below
        "(1.5) can0 +1F#01",
        "(1.5) can0 123#+1",
        "(1.5) can0 123#0x",
    ]
    # The last three: what int() accepts python-can accepts ("+1F", "+1"); "0x" is refused.
    good = lines[:17] + lines[18:20]
    log = tmp_path / "odd.log"
    log.write_text("\n".join(good) + "\n")
    frames = _same_as_python_can(log)
    assert len(frames) == len(good)
    assert frames[0][FIELDS.index("data")] == ("bytes", b"\xab\x0c")
    assert frames[0][FIELDS.index("dlc")] == ("int", 1)
    assert frames[4][FIELDS.index("arbitration_id")] == ("int", 0x123)
    assert frames[5][FIELDS.index("bitrate_switch")] == ("bool", True)
    assert frames[5][FIELDS.index("error_state_indicator")] == ("bool", False)
    assert frames[12][FIELDS.index("timestamp")] == "1.5"
    assert frames[16][FIELDS.index("channel")] == ("int", 12)
    for bad in (lines[17], lines[20]):
        log.write_text("(1.0) can0 100#00\n" + bad + "\n(2.0) can0 100#00\n")
        frames = _same_as_python_can(log)  # the same exception after the same frame
        assert len(frames) == 1


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ("(1.0) can0", "ValueError"),
        ("(1.0) can0 123#00 R extra", "ValueError"),
        ("(x) can0 123#00", "ValueError"),
        ("(1.0) can0 123", "ValueError"),
        ("(1.0) can0 12G#00", "ValueError"),
        ("(1.0) can0 123##", "IndexError"),
        ("(1.0) can0 123##X00", "ValueError"),
        ("(1.0) can0 123#Rx", "ValueError"),
        ("(1.0) can0 123#0G", "ValueError"),
        ("(1.0) can0 123#-1", "ValueError"),
    ],
)
def test_a_line_python_can_refuses_raises_the_same(tmp_path: Path, line: str, error: str) -> None:
    log = tmp_path / "bad.log"
    log.write_text(f"(0.5) can0 100#00\n(0.6) can0 100#01\n{line}\n(2.0) can0 100#00\n")
    frames, ours = _ours(log)
    _, theirs = _python_can(log)
    assert ours == theirs and ours is not None and ours.startswith(error + ":")
    assert len(frames) == 2


def test_blocks_give_the_frames_before_a_bad_line_first(tmp_path: Path) -> None:
    log = tmp_path / "bad.log"
    log.write_text("(0.5) can0 100#00\n" * 10 + "garbage\n" + "(0.6) can0 100#00\n")
    reader = CandumpReader(log)
    blocks = reader.blocks()
    assert len(next(blocks)) == 10
    with pytest.raises(ValueError, match="not enough values to unpack"):
        next(blocks)
    reader.stop()


hex_text = st.text(alphabet="0123456789abcdefABCDEF", max_size=20)
junk = st.text(alphabet="0123456789abcdefRrTt#() .-x\t", max_size=30)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.builds(
                lambda ts, ch, ident, fd, data, tail: f"({ts}) {ch} {ident}#{fd}{data}{tail}",
                st.sampled_from(["1.0", "1700000000.123456", "0.5", "12"]),
                st.sampled_from(["can0", "0", "vcan-1"]),
                hex_text.filter(bool),
                st.sampled_from(["", "#0", "#1", "#3", "#"]),
                hex_text | st.sampled_from(["R", "r2", "R15"]),
                st.sampled_from(["", " R", " T", " ", " x"]),
            ),
            junk,
        ),
        max_size=12,
    )
)
def test_any_lines_give_python_cans_frames_or_error(lines: list[str]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        log = Path(folder) / "any.log"
        log.write_text("\n".join(lines) + "\n")
        _same_as_python_can(log)


def test_position_follows_the_file(tmp_path: Path) -> None:
    log = tmp_path / "p.log"
    log.write_text("(0.5) can0 100#00\n" * 1000)
    reader = CandumpReader(log)
    assert reader.position() == 0
    frames = sum(len(block) for block in reader.blocks())
    assert frames == 1000
    assert reader.position() is None  # read to the end: closed, as python-can closes it
