"""The charge planner against an independent linear-programming optimum, and by hand."""

from __future__ import annotations

import itertools
import json
import random
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from scipy.optimize import linprog

from agent.energy.planner import Plan, Problem, TariffInterval, plan

T0 = datetime(2026, 11, 25, 18, 0, tzinfo=UTC)


def _problem(rng: random.Random) -> Problem:
    tariff = []
    t = T0 - timedelta(minutes=rng.choice([0, 0, 30, 90]))  # sometimes partly in the past
    for _ in range(rng.randint(0, 30)):
        t += timedelta(minutes=rng.choice([0, 0, 0, 15, 60]))  # gaps now and then
        length = timedelta(minutes=rng.choice([5, 15, 30, 60, 120, 37]))
        price = rng.choice([round(rng.uniform(-0.1, 0.6), 3), 0.25, 0.12])  # some equal prices
        tariff.append(TariffInterval(start=t, end=t + length, price=price))
        t += length
    return Problem(
        now=T0,
        departure=T0 + timedelta(minutes=rng.randint(0, 24 * 60)),
        soc_pct=rng.uniform(0, 100),
        target_soc_pct=rng.uniform(0, 100),
        capacity_kwh=rng.choice([40, 60, 82.5]),
        max_power_kw=rng.choice([3.7, 7.4, 11, 22]),
        efficiency=rng.uniform(0.8, 1.0),
        tariff=tariff,
    )


def _reference(problem: Problem) -> tuple[float, float]:
    """(max reachable grid energy, optimal cost), by linear programming: one variable per
    usable interval (grid kWh in it), bounded by power x clipped length; minimise cost with
    the total energy fixed to min(need, everything available)."""
    caps, prices = [], []
    for iv in problem.tariff:
        start, end = max(iv.start, problem.now), min(iv.end, problem.departure)
        if end > start:
            caps.append(problem.max_power_kw * (end - start).total_seconds() / 3600)
            prices.append(iv.price)
    need = problem.grid_energy_needed_kwh
    energy = min(need, sum(caps))
    if not caps or energy <= 0:
        return 0.0, 0.0
    result = linprog(
        c=np.array(prices),
        A_eq=np.ones((1, len(caps))),
        b_eq=[energy],
        bounds=[(0, cap) for cap in caps],
        method="highs",
    )
    assert result.success, result.message
    return energy, float(result.fun)


def _check_slots(problem: Problem, result: Plan) -> None:
    windows = [
        (max(iv.start, problem.now), min(iv.end, problem.departure)) for iv in problem.tariff
    ]
    for slot in result.slots:
        assert slot.power_kw <= problem.max_power_kw + 1e-9
        assert slot.start >= problem.now and slot.end <= problem.departure
        assert any(a <= slot.start and slot.end <= b for a, b in windows), slot


def test_a_thousand_random_problems_match_the_lp_optimum() -> None:
    rng = random.Random(20261125)
    infeasible = 0
    for _ in range(1000):
        problem = _problem(rng)
        result = plan(problem)
        energy, cost = _reference(problem)
        need = problem.grid_energy_needed_kwh
        assert result.energy_kwh == pytest.approx(energy, rel=1e-6, abs=1e-6)
        assert result.cost == pytest.approx(cost, rel=1e-6, abs=1e-6)
        if result.feasible:
            assert result.energy_kwh >= need - 1e-6  # the target is met
        else:
            infeasible += 1
            assert energy < need  # and then it is the most energy there is
        _check_slots(problem, result)
    assert 50 < infeasible < 950  # both kinds were exercised


def _simple(prices: list[float], **kwargs: object) -> Problem:
    tariff = [
        TariffInterval(start=T0 + timedelta(hours=i), end=T0 + timedelta(hours=i + 1), price=p)
        for i, p in enumerate(prices)
    ]
    base: dict[str, object] = {
        "now": T0,
        "departure": T0 + timedelta(hours=len(prices)),
        "soc_pct": 50,
        "target_soc_pct": 60,
        "capacity_kwh": 100,
        "max_power_kw": 10,
        "efficiency": 1.0,
        "tariff": tariff,
    }
    base.update(kwargs)
    return Problem.model_validate(base)


def test_a_negative_price_is_used_but_never_past_the_target() -> None:
    result = plan(_simple([0.3, -0.05, 0.2], target_soc_pct=55))  # 5 kWh needed
    assert result.feasible and result.energy_kwh == pytest.approx(5.0)
    assert result.cost == pytest.approx(-0.25)
    (slot,) = result.slots
    assert slot.start == T0 + timedelta(hours=1, minutes=30)  # the end of the cheap hour
    assert slot.end == T0 + timedelta(hours=2)


