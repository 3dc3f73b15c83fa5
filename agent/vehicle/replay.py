"""`vehicle-agent replay`: a recorded CAN log through the daemon's own decode and sampling path.

Routing frames to buses: a single-bus configuration takes every frame. Otherwise a frame goes
to the bus whose `channel` or `name` equals the log's channel (or the one `--map-channel`
names); a frame from a channel that matches no bus goes to the first bus that maps its id.

Speed (docs/performance.md, "Replay"): candump text logs (`.log`) are read by vehicle/candump.py,
every other format by python-can's `LogReader`; frames are taken in blocks, decoded into one
list of samples per block, and the block's JSON Lines written with one call. A sample's line
is its frame's `{"ts": ...` head (made once per frame), its path's `"path": ..., "value": `
(made once per path) and the value, formatted as `json.dumps` formats it.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO

import can

from agent.errors import AgentError
from agent.vehicle.candump import CandumpReader
from agent.vehicle.compute import Computer, ComputeStats
from agent.vehicle.dbc import Vehicle, frame_key
from agent.vehicle.decode import Decoder, DecodeStats, build_decoders
from agent.vehicle.model import FrameLike, Sample
from agent.vehicle.signals import Sampler, policies_of

BATCH_FRAMES = 4096  # frames a block from python-can's readers (candump blocks are ~1 MB of text)


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


class _Routed(FrameLike, Protocol):
    """A frame as the log gives it: `can.Message` and candump.CandumpFrame both fit."""

    @property
    def channel(self) -> Any: ...


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

    @property
    def single(self) -> Decoder | None:
        """The one decoder that takes every frame, in a single-bus configuration."""
        return self._single

    def route(self, msg: _Routed) -> Decoder:
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
    candump_reader: bool = True,
) -> ReplaySummary:
    """Decode `log` and write JSON Lines samples to `out`; return the counts.

    `candump_reader=False` reads a candump `.log` with python-can's LogReader too (the tests
    compare the two readers' output)."""
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
    encoder = _LineEncoder(s.path for s in vehicle.loaded.settings.signals)
    started = time.monotonic()
    first_ts: float | None = None
    last_ts = 0.0
    reader: Any
    try:
        if candump_reader and log.suffix.lower() == ".log":
            reader = CandumpReader(log)
            blocks: Iterator[Sequence[_Routed]] = reader.blocks()
        else:
            reader = can.LogReader(str(log))
            blocks = _batches(reader)
    except (OSError, ValueError) as exc:
        raise AgentError(f"cannot read log {log}: {exc}") from exc
    with reader:
        reader_file = getattr(reader, "file", None)
        while True:
            try:
                block = next(blocks)
            except StopIteration:
                break
            except Exception as exc:  # python-can's readers raise many types on bad lines
                raise AgentError(f"{log}: unreadable after {summary.frames} frames: {exc}") from exc
            if not block:
                continue
            samples = _decode_block(block, router, feed)
            if not every_frame:
                samples = sampler.select(samples)
            out.write(encoder.lines(samples))
            summary.samples_written += len(samples)
            summary.frames += len(block)
            if first_ts is None:
                first_ts = block[0].timestamp
            last_ts = block[-1].timestamp
            if meter is not None:
                meter.tick(summary.frames, _position(reader_file))
    if meter is not None:
        meter.done()
    summary.seconds = time.monotonic() - started
    summary.log_span_s = (last_ts - first_ts) if first_ts is not None else 0.0
    return summary


def _batches(messages: Iterable[can.Message]) -> Iterator[list[can.Message]]:
    """python-can's messages in lists of BATCH_FRAMES; on a line it cannot read, the messages
    before it first, then its exception (so the frame count in the error is exact)."""
    batch: list[can.Message] = []
    try:
        for message in messages:
            batch.append(message)
            if len(batch) >= BATCH_FRAMES:
                yield batch
                batch = []
    except Exception:
        if batch:
            yield batch
        raise
    if batch:
        yield batch


def _decode_block(
    block: Sequence[_Routed], router: _Router, feed: Callable[[list[Sample]], None] | None
) -> list[Sample]:
    """The samples of a block's frames in frame order, computed paths after their frame's."""
    samples: list[Sample] = []
    single = router.single
    if feed is None and single is not None:
        decode = single.decode_into
        for frame in block:
            decode(frame, samples)
        return samples
    route = router.route
    if feed is None:
        for frame in block:
            route(frame).decode_into(frame, samples)
        return samples
    scratch: list[Sample] = []
    for frame in block:
        route(frame).decode_into(frame, scratch)
        if scratch:
            feed(scratch)  # the computed values this frame's samples change, appended
            samples += scratch
            scratch.clear()
    return samples


class _LineEncoder:
    """Samples to JSON Lines, byte for byte what `json.dumps` of each field gives:
    `{"ts": 1700000000.25, "path": "Vehicle.Speed", "value": 12.6}`."""

    def __init__(self, paths: Iterable[str]) -> None:
        # Everything from `, "path": ` to the value's first character, once per path.
        self._middle = {path: f', "path": {json.dumps(path)}, "value": ' for path in paths}
        self._strings: dict[str, str] = {}  # choice names and other strings, escaped once

    def lines(self, samples: Iterable[Sample]) -> str:
        middle = self._middle
        strings = self._strings
        dumps = json.dumps
        parts: list[str] = []
        append = parts.append
        last_ts: object = None
        head = ""
        value: Any  # dispatched on its exact class below
        for path, ts, value in samples:
            if ts is not last_ts:  # a frame's samples share its timestamp object
                head = '{"ts": ' + repr(ts)
                last_ts = ts
            cls = value.__class__
            if cls is float:
                # float.__repr__ is what json writes for a finite float; inf and NaN differ.
                text = repr(value) if value - value == 0.0 else dumps(value)
            elif cls is int:
                text = repr(value)
            elif cls is bool:
                text = "true" if value else "false"
            elif cls is str:
                found = strings.get(value)
                if found is None:
                    found = strings[value] = dumps(value)
                text = found
            else:
                text = dumps(value)
            append(f"{head}{middle[path]}{text}}}\n")
        return "".join(parts)


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
