"""Frames -> samples: a decode plan per frame id, built once, for the mapped signals only.

The plan compiles one bitstruct unpacker (via cantools' own format builder) holding only the
signals that are mapped, plus the multiplexer selector where needed; per frame the work is a
dict lookup, a length check, one or two C-level unpacks and the transform of each mapped value.
Anything unexpected about a frame is counted, never raised.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from cantools.database.can import Message, Signal
from cantools.database.utils import create_encode_decode_formats

from agent.dbc import MappedSignal, Vehicle, choices_of, frame_key
from agent.model import FrameLike, Sample, Value

# How a mapped value is turned into its output value.
_PLAIN, _CHOICE, _LINEAR, _MAP = range(4)


@dataclass(slots=True)
class DecodeStats:
    """Counters of one bus. Every frame lands in exactly one of the frame buckets."""

    frames: int = 0
    decoded: int = 0  # a plan existed and ran
    unknown_id: int = 0  # no mapped signal on this id
    short: int = 0  # fewer bytes than the DBC message declares
    error_frames: int = 0
    remote_frames: int = 0
    failed: int = 0  # the unpacker refused the bytes (should not happen; counted anyway)
    samples: int = 0
    unmapped_values: int = 0  # a `map` transform did not cover the value: dropped
    nonfinite: int = 0  # NaN or infinity from a float signal: dropped (not valid JSON)

    def frame_buckets(self) -> int:
        return (
            self.decoded
            + self.unknown_id
            + self.short
            + self.error_frames
            + self.remote_frames
            + self.failed
        )

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


# (path, signal name, scale, offset, kind, table, transform scale, transform offset, is_float)
_Out = tuple[str, str, Any, Any, int, dict[Any, Value], float, float, bool]


@dataclass(slots=True)
class _Plan:
    name: str
    length: int
    big: Any  # bitstruct compiled format, or None when no mapped signal is big-endian
    little: Any
    outs: tuple[_Out, ...]
    mux: str | None = None  # selector signal name when mapped signals are multiplexed
    branches: dict[int, _Plan] | None = None
    fallback: Message | None = None  # nested multiplexing: cantools decodes the frame


def _output(mapped: MappedSignal) -> _Out:
    signal = mapped.signal
    transform = mapped.settings.transform
    conversion = signal.conversion
    scale, offset = conversion.scale, conversion.offset
    names = choices_of(signal)
    table: dict[Any, Value] = {}
    t_scale, t_offset = 1.0, 0.0
    if transform is not None and transform.map is not None:
        kind = _MAP
        by_name = {name: raw for raw, name in names.items()}
        for key, out in transform.map.items():
            if isinstance(key, str):
                table[by_name[key]] = out
        for key, out in transform.map.items():
            if isinstance(key, int):  # raw numbers are explicit, so they win over names
                table[key] = out
    elif transform is not None and transform.linear is not None:
        kind = _LINEAR
        t_scale, t_offset = transform.linear.scale, transform.linear.offset
    elif names:
        kind = _CHOICE
        table = dict(names)
    else:
        kind = _PLAIN
    return (
        mapped.path,
        signal.name,
        scale,
        offset,
        kind,
        table,
        t_scale,
        t_offset,
        signal.is_float,
    )


def _compile(signals: list[Signal], length: int) -> tuple[Any, Any]:
    # cantools' builder wants each signal once, in start-bit order (as a message keeps them);
    # a signal mapped to two paths is unpacked once and read twice.
    unique = {s.name: s for s in signals}
    ordered = sorted(unique.values(), key=lambda s: s.start)
    formats = create_encode_decode_formats(ordered, length)
    big = formats.big_endian if any(s.byte_order == "big_endian" for s in signals) else None
    little = formats.little_endian if any(s.byte_order != "big_endian" for s in signals) else None
    return big, little


def _build_plan(message: Message, mapped: list[MappedSignal]) -> _Plan:
    length = message.length
    if any(_nested(message, m.signal) for m in mapped):
        outs = tuple(_output(m) for m in mapped)
        return _Plan(message.name, length, None, None, outs, fallback=message)
    base = [m for m in mapped if m.signal.multiplexer_ids is None]
    muxed = [m for m in mapped if m.signal.multiplexer_ids is not None]
    base_signals = [m.signal for m in base]
    selector: str | None = None
    branches: dict[int, _Plan] | None = None
    if muxed:
        selector = str(muxed[0].signal.multiplexer_signal)
        if selector not in {s.name for s in base_signals}:
            base_signals.append(message.get_signal_by_name(selector))
        branches = {}
        for mux_id in sorted({i for m in muxed for i in m.signal.multiplexer_ids or ()}):
            members = [m for m in muxed if mux_id in (m.signal.multiplexer_ids or ())]
            big, little = _compile([m.signal for m in members], length)
            outs = tuple(_output(m) for m in members)
            branches[mux_id] = _Plan(f"{message.name}[{mux_id}]", length, big, little, outs)
    big, little = _compile(base_signals, length)
    return _Plan(
        message.name, length, big, little, tuple(_output(m) for m in base), selector, branches
    )


def _nested(message: Message, signal: Signal) -> bool:
    """True for extended multiplexing (a selector that is itself multiplexed)."""
    name = signal.multiplexer_signal
    if name is None:
        return False
    return message.get_signal_by_name(name).multiplexer_ids is not None


class Decoder:
    """Decodes the frames of one bus into samples of the mapped paths."""

    def __init__(self, bus: str, mapped: Iterable[MappedSignal]) -> None:
        self.bus = bus
        self.stats = DecodeStats()
        by_message: dict[int, tuple[Message, list[MappedSignal]]] = {}
        for m in mapped:
            key = frame_key(m.message.frame_id, m.message.is_extended_frame)
            by_message.setdefault(key, (m.message, []))[1].append(m)
        self._plans: dict[int, _Plan] = {
            key: _build_plan(message, members) for key, (message, members) in by_message.items()
        }

    @property
    def frame_keys(self) -> frozenset[int]:
        """The frame keys with at least one mapped signal (for kernel receive filters)."""
        return frozenset(self._plans)

    def decode(self, frame: FrameLike) -> list[Sample]:
        out: list[Sample] = []
        self.decode_into(frame, out)
        return out

    def decode_into(self, frame: FrameLike, out: list[Sample]) -> None:
        """Append the samples of one frame to `out`; count the frame in exactly one bucket."""
        stats = self.stats
        stats.frames += 1
        if frame.is_error_frame:
            stats.error_frames += 1
            return
        if frame.is_remote_frame:
            stats.remote_frames += 1
            return
        plan = self._plans.get(
            frame.arbitration_id | 0x8000_0000 if frame.is_extended_id else frame.arbitration_id
        )
        if plan is None:
            stats.unknown_id += 1
            return
        data = frame.data
        if len(data) < plan.length:
            stats.short += 1
            return
        if len(data) > plan.length:
            data = data[: plan.length]  # CAN FD pads to the next valid length; ignore the rest
        branch: _Plan | None = None
        raw: Any
        try:
            if plan.fallback is not None:
                raw = plan.fallback.decode(bytes(data), decode_choices=False, scaling=False)
            else:
                raw = _unpack(plan, data)
                if plan.branches is not None:
                    branch = plan.branches.get(raw[plan.mux])
                    branch_raw = _unpack(branch, data) if branch is not None else None
        except Exception:  # bitstruct/cantools errors on bytes we could not foresee
            stats.failed += 1
            return
        stats.decoded += 1
        self._emit(plan.outs, raw, frame.timestamp, out)
        if branch is not None:
            self._emit(branch.outs, branch_raw, frame.timestamp, out)

    def _emit(self, outs: tuple[_Out, ...], raw: Any, ts: float, out: list[Sample]) -> None:
        stats = self.stats
        for path, name, scale, offset, kind, table, t_scale, t_offset, is_float in outs:
            value: Any = raw.get(name)
            if value is None:  # fallback decode: signal not selected by its multiplexer
                continue
            if kind == _PLAIN:
                value = value * scale + offset
            elif kind == _CHOICE:
                named = table.get(value)
                value = named if named is not None else value * scale + offset
            elif kind == _LINEAR:
                value = (value * scale + offset) * t_scale + t_offset
            else:
                mapped = table.get(value)
                if mapped is None:
                    stats.unmapped_values += 1
                    continue
                value = mapped
            if is_float and isinstance(value, float) and not math.isfinite(value):
                stats.nonfinite += 1
                continue
            stats.samples += 1
            out.append(Sample(path, ts, value))


def _unpack(plan: _Plan, data: bytes | bytearray) -> dict[str, Any]:
    if plan.big is None:
        result: dict[str, Any] = plan.little.unpack(data[::-1])
        return result
    result = plan.big.unpack(data)
    if plan.little is not None:
        result.update(plan.little.unpack(data[::-1]))
    return result


def build_decoders(vehicle: Vehicle) -> dict[str, Decoder]:
    """One decoder per configured bus (a bus with no mapped signal decodes nothing)."""
    return {
        name: Decoder(name, [m for m in vehicle.mapped if m.bus == name]) for name in vehicle.buses
    }
