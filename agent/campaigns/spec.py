"""A campaign as the back end sends it (INTERFACE section 9): the model, its validation
against the car's mapped paths and the condition language, and the memory it may use.

Conditions are the precondition language (agent/expr.py) plus the window functions
`avg(path, seconds)`, `min(path, seconds)` and `max(path, seconds)`. Each window call is
rewritten to a synthetic path (`_avg_10.Vehicle.Speed`) before parsing, so the language itself
stays as it is; the engine supplies those paths' values from its windows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    model_validator,
)

from agent.campaigns.ring import MAX_WINDOW_SAMPLES
from agent.expr import ExprError, Expression, parse

# A sample in a ring costs 16 bytes (two doubles, or a double and a reference to a shared
# string); rings are preallocated, so this is what a campaign's rings take whatever arrives.
# Each signal's ring and each condition window add their own overhead; a window holds at most
# ring.MAX_WINDOW_SAMPLES (time, value) pairs. The memory a campaign may use is the sum, and
# tests/campaigns measures it with tracemalloc.
BYTES_PER_SAMPLE = 16
BYTES_PER_SIGNAL = 600  # the ring object, its arrays' headers, the engine's entries for it
BYTES_PER_WINDOW_SAMPLE = 110  # a tuple of two floats in a deque
BYTES_PER_CAMPAIGN = 16_384  # the model, the compiled condition, state
MAX_SAMPLES_PER_SIGNAL = 100_000
MAX_SIGNALS = 200
MAX_CAMPAIGN_SAMPLES = 50_000  # all its rings together: a capture of at most twice that
MAX_WINDOW_S = 3600.0
_WINDOW = re.compile(
    r"\b(avg|min|max)\s*\(\s*([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)\s*,"
    r"\s*(\d+(?:\.\d+)?)\s*\)"
)


def _aware(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("give a time zone, e.g. 2026-12-01T00:00:00Z")
    return value.astimezone(UTC)


Moment = Annotated[datetime, AfterValidator(_aware)]


class SignalSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    path: str
    min_interval_ms: Annotated[int, Field(ge=0, le=3_600_000)] = 0
    max_samples: Annotated[int, Field(ge=1, le=MAX_SAMPLES_PER_SIGNAL)] = 600


class PeriodicTrigger(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    period_s: Annotated[float, Field(ge=1, le=86_400 * 7, allow_inf_nan=False)]


class ConditionTrigger(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    condition: Annotated[str, Field(min_length=1, max_length=2000)]
    mode: Literal["rising_edge", "always"] = "rising_edge"
    min_interval_s: Annotated[float, Field(ge=0, le=86_400 * 7, allow_inf_nan=False)] = 0.0

    @model_validator(mode="after")
    def _always_needs_a_pause(self) -> ConditionTrigger:
        if self.mode == "always" and self.min_interval_s < 1:
            raise ValueError("mode 'always' needs min_interval_s of at least 1")
        return self


def _trigger_kind(value: Any) -> str | None:
    if isinstance(value, PeriodicTrigger) or (isinstance(value, dict) and "period_s" in value):
        return "periodic"
    if isinstance(value, ConditionTrigger) or (isinstance(value, dict) and "condition" in value):
        return "condition"
    return None  # neither: pydantic reports that the tag cannot be found


Trigger = Annotated[
    Annotated[PeriodicTrigger, Tag("periodic")] | Annotated[ConditionTrigger, Tag("condition")],
    Discriminator(
        _trigger_kind,
        custom_error_type="trigger_kind",
        custom_error_message="give either period_s, or a condition (with mode, min_interval_s)",
    ),
]


class Campaign(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
    version: Annotated[int, Field(ge=1, le=2**31)]
    start: Moment | None = None
    expires: Moment
    signals: Annotated[list[SignalSpec], Field(min_length=1, max_length=MAX_SIGNALS)]
    trigger: Trigger
    pre_trigger_s: Annotated[float, Field(ge=0, le=MAX_WINDOW_S, allow_inf_nan=False)] = 0.0
    post_trigger_s: Annotated[float, Field(ge=0, le=MAX_WINDOW_S, allow_inf_nan=False)] = 0.0
    priority: Annotated[int, Field(ge=0, le=9)] = 5

    @model_validator(mode="after")
    def _shape(self) -> Campaign:
        paths = [s.path for s in self.signals]
        if len(set(paths)) != len(paths):
            raise ValueError("a signal path is listed twice")
        total = sum(s.max_samples for s in self.signals)
        if total > MAX_CAMPAIGN_SAMPLES:
            raise ValueError(
                f"its signals' max_samples add up to {total}; at most {MAX_CAMPAIGN_SAMPLES}"
            )
        if self.start is not None and self.start >= self.expires:
            raise ValueError("expires is not after start")
        return self

    @property
    def memory_bytes(self) -> int:
        """The most it may use (what `campaigns.max_memory_kb` is checked with)."""
        windows = len(_WINDOW.findall(getattr(self.trigger, "condition", "")))
        return (
            BYTES_PER_CAMPAIGN
            + sum(s.max_samples * BYTES_PER_SAMPLE + BYTES_PER_SIGNAL for s in self.signals)
            + windows * MAX_WINDOW_SAMPLES * BYTES_PER_WINDOW_SAMPLE
        )


@dataclass(frozen=True, slots=True)
class Window:
    function: str  # avg | min | max
    path: str
    seconds: float


@dataclass(frozen=True, slots=True)
class Checked:
    """A campaign that passed every check, with its condition compiled."""

    campaign: Campaign
    condition: Expression | None
    windows: dict[str, Window]  # synthetic path -> window

    @property
    def inputs(self) -> frozenset[str]:
        """The real paths its condition reads (directly or through a window)."""
        if self.condition is None:
            return frozenset()
        direct = {p for p in self.condition.paths if p not in self.windows}
        return frozenset(direct | {w.path for w in self.windows.values()})

    @property
    def paths(self) -> frozenset[str]:
        """Every real path it reads: collected signals, and the condition's inputs."""
        read = {s.path for s in self.campaign.signals}
        if self.condition is not None:
            read |= {p for p in self.condition.paths if p not in self.windows}
        read |= {w.path for w in self.windows.values()}
        return frozenset(read)


