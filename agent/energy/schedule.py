"""Runs a `charging.schedule` on the car: plan, then charge only in the planned slots.

Every second: charge requests at slot boundaries; `target_reached` once the state of charge
is there; `target_missed` at departure if not; a re-plan when the cable is plugged back in,
when the state of charge drifts from the plan by more than `replan_drift_pct`, or when a new
schedule arrives. The request (departure, target, tariff) is kept in the command store, so a
restart resumes it (re-planned from the state of charge at that moment). Events go to
`P/events` with type `charging`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog

from agent.config import ChargingSettings
from agent.energy.grid import GridSignal
from agent.energy.planner import Plan, Problem, Slot, TariffInterval, plan
from agent.errors import StoreError

log = structlog.get_logger("agent.energy.schedule")

SOC = "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current"
CABLE = (
    "Vehicle.Powertrain.TractionBattery.Charging.ChargingPort.AnyPosition.IsChargingCableConnected"
)
DRIFT_REPLAN_EVERY_S = 60.0


@dataclass(slots=True)
class _Active:
    request: dict[str, Any]
    departure: datetime
    target: float
    plan: Plan
    planned_at: float
    soc_at_plan: float
    commanded: bool | None = None
    cable: bool | None = True
    last_replan: float = 0.0
    grid_tariff: list[TariffInterval] = field(default_factory=list)  # the grid's, last seen


def _slot_json(slot: Slot) -> dict[str, Any]:
    return {
        "start": slot.start.isoformat(),
        "end": slot.end.isoformat(),
        "power_kw": round(slot.power_kw, 3),
    }


class ScheduleStore(Protocol):
    """Where the request is kept across restarts (the command store implements it); both
    methods raise `StoreError`. A Protocol so that energy/ does not import commands/."""

    def save_schedule(self, body: str | None) -> None: ...

    def load_schedule(self) -> str | None: ...


class ScheduleRunner:
    def __init__(
        self,
        *,
        settings: ChargingSettings,
        store: ScheduleStore,
        values: Callable[[], Mapping[str, Any]],
        charge: Callable[[bool], Awaitable[str | None]],
        event: Callable[[str, dict[str, Any]], None],
        grid: Callable[[], GridSignal | None] = lambda: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._grid = grid
        self._store = store
        self._values = values
        self._charge = charge
        self._event = event
        self._clock = clock
        self.active: _Active | None = None

    # --- a new schedule (from the command handler; synchronous) -------------------------
    def accept(self, params: Mapping[str, Any]) -> tuple[str, str | None]:
        soc = self._values().get(SOC)
        if not isinstance(soc, int | float):
            return "failed", "the state of charge is not known yet"
        # Without a tariff of its own the schedule follows the grid signal's, now and at
        # every re-plan (a later signal re-plans it).
        tariff = params.get("tariff")
        if tariff is None and not self._grid_tariff():
            return "failed", "no tariff given, and no grid signal with a tariff"
        request = {
            "departure": params["departure"],
            "target_soc_pct": params["target_soc_pct"],
            "tariff": tariff,
        }
        try:
            self._store.save_schedule(json.dumps(request))
        except StoreError as exc:
            return "failed", f"cannot store the schedule: {exc}"
        self._start(request, float(soc), "new_schedule")
        assert self.active is not None
        result = self.active.plan
        detail = (
            None
            if result.feasible
            else "target not reachable by departure; charging as much as possible"
        )
        return "succeeded", detail

    def _start(self, request: dict[str, Any], soc: float, reason: str) -> None:
        previous = self.active
        self.active = _Active(
            request=request,
            departure=datetime.fromisoformat(request["departure"]).astimezone(UTC),
            target=float(request["target_soc_pct"]),
            plan=Plan(True, 0.0, 0.0, ()),
            planned_at=self._clock(),
            soc_at_plan=soc,
            commanded=previous.commanded if previous is not None else None,
        )
        self._replan(soc, reason)

    def _grid_tariff(self) -> list[TariffInterval]:
        signal = self._grid()
        return list(signal.tariff) if signal is not None else []

    def on_grid_change(self) -> None:
        """A new grid signal, or none any more: an active schedule is planned again."""
        active = self.active
        soc = self._values().get(SOC)
        if active is not None and isinstance(soc, int | float):
            self._replan(float(soc), "grid_signal", event="replan")

    def _problem(self, active: _Active, soc: float, now: float) -> Problem:
        own = active.request.get("tariff")
        if own is not None:
            tariff = [TariffInterval.model_validate(t) for t in own]
        else:
            # The grid's tariff; once the signal is gone (cleared, expired), the one it last
            # had, rather than no tariff and no charging.
            tariff = self._grid_tariff() or active.grid_tariff
            active.grid_tariff = tariff
        signal = self._grid()
        # CO2 counts only where every interval says how clean it is.
        weighted = all(iv.co2_g_per_kwh is not None for iv in tariff)
        return Problem(
            now=datetime.fromtimestamp(now, UTC),
            departure=active.departure,
            # A reading past the ends (a DBC's 102.3 % for raw 0x3FF) must not fail the plan.
            soc_pct=min(100.0, max(0.0, soc)),
            target_soc_pct=active.target,
            capacity_kwh=self._settings.capacity_kwh,
            max_power_kw=self._settings.max_power_kw,
            efficiency=self._settings.efficiency,
            tariff=tariff,
            co2_weight=self._settings.co2_weight if weighted else 0.0,
            limits=list(signal.limits) if signal is not None else [],
        )

    def _replan(self, soc: float, reason: str, *, event: str = "plan_accepted") -> None:
        active = self.active
        assert active is not None
        now = self._clock()
        active.plan = plan(self._problem(active, soc, now))
        active.planned_at, active.soc_at_plan, active.last_replan = now, soc, now
        self._event(
            event,
            {
                "reason": reason,
                "feasible": active.plan.feasible,
                "energy_kwh": round(active.plan.energy_kwh, 4),
                "cost": round(active.plan.cost, 4),
                "soc_pct": soc,
                "target_soc_pct": active.target,
                "slots": [_slot_json(s) for s in active.plan.slots],
            },
        )

    # --- running ---------------------------------------------------------------------------
    async def run(self) -> None:
        await self._resume()
        while True:
            await asyncio.sleep(1.0)
            await self.tick()

    async def _resume(self) -> None:
        try:
            saved = self._store.load_schedule()
        except StoreError as exc:
            log.error("schedule_not_loaded", error=str(exc))
            return
        if saved is None:
            return
        for _ in range(30):  # wait for the state of charge to be known after a start
            soc = self._values().get(SOC)
            if isinstance(soc, int | float):
                try:
                    self._start(json.loads(saved), float(soc), "resumed_after_restart")
                except (ValueError, KeyError, TypeError) as exc:  # a stored request gone bad
                    log.error("schedule_not_resumed", reason=str(exc).splitlines()[0])
                    self.active = None
                return
            await asyncio.sleep(1.0)
        log.error("schedule_not_resumed", reason="state of charge unknown")

    def _finish(self, name: str, data: dict[str, Any]) -> None:
        self._event(name, data)
        self.active = None
        try:
            self._store.save_schedule(None)
        except StoreError as exc:
            log.error("schedule_not_cleared", error=str(exc))

    async def _command(self, on: bool) -> None:
        active = self.active
        assert active is not None
        error = await self._charge(on)
        if error is not None:
            log.error("schedule_charge_request_failed", charging=on, error=error)
            return
        active.commanded = on

    async def tick(self) -> None:
        active = self.active
        if active is None:
            return
        now = self._clock()
        values = self._values()
        soc, cable = values.get(SOC), values.get(CABLE)
        moment = datetime.fromtimestamp(now, UTC)
        if isinstance(soc, int | float) and soc >= active.target - 1e-6:
            if active.commanded is not False:
                await self._command(False)
            self._finish("target_reached", {"soc_pct": soc, "target_soc_pct": active.target})
            return
        if moment >= active.departure:
            if active.commanded is not False:
                await self._command(False)
            self._finish(
                "target_missed",
                {"reason": "departure", "soc_pct": soc, "target_soc_pct": active.target},
            )
            return
        if cable is False:
            if active.cable is not False:
                self._event("replan", {"reason": "cable_disconnected", "soc_pct": soc})
                active.commanded = False  # the charger stops by itself
            active.cable = False
            return
        if cable is True and active.cable is False and isinstance(soc, int | float):
            active.cable = True
            self._replan(float(soc), "cable_connected")
        if isinstance(soc, int | float) and now - active.last_replan >= DRIFT_REPLAN_EVERY_S:
            expected = self._expected_soc(active, now)
            if abs(soc - expected) > self._settings.replan_drift_pct:
                self._replan(float(soc), "soc_drift")
        slot = next((s for s in active.plan.slots if s.start <= moment < s.end), None)
        if slot is not None and active.commanded is not True:
            await self._command(True)
            self._event("slot_started", _slot_json(slot))
        elif slot is None and active.commanded is not False:
            was_charging = active.commanded is True
            await self._command(False)
            if was_charging:
                self._event("slot_ended", {"at": moment.isoformat()})

    def state(self) -> dict[str, Any] | None:
        """The plan being run, for P/state."""
        active = self.active
        if active is None:
            return None
        return {
            "departure": active.departure.isoformat(),
            "target_soc_pct": active.target,
            "feasible": active.plan.feasible,
            "slots": [_slot_json(s) for s in active.plan.slots],
        }

    def _expected_soc(self, active: _Active, now: float) -> float:
        since = datetime.fromtimestamp(active.planned_at, UTC)
        until = datetime.fromtimestamp(now, UTC)
        kwh = 0.0
        for slot in active.plan.slots:
            start, end = max(slot.start, since), min(slot.end, until)
            if end > start:
                kwh += slot.power_kw * (end - start).total_seconds() / 3600.0
        gained = kwh * self._settings.efficiency / self._settings.capacity_kwh * 100.0
        return active.soc_at_plan + gained
