"""Scenarios: where the simulated car starts and what happens to it over time.

A scenario is a built-in name (`parked`, `driving`, `plugged_in`) or a YAML file:

    mode: parked                      # parked | driving | plugged_in
    initial: {soc: 35, cabin_temp: 31, exterior_temp: 30}
    tyre_leak_bar_per_h: {front_left: 0.05}
    events:
      - {at_s: 120, mode: plugged_in}
      - {at_s: 600, set: {exterior_temp: 12}}
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from agent.config import SCENARIOS
from agent.errors import ConfigError, Problem
from agent.sim import physics
from agent.sim.physics import VehicleState

Mode = Literal["parked", "driving", "plugged_in"]

# Fields a scenario may set; the rest of VehicleState is derived or internal.
SETTABLE = frozenset(
    f.name for f in dataclasses.fields(VehicleState) if f.name not in {"mode", "elapsed_s"}
)


def _check_fields(values: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(values) - SETTABLE)
    if unknown:
        raise ValueError(f"unknown state field(s) {unknown}; known: {sorted(SETTABLE)}")
    return values


class Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    at_s: Annotated[float, Field(ge=0)]
    mode: Mode | None = None
    set: dict[str, Any] = Field(default_factory=dict)

    _fields = field_validator("set")(_check_fields)


class Scenario(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    mode: Mode = "parked"
    initial: dict[str, Any] = Field(default_factory=dict)
    tyre_leak_bar_per_h: dict[str, Annotated[float, Field(ge=0, le=100)]] = Field(
        default_factory=dict
    )
    events: list[Event] = Field(default_factory=list)

    _fields = field_validator("initial")(_check_fields)

    @field_validator("tyre_leak_bar_per_h")
    @classmethod
    def _wheels(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(value) - set(physics.WHEELS))
        if unknown:
            raise ValueError(f"unknown wheel(s) {unknown}; wheels: {list(physics.WHEELS)}")
        return value

    def initial_state(self) -> VehicleState:
        state = VehicleState()
        for name, value in self.initial.items():
            setattr(state, name, value)
        for wheel, rate in self.tyre_leak_bar_per_h.items():
            state.tyre_leak_bar_per_h[physics.WHEELS.index(wheel)] = rate
        physics.apply_mode(state, self.mode)
        return state


def load_scenario(spec: str, base_dir: Path | None = None) -> Scenario:
    """A built-in scenario by name, or one read from a YAML file."""
    if spec in SCENARIOS:
        return Scenario(mode=spec)  # type: ignore[arg-type]
    path = Path(spec)
    if base_dir is not None and not path.is_absolute():
        path = base_dir / path
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        return Scenario.model_validate(data)
    except OSError as exc:
        problem = (
            f"not a built-in scenario ({', '.join(SCENARIOS)}) nor a readable file: {exc.strerror}"
        )
        raise ConfigError([Problem(str(path), 1, "scenario", problem)]) from exc
    except yaml.YAMLError as exc:
        raise ConfigError([Problem(str(path), 1, "(document)", f"YAML error: {exc}")]) from exc
    except ValidationError as exc:
        problems = [
            Problem(str(path), 1, ".".join(str(p) for p in e["loc"]) or "(document)", e["msg"])
            for e in exc.errors()
        ]
        raise ConfigError(problems) from exc
