"""The pipeline's two ways in give the same telemetry: python-can Messages one at a time
(`receiver_for`, every interface but SocketCAN) and the socket path's reads of many kernel
frames at once (`frames_receiver_for`), with computed paths, a campaign tap and batches that
fill up mid-read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import can

from agent.sim.runner import record
from agent.sim.scenario import load_scenario
from agent.uplink.pipeline import Pipeline
from agent.vehicle.compute import Computer
from agent.vehicle.dbc import Vehicle
from agent.vehicle.decode import build_decoders
from agent.vehicle.frames import key_of
from agent.vehicle.model import RawFrame, Sample
from agent.vehicle.signals import Sampler, policies_of

TAPPED = "Vehicle.Powertrain.TractionBattery.Temperature.Average"


class Records:
    """An outbox that keeps what it is given."""

    def __init__(self) -> None:
        self.samples: list[list[Any]] = []

    def append(self, kind: str, topic: str, payload: Any, **extra: Any) -> None:
        self.samples.append(json.loads(payload(1))["samples"])


def by_path(records: Records) -> dict[str, list[tuple[float, Any]]]:
    out: dict[str, list[tuple[float, Any]]] = {}
    for chunk in records.samples:
        for sample in chunk:
            out.setdefault(sample["path"], []).append((sample["ts"], sample["value"]))
    return out


def pipeline(vehicle: Vehicle, records: Records, taps: list[Sample]) -> Pipeline:
    settings = vehicle.loaded.settings
    telemetry = settings.telemetry.model_copy(update={"batch_max_samples": 7})
    built = Pipeline(
        vehicle_id="V",
        decoders=build_decoders(vehicle),
        sampler=Sampler(policies_of(settings.signals)),
        outbox=records,  # type: ignore[arg-type]
        settings=telemetry,
        computer=Computer(settings.signals, vehicle.types),
    )
    built.set_taps({TAPPED}, taps)
    return built


def test_reads_of_many_frames_publish_what_frames_one_by_one_do(
    demo_vehicle: Vehicle, tmp_path: Path
) -> None:
    log = tmp_path / "drive.log"
    record(demo_vehicle, load_scenario("driving"), log, duration_s=60, start_ts=1.7e9)
    by_channel = {b.settings.channel: name for name, b in demo_vehicle.buses.items()}
    messages = [(by_channel[str(m.channel)], m) for m in can.LogReader(str(log))]
    assert len(messages) > 1000

    one_records, one_taps = Records(), []
    one = pipeline(demo_vehicle, one_records, one_taps)
    per_frame = {name: one.receiver_for(name) for name in demo_vehicle.buses}
    for bus, msg in messages:
        per_frame[bus](msg)
    one.flush()

    many_records, many_taps = Records(), []
    many = pipeline(demo_vehicle, many_records, many_taps)
    per_read = {name: many.frames_receiver_for(name) for name in demo_vehicle.buses}
    pending: dict[str, list[RawFrame]] = {name: [] for name in demo_vehicle.buses}
    for index, (bus, msg) in enumerate(messages):
        can_id = msg.arbitration_id | (0x8000_0000 if msg.is_extended_id else 0)
        pending[bus].append((key_of(can_id), bytes(msg.data), msg.timestamp))
        if index % 37 == 0:  # reads of varying sizes, as the socket has them
            for name, frames in pending.items():
                if frames:
                    per_read[name](frames)
                    pending[name] = []
    for name, frames in pending.items():
        per_read[name](frames)
    many.flush()

    # Each bus is read apart (two sockets), so the buses' samples interleave differently in
    # the batches; each path's own published sequence is the same.
    assert by_path(many_records) == by_path(one_records)
    assert all(len(chunk) == 7 for chunk in many_records.samples[:-1])  # full batches
    assert many_taps == one_taps
    assert any(sample.path == TAPPED for sample in one_taps)
    assert many.sampler.values == one.sampler.values
    for name in demo_vehicle.buses:
        assert many.decoders[name].stats == one.decoders[name].stats
    assert many.computer is not None and one.computer is not None
    assert many.computer.stats == one.computer.stats and one.computer.stats.computed > 0


def test_a_tapped_computed_path_reaches_the_sink_both_ways(
    demo_vehicle: Vehicle, tmp_path: Path
) -> None:
    """A campaign may read a computed path (the battery's power from voltage and current):
    its samples reach the tap from either way in, and only the frames carrying an input of
    it are looked at."""
    computed = "Vehicle.Powertrain.TractionBattery.CurrentPower"
    log = tmp_path / "drive.log"
    record(demo_vehicle, load_scenario("driving"), log, duration_s=20, start_ts=1.7e9)
    by_channel = {b.settings.channel: name for name, b in demo_vehicle.buses.items()}
    messages = [(by_channel[str(m.channel)], m) for m in can.LogReader(str(log))]
    sinks: list[list[Sample]] = []
    for way in ("one", "many"):
        built = pipeline(demo_vehicle, Records(), [])
        sink: list[Sample] = []
        built.set_taps({computed}, sink)
        for bus, msg in messages:
            if way == "one":
                built.receiver_for(bus)(msg)
            else:
                can_id = msg.arbitration_id | (0x8000_0000 if msg.is_extended_id else 0)
                built.frames_receiver_for(bus)([(key_of(can_id), bytes(msg.data), msg.timestamp)])
        sinks.append(sink)
    assert sinks[0] == sinks[1]
    assert sinks[0] and {s.path for s in sinks[0]} == {computed}
