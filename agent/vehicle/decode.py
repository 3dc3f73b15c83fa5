"""Frames -> samples: a decode plan per frame id, built once, for the mapped signals only.

The plan compiles one bitstruct unpacker (via cantools' own format builder) holding only the
signals that are mapped, plus the multiplexer selector where needed; per frame the work is a
dict lookup, a length check, one or two C-level unpacks and the transform of each mapped value.
Anything unexpected about a frame is counted, never raised.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from cantools.database.can import Message, Signal
from cantools.database.errors import DecodeError
from cantools.database.utils import create_encode_decode_formats

from agent.vehicle.dbc import MappedSignal, Vehicle, choices_of, frame_key
from agent.vehicle.model import FrameLike, Sample, Value


@dataclass(slots=True)
class DecodeStats:
    """Counters of one bus. Every frame lands in exactly one of the frame buckets, so the
    number of frames is their sum (one counter write per frame on the hot path)."""

    decoded: int = 0  # a plan existed and ran
    unknown_id: int = 0  # no mapped signal on this id
    short: int = 0  # fewer bytes than the DBC message declares
    error_frames: int = 0
    remote_frames: int = 0
    failed: int = 0  # the unpacker refused the bytes (should not happen; counted anyway)
    samples: int = 0
    unmapped_values: int = 0  # a `map` transform did not cover the value: dropped
    nonfinite: int = 0  # NaN or infinity from a float signal: dropped (not valid JSON)

    @property
    def frames(self) -> int:
        return (
            self.decoded
            + self.unknown_id
            + self.short
            + self.error_frames
            + self.remote_frames
            + self.failed
        )

    def as_dict(self) -> dict[str, int]:
        return {"frames": self.frames, **asdict(self)}


@dataclass(slots=True)
class _Outputs:
    """The mapped signals of one plan, grouped by how their value is computed, so the per-frame
    loops carry no branching: (path, signal name, ...) tuples in each group."""

    linear: list[tuple[str, str, Any, Any]] = field(default_factory=list)  # raw * a + b
    choice: list[tuple[str, str, Any, Any, dict[int, str]]] = field(default_factory=list)
    mapped: list[tuple[str, str, dict[Any, Value]]] = field(default_factory=list)
    floats: list[tuple[str, str, Any, Any]] = field(default_factory=list)  # checked for NaN/inf

    def add(self, mapped: MappedSignal) -> None:
        signal = mapped.signal
        transform = mapped.settings.transform
        scale, offset = signal.conversion.scale, signal.conversion.offset
        names = choices_of(signal)
        if transform is not None and transform.map is not None:
            by_name = {name: raw for raw, name in names.items()}
            table: dict[Any, Value] = {}
            for key, out in transform.map.items():
                if isinstance(key, str):
                    table[by_name[key]] = out
            for key, out in transform.map.items():
                if isinstance(key, int):  # raw numbers are explicit, so they win over names
                    table[key] = out
            self.mapped.append((mapped.path, signal.name, table))
            return
        if transform is not None and transform.linear is not None:
            # (raw * scale + offset) * t_scale + t_offset, folded into one multiply-add.
            t_scale, t_offset = transform.linear.scale, transform.linear.offset
            scale, offset = scale * t_scale, offset * t_scale + t_offset
        elif names:
            self.choice.append((mapped.path, signal.name, scale, offset, names))
            return
        group = self.floats if signal.is_float else self.linear
        group.append((mapped.path, signal.name, scale, offset))


@dataclass(slots=True)
class _Plan:
    name: str
    length: int
    big: Any  # bitstruct compiled format, or None when no mapped signal is big-endian
    little: Any
    outs: _Outputs
    mux: str | None = None  # selector signal name when mapped signals are multiplexed
    branches: dict[int, _Plan] | None = None
    fallback: Message | None = None  # nested multiplexing: cantools decodes the frame


def _outputs(mapped: Iterable[MappedSignal]) -> _Outputs:
    outs = _Outputs()
    for m in mapped:
        outs.add(m)
    return outs


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
        return _Plan(message.name, length, None, None, _outputs(mapped), fallback=message)
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
            name = f"{message.name}[{mux_id}]"
            branches[mux_id] = _Plan(name, length, big, little, _outputs(members))
    big, little = _compile(base_signals, length)
    return _Plan(message.name, length, big, little, _outputs(base), selector, branches)


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
                try:
                    raw = plan.fallback.decode(bytes(data), decode_choices=False, scaling=False)
                except DecodeError:
                    # The length is already checked, so this is a selector value with no
                    # branch in the DBC: the frame is fine, it just carries nothing mapped.
                    raw = {}
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

    def _emit(self, outs: _Outputs, raw: Any, ts: float, out: list[Sample]) -> None:
        # Hot path: locals only, one tuple per sample, counters updated once per frame.
        # Missing names only happen with the cantools fallback (branch not selected).
        new = tuple.__new__
        append = out.append
        before = len(out)
        for path, name, scale, offset in outs.linear:
            value = raw.get(name)
            if value is not None:
                append(new(Sample, (path, ts, value * scale + offset)))
        if not (outs.choice or outs.mapped or outs.floats):
            self.stats.samples += len(out) - before
            return
        for path, name, scale, offset, names in outs.choice:
            value = raw.get(name)
            if value is not None:
                named = names.get(value)
                append(
                    new(Sample, (path, ts, named if named is not None else value * scale + offset))
                )
        for path, name, table in outs.mapped:
            value = raw.get(name)
            if value is not None:
                result = table.get(value)
                if result is None:
                    self.stats.unmapped_values += 1
                else:
                    append(new(Sample, (path, ts, result)))
        for path, name, scale, offset in outs.floats:
            value = raw.get(name)
            if value is not None:
                value = value * scale + offset
                if math.isfinite(value):
                    append(new(Sample, (path, ts, value)))
                else:
                    self.stats.nonfinite += 1
        self.stats.samples += len(out) - before


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
