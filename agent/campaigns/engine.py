"""Runs the car's campaigns: applies and removes them (signed commands), feeds their rings
from the decode path, fires their triggers, and hands each capture to the outbox.

Costs per frame only for the paths some active campaign reads: the pipeline taps a sample
only when its path is in `paths`, which is empty while no campaign is active. A condition is
evaluated on every tick (0.1 s) that brought its inputs new samples, at the newest input's
frame time, which is then the trigger's time. A capture holds the ring's last `pre_trigger_s`
seconds from the moment of the trigger, and the next `post_trigger_s` seconds are read from
the rings when the window has passed. Captures in flight when the agent stops are lost (the
campaign itself is stored and carries on after a restart).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog

from agent.campaigns.ring import Ring, Window
from agent.campaigns.spec import Campaign, CampaignError, Checked, ConditionTrigger, check
from agent.errors import StoreError
from agent.vehicle.model import Sample, Value

log = structlog.get_logger("agent.campaigns")

TICK_S = 0.1  # conditions, periodic triggers, captures and expiry: ten times a second
SETTLE_S = 0.3  # after a post-trigger window, for its last frames to arrive
WALL_SLACK_S = 2.0  # ... and by the wall clock, when no frame says the window has passed
TRIGGER_EVENTS_EVERY_S = 60.0
MAX_PENDING = 200_000  # tapped samples waiting for the tick (a stalled loop drops the oldest)
# `triggered` events of one campaign: at most one a minute


class CampaignStore(Protocol):
    """Where campaigns are kept (the command store implements it); raises StoreError."""

    def save_campaign(self, campaign_id: str, body: str | None) -> None: ...

    def note_trigger(self, campaign_id: str, ts: float) -> None: ...

    def load_campaigns(self) -> list[tuple[str, float | None]]: ...


# Publish one capture: (campaign, trigger time, samples) -> stored in the outbox.
Publish = Callable[[Campaign, float, list[Sample]], None]


@dataclass(slots=True)
class _Capture:
    trigger_ts: float
    end: float
    samples: list[Sample]  # the pre-trigger part, taken at the trigger
    # Per path, the time of the last sample already taken: the rest comes on later ticks (a
    # sample of another signal in the very frame of the trigger arrives after it).
    taken_until: dict[str, float]
    deadline: float  # wall clock: the window ends by then even if frames stop coming


@dataclass(slots=True)
class _Running:
    checked: Checked
    state: str = "pending"  # pending | active | expired
    rings: dict[str, Ring] = field(default_factory=dict)
    windows: dict[str, Window] = field(default_factory=dict)  # synthetic path -> window
    was_true: bool = False
    last_trigger: float = float("-inf")
    evaluated_at: float = float("-inf")  # the input frame time the condition last saw
    next_period: float = 0.0
    capture: _Capture | None = None
    triggers: int = 0
    unreported: int = 0
    last_report: float = float("-inf")

    @property
    def campaign(self) -> Campaign:
        return self.checked.campaign

    @property
    def inputs(self) -> frozenset[str]:
        return self.checked.inputs


class CampaignEngine:
    def __init__(
        self,
        *,
        mapped: frozenset[str],
        store: CampaignStore,
        publish: Publish,
        event: Callable[[str, dict[str, Any]], None],
        max_memory_bytes: int,
        on_paths: Callable[[frozenset[str]], None] = lambda paths: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._mapped = mapped
        self._store = store
        self._publish = publish
        self._event = event
        self._max_memory = max_memory_bytes
        self._clock = clock
        self._campaigns: dict[str, _Running] = {}
        # What the pipeline taps; `on_paths` tells it each time that changes.
        self.paths: frozenset[str] = frozenset()
        self._on_paths = on_paths
        self._feeds: dict[str, tuple[Callable[[float, Value], None], ...]] = {}
        self._pending: list[Sample] = []  # tapped since the last tick
        self.tap_dropped = 0
        self._conditions: dict[str, tuple[_Running, ...]] = {}
        self._latest_ts: dict[str, float] = {}
        self._latest: dict[str, Value] = {}

    # --- commands (the executor's validator and handlers) ----------------------------------
    def validate(self, params: Mapping[str, Any]) -> None:
        """campaign.apply's parameters beyond their type; CampaignError names the problem."""
        checked = check(params.get("campaign"), self._mapped)
        campaign = checked.campaign
        if campaign.expires.timestamp() <= self._clock():
            raise CampaignError("campaign.expires: it is in the past")
        others = sum(
            r.campaign.memory_bytes
            for cid, r in self._campaigns.items()
            if cid != campaign.id and r.state != "expired"
        )
        if others + campaign.memory_bytes > self._max_memory:
            raise CampaignError(
                f"campaign: its rings need {campaign.memory_bytes} bytes and the other "
                f"campaigns {others}; the car allows {self._max_memory} "
                f"(campaigns.max_memory_kb)"
            )
        old = self._campaigns.get(campaign.id)
        if old is not None and old.campaign.version >= campaign.version:
            raise CampaignError(
                f"campaign.version: {campaign.version} is not newer than the version "
                f"{old.campaign.version} in place"
            )

    def validate_remove(self, params: Mapping[str, Any]) -> None:
        """campaign.remove of an id the car does not have is BAD_PARAMS, before accepted."""
        if params.get("id") not in self._campaigns:
            raise CampaignError(f"id: no campaign {params.get('id')!r} on this car")

    def apply(self, params: Mapping[str, Any]) -> tuple[str, str | None]:
        try:
            self.validate(params)
            checked = check(params["campaign"], self._mapped)
        except CampaignError as exc:
            return "failed", str(exc)
        campaign = checked.campaign
        try:
            self._store.save_campaign(campaign.id, campaign.model_dump_json())
        except StoreError as exc:
            return "failed", f"cannot store the campaign: {exc}"
        replaced = self._campaigns.get(campaign.id)
        if replaced is not None:
            self._finish_capture(replaced, force=True)  # what it caught goes out first
        self._install(checked)  # replaces the old version in one step
        if replaced is not None:  # min_interval_s holds across versions
            self._campaigns[campaign.id].last_trigger = replaced.last_trigger
        self._event(
            "accepted",
            {
                "campaign": campaign.id,
                "version": campaign.version,
                "replaced_version": replaced.campaign.version if replaced else None,
                "memory_bytes": campaign.memory_bytes,
            },
        )
        self.tick()
        return "succeeded", None

    def remove(self, params: Mapping[str, Any]) -> tuple[str, str | None]:
        campaign_id = params.get("id")
        running = self._campaigns.get(campaign_id) if isinstance(campaign_id, str) else None
        if running is None:
            return "failed", f"no campaign {campaign_id!r} on this car"
        try:
            self._store.save_campaign(running.campaign.id, None)
        except StoreError as exc:
            return "failed", f"cannot remove the campaign: {exc}"
        self._finish_capture(running, force=True)
        del self._campaigns[running.campaign.id]
        self._rewire()
        self._event(
            "removed", {"campaign": running.campaign.id, "version": running.campaign.version}
        )
        return "succeeded", None

    # --- state ---------------------------------------------------------------------------------
    def load(self) -> None:
        """The stored campaigns, as they were applied (a bad one is logged and skipped)."""
        try:
            bodies = self._store.load_campaigns()
        except StoreError as exc:
            log.error("campaigns_not_loaded", error=str(exc))
            return
        now = self._clock()
        for body, last_trigger in bodies:
            try:
                checked = check(json.loads(body), self._mapped)
            except (CampaignError, ValueError) as exc:
                log.error("campaign_not_loaded", error=str(exc))
                continue
            self._install(checked)
            running = self._campaigns[checked.campaign.id]
            if last_trigger is not None:
                running.last_trigger = last_trigger
            campaign = checked.campaign
            if now >= campaign.expires.timestamp():  # expired while the agent was down
                running.state = "expired"
            elif campaign.start is None or now >= campaign.start.timestamp():
                self._start(running, now, announce=False)  # it had started before
        self._rewire()
        self.tick()

    def state(self) -> list[dict[str, Any]]:
        """For P/state: each campaign with its state."""
        return [
            {
                "id": r.campaign.id,
                "version": r.campaign.version,
                "state": r.state,
                "triggers": r.triggers,
            }
            for r in sorted(self._campaigns.values(), key=lambda r: r.campaign.id)
        ]

    def memory_bytes(self) -> int:
        """What the active campaigns' rings hold allocated now."""
        return sum(r.campaign.memory_bytes for r in self._campaigns.values() if r.rings)

    def _install(self, checked: Checked) -> None:
        self._campaigns[checked.campaign.id] = _Running(checked)
        self._rewire()

    def _rewire(self) -> None:
        """What each tapped path feeds, compiled from the active campaigns: the rings and
        windows to add its samples to, and the campaigns whose condition reads it."""
        feeds: dict[str, list[Callable[[float, Value], None]]] = {}
        conditions: dict[str, list[_Running]] = {}
        for running in self._campaigns.values():
            if running.state != "active":
                continue
            for path, ring in running.rings.items():
                feeds.setdefault(path, []).append(ring.add)
            for name, spec in running.checked.windows.items():
                feeds.setdefault(spec.path, []).append(running.windows[name].add)
            for path in running.inputs:
                conditions.setdefault(path, []).append(running)
        for path in self._direct_inputs():  # latest values only where a condition reads them
            feeds.setdefault(path, []).append(self._noter(path))
        self._feeds = {path: tuple(adds) for path, adds in feeds.items()}
        self._conditions = {path: tuple(runs) for path, runs in conditions.items()}
        by_path = set(self._feeds) | set(self._conditions)
        if by_path != self.paths:
            self.paths = frozenset(by_path)
            self._on_paths(self.paths)
        for path in list(self._latest):
            if path not in by_path:
                del self._latest[path]
                self._latest_ts.pop(path, None)

    def _direct_inputs(self) -> set[str]:
        """Paths that active conditions read as they are (not through a window)."""
        direct: set[str] = set()
        for running in self._campaigns.values():
            if running.state == "active" and running.checked.condition is not None:
                windows = running.checked.windows
                direct |= {p for p in running.checked.condition.paths if p not in windows}
        return direct

    def _noter(self, path: str) -> Callable[[float, Value], None]:
        latest, latest_ts = self._latest, self._latest_ts

        def note(ts: float, value: Value) -> None:
            latest[path] = value
            latest_ts[path] = ts

        return note

    # --- the data path (every tapped sample) -----------------------------------------------
    @property
    def tap(self) -> Callable[[Sample], None]:
        """One sample at a time into `pending` (tests and tools feed the engine this way)."""
        return self._pending.append

    @property
    def pending(self) -> list[Sample]:
        """Where the decode path puts the samples of every frame that carries a tapped path
        (the frame's other samples too: sorting them out per frame would cost more than the
        tick's dict lookup). The tick moves them into rings, windows and latest values
        (`_absorb`) and evaluates the conditions then: a frame pays a list extend, the rest
        is done in bulk ten times a second."""
        return self._pending

    def _absorb(self) -> None:
        pending = self._pending
        if not pending:
            return
        if len(pending) > MAX_PENDING:  # ten times a second cannot fall this far behind
            self.tap_dropped += len(pending) - MAX_PENDING
            del pending[:-MAX_PENDING]
        feeds = self._feeds
        for path, ts, value in pending:
            for add in feeds.get(path, ()):
                add(ts, value)
        pending.clear()

    def _input_time(self, running: _Running) -> float:
        """The newest frame time among a condition's inputs (direct or windowed)."""
        times = [self._latest_ts.get(p, float("-inf")) for p in running.checked.inputs]
        times += [w.newest for w in running.windows.values()]
        return max(times, default=float("-inf"))

    def _conditions_due(self) -> None:
        """Each condition whose inputs have new samples, at the newest input's frame time."""
        for running in self._campaigns.values():
            if running.state != "active" or not running.inputs:
                continue
            newest = self._input_time(running)
            if newest != running.evaluated_at and newest != float("-inf"):
                running.evaluated_at = newest
                self._evaluate(running, newest)

    def _evaluate(self, running: _Running, ts: float) -> None:
        checked = running.checked
        assert checked.condition is not None
        trigger = checked.campaign.trigger
        assert isinstance(trigger, ConditionTrigger)
        values: dict[str, Any] = self._latest
        if checked.windows:
            values = dict(self._latest)
            for name, spec in checked.windows.items():
                result = running.windows[name].value(spec.function, ts)
                if result is not None:
                    values[name] = result
        holds = checked.condition.evaluate(values, {})
        edge = holds and (trigger.mode == "always" or not running.was_true)
        running.was_true = holds
        since = ts - running.last_trigger
        if edge and (since >= trigger.min_interval_s or since < 0):  # < 0: the clock stepped back
            self._trigger(running, ts)

    def _trigger(self, running: _Running, ts: float) -> None:
        if running.capture is not None:
            return  # one capture at a time; its window is still open
        campaign = running.campaign
        running.last_trigger = ts
        running.triggers += 1
        start = ts - campaign.pre_trigger_s
        pre: list[Sample] = []
        taken: dict[str, float] = {}
        for path, ring in running.rings.items():
            for t, v in ring.between(start, ts):
                pre.append(Sample(path, t, v))
                taken[path] = t
        deadline = self._clock() + campaign.post_trigger_s + WALL_SLACK_S
        running.capture = _Capture(ts, ts + campaign.post_trigger_s, pre, taken, deadline)
        try:
            self._store.note_trigger(campaign.id, ts)
        except StoreError as exc:  # min_interval_s then holds until a restart only
            log.error("campaign_trigger_not_stored", campaign=campaign.id, error=str(exc))
        running.unreported += 1
        now = self._clock()
        if now - running.last_report >= TRIGGER_EVENTS_EVERY_S:
            self._event(
                "triggered",
                {
                    "campaign": campaign.id,
                    "version": campaign.version,
                    "trigger_ts": ts,
                    "count": running.unreported,
                },
            )
            running.unreported, running.last_report = 0, now

    # --- time ------------------------------------------------------------------------------
    async def run(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            self.tick()

    def _frame_now(self) -> float | None:
        """The newest frame time seen: captures and periodic triggers run on the frames'
        clock (which may be an interface's uptime, not the wall clock)."""
        times = list(self._latest_ts.values())
        for running in self._campaigns.values():
            times += [r.last_ts for r in running.rings.values()]
            times += [w.newest for w in running.windows.values()]
        newest = max(times, default=float("-inf"))
        return newest if newest != float("-inf") else None

    def tick(self) -> None:
        self._absorb()
        self._conditions_due()
        now = self._clock()
        frame_now = self._frame_now()
        changed = False
        for running in list(self._campaigns.values()):
            campaign = running.campaign
            if running.state != "expired" and now >= campaign.expires.timestamp():
                self._finish_capture(running, force=True)
                running.state, running.rings, running.windows = "expired", {}, {}
                changed = True
                self._event("expired", {"campaign": campaign.id, "version": campaign.version})
            elif running.state == "pending" and (
                campaign.start is None or now >= campaign.start.timestamp()
            ):
                self._start(running, now)
                changed = True
            if running.state != "active":
                continue
            period = getattr(campaign.trigger, "period_s", None)
            if period is not None and now >= running.next_period:
                running.next_period = now + period
                self._trigger(running, frame_now if frame_now is not None else now)
            self._drain(running, frame_now)
            self._finish_capture(running, force=False, frame_now=frame_now)
        if changed:
            self._rewire()

    def _start(self, running: _Running, now: float, *, announce: bool = True) -> None:
        running.state = "active"
        running.rings = {
            s.path: Ring(s.max_samples, s.min_interval_ms) for s in running.campaign.signals
        }
        running.windows = {
            name: _window(spec.seconds) for name, spec in running.checked.windows.items()
        }
        period = getattr(running.campaign.trigger, "period_s", None)
        running.next_period = now + period if period is not None else 0.0
        if not announce:
            return
        self._event(
            "started",
            {
                "campaign": running.campaign.id,
                "version": running.campaign.version,
                "at": datetime.fromtimestamp(now, UTC).isoformat(),
            },
        )

    def _drain(self, running: _Running, frame_now: float | None) -> None:
        """Move what the rings caught since the last tick into the open capture, so that a
        ring smaller than the post-trigger window loses nothing of it."""
        capture = running.capture
        if capture is None:
            return
        start = capture.trigger_ts - running.campaign.pre_trigger_s
        until = capture.end if frame_now is None else min(capture.end, frame_now)
        for path, ring in running.rings.items():
            after = capture.taken_until.get(path)
            for t, v in ring.between(start, until):
                if after is None or t > after:
                    capture.samples.append(Sample(path, t, v))
                    after = t
            if after is not None:
                capture.taken_until[path] = after

    def _finish_capture(
        self, running: _Running, *, force: bool, frame_now: float | None = None
    ) -> None:
        capture = running.capture
        if capture is None:
            return
        done = (frame_now is not None and frame_now >= capture.end + SETTLE_S) or (
            self._clock() >= capture.deadline  # frames stopped: the window ends anyway
        )
        if not (force or done):
            return
        self._drain(running, None)
        running.capture = None
        samples = sorted(capture.samples, key=lambda s: (s.ts, s.path))
        try:
            self._publish(running.campaign, capture.trigger_ts, samples)
        except Exception as exc:  # the outbox counted it; the campaign carries on
            log.error("campaign_capture_dropped", campaign=running.campaign.id, error=str(exc))


MESSAGE_SAMPLES = 1000  # a capture goes out in messages of at most this many samples


def parts(samples: list[Sample]) -> list[list[Sample]]:
    """A capture cut into messages (at least one, possibly empty), in time order."""
    return [samples[i : i + MESSAGE_SAMPLES] for i in range(0, len(samples), MESSAGE_SAMPLES)] or [
        []
    ]


def capture_payload(
    vehicle_id: str,
    campaign: Campaign,
    seq: int,
    trigger_ts: float,
    samples: list[Sample],
    part: int = 1,
    of: int = 1,
) -> bytes:
    """One `P/campaigns/{id}` message (INTERFACE section 9): a capture, or one of its parts."""
    body = {
        "v": 1,
        "vehicle_id": vehicle_id,
        "campaign": campaign.id,
        "version": campaign.version,
        "seq": seq,
        "trigger_ts": round(trigger_ts, 6),
        "part": part,
        "parts": of,
        "samples": [{"path": s.path, "ts": s.ts, "value": s.value} for s in samples],
    }
    return json.dumps(body, separators=(",", ":")).encode()


def _window(seconds: float) -> Window:
    return Window(seconds)
