"""The grid end to end: the agent in this process (a spy on the virtual bus sees every frame),
the car simulated apart at 4x so that it outlives the agent's restart, and a real mosquitto.
A charging schedule is running when a grid signal closes a window with a 0 kW limit: the car
stops within one cycle of the window's start, the plan moves around it, the agent restarts
inside the window and keeps the limit, and charging resumes after it to reach the target.
A second test caps a window at 3.7 kW instead (the car in the agent's process, no restart): the
car charges on at the cap, and at its own full power again after the window."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from agent import cli
from tests.commands.test_commands import PT, Rig, _charging_events, _run, rig_factory
from tests.support.brokers import wait_until
from tests.support.schemas import validate

__all__ = ["rig_factory"]  # the fixture, shared with the command tests

OBC = PT.get_message_by_name("OBC_Status")
POWER_REQ = PT.get_message_by_name("TCU_ChargePowerRequest")
SOC = "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current"


def _states(rig: Rig, since: float, until: float) -> list[str]:
    return [
        str(OBC.decode(bytes(m.data))["OBC_ChargeState"])
        for m in list(rig.spy.frames)
        if m.arbitration_id == OBC.frame_id and since <= m.timestamp < until
    ]


def _schedule_on_a_still_car(rig: Rig) -> tuple[datetime, Callable[[float], str]]:
    """Stop the arriving car's charging so that its state of charge holds still, read it, and
    start a charging.schedule for 0.8 % more: cheap for 150 s, dear after. 0.8 % of 75 kWh is
    more than the cheap 150 s hold at 11 kW by the plan's reckoning (~213 s), so the plan
    charges through the whole cheap window; the car, at 4x, needs about 55 s. Returns the
    schedule's time zero and `at(seconds)`, an ISO time that many seconds after it."""
    wait_until(lambda: rig.sub.on("state"), 15, "the first state")
    time.sleep(1.0)
    assert _run(rig, rig.key.token(rig.vehicle, "charging.stop"))["status"] == "succeeded"
    count = len(rig.sub.on("state"))
    assert _run(rig, rig.key.token(rig.vehicle, "state.snapshot"))["status"] == "succeeded"
    wait_until(lambda: len(rig.sub.on("state")) > count, 5, "a fresh state")
    soc = rig.sub.on("state")[-1].json()["values"][SOC]
    t0 = datetime.now(UTC)

    def at(seconds: float) -> str:
        return (t0 + timedelta(seconds=seconds)).isoformat()

    schedule = {
        "departure": at(400),
        "target_soc_pct": soc + 0.8,
        "tariff": [
            {"start": at(-10), "end": at(150), "price": 0.1},
            {"start": at(150), "end": at(400), "price": 0.5},
        ],
    }
    result = _run(rig, rig.key.token(rig.vehicle, "charging.schedule", schedule, ttl=300))
    assert result["status"] == "succeeded", result
    return t0, at


