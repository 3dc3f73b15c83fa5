"""The grid's word on charging: the latest `grid.signal` (tariff with carbon intensity, power
limits, valid until), kept across restarts, and the limit in force carried out on the car.

A utility or aggregator asks cars to cap or pause charging for a window (demand response). The
signal's tariff is the one a `charging.schedule` without its own tariff plans with, and its
limits shape every plan. While a limit is in force the car is asked, over CAN, to draw at most
that power (0 pauses the session); when it ends the request is lifted. Events `limit_started`
and `limit_ended` (type `charging`) mark both edges; a restart inside a window starts it again.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from agent.energy.planner import Limit, Moment, TariffInterval, check_limits, check_tariff
from agent.errors import StoreError

log = structlog.get_logger("agent.energy.grid")
_NOTHING = object()
# Stored instead of a signal after grid.clear or expiry, until the car has taken the lift.
_LIFT_PENDING = '{"lift_pending": true}'


class GridSignal(BaseModel):
    """The `grid.signal` parameters (INTERFACE section 8)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    tariff: list[TariffInterval] = []
    limits: list[Limit] = []
    valid_until: Moment

    @model_validator(mode="after")
    def _shape(self) -> GridSignal:
        check_tariff(self.tariff)
        check_limits(self.limits)
        return self

    def limit_at(self, moment: datetime) -> Limit | None:
        """The limit in force at `moment`: the lowest of those covering it."""
        covering = [lim for lim in self.limits if lim.start <= moment < lim.end]
        return min(covering, key=lambda lim: lim.max_power_kw) if covering else None


def parse_signal(params: Mapping[str, Any]) -> GridSignal:
    """The signal from a command's parameters; ValueError with one line on a bad one."""
    try:
        return GridSignal.model_validate(dict(params))
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        raise ValueError(f"{where}: {error['msg']}" if where else error["msg"]) from None


class GridStore(Protocol):
    """Where the latest signal is kept (the command store implements it); raises StoreError."""

    def save_grid(self, body: str | None) -> None: ...

    def load_grid(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class _InForce:
    start: datetime
    end: datetime
    max_power_kw: float

    def as_json(self) -> dict[str, Any]:
        return {
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "max_power_kw": self.max_power_kw,
        }


class GridRunner:
    """Holds the signal and carries out its limits; `on_change` tells the schedule runner."""

    def __init__(
        self,
        *,
        store: GridStore,
        power_cap: Callable[[float | None], Awaitable[str | None]],
        event: Callable[[str, dict[str, Any]], None],
        on_change: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._power_cap = power_cap
        self._event = event
        self.on_change = on_change
        self._clock = clock
        self.signal: GridSignal | None = None
        self.in_force: _InForce | None = None
        # The cap the car last accepted (None: no cap), and the one last refused (for one log
        # line each). A stored signal makes it unknown (`load`), so that the first tick after a
        # restart asks again for what is in force, or lifts a cap whose window ended meanwhile;
        # without one the agent never touches the charger's power (a hand-set cap stays).
        self._sent: float | object | None = None
        self._failed: float | object | None = _NOTHING

    # --- commands (synchronous, from the executor) -------------------------------------
    def validate(self, params: Mapping[str, Any]) -> None:
        """grid.signal's parameters as a whole, at admission: ValueError is BAD_PARAMS."""
        signal = parse_signal(params)
        if signal.valid_until.timestamp() <= self._clock():
            raise ValueError("valid_until: it is in the past")

    def accept(self, params: Mapping[str, Any]) -> tuple[str, str | None]:
        try:
            signal = parse_signal(params)
        except ValueError as exc:
            return "failed", str(exc)
        if signal.valid_until.timestamp() <= self._clock():
            return "failed", "valid_until is in the past"
        try:
            self._store.save_grid(signal.model_dump_json())
        except StoreError as exc:
            return "failed", f"cannot store the grid signal: {exc}"
        self.signal = signal
        self._changed()
        return "succeeded", None

    def clear(self, _params: Mapping[str, Any]) -> tuple[str, str | None]:
        try:
            self._forget()
        except StoreError as exc:
            return "failed", f"cannot clear the grid signal: {exc}"
        self.signal = None
        self._changed()
        return "succeeded", None

    def _forget(self) -> None:
        """No signal any more. While a cap the grid asked for may still be on the car, the
        store keeps a marker instead of nothing, so that a restart lifts it (raises
        StoreError)."""
        self._store.save_grid(_LIFT_PENDING if self._sent is not None else None)

    def _changed(self) -> None:
        try:
            self.on_change()
        except Exception as exc:  # the schedule's re-plan failed: the grid runner carries on
            log.error("grid_replan_failed", error=repr(exc))

    # --- for the schedule runner and P/state ----------------------------------------------
    def current(self) -> GridSignal | None:
        signal = self.signal
        if signal is not None and signal.valid_until.timestamp() <= self._clock():
            return None
        return signal

    def state(self) -> dict[str, Any]:
        signal = self.current()
        return {
            "limit": self.in_force.as_json() if self.in_force is not None else None,
            "signal_valid_until": signal.valid_until.isoformat() if signal else None,
        }

    # --- running ---------------------------------------------------------------------------
    def load(self) -> None:
        try:
            saved = self._store.load_grid()
        except StoreError as exc:
            log.error("grid_signal_not_loaded", error=str(exc))
            return
        if saved is None:
            return
        self._sent = _NOTHING  # whatever was asked of the car before: ask again, or lift
        if saved == _LIFT_PENDING:
            return
        try:
            self.signal = GridSignal.model_validate(json.loads(saved))
        except (ValueError, ValidationError) as exc:
            log.error("grid_signal_not_loaded", error=str(exc).splitlines()[0])

    async def run(self) -> None:
        """Every second: expiry, and the limit in force carried out (call `load` first)."""
        while True:
            await self.tick()
            await asyncio.sleep(1.0)

    async def tick(self) -> None:
        now = self._clock()
        signal = self.signal
        if signal is not None and signal.valid_until.timestamp() <= now:
            self.signal = signal = None
            try:
                self._forget()
            except StoreError as exc:
                log.error("grid_signal_not_cleared", error=str(exc))
            self._event("grid_signal_expired", {})
            self._changed()
        limit = signal.limit_at(datetime.fromtimestamp(now, UTC)) if signal else None
        wanted = _InForce(limit.start, limit.end, limit.max_power_kw) if limit else None
        if wanted != self.in_force:
            previous, self.in_force = self.in_force, wanted
            if previous is not None:
                self._event("limit_ended", previous.as_json())
            if wanted is not None:
                self._event("limit_started", wanted.as_json())
        cap = wanted.max_power_kw if wanted is not None else None
        if cap != self._sent:
            await self._send(cap)

    async def _send(self, cap: float | None) -> None:
        """Ask the car for `cap` (None lifts it); a refusal is retried on the next tick and
        logged once per cap, not once per second."""
        error = await self._power_cap(cap)
        if error is None:
            if self._failed is not _NOTHING:
                log.info("grid_power_cap_sent", max_power_kw=cap)
            self._sent, self._failed = cap, _NOTHING
            if cap is None and self.signal is None:
                try:  # the lift is done: nothing left to remember
                    self._store.save_grid(None)
                except StoreError as exc:
                    log.error("grid_signal_not_cleared", error=str(exc))
        elif self._failed != cap:
            self._failed = cap
            log.error("grid_power_cap_failed", max_power_kw=cap, error=error)
