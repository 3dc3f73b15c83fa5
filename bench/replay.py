"""Benchmark: `vehicle-agent replay --every-frame` against a plain python-can, cantools, json loop.

The workload is generated here, seeded, into a temporary folder outside the checkout: a DBC of
160 messages (standard and extended ids, CAN FD frames, Intel and Motorola signals, multiplexed
messages, choice signals and SNA sentinels, IEEE floats, mostly unmapped signals as in a real
car's DBC), a configuration mapping about 300 of its signals to real VSS 6.0 paths of every
datatype, and a candump text log (`(ts) can0 123#DEADBEEF`, `##1` for CAN FD) of about a million
frames at the messages' own rates, with a few unknown ids, short, remote and error frames.

Both sides write the same JSON Lines, and the run checks that the files hold the same lines
byte for byte (within one frame's samples the order differs, see `_digest`):

- agent: `agent.vehicle.replay.replay(..., every_frame=True)` into a file, as the CLI does;
- plain: `can.LogReader` -> `db.decode_message` -> the configured transform, typed the way the
  path's VSS datatype says (rounded to the resolution, ints, range, choice names) ->
  `json.dumps` per sample -> the file.

Times are CPU time of this process (the machine is shared), best of N, the two interleaved.

    .venv/bin/python bench/replay.py                 # ~1 M frames, best of 3
    .venv/bin/python bench/replay.py --frames 20000  # a quick run
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import random
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import can
import cantools

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent import config  # noqa: E402
from agent.vehicle import dbc  # noqa: E402
from agent.vehicle.catalog import Leaf, builtin  # noqa: E402
from agent.vehicle.replay import replay  # noqa: E402

MESSAGES = 160
EXTENDED = 24  # of them with 29-bit ids
FD = 10  # of them CAN FD frames longer than 8 bytes
MULTIPLEXED = 16
VARIANTS = 48  # distinct payloads per message (and selector value) the log picks from
PERIODS_MS = (10, 20, 50, 100, 100, 200, 500, 1000)
NAME = r"[A-Za-z][A-Za-z0-9_]*"


# --- the workload -------------------------------------------------------------------------------


@dataclass
class Sig:
    """One DBC signal and, when mapped, the VSS leaf it feeds and how."""

    name: str
    start: int
    length: int
    big_endian: bool = False
    signed: bool = False
    scale: float = 1.0
    offset: float = 0.0
    unit: str = ""
    choices: dict[int, str] = field(default_factory=dict)
    is_float: bool = False
    mux: int | None = None  # the selector value it belongs to; None: always present
    selector: bool = False
    leaf: Leaf | None = None
    linear: tuple[float, float] | None = None  # a configured `transform: linear`
    table: dict[str, bool | None] | None = None  # a configured `transform: map`
    decimals: int | None = None  # the float path's rounding (the resolution's decimals)
    good: tuple[int, int] | None = None  # raw values mostly drawn from here

    @property
    def raw_range(self) -> tuple[int, int]:
        if self.signed:
            return -(1 << (self.length - 1)), (1 << (self.length - 1)) - 1
        return 0, (1 << self.length) - 1

    def dbc_line(self) -> str:
        mux = " M" if self.selector else (f" m{self.mux}" if self.mux is not None else "")
        order = "0" if self.big_endian else "1"
        sign = "-" if self.signed else "+"
        low, high = self.raw_range
        if self.is_float:
            low, high = -1e6, 1e6
        else:
            low, high = low * self.scale + self.offset, high * self.scale + self.offset
        return (
            f" SG_ {self.name}{mux} : {self.start}|{self.length}@{order}{sign}"
            f' ({self.scale!r},{self.offset!r}) [{low:g}|{high:g}] "{self.unit}" ECU'
        )


@dataclass
class Msg:
    name: str
    frame_id: int
    extended: bool
    length: int
    fd: bool
    period_ms: int
    signals: list[Sig] = field(default_factory=list)
    payloads: list[str] = field(default_factory=list)  # upper-case hex


class Layout:
    """Places signals in a message without overlap, from bit 0 up. Motorola signals of a byte
    or more start on a byte and fill whole bytes; shorter ones stay inside one byte."""

    def __init__(self, length: int, big_endian: bool, first_bit: int = 0) -> None:
        self.bits = length * 8
        self.big_endian = big_endian
        self.cursor = first_bit

    def width(self, length: int) -> int:
        return (length + 7) // 8 * 8 if self.big_endian and length >= 8 else length

    def place(self, length: int) -> int | None:
        """The DBC start bit for a signal of `length` bits (`width` of them), or None."""
        length = self.width(length)
        if self.big_endian and (length >= 8 or self.cursor % 8 + length > 8):
            self.cursor = (self.cursor + 7) // 8 * 8
        if self.cursor + length > self.bits:
            return None
        start = self.cursor
        self.cursor += length
        if not self.big_endian:
            return start
        # Motorola: the start bit is the MSB's; bits run 7..0 within a byte.
        if length >= 8:
            return start + 7
        return start + length - 1


def _leaves() -> dict[str, list[Leaf]]:
    catalog = builtin()
    ordered = sorted(catalog.leaves.values(), key=lambda leaf: leaf.path)
    named = re.compile(NAME)
    return {
        "float": [leaf for leaf in ordered if leaf.kind == "float"],
        "integer": [
            leaf for leaf in ordered if leaf.kind == "integer" and leaf.datatype != "uint64"
        ],
        "boolean": [leaf for leaf in ordered if leaf.kind == "boolean"],
        "string": [
            leaf
            for leaf in ordered
            if leaf.kind == "string"
            and leaf.allowed
            and len(leaf.allowed) <= 16
            and all(named.fullmatch(str(a)) for a in leaf.allowed)
        ],
    }


def _mapped_signal(rng: random.Random, name: str, leaf: Leaf, layout: Layout) -> Sig | None:
    """A DBC signal shaped for `leaf`'s datatype, with the mapping that fills it."""
    kind = leaf.kind
    sig = Sig(name, 0, 8, leaf=leaf, big_endian=layout.big_endian)
    if kind == "float":
        low, high = leaf.min, leaf.max
        if rng.random() < 0.06 and not layout.big_endian:
            sig.is_float, sig.length = True, 32
        else:
            sig.scale = rng.choice((0.1, 0.1, 0.01, 0.5, 0.25, 0.05, 1.0))
            sig.length = rng.choice((8, 10, 12, 16)) if not layout.big_endian else 16
            sig.signed = low is not None and low < 0 and rng.random() < 0.5
            sig.offset = 0.0 if sig.signed or low is None else float(low)
            if low is None and high is None and rng.random() < 0.15:
                sig.linear = rng.choice(((1000.0, 0.0), (0.001, 0.0), (1.8, 32.0)))
            if not sig.signed and rng.random() < 0.15:
                sig.choices = {(1 << sig.length) - 1: "SNA"}  # a sentinel, never published
        sig.unit = leaf.unit or ""
    elif kind == "integer":
        low, high = leaf.bounds
        assert low is not None and high is not None
        sig.signed = low < 0
        span = max(abs(low), high)
        sig.length = min(16, max(2, span.bit_length() + (1 if sig.signed else 0)))
        sig.unit = leaf.unit or ""
    elif kind == "boolean":
        if rng.random() < 0.5:
            sig.length = 1
        else:
            sig.length = 2
            sig.choices = {0: "INACTIVE", 1: "ACTIVE", 2: "FAULT", 3: "SNA"}
            sig.table = {"INACTIVE": False, "ACTIVE": True, "FAULT": None, "SNA": None}
    else:  # string with allowed values: a choice signal, one choice per value
        allowed = [str(a) for a in leaf.allowed or ()]
        sig.length = max(1, (len(allowed) - 1).bit_length())
        sig.choices = dict(enumerate(allowed))
    start = layout.place(sig.length)
    if start is None:
        return None
    sig.start = start
    sig.length = layout.width(sig.length)
    if kind == "float" and not sig.is_float:
        # A float path is rounded to its resolution: the decimals of the DBC scale and offset
        # with the configured linear transform folded in (docs/vss.md).
        sig.decimals = _resolution_decimals(sig)
    sig.good = _good_range(sig)
    return sig


