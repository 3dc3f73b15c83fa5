"""`vehicle-agent replay` of a simulator recording agrees with an independent cantools decode."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import can
import cantools
import pytest

from agent import config
from agent.config import Settings
from agent.vehicle.catalog import builtin
from tests.support.configs import DBC_DIR, demo_text

SCENARIO = """\
mode: driving
initial: {soc: 45.0, cabin_temp: 29.0, exterior_temp: 27.0}
tyre_leak_bar_per_h: {rear_right: 3.0}
events:
  - {at_s: 40, mode: parked}
  - {at_s: 45, set: {climate_on: true, target_temp: 20.0, fan_level: 5}}
  - {at_s: 55, mode: plugged_in}
  - {at_s: 70, set: {charge_limit: 50}}
"""


def _agent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args], capture_output=True, text=True, check=False
    )


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """90 simulated seconds of the simulator, as a candump log, and the config that made it."""
    folder = tmp_path_factory.mktemp("replay")
    cfg = folder / "demo.yaml"
    cfg.write_text(demo_text())
    (folder / "scenario.yaml").write_text(SCENARIO)
    log = folder / "drive.log"
    result = _agent(
        "simulate",
        "-c",
        str(cfg),
        "--scenario",
        "scenario.yaml",
        "--duration",
        "90",
        "--record",
        str(log),
    )
    assert result.returncode == 0, result.stderr
    return cfg, log


def _transform(settings: Settings, path: str, value: Any, raw: int | float) -> Any:
    """The configured transform applied by hand, in the path's VSS datatype, for comparison."""
    result = _by_hand(settings, path, value, raw)
    leaf = builtin().get(path)
    assert leaf is not None, path
    if result is KeyError or isinstance(result, bool | str):
        return result
    return round(result) if leaf.kind == "integer" else float(result)


def _by_hand(settings: Settings, path: str, value: Any, raw: int | float) -> Any:
    sig = next(s for s in settings.signals if s.path == path)
    if sig.transform is None:
        return (
            str(value)
            if isinstance(value, cantools.database.namedsignalvalue.NamedSignalValue)
            else value
        )
    if sig.transform.linear is not None:
        return value * sig.transform.linear.scale + sig.transform.linear.offset
    table = sig.transform.map or {}
    if raw in table:
        return table[raw]
    return table.get(str(value), KeyError)


def _independent(cfg: Path, log: Path) -> list[tuple[float, str, Any]]:
    """Every mapped signal of every frame, decoded by cantools and transformed by hand."""
    settings = config.load(cfg).settings
    dbs = {
        "pt": cantools.database.load_file(DBC_DIR / "ev_powertrain.dbc"),
        "body": cantools.database.load_file(DBC_DIR / "ev_body.dbc"),
    }
    by_signal: dict[str, list[str]] = {}
    for sig in settings.signals:
        if sig.source is not None:  # computed paths are checked in test_compute
            by_signal.setdefault(sig.source.rpartition(".")[2], []).append(sig.path)
    out: list[tuple[float, str, Any]] = []
    with can.LogReader(str(log)) as reader:
        for msg in reader:
            db = dbs["pt" if msg.channel == "demo-powertrain" else "body"]
            message = db.get_message_by_frame_id(msg.arbitration_id)
            named = message.decode(bytes(msg.data), decode_choices=True)
            raw = message.decode(bytes(msg.data), decode_choices=False, scaling=False)
            for name, value in named.items():
                for path in by_signal.get(name, []):
                    result = _transform(settings, path, value, raw[name])
                    if result is not KeyError:
                        out.append((msg.timestamp, path, result))
    return out


def _read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _same(got: list[tuple[float, str, Any]], want: list[tuple[float, str, Any]]) -> None:
    assert len(got) == len(want)
    for (g_ts, g_path, g_value), (w_ts, w_path, w_value) in zip(
        sorted(got, key=lambda x: (x[0], x[1])),
        sorted(want, key=lambda x: (x[0], x[1])),
        strict=True,
    ):
        assert g_path == w_path
        assert g_ts == pytest.approx(w_ts, abs=1e-6)
        if isinstance(w_value, float):
            assert g_value == pytest.approx(w_value, rel=1e-9, abs=1e-9), g_path
        else:
            assert g_value == w_value and type(g_value) is type(w_value), g_path


def test_every_frame_replay_matches_cantools(recording: tuple[Path, Path], tmp_path: Path) -> None:
    """--every-frame: each mapped signal of each frame, values equal to cantools + transform."""
    cfg, log = recording
    frames = sum(1 for _ in can.LogReader(str(log)))
    assert frames > 2500  # 90 s of the reference vehicle is about 3,000 frames
    out = tmp_path / "all.jsonl"
    result = _agent("replay", "-c", str(cfg), str(log), "--every-frame", "-o", str(out))
    assert result.returncode == 0, result.stderr
    computed = {s.path for s in config.load(cfg).settings.signals if s.compute is not None}
    got = [(s["ts"], s["path"], s["value"]) for s in _read(out) if s["path"] not in computed]
    want = _independent(cfg, log)
    _same(got, want)  # the computed battery power is checked in test_compute.py
    # The log covers what the scenario did: driving, parking, climate, charging.
    values = {(p, json.dumps(v)) for _, p, v in got}
    assert ("Vehicle.Powertrain.TractionBattery.Charging.IsCharging", "true") in values
    assert ("Vehicle.LowVoltageSystemState", '"ON"') in values
    assert ("Vehicle.LowVoltageSystemState", '"OFF"') in values
    assert ("Vehicle.Powertrain.Transmission.SelectedGear", "127") in values
    assert max(v for _, p, v in got if p == "Vehicle.Speed") > 40
    # The scenario's leak: 3 bar/h on the rear right tyre is 7.5 kPa over 90 s (2 kPa steps).
    rear_right = [
        v for _, p, v in got if p == "Vehicle.Chassis.Axle.Row2.Wheel.Right.Tire.Pressure"
    ]
    assert rear_right[0] - rear_right[-1] == pytest.approx(7.5, abs=2)
    front_left = [v for _, p, v in got if p == "Vehicle.Chassis.Axle.Row1.Wheel.Left.Tire.Pressure"]
    assert set(front_left) == {250.0}
    assert f"replay: {frames} frames" in result.stderr
    assert f"decoded {frames}," in result.stderr and "failed 0" in result.stderr


