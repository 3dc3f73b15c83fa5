"""The VSS catalog: every standard path with its node type, datatype, unit, range, allowed values.

The built-in release (agent/vehicle/data/vss-RELEASE.json.gz, generated from COVESA's spec with
vss-tools by `make vss`; see the NOTICE beside it) is read on first use only. Overlays are
`.vspec` files in the standard's overlay format; this module reads the part of it that adds or
refines leaves, without vss-tools:

    Vehicle.Custom:                 # a branch: accepted, nothing to record
      type: branch
    Vehicle.Custom.Boost:           # a new leaf: type and datatype required
      type: sensor
      datatype: uint8
      unit: percent
      min: 0
      max: 100
    Vehicle.Speed:                  # an existing leaf refined: only the keys given change
      max: 250
    Vehicle.Cabin.Sunroof:          # a node removed (with everything under it)
      delete: true

Keys are full dotted paths. `description`, `comment`, `deprecation`, `default` and other
documentation keys are accepted and ignored; `instances`, `#include` and struct types are not
supported (a problem says so).
"""

from __future__ import annotations

import functools
import gzip
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

from agent import yamlpos
from agent.errors import Problem

LEAF_TYPES = ("sensor", "actuator", "attribute")
INTEGER_RANGES: dict[str, tuple[int, int]] = {
    "uint8": (0, 0xFF),
    "uint16": (0, 0xFFFF),
    "uint32": (0, 0xFFFF_FFFF),
    "uint64": (0, 0xFFFF_FFFF_FFFF_FFFF),
    "int8": (-0x80, 0x7F),
    "int16": (-0x8000, 0x7FFF),
    "int32": (-0x8000_0000, 0x7FFF_FFFF),
    "int64": (-0x8000_0000_0000_0000, 0x7FFF_FFFF_FFFF_FFFF),
}
DATATYPES = (*INTEGER_RANGES, "float", "double", "boolean", "string")
_IGNORED_KEYS = {"description", "comment", "deprecation", "default", "uuid", "pattern", "const"}
_LEAF_KEYS = {"type", "datatype", "unit", "min", "max", "allowed", "delete"}


@dataclass(frozen=True, slots=True)
class Leaf:
    """One VSS signal or attribute."""

    path: str
    type: str  # sensor | actuator | attribute
    datatype: str  # uint8 ... int64, float, double, boolean, string, or an array (`string[]`)
    unit: str | None = None
    min: float | None = None
    max: float | None = None
    allowed: tuple[Any, ...] | None = None

    @property
    def kind(self) -> str:
        """What a sample of this path carries: integer, float, boolean, string or array."""
        if self.datatype.endswith("[]"):
            return "array"
        if self.datatype in INTEGER_RANGES:
            return "integer"
        if self.datatype in ("float", "double"):
            return "float"
        return self.datatype  # boolean, string

    @property
    def bounds(self) -> tuple[float | None, float | None]:
        """The catalog's min/max, narrowed by an integer datatype's own range."""
        low, high = self.min, self.max
        if self.datatype in INTEGER_RANGES:
            type_low, type_high = INTEGER_RANGES[self.datatype]
            low = type_low if low is None else max(low, type_low)
            high = type_high if high is None else min(high, type_high)
        return low, high


@dataclass(frozen=True, slots=True)
class Catalog:
    release: str
    leaves: Mapping[str, Leaf]

    def get(self, path: str) -> Leaf | None:
        return self.leaves.get(path)

    def suggest(self, path: str) -> str | None:
        """The closest known path, for a 'did you mean' hint (same parent branch first)."""
        import difflib  # only on a mistake: start-up stays lean

        parent, _, last = path.rpartition(".")
        same_name = [p for p in self.leaves if p.endswith("." + last)]
        hits = difflib.get_close_matches(path, same_name, n=8, cutoff=0.5)
        if hits:  # a leaf that moved to another branch keeps its name
            # Among instances (RearLeft, FrontRight, ...) VSS's own "any of them" reads best.
            anywhere = [hit for hit in hits if ".AnyPosition." in hit]
            return (anywhere or hits)[0]
        near = [p for p in self.leaves if p.startswith(parent + ".")] if parent else []
        for pool in (near, list(self.leaves)):
            hits = difflib.get_close_matches(path, pool, n=1, cutoff=0.75)
            if hits:
                return hits[0]
        return None


