"""Frames -> samples: a decode plan per frame id, built once, for the mapped signals only.

The plan compiles one bitstruct unpacker (via cantools' own format builder) holding only the
signals that are mapped, plus the multiplexer selector where needed; per frame the work is a
dict lookup, a length check, one or two C-level unpacks and the transform of each mapped value.
Anything unexpected about a frame is counted, never raised.

Every value comes out in its path's VSS type (`PathType`, from vehicle/vsscheck.py): sentinels,
`invalid` entries and `map` nulls are dropped (`invalid_values`), values outside the catalog's
range too (`out_of_range`), numbers are rounded to the resolution and integer paths are ints.
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from typing import Any

from cantools.database.can import Message, Signal
from cantools.database.errors import DecodeError
from cantools.database.utils import create_encode_decode_formats

from agent.vehicle.dbc import MappedSignal, Vehicle, choices_of, frame_key, raw_range
from agent.vehicle.model import FrameLike, Sample, Value
from agent.vehicle.unpackers import Unpacker, generate, raw_reader
from agent.vehicle.vsscheck import PathType, effective_linear, resolution_decimals, untyped


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


class _Drop:
    """A value that is not published, and the counter that says why."""

    __slots__ = ("counter",)

    def __init__(self, counter: str) -> None:
        self.counter = counter


INVALID = _Drop("invalid_values")  # a sentinel choice, an `invalid` entry, a `map` to null
OUT_OF_RANGE = _Drop("out_of_range")
UNMAPPED = _Drop("unmapped_values")
NONFINITE = _Drop("nonfinite")


@dataclass(slots=True)
class _Outputs:
    """The mapped signals of one plan, grouped by how their value is computed, so the common
    cases run in tight loops: (path, signal name, ...) tuples in each group.

    - `ints`: integer paths with whole scale and offset whose every raw value is in range:
      raw * scale + offset, exact.
    - `exact`: float paths whose every raw value is in range: (raw * num + off) / den with
      integers, which Python rounds correctly, so 126 * 0.1 comes out as 12.6 with no round().
    - `general`: everything else (choices, sentinels, maps, range checks, float signals), one
      converter closure each that returns the value or a _Drop.
    """

    ints: list[tuple[int, str, str, int, int, float, float]] = field(default_factory=list)
    exact: list[tuple[int, str, str, int, int, int, float, float]] = field(default_factory=list)
    tables: list[tuple[int, str, str, dict[Any, Any], _Drop]] = field(default_factory=list)
    general: list[tuple[int, str, str, Callable[[Any], Any]]] = field(default_factory=list)

    def add(self, mapped: MappedSignal, ptype: PathType) -> None:
        signal = mapped.signal
        settings = mapped.settings
        # Each entry starts with its signal's bits (signal_mask): a frame decoded with a
        # `changed` mask (Decoder.decode_changed) skips the entries whose bits did not move.
        mask, path, name = signal_mask((signal,)), mapped.path, signal.name
        table = _table(mapped, ptype)
        if table is not None:
            self.tables.append((mask, path, name, *table))
            return
        transform = settings.transform
        fast = not signal.is_float and not choices_of(signal) and not settings.invalid
        if fast and ptype.kind in ("integer", "float"):
            assert transform is None or transform.map is None  # maps are tables
            scale, offset = effective_linear(mapped)
            # Bounds that no raw value can cross are left out (infinite) rather than given
            # a loop of their own: one comparison costs less than one more loop per frame.
            always = _always_in_range(signal, scale, offset, ptype)
            low = -math.inf if always or ptype.low is None else ptype.low
            high = math.inf if always or ptype.high is None else ptype.high
            if ptype.kind == "integer" and scale == int(scale) and offset == int(offset):
                self.ints.append((mask, path, name, int(scale), int(offset), low, high))
                return
            exact = _as_fraction(scale, offset, ptype.decimals, resolution_decimals(mapped))
            if ptype.kind == "float" and exact is not None:
                self.exact.append((mask, path, name, *exact, low, high))
                return
        self.general.append((mask, path, name, converter(mapped, ptype)))


def _table(mapped: MappedSignal, ptype: PathType) -> tuple[dict[Any, Any], _Drop] | None:
    """A `map` transform, or choice names on a string path, as one lookup: raw -> value or
    _Drop, with the _Drop for raw values the table does not hold."""
    signal = mapped.signal
    settings = mapped.settings
    names = choices_of(signal)
    by_name = {name: raw for raw, name in names.items()}
    transform = settings.transform
    table: dict[Any, Any] = {}
    if transform is not None and transform.map is not None:
        for key, out in transform.map.items():
            if isinstance(key, str):
                table[by_name[key]] = _typed(out, ptype)
        for key, out in transform.map.items():
            if isinstance(key, int):  # raw numbers are explicit, so they win over names
                table[key] = _typed(out, ptype)
        missing = UNMAPPED
    elif ptype.kind == "string" and not signal.is_float:
        table = dict(names)
        missing = INVALID  # a raw value without a choice name
    else:
        return None
    for entry in settings.invalid:
        table[by_name[entry] if isinstance(entry, str) else entry] = None
    return {raw: INVALID if out is None else out for raw, out in table.items()}, missing


def _always_in_range(signal: Signal, scale: Decimal, offset: Decimal, ptype: PathType) -> bool:
    low, high = raw_range(signal)
    ends = (low * scale + offset, high * scale + offset)
    return (ptype.low is None or min(ends) >= Decimal(repr(ptype.low))) and (
        ptype.high is None or max(ends) <= Decimal(repr(ptype.high))
    )


def _as_fraction(
    scale: Decimal, offset: Decimal, decimals: int | None, resolution: int
) -> tuple[int, int, int] | None:
    """(num, off, den) with value = (raw * num + off) / den, when rounding to `decimals`
    loses nothing (decimals at least the resolution's)."""
    if decimals is None or decimals < resolution:
        return None
    den = 10**resolution
    return int(scale * den), int(offset * den), den


def converter(mapped: MappedSignal, ptype: PathType) -> Callable[[Any], Any]:
    """raw value -> published value or a _Drop, for the cases the fast groups do not take."""
    signal = mapped.signal
    settings = mapped.settings
    names = choices_of(signal)
    by_name = {name: raw for raw, name in names.items()}
    invalid = frozenset(by_name[v] if isinstance(v, str) else v for v in settings.invalid)
    if ptype.kind == "string":

        def named(raw: Any) -> Any:
            name = names.get(raw)
            return INVALID if name is None or raw in invalid else name

        return named
    if ptype.kind == "boolean":  # a one-bit signal (vsscheck refuses anything else)
        return lambda raw: INVALID if raw in invalid else bool(raw)
    scale, offset = effective_linear(mapped)
    fscale, foffset = float(scale), float(offset)
    sentinels = invalid | frozenset(names)
    low = -math.inf if ptype.low is None else ptype.low
    high = math.inf if ptype.high is None else ptype.high
    integer = ptype.kind == "integer"
    decimals = ptype.decimals

    def number(raw: Any) -> Any:
        if raw in sentinels:
            return INVALID
        value = raw * fscale + foffset
        if not math.isfinite(value):
            return NONFINITE
        if integer:
            value = round(value)
        elif decimals is not None:
            value = round(value, decimals)
        if not low <= value <= high:
            return OUT_OF_RANGE
        return value

    return number


def _typed(out: Value | None, ptype: PathType) -> Value | None:
    """A map value in the path's JSON type (126.0 on an integer path is 126)."""
    if out is None or isinstance(out, bool) or not isinstance(out, int | float):
        return out
    if ptype.kind == "integer":
        return int(out)
    return float(out)


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
    # Campaigns (Decoder.set_tap): a frame of this plan also hands its samples to this list.
    tap: list[Sample] | None = None
    mask: int = 0  # the bits its unpackers read (repeat_masks)
    fast: Unpacker | None = None  # generated straight-line decode (agent.vehicle.unpackers)
    entries: int = 0  # its outputs (samples a frame gives, none dropped)


def _outputs(mapped: Iterable[MappedSignal], types: Mapping[str, PathType]) -> _Outputs:
    outs = _Outputs()
    for m in mapped:
        outs.add(m, types[m.path])
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


def _build_plan(
    message: Message, mapped: list[MappedSignal], types: Mapping[str, PathType]
) -> _Plan:
    length = message.length
    if any(_nested(message, m.signal) for m in mapped):
        return _Plan(message.name, length, None, None, _outputs(mapped, types), fallback=message)
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
            branch = _Plan(name, length, big, little, _outputs(members, types))
            _finish(branch, [m.signal for m in members], length)
            branches[mux_id] = branch
    big, little = _compile(base_signals, length)
    plan = _Plan(message.name, length, big, little, _outputs(base, types), selector, branches)
    # A multiplexed frame is decoded by its base and a branch: only branches get a function.
    _finish(plan, base_signals, length, generated=branches is None)
    return plan


def _finish(plan: _Plan, signals: list[Signal], length: int, *, generated: bool = True) -> None:
    """The bits `plan` reads, its outputs' count and (`generated`) its generated function."""
    plan.mask = signal_mask(signals)
    plan.entries = len(_paths_of(plan))
    # `strict: false` loads a signal that runs past its message's length as written; bitstruct
    # then refuses such frames and counts them as failed, which the generated code would not.
    if generated and not plan.mask >> (8 * length):
        plan.fast = generate(plan.outs, {s.name: s for s in signals}, length, _Drop)


def signal_mask(signals: Iterable[Signal]) -> int:
    """The bits the signals occupy, numbered as in `int.from_bytes(data, "little")` (byte i
    holds bits 8i..8i+7, least significant first): the numbering of a DBC start bit. A
    little-endian signal runs up from its start bit; a big-endian one (Motorola) starts at
    its most significant bit and runs down within a byte, then on at bit 7 of the next."""
    mask = 0
    for signal in signals:
        position = signal.start
        for _ in range(signal.length):
            mask |= 1 << position
            if signal.byte_order != "big_endian":
                position += 1
            elif position % 8 == 0:
                position += 15
            else:
                position -= 1
    return mask


def _nested(message: Message, signal: Signal) -> bool:
    """True for extended multiplexing (a selector that is itself multiplexed)."""
    name = signal.multiplexer_signal
    if name is None:
        return False
    return message.get_signal_by_name(name).multiplexer_ids is not None


@dataclass(frozen=True, slots=True)
class SkipUnit:
    """What a frame that repeats is judged on (Decoder.repeat_masks): the bits its plan
    reads, its byte length, its paths, each output's (path, bits), for a multiplexed id
    the selector value of the branch, and the paths whose value no raw value can drop
    (a whole-number or exact decimal conversion with no bound to cross: `steady`)."""

    mask: int
    length: int
    paths: tuple[str, ...]
    outputs: tuple[tuple[str, int], ...]
    branch: int | None
    steady: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class MuxUnits:
    """A multiplexed id: every branch's bits together, the selector's raw value from them,
    and one SkipUnit per selector value."""

    mask: int
    selector: Callable[[int], int]
    branches: dict[int, SkipUnit]


def _entries(outs: _Outputs) -> list[tuple[Any, ...]]:
    return [
        entry for group in (outs.ints, outs.exact, outs.tables, outs.general) for entry in group
    ]


def _unit(plan: _Plan, branch: int | None) -> SkipUnit:
    outputs = tuple((entry[1], entry[0]) for entry in _entries(plan.outs))
    paths = tuple(sorted({path for path, _ in outputs}))
    unbounded = (-math.inf, math.inf)
    steady = frozenset(e[1] for e in plan.outs.ints if e[-2:] == unbounded) | frozenset(
        e[1] for e in plan.outs.exact if e[-2:] == unbounded
    )
    return SkipUnit(plan.mask, plan.length, paths, outputs, branch, steady)


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
        self._plans: dict[int, _Plan] = {
            key: _build_plan(message, members, self._types)
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
        return frozenset(key for key, plan in self._plans.items() if wanted & _paths_of(plan))

    def repeat_masks(self) -> dict[int, SkipUnit | MuxUnits]:
        """For each frame key whose frames can be skipped when they repeat (agent.vehicle.
        repeats), what a skip is judged on: the bits, in the little-endian integer of the
        frame's bytes, that the plan reads (equal bits under them decode to equal samples),
        its paths, and each output's own bits. A multiplexed id is one unit per selector
        value (`MuxUnits`), when all its mapped signals are in branches and each in one
        branch only (a signal carried by several branches' frames, a base signal or one of
        extended multiplexing, could not be stood for by one branch's bits).
        Left out: cantools' fallback and tapped plans (a campaign wants every sample)."""
        out: dict[int, SkipUnit | MuxUnits] = {}
        for key, plan in self._plans.items():
            if plan.fallback is not None or plan.tap is not None:
                continue
            if plan.branches is None:
                out[key] = _unit(plan, None)
                continue
            union = plan.mask | functools.reduce(
                operator.or_, (b.mask for b in plan.branches.values()), 0
            )
            if _entries(plan.outs) or union >> (8 * plan.length) or plan.mux is None:
                continue
            units = {mux_id: _unit(branch, mux_id) for mux_id, branch in plan.branches.items()}
            # A signal in several branches (extended multiplexing, SG_MUL_VAL_ 1-2) gives
            # one path from frames of each: one branch's repeat is no repeat of that path.
            if sum(len(u.paths) for u in units.values()) > len(
                {path for u in units.values() for path in u.paths}
            ):
                continue
            selector = self._messages[key].get_signal_by_name(plan.mux)
            out[key] = MuxUnits(union, raw_reader(selector, plan.length), units)
        return out

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
                raw = _unpack(plan, data)
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
        self, outs: _Outputs, raw: Any, ts: float, out: list[Sample], changed: int = -1
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
                        if result.__class__ is _Drop:
                            dropped += 1
                            setattr(stats, result.counter, getattr(stats, result.counter) + 1)
                        else:
                            append(new(Sample, (path, ts, result)))
            for mask, path, name, convert in outs.general:
                if changed & mask:
                    value = raw.get(name)
                    if value is not None:
                        result = convert(value)
                        if result.__class__ is _Drop:
                            dropped += 1
                            setattr(stats, result.counter, getattr(stats, result.counter) + 1)
                        else:
                            append(new(Sample, (path, ts, result)))
        stats.samples += len(out) - before
        return dropped


def _paths_of(plan: _Plan) -> set[str]:
    paths = {entry[1] for entry in _entries(plan.outs)}
    for branch in (plan.branches or {}).values():
        paths |= _paths_of(branch)
    return paths


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
        name: Decoder(name, [m for m in vehicle.mapped if m.bus == name], vehicle.types)
        for name in vehicle.buses
    }
