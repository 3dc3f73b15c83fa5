"""Replay gives the same bytes whichever reader reads a candump log: vehicle/candump.py (the
default for `.log`) or python-can's LogReader (every other format, and `candump_reader=False`).

The log is the simulator's recording of the demo car (two buses routed by channel, a CAN FD
frame, a 29-bit frame, a multiplexed frame, a computed path) with lines of every other shape
mixed in: remote and error frames, unknown ids, short and padded frames, an unknown channel,
lower-case hex, odd digit counts, tabs, blank lines."""

from __future__ import annotations

import io
import json
import math
import random
from pathlib import Path
from typing import Any

import can
import cantools
import pytest

from agent import config
from agent.errors import AgentError
from agent.sim.runner import record
from agent.sim.scenario import load_scenario
from agent.vehicle import candump, dbc
from agent.vehicle.model import Sample
from agent.vehicle.replay import ReplaySummary, _LineEncoder, replay
from tests.support.configs import DBC_DIR, demo_text
from tests.vehicle.test_replay import _same, _transform


def _mixed_lines(lines: list[str], rng: random.Random) -> list[str]:
    out = []
    for line in lines:
        out.append(line)
        ts = line.split(")")[0] + ")"
        roll = rng.random()
        if roll < 0.01:
            out.append(f"{ts} demo-powertrain 100#R")  # remote BMS_Status
        elif roll < 0.02:
            out.append(f"{ts} demo-body 20000080#0000000000000000")  # error frame
        elif roll < 0.03:
            out.append(f"{ts} demo-body 7AB#0102 R")  # unknown id
        elif roll < 0.04:
            out.append(f"{ts} demo-powertrain 100#0102")  # short BMS_Status
        elif roll < 0.05:
            data = rng.randbytes(48).hex()  # BMS_CellStats padded to 48 bytes, lower case
            out.append(f"{ts} demo-powertrain 3C0##1{data}")
        elif roll < 0.06:
            out.append(f"{ts} other-bus 280#{rng.randbytes(8).hex().upper()}")  # routed by id
        elif roll < 0.07:
            out.append(f"{ts}\tdemo-body\t280#{rng.randbytes(8).hex().upper()}")  # tabs
        elif roll < 0.075:
            out.append(f"{ts} demo-body 280#{rng.randbytes(8).hex().upper()}A")  # odd digits
        elif roll < 0.08:
            out.append("")
    return out


@pytest.fixture(scope="module")
def drive(tmp_path_factory: pytest.TempPathFactory) -> tuple[dbc.Vehicle, Path]:
    folder = tmp_path_factory.mktemp("readers")
    cfg = folder / "demo.yaml"
    cfg.write_text(demo_text())
    vehicle = dbc.load_vehicle(config.load(cfg))
    clean = folder / "clean.log"
    record(vehicle, load_scenario("driving"), clean, duration_s=40, start_ts=1.7e9)
    log = folder / "drive.log"
    lines = _mixed_lines(clean.read_text().splitlines(), random.Random(14))
    log.write_text("\n".join(lines) + "\n")
    return vehicle, log


def _run(
    vehicle: dbc.Vehicle, log: Path, *, candump_reader: bool, every_frame: bool = True
) -> tuple[str, ReplaySummary]:
    out = io.StringIO()
    summary = replay(
        vehicle, log, out, every_frame=every_frame, candump_reader=candump_reader, progress=None
    )
    return out.getvalue(), summary


def _counts(summary: ReplaySummary) -> dict[str, Any]:
    return {
        "frames": summary.frames,
        "samples": summary.samples_written,
        "span": summary.log_span_s,
        "buses": {name: stats.as_dict() for name, stats in summary.by_bus.items()},
        "computed": (summary.computed.computed, summary.computed.out_of_range),
    }


@pytest.mark.parametrize("every_frame", [True, False])
def test_both_readers_give_the_same_bytes(
    drive: tuple[dbc.Vehicle, Path], every_frame: bool
) -> None:
    vehicle, log = drive
    fast, fast_summary = _run(vehicle, log, candump_reader=True, every_frame=every_frame)
    slow, slow_summary = _run(vehicle, log, candump_reader=False, every_frame=every_frame)
    assert fast == slow
    assert _counts(fast_summary) == _counts(slow_summary)
    # The mixed-in lines were met: every bucket counted something, routing found both buses.
    frames = sum(1 for _ in can.LogReader(str(log)))
    assert fast_summary.frames == frames
    assert fast_summary.total("remote_frames") > 0 and fast_summary.total("error_frames") > 0
    assert fast_summary.total("unknown_id") > 0 and fast_summary.total("short") > 0
    assert all(stats.decoded > 100 for stats in fast_summary.by_bus.values())
    assert fast_summary.computed.computed > 0
    assert fast.count("\n") == fast_summary.samples_written > 0
    if every_frame:
        assert (
            fast_summary.total("decoded")
            + fast_summary.total("unknown_id")
            + (
                fast_summary.total("short")
                + fast_summary.total("error_frames")
                + fast_summary.total("remote_frames")
                + fast_summary.total("failed")
            )
            == frames
        )


