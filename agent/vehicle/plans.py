"""Decode plans: for each frame id, what to unpack of its bytes and how each mapped signal
becomes a sample typed as its VSS path says; and what the live path judges a repeated frame
on (`skip_units`, for agent.vehicle.repeats).

A plan compiles one bitstruct unpacker (via cantools' own format builder) holding only the
signals that are mapped, plus the multiplexer selector where needed, and groups its outputs
by how their value is computed (`Outputs`), so that agent.vehicle.decode runs each group in a
tight loop; for an id whose mapped signals are all integers it also carries a generated
function (agent.vehicle.unpackers).
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from cantools.database.can import Message, Signal
from cantools.database.utils import create_encode_decode_formats

from agent.vehicle.dbc import MappedSignal, choices_of, raw_range
from agent.vehicle.model import Sample, Value
from agent.vehicle.unpackers import Unpacker, generate, raw_reader
from agent.vehicle.vsscheck import PathType, effective_linear, resolution_decimals


class Drop:
    """A value that is not published, and the counter that says why."""

    __slots__ = ("counter",)

    def __init__(self, counter: str) -> None:
        self.counter = counter


INVALID = Drop("invalid_values")  # a sentinel choice, an `invalid` entry, a `map` to null
OUT_OF_RANGE = Drop("out_of_range")
UNMAPPED = Drop("unmapped_values")
NONFINITE = Drop("nonfinite")


@dataclass(slots=True)
class Outputs:
    """The mapped signals of one plan, grouped by how their value is computed, so the common
    cases run in tight loops: (path, signal name, ...) tuples in each group.

    - `ints`: integer paths with whole scale and offset whose every raw value is in range:
      raw * scale + offset, exact.
    - `exact`: float paths whose every raw value is in range: (raw * num + off) / den with
      integers, which Python rounds correctly, so 126 * 0.1 comes out as 12.6 with no round().
    - `general`: everything else (choices, sentinels, maps, range checks, float signals), one
      converter closure each that returns the value or a Drop.
    """

    ints: list[tuple[int, str, str, int, int, float, float]] = field(default_factory=list)
    exact: list[tuple[int, str, str, int, int, int, float, float]] = field(default_factory=list)
    tables: list[tuple[int, str, str, dict[Any, Any], Drop]] = field(default_factory=list)
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


def _table(mapped: MappedSignal, ptype: PathType) -> tuple[dict[Any, Any], Drop] | None:
    """A `map` transform, or choice names on a string path, as one lookup: raw -> value or
    Drop, with the Drop for raw values the table does not hold."""
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
    """raw value -> published value or a Drop, for the cases the fast groups do not take."""
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
class Plan:
    name: str
    length: int
    big: Any  # bitstruct compiled format, or None when no mapped signal is big-endian
    little: Any
    outs: Outputs
    mux: str | None = None  # selector signal name when mapped signals are multiplexed
    branches: dict[int, Plan] | None = None
    fallback: Message | None = None  # nested multiplexing: cantools decodes the frame
    # Campaigns (Decoder.set_tap): a frame of this plan also hands its samples to this list.
    tap: list[Sample] | None = None
    mask: int = 0  # the bits its unpackers read (repeat_masks)
    fast: Unpacker | None = None  # generated straight-line decode (agent.vehicle.unpackers)
    entries: int = 0  # its outputs (samples a frame gives, none dropped)


def _outputs(mapped: Iterable[MappedSignal], types: Mapping[str, PathType]) -> Outputs:
    outs = Outputs()
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


def build_plan(message: Message, mapped: list[MappedSignal], types: Mapping[str, PathType]) -> Plan:
    length = message.length
    if any(_nested(message, m.signal) for m in mapped):
        return Plan(message.name, length, None, None, _outputs(mapped, types), fallback=message)
    base = [m for m in mapped if m.signal.multiplexer_ids is None]
    muxed = [m for m in mapped if m.signal.multiplexer_ids is not None]
    base_signals = [m.signal for m in base]
    selector: str | None = None
    branches: dict[int, Plan] | None = None
    if muxed:
        selector = str(muxed[0].signal.multiplexer_signal)
        if selector not in {s.name for s in base_signals}:
            base_signals.append(message.get_signal_by_name(selector))
        branches = {}
        for mux_id in sorted({i for m in muxed for i in m.signal.multiplexer_ids or ()}):
            members = [m for m in muxed if mux_id in (m.signal.multiplexer_ids or ())]
            big, little = _compile([m.signal for m in members], length)
            name = f"{message.name}[{mux_id}]"
            branch = Plan(name, length, big, little, _outputs(members, types))
            _finish(branch, [m.signal for m in members], length)
            branches[mux_id] = branch
    big, little = _compile(base_signals, length)
    plan = Plan(message.name, length, big, little, _outputs(base, types), selector, branches)
    # A multiplexed frame is decoded by its base and a branch: only branches get a function.
    _finish(plan, base_signals, length, generated=branches is None)
    return plan


def _finish(plan: Plan, signals: list[Signal], length: int, *, generated: bool = True) -> None:
    """The bits `plan` reads, its outputs' count and (`generated`) its generated function."""
    plan.mask = signal_mask(signals)
    plan.entries = len(paths_of(plan))
    # `strict: false` loads a signal that runs past its message's length as written; bitstruct
    # then refuses such frames and counts them as failed, which the generated code would not.
    if generated and not plan.mask >> (8 * length):
        plan.fast = generate(plan.outs, {s.name: s for s in signals}, length, Drop)


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


