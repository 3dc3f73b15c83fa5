"""Maintenance alert rules: a condition over current signal values that must hold for a while
before an alert is raised, and a separate condition that clears it (hysteresis).

    tyre_pressure_low_front_left:  raise when pressure < 220 kPa for 30 s, clear when > 230 kPa

Between the two thresholds nothing changes, so a value hovering at the limit does not flap.
Pure logic: values and a clock come in, raised/cleared transitions come out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.config import AlertSettings
from agent.expr import Expression, parse


@dataclass(frozen=True, slots=True)
class Transition:
    name: str
    state: str  # "raised" | "cleared"
    severity: str
    values: dict[str, Any]


@dataclass(slots=True)
class _Rule:
    name: str
    raise_when: Expression
    clear_when: Expression | None
    for_s: float
    severity: str
    pending_since: float | None = None
    active_since: float | None = None


@dataclass(slots=True)
class AlertEngine:
    rules: list[_Rule] = field(default_factory=list)

    @classmethod
    def from_settings(cls, settings: list[AlertSettings]) -> AlertEngine:
        return cls(
            [
                _Rule(
                    a.name,
                    parse(a.raise_when),
                    parse(a.clear_when) if a.clear_when else None,
                    a.for_s,
                    a.severity,
                )
                for a in settings
            ]
        )

    def replace_rules(self, other: AlertEngine) -> None:
        """Reload: new rules; an alert active under the same name stays active."""
        active = {r.name: r.active_since for r in self.rules if r.active_since is not None}
        for rule in other.rules:
            rule.active_since = active.get(rule.name)
        self.rules = other.rules

    @property
    def active(self) -> list[str]:
        return sorted(r.name for r in self.rules if r.active_since is not None)

    def evaluate(self, values: Mapping[str, Any], now: float) -> list[Transition]:
        out: list[Transition] = []
        for rule in self.rules:
            shown = {p: values.get(p) for p in sorted(rule.raise_when.paths)}
            if rule.active_since is None:
                if rule.raise_when.evaluate(values, {}):
                    if rule.pending_since is None:
                        rule.pending_since = now
                    if now - rule.pending_since >= rule.for_s:
                        rule.active_since = now
                        rule.pending_since = None
                        out.append(Transition(rule.name, "raised", rule.severity, shown))
                else:
                    rule.pending_since = None
                continue
            if rule.clear_when is not None:
                clear = rule.clear_when.evaluate(values, {})
            else:  # no clear condition: clear once the raise condition is definitely false
                clear = not rule.raise_when.evaluate(values, {}) and all(
                    values.get(p) is not None for p in rule.raise_when.paths
                )
            if clear:
                rule.active_since = None
                out.append(Transition(rule.name, "cleared", rule.severity, shown))
        return out
