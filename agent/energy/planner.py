"""The smart-charging planner: the cheapest schedule that reaches a target state of charge by
departure. A pure function over plain data.

Energy drawn from the grid in a slot is at most `max_power_kw` times its length; the battery
gains that times `efficiency`; cost is price times drawn energy. The cost is linear and each
tariff interval caps the energy it can give, so filling the cheapest intervals first is
optimal (the tests check this against an independent linear-programming solver). Ties go to
the later interval, and a partly used interval is used at its end: less time sitting at a
high state of charge. Intervals are clipped to [now, departure]; gaps in the tariff have no
price and are never used; the plan never draws more than the target needs, even at negative
prices. When the target cannot be reached, `feasible` is false and the plan takes every
usable interval in full: the most energy, which then also costs what it costs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

MAX_INTERVALS = 1000
MAX_SPAN = timedelta(days=7)
_EPS_KWH = 1e-9


def _aware(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("give a time zone, e.g. 2026-11-25T22:00:00Z")
    return value.astimezone(UTC)


Moment = Annotated[datetime, AfterValidator(_aware)]


class TariffInterval(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    start: Moment
    end: Moment
    price: Annotated[float, Field(allow_inf_nan=False)]


def check_tariff(tariff: list[TariffInterval]) -> None:
    """Ordered, non-overlapping, at most 7 days and 1,000 intervals; ValueError otherwise."""
    if len(tariff) > MAX_INTERVALS:
        raise ValueError(f"at most {MAX_INTERVALS} tariff intervals")
    for i, interval in enumerate(tariff):
        if interval.end <= interval.start:
            raise ValueError(f"tariff[{i}] ends before it starts")
        if i and interval.start < tariff[i - 1].end:
            raise ValueError(
                f"tariff[{i}] starts before tariff[{i - 1}] ends (unordered or overlapping)"
            )
    if tariff and tariff[-1].end - tariff[0].start > MAX_SPAN:
        raise ValueError("the tariff spans more than 7 days")


class Problem(BaseModel):
    """The `plan-charge` input (INTERFACE section 6)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    now: Moment
    departure: Moment
    soc_pct: Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)]
    target_soc_pct: Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)]
    capacity_kwh: Annotated[float, Field(gt=0, le=1000, allow_inf_nan=False)]
    max_power_kw: Annotated[float, Field(gt=0, le=1000, allow_inf_nan=False)]
    efficiency: Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)] = 1.0
    tariff: list[TariffInterval]

    @model_validator(mode="after")
    def _tariff_shape(self) -> Problem:
        check_tariff(self.tariff)
        return self

    @property
    def grid_energy_needed_kwh(self) -> float:
        gain = max(0.0, self.target_soc_pct - self.soc_pct) / 100.0 * self.capacity_kwh
        return gain / self.efficiency


@dataclass(frozen=True, slots=True)
class Slot:
    start: datetime
    end: datetime
    power_kw: float
    price: float

    @property
    def energy_kwh(self) -> float:
        return self.power_kw * (self.end - self.start).total_seconds() / 3600.0


@dataclass(frozen=True, slots=True)
class Plan:
    feasible: bool
    energy_kwh: float
    cost: float
    slots: tuple[Slot, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "feasible": self.feasible,
            "energy_kwh": round(self.energy_kwh, 6),
            "cost": round(self.cost, 6),
            "slots": [
                {
                    "start": s.start.isoformat(),
                    "end": s.end.isoformat(),
                    "power_kw": round(s.power_kw, 6),
                }
                for s in self.slots
            ],
        }


def plan(problem: Problem) -> Plan:
    need = problem.grid_energy_needed_kwh
    power = problem.max_power_kw
    usable = []
    for interval in problem.tariff:
        start = max(interval.start, problem.now)
        end = min(interval.end, problem.departure)
        if end > start:
            usable.append((interval.price, start, end))
    # Cheapest first; among equal prices the later interval first.
    usable.sort(key=lambda item: (item[0], -item[1].timestamp()))
    remaining = need
    chosen: list[Slot] = []
    for price, start, end in usable:
        if remaining <= _EPS_KWH:
            break
        hours = (end - start).total_seconds() / 3600.0
        capacity = power * hours
        if capacity <= remaining:
            chosen.append(Slot(start, end, power, price))
            remaining -= capacity
        else:
            # Just enough, at the end of the interval (closest to departure).
            length = timedelta(seconds=remaining / power * 3600.0)
            chosen.append(Slot(max(start, end - length), end, power, price))
            remaining = 0.0
    energy = sum(s.energy_kwh for s in chosen)
    cost = sum(s.energy_kwh * s.price for s in chosen)
    feasible = remaining <= max(_EPS_KWH, 1e-9 * need) and math.isfinite(energy)
    return Plan(feasible, energy, cost, tuple(sorted(chosen, key=lambda s: s.start)))
