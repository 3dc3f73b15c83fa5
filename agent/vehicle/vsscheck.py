"""Mappings against the VSS catalog: each path's type at run time, and check-config's problems.

For every configured path this decides the one JSON type its samples carry (the catalog's
datatype, or for a path outside the catalog with `unknown_paths: warn`, what the mapping
gives), its range and allowed values, and the decimals numbers are rounded to. It refuses a
mapping that cannot produce the path's type and warns where the DBC's unit differs from the
catalog's, naming the linear transform that converts.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from agent.config import Loaded, SignalSettings
from agent.errors import Problem
from agent.expr import parse_arithmetic
from agent.vehicle import units
from agent.vehicle.catalog import Catalog, Leaf, builtin, with_overlays
from agent.vehicle.dbc import MappedSignal, choices_of, raw_range

MAX_COMPUTE_DECIMALS = 6


@dataclass(frozen=True, slots=True)
class PathType:
    """What every sample of one path is: its kind, range, allowed strings and rounding."""

    kind: str  # integer | float | boolean | string
    low: float | None = None
    high: float | None = None
    allowed: frozenset[str] | None = None
    decimals: int | None = None  # float paths: round to this many; None: leave as decoded


@dataclass(slots=True)
class Checked:
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    types: dict[str, PathType] = field(default_factory=dict)


def decimals_of(number: Decimal) -> int:
    exponent = number.normalize().as_tuple().exponent
    return max(0, -exponent) if isinstance(exponent, int) else 0


def effective_linear(mapped: MappedSignal) -> tuple[Decimal, Decimal]:
    """The DBC conversion and the configured linear transform folded into one (scale,
    offset), in decimals so that 0.1 * 1000 is exactly 100."""
    signal = mapped.signal
    scale = Decimal(repr(float(signal.conversion.scale)))
    offset = Decimal(repr(float(signal.conversion.offset)))
    transform = mapped.settings.transform
    if transform is not None and transform.linear is not None:
        t_scale = Decimal(repr(transform.linear.scale))
        t_offset = Decimal(repr(transform.linear.offset))
        scale, offset = scale * t_scale, offset * t_scale + t_offset
    return scale, offset


def resolution_decimals(mapped: MappedSignal) -> int:
    """The decimals of the signal's effective scale and offset (its resolution)."""
    scale, offset = effective_linear(mapped)
    return max(decimals_of(scale), decimals_of(offset))


def load_catalog(loaded: Loaded) -> tuple[Catalog, list[Problem]]:
    vss = loaded.settings.vss
    return with_overlays(builtin(vss.release), vss.overlays)


def check(loaded: Loaded, mapped: Iterable[MappedSignal]) -> Checked:
    """Every mapping against the catalog (with overlays); types of every configured path."""
    catalog, overlay_problems = load_catalog(loaded)
    result = Checked(problems=list(overlay_problems))
    by_index = {m.index: m for m in mapped}
    for index, sig in enumerate(loaded.settings.signals):
        leaf = _leaf_of(loaded, index, sig, catalog, result)
        found = by_index.get(index)
        if found is not None:
            _check_source(loaded, found, leaf, result)
    # Computed paths last: their decimals follow their inputs'.
    for index, sig in enumerate(loaded.settings.signals):
        if sig.compute is not None:
            leaf = catalog.get(sig.path)
            _check_compute(loaded, index, sig, leaf, result)
    return result


def _leaf_of(
    loaded: Loaded, index: int, sig: SignalSettings, catalog: Catalog, result: Checked
) -> Leaf | None:
    leaf = catalog.get(sig.path)
    if leaf is not None:
        if leaf.kind == "array":
            result.problems.append(
                loaded.problem(
                    ("signals", index, "path"),
                    f"{sig.path} is a VSS array ({leaf.datatype}); one CAN signal cannot fill it",
                )
            )
        return leaf
    hint = catalog.suggest(sig.path)
    suggestion = f" (did you mean {hint}?)" if hint else ""
    warn = loaded.settings.vss.unknown_paths == "warn"
    message = f"{sig.path} is not in the VSS {catalog.release} catalog{suggestion}"
    if not warn:
        message += "; add it with a vss.overlays file or set vss.unknown_paths: warn"
    problem = loaded.problem(("signals", index, "path"), message, warning=warn)
    (result.warnings if warn else result.problems).append(problem)
    return None


