"""The executor at its seams (transmit, values, clock): failure and timeout paths that a
healthy virtual bus never produces."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import can
import pytest

from agent import config
from agent.commands import definitions
from agent.commands.auth import Verifier
from agent.commands.executor import Executor
from agent.commands.store import CommandStore
from agent.errors import AgentError
from agent.uplink.outbox import Outbox
from agent.vehicle import dbc
from tests.support.agents import Key, trust_entry
from tests.support.configs import demo_text


def _setup(tmp_path: Path) -> tuple[dbc.Vehicle, Key]:
    key = Key("fleet-app")
    text = demo_text("unit").replace(
        "  trust: []", "  trust:\n" + trust_entry(key).rstrip("\n") + "\n  #"
    )
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return dbc.load_vehicle(config.load(path)), key


async def _run_one(
    tmp_path: Path, transmit: Any, values: dict[str, Any], token_of: Any
) -> list[dict[str, Any]]:
    vehicle, key = _setup(tmp_path)
    settings = vehicle.loaded.settings
    with Outbox(tmp_path / "o.db") as outbox, CommandStore(tmp_path / "c.db") as store:
        executor = Executor(
            verifier=Verifier.from_settings(settings.vehicle_id, settings.commands),
            commands=definitions.resolve(vehicle),
            store=store,
            outbox=outbox,
            notify=lambda: None,
            values=lambda: values,
            transmit=transmit,
            request_state=lambda: None,
        )
        task = asyncio.ensure_future(executor.run())
        executor.on_request(token_of(key, settings.vehicle_id))
        for _ in range(200):
            await asyncio.sleep(0.05)
            bodies = [json.loads(r.payload) for r in outbox.pending(100)]
            if any(b["status"] not in ("accepted",) for b in bodies):
                break
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return [json.loads(r.payload) for r in outbox.pending(100)]


PARKED = {
    "Vehicle.Powertrain.Transmission.IsParkLockEngaged": True,
    "Vehicle.Speed": 0.0,
    "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current": 60.0,
    "Vehicle.Cabin.HVAC.IsAirConditioningActive": False,
}


async def test_a_send_that_fails_reports_failed_with_detail(tmp_path: Path) -> None:
    def transmit(bus: str, frame: can.Message) -> None:
        raise AgentError("bus 'body' is down")

    bodies = await _run_one(
        tmp_path,
        transmit,
        PARKED,
        lambda key, car: key.token(car, "hvac.start", {"target_temp_c": 21}),
    )
    assert [b["status"] for b in bodies] == ["accepted", "failed"]
    assert "cannot send TCU_ClimateRequest on body: bus 'body' is down" in bodies[1]["detail"]


async def test_no_feedback_reports_timed_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[can.Message] = []
    monkeypatch.setattr(time, "monotonic", _fast_clock())
    bodies = await _run_one(
        tmp_path,
        lambda bus, frame: sent.append(frame),
        PARKED,
        lambda key, car: key.token(car, "hvac.start", {"target_temp_c": 21}),
    )
    assert [b["status"] for b in bodies] == ["accepted", "timed_out"]
    assert "IsAirConditioningActive" in bodies[1]["detail"]
    assert len(sent) == 3


def _fast_clock() -> Any:
    """monotonic() that runs 100x faster, so a 5 s feedback timeout passes in 50 ms."""
    real = time.monotonic
    start = real()
    return lambda: start + (real() - start) * 100
