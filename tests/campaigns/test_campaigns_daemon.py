"""A campaign end to end: the agent in this process (a spy on the virtual bus records every
frame), the car simulated apart at 2x with a coolant pump that fails twice, a real mosquitto.
The campaign's capture is checked against `vehicle-agent replay` of the spy's own recording."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import can
import pytest

from agent import cli
from tests.commands.test_commands import PT, Rig, _run, rig_factory
from tests.support.brokers import wait_until
from tests.support.configs import CONFIG_DIR
from tests.support.schemas import validate

__all__ = ["rig_factory"]  # the fixture, shared with the command tests

TEMP = "Vehicle.Powertrain.TractionBattery.Temperature.Average"
SOC = "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current"
BMS = PT.get_message_by_name("BMS_Status").frame_id
SCENARIO = CONFIG_DIR / "scenarios" / "battery-heat.yaml"


def _events(rig: Rig, campaign: str | None = None) -> list[dict[str, Any]]:
    found = [m.json() for m in rig.sub.on("events") if m.json()["type"] == "campaign"]
    return [e for e in found if campaign is None or e["data"]["campaign"] == campaign]


def _replay(rig: Rig, tmp_path: Path) -> list[dict[str, Any]]:
    """The spy's recording of the powertrain bus, replayed by the agent's own replay verb."""
    log = tmp_path / "pt.log"
    frames = [m for m in list(rig.spy.frames) if m.arbitration_id == BMS]
    with can.Logger(str(log)) as writer:  # candump format; each frame keeps its channel
        for m in frames:
            writer.on_message_received(m)
    done = subprocess.run(
        [sys.executable, "-m", "agent", "replay", "-c", str(rig.config), "--every-frame", str(log)],
        capture_output=True,
        text=True,
        check=True,
    )
    return [json.loads(line) for line in done.stdout.splitlines()]


def _window(replayed: list[dict[str, Any]], trigger: float) -> list[tuple[float, Any]]:
    """Every frame's pack temperature from 10 s before a trigger to 5 s after it."""
    return [
        (round(s["ts"], 6), s["value"])
        for s in replayed
        if s["path"] == TEMP and trigger - 10 - 1e-6 <= s["ts"] <= trigger + 5 + 1e-6
    ]


def _temps(capture: dict[str, Any]) -> list[tuple[float, Any]]:
    return [(round(s["ts"], 6), s["value"]) for s in capture["samples"] if s["path"] == TEMP]