def _map_outputs(mapped: MappedSignal) -> list[Any]:
    transform = mapped.settings.transform
    if transform is None or transform.map is None:
        return []
    return [value for value in transform.map.values() if value is not None]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _mapping_kind(mapped: MappedSignal) -> str:
    """What an unmapped-in-the-catalog path carries: the mapping decides."""
    outputs = _map_outputs(mapped)
    if outputs:
        if all(isinstance(v, bool) for v in outputs):
            return "boolean"
        if all(isinstance(v, str) for v in outputs):
            return "string"
        return "float"
    if mapped.settings.transform is None and choices_of(mapped.signal):
        return "string"
    return "float"


def untyped(mapped: MappedSignal) -> PathType:
    """The type of a path outside the catalog: what its mapping gives."""
    kind = _mapping_kind(mapped)
    decimals = None
    if kind == "float" and not _map_outputs(mapped):
        decimals = mapped.settings.decimals
        if decimals is None and not mapped.signal.is_float:
            decimals = resolution_decimals(mapped)
    return PathType(kind, decimals=decimals)


def _check_source(loaded: Loaded, mapped: MappedSignal, leaf: Leaf | None, result: Checked) -> None:
    sig = mapped.settings
    signal = mapped.signal
    where = ("signals", mapped.index)
    if leaf is None:
        result.types[sig.path] = untyped(mapped)
    kind = leaf.kind if leaf is not None else _mapping_kind(mapped)
    if kind == "array":
        return
    low, high = leaf.bounds if leaf is not None else (None, None)
    allowed = frozenset(map(str, leaf.allowed)) if leaf and leaf.allowed else None
    names = choices_of(signal)
    transform = sig.transform
    has_map = transform is not None and transform.map is not None
    problems = result.problems

    def refuse(key: tuple[Any, ...], message: str) -> None:
        problems.append(loaded.problem((*where, *key), message))

    if has_map:
        if _map_keys_fit(mapped):  # otherwise vehicle.dbc has said so: no follow-on problems
            _check_map_values(mapped, kind, low, high, allowed, refuse)
    elif names and transform is None:
        if kind == "boolean":
            refuse(
                ("source",),
                f"{signal.name} is a choice signal ({', '.join(names.values())}) on the boolean "
                "path; add a map giving true or false (or null) for every choice",
            )
        elif kind == "string" and allowed is not None:
            outside = [n for n in names.values() if n not in allowed]
            if outside:
                refuse(
                    ("source",),
                    f"choices {', '.join(outside)} of {signal.name} are not allowed values of "
                    f"{sig.path} ({', '.join(sorted(allowed))}); add a map",
                )
    elif kind == "boolean" and not _one_bit(mapped):
        refuse(("source",), f"{signal.name} gives numbers; a boolean path needs a map")
    elif kind == "string":
        refuse(("source",), f"{signal.name} gives numbers; a string path needs a map to names")
    _check_invalid(loaded, mapped, names, problems)
    decimals: int | None = None
    if kind == "float":
        decimals = sig.decimals
        if decimals is None and not has_map and not signal.is_float:
            decimals = resolution_decimals(mapped)
    if leaf is not None:
        result.types[sig.path] = PathType(kind, low, high, allowed, decimals)
    if leaf is not None and not has_map:
        _check_units(loaded, mapped, leaf, result)


def _one_bit(mapped: MappedSignal) -> bool:
    scale, offset = effective_linear(mapped)
    return mapped.signal.length == 1 and scale == 1 and offset == 0


def _map_keys_fit(mapped: MappedSignal) -> bool:
    transform = mapped.settings.transform
    assert transform is not None and transform.map is not None
    names = set(choices_of(mapped.signal).values())
    low, high = raw_range(mapped.signal)
    return all(
        key in names if isinstance(key, str) else not mapped.signal.is_float and low <= key <= high
        for key in transform.map
    )


def _check_map_values(
    mapped: MappedSignal,
    kind: str,
    low: float | None,
    high: float | None,
    allowed: frozenset[str] | None,
    refuse: Any,
) -> None:
    transform = mapped.settings.transform
    assert transform is not None and transform.map is not None
    for key, value in transform.map.items():
        if value is None:
            continue
        wrong = {
            "boolean": not isinstance(value, bool),
            "string": not isinstance(value, str),
            "integer": not _is_number(value) or float(value) != int(value),
            "float": not _is_number(value),
        }[kind]
        if wrong:
            refuse(("transform", "map", key), f"{value!r} is not a {kind} ({mapped.path})")
        elif kind == "string" and allowed is not None and value not in allowed:
            refuse(
                ("transform", "map", key),
                f"{value!r} is not an allowed value of {mapped.path} "
                f"({', '.join(sorted(allowed))})",
            )
        elif kind in ("integer", "float") and (
            (low is not None and value < low) or (high is not None and value > high)
        ):
            refuse(("transform", "map", key), f"{value!r} is outside {mapped.path}'s range")
    names = choices_of(mapped.signal)
    if kind == "boolean" and names:
        covered = {k for k in transform.map if isinstance(k, str)}
        covered |= {names[k] for k in transform.map if isinstance(k, int) and k in names}
        missing = [n for n in names.values() if n not in covered]
        if missing:
            refuse(
                ("transform", "map"),
                f"the map does not cover the choices {', '.join(missing)} of "
                f"{mapped.signal.name}; give each true, false or null",
            )