def _resolution_decimals(sig: Sig) -> int:
    scale = Decimal(repr(float(sig.scale)))
    offset = Decimal(repr(float(sig.offset)))
    if sig.linear is not None:
        t_scale, t_offset = Decimal(repr(sig.linear[0])), Decimal(repr(sig.linear[1]))
        scale, offset = scale * t_scale, offset * t_scale + t_offset
    exponents = [d.normalize().as_tuple().exponent for d in (scale, offset)]
    return max(max(0, -e) if isinstance(e, int) else 0 for e in exponents)


def _good_range(sig: Sig) -> tuple[int, int]:
    """Raw values whose published value is inside the path's range (most payloads use them)."""
    low, high = sig.raw_range
    leaf = sig.leaf
    if leaf is None or sig.is_float or leaf.kind not in ("float", "integer"):
        return low, high
    p_low, p_high = leaf.bounds
    scale, offset = sig.scale, sig.offset
    if p_low is not None:
        low = max(low, math.ceil((p_low - offset) / scale))
    if p_high is not None:
        high = min(high, math.floor((p_high - offset) / scale))
    if sig.choices:
        high = min(high, max(sig.choices) - 1)
    return (low, high) if low <= high else sig.raw_range


def _plain_signal(rng: random.Random, name: str, layout: Layout) -> Sig | None:
    length = rng.choice((1, 2, 4, 8, 8, 12, 16))
    start = layout.place(length)
    if start is None:
        return None
    sig = Sig(name, start, layout.width(length), big_endian=layout.big_endian)
    sig.scale = rng.choice((1.0, 0.1, 0.5))
    sig.signed = sig.length >= 8 and rng.random() < 0.3
    if sig.length <= 2:
        sig.choices = {0: "OFF", 1: "ON"}
    return sig