def _leaf(path: str, node: Mapping[str, Any]) -> Leaf:
    allowed = node.get("allowed")
    return Leaf(
        path=path,
        type=str(node["type"]),
        datatype=str(node["datatype"]),
        unit=node.get("unit"),
        min=node.get("min"),
        max=node.get("max"),
        allowed=tuple(allowed) if allowed is not None else None,
    )


@functools.cache
def builtin(release: str = "6.0") -> Catalog:
    """The catalog shipped in the package, read once per process on first use."""
    data_file = resources.files("agent.vehicle") / "data" / f"vss-{release}.json.gz"
    data = json.loads(gzip.decompress(data_file.read_bytes()))
    leaves = {path: _leaf(path, node) for path, node in data["leaves"].items()}
    return Catalog(release=data["release"], leaves=leaves)


def with_overlays(base: Catalog, files: Iterable[Path]) -> tuple[Catalog, list[Problem]]:
    """`base` with each overlay applied in order; problems name the overlay's own lines."""
    leaves = dict(base.leaves)
    problems: list[Problem] = []
    for file in files:
        _apply_overlay(Path(file), leaves, problems)
    return Catalog(release=base.release, leaves=leaves), problems


def _apply_overlay(file: Path, leaves: dict[str, Leaf], problems: list[Problem]) -> None:
    name = str(file)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(Problem(name, 1, "(file)", f"cannot read VSS overlay: {exc}"))
        return
    data, positions, issues = yamlpos.load(text)
    problems += [
        Problem(name, i.line, ".".join(map(str, i.path)) or "(document)", i.message) for i in issues
    ]
    if data is None:
        return
    if not isinstance(data, Mapping):
        problems.append(Problem(name, 1, "(document)", "a VSS overlay is a mapping of paths"))
        return
    for path, node in data.items():
        line = positions.line_of((path,))

        def problem(message: str, key: str = str(path), line: int = line) -> None:
            problems.append(Problem(name, line, key, message))

        if not isinstance(node, Mapping):
            problem("expected a mapping of node attributes")
            continue
        path = str(path)
        unsupported = sorted(set(node) - _LEAF_KEYS - _IGNORED_KEYS)
        if unsupported:
            problem(f"not supported in overlays here: {', '.join(unsupported)}")
            continue
        if node.get("delete") is True:
            for known in [p for p in leaves if p == path or p.startswith(path + ".")]:
                del leaves[known]
            continue
        if node.get("type") == "branch":
            continue
        _overlay_leaf(path, node, leaves, problem)


def _overlay_leaf(
    path: str, node: Mapping[str, Any], leaves: dict[str, Leaf], problem: Any
) -> None:
    old = leaves.get(path)
    node_type = node.get("type", old.type if old else None)
    datatype = node.get("datatype", old.datatype if old else None)
    if node_type not in LEAF_TYPES:
        problem(f"type must be one of {', '.join((*LEAF_TYPES, 'branch'))} (got {node_type!r})")
        return
    base_type = str(datatype).removesuffix("[]")
    if base_type not in DATATYPES:
        problem(f"datatype must be one of {', '.join(DATATYPES)} (got {datatype!r})")
        return
    for key in ("min", "max"):
        value = node.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            problem(f"{key} must be a number (got {value!r})")
            return
    allowed = node.get("allowed")
    if allowed is not None and not isinstance(allowed, list):
        problem(f"allowed must be a list (got {allowed!r})")
        return
    fresh = Leaf(path=path, type=str(node_type), datatype=str(datatype))
    start = old if old is not None else fresh
    leaves[path] = replace(
        start,
        type=str(node_type),
        datatype=str(datatype),
        unit=node.get("unit", start.unit),
        min=node.get("min", start.min),
        max=node.get("max", start.max),
        allowed=tuple(allowed) if allowed is not None else start.allowed,
    )