@pytest.mark.timeout(300)
def test_a_zero_limit_pauses_a_schedule_across_a_restart_and_the_target_is_still_met(
    rig_factory: Callable[..., tuple[Rig, Callable[[], Any]]], report: Callable[[str], None]
) -> None:
    rig, running = rig_factory(scenario="plugged_in", simulator=False, speedup=4.0)
    car = threading.Thread(
        target=cli.main,
        args=(
            [
                "simulate",
                "-c",
                str(rig.config),
                "--scenario",
                "plugged_in",
                "--speedup",
                "4",
                "--duration",
                "400",
            ],
        ),
        daemon=True,
    )
    car.start()

    def names() -> list[str]:
        return [e["name"] for e in _charging_events(rig)]

    with running():
        # The grid is about to close half a minute of the cheap window, and the target is
        # out of reach before it.
        t0, at = _schedule_on_a_still_car(rig)
        signal = {
            "limits": [{"start": at(30), "end": at(60), "max_power_kw": 0}],
            "valid_until": at(600),
        }
        result = _run(rig, rig.key.token(rig.vehicle, "grid.signal", signal))
        assert result["status"] == "succeeded", result
        wait_until(lambda: "slot_started" in names(), 15, "charging in the re-planned slot")
        wait_until(lambda: "limit_started" in names(), 40, "the limit's start")
        wait_until(
            lambda: any((m.json().get("charging") or {}).get("limit") for m in rig.sub.on("state")),
            10,
            "the limit in P/state",
        )
        time.sleep(max(0.0, (t0 + timedelta(seconds=40)).timestamp() - time.time()))
    restarted_at = time.time()
    with running():  # the agent restarts inside the window; the car keeps running
        wait_until(lambda: "limit_ended" in names(), 40, "the limit's end")
        wait_until(lambda: "target_reached" in names(), 90, "the target")
    window = ((t0 + timedelta(seconds=30)).timestamp(), (t0 + timedelta(seconds=60)).timestamp())
    events = _charging_events(rig)
    for event in events:
        validate("events", event)
    for state in rig.sub.on("state"):
        validate("state", state.json())
    keyed = [(e["name"], e["data"].get("reason")) for e in events]
    milestones = [
        k for k in keyed if k[0] in ("plan_accepted", "replan", "limit_started", "limit_ended")
    ]
    assert milestones[:3] == [
        ("plan_accepted", "new_schedule"),
        ("replan", "grid_signal"),
        ("limit_started", None),
    ]
    # After the restart: the schedule resumed and the limit in force again, in either order.
    assert sorted(milestones[3:5]) == [
        ("limit_started", None),
        ("plan_accepted", "resumed_after_restart"),
    ]
    assert milestones[5:] == [("limit_ended", None)]
    assert keyed[-1] == ("target_reached", None)
    replan = next(e["data"] for e in events if e["name"] == "replan")
    assert replan["feasible"] is True
    for slot in replan["slots"]:  # nothing planned inside the closed window
        start, end = datetime.fromisoformat(slot["start"]), datetime.fromisoformat(slot["end"])
        assert end.timestamp() <= window[0] + 1e-3 or start.timestamp() >= window[1] - 1e-3
    # The car: charging before the window, not charging from one cycle after its start to
    # its end (across the agent's restart), charging again after it.
    assert "CHARGING" in _states(rig, window[0] - 15, window[0])
    paused = _states(rig, window[0] + 1.5, window[1])
    assert paused and "CHARGING" not in paused, paused
    assert "CHARGING" in _states(rig, window[1] + 1.5, time.time())
    # The power requests the car was sent: 0 at the start, 0 again after the restart, lifted.
    requests = [
        (m.timestamp, dict(POWER_REQ.decode(bytes(m.data))))
        for m in list(rig.spy.frames)
        if m.arbitration_id == POWER_REQ.frame_id
    ]
    limited = [t for t, r in requests if str(r["TCU_ChargePowerMode"]) == "LIMITED"]
    lifted = [t for t, r in requests if str(r["TCU_ChargePowerMode"]) == "UNLIMITED"]
    assert any(window[0] <= t < window[0] + 1.5 for t in limited)
    assert any(restarted_at <= t < window[1] for t in limited)
    assert any(window[1] <= t < window[1] + 1.5 for t in lifted)
    first_pause = min(t for t in limited if t >= window[0])
    report(
        f"grid limit test: the car was asked to pause {first_pause - window[0]:.2f} s after "
        f"the window opened; events {[k[0] for k in keyed]}"
    )


def _power(rig: Rig, since: float, until: float) -> list[tuple[float, str, float]]:
    """The car's own OBC_Status frames: (time, charge state, charge power in kW)."""
    out = []
    for m in list(rig.spy.frames):
        if m.arbitration_id == OBC.frame_id and since <= m.timestamp < until:
            decoded = OBC.decode(bytes(m.data))
            out.append((m.timestamp, str(decoded["OBC_ChargeState"]), decoded["OBC_ChargePower"]))
    return out


