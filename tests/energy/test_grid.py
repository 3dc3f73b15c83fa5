"""The grid runner at its seams (a fake clock, the real command store, a recorder for the
power requests), and the schedule runner following the grid's tariff and limits."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.commands.store import CommandStore
from agent.config import ChargingSettings
from agent.energy.grid import GridRunner
from agent.energy.schedule import CABLE, SOC, ScheduleRunner

T0 = datetime(2026, 11, 25, 22, 0, tzinfo=UTC)


def at(minutes: float) -> str:
    return (T0 + timedelta(minutes=minutes)).isoformat()


class Rig:
    def __init__(self, store: CommandStore) -> None:
        self.now = T0.timestamp()
        self.caps: list[float | None] = []
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.refuse = False
        self.changes = 0
        self.grid = GridRunner(
            store=store,
            power_cap=self._cap,
            event=lambda name, data: self.events.append((name, data)),
            on_change=self._changed,
            clock=lambda: self.now,
        )

    def _changed(self) -> None:
        self.changes += 1

    async def _cap(self, cap: float | None) -> str | None:
        self.caps.append(cap)
        return "bus down" if self.refuse else None

    async def tick_at(self, minutes: float) -> None:
        self.now = (T0 + timedelta(minutes=minutes)).timestamp()
        await self.grid.tick()

    def names(self) -> list[str]:
        return [name for name, _ in self.events]


@pytest.fixture
def store(tmp_path: Path) -> Any:
    with CommandStore(tmp_path / "commands.db") as s:
        yield s


def _signal(power: float = 0.0, *, tariff: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {
        "limits": [{"start": at(10), "end": at(40), "max_power_kw": power}],
        "valid_until": at(24 * 60),
    }
    if tariff:  # 22:00-02:00: the first two hours cheap, the next two dear
        body["tariff"] = [
            {"start": at(0), "end": at(120), "price": 0.1, "co2_g_per_kwh": 300},
            {"start": at(120), "end": at(240), "price": 0.3, "co2_g_per_kwh": 100},
        ]
    return body


async def test_a_limit_is_sent_at_its_start_and_lifted_at_its_end(store: CommandStore) -> None:
    rig = Rig(store)
    assert rig.grid.accept(_signal(0.0)) == ("succeeded", None)
    assert rig.changes == 1
    await rig.tick_at(0)  # nothing in force, nothing sent: the charger's power is left alone
    await rig.tick_at(5)
    assert (rig.caps, rig.events) == ([], [])
    await rig.tick_at(10)
    await rig.tick_at(25)
    assert rig.caps == [0.0]
    assert rig.events == [("limit_started", {"start": at(10), "end": at(40), "max_power_kw": 0.0})]
    assert rig.grid.state()["limit"] == {"start": at(10), "end": at(40), "max_power_kw": 0.0}
    await rig.tick_at(40)
    await rig.tick_at(41)
    assert rig.caps == [0.0, None]
    assert rig.names() == ["limit_started", "limit_ended"]
    assert rig.grid.state()["limit"] is None


async def test_the_limit_survives_a_restart_inside_its_window(store: CommandStore) -> None:
    first = Rig(store)
    first.grid.accept(_signal(3.7))
    await first.tick_at(15)
    assert first.caps == [3.7]
    second = Rig(store)  # a new process on the same store
    second.grid.load()
    await second.tick_at(20)
    assert second.caps == [3.7] and second.names() == ["limit_started"]
    await second.tick_at(40)
    assert second.caps == [3.7, None] and second.names() == ["limit_started", "limit_ended"]
    third = Rig(store)  # restarted after the window: the cap left on the car is lifted once
    third.grid.load()
    await third.tick_at(50)
    await third.tick_at(51)
    assert third.caps == [None] and third.names() == []


async def test_a_refused_request_is_retried_every_tick_until_the_car_takes_it(
    store: CommandStore,
) -> None:
    rig = Rig(store)
    rig.grid.accept(_signal(0.0))
    rig.refuse = True
    await rig.tick_at(10)
    await rig.tick_at(11)
    assert rig.caps == [0.0, 0.0] and rig.names() == ["limit_started"]
    rig.refuse = False
    await rig.tick_at(12)
    await rig.tick_at(13)
    assert rig.caps == [0.0, 0.0, 0.0]  # taken at the third try, then left alone


async def test_clear_and_expiry_end_the_limit(store: CommandStore) -> None:
    rig = Rig(store)
    rig.grid.accept({**_signal(0.0), "valid_until": at(20)})
    await rig.tick_at(15)
    await rig.tick_at(20)  # expired inside the window: the limit ends with it
    assert rig.names() == ["limit_started", "grid_signal_expired", "limit_ended"]
    assert rig.caps == [0.0, None] and rig.grid.current() is None
    assert store.load_grid() is None
    rig.grid.accept(_signal(0.0))
    await rig.tick_at(30)
    assert rig.grid.clear({}) == ("succeeded", None)
    await rig.tick_at(31)
    assert rig.names()[-2:] == ["limit_started", "limit_ended"] and rig.caps[-1] is None


@pytest.mark.parametrize(
    ("params", "detail"),
    [
        ({"valid_until": "2026-11-25T21:00:00Z"}, "valid_until is in the past"),
        (
            {"valid_until": at(60), "limits": [{"start": at(5), "end": at(1), "max_power_kw": 1}]},
            "limits[0] ends before it starts",
        ),
        (
            {"valid_until": at(60), "limits": [{"start": at(0), "end": at(9), "max_power_kw": -1}]},
            "limits.0.max_power_kw",
        ),
    ],
)
def test_bad_signals_fail_with_a_detail_and_change_nothing(
    store: CommandStore, params: dict[str, Any], detail: str
) -> None:
    rig = Rig(store)
    status, message = rig.grid.accept(params)
    assert status == "failed" and message is not None and detail in message
    assert rig.grid.current() is None and store.load_grid() is None and rig.changes == 0


class ScheduleRig(Rig):
    def __init__(self, store: CommandStore) -> None:
        super().__init__(store)
        self.values: dict[str, Any] = {SOC: 60.0, CABLE: True}
        self.requests: list[bool] = []
        self.schedule = ScheduleRunner(
            settings=ChargingSettings(capacity_kwh=50, max_power_kw=10, efficiency=1.0),
            store=store,
            values=lambda: self.values,
            charge=self._charge,
            event=lambda name, data: self.events.append((name, data)),
            grid=self.grid.current,
            clock=lambda: self.now,
        )
        self.grid.on_change = self.schedule.on_grid_change

    async def _charge(self, on: bool) -> str | None:
        self.requests.append(on)
        return None


def _slots(data: dict[str, Any]) -> list[tuple[str, str]]:
    return [(s["start"], s["end"]) for s in data["slots"]]


async def test_a_schedule_without_a_tariff_follows_the_grid_and_replans_on_a_new_signal(
    store: CommandStore,
) -> None:
    rig = ScheduleRig(store)
    request = {"departure": at(240), "target_soc_pct": 70.0}  # 5 kWh: 30 min at 10 kW
    status, detail = rig.schedule.accept(request)
    assert (status, detail) == ("failed", "no tariff given, and no grid signal with a tariff")
    rig.grid.accept({"tariff": _signal(tariff=True)["tariff"], "valid_until": at(24 * 60)})
    assert rig.schedule.accept(request) == ("succeeded", None)
    name, data = rig.events[-1]
    assert name == "plan_accepted" and _slots(data) == [(at(90), at(120))]  # cheap, late
    # The grid closes 22:10-22:40 and caps the rest of the cheap window at 4 kW.
    signal = _signal(tariff=True)
    signal["limits"] = [
        {"start": at(10), "end": at(40), "max_power_kw": 0},
        {"start": at(40), "end": at(120), "max_power_kw": 4},
    ]
    rig.grid.accept(signal)
    name, data = rig.events[-1]
    assert name == "replan" and data["reason"] == "grid_signal" and data["feasible"]
    # 5 kWh at 4 kW: 75 minutes, at the end of the cheap window, never in the closed one.
    assert _slots(data) == [(at(45), at(120))]
    assert {s["power_kw"] for s in data["slots"]} == {4.0}


async def test_co2_weight_moves_a_grid_schedule_to_cleaner_hours(store: CommandStore) -> None:
    rig = ScheduleRig(store)
    rig.schedule._settings = ChargingSettings(
        capacity_kwh=50, max_power_kw=10, efficiency=1.0, co2_weight=2.0
    )  # 2 per kg: 300 g costs 0.6, 100 g 0.2: the dear, clean hours win
    rig.grid.accept({"tariff": _signal(tariff=True)["tariff"], "valid_until": at(24 * 60)})
    rig.schedule.accept({"departure": at(240), "target_soc_pct": 70.0})
    assert _slots(rig.events[-1][1]) == [(at(210), at(240))]


async def test_a_cap_is_lifted_after_a_restart_even_when_the_lift_failed_before(
    store: CommandStore,
) -> None:
    """grid.clear inside a 0 kW window while the bus refuses the lift, then a restart: the
    new run still lifts the cap the car was left with."""
    rig = Rig(store)
    rig.grid.accept(_signal(0.0))
    await rig.tick_at(15)
    assert rig.caps == [0.0]
    rig.refuse = True
    rig.grid.clear({})
    await rig.tick_at(16)
    assert rig.caps == [0.0, None]  # refused
    again = Rig(store)
    again.grid.load()
    await again.tick_at(17)
    assert again.caps == [None] and again.grid.current() is None
    assert store.load_grid() is None  # taken: nothing left to remember
    await again.tick_at(18)
    assert again.caps == [None]


async def test_a_state_of_charge_past_100_does_not_break_a_schedule(store: CommandStore) -> None:
    """A DBC's out-of-range reading (102.3 % for raw 0x3FF) must cost nothing but a plan."""
    rig = ScheduleRig(store)
    rig.values[SOC] = 102.3
    rig.grid.accept({"tariff": _signal(tariff=True)["tariff"], "valid_until": at(60)})
    assert rig.schedule.accept({"departure": at(240), "target_soc_pct": 70.0})[0] == "succeeded"
    rig.values[SOC] = 60.0
    rig.now = (T0 + timedelta(minutes=61)).timestamp()
    await rig.grid.tick()  # the signal expires: the schedule keeps the tariff it had
    name, data = rig.events[-1]
    assert name == "replan" and data["slots"], rig.events[-3:]
