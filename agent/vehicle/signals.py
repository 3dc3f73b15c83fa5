"""Sampling policies and last-known values: which decoded samples are worth publishing.

Policies run on the frames' own timestamps, never the wall clock, so a log replayed at full
speed is sampled exactly as the car was. Per path:

- `on_change`: publish when the value differs from the last published one (for numbers:
  by more than `deadband`; booleans and strings: any difference);
- `max_interval_s`: publish at least this often while the signal keeps arriving (heartbeat);
- `min_interval_ms`: never publish more often than this, whatever the other two say;
- `on_change: false` without a heartbeat publishes every value, limited by `min_interval_ms`.

The first value of a path is always published. If time runs backwards (a log spliced from two
recordings, a bus whose clock was reset) the interval is taken as elapsed rather than stalling.

`timing` says from when a path whose value stays as it is would next be published: what lets the
live path skip frames that repeat the last one (agent.vehicle.repeats).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from agent.config import SignalSettings
from agent.vehicle.model import Sample, Value


@dataclass(frozen=True, slots=True)
class Policy:
    on_change: bool = True
    deadband: float = 0.0
    min_interval_s: float = 0.0
    max_interval_s: float | None = None

    @classmethod
    def from_settings(cls, settings: SignalSettings) -> Policy:
        return cls(
            on_change=settings.on_change,
            deadband=settings.deadband,
            min_interval_s=settings.min_interval_ms / 1000.0,
            max_interval_s=settings.max_interval_s,
        )


def changed(new: Value, old: Value, deadband: float) -> bool:
    """Whether `new` differs from `old` enough to publish."""
    if (
        isinstance(new, int | float)
        and isinstance(old, int | float)
        and not isinstance(new, bool)
        and not isinstance(old, bool)
    ):
        return abs(new - old) > deadband if deadband > 0 else new != old
    return new != old or type(new) is not type(old)


class Sampler:
    """Applies each path's policy; keeps the last published sample and the latest value seen
    of each path (the value only: a frame skipped as a repeat carries the same one)."""

    def __init__(self, policies: Mapping[str, Policy]) -> None:
        self._rules = _rules(policies)
        self._published: dict[str, Sample] = {}
        self.values: dict[str, Value] = {}
        self.offered = 0
        self.suppressed = 0
        self.rules_version = 0  # changes with the policies: what was worked out from them is old

    def update_policies(self, policies: Mapping[str, Policy]) -> None:
        """New policies (on reload) apply from the next sample; history is kept."""
        self._rules = _rules(policies)
        self.rules_version += 1

    def timing(self, path: str) -> tuple[float, float, float]:
        """For a path whose value stays what it last was: (the earliest frame time at which
        `select` would publish it, the time it was last published, the time before which
        no sample of it is published whatever its value: `min_interval_ms` after the last
        one). -inf for a path with no rule or nothing published yet (every sample is looked
        at; nothing held back)."""
        last = self._published.get(path)
        rule = self._rules.get(path)
        if last is None or rule is None or path not in self.values:
            never = -_FOREVER
            return never, last[1] if last is not None else never, never
        min_s, max_s, deadband, on_change = rule
        # on_change: a value unlike the published one; otherwise every value, limited by
        # min_s, unless there is a heartbeat (then only the heartbeat).
        publishes = (
            changed(self.values[path], last[2], deadband) if on_change else max_s == _FOREVER
        )
        return last[1] + (min_s if publishes or max_s < min_s else max_s), last[1], last[1] + min_s

    def offer(self, sample: Sample) -> bool:
        """Record `sample`; True when its path's policy says publish it."""
        return bool(self.select((sample,)))

    def select(self, samples: Iterable[Sample]) -> list[Sample]:
        """The samples to publish, in order (the live path hands over all the samples of a
        read at once; `offer` is the case of one). The common outcomes, too soon after the
        last one or unchanged, are a few comparisons on the path's rule tuple."""
        out: list[Sample] = []
        append = out.append
        values = self.values
        published = self._published
        rules = self._rules
        offered = 0
        for sample in samples:
            offered += 1
            path, ts, value = sample
            values[path] = value
            last = published.get(path)
            if last is not None:
                rule = rules.get(path)
                if rule is not None:
                    min_s, max_s, deadband, on_change = rule
                    elapsed = ts - last[1]
                    if elapsed < 0:  # time ran backwards: taken as elapsed
                        elapsed = _LONG_AGO
                    if elapsed < min_s:
                        continue
                    if elapsed < max_s:  # no heartbeat due
                        if not on_change:
                            if max_s != _FOREVER:
                                continue  # published only on the heartbeat
                        else:
                            old = last[2]
                            new_type, old_type = value.__class__, old.__class__
                            if (new_type is float or new_type is int) and (
                                old_type is float or old_type is int
                            ):
                                if (
                                    abs(value - old) <= deadband  # type: ignore[operator]
                                    if deadband > 0
                                    else value == old
                                ):
                                    continue
                            elif new_type is old_type:  # booleans, strings
                                if value == old:
                                    continue
                            elif not changed(value, old, deadband):
                                continue
            published[path] = sample
            append(sample)
        self.offered += offered
        self.suppressed += offered - len(out)
        return out


_FOREVER = float("inf")  # no heartbeat
# Longer than any interval (a day at most) yet below _FOREVER, so time running backwards
# makes a heartbeat due where there is one and leaves on_change to decide where there is none.
_LONG_AGO = 1e300


def _rules(policies: Mapping[str, Policy]) -> dict[str, tuple[float, float, float, bool]]:
    """Each path's policy as (min_interval_s, max_interval_s or infinity, deadband,
    on_change): what `Sampler.select` unpacks per sample."""
    return {
        path: (
            p.min_interval_s,
            _FOREVER if p.max_interval_s is None else p.max_interval_s,
            p.deadband,
            p.on_change,
        )
        for path, p in policies.items()
    }


def policies_of(signals: Iterable[SignalSettings]) -> dict[str, Policy]:
    return {s.path: Policy.from_settings(s) for s in signals}
