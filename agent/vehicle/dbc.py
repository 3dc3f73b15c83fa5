"""DBC loading per bus and resolving each configured signal to its DBC message and signal.

Everything here is checked with the config file's own lines, so `check-config` can point an
OEM engineer at the exact key that does not fit the car's DBC files.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cantools.database.can import Message, Signal

from agent.config import BusSettings, Loaded, SignalSettings
from agent.errors import ConfigError, Problem
from agent.vehicle import dbc_files

if TYPE_CHECKING:
    from agent.vehicle.vsscheck import PathType

EXTENDED_FLAG = 0x8000_0000  # the DBC convention: bit 31 marks a 29-bit identifier


def frame_key(arbitration_id: int, is_extended: bool) -> int:
    """One int per (id, format): 0x100 standard and 0x100 extended are different frames."""
    return arbitration_id | EXTENDED_FLAG if is_extended else arbitration_id


@dataclass(slots=True)
class BusDb:
    """The DBC contents of one bus."""

    settings: BusSettings
    index: int
    messages: dict[int, Message] = field(default_factory=dict)  # by frame_key
    by_name: dict[str, Message] = field(default_factory=dict)
    signals: dict[str, list[tuple[Message, Signal]]] = field(default_factory=dict)
    incomplete: bool = False  # a file failed to load: its "no such signal" follow-ons are moot

    @property
    def name(self) -> str:
        return self.settings.name

    def add(self, message: Message) -> None:
        self.messages[frame_key(message.frame_id, message.is_extended_frame)] = message
        self.by_name[message.name] = message
        for signal in message.signals:
            self.signals.setdefault(signal.name, []).append((message, signal))


@dataclass(frozen=True, slots=True)
class MappedSignal:
    """A configured signal resolved against the DBC files."""

    index: int
    settings: SignalSettings
    bus: str
    message: Message
    signal: Signal

    @property
    def path(self) -> str:
        return self.settings.path


@dataclass(frozen=True, slots=True)
class Vehicle:
    """Settings, the DBC contents of every bus, and the resolved signal mappings."""

    loaded: Loaded
    buses: dict[str, BusDb]
    mapped: tuple[MappedSignal, ...]
    types: Mapping[str, PathType] = field(default_factory=dict)  # per path, from the catalog
    # Leniencies taken with DBC files, unit mismatches: check-config prints them, never fatal.
    warnings: tuple[Problem, ...] = ()


def load_vehicle(loaded: Loaded) -> Vehicle:
    """Load every bus's DBC files and resolve the mappings; ConfigError lists every problem.

    Warnings ride along: in `Vehicle.warnings` when the file is valid, in the ConfigError
    beside the errors when it is not.
    """
    problems: list[Problem] = []
    buses = {
        bus.name: _load_bus(loaded, index, bus, problems)
        for index, bus in enumerate(loaded.settings.can.buses)
    }
    mapped: list[MappedSignal] = []
    for index, sig in enumerate(loaded.settings.signals):
        if sig.source is None:
            continue  # a `compute` path: derived from other paths, no DBC signal
        found = _resolve(loaded, index, sig, buses, problems)
        if found is not None:
            mapped.append(found)
            problems += _check_transform(loaded, found)
    from agent.vehicle import vsscheck  # it builds on this module's MappedSignal

    checked = vsscheck.check(loaded, mapped)
    problems += checked.problems
    warnings = [p for p in problems if p.warning] + list(checked.warnings)
    errors = [p for p in problems if not p.warning]
    if errors:
        raise ConfigError(errors + warnings)
    return Vehicle(
        loaded=loaded,
        buses=buses,
        mapped=tuple(mapped),
        types=checked.types,
        warnings=tuple(sorted(warnings)),
    )


def _load_bus(loaded: Loaded, index: int, bus: BusSettings, problems: list[Problem]) -> BusDb:
    db = BusDb(settings=bus, index=index)
    origin: dict[int, str] = {}
    for file_index, path in enumerate(bus.dbc):
        where = ("can", "buses", index, "dbc", file_index)
        try:
            database, quirks = dbc_files.load(path, strict=bus.strict)
        except FileNotFoundError:
            db.incomplete = True
            problems.append(loaded.problem(where, f"DBC file not found: {path}"))
            continue
        except OSError as exc:
            db.incomplete = True
            problems.append(loaded.problem(where, f"cannot read DBC file {path}: {exc.strerror}"))
            continue
        except dbc_files.StrictRefusal as exc:
            db.incomplete = True
            problems += _quirk_lines(loaded, where, path, exc.quirks, strict=True)
            continue
        except dbc_files.DatabaseLoadError as exc:
            db.incomplete = True
            at = f": line {exc.line}" if exc.line else ""
            hint = (
                " (strict: false loads it with a warning)"
                if bus.strict and ("overlapping" in exc.reason or "does not fit" in exc.reason)
                else ""
            )
            problems.append(
                loaded.problem(where, f"cannot load DBC file {path}{at}: {exc.reason}{hint}")
            )
            continue
        problems += _quirk_lines(loaded, where, path, quirks, strict=False)
        clashes: dict[str, list[tuple[Message, Message]]] = {}  # other file -> (new, first)
        fd_frames: list[str] = []
        for message in database.messages:
            key = frame_key(message.frame_id, message.is_extended_frame)
            if key in db.messages:
                other = db.messages[key]
                clashes.setdefault(origin[key], []).append((message, other))
                continue
            if message.is_fd and not bus.fd:
                fd_frames.append(message.name)
            origin[key] = path.name
            db.add(message)
        # A problem repeated across many messages of one file is one line: count, first names.
        for other_file, pairs in clashes.items():
            message, other = pairs[0]
            text = (
                f"frame id {message.frame_id:#x} ({message.name}) is already defined "
                f"as {other.name} in {other_file}"
                if len(pairs) == 1
                else f"{len(pairs)} frame ids are already defined in {other_file} "
                f"({_first_names([f'{m.frame_id:#x} {m.name}' for m, _ in pairs])})"
            )
            problems.append(loaded.problem(where, text))
        if fd_frames:
            what = (
                f"{fd_frames[0]} in {path.name} is a CAN FD frame"
                if len(fd_frames) == 1
                else f"{len(fd_frames)} messages in {path.name} are CAN FD frames "
                f"({_first_names(fd_frames)})"
            )
            problems.append(loaded.problem(("can", "buses", index, "fd"), f"{what}; set fd: true"))
    return db


def _quirk_lines(
    loaded: Loaded,
    where: tuple[str | int, ...],
    path: Path,
    quirks: list[dbc_files.Leniency],
    *,
    strict: bool,
) -> list[Problem]:
    """One line per kind of quirk in a file: warnings when lenient, errors when strict."""
    lines = []
    for kind, group in _grouped(quirks):
        first = group[0]
        if len(group) == 1:
            text = (
                f"{first.quirk} (set strict: false to load it: {first.action})"
                if strict
                else first.message
            )
        else:
            what, action = dbc_files.KINDS[kind]
            text = f"{len(group)} {what} ({_first_names([q.name for q in group])})"
            text += f"; set strict: false to load them ({action})" if strict else f"; {action}"
        problem = loaded.problem(where, f"{path.name} line {first.line}: {text}")
        lines.append(problem if strict else replace(problem, warning=True))
    return lines


def _grouped(quirks: list[dbc_files.Leniency]) -> list[tuple[str, list[dbc_files.Leniency]]]:
    groups: dict[str, list[dbc_files.Leniency]] = {}
    for quirk in quirks:
        groups.setdefault(quirk.kind, []).append(quirk)
    return list(groups.items())


def _first_names(names: list[str], shown: int = 3) -> str:
    """`A, B, C and 328 more`: a repeated problem names its first few cases only."""
    head = ", ".join(names[:shown])
    return f"{head} and {len(names) - shown} more" if len(names) > shown else head


def _resolve(
    loaded: Loaded,
    index: int,
    sig: SignalSettings,
    buses: dict[str, BusDb],
    problems: list[Problem],
) -> MappedSignal | None:
    where = ("signals", index)
    if sig.bus is not None and sig.bus not in buses:
        problems.append(
            loaded.problem(
                (*where, "bus"), f"unknown bus {sig.bus!r}; buses are: {', '.join(buses)}"
            )
        )
        return None
    candidates = [buses[sig.bus]] if sig.bus is not None else list(buses.values())
    source = sig.source or ""
    message_name, _, signal_name = source.rpartition(".")
    hits: list[tuple[BusDb, Message, Signal]] = []
    for bus in candidates:
        for message, signal in bus.signals.get(signal_name, ()):
            if not message_name or message.name == message_name:
                hits.append((bus, message, signal))
    if len(hits) == 1:
        bus, message, signal = hits[0]
        return MappedSignal(index=index, settings=sig, bus=bus.name, message=message, signal=signal)
    scope = f"bus {sig.bus!r}" if sig.bus else "any bus"
    if not hits and any(bus.incomplete for bus in candidates):
        return None  # the DBC that failed to load is already reported; no cascade
    if not hits and sig.bus is not None:
        elsewhere = sorted(
            {
                bus.name
                for bus in buses.values()
                for message, _ in bus.signals.get(signal_name, ())
                if not message_name or message.name == message_name
            }
        )
        if elsewhere:
            on = " and ".join(repr(name) for name in elsewhere)
            problems.append(
                loaded.problem(
                    (*where, "bus"),
                    f"{sig.source!r} is on bus {on}, not {sig.bus!r}",
                )
            )
            return None
    if not hits:
        known = sorted({name for bus in candidates for name in bus.signals})
        if message_name:
            known = sorted(
                f"{m.name}.{s.name}"
                for bus in candidates
                for m in bus.by_name.values()
                for s in m.signals
            )
        import difflib  # only on a mistake: start-up stays lean

        hint = difflib.get_close_matches(source, known, n=1)
        suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
        problems.append(
            loaded.problem(
                (*where, "source"), f"no DBC signal {sig.source!r} on {scope}{suggestion}"
            )
        )
        return None
    places = ", ".join(f"{m.name} on {b.name}" for b, m, _ in hits)
    problems.append(
        loaded.problem(
            (*where, "source"),
            f"{sig.source!r} is ambiguous: found in {places}; write MESSAGE.SIGNAL or set bus",
        )
    )
    return None


def raw_range(signal: Signal) -> tuple[int, int]:
    """The raw integer values a signal's bits can carry."""
    if signal.is_signed:
        return -(1 << (signal.length - 1)), (1 << (signal.length - 1)) - 1
    return 0, (1 << signal.length) - 1


def choices_of(signal: Signal) -> dict[int, str]:
    """Raw value -> choice name (cantools keeps NamedSignalValue objects)."""
    return {int(raw): str(named) for raw, named in (signal.choices or {}).items()}


def _check_transform(loaded: Loaded, mapped: MappedSignal) -> list[Problem]:
    transform = mapped.settings.transform
    if transform is None or transform.map is None:
        return []
    where = ("signals", mapped.index, "transform", "map")
    signal = mapped.signal
    names = choices_of(signal)
    low, high = raw_range(signal)
    problems = []
    key: Any
    for key in transform.map:
        if isinstance(key, str):
            if not names:
                problems.append(
                    loaded.problem(
                        (*where, key),
                        f"{signal.name} has no value table; map keys must be raw numbers",
                    )
                )
            elif key not in names.values():
                problems.append(
                    loaded.problem(
                        (*where, key),
                        f"{key!r} is not a choice of {signal.name} "
                        f"(choices: {', '.join(names.values())})",
                    )
                )
        elif signal.is_float or not low <= key <= high:
            kind = "a float signal" if signal.is_float else f"raw range {low}..{high}"
            problems.append(
                loaded.problem((*where, key), f"{key} does not fit {signal.name} ({kind})")
            )
    return problems