def test_equal_prices_the_later_slot_wins() -> None:
    result = plan(_simple([0.2, 0.2, 0.2]))  # 10 kWh: exactly one hour
    assert [(s.start, s.end) for s in result.slots] == [
        (T0 + timedelta(hours=2), T0 + timedelta(hours=3))
    ]


def test_a_tariff_gap_is_never_used() -> None:
    tariff = [
        TariffInterval(start=T0, end=T0 + timedelta(hours=1), price=0.4),
        TariffInterval(start=T0 + timedelta(hours=3), end=T0 + timedelta(hours=4), price=0.4),
    ]
    problem = _simple(
        [], tariff=tariff, departure=T0 + timedelta(hours=4), target_soc_pct=75
    )  # 25 kWh needed, 20 available
    result = plan(problem)
    assert not result.feasible and result.energy_kwh == pytest.approx(20.0)
    assert all(
        not (T0 + timedelta(hours=1) < s.end and s.start < T0 + timedelta(hours=3))
        for s in result.slots
    )


def test_departure_before_the_first_slot() -> None:
    tariff = [TariffInterval(start=T0 + timedelta(hours=5), end=T0 + timedelta(hours=6), price=0.1)]
    result = plan(_simple([], tariff=tariff, departure=T0 + timedelta(hours=2)))
    assert (result.feasible, result.slots, result.energy_kwh) == (False, (), 0.0)


def test_target_already_reached() -> None:
    result = plan(_simple([0.1, 0.2], soc_pct=85, target_soc_pct=80))
    assert (result.feasible, result.slots, result.cost) == (True, (), 0.0)


def test_efficiency_counts_against_the_grid() -> None:
    result = plan(_simple([0.1, 0.1], efficiency=0.8))  # 10 kWh into the battery
    assert result.energy_kwh == pytest.approx(12.5)


