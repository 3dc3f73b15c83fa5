"""Benchmark: bytes a telemetry sample costs upstream, for each telemetry encoding.

An hour of the reference car driving (the simulator's `driving` scenario, recorded), decoded and
sampled by the agent's own decode plan and policies (config/demo.yaml), batched by frame time
as the daemon's batch timer does, then encoded as JSON, CBOR, and each with zstd. Bytes are the
MQTT payloads (topic and MQTT header not counted; they are the same for every encoding).

    .venv/bin/python bench/bytes.py            # prints a Markdown table
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
from pathlib import Path

import can

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent import config  # noqa: E402
from agent.sim.runner import record  # noqa: E402
from agent.sim.scenario import load_scenario  # noqa: E402
from agent.uplink.encoding import TelemetryEncoder, decode  # noqa: E402
from agent.uplink.pipeline import telemetry_payload  # noqa: E402
from agent.vehicle import dbc  # noqa: E402
from agent.vehicle.decode import build_decoders  # noqa: E402
from agent.vehicle.model import Sample  # noqa: E402
from agent.vehicle.signals import Sampler, policies_of  # noqa: E402


def batches(vehicle: dbc.Vehicle, log: Path, interval_s: float) -> list[list[Sample]]:
    decoders = build_decoders(vehicle)
    channel_bus = {b.settings.channel: name for name, b in vehicle.buses.items()}
    sampler = Sampler(policies_of(vehicle.loaded.settings.signals))
    out: list[list[Sample]] = []
    batch: list[Sample] = []
    due: float | None = None
    scratch: list[Sample] = []
    for msg in can.LogReader(str(log)):
        if due is None:
            due = msg.timestamp + interval_s
        while msg.timestamp >= due:  # the batch timer fired
            if batch:
                out.append(batch)
                batch = []
            due += interval_s
        scratch.clear()
        decoders[channel_bus[str(msg.channel)]].decode_into(msg, scratch)
        batch.extend(s for s in scratch if sampler.offer(s))
    if batch:
        out.append(batch)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=60)
    args = parser.parse_args()
    vehicle = dbc.load_vehicle(config.load(ROOT / "config" / "demo.yaml"))
    vehicle_id = "VIN0000000000000"
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "drive.log"
        record(vehicle, load_scenario("driving"), log, duration_s=args.minutes * 60, start_ts=1.8e9)
        runs = {s: batches(vehicle, log, s) for s in (1.0, 10.0, 60.0)}
    print(
        f"Python {platform.python_version()}, {platform.machine()}, "
        f"{args.minutes:g} minutes of the simulator driving, config/demo.yaml policies"
    )
    print()
    print("| batch interval | messages | samples | encoding | bytes | bytes/sample |")
    print("|---:|---:|---:|---|---:|---:|")
    for interval, chunks in runs.items():
        samples = sum(len(c) for c in chunks)
        for encoding in ("json", "cbor"):
            for compression in ("none", "zstd"):
                encoder = TelemetryEncoder(encoding, compression)  # type: ignore[arg-type]
                total = 0
                for seq, chunk in enumerate(chunks, start=1):
                    payload = telemetry_payload(vehicle_id, seq, chunk, encoder)
                    total += len(payload)
                    if seq == 1:  # every encoding carries the same content
                        plain = telemetry_payload(vehicle_id, seq, chunk)
                        assert decode(payload) == decode(plain)
                name = encoding + ("+zstd" if compression == "zstd" else "")
                print(
                    f"| {interval:g} s | {len(chunks):,} | {samples:,} | {name} | {total:,} "
                    f"| {total / samples:.1f} |"
                )


if __name__ == "__main__":
    main()
