"""Benchmark: the agent's decode path against a plain cantools `decode_message` loop.

Both decode the same frames: 120 simulated seconds of the reference vehicle driving,
repeated to about 200,000 frames. The baseline is what a straightforward agent does: look the
message up, decode every signal with choices, then keep the mapped ones. The agent decodes
only mapped signals with a plan per frame id and applies the configured transforms.

    .venv/bin/python bench/decode.py            # prints a Markdown table row per path
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import can
import cantools

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent import config  # noqa: E402
from agent.campaigns.engine import CampaignEngine  # noqa: E402
from agent.config import Transform  # noqa: E402
from agent.sim.runner import record  # noqa: E402
from agent.sim.scenario import load_scenario  # noqa: E402
from agent.vehicle import dbc  # noqa: E402
from agent.vehicle.decode import build_decoders  # noqa: E402
from agent.vehicle.model import Sample  # noqa: E402


def _apply(transform: object, value: object) -> object:
    """The configured transform on a cantools value (NamedSignalValue for choices)."""
    if not isinstance(transform, Transform):
        return str(value) if hasattr(value, "name") else value
    if transform.linear is not None:
        return value * transform.linear.scale + transform.linear.offset  # type: ignore[operator]
    table = transform.map or {}
    key = value.name if hasattr(value, "name") else value
    found = table.get(key)
    if found is None and hasattr(value, "value"):
        found = table.get(value.value)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5, help="best of N runs")
    args = parser.parse_args()

    vehicle = dbc.load_vehicle(config.load(ROOT / "config" / "demo.yaml"))
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "drive.log"
        record(vehicle, load_scenario("driving"), log, duration_s=120, start_ts=1.7e9)
        base = list(can.LogReader(str(log)))
    frames = (base * (args.frames // len(base) + 1))[: args.frames]

    decoders = build_decoders(vehicle)
    channel_bus = {b.settings.channel: name for name, b in vehicle.buses.items()}
    routed = [(decoders[channel_bus[str(m.channel)]], m) for m in frames]

    dbs = {
        name: cantools.database.load_file(str(b.settings.dbc[0]))
        for name, b in vehicle.buses.items()
    }
    # The baseline's mapping: DBC signal name -> (path, transform) per bus, applied after a
    # full decode_message with choices, producing the same samples as the agent.
    wanted: dict[str, dict[str, list[tuple[str, object]]]] = {name: {} for name in dbs}
    for m in vehicle.mapped:
        wanted[m.bus].setdefault(m.signal.name, []).append((m.path, m.settings.transform))
    plain = [
        (dbs[channel_bus[str(m.channel)]], wanted[channel_bus[str(m.channel)]], m) for m in frames
    ]

    # The daemon's campaign tick runs every 0.1 s of traffic: both agent loops go through the
    # frames in slices of that many, so that the tapped one's pending list is emptied as often
    # as in the daemon (the tick's own work is timed apart below).
    per_tick = max(1, round(len(base) / 120 * 0.1))

    def slices(items: list[Any]) -> list[list[Any]]:
        return [items[i : i + per_tick] for i in range(0, len(items), per_tick)]

    routed_slices = slices(routed)

    def agent_path() -> int:
        out: list[object] = []
        for part in routed_slices:
            for decoder, msg in part:
                decoder.decode_into(msg, out)
        return len(out)

    def cantools_decode_only() -> int:
        count = 0
        for db, mapping, msg in plain:
            values = db.decode_message(msg.arbitration_id, msg.data)
            count += sum(1 for name in values if name in mapping)
        return count

    def cantools_path() -> int:
        out: list[Sample] = []
        for db, mapping, msg in plain:
            values = db.decode_message(msg.arbitration_id, msg.data)
            for name, value in values.items():
                for path, transform in mapping.get(name, ()):
                    result = _apply(transform, value)
                    if result is not None:
                        out.append(Sample(path, msg.timestamp, result))
        return len(out)

    # An idle campaign (its condition never holds): the decode plans of the frames that carry
    # the path it reads hand their samples to the engine's pending list (a list extend); the
    # other frames pay one attribute test. The engine's tick, ten times a second whatever the
    # traffic, moves them into the ring and the window and evaluates the condition: timed
    # apart below, as a share of a core. Same loop as the agent's path, other decoders.
    engine = _idle_campaign(frozenset(m.path for m in vehicle.mapped))
    tap_paths = engine.paths
    tapped_decoders = build_decoders(vehicle)
    for decoder in tapped_decoders.values():
        decoder.set_tap(tap_paths, engine.pending)
    routed_tapped = [(tapped_decoders[channel_bus[str(m.channel)]], m) for m in frames]
    tapped_slices = slices(routed_tapped)

    tick = engine.tick

    def agent_path_idle_campaign() -> int:
        out: list[object] = []
        pending = engine.pending
        for part in tapped_slices:
            for decoder, msg in part:
                decoder.decode_into(msg, out)
            pending.clear()  # what the tick absorbs, timed apart below
        return len(out)

    def engine_ticks() -> tuple[float, int]:
        """Seconds for ticks over the log's frames, each after 0.1 s of them (their samples
        tapped by the decode plans as in the daemon), and how many ticks."""
        spent, ticks, next_tick = 0.0, 0, 0.0
        engine.pending.clear()
        for decoder, msg in routed_tapped[:20_000]:
            scratch: list[Sample] = []
            decoder.decode_into(msg, scratch)
            if msg.timestamp >= next_tick or msg.timestamp < next_tick - 1.0:
                next_tick = msg.timestamp + 0.1
                started = time.perf_counter()
                tick()
                spent += time.perf_counter() - started
                ticks += 1
        return spent, ticks

    results = {}
    paths = (
        ("cantools decode_message, no output (lower bound)", cantools_decode_only),
        ("cantools decode_message loop + samples", cantools_path),
        ("agent decode plan + samples", agent_path),
        ("agent decode plan + samples, one idle campaign", agent_path_idle_campaign),
    )
    for name, func in paths:
        best = float("inf")
        samples = 0
        for _ in range(args.repeat):
            started = time.perf_counter()
            samples = func()
            best = min(best, time.perf_counter() - started)
        results[name] = (best, samples)

    base_time = results["cantools decode_message loop + samples"][0]
    tick_s, ticks = min(engine_ticks() for _ in range(args.repeat))
    print(
        f"Python {platform.python_version()}, cantools {cantools.__version__}, "
        f"{platform.machine()}, {len(frames):,} frames, best of {args.repeat}"
    )
    print()
    print("| path | frames/s | µs/frame | samples | speed-up |")
    print("|---|---:|---:|---:|---:|")
    for name, (seconds, samples) in results.items():
        print(
            f"| {name} | {len(frames) / seconds:,.0f} | {seconds / len(frames) * 1e6:.2f} "
            f"| {samples:,} | {base_time / seconds:.1f}x |"
        )
    per_tick = tick_s / ticks
    print()
    print(
        f"The idle campaign's engine tick (ten a second): {per_tick * 1e6:.1f} µs each, "
        f"{per_tick * 10 * 100:.3f} % of a core."
    )


def _idle_campaign(mapped: frozenset[str]) -> CampaignEngine:
    temp = "Vehicle.Powertrain.TractionBattery.Temperature.Average"

    class Store:
        def save_campaign(self, campaign_id: str, body: str | None) -> None: ...
        def note_trigger(self, campaign_id: str, ts: float) -> None: ...
        def load_campaigns(self) -> list[tuple[str, float | None]]:
            return []

    engine = CampaignEngine(
        mapped=mapped,
        store=Store(),
        publish=lambda *a: None,
        event=lambda *a: None,
        max_memory_bytes=1 << 30,
    )
    status, detail = engine.apply(
        {
            "campaign": {
                "id": "idle",
                "version": 1,
                "expires": "2099-01-01T00:00:00Z",
                "signals": [{"path": temp, "max_samples": 600}],
                "trigger": {"condition": f"avg({temp}, 10) > 200"},
                "pre_trigger_s": 10,
            }
        }
    )
    assert status == "succeeded", detail
    return engine


if __name__ == "__main__":
    main()