@pytest.mark.parametrize(
    ("tariff", "message"),
    [
        (
            [
                {"start": "2026-11-25T19:00:00Z", "end": "2026-11-25T20:00:00Z", "price": 0.1},
                {"start": "2026-11-25T18:00:00Z", "end": "2026-11-25T19:00:00Z", "price": 0.1},
            ],
            "unordered or overlapping",
        ),
        (
            [{"start": "2026-11-25T19:00:00Z", "end": "2026-11-25T18:00:00Z", "price": 0.1}],
            "ends before it starts",
        ),
        (
            [{"start": "2026-11-25T18:00:00Z", "end": "2026-12-03T19:00:00Z", "price": 0.1}],
            "more than 7 days",
        ),
        (
            [{"start": "2026-11-25T18:00:00Z", "end": "2026-11-25T19:00:00Z", "price": "NaN"}],
            "finite",
        ),
        (
            [{"start": "2026-11-25T18:00:00", "end": "2026-11-25T19:00:00Z", "price": 0.1}],
            "time zone",
        ),
    ],
)
def test_plan_charge_cli_refuses_bad_tariffs(
    tmp_path: object, tariff: list[object], message: str
) -> None:
    body = {
        "now": "2026-11-25T18:00:00Z",
        "departure": "2026-11-26T07:00:00Z",
        "soc_pct": 35,
        "target_soc_pct": 80,
        "capacity_kwh": 60,
        "max_power_kw": 11,
        "efficiency": 0.9,
        "tariff": tariff,
    }
    result = subprocess.run(
        [sys.executable, "-m", "agent", "plan-charge", "--input", "-"],
        input=json.dumps(body),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_plan_charge_cli_prints_the_plan() -> None:
    body = {
        "now": "2026-11-25T18:00:00Z",
        "departure": "2026-11-26T07:00:00Z",
        "soc_pct": 35,
        "target_soc_pct": 80,
        "capacity_kwh": 60,
        "max_power_kw": 11,
        "efficiency": 0.9,
        "tariff": [
            {"start": "2026-11-25T18:00:00Z", "end": "2026-11-25T22:00:00Z", "price": 0.31},
            {"start": "2026-11-25T22:00:00Z", "end": "2026-11-26T06:00:00Z", "price": 0.12},
        ],
    }
    result = subprocess.run(
        [sys.executable, "-m", "agent", "plan-charge", "--input", "-"],
        input=json.dumps(body),
        capture_output=True,
        text=True,
        check=True,
    )
    out = json.loads(result.stdout)
    assert out["feasible"] is True
    assert out["energy_kwh"] == pytest.approx(30.0) and out["cost"] == pytest.approx(3.6)
    assert out["slots"][0]["end"] == "2026-11-26T06:00:00+00:00"
    assert out["slots"][0]["power_kw"] == 11.0


# --- grid limits and carbon intensity (INTERFACE section 6 and 8) ---------------------------


def _grid_problem(rng: random.Random) -> Problem:
    base = _problem(rng)
    tariff = [
        TariffInterval(
            start=iv.start, end=iv.end, price=iv.price, co2_g_per_kwh=rng.uniform(20, 700)
        )
        for iv in base.tariff
    ]
    limits = []
    for _ in range(rng.randint(0, 6)):
        start = T0 + timedelta(minutes=rng.randint(-60, 24 * 60))
        length = timedelta(minutes=rng.choice([10, 30, 45, 60, 180]))
        power = rng.choice([0.0, 0.0, 1.4, 3.7, 5.0, 50.0])  # 0 pauses; 50 caps nothing
        limits.append({"start": start, "end": start + length, "max_power_kw": power})
    return Problem.model_validate(
        {
            **base.model_dump(exclude={"tariff"}),
            "tariff": tariff,
            "limits": limits,
            "co2_weight": rng.choice([0.0, 0.05, 0.3, 2.0]),
        }
    )


def _grid_reference(problem: Problem) -> tuple[float, float]:
    """(max reachable grid energy, optimal objective) by linear programming, written apart
    from the planner: time is cut at every boundary of anything (tariff, limits, now,
    departure) and each elementary segment gets one variable, capped by the lowest power
    allowed at its midpoint."""
    moments = {problem.now, problem.departure}
    for iv in problem.tariff:
        moments |= {iv.start, iv.end}
    for limit in problem.limits:
        moments |= {limit.start, limit.end}
    edges = sorted(m for m in moments if problem.now <= m <= problem.departure)
    caps, rates = [], []
    for a, b in itertools.pairwise(edges):
        mid = a + (b - a) / 2
        covering = [iv for iv in problem.tariff if iv.start <= mid < iv.end]
        if not covering:
            continue
        (iv,) = covering
        power = min(
            [problem.max_power_kw]
            + [lim.max_power_kw for lim in problem.limits if lim.start <= mid < lim.end]
        )
        caps.append(power * (b - a).total_seconds() / 3600)
        rates.append(iv.price + problem.co2_weight * (iv.co2_g_per_kwh or 0) / 1000)
    energy = min(problem.grid_energy_needed_kwh, sum(caps))
    if not caps or energy <= 0:
        return 0.0, 0.0
    result = linprog(
        c=np.array(rates),
        A_eq=np.ones((1, len(caps))),
        b_eq=[energy],
        bounds=[(0, cap) for cap in caps],
        method="highs",
    )
    assert result.success, result.message
    return energy, float(result.fun)


def test_a_thousand_problems_with_limits_and_co2_match_the_lp_optimum() -> None:
    rng = random.Random(16)
    infeasible = limited = 0
    for _ in range(1000):
        problem = _grid_problem(rng)
        result = plan(problem)
        energy, objective = _grid_reference(problem)
        need = problem.grid_energy_needed_kwh
        co2_kg = result.co2_kg if result.slots else 0.0
        assert co2_kg is not None
        assert result.energy_kwh == pytest.approx(energy, rel=1e-6, abs=1e-6)
        mine = result.cost + problem.co2_weight * co2_kg
        assert mine == pytest.approx(objective, rel=1e-6, abs=1e-6)
        if result.feasible:
            assert result.energy_kwh >= need - 1e-6
        else:
            infeasible += 1
            assert energy < need - 1e-9  # the LP cannot reach it either
        _check_slots(problem, result)
        for slot in result.slots:  # no limit is ever exceeded
            for limit in problem.limits:
                if limit.start < slot.end and slot.start < limit.end:
                    assert slot.power_kw <= limit.max_power_kw + 1e-9, (slot, limit)
                    limited += limit.max_power_kw < problem.max_power_kw
    assert 50 < infeasible < 950
    assert limited > 100  # limits really cut power in many plans


def test_a_zero_limit_pauses_and_the_plan_moves_around_it() -> None:
    limits = [{"start": T0 + timedelta(hours=1), "end": T0 + timedelta(hours=2), "max_power_kw": 0}]
    result = plan(_simple([0.3, 0.1, 0.2], limits=limits))  # 10 kWh; the cheap hour is closed
    assert result.feasible
    assert [(s.start, s.end, s.price) for s in result.slots] == [
        (T0 + timedelta(hours=2), T0 + timedelta(hours=3), 0.2)
    ]


def test_a_partial_limit_caps_power_inside_one_interval() -> None:
    limits = [
        {"start": T0 + timedelta(minutes=30), "end": T0 + timedelta(hours=1), "max_power_kw": 4}
    ]
    result = plan(_simple([0.1, 0.5], limits=limits, target_soc_pct=57))  # 7 kWh needed
    # The cheap hour gives 10 x 0.5 + 4 x 0.5 = 7 kWh: exactly the need, nothing dearer.
    assert result.feasible and result.cost == pytest.approx(0.7)
    assert [(s.start, s.end, s.power_kw) for s in result.slots] == [
        (T0, T0 + timedelta(minutes=30), 10),
        (T0 + timedelta(minutes=30), T0 + timedelta(hours=1), 4),
    ]


def test_co2_weight_trades_price_for_cleaner_power() -> None:
    tariff = [
        TariffInterval(start=T0, end=T0 + timedelta(hours=1), price=0.10, co2_g_per_kwh=600),
        TariffInterval(
            start=T0 + timedelta(hours=1), end=T0 + timedelta(hours=2), price=0.15, co2_g_per_kwh=50
        ),
    ]
    cheap = plan(_simple([], tariff=tariff, departure=T0 + timedelta(hours=2)))
    assert cheap.slots[0].start == T0 and cheap.co2_kg == pytest.approx(6.0)
    # 0.2 per kg: the dirty hour costs 0.10 + 0.12, the clean one 0.15 + 0.01.
    clean = plan(_simple([], tariff=tariff, departure=T0 + timedelta(hours=2), co2_weight=0.2))
    assert clean.slots[0].start == T0 + timedelta(hours=1)
    assert clean.co2_kg == pytest.approx(0.5) and clean.cost == pytest.approx(1.5)


def test_co2_weight_needs_an_intensity_on_every_interval() -> None:
    with pytest.raises(ValueError, match=r"tariff\[0\] has no co2_g_per_kwh"):
        _simple([0.1], co2_weight=1.0)


def test_plan_charge_cli_with_co2_and_limits_gives_the_worked_example() -> None:
    """docs/energy.md's worked example, through the CLI: the windy morning within its limits,
    the rest from the end of the night, and the CO2 of it."""
    body = json.loads(
        """{"now": "2026-11-25T18:00:00Z", "departure": "2026-11-26T07:00:00Z",
        "soc_pct": 35, "target_soc_pct": 80, "capacity_kwh": 60, "max_power_kw": 11,
        "efficiency": 0.9, "co2_weight": 0.1,
        "tariff": [
         {"start": "2026-11-25T18:00:00Z", "end": "2026-11-25T22:00:00Z", "price": 0.31,
          "co2_g_per_kwh": 420},
         {"start": "2026-11-25T22:00:00Z", "end": "2026-11-26T02:00:00Z", "price": 0.12,
          "co2_g_per_kwh": 380},
         {"start": "2026-11-26T02:00:00Z", "end": "2026-11-26T06:00:00Z", "price": 0.14,
          "co2_g_per_kwh": 90}],
        "limits": [
         {"start": "2026-11-26T03:00:00Z", "end": "2026-11-26T04:00:00Z", "max_power_kw": 0},
         {"start": "2026-11-26T04:00:00Z", "end": "2026-11-26T05:00:00Z", "max_power_kw": 3.7}]}"""
    )
    result = subprocess.run(
        [sys.executable, "-m", "agent", "plan-charge", "--input", "-"],
        input=json.dumps(body),
        capture_output=True,
        text=True,
        check=True,
    )
    out = json.loads(result.stdout)
    assert (out["feasible"], out["energy_kwh"], out["cost"], out["co2_kg"]) == (
        True,
        30.0,
        4.114,
        3.947,
    )
    assert [(s["start"][11:16], s["end"][11:16], s["power_kw"]) for s in out["slots"]] == [
        ("01:36", "02:00", 11.0),
        ("02:00", "03:00", 11.0),
        ("04:00", "05:00", 3.7),
        ("05:00", "06:00", 11.0),
    ]