def test_replay_matches_an_independent_cantools_decode(drive: tuple[dbc.Vehicle, Path]) -> None:
    """The candump reader's samples: every mapped signal of every decodable frame, by cantools
    and the configured transform (the helpers of test_replay.py)."""
    vehicle, log = drive
    text, _ = _run(vehicle, log, candump_reader=True)
    settings = vehicle.loaded.settings
    computed = {s.path for s in settings.signals if s.compute is not None}
    got = [
        (s["ts"], s["path"], s["value"])
        for s in map(json.loads, text.splitlines())
        if s["path"] not in computed
    ]
    assert len(got) > 1000
    dbs = {
        "demo-powertrain": cantools.database.load_file(DBC_DIR / "ev_powertrain.dbc"),
        "demo-body": cantools.database.load_file(DBC_DIR / "ev_body.dbc"),
    }
    by_signal: dict[str, list[str]] = {}
    for sig in settings.signals:
        if sig.source is not None:
            by_signal.setdefault(sig.source.rpartition(".")[2], []).append(sig.path)
    want: list[tuple[float, str, Any]] = []
    with can.LogReader(str(log)) as reader:
        for msg in reader:
            if msg.is_error_frame or msg.is_remote_frame:
                continue
            db = dbs.get(str(msg.channel))
            if db is None:  # a channel no bus has: the bus whose DBC has the id
                db = next(d for d in dbs.values() if msg.arbitration_id in _ids(d))
            if msg.arbitration_id not in _ids(db):
                continue
            message = db.get_message_by_frame_id(msg.arbitration_id)
            if len(msg.data) < message.length:
                continue
            data = bytes(msg.data[: message.length])
            named = message.decode(data, decode_choices=True)
            raw = message.decode(data, decode_choices=False, scaling=False)
            for name, value in named.items():
                for path in by_signal.get(name, []):
                    result = _transform(settings, path, value, raw[name])
                    if result is KeyError or (isinstance(result, float) and math.isnan(result)):
                        continue
                    want.append((msg.timestamp, path, result))
    _same(got, want)


def _ids(db: Any) -> set[int]:
    return {m.frame_id for m in db.messages}


def test_an_unreadable_line_is_the_same_error_after_the_same_output(
    drive: tuple[dbc.Vehicle, Path], tmp_path: Path
) -> None:
    vehicle, log = drive
    lines = log.read_text().splitlines()
    half = len(lines) // 2
    bad = tmp_path / "bad.log"
    bad.write_text("\n".join([*lines[:half], "(1700000040.0) demo-body 280#00 R x", *lines]))
    frames_before = sum(1 for line in lines[:half] if line.strip())
    assert frames_before > 500
    results = []
    for candump_reader in (True, False):
        out = io.StringIO()
        with pytest.raises(AgentError) as caught:
            replay(vehicle, bad, out, every_frame=True, candump_reader=candump_reader)
        results.append((str(caught.value), out.getvalue()))
    assert results[0] == results[1]
    message, written = results[0]
    assert message == (
        f"{bad}: unreadable after {frames_before} frames: too many values to unpack (expected 3)"
    )
    assert written.count("\n") > 500  # what was decoded before the line was written


@pytest.mark.parametrize(
    "value",
    [
        12.6,
        0.1 + 0.2,
        1e16,
        1e-7,
        -0.0,
        123456789.125,
        math.inf,
        -math.inf,
        math.nan,
        0,
        -3,
        2**70,
        True,
        False,
        "ON",
        'a "quoted" \\ name',
        "caf\u00e9 \u2603",
        "",
    ],
)
def test_line_encoder_writes_what_json_dumps_writes(value: Any) -> None:
    """The encoder against the formula replay used before (json.dumps per field)."""
    paths = ["Vehicle.Speed", 'Vehicle.Odd"Path']
    encoder = _LineEncoder(paths)
    samples = [Sample(path, ts, value) for ts in (1.7e9, 1700000000.000001, -0.0) for path in paths]
    want = "".join(
        f'{{"ts": {s.ts!r}, "path": {json.dumps(s.path)}, "value": {json.dumps(s.value)}}}\n'
        for s in samples
    )
    assert encoder.lines(samples) == want
    assert encoder.lines(samples) == want  # strings come from the cache the second time


def test_bytes_the_encoding_refuses_are_an_error_after_about_the_same_frames(
    drive: tuple[dbc.Vehicle, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """python-can fails on the 8 KB the text layer decodes around the byte; the candump
    reader reads that block again line by line: the same error, after the same frames when
    the block starts the file, and after a few fewer (within 8 KB of lines) otherwise."""
    vehicle, _ = drive
    good = b"(1.0) demo-body 280#0011223344556677 R\n"
    bad = tmp_path / "undecodable.log"
    bad.write_bytes(good * 3000 + b"(1.0) demo-body 280#00\xff\n" + good * 10)

    def error(candump_reader: bool) -> tuple[str, int]:
        with pytest.raises(AgentError) as caught:
            replay(vehicle, bad, io.StringIO(), every_frame=True, candump_reader=candump_reader)
        text = str(caught.value)
        assert text.startswith(f"{bad}: unreadable after ")
        assert "codec can't decode byte 0xff" in text
        return text, int(text.split("unreadable after ")[1].split()[0])

    theirs, their_count = error(False)
    assert 2000 < their_count <= 3000
    assert error(True) == (theirs, their_count)
    monkeypatch.setattr(candump, "BLOCK_CHARS", 5000)  # the byte in a later block
    _, count = error(True)
    assert their_count - 8192 // len(good) <= count <= their_count