class CampaignError(ValueError):
    """A campaign that cannot be applied; the message names the problem (BAD_PARAMS)."""


def compile_condition(text: str) -> tuple[Expression, dict[str, Window]]:
    windows: dict[str, Window] = {}

    def rewrite(match: re.Match[str]) -> str:
        function, path, seconds = match.group(1), match.group(2), float(match.group(3))
        if not 0 < seconds <= MAX_WINDOW_S:
            raise CampaignError(
                f"trigger.condition: {function}({path}, {match.group(3)}): the window must be "
                f"more than 0 and at most {MAX_WINDOW_S:g} s"
            )
        name = f"_{function}_{match.group(3).replace('.', '_')}.{path}"
        windows[name] = Window(function, path, seconds)
        return name

    rewritten = _WINDOW.sub(rewrite, text)
    try:
        expression = parse(rewritten)
    except ExprError as exc:
        raise CampaignError(f"trigger.condition: {exc}") from None
    if expression.params:
        raise CampaignError("trigger.condition: a campaign's condition takes no $parameters")
    return expression, windows


def check(body: Any, mapped: frozenset[str]) -> Checked:
    """The campaign from a command's `campaign` parameter; CampaignError names the problem."""
    try:
        campaign = Campaign.model_validate(body)
    except ValidationError as exc:
        error = exc.errors()[0]
        # The union's tag ("condition", "periodic") is not a key the back end wrote.
        loc = [
            p for i, p in enumerate(error["loc"]) if not (i and error["loc"][i - 1] == "trigger")
        ]
        where = ".".join(str(p) for p in loc)
        raise CampaignError(f"{where}: {error['msg']}" if where else error["msg"]) from None
    for i, spec in enumerate(campaign.signals):
        if spec.path not in mapped:
            raise CampaignError(f"signals.{i}.path: {spec.path} is not a mapped path of this car")
    condition: Expression | None = None
    windows: dict[str, Window] = {}
    if isinstance(campaign.trigger, ConditionTrigger):
        condition, windows = compile_condition(campaign.trigger.condition)
        for path in sorted(condition.paths):
            real = windows[path].path if path in windows else path
            if real not in mapped:
                raise CampaignError(f"trigger.condition: {real} is not a mapped path of this car")
    return Checked(campaign, condition, windows)
