"""`vehicle-agent replay`: a recorded CAN log through the daemon's own decode and sampling path.

Routing frames to buses: a single-bus configuration takes every frame. Otherwise a frame goes
to the bus whose `channel` or `name` equals the log's channel (or the one `--map-channel`
names); a frame from a channel that matches no bus goes to the first bus that maps its id.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import can

from agent.errors import AgentError
from agent.vehicle.compute import Computer, ComputeStats
from agent.vehicle.dbc import Vehicle, frame_key
from agent.vehicle.decode import Decoder, DecodeStats, build_decoders
from agent.vehicle.model import Sample
from agent.vehicle.signals import Sampler, policies_of


@dataclass(slots=True)
class ReplaySummary:
    frames: int = 0
    samples_written: int = 0
    seconds: float = 0.0
    log_span_s: float = 0.0
    by_bus: dict[str, DecodeStats] = field(default_factory=dict)
    computed: ComputeStats = field(default_factory=ComputeStats)

    def total(self, name: str) -> int:
        return sum(int(getattr(stats, name)) for stats in self.by_bus.values())

    def line(self) -> str:
        return (
            f"replay: {self.frames} frames ({self.log_span_s:.1f} s of log)"
            f" in {self.seconds:.2f} s;"
            f" decoded {self.total('decoded')}, unknown ids {self.total('unknown_id')},"
            f" short {self.total('short')}, error frames {self.total('error_frames')},"
            f" remote {self.total('remote_frames')}, failed {self.total('failed')};"
            f" unmapped values {self.total('unmapped_values')},"
            f" non-finite {self.total('nonfinite')}, invalid values"
            f" {self.total('invalid_values')}, out of range"
            f" {self.total('out_of_range') + self.computed.out_of_range};"
            f" computed {self.computed.computed};"
            f" samples written {self.samples_written}"
        )


class _Router:
    def __init__(self, vehicle: Vehicle, decoders: dict[str, Decoder], aliases: Mapping[str, str]):
        self._decoders = decoders
        self._single = next(iter(decoders.values())) if len(decoders) == 1 else None
        self._by_channel: dict[str, Decoder] = {}
        for name, bus in vehicle.buses.items():
            self._by_channel.setdefault(bus.settings.channel, decoders[name])
            self._by_channel.setdefault(name, decoders[name])
        for channel, bus_name in aliases.items():
            if bus_name not in decoders:
                raise AgentError(f"--map-channel {channel}={bus_name}: no bus named {bus_name!r}")
            self._by_channel[channel] = decoders[bus_name]
        self._by_key: dict[int, Decoder] = {}
        for decoder in decoders.values():
            for key in decoder.frame_keys:
                self._by_key.setdefault(key, decoder)
        self._fallback = next(iter(decoders.values()))

    def route(self, msg: can.Message) -> Decoder:
        if self._single is not None:
            return self._single
        found = self._by_channel.get(str(msg.channel)) if msg.channel is not None else None
        if found is not None:
            return found
        key = frame_key(msg.arbitration_id, msg.is_extended_id)
        return self._by_key.get(key, self._fallback)


def _position(reader_file: Any) -> int | None:
    """Bytes consumed so far of the log file, where the reader exposes it."""
    for candidate in (getattr(reader_file, "buffer", None), reader_file):
        try:
            if candidate is not None:
                return int(candidate.tell())
        except (OSError, ValueError, AttributeError):
            continue
    return None


class _Progress:
    """A progress line on stderr once a replay takes longer than a moment."""

    def __init__(self, stream: TextIO, size: int | None) -> None:
        self._stream = stream
        self._size = size
        self._tty = stream.isatty()
        self._start = time.monotonic()
        self._next = self._start + 1.0
        self._shown = False

    def tick(self, frames: int, position: int | None) -> None:
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + (0.25 if self._tty else 5.0)
        elapsed = now - self._start
        text = f"replay: {frames} frames, {frames / elapsed:,.0f}/s"
        if position is not None and self._size:
            text += f", {min(100.0, 100.0 * position / self._size):.0f}%"
        self._stream.write(f"\r{text}   " if self._tty else f"{text}\n")
        self._stream.flush()
        self._shown = True

    def done(self) -> None:
        if self._shown and self._tty:
            self._stream.write("\n")


def replay(
    vehicle: Vehicle,
    log: Path,
    out: TextIO,
    *,
    every_frame: bool = False,
    channel_map: Mapping[str, str] | None = None,
    progress: TextIO | None = None,
) -> ReplaySummary:
    """Decode `log` and write JSON Lines samples to `out`; return the counts."""
    if not log.exists():
        raise AgentError(f"log file not found: {log}")
    decoders = build_decoders(vehicle)
    router = _Router(vehicle, decoders, channel_map or {})
    sampler = Sampler(policies_of(vehicle.loaded.settings.signals))
    computer = Computer(vehicle.loaded.settings.signals, vehicle.types)
    feed = computer.feed if computer else None
    summary = ReplaySummary(by_bus={name: d.stats for name, d in decoders.items()})
    summary.computed = computer.stats
    size = log.stat().st_size
    meter = _Progress(progress, size) if progress is not None else None
    dumps = json.dumps
    path_json: dict[str, str] = {s.path: dumps(s.path) for s in vehicle.loaded.settings.signals}
    started = time.monotonic()
    first_ts: float | None = None
    last_ts = 0.0
    samples: list[Sample] = []
    try:
        reader = can.LogReader(str(log))
    except (OSError, ValueError) as exc:
        raise AgentError(f"cannot read log {log}: {exc}") from exc
    with reader:
        reader_file = getattr(reader, "file", None)
        messages = iter(reader)
        while True:
            try:
                msg = next(messages)
            except StopIteration:
                break
            except Exception as exc:  # python-can's readers raise many types on bad lines
                raise AgentError(f"{log}: unreadable after {summary.frames} frames: {exc}") from exc
            summary.frames += 1
            if first_ts is None:
                first_ts = msg.timestamp
            last_ts = msg.timestamp
            samples.clear()
            router.route(msg).decode_into(msg, samples)
            if feed is not None and samples:
                feed(samples)
            for sample in samples:
                if every_frame or sampler.offer(sample):
                    out.write(
                        f'{{"ts": {sample.ts!r}, "path": {path_json[sample.path]}, '
                        f'"value": {dumps(sample.value)}}}\n'
                    )
                    summary.samples_written += 1
            if meter is not None and summary.frames % 4096 == 0:
                meter.tick(summary.frames, _position(reader_file))
    if meter is not None:
        meter.done()
    summary.seconds = time.monotonic() - started
    summary.log_span_s = (last_ts - first_ts) if first_ts is not None else 0.0
    return summary


def open_output(target: str | None) -> TextIO:
    if target is None or target == "-":
        return sys.stdout
    try:
        return open(target, "w", encoding="utf-8", buffering=1 << 20)
    except OSError as exc:
        raise AgentError(f"cannot write {target}: {exc.strerror}") from exc


def parse_channel_map(items: list[str]) -> dict[str, str]:
    result = {}
    for item in items:
        channel, sep, bus = item.partition("=")
        if not sep or not channel or not bus:
            raise AgentError(f"--map-channel wants CHANNEL=BUS, got {item!r}")
        result[channel] = bus
    return result
