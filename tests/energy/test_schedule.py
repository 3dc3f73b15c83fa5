"""The schedule runner at its seams: a fake clock, fake values, a recorder for charge requests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.commands.store import CommandStore
from agent.config import ChargingSettings
from agent.energy.schedule import CABLE, SOC, ScheduleRunner

T0 = datetime(2026, 11, 25, 22, 0, tzinfo=UTC)


class Rig:
    def __init__(self, store: CommandStore) -> None:
        self.now = T0.timestamp()
        self.values: dict[str, Any] = {SOC: 60.0, CABLE: True}
        self.requests: list[bool] = []
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.runner = ScheduleRunner(
            settings=ChargingSettings(capacity_kwh=50, max_power_kw=10, efficiency=1.0),
            store=store,
            values=lambda: self.values,
            charge=self._charge,
            event=lambda name, data: self.events.append((name, data)),
            clock=lambda: self.now,
        )

    async def _charge(self, on: bool) -> str | None:
        self.requests.append(on)
        return None

    async def at(self, minutes: float) -> None:
        self.now = (T0 + timedelta(minutes=minutes)).timestamp()
        await self.runner.tick()

    def names(self) -> list[str]:
        return [name for name, _ in self.events]


def _request(target: float = 70.0) -> dict[str, Any]:
    def iv(a: int, b: int, price: float) -> dict[str, Any]:
        return {
            "start": (T0 + timedelta(hours=a)).isoformat(),
            "end": (T0 + timedelta(hours=b)).isoformat(),
            "price": price,
        }

    # 10 % of 50 kWh = 5 kWh = 30 minutes at 10 kW; the cheap hour is 01:00-02:00.
    return {
        "departure": (T0 + timedelta(hours=4)).isoformat(),
        "target_soc_pct": target,
        "tariff": [iv(0, 1, 0.4), iv(1, 2, 0.1), iv(2, 4, 0.3)],
    }


@pytest.fixture
def rig(tmp_path: Path) -> Any:
    with CommandStore(tmp_path / "c.db") as store:
        yield Rig(store)


async def test_charges_only_in_the_cheap_window_then_reaches_the_target(rig: Rig) -> None:
    assert rig.runner.accept(_request()) == ("succeeded", None)
    plan = rig.events[0][1]
    assert plan["slots"] == [
        {
            "start": (T0 + timedelta(hours=1, minutes=30)).isoformat(),
            "end": (T0 + timedelta(hours=2)).isoformat(),
            "power_kw": 10.0,
        }
    ]
    await rig.at(0)
    await rig.at(60)
    assert rig.requests == [False]  # not a slot yet: make sure the charger waits
    await rig.at(90)
    assert rig.requests == [False, True]
    rig.values[SOC] = 65.0
    await rig.at(105)
    rig.values[SOC] = 70.0
    await rig.at(119)
    assert rig.requests == [False, True, False]
    assert rig.names() == ["plan_accepted", "slot_started", "target_reached"]


async def test_unplugging_mid_plan_replans_when_plugged_back(rig: Rig) -> None:
    rig.runner.accept(_request())
    await rig.at(91)
    rig.values[CABLE] = False
    await rig.at(95)
    await rig.at(96)
    rig.values[CABLE] = True
    await rig.at(100)
    names = rig.names()
    assert names[:3] == ["plan_accepted", "slot_started", "replan"]
    assert names.count("replan") == 1  # once, not every second
    assert names[3] == "plan_accepted"
    assert rig.events[3][1]["reason"] == "cable_connected"


async def test_departure_with_the_target_missed(rig: Rig) -> None:
    rig.runner.accept(_request(target=100.0))  # 20 kWh: more than the cheap hour gives
    await rig.at(240)
    assert rig.names()[-1] == "target_missed"
    assert rig.events[-1][1]["reason"] == "departure"
    assert rig.runner.active is None


async def test_a_restart_resumes_the_stored_schedule(rig: Rig, tmp_path: Path) -> None:
    rig.runner.accept(_request())
    with CommandStore(tmp_path / "c.db") as store:
        again = Rig(store)
        again.now = (T0 + timedelta(minutes=95)).timestamp()
        await again.runner._resume()
        await again.runner.tick()
    assert again.names() == ["plan_accepted", "slot_started"]
    assert again.events[0][1]["reason"] == "resumed_after_restart"
    assert again.requests == [True]


async def test_state_of_charge_drift_replans(rig: Rig) -> None:
    rig.runner.accept(_request())
    await rig.at(95)
    rig.values[SOC] = 55.0  # behind the plan by far more than 3 %
    await rig.at(100)
    replans = [d for n, d in rig.events if n == "plan_accepted"]
    assert replans[-1]["reason"] == "soc_drift"