def test_policy_replay_is_a_sampled_subset(recording: tuple[Path, Path], tmp_path: Path) -> None:
    """Without --every-frame the policies thin the stream on the log's own timestamps."""
    cfg, log = recording
    every, sampled = tmp_path / "every.jsonl", tmp_path / "sampled.jsonl"
    assert (
        _agent("replay", "-c", str(cfg), str(log), "--every-frame", "-o", str(every)).returncode
        == 0
    )
    result = _agent("replay", "-c", str(cfg), str(log), "-o", str(sampled))
    assert result.returncode == 0, result.stderr
    all_samples = {(s["ts"], s["path"], json.dumps(s["value"])) for s in _read(every)}
    picked = _read(sampled)
    assert 0 < len(picked) < len(all_samples) / 5
    assert {(s["ts"], s["path"], json.dumps(s["value"])) for s in picked} <= all_samples
    speeds = [s["ts"] for s in picked if s["path"] == "Vehicle.Speed"]
    assert len(speeds) > 5
    assert min(b - a for a, b in itertools.pairwise(speeds)) >= 0.5  # min_interval_ms
    # Every mapped path shows up at least once (first value always published).
    assert {s["path"] for s in picked} == {s["path"] for s in _read(every)}
    assert f"samples written {len(picked)}" in result.stderr


@pytest.mark.parametrize("suffix", [".asc", ".blf", ".csv"])
def test_other_log_formats_give_the_same_samples(
    recording: tuple[Path, Path], tmp_path: Path, suffix: str
) -> None:
    """Any format python-can reads: the same (path, value) stream as the candump original."""
    cfg, log = recording
    converted = tmp_path / f"drive{suffix}"
    with can.LogReader(str(log)) as reader, can.Logger(str(converted)) as writer:
        for msg in reader:
            writer.on_message_received(msg)
    outs = []
    for source in (log, converted):
        out = tmp_path / f"{source.suffix}.jsonl"
        args = ["replay", "-c", str(cfg), str(source), "--every-frame", "-o", str(out)]
        if source is converted:
            # These formats store channel numbers, not names: name the buses explicitly.
            args += [
                "--map-channel",
                "demo-powertrain=powertrain",
                "--map-channel",
                "demo-body=body",
            ]
        result = _agent(*args)
        assert result.returncode == 0, result.stderr
        outs.append([(s["path"], s["value"]) for s in _read(out)])
    assert len(outs[0]) == len(outs[1])
    for (p1, v1), (p2, v2) in zip(outs[0], outs[1], strict=True):
        assert p1 == p2
        assert v1 == pytest.approx(v2) if isinstance(v1, float) else v1 == v2


def test_replay_of_a_missing_or_garbled_log(recording: tuple[Path, Path], tmp_path: Path) -> None:
    cfg, _ = recording
    missing = _agent("replay", "-c", str(cfg), str(tmp_path / "none.log"))
    assert missing.returncode == 1
    assert "log file not found" in missing.stderr and "Traceback" not in missing.stderr
    unknown = tmp_path / "capture.xyz"
    unknown.write_text("hello")
    result = _agent("replay", "-c", str(cfg), str(unknown))
    assert result.returncode == 1 and "cannot read log" in result.stderr


def test_replay_counts_garbage_lines_in_a_candump_log(
    recording: tuple[Path, Path], tmp_path: Path
) -> None:
    """Frames the DBC does not know, and error frames, are counted in the summary."""
    cfg, log = recording
    lines = log.read_text().splitlines()[:200]
    ts = lines[0].split(")")[0] + ")"
    lines += [
        f"{ts} demo-powertrain 7AB#0102",  # unknown id
        f"{ts} demo-powertrain 100#01",  # BMS_Status, 1 of 8 bytes
        f"{ts} demo-powertrain 20000080#0000000000000000",  # an error frame
    ]
    bad = tmp_path / "bad.log"
    bad.write_text("\n".join(lines) + "\n")
    result = _agent("replay", "-c", str(cfg), str(bad), "-o", str(tmp_path / "o.jsonl"))
    assert result.returncode == 0, result.stderr
    assert "replay: 203 frames" in result.stderr
    assert "unknown ids 1," in result.stderr
    assert "short 1," in result.stderr
    assert "error frames 1," in result.stderr


def test_bad_scenario_file_is_a_config_error(recording: tuple[Path, Path], tmp_path: Path) -> None:
    cfg, _ = recording
    scenario = tmp_path / "bad.yaml"
    scenario.write_text("mode: flying\ninitial: {soc: 50, warp: 9}\n")
    result = _agent(
        "simulate",
        "-c",
        str(cfg),
        "--scenario",
        str(scenario),
        "--duration",
        "1",
        "--record",
        str(tmp_path / "x.log"),
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert any(line.startswith(f"{scenario}:1: mode:") for line in lines), lines
    assert any("unknown state field(s) ['warp']" in line for line in lines), lines


def test_help_for_every_verb() -> None:
    for verb in ("check-config", "replay", "simulate"):
        result = _agent(verb, "--help")
        assert result.returncode == 0 and "-c" in result.stdout