@pytest.mark.timeout(240)
def test_a_non_zero_limit_caps_the_charge_power_for_its_window_and_then_lifts_it(
    rig_factory: Callable[..., tuple[Rig, Callable[[], Any]]], report: Callable[[str], None]
) -> None:
    """A schedule charges at the car's 11 kW when the grid caps a 25 s window at 3.7 kW: the
    charge power request on CAN is 3.7 kW LIMITED from the window's start, the car keeps
    charging at no more than that, the plan puts no more than 3.7 kW into the window,
    limit_started and limit_ended come in order, and the request is lifted at its end."""
    cap = 3.7
    rig, running = rig_factory(scenario="plugged_in", speedup=4.0)

    def names() -> list[str]:
        return [e["name"] for e in _charging_events(rig)]

    with running():
        t0, at = _schedule_on_a_still_car(rig)
        signal = {
            "limits": [{"start": at(20), "end": at(45), "max_power_kw": cap}],
            "valid_until": at(600),
        }
        result = _run(rig, rig.key.token(rig.vehicle, "grid.signal", signal))
        assert result["status"] == "succeeded", result
        window = (
            (t0 + timedelta(seconds=20)).timestamp(),
            (t0 + timedelta(seconds=45)).timestamp(),
        )
        wait_until(lambda: "limit_started" in names(), 40, "the limit's start")
        wait_until(
            lambda: any((m.json().get("charging") or {}).get("limit") for m in rig.sub.on("state")),
            10,
            "the limit in P/state",
        )
        wait_until(lambda: "limit_ended" in names(), 45, "the limit's end")
        wait_until(
            lambda: any(p > cap + 1 for _t, _s, p in _power(rig, window[1] + 1.5, time.time())),
            15,
            "the car drawing more than the cap again",
        )
    events = _charging_events(rig)
    for state in rig.sub.on("state"):
        validate("state", state.json())
    keyed = [(e["name"], e["data"].get("reason")) for e in events]
    milestones = [
        k for k in keyed if k[0] in ("plan_accepted", "replan", "limit_started", "limit_ended")
    ]
    assert milestones == [
        ("plan_accepted", "new_schedule"),
        ("replan", "grid_signal"),
        ("limit_started", None),
        ("limit_ended", None),
    ]
    started = next(e["data"] for e in events if e["name"] == "limit_started")
    ended = next(e["data"] for e in events if e["name"] == "limit_ended")
    assert started == ended == {"start": at(20), "end": at(45), "max_power_kw": cap}
    limits = [(m.json().get("charging") or {}).get("limit") for m in rig.sub.on("state")]
    assert {"start": at(20), "end": at(45), "max_power_kw": cap} in limits
    replan = next(e["data"] for e in events if e["name"] == "replan")
    assert replan["feasible"] is True  # by departure, in the dearer hours if need be
    inside = []
    for slot in replan["slots"]:
        start, end = datetime.fromisoformat(slot["start"]), datetime.fromisoformat(slot["end"])
        if start.timestamp() < window[1] - 1e-3 and end.timestamp() > window[0] + 1e-3:
            inside.append(slot["power_kw"])
    assert inside and max(inside) <= cap + 1e-6, replan["slots"]  # the plan keeps the cap
    # The charge power requests: LIMITED at the cap from the window's start, lifted at its end.
    requests = [
        (m.timestamp, dict(POWER_REQ.decode(bytes(m.data))))
        for m in list(rig.spy.frames)
        if m.arbitration_id == POWER_REQ.frame_id
    ]
    limited = [(t, r) for t, r in requests if str(r["TCU_ChargePowerMode"]) == "LIMITED"]
    lifted = [t for t, r in requests if str(r["TCU_ChargePowerMode"]) == "UNLIMITED"]
    assert limited and all(r["TCU_ChargePowerMax"] == pytest.approx(cap) for _t, r in limited)
    first_limit = min(t for t, _r in limited)
    assert window[0] <= first_limit < window[0] + 1.5
    assert any(window[1] <= t < window[1] + 1.5 for t in lifted)
    assert max(t for t, _r in limited) < window[1]  # nothing capped after the window
    # The car: 11 kW before the window, charging at no more than the cap inside it from half a
    # second after the request (a physics step and an OBC_Status cycle), above it again after.
    before = _power(rig, window[0] - 10, window[0])
    during = _power(rig, first_limit + 0.5, window[1])
    after = _power(rig, window[1] + 1.5, time.time())
    assert before and max(p for _t, _s, p in before) > cap + 1
    assert during and {s for _t, s, _p in during} == {"CHARGING"}, during
    assert max(p for _t, _s, p in during) <= cap + 0.01  # OBC_ChargePower's resolution
    assert min(p for _t, _s, p in during) == pytest.approx(cap, abs=0.01)  # charging at it
    assert after and max(p for _t, _s, p in after) > cap + 1
    report(
        f"grid limit test ({cap} kW): the request came {first_limit - window[0]:.2f} s after "
        f"the window opened; the car drew {max(p for _t, _s, p in before):.2f} kW before, "
        f"at most {max(p for _t, _s, p in during):.2f} kW inside it, "
        f"{max(p for _t, _s, p in after):.2f} kW after"
    )