def entries_of(outs: Outputs) -> list[tuple[Any, ...]]:
    return [
        entry for group in (outs.ints, outs.exact, outs.tables, outs.general) for entry in group
    ]


def _unit(plan: Plan, branch: int | None) -> SkipUnit:
    outputs = tuple((entry[1], entry[0]) for entry in entries_of(plan.outs))
    paths = tuple(sorted({path for path, _ in outputs}))
    unbounded = (-math.inf, math.inf)
    steady = frozenset(e[1] for e in plan.outs.ints if e[-2:] == unbounded) | frozenset(
        e[1] for e in plan.outs.exact if e[-2:] == unbounded
    )
    return SkipUnit(plan.mask, plan.length, paths, outputs, branch, steady)


def paths_of(plan: Plan) -> set[str]:
    paths = {entry[1] for entry in entries_of(plan.outs)}
    for branch in (plan.branches or {}).values():
        paths |= paths_of(branch)
    return paths


def unpack(plan: Plan, data: bytes | bytearray) -> dict[str, Any]:
    if plan.big is None:
        result: dict[str, Any] = plan.little.unpack(data[::-1])
        return result
    result = plan.big.unpack(data)
    if plan.little is not None:
        result.update(plan.little.unpack(data[::-1]))
    return result


def skip_units(
    plans: Mapping[int, Plan], messages: Mapping[int, Message]
) -> dict[int, SkipUnit | MuxUnits]:
    """Decoder.repeat_masks for these plans (and their messages, for a selector's layout)."""
    out: dict[int, SkipUnit | MuxUnits] = {}
    for key, plan in plans.items():
        if plan.fallback is not None or plan.tap is not None:
            continue
        if plan.branches is None:
            out[key] = _unit(plan, None)
            continue
        union = plan.mask | functools.reduce(
            operator.or_, (b.mask for b in plan.branches.values()), 0
        )
        if entries_of(plan.outs) or union >> (8 * plan.length) or plan.mux is None:
            continue
        units = {mux_id: _unit(branch, mux_id) for mux_id, branch in plan.branches.items()}
        # A signal in several branches (extended multiplexing, SG_MUL_VAL_ 1-2) gives
        # one path from frames of each: one branch's repeat is no repeat of that path.
        if sum(len(u.paths) for u in units.values()) > len(
            {path for u in units.values() for path in u.paths}
        ):
            continue
        selector = messages[key].get_signal_by_name(plan.mux)
        out[key] = MuxUnits(union, raw_reader(selector, plan.length), units)
    return out
