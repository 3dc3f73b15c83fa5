"""Runs the simulated ECUs on real python-can buses in (scaled) real time, or writes a log.

Time: simulated seconds run `speedup` times faster than the wall clock, and every message is
sent at its DBC cycle time in simulated seconds, so the whole car (frames included) is simply
faster. Incoming command frames are read without blocking before each send, so an answer is
visible in the next status frame of the ECU concerned.
"""

from __future__ import annotations

import asyncio
import heapq
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import can
import structlog
from cantools.database.can import Message

from agent.sim import physics
from agent.sim.ecus import AGENT_NODES, Ecu, ecus_for, handle_command
from agent.sim.physics import VehicleState
from agent.sim.scenario import Scenario
from agent.sim.uds import UdsResponders
from agent.vehicle.dbc import Vehicle, frame_key

log = structlog.get_logger("agent.sim")


@dataclass(slots=True)
class SimStats:
    frames_sent: int = 0
    send_errors: int = 0
    commands: int = 0
    ignored_frames: int = 0


@dataclass(order=True, slots=True)
class _Due:
    at: float
    order: int
    bus: str = field(compare=False)
    ecu: Ecu = field(compare=False)


class SimulatedCar:
    """The pure part: state, scenario events and the schedule of frames in simulated time."""

    def __init__(self, vehicle: Vehicle, scenario: Scenario, *, seed: int = 0) -> None:
        self.state: VehicleState = scenario.initial_state()
        self.stats = SimStats()
        self._events = sorted(scenario.events, key=lambda e: e.at_s)
        self._rng = random.Random(seed)
        self._now = 0.0
        self._queue: list[_Due] = []
        self._commands: dict[str, dict[int, Message]] = {}
        order = 0
        for name, bus in vehicle.buses.items():
            ecus = ecus_for(list(bus.messages.values()))
            for ecu in ecus:
                # Stagger first sends a little so frames of one bus do not all collide at t=0.
                heapq.heappush(self._queue, _Due(order * 0.001, order, name, ecu))
                order += 1
            self._commands[name] = {
                key: m for key, m in bus.messages.items() if AGENT_NODES.intersection(m.senders)
            }

    @property
    def now(self) -> float:
        return self._now

    def next_due(self) -> float:
        return self._queue[0].at if self._queue else float("inf")

    def advance(self, to: float) -> None:
        """Step physics and scenario events up to simulated time `to`."""
        while self._events and self._events[0].at_s <= to:
            event = self._events.pop(0)
            self._step(event.at_s)
            for key, value in event.set.items():
                setattr(self.state, key, value)
            if event.mode is not None:
                physics.apply_mode(self.state, event.mode)
            log.info("sim_event", at_s=event.at_s, mode=event.mode, set=event.set)
        self._step(to)

    def _step(self, to: float) -> None:
        while self._now < to:
            dt = min(1.0, to - self._now)  # keep steps short so driving cycles stay smooth
            physics.step(self.state, dt, self._rng)
            self._now += dt

    def pop_due(self) -> tuple[str, Ecu, bytes]:
        """The next frame in time order: (bus, ecu, data); advances the state to its time."""
        due = heapq.heappop(self._queue)
        self.advance(due.at)
        data = due.ecu.encode(self.state)
        due.at += due.ecu.period_s
        heapq.heappush(self._queue, due)
        return due.bus, due.ecu, data

    def receive(self, bus: str, msg: can.Message) -> None:
        """A frame seen on `bus`: apply it if it is one of the telematics unit's commands."""
        message = self._commands.get(bus, {}).get(frame_key(msg.arbitration_id, msg.is_extended_id))
        if message is None or msg.is_error_frame or msg.is_remote_frame:
            self.stats.ignored_frames += 1
            return
        try:
            values: Any = message.decode(bytes(msg.data), decode_choices=True)
        except Exception:  # a malformed command frame is ignored, as an ECU would
            self.stats.ignored_frames += 1
            return
        result = handle_command(self.state, message.name, dict(values))
        if result is not None:
            self.stats.commands += 1
            log.info("sim_command", message=message.name, result=result)


def to_message(ecu: Ecu, data: bytes, timestamp: float, channel: str | None) -> can.Message:
    m = ecu.message
    return can.Message(
        arbitration_id=m.frame_id,
        is_extended_id=m.is_extended_frame,
        is_fd=m.is_fd,
        bitrate_switch=m.is_fd,
        data=data,
        timestamp=timestamp,
        channel=channel,
    )


def record(
    vehicle: Vehicle,
    scenario: Scenario,
    out: Path,
    *,
    duration_s: float,
    start_ts: float,
    seed: int = 0,
) -> int:
    """Write `duration_s` simulated seconds of frames to a log (format from its suffix)."""
    car = SimulatedCar(vehicle, scenario, seed=seed)
    channels = {name: bus.settings.channel for name, bus in vehicle.buses.items()}
    count = 0
    with can.Logger(str(out)) as writer:
        for bus, ecu, data, at in _frames_until(car, duration_s):
            writer.on_message_received(to_message(ecu, data, start_ts + at, channels[bus]))
            count += 1
    return count


def _frames_until(car: SimulatedCar, end: float) -> Iterator[tuple[str, Ecu, bytes, float]]:
    while car.next_due() <= end:
        at = car.next_due()
        bus, ecu, data = car.pop_due()
        yield bus, ecu, data, at


class LiveSimulator:
    """The simulated car on open python-can buses, in scaled real time."""

    def __init__(
        self, car: SimulatedCar, buses: dict[str, can.BusABC], *, speedup: float = 1.0
    ) -> None:
        self.car = car
        self._buses = buses
        self._speedup = speedup
        self.uds = UdsResponders(lambda: car.state, self._send_on)

    def _send_on(self, bus: str, msg: can.Message) -> None:
        target = self._buses.get(bus)
        if target is not None:
            try:
                target.send(msg, timeout=0.05)
            except can.CanError as exc:
                log.warning("sim_uds_send_failed", bus=bus, error=str(exc))

    def poll(self) -> None:
        """Read every pending frame without blocking (command frames)."""
        for name, bus in self._buses.items():
            while True:
                try:
                    msg = bus.recv(timeout=0)
                except can.CanError:
                    break
                if msg is None:
                    break
                if not self.uds.feed(name, msg):
                    self.car.receive(name, msg)
        self.uds.process()

    async def run(self, duration_s: float | None = None) -> None:
        start = time.monotonic()
        end = duration_s if duration_s is not None else float("inf")
        stats = self.car.stats
        while True:
            at = self.car.next_due()
            if at > end:
                break
            delay = start + at / self._speedup - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif stats.frames_sent % 64 == 0:
                await asyncio.sleep(0)  # running late: still let the rest of the loop breathe
            self.poll()
            bus_name, ecu, data = self.car.pop_due()
            bus = self._buses.get(bus_name)
            if bus is None:
                continue
            try:
                bus.send(to_message(ecu, data, time.time(), None), timeout=0.05)
                stats.frames_sent += 1
            except can.CanError as exc:
                stats.send_errors += 1
                if stats.send_errors in (1, 10, 100) or stats.send_errors % 1000 == 0:
                    log.warning(
                        "sim_send_failed", bus=bus_name, error=str(exc), errors=stats.send_errors
                    )
