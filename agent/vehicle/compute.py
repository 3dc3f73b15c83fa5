"""`compute:` paths: values derived from other mapped paths (INTERFACE section 7).

Each computed path is an arithmetic expression (agent.expr.parse_arithmetic) over mapped
paths. It is evaluated when one of its inputs changes, on the newest value of every input,
and stamped with the frame time of the newest input; while an input has no value yet the
path has none either. The result is typed like any decoded sample: rounded to the path's
decimals, whole on an integer path, dropped and counted outside the catalog's min/max. The
derived samples join the decoded ones before the sampling policies, so policies apply.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from agent.config import SignalSettings
from agent.expr import Expression, parse_arithmetic
from agent.vehicle.model import Sample, Value
from agent.vehicle.vsscheck import PathType

_new = tuple.__new__  # a Sample without NamedTuple's __new__: the live path makes many


@dataclass(slots=True)
class ComputeStats:
    computed: int = 0
    out_of_range: int = 0
    no_value: int = 0  # an input missing or not a number, or a division by zero


@dataclass(frozen=True, slots=True)
class _Computed:
    path: str
    expression: Expression
    ptype: PathType
    # Worked out once from the above for the live path, which evaluates at every change.
    paths: tuple[str, ...] = ()
    low: float = -math.inf
    high: float = math.inf

    @classmethod
    def of(cls, path: str, expression: Expression, ptype: PathType) -> _Computed:
        return cls(
            path,
            expression,
            ptype,
            tuple(sorted(expression.paths)),
            -math.inf if ptype.low is None else ptype.low,
            math.inf if ptype.high is None else ptype.high,
        )


class Computer:
    """Keeps the newest value of every input path and derives the computed paths."""

    def __init__(self, signals: Iterable[SignalSettings], types: Mapping[str, PathType]) -> None:
        self._by_input: dict[str, list[_Computed]] = {}
        for sig in signals:
            if sig.compute is None:
                continue
            computed = _Computed.of(
                sig.path, parse_arithmetic(sig.compute), types.get(sig.path) or PathType("float")
            )
            for path in computed.expression.paths:
                self._by_input.setdefault(path, []).append(computed)
        self._values: dict[str, Value] = {}
        # Each input's newest frame time, seen or not changed (the live path renews it for
        # frames it skips as repeats: agent.vehicle.repeats).
        self.seen_at: dict[str, float] = {}
        self.stats = ComputeStats()

    def __bool__(self) -> bool:
        return bool(self._by_input)

    @property
    def outputs(self) -> frozenset[str]:
        """The computed paths."""
        return frozenset(c.path for users in self._by_input.values() for c in users)

    @property
    def inputs(self) -> frozenset[str]:
        """The paths the computed ones are made of."""
        return frozenset(self._by_input)

    def feed(self, samples: list[Sample], start: int = 0) -> None:
        """Append to `samples` the computed values that the samples of one frame (those
        from `start` on) change."""
        by_input = self._by_input
        due: dict[str, _Computed] = {}
        for sample in samples[start:] if start else samples:
            users = by_input.get(sample.path)
            if users is None:
                continue
            old = self._values.get(sample.path)
            self.seen_at[sample.path] = sample.ts
            if old is not None and old == sample.value and type(old) is type(sample.value):
                continue
            self._values[sample.path] = sample.value
            for computed in users:
                due[computed.path] = computed
        for computed in due.values():
            derived = self._evaluate(computed)
            if derived is not None:
                samples.append(derived)

    def _evaluate(self, computed: _Computed) -> Sample | None:
        value = computed.expression.number(self._values)
        if value is None:
            self.stats.no_value += 1
            return None
        ptype = computed.ptype
        result: Value
        if ptype.kind == "integer":
            result = round(value)
        elif ptype.decimals is not None:
            result = round(float(value), ptype.decimals)
        else:
            result = float(value)
        if not computed.low <= result <= computed.high:
            self.stats.out_of_range += 1
            return None
        self.stats.computed += 1
        times = self.seen_at
        ts = max([times[p] for p in computed.paths])
        return _new(Sample, (computed.path, ts, result))
