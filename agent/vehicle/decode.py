"""Frames -> samples: each frame run through its id's decode plan (agent.vehicle.plans, built
once, for the mapped signals only), and the counters of one bus.

Per frame the work is a dict lookup, a length check, one or two C-level unpacks (or the id's
generated function) and the transform of each mapped value. Anything unexpected about a frame
is counted, never raised.

Every value comes out in its path's VSS type (`PathType`, from vehicle/vsscheck.py): sentinels,
`invalid` entries and `map` nulls are dropped (`invalid_values`), values outside the catalog's
range too (`out_of_range`), numbers are rounded to the resolution and integer paths are ints.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from cantools.database.can import Message
from cantools.database.errors import DecodeError

from agent.vehicle.dbc import MappedSignal, Vehicle, frame_key
from agent.vehicle.model import FrameLike, Sample
from agent.vehicle.plans import (
    Drop,
    MuxUnits,
    Outputs,
    Plan,
    SkipUnit,
    build_plan,
    paths_of,
    skip_units,
    unpack,
)
from agent.vehicle.vsscheck import PathType, untyped


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
    invalid_values: int = 0  # a sentinel choice on a numeric path, `invalid`, a map to null
    out_of_range: int = 0  # outside the VSS catalog's min/max (or the integer type's range)

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


class Decoder:
    """Decodes the frames of one bus into samples of the mapped paths."""

    def __init__(
        self, bus: str, mapped: Iterable[MappedSignal], types: Mapping[str, PathType]
    ) -> None:
        self.bus = bus
        self.stats = DecodeStats()
        mapped = list(mapped)
        self._types = {m.path: types.get(m.path) or untyped(m) for m in mapped}
        by_message: dict[int, tuple[Message, list[MappedSignal]]] = {}
        for m in mapped:
            key = frame_key(m.message.frame_id, m.message.is_extended_frame)
            by_message.setdefault(key, (m.message, []))[1].append(m)
        self._plans: dict[int, Plan] = {
            key: build_plan(message, members, self._types)
            for key, (message, members) in by_message.items()
        }
        self._messages = {key: message for key, (message, _) in by_message.items()}

    @property
    def frame_keys(self) -> frozenset[int]:
        """The frame keys with at least one mapped signal (for kernel receive filters)."""
        return frozenset(self._plans)

    def set_tap(self, paths: Iterable[str], sink: list[Sample] | None) -> None:
        """Frames that can carry one of `paths` also hand all their samples to `sink` (the
        campaigns' pending list, which sorts them by path ten times a second): other frames
        pay one attribute test, an idle campaign no Python call per frame. `sink` None, or
        no paths, taps nothing."""
        keys = self.keys_carrying(paths) if sink is not None else frozenset()
        for key, plan in self._plans.items():
            plan.tap = sink if key in keys else None

    def keys_carrying(self, paths: Iterable[str]) -> frozenset[int]:
        """The frame keys whose frames can carry one of `paths`."""
        wanted = set(paths)
        return frozenset(key for key, plan in self._plans.items() if wanted & paths_of(plan))

    def repeat_masks(self) -> dict[int, SkipUnit | MuxUnits]:
        """For each frame key whose frames can be skipped when they repeat (agent.vehicle.
        repeats), what a skip is judged on: the bits, in the little-endian integer of the
        frame's bytes, that the plan reads (equal bits under them decode to equal samples),
        its paths, and each output's own bits. A multiplexed id is one unit per selector
        value (`MuxUnits`), when all its mapped signals are in branches and each in one
        branch only (a signal carried by several branches' frames, a base signal or one of
        extended multiplexing, could not be stood for by one branch's bits).
        Left out: cantools' fallback and tapped plans (a campaign wants every sample)."""
        return skip_units(self._plans, self._messages)

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
        self.decode_key(
            frame.arbitration_id | 0x8000_0000 if frame.is_extended_id else frame.arbitration_id,
            frame.data,
            frame.timestamp,
            out,
        )

    def decode_raw(self, key: int, data: bytes, ts: float, out: list[Sample]) -> None:
        """`decode_into` for a frame as the kernel's can_id carries it (agent.vehicle.frames:
        the id with its EFF, RTR and ERR flags): the live path's frames, no object each."""
        if key & 0x6000_0000:  # CAN_ERR_FLAG | CAN_RTR_FLAG; an error frame counts as one
            if key & 0x2000_0000:
                self.stats.error_frames += 1
            else:
                self.stats.remote_frames += 1
            return
        self.decode_key(key, data, ts, out)

    def decode_key(
        self, key: int, data: bytes | bytearray, timestamp: float, out: list[Sample]
    ) -> None:
        """A data frame by its frame key (bit 31 set for a 29-bit id)."""
        stats = self.stats
        plan = self._plans.get(key)
        if plan is None:
            stats.unknown_id += 1
            return
        if len(data) < plan.length:
            stats.short += 1
            return
        if len(data) > plan.length:
            data = data[: plan.length]  # CAN FD pads to the next valid length; ignore the rest
        branch: Plan | None = None
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
                raw = unpack(plan, data)
                if plan.branches is not None:
                    branch = plan.branches.get(raw[plan.mux])
                    branch_raw = unpack(branch, data) if branch is not None else None
        except Exception:  # bitstruct/cantools errors on bytes we could not foresee
            stats.failed += 1
            return
        stats.decoded += 1
        tap = plan.tap
        before = len(out) if tap is not None else 0
        self._emit(plan.outs, raw, timestamp, out)
        if branch is not None:
            self._emit(branch.outs, branch_raw, timestamp, out)
        if tap is not None:
            tap += out[before:]

    def decode_changed(
        self,
        key: int,
        data: bytes,
        ts: float,
        out: list[Sample],
        changed: int,
        bits: int,
        branch: int | None = None,
    ) -> bool:
        """`decode_raw` for a frame of an id in `repeat_masks`, appending the samples of the
        signals whose bits meet `changed` only (-1: all): the others carry what the last
        frame decoded did, which the caller knows. They count in `stats.samples` as if given
        again. `bits`: the frame's bytes as a little-endian integer under the plan's mask.
        True when no value was dropped, so the frame's bits stand for its values. `branch`:
        the selector value of a multiplexed frame (its unit in `repeat_masks` has no base
        outputs), whose branch plan is decoded."""
        plan = self._plans[key]
        if branch is not None:
            assert plan.branches is not None
            plan = plan.branches[branch]
        stats = self.stats
        if len(data) < plan.length:
            stats.short += 1
            return False
        before = len(out)
        fast = plan.fast
        if fast is not None:
            stats.decoded += 1
            dropped = fast(bits, ts, out, changed, stats)
            stats.samples += len(out) - before
        else:
            if len(data) > plan.length:
                data = data[: plan.length]
            try:
                raw = unpack(plan, data)
            except Exception:  # as in decode_key
                stats.failed += 1
                return False
            stats.decoded += 1
            dropped = self._emit(plan.outs, raw, ts, out, changed)
        if changed != -1:
            stats.samples += plan.entries - (len(out) - before) - dropped
        return not dropped

    def values_of(self, key: int, bits: int, changed: int, branch: int | None) -> list[Sample]:
        """The samples of the signals whose bits meet `changed`, from a frame's masked bits,
        counting nothing: the values the live path held back from the sampler while their
        policies could publish none of them (agent.vehicle.repeats), caught up."""
        out: list[Sample] = []
        counted = self.stats
        self.stats = DecodeStats()
        try:
            data = bits.to_bytes(self._plans[key].length, "little")
            self.decode_changed(key, data, 0.0, out, changed, bits, branch)
        finally:
            self.stats = counted
        return out

    def _emit(
        self, outs: Outputs, raw: Any, ts: float, out: list[Sample], changed: int = -1
    ) -> int:
        """Append the samples of `outs`, of the entries whose signal bits meet `changed`
        (-1: all); the number of values dropped. Hot path: locals only, one tuple per
        sample, counters updated once per frame. Missing names only happen with the
        cantools fallback (branch not selected)."""
        new = tuple.__new__
        append = out.append
        before = len(out)
        stats = self.stats
        dropped = 0
        for mask, path, name, scale, offset, low, high in outs.ints:
            if changed & mask:
                value = raw.get(name)
                if value is not None:
                    value = value * scale + offset
                    if low <= value <= high:
                        append(new(Sample, (path, ts, value)))
                    else:
                        dropped += 1
                        stats.out_of_range += 1
        for mask, path, name, num, off, den, low, high in outs.exact:
            if changed & mask:
                value = raw.get(name)
                if value is not None:
                    value = (value * num + off) / den
                    if low <= value <= high:
                        append(new(Sample, (path, ts, value)))
                    else:
                        dropped += 1
                        stats.out_of_range += 1
        if outs.tables or outs.general:
            for mask, path, name, table, missing in outs.tables:
                if changed & mask:
                    value = raw.get(name)
                    if value is not None:
                        result = table.get(value, missing)
                        if result.__class__ is Drop:
                            dropped += 1
                            setattr(stats, result.counter, getattr(stats, result.counter) + 1)
                        else:
                            append(new(Sample, (path, ts, result)))
            for mask, path, name, convert in outs.general:
                if changed & mask:
                    value = raw.get(name)
                    if value is not None:
                        result = convert(value)
                        if result.__class__ is Drop:
                            dropped += 1
                            setattr(stats, result.counter, getattr(stats, result.counter) + 1)
                        else:
                            append(new(Sample, (path, ts, result)))
        stats.samples += len(out) - before
        return dropped


def build_decoders(vehicle: Vehicle) -> dict[str, Decoder]:
    """One decoder per configured bus (a bus with no mapped signal decodes nothing)."""
    return {
        name: Decoder(name, [m for m in vehicle.mapped if m.bus == name], vehicle.types)
        for name in vehicle.buses
    }
