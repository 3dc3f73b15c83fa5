"""A pipeline with no broker and no disk behind it, for holding the live way (reads of many
kernel frames) and the per-frame way to each other: `Records` keeps what each path published."""

from __future__ import annotations

import json
from typing import Any

from agent.uplink.pipeline import Pipeline
from agent.vehicle.compute import Computer
from agent.vehicle.dbc import Vehicle
from agent.vehicle.decode import build_decoders
from agent.vehicle.signals import Sampler, policies_of


class Records:
    """An outbox that keeps each path's published (ts, value) in order."""

    def __init__(self) -> None:
        self.by_path: dict[str, list[tuple[float, Any]]] = {}

    def append(self, kind: str, topic: str, payload: Any, **extra: Any) -> None:
        for sample in json.loads(payload(1))["samples"]:
            self.by_path.setdefault(sample["path"], []).append((sample["ts"], sample["value"]))


def recording_pipeline(vehicle: Vehicle, records: Records, batch: int) -> Pipeline:
    """The vehicle's decoders, policies and computed paths, writing batches of `batch`
    samples to `records`."""
    settings = vehicle.loaded.settings
    return Pipeline(
        vehicle_id="V",
        decoders=build_decoders(vehicle),
        sampler=Sampler(policies_of(settings.signals)),
        outbox=records,  # type: ignore[arg-type]
        settings=settings.telemetry.model_copy(update={"batch_max_samples": batch}),
        computer=Computer(settings.signals, vehicle.types),
    )
