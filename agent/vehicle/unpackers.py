"""Decode functions generated per frame id, for the live path's frames.

The general decode plan (agent.vehicle.decode) unpacks a frame with bitstruct into a dict and
then loops over its outputs. For a frame id whose mapped signals are all integers (no float
signal, no multiplexing) this module writes one straight-line Python function instead, the
way `dataclasses` and `namedtuple` write theirs: each signal is a shift and a mask of the
frame's bits (which the live path already holds as an integer, agent.vehicle.repeats), its
scale, offset and range are constants in the code, and a signal whose bits did not move is
one `&` test. The values are the plan's own: the same output groups, the same tables and
converters, the same counters (tests/vehicle/test_unpackers.py holds the two to each other).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from typing import Any

from cantools.database.can import Signal
from cantools.database.utils import start_bit

from agent.vehicle.model import Sample

# Every number written into the code goes through this: an int, or an error at start.
_int = operator.index

# (bits, ts, out, changed, stats) -> values dropped. `bits`: the frame's bytes as a
# little-endian integer, masked to the mapped signals; `changed`: the bits whose signals
# are to be given (-1: all).
Unpacker = Callable[[int, float, list[Sample], int, Any], int]


def generate(
    outs: Any, signals: dict[str, Signal], length: int, drop_class: type
) -> Unpacker | None:
    """The function for one plan's outputs (a plans.Outputs), or None where a signal is
    a float (bitstruct unpacks those)."""
    if any(s.is_float for s in signals.values()):
        return None
    names: dict[str, Any] = {"new": tuple.__new__, "Sample": Sample, "Drop": drop_class}
    body: list[str] = []
    big = any(s.byte_order == "big_endian" for s in signals.values())
    if big:  # a Motorola signal runs contiguously in the bytes read as one big-endian number
        body.append(f"    big = int.from_bytes(bits.to_bytes({_int(length)}, 'little'), 'big')")
    index = 0

    def raw_of(name: str) -> list[str]:
        signal = signals[name]
        width = (1 << _int(signal.length)) - 1
        if signal.byte_order == "big_endian":
            shift = 8 * _int(length) - _int(start_bit(signal)) - signal.length
            lines = [f"        raw = (big >> {shift}) & {width}"]
        else:
            lines = [f"        raw = (bits >> {_int(signal.start)}) & {width}"]
        if signal.is_signed:
            lines.append(f"        if raw > {width >> 1}: raw -= {width + 1}")
        return lines

    def in_range(low: float, high: float, i: int) -> list[str]:
        names[f"L{i}"], names[f"H{i}"] = low, high
        if low == -math.inf and high == math.inf:
            return [f"        append(new(Sample, (P{i}, ts, value)))"]
        return [
            f"        if L{i} <= value <= H{i}:",
            f"            append(new(Sample, (P{i}, ts, value)))",
            "        else:",
            "            dropped += 1",
            "            stats.out_of_range += 1",
        ]

    def drop_or_append(i: int) -> list[str]:
        return [
            "        if result.__class__ is Drop:",
            "            dropped += 1",
            "            setattr(stats, result.counter, getattr(stats, result.counter) + 1)",
            "        else:",
            f"            append(new(Sample, (P{i}, ts, result)))",
        ]

    for mask, path, name, scale, offset, low, high in outs.ints:
        names[f"P{index}"] = path
        body += [f"    if changed & {_int(mask)}:", *raw_of(name)]
        body.append(f"        value = raw * {_int(scale)} + {_int(offset)}")
        body += in_range(low, high, index)
        index += 1
    for mask, path, name, num, off, den, low, high in outs.exact:
        names[f"P{index}"] = path
        body += [f"    if changed & {_int(mask)}:", *raw_of(name)]
        body.append(f"        value = (raw * {_int(num)} + {_int(off)}) / {_int(den)}")
        body += in_range(low, high, index)
        index += 1
    for mask, path, name, table, missing in outs.tables:
        names[f"P{index}"], names[f"T{index}"], names[f"M{index}"] = path, table, missing
        body += [f"    if changed & {_int(mask)}:", *raw_of(name)]
        body.append(f"        result = T{index}.get(raw, M{index})")
        body += drop_or_append(index)
        index += 1
    for mask, path, name, convert in outs.general:
        names[f"P{index}"], names[f"C{index}"] = path, convert
        body += [f"    if changed & {_int(mask)}:", *raw_of(name)]
        body.append(f"        result = C{index}(raw)")
        body += drop_or_append(index)
        index += 1
    source = "\n".join(
        [
            "def unpack(bits, ts, out, changed, stats):",
            "    append = out.append",
            "    dropped = 0",
            *body,
            "    return dropped",
        ]
    )
    # The text is ours, built from the DBC's numbers and names kept in `names`, never spliced.
    exec(compile(source, "<agent.vehicle.unpackers>", "exec"), names)
    unpacker: Unpacker = names["unpack"]
    return unpacker


def raw_reader(signal: Signal, length: int) -> Callable[[int], int]:
    """A signal's raw integer from the frame's bits (a little-endian integer of `length`
    bytes): a multiplexer's selector, to find its branch before decoding."""
    width = (1 << _int(signal.length)) - 1
    signed = signal.is_signed
    if signal.byte_order == "big_endian":
        shift = 8 * _int(length) - _int(start_bit(signal)) - signal.length

        def read(bits: int) -> int:
            raw = (int.from_bytes(bits.to_bytes(length, "little"), "big") >> shift) & width
            return raw - width - 1 if signed and raw > width >> 1 else raw

        return read
    start = _int(signal.start)

    def read_little(bits: int) -> int:
        raw = (bits >> start) & width
        return raw - width - 1 if signed and raw > width >> 1 else raw

    return read_little
