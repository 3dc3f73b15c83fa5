"""`vehicle-agent demo --duration 20`: broker, simulator, agent and console in one process."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.support.configs import ROOT


def test_demo_runs_by_itself_and_shows_live_values() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "agent", "demo", "--duration", "20"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "Traceback" not in out + result.stderr
    summary = re.search(
        r"demo: (\d+) telemetry messages, seq (\d+)\.\.(\d+), first values after\s+"
        r"([\d.]+) s",
        out,
    )
    assert summary, out
    messages, first_seq, last_seq = int(summary[1]), int(summary[2]), int(summary[3])
    first = float(summary[4])
    # One run of a new outbox: seq from the clock in ms, none missing.
    assert messages >= 3 and first_seq > 10**12 and last_seq - first_seq + 1 == messages
    assert first < 10.0
    # The final table carries real values, not placeholders.
    assert re.search(r"State of charge\s+│\s+6\d\.\d %", out), out
    assert re.search(r"Speed\s+│\s+\d+\.\d km/h", out)
    assert re.search(r"Tyre front left\s+│\s+250 kPa", out)
    assert "offline" in out  # the console saw the agent say goodbye
    # The console signed an hvac.start; the car confirmed it and the cabin cools from 31 °C.
    assert "demo: hvac.start accepted → succeeded" in out
    cabin = re.search(r"Cabin temperature\s+│\s+([\d.]+) °C", out)
    assert cabin and float(cabin[1]) < 31.0
    assert re.search(r"Climate \(A/C\)\s+│\s+on", out)
    # The console's telemetry team applied a signed campaign; the pump stutters at 5 s, the
    # pack heats past the campaign's 40 degC (avg over 2 s) and its capture arrives: 5 s
    # before the trigger to 3 s after it, every frame of the pack temperature (10 Hz).
    assert "demo: campaign.apply accepted → succeeded" in out
    assert re.search(r"Battery temperature\s+│\s+\d+\.\d °C", out)
    assert re.search(r"Campaign\s+│\s+captured battery-heat v1: \d+ samples", out), out
    captures = re.findall(
        r"demo: campaign battery-heat v1: (\d+) samples \((\d+) of the pack temperature\), "
        r"([-+][\d.]+) s to ([-+][\d.]+) s around its trigger, pack ([\d.]+) → ([\d.]+) °C, "
        r"seq (\d+)",
        out,
    )
    assert len(captures) == 1, out  # once: min_interval_s
    samples, temps, start, end, pack_from, pack_to, seq = captures[0]
    assert 70 <= int(temps) <= 81 and int(samples) > int(temps)  # and the charge, at 1 Hz
    assert -5.0 <= float(start) <= -4.8 and 2.8 <= float(end) <= 3.0
    assert float(pack_from) < 40.0 < float(pack_to)  # before the stutter, then past the trigger
    assert int(seq) > 10**12  # its own stream, from the new outbox's clock