def _check_invalid(
    loaded: Loaded, mapped: MappedSignal, names: dict[int, str], problems: list[Problem]
) -> None:
    low, high = raw_range(mapped.signal)
    for position, entry in enumerate(mapped.settings.invalid):
        where = ("signals", mapped.index, "invalid", position)
        if isinstance(entry, str) and entry not in names.values():
            known = f" (choices: {', '.join(names.values())})" if names else ""
            problems.append(
                loaded.problem(where, f"{entry!r} is not a choice of {mapped.signal.name}{known}")
            )
        elif isinstance(entry, int) and not low <= entry <= high:
            problems.append(
                loaded.problem(where, f"{entry} is outside {mapped.signal.name}'s raw range")
            )


def _check_units(loaded: Loaded, mapped: MappedSignal, leaf: Leaf, result: Checked) -> None:
    dbc_unit = units.canonical(mapped.signal.unit)
    vss_unit = units.canonical(leaf.unit)
    if dbc_unit is None or vss_unit is None or dbc_unit == vss_unit:
        return
    transform = mapped.settings.transform
    factor = units.conversion(dbc_unit, vss_unit)
    where = ("signals", mapped.index, "source")
    # A transform given: only say so when it is not the conversion between two units we know
    # (a transform between units we do not know is the user's business).
    linear = transform.linear if transform is not None else None
    if linear is not None and (
        factor is None
        or (
            abs(linear.scale - factor[0]) <= 1e-9 * abs(factor[0])
            and abs(linear.offset - factor[1]) <= 1e-6
        )
    ):
        return
    if factor is None:
        message = f"the DBC unit {dbc_unit!r} is not VSS's {vss_unit!r} for {leaf.path}"
    else:
        scale, offset = factor
        text = f"scale: {units.shown(scale)}"
        if offset:
            text += f", offset: {units.shown(offset)}"
        message = (
            f"the DBC gives {dbc_unit}, VSS wants {vss_unit} for {leaf.path}; "
            f"convert with transform: {{linear: {{{text}}}}}"
        )
    result.warnings.append(loaded.problem(where, message, warning=True))


def _check_compute(
    loaded: Loaded, index: int, sig: SignalSettings, leaf: Leaf | None, result: Checked
) -> None:
    assert sig.compute is not None
    expression = parse_arithmetic(sig.compute)
    where = ("signals", index, "compute")
    mapped_paths = {s.path for s in loaded.settings.signals}
    missing = sorted(expression.paths - mapped_paths)
    if missing:
        result.problems.append(
            loaded.problem(where, f"reads {', '.join(missing)}, which no signal maps")
        )
    computed = {s.path for s in loaded.settings.signals if s.compute is not None}
    if expression.paths & computed:
        result.problems.append(
            loaded.problem(where, "reads another computed path; compute from mapped signals")
        )
    kind = leaf.kind if leaf is not None else "float"
    if kind not in ("integer", "float"):
        result.problems.append(
            loaded.problem(
                ("signals", index, "path"), f"{sig.path} is {kind}; compute gives numbers"
            )
        )
        return
    low, high = leaf.bounds if leaf is not None else (None, None)
    decimals = sig.decimals
    if decimals is None and kind == "float":
        # The inputs' decimals added up: exact for a product of two resolutions, enough for
        # a sum; an input decoded from an IEEE float has no resolution, so the most.
        inputs = [t for t in (result.types.get(p) for p in expression.paths) if t is not None]
        free = any(t.kind == "float" and t.decimals is None for t in inputs)
        total = MAX_COMPUTE_DECIMALS if free else sum(t.decimals or 0 for t in inputs)
        decimals = min(MAX_COMPUTE_DECIMALS, total)
    result.types[sig.path] = PathType(kind, low, high, None, decimals)
