"""Alerts in the daemon: a leaking tyre raises an alert event and shows in P/state."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.support.brokers import Broker, Daemon, Subscriber, running


def test_a_leaking_tyre_raises_an_alert(
    broker: Broker, make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    scenario = tmp_path / "leak.yaml"
    # Rear right loses 1.2 bar a minute: from 2.4 bar it is under 2.2 bar in 10 s.
    scenario.write_text("mode: parked\ntyre_leak_bar_per_h: {rear_right: 72}\n")
    sub = Subscriber(broker.port)
    daemon = make_daemon(broker.port, scenario=str(scenario))
    daemon.config.write_text(daemon.config.read_text().replace("    for_s: 30\n", "    for_s: 3\n"))
    with running(daemon):
        event = sub.wait_for("events", lambda m: m.json()["type"] == "alert", timeout=40).json()
        state = sub.wait_for("state", lambda m: m.json().get("alerts")).json()
    sub.close()
    assert event["name"] == "tyre_pressure_low_rear_right"
    assert event["data"]["state"] == "raised" and event["data"]["severity"] == "warning"
    pressure = event["data"]["values"]["Vehicle.Chassis.Axle.Row2.Wheel.Right.Tire.Pressure"]
    assert pressure < 220
    assert state["alerts"] == ["tyre_pressure_low_rear_right"]
