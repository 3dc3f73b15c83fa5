"""DBC loading per bus and resolving each configured signal to its DBC message and signal.

Everything here is checked with the config file's own lines, so `check-config` can point an
OEM engineer at the exact key that does not fit the car's DBC files.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import cantools
from cantools.database.can import Database, Message, Signal

from agent.config import BusSettings, Loaded, SignalSettings
from agent.errors import ConfigError, Problem

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
    warnings: tuple[Problem, ...] = ()  # check-config prints these; they never refuse


def load_database(path: str) -> Database:
    """Load one DBC (or any CAN database cantools reads), strictly."""
    db = cantools.database.load_file(path, strict=True)
    if not isinstance(db, Database):
        raise ValueError("not a CAN database (diagnostics databases are not supported)")
    return db


def load_vehicle(loaded: Loaded) -> Vehicle:
    """Load every bus's DBC files and resolve the mappings; ConfigError lists every problem."""
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
    if problems:
        raise ConfigError(problems + checked.warnings)
    return Vehicle(
        loaded=loaded,
        buses=buses,
        mapped=tuple(mapped),
        types=checked.types,
        warnings=tuple(sorted(checked.warnings)),
    )


def _load_bus(loaded: Loaded, index: int, bus: BusSettings, problems: list[Problem]) -> BusDb:
    db = BusDb(settings=bus, index=index)
    origin: dict[int, str] = {}
    for file_index, path in enumerate(bus.dbc):
        where = ("can", "buses", index, "dbc", file_index)
        try:
            database = load_database(str(path))
        except FileNotFoundError:
            problems.append(loaded.problem(where, f"DBC file not found: {path}"))
            continue
        except OSError as exc:
            problems.append(loaded.problem(where, f"cannot read DBC file {path}: {exc.strerror}"))
            continue
        except Exception as exc:  # cantools/textparser raise many types; all mean "bad file"
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            problems.append(loaded.problem(where, f"cannot parse DBC file {path}: {reason}"))
            continue
        for message in database.messages:
            key = frame_key(message.frame_id, message.is_extended_frame)
            if key in db.messages:
                other = db.messages[key]
                problems.append(
                    loaded.problem(
                        where,
                        f"frame id {message.frame_id:#x} ({message.name}) is already defined "
                        f"as {other.name} in {origin[key]}",
                    )
                )
                continue
            if message.is_fd and not bus.fd:
                problems.append(
                    loaded.problem(
                        ("can", "buses", index, "fd"),
                        f"{message.name} in {path.name} is a CAN FD frame; set fd: true",
                    )
                )
            origin[key] = path.name
            db.add(message)
    return db


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
    if not hits:
        known = sorted({name for bus in candidates for name in bus.signals})
        if message_name:
            known = sorted(
                f"{m.name}.{s.name}"
                for bus in candidates
                for m in bus.by_name.values()
                for s in m.signals
            )
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
