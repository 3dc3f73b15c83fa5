"""Command definitions from the config, resolved against the DBC files and the mapped paths;
parameter checking. Pure: no clock, no bus, no broker.

A definition says which parameters a command takes (types, ranges, defaults), which
preconditions must hold over current signal values, which DBC message to encode and send
(constants and `$param` references per signal, repeated a few times), and which feedback
condition confirms it within a timeout.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cantools.database.can import Message, Signal

from agent.config import CommandDefinition, ParamSpec
from agent.errors import ConfigError, Problem
from agent.expr import Expression, parse
from agent.vehicle.dbc import Vehicle, choices_of


class BadParams(ValueError):
    """Parameters that do not fit the definition (reason BAD_PARAMS)."""


@dataclass(frozen=True, slots=True)
class ResolvedCommand:
    name: str
    definition: CommandDefinition
    preconditions: tuple[Expression, ...]
    feedback: Expression | None
    message: Message | None
    bus: str | None

    def check_params(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """The parameters with defaults filled in; BadParams says what is wrong."""
        specs = self.definition.params
        unknown = sorted(set(given) - set(specs))
        if unknown:
            raise BadParams(f"unknown parameter(s): {', '.join(unknown)}")
        out: dict[str, Any] = {}
        for name, spec in specs.items():
            if name not in given:
                required = spec.required if spec.required is not None else spec.default is None
                if required:
                    raise BadParams(f"{name} is required")
                if spec.default is not None:
                    out[name] = spec.default
                continue
            out[name] = _check_value(name, spec, given[name])
        return out

    def frame_values(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Every signal of the action's message: configured constants and parameters; the
        rest at the DBC's initial value, else zero (or the nearest value the DBC allows)."""
        assert self.message is not None and self.definition.action is not None
        values: dict[str, Any] = {s.name: _idle_value(s) for s in self.message.signals}
        for signal, value in self.definition.action.signals.items():
            if isinstance(value, str) and value.startswith("$"):
                values[signal] = params[value[1:]]
            else:
                values[signal] = value
        return values


def _idle_value(signal: Signal) -> Any:
    if signal.initial is not None:
        return signal.initial
    value: float = 0
    if signal.minimum is not None and value < signal.minimum:
        value = signal.minimum
    if signal.maximum is not None and value > signal.maximum:
        value = signal.maximum
    return value


