"""Alert rules on a synthetic timeline: duration, hysteresis, clearing."""

from __future__ import annotations

from agent.config import AlertSettings
from agent.maintenance.alerts import AlertEngine

P = "Vehicle.Chassis.Axle.Row1.Wheel.Left.Tire.Pressure"


def engine(**kwargs: object) -> AlertEngine:
    base: dict[str, object] = {
        "name": "tyre_low",
        "raise_when": f"{P} < 220",
        "clear_when": f"{P} > 230",
        "for_s": 30,
    }
    base.update(kwargs)
    return AlertEngine.from_settings([AlertSettings.model_validate(base)])


def run(alerts: AlertEngine, timeline: list[tuple[float, float | None]]) -> list[tuple[float, str]]:
    out = []
    for t, value in timeline:
        values = {} if value is None else {P: value}
        out += [(t, c.state) for c in alerts.evaluate(values, t)]
    return out


def test_raised_only_after_the_duration() -> None:
    alerts = engine()
    timeline = [(float(t), 215.0) for t in range(0, 40, 5)]
    assert run(alerts, timeline) == [(30.0, "raised")]
    assert alerts.active == ["tyre_low"]


def test_a_dip_shorter_than_the_duration_raises_nothing() -> None:
    alerts = engine()
    timeline = [(0.0, 215.0), (20.0, 215.0), (25.0, 221.0), (30.0, 215.0), (55.0, 215.0)]
    assert run(alerts, timeline) == []  # the clock restarted at 30 s
    assert run(alerts, [(60.0, 215.0)]) == [(60.0, "raised")]


def test_no_flapping_inside_the_hysteresis_band_then_clear() -> None:
    alerts = engine(for_s=0)
    timeline = [
        (0.0, 219.0),
        (1.0, 221.0),
        (2.0, 219.5),
        (3.0, 229.9),
        (4.0, 225.0),
        (5.0, 230.5),
        (6.0, 229.0),
        (7.0, 219.0),
    ]
    assert run(alerts, timeline) == [(0.0, "raised"), (5.0, "cleared"), (7.0, "raised")]


def test_an_unknown_signal_neither_raises_nor_clears() -> None:
    alerts = engine(for_s=0)
    assert run(alerts, [(0.0, None), (1.0, 210.0), (2.0, None)]) == [(1.0, "raised")]
    assert alerts.active == ["tyre_low"]


def test_default_clear_is_the_raise_condition_false() -> None:
    alerts = AlertEngine.from_settings(
        [AlertSettings(name="service_due", raise_when="Vehicle.Service.IsServiceDue == true")]
    )
    changes = []
    for t, due in ((0.0, False), (1.0, True), (2.0, True), (3.0, False)):
        changes += [(t, c.state) for c in alerts.evaluate({"Vehicle.Service.IsServiceDue": due}, t)]
    assert changes == [(1.0, "raised"), (3.0, "cleared")]


def test_reload_keeps_active_alerts_active() -> None:
    alerts = engine(for_s=0)
    run(alerts, [(0.0, 210.0)])
    alerts.replace_rules(engine(for_s=10))
    assert alerts.active == ["tyre_low"]
    assert run(alerts, [(1.0, 225.0)]) == []  # inside the band: still active, no event