def _build_messages(rng: random.Random) -> list[Msg]:
    leaves = _leaves()
    pools = {kind: rng.sample(items, len(items)) for kind, items in leaves.items()}
    kinds = ["float"] * 8 + ["integer"] * 4 + ["boolean"] * 5 + ["string"] * 2

    def next_leaf() -> Leaf:
        while True:
            pool = pools[rng.choice(kinds)]
            if pool:
                return pool.pop()

    ids = rng.sample(range(0x080, 0x7F0), MESSAGES - EXTENDED)
    ext_ids = rng.sample(range(0x0CF0_0000, 0x18FF_FFFF), EXTENDED)
    messages: list[Msg] = []
    for index in range(MESSAGES):
        extended = index >= MESSAGES - EXTENDED
        frame_id = ext_ids[index - (MESSAGES - EXTENDED)] if extended else ids[index]
        fd = index % (MESSAGES // FD) == 3
        muxed = index % (MESSAGES // MULTIPLEXED) == 1
        length = rng.choice((16, 32, 64)) if fd else rng.choice((8, 8, 8, 6, 4))
        length = max(length, 8) if muxed else length
        name = f"M{index:03d}"
        msg = Msg(name, frame_id, extended, length, fd, rng.choice(PERIODS_MS))
        big = not fd and rng.random() < 0.2
        layout = Layout(length, big)
        number = 0

        def add(mapped: bool, mux: int | None, into: Layout, msg: Msg = msg) -> bool:
            nonlocal number
            sig_name = f"{msg.name}_S{number}"
            sig = (
                _mapped_signal(rng, sig_name, next_leaf(), into)
                if mapped
                else _plain_signal(rng, sig_name, into)
            )
            if sig is None:
                return False
            number += 1
            sig.mux = mux
            msg.signals.append(sig)
            return True

        if muxed:
            selector = Sig(f"{name}_MUX", 0, 4, big_endian=big, selector=True)
            if big:
                selector.start, selector.length = 7, 8
            msg.signals.append(selector)
            add(False, None, layout_after(layout, selector))
            base_end = layout.cursor
            for mux in range(3):
                branch = Layout(length, big, base_end)
                for _ in range(rng.randint(2, 4)):
                    add(rng.random() < 0.55, mux, branch)
        else:
            for _ in range(rng.randint(2, 8 if length <= 8 else 14)):
                add(rng.random() < 0.3, None, layout)
            if not any(s.leaf for s in msg.signals):
                add(True, None, layout)
        messages.append(msg)
    return messages


def layout_after(layout: Layout, selector: Sig) -> Layout:
    """Reserve the selector's bits in `layout` and return it."""
    layout.cursor = 8 if layout.big_endian else selector.length
    return layout


def write_dbc(messages: list[Msg], path: Path) -> None:
    lines = ['VERSION ""', "", "NS_ :", "", "BS_:", "", "BU_: ECU", ""]
    for msg in messages:
        dbc_id = msg.frame_id | (0x8000_0000 if msg.extended else 0)
        lines.append(f"BO_ {dbc_id} {msg.name}: {msg.length} ECU")
        lines += [sig.dbc_line() for sig in msg.signals]
        lines.append("")
    lines.append(
        'BA_DEF_ BO_ "VFrameFormat" ENUM "StandardCAN","ExtendedCAN","reserved","J1939PG",'
        + ",".join(['"reserved"'] * 10)
        + ',"StandardCAN_FD","ExtendedCAN_FD";'
    )
    lines.append('BA_DEF_DEF_ "VFrameFormat" "StandardCAN";')
    for msg in messages:
        if msg.fd:
            dbc_id = msg.frame_id | (0x8000_0000 if msg.extended else 0)
            lines.append(f'BA_ "VFrameFormat" BO_ {dbc_id} {15 if msg.extended else 14};')
    for msg in messages:
        dbc_id = msg.frame_id | (0x8000_0000 if msg.extended else 0)
        for sig in msg.signals:
            if sig.choices:
                pairs = " ".join(f'{raw} "{text}"' for raw, text in sig.choices.items())
                lines.append(f"VAL_ {dbc_id} {sig.name} {pairs} ;")
            if sig.is_float:
                lines.append(f"SIG_VALTYPE_ {dbc_id} {sig.name} : 1;")
    path.write_text("\n".join(lines) + "\n")


def write_config(messages: list[Msg], dbc_path: Path, path: Path) -> int:
    lines = [
        "vehicle_id: BENCH-0001",
        "can:",
        "  buses:",
        f"    - {{name: chassis, channel: can0, fd: true, dbc: [{dbc_path}]}}",
        "signals:",
    ]
    count = 0
    for msg in messages:
        for sig in msg.signals:
            if sig.leaf is None:
                continue
            entry = f"path: {sig.leaf.path}, source: {msg.name}.{sig.name}"
            if sig.linear is not None:
                entry += f", transform: {{linear: {{scale: {sig.linear[0]!r}, offset: "
                entry += f"{sig.linear[1]!r}}}}}"
            if sig.table is not None:
                pairs = ", ".join(f"{k}: {json.dumps(v)}" for k, v in sig.table.items())
                entry += f", transform: {{map: {{{pairs}}}}}"
            lines.append(f"  - {{{entry}}}")
            count += 1
    path.write_text("\n".join(lines) + "\n")
    return count


def make_payloads(rng: random.Random, messages: list[Msg], db: Any) -> None:
    """VARIANTS payloads per message (per selector value when multiplexed), encoded by cantools
    from raw values: mostly in the mapped path's range, sometimes anywhere the bits allow."""
    for msg in messages:
        message = db.get_message_by_name(msg.name)
        selector = next((s for s in msg.signals if s.selector), None)
        for variant in range(VARIANTS):
            mux = variant % 3 if selector is not None else None
            raw: dict[str, Any] = {}
            for sig in msg.signals:
                if sig.selector:
                    raw[sig.name] = mux
                elif sig.mux is None or sig.mux == mux:
                    raw[sig.name] = _raw_value(rng, sig)
            data = message.encode(raw, scaling=False, strict=False)
            msg.payloads.append(data.hex().upper())


def _raw_value(rng: random.Random, sig: Sig) -> Any:
    if sig.is_float:
        return rng.choice((rng.uniform(-50, 150), round(rng.uniform(0, 100), 2), 0.0))
    low, high = sig.good if sig.good is not None and rng.random() < 0.95 else sig.raw_range
    if sig.choices and rng.random() < 0.05:
        return rng.choice(list(sig.choices))
    return rng.randint(low, high)


def write_log(rng: random.Random, messages: list[Msg], frames: int, path: Path) -> None:
    """`frames` candump lines at the messages' rates (weighted picks, rising timestamps)."""
    weights = [1000.0 / msg.period_ms for msg in messages]
    rate = sum(weights)
    picks = rng.choices(range(len(messages)), weights=weights, k=frames)
    ts = 1_700_000_000.0
    out: list[str] = []
    with path.open("w") as file:
        for pick in picks:
            ts += rng.expovariate(rate)
            msg = messages[pick]
            odd = rng.random()
            if odd < 0.004:  # an id no DBC message has
                line = f"({ts:.6f}) can0 {rng.randrange(0x7F0, 0x800):03X}#0011223344556677"
            elif odd < 0.0045:
                line = f"({ts:.6f}) can0 20000080#0000000000000000"  # an error frame
            elif odd < 0.005:
                text = f"{msg.frame_id:08X}" if msg.extended else f"{msg.frame_id:03X}"
                line = f"({ts:.6f}) can0 {text}#R"  # a remote frame
            elif odd < 0.0055:  # a short frame
                text = f"{msg.frame_id:08X}" if msg.extended else f"{msg.frame_id:03X}"
                line = f"({ts:.6f}) can0 {text}#00"
            else:
                text = f"{msg.frame_id:08X}" if msg.extended else f"{msg.frame_id:03X}"
                data = rng.choice(msg.payloads)
                line = f"({ts:.6f}) can0 {text}#{'#1' if msg.fd else ''}{data}"
            out.append(line)
            if len(out) >= 65536:
                file.write("\n".join(out) + "\n")
                out.clear()
        if out:
            file.write("\n".join(out) + "\n")


@dataclass
class Workload:
    folder: Path
    dbc: Path
    config: Path
    log: Path
    messages: list[Msg]
    mapped: int


def build_workload(frames: int, seed: int) -> Workload:
    rng = random.Random(seed)
    folder = Path(tempfile.mkdtemp(prefix="bench-replay-"))
    try:
        messages = _build_messages(rng)
        dbc_path, cfg, log = folder / "bench.dbc", folder / "bench.yaml", folder / "bench.log"
        write_dbc(messages, dbc_path)
        mapped = write_config(messages, dbc_path, cfg)
        make_payloads(rng, messages, cantools.database.load_file(str(dbc_path)))
        write_log(rng, messages, frames, log)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return Workload(folder, dbc_path, cfg, log, messages, mapped)


# --- the plain loop -----------------------------------------------------------------------------


def _converter(sig: Sig) -> Callable[[Any], Any]:
    """cantools' decoded value (choices as NamedSignalValue) -> the published value or None."""
    leaf = sig.leaf
    assert leaf is not None
    low, high = leaf.bounds
    low = -math.inf if low is None else low
    high = math.inf if high is None else high
    kind = leaf.kind
    t_scale, t_offset = sig.linear if sig.linear is not None else (1.0, 0.0)
    decimals = sig.decimals
    table = sig.table

    def convert(value: Any) -> Any:
        named = hasattr(value, "name")
        if kind == "string":
            return str(value) if named else None
        if table is not None:
            return table.get(str(value)) if named else None
        if named:
            return None  # a sentinel choice (SNA) on a numeric path
        if kind == "boolean":
            return bool(value)
        value = value * t_scale + t_offset
        if not math.isfinite(value):
            return None
        value = round(value) if kind == "integer" else float(value)
        if decimals is not None and kind == "float":
            value = round(value, decimals)
        return value if low <= value <= high else None

    return convert


def plain_replay(workload: Workload, db: Any, out_path: Path) -> tuple[int, int]:
    wanted: dict[int, dict[str, tuple[str, Callable[[Any], Any]]]] = {}
    for msg in workload.messages:
        wanted[msg.frame_id] = {
            sig.name: (sig.leaf.path, _converter(sig)) for sig in msg.signals if sig.leaf
        }
    frames = samples = 0
    dumps = json.dumps
    with (
        can.LogReader(str(workload.log)) as reader,
        out_path.open("w", encoding="utf-8", buffering=1 << 20) as out,
    ):
        for msg in reader:
            frames += 1
            if msg.is_error_frame or msg.is_remote_frame:
                continue
            try:
                decoded = db.decode_message(msg.arbitration_id, msg.data)
            except (KeyError, cantools.database.DecodeError):
                continue  # an unknown id, a short frame
            mapping = wanted[msg.arbitration_id]
            for name, value in decoded.items():
                found = mapping.get(name)
                if found is not None:
                    result = found[1](value)
                    if result is not None:
                        out.write(
                            dumps({"ts": msg.timestamp, "path": found[0], "value": result}) + "\n"
                        )
                        samples += 1
    return frames, samples


def agent_replay(vehicle: dbc.Vehicle, log: Path, out_path: Path) -> tuple[int, int]:
    with out_path.open("w", encoding="utf-8", buffering=1 << 20) as out:
        summary = replay(vehicle, log, out, every_frame=True)
    return summary.frames, summary.samples_written


# --- the run ------------------------------------------------------------------------------------


def _digest(path: Path) -> str:
    """The file's lines as a multiset: within one frame the agent writes its samples grouped
    by how their value is computed, the plain loop in the DBC's signal order."""
    with path.open("rb") as file:
        lines = file.readlines()
    lines.sort()
    return hashlib.sha256(b"".join(lines)).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3, help="best of N runs")
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--keep", action="store_true", help="leave the workload's folder")
    args = parser.parse_args()

    workload = build_workload(args.frames, args.seed)
    try:
        if args.keep:
            print(f"workload kept in {workload.folder}", file=sys.stderr)
        vehicle = dbc.load_vehicle(config.load(workload.config))
        db = cantools.database.load_file(str(workload.dbc))
        runs: dict[str, list[float]] = {"agent": [], "plain": []}
        counts: dict[str, tuple[int, int]] = {}
        outputs = {name: workload.folder / f"{name}.jsonl" for name in runs}
        for _ in range(args.repeat):
            for name in runs:
                started = time.process_time()
                if name == "agent":
                    counts[name] = agent_replay(vehicle, workload.log, outputs[name])
                else:
                    counts[name] = plain_replay(workload, db, outputs[name])
                runs[name].append(time.process_time() - started)
        same = _digest(outputs["agent"]) == _digest(outputs["plain"])
        report(args, workload, vehicle, runs, counts, same)
        if not same:
            sys.exit("the agent's and the plain loop's JSON Lines differ")
    finally:
        if not args.keep:
            shutil.rmtree(workload.folder, ignore_errors=True)


def report(
    args: argparse.Namespace,
    workload: Workload,
    vehicle: dbc.Vehicle,
    runs: dict[str, list[float]],
    counts: dict[str, tuple[int, int]],
    same: bool,
) -> None:
    frames = counts["agent"][0]
    mux = sum(1 for m in workload.messages if any(s.selector for s in m.signals))
    print(
        f"Python {platform.python_version()}, python-can {can.__version__}, cantools "
        f"{cantools.__version__}, {platform.machine()}; {frames:,} frames, "
        f"{len(workload.messages)} messages ({mux} multiplexed), {workload.mapped} mapped "
        f"signals ({len(vehicle.mapped)} resolved), CPU time best of {args.repeat}"
    )
    print()
    print("| path | frames/s | µs/frame | samples | CPU s (each run) |")
    print("|---|---:|---:|---:|---|")
    labels = {
        "agent": "agent: replay --every-frame",
        "plain": "plain: LogReader + decode_message + json.dumps",
    }
    for name, times in runs.items():
        best = min(times)
        each = ", ".join(f"{t:.2f}" for t in times)
        print(
            f"| {labels[name]} | {frames / best:,.0f} | {best / frames * 1e6:.2f} "
            f"| {counts[name][1]:,} | {each} |"
        )
    print()
    ratio = min(runs["agent"]) / min(runs["plain"])
    print(f"ratio agent/plain (time): {ratio:.2f}; the same lines in both outputs: {same}")


if __name__ == "__main__":
    main()