def _first_error(exc: Exception) -> str:
    """One line for a back end: where in the parameter, and what is wrong."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        error = exc.errors()[0]
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error["loc"])
        return f"{where.lstrip('.')}: {error['msg']}" if where else str(error["msg"])
    return str(exc).splitlines()[0]


def _check_value(name: str, spec: ParamSpec, value: Any) -> Any:
    kind = spec.type
    if kind == "datetime":
        if not isinstance(value, str):
            raise BadParams(f"{name} must be an ISO 8601 time")
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise BadParams(f"{name} must be an ISO 8601 time") from None
        if moment.tzinfo is None:
            raise BadParams(f"{name} needs a time zone")
        return value
    if kind == "tariff":
        from pydantic import TypeAdapter, ValidationError

        from agent.energy.planner import TariffInterval, check_tariff

        try:
            intervals = TypeAdapter(list[TariffInterval]).validate_python(value)
            check_tariff(intervals)
        except (ValidationError, ValueError) as exc:
            raise BadParams(f"{name}: {_first_error(exc)}") from None
        return value
    if kind == "limits":
        from pydantic import TypeAdapter, ValidationError

        from agent.energy.planner import Limit, check_limits

        try:
            check_limits(TypeAdapter(list[Limit]).validate_python(value))
        except (ValidationError, ValueError) as exc:
            raise BadParams(f"{name}: {_first_error(exc)}") from None
        return value
    if kind == "object":
        if not isinstance(value, dict):
            raise BadParams(f"{name} must be an object")
        return value
    if kind == "boolean":
        if not isinstance(value, bool):
            raise BadParams(f"{name} must be true or false")
        return value
    if kind == "string":
        if not isinstance(value, str):
            raise BadParams(f"{name} must be a string")
        if spec.choices is not None and value not in spec.choices:
            raise BadParams(f"{name} must be one of {', '.join(spec.choices)}")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadParams(f"{name} must be a number")
    if isinstance(value, int) and abs(value) > 2**53:  # 10**400 would overflow a float
        raise BadParams(f"{name} is out of range")
    if not math.isfinite(value):
        raise BadParams(f"{name} must be finite")
    if kind == "integer":
        if isinstance(value, float) and not value.is_integer():
            raise BadParams(f"{name} must be a whole number")
        value = int(value)
    if spec.min is not None and value < spec.min:
        raise BadParams(f"{name} must be at least {spec.min:g}")
    if spec.max is not None and value > spec.max:
        raise BadParams(f"{name} must be at most {spec.max:g}")
    return value


def resolve(vehicle: Vehicle) -> dict[str, ResolvedCommand]:
    """Every definition checked against the DBC files and the mapped paths."""
    loaded = vehicle.loaded
    definitions = loaded.settings.commands.definitions
    mapped_paths = {m.path for m in vehicle.mapped}
    problems: list[Problem] = []
    resolved: dict[str, ResolvedCommand] = {}
    for name, definition in definitions.items():
        where: tuple[str | int, ...] = ("commands", "definitions", name)
        params = set(definition.params)
        expressions: list[tuple[tuple[str | int, ...], Expression]] = []
        for i, text in enumerate(definition.preconditions):
            expressions.append(((*where, "preconditions", i), parse(text)))
        feedback = None
        if definition.feedback is not None:
            feedback = parse(definition.feedback.condition)
            expressions.append(((*where, "feedback", "condition"), feedback))
        for at, expression in expressions:
            for path in sorted(expression.paths - mapped_paths):
                problems.append(loaded.problem(at, f"{path} is not a mapped signal path"))
            for param in sorted(expression.params - params):
                problems.append(loaded.problem(at, f"${param} is not a parameter of {name}"))
        for pname, spec in definition.params.items():
            if spec.min is not None and spec.max is not None and spec.min > spec.max:
                problems.append(loaded.problem((*where, "params", pname), "min is above max"))
        if definition.auto_stop is not None:
            stop = definition.auto_stop
            if stop.after_param not in params:
                problems.append(
                    loaded.problem(
                        (*where, "auto_stop", "after_param"),
                        f"{stop.after_param!r} is not a parameter",
                    )
                )
            if stop.command not in definitions:
                problems.append(
                    loaded.problem(
                        (*where, "auto_stop", "command"), f"no command {stop.command!r} is defined"
                    )
                )
        message, bus = None, None
        if definition.action is not None:
            message, bus = _resolve_action(vehicle, name, definition, params, problems)
        resolved[name] = ResolvedCommand(
            name,
            definition,
            tuple(e for at, e in expressions if at[3] == "preconditions"),
            feedback,
            message,
            bus,
        )
    for index, ecu in enumerate(loaded.settings.diagnostics.ecus):
        if ecu.bus not in vehicle.buses:
            problems.append(
                loaded.problem(("diagnostics", "ecus", index, "bus"), f"unknown bus {ecu.bus!r}")
            )
    for index, alert in enumerate(loaded.settings.alerts):
        for key in ("raise_when", "clear_when"):
            text = getattr(alert, key)
            if text is None:
                continue
            for path in sorted(parse(text).paths - mapped_paths):
                problems.append(
                    loaded.problem(("alerts", index, key), f"{path} is not a mapped signal path")
                )
    if problems:
        raise ConfigError(problems)
    return resolved


def _resolve_action(
    vehicle: Vehicle,
    name: str,
    definition: CommandDefinition,
    params: set[str],
    problems: list[Problem],
) -> tuple[Message | None, str | None]:
    loaded = vehicle.loaded
    action = definition.action
    assert action is not None
    where: tuple[str | int, ...] = ("commands", "definitions", name, "action")
    buses = (
        [vehicle.buses[action.bus]] if action.bus in vehicle.buses else list(vehicle.buses.values())
    )
    if action.bus is not None and action.bus not in vehicle.buses:
        problems.append(loaded.problem((*where, "bus"), f"unknown bus {action.bus!r}"))
        return None, None
    hits = [(b.name, b.by_name[action.message]) for b in buses if action.message in b.by_name]
    if len(hits) != 1:
        what = "no DBC message" if not hits else "an ambiguous DBC message (set bus)"
        problems.append(loaded.problem((*where, "message"), f"{what} {action.message!r}"))
        return None, None
    bus, message = hits[0]
    signals = {s.name: s for s in message.signals}
    for signal_name, value in action.signals.items():
        at = (*where, "signals", signal_name)
        signal = signals.get(signal_name)
        if signal is None:
            problems.append(loaded.problem(at, f"{message.name} has no signal {signal_name!r}"))
            continue
        if isinstance(value, str) and value.startswith("$"):
            if value[1:] not in params:
                problems.append(loaded.problem(at, f"{value} is not a parameter of {name}"))
        elif isinstance(value, str) and value not in choices_of(signal).values():
            problems.append(loaded.problem(at, f"{value!r} is not a choice of {signal_name}"))
    return message, bus