@pytest.mark.timeout(300)
def test_a_campaign_captures_its_window_once_survives_a_restart_and_expires(
    rig_factory: Callable[..., tuple[Rig, Callable[[], Any]]],
    tmp_path: Path,
    report: Callable[[str], None],
) -> None:
    rig, running = rig_factory(scenario="plugged_in", simulator=False)
    car = threading.Thread(
        target=cli.main,
        args=(
            [
                *("simulate", "-c", str(rig.config), "--scenario", str(SCENARIO)),
                *("--speedup", "2", "--duration", "200"),
            ],
        ),
        daemon=True,
    )
    t0 = datetime.now(UTC)
    car.start()
    campaign = {
        "id": "battery-heat",
        "version": 1,
        "expires": (t0 + timedelta(seconds=85)).isoformat(),
        "signals": [
            {"path": TEMP, "min_interval_ms": 0, "max_samples": 600},
            {"path": SOC, "min_interval_ms": 1000, "max_samples": 100},
        ],
        "trigger": {
            "condition": f"avg({TEMP}, 5) > 40",
            "mode": "rising_edge",
            "min_interval_s": 600,
        },
        "pre_trigger_s": 10,
        "post_trigger_s": 5,
        "priority": 2,
    }
    # The same condition without min_interval_s: it shows the condition fire again after the
    # restart, when battery-heat stays silent because its stored last trigger is too recent.
    watch = {
        **campaign,
        "id": "battery-watch",
        "signals": [{"path": TEMP, "min_interval_ms": 0, "max_samples": 600}],
        "trigger": {"condition": f"avg({TEMP}, 5) > 40", "mode": "rising_edge"},
    }
    with running():
        wait_until(lambda: rig.sub.on("state"), 15, "the first state")
        for body in (campaign, watch):
            result = _run(rig, rig.key.token(rig.vehicle, "campaign.apply", {"campaign": body}))
            assert result["status"] == "succeeded", result
        wait_until(lambda: rig.sub.on("campaigns/battery-heat"), 60, "the first capture")
        wait_until(lambda: rig.sub.on("campaigns/battery-watch"), 15, "the watch's first capture")
        time.sleep(max(0.0, (t0 + timedelta(seconds=40)).timestamp() - time.time()))
    restarted = time.time()
    with running():  # restarted between the two failures of the pump
        wait_until(
            lambda: any(
                c["state"] == "active"
                for m in rig.sub.on("state")[-1:]
                for c in m.json().get("campaigns", [])
            ),
            15,
            "the campaign active again after the restart",
        )
        wait_until(
            lambda: len(rig.sub.on("campaigns/battery-watch")) >= 2,
            60,
            "the watch's capture of the second failure, after the restart",
        )
        wait_until(lambda: any(e["name"] == "expired" for e in _events(rig)), 60, "expiry")
        expired_at = time.time()
        wait_until(
            lambda: any(
                c["state"] == "expired"
                for m in rig.sub.on("state")[-1:]
                for c in m.json().get("campaigns", [])
            ),
            15,
            "P/state listing it expired",
        )
    captures = [m.json() for m in rig.sub.on("campaigns/battery-heat")]
    assert len(captures) == 1, "the second failure is within min_interval_s: no new capture"
    capture = captures[0]
    validate("campaign", capture)
    for event in _events(rig):
        validate("events", event)
    for state in rig.sub.on("state"):
        validate("state", state.json())
    assert (capture["v"], capture["vehicle_id"], capture["campaign"], capture["version"]) == (
        1,
        rig.vehicle,
        "battery-heat",
        1,
    )
    assert capture["seq"] > 10**12  # a new outbox numbers every stream from the clock
    assert (capture["part"], capture["parts"]) == (1, 1)
    trigger = capture["trigger_ts"]
    assert expired_at >= (t0 + timedelta(seconds=85)).timestamp() - 0.01
    assert expired_at <= (t0 + timedelta(seconds=85)).timestamp() + 2.0
    names = [e["name"] for e in _events(rig, "battery-heat")]
    assert names == ["accepted", "started", "triggered", "expired"], names

    replayed = _replay(rig, tmp_path)
    window = _window(replayed, trigger)
    captured = _temps(capture)
    assert captured == window  # every frame's value of the window, nothing else
    assert len(window) > 140  # ~15 s at 10 Hz
    socs = [s["ts"] for s in capture["samples"] if s["path"] == SOC]
    assert all(b - a >= 1.0 - 1e-6 for a, b in itertools.pairwise(socs))
    assert 12 <= len(socs) <= 16
    late = expired_at - (t0 + timedelta(seconds=85)).timestamp()

    # After the restart: the watch (same condition, no min_interval_s) captured the second
    # failure, every frame of its window; battery-heat did not, because its last trigger
    # (stored) was less than its min_interval_s of 600 s before.
    watched = [m.json() for m in rig.sub.on("campaigns/battery-watch")]
    assert len(watched) == 2, [w["trigger_ts"] for w in watched]
    first, second = watched
    assert first["trigger_ts"] == trigger  # the same frames, the same condition
    assert _temps(first) == window
    assert restarted < second["trigger_ts"] < trigger + 600
    assert second["trigger_ts"] - trigger > 30  # the second failure, not the first
    again = _window(replayed, second["trigger_ts"])
    assert _temps(second) == again and len(again) > 140
    assert second["seq"] == first["seq"] + 1  # its own stream, continued across the restart
    watch_names = [e["name"] for e in _events(rig, "battery-watch")]
    assert watch_names == ["accepted", "started", "triggered", "triggered", "expired"]
    trimmed = {**capture, "samples": capture["samples"][:3]}
    report(
        f"campaign test: one capture of {len(capture['samples'])} samples "
        f"({len(window)} of the pack temperature: every frame, the car at 2x sends 20 a second; "
        f"{len(socs)} of the state of charge at 1 Hz) around trigger_ts {trigger:.3f}; "
        f"the second failure ignored (min_interval_s); expired {late:.2f} s after its time;"
        f" after the restart the same condition without min_interval_s captured the second "
        f"failure ({len(again)} frames, trigger_ts {second['trigger_ts']:.3f}) and battery-heat"
        f" stayed silent; P/campaigns/battery-heat message (3 of its samples): "
        f"{json.dumps(trimmed, separators=(',', ':'))}"
    )
