"""The smart-charging planner: the cheapest schedule that reaches a target state of charge by
departure. A pure function over plain data.

Energy drawn from the grid in a slot is at most `max_power_kw` times its length, and less
where a grid limit (demand response) caps the power; the battery gains that times
`efficiency`. The objective per drawn kWh is the price plus `co2_weight` times the interval's
carbon intensity (kg): both linear. Tariff intervals are cut where a limit starts or ends, so
each piece has one price, one intensity and one power cap; the problem is then a fractional
knapsack and filling the pieces of lowest objective first is optimal (the tests check this
against an independent linear-programming solver). Ties go to the later piece, and a partly
used piece is used at its end: less time sitting at a high state of charge. Intervals are
clipped to [now, departure]; gaps in the tariff have no price and are never used; the plan
never draws more than the target needs, even at negative prices. When the target cannot be
reached, `feasible` is false and the plan takes every usable piece in full: the most energy,
which then also costs what it costs.
"""

from __future__ import annotations

import itertools
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
    # Carbon intensity of the grid's energy in the interval, g CO2 per kWh (optional).
    co2_g_per_kwh: Annotated[float, Field(ge=0, le=5000, allow_inf_nan=False)] | None = None


class Limit(BaseModel):
    """A cap on charging power from the grid (demand response); 0 pauses charging."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    start: Moment
    end: Moment
    max_power_kw: Annotated[float, Field(ge=0, le=1000, allow_inf_nan=False)]


def check_limits(limits: list[Limit]) -> None:
    """Each limit ends after it starts; at most 1,000. Overlaps are allowed: the lowest wins."""
    if len(limits) > MAX_INTERVALS:
        raise ValueError(f"at most {MAX_INTERVALS} limits")
    for i, limit in enumerate(limits):
        if limit.end <= limit.start:
            raise ValueError(f"limits[{i}] ends before it starts")


def power_cap(limits: list[Limit], start: datetime, end: datetime, max_power_kw: float) -> float:
    """The power allowed over [start, end), which no limit boundary may cut."""
    cap = max_power_kw
    for limit in limits:
        if limit.start < end and start < limit.end:
            cap = min(cap, limit.max_power_kw)
    return cap


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
    # Cost units per kg of CO2: how much a cleaner hour is worth against a cheaper one.
    co2_weight: Annotated[float, Field(ge=0, le=1e6, allow_inf_nan=False)] = 0.0
    limits: list[Limit] = []

    @model_validator(mode="after")
    def _shape(self) -> Problem:
        check_tariff(self.tariff)
        check_limits(self.limits)
        if self.co2_weight > 0:
            missing = [i for i, iv in enumerate(self.tariff) if iv.co2_g_per_kwh is None]
            if missing:
                raise ValueError(
                    f"co2_weight is set but tariff[{missing[0]}] has no co2_g_per_kwh "
                    f"({len(missing)} interval(s) without one)"
                )
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
    co2_g_per_kwh: float | None = None

    @property
    def energy_kwh(self) -> float:
        return self.power_kw * (self.end - self.start).total_seconds() / 3600.0


@dataclass(frozen=True, slots=True)
class Plan:
    feasible: bool
    energy_kwh: float
    cost: float
    slots: tuple[Slot, ...]

    @property
    def co2_kg(self) -> float | None:
        """CO2 of the drawn energy; None when an interval used has no intensity."""
        if any(s.co2_g_per_kwh is None for s in self.slots):
            return None
        return sum(s.energy_kwh * (s.co2_g_per_kwh or 0.0) for s in self.slots) / 1000.0

    def to_json(self) -> dict[str, Any]:
        co2 = self.co2_kg
        return {
            "feasible": self.feasible,
            "energy_kwh": round(self.energy_kwh, 6),
            "cost": round(self.cost, 6),
            **({"co2_kg": round(co2, 6)} if co2 is not None else {}),
            "slots": [
                {
                    "start": s.start.isoformat(),
                    "end": s.end.isoformat(),
                    "power_kw": round(s.power_kw, 6),
                }
                for s in self.slots
            ],
        }


def _pieces(problem: Problem) -> list[tuple[float, datetime, datetime, float, int]]:
    """Usable (objective per kWh, start, end, power cap, interval) pieces: tariff intervals
    clipped to [now, departure] and cut at every limit boundary inside them."""
    cuts = sorted({m for limit in problem.limits for m in (limit.start, limit.end)})
    pieces = []
    for index, interval in enumerate(problem.tariff):
        start = max(interval.start, problem.now)
        end = min(interval.end, problem.departure)
        if end <= start:
            continue
        rate = interval.price + problem.co2_weight * (interval.co2_g_per_kwh or 0.0) / 1000.0
        bounds = [start, *(c for c in cuts if start < c < end), end]
        for a, b in itertools.pairwise(bounds):
            power = power_cap(problem.limits, a, b, problem.max_power_kw)
            if power > 0:
                pieces.append((rate, a, b, power, index))
    return pieces


def _merged(chosen: list[tuple[int, Slot]]) -> tuple[Slot, ...]:
    """Adjacent pieces of one tariff interval at one power read as one slot."""
    out: list[tuple[int, Slot]] = []
    for index, slot in sorted(chosen, key=lambda c: c[1].start):
        if out and out[-1][0] == index:
            last = out[-1][1]
            if last.end == slot.start and last.power_kw == slot.power_kw:
                out[-1] = (
                    index,
                    Slot(last.start, slot.end, slot.power_kw, slot.price, slot.co2_g_per_kwh),
                )
                continue
        out.append((index, slot))
    return tuple(slot for _, slot in out)


def plan(problem: Problem) -> Plan:
    need = problem.grid_energy_needed_kwh
    usable = _pieces(problem)
    # Lowest objective first; among equals the later piece first.
    usable.sort(key=lambda item: (item[0], -item[1].timestamp()))
    remaining = need
    chosen: list[tuple[int, Slot]] = []
    for _rate, start, end, power, index in usable:
        if remaining <= _EPS_KWH:
            break
        hours = (end - start).total_seconds() / 3600.0
        capacity = power * hours
        if capacity <= remaining:
            length_start = start
            remaining -= capacity
        else:
            # Just enough, at the end of the piece (closest to departure).
            length = timedelta(seconds=remaining / power * 3600.0)
            length_start = max(start, end - length)
            remaining = 0.0
        interval = problem.tariff[index]
        slot = Slot(length_start, end, power, interval.price, interval.co2_g_per_kwh)
        chosen.append((index, slot))
    energy = sum(s.energy_kwh for _, s in chosen)
    cost = sum(s.energy_kwh * s.price for _, s in chosen)
    feasible = remaining <= max(_EPS_KWH, 1e-9 * need) and math.isfinite(energy)
    return Plan(feasible, energy, cost, _merged(chosen))
