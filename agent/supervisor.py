"""The daemon's lifecycle: build the components, run them in one TaskGroup, stop cleanly.

Start order: outbox, decode pipeline, uplink, CAN receivers, then (optionally) the simulator.
Stop (first SIGTERM/SIGINT): stop reading the buses, flush the batch into the outbox, let the
uplink publish what it can for a few seconds, publish `online: false`, disconnect, exit 0 —
all within 5 s. A second signal exits at once (code 1); nothing stored is lost by that.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import uuid
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any

import can
import structlog

from agent.campaigns.engine import CampaignEngine, capture_payload
from agent.campaigns.engine import parts as capture_parts
from agent.campaigns.spec import Campaign
from agent.commands import definitions
from agent.commands.auth import Verifier
from agent.commands.executor import CommandStats, Executor
from agent.commands.store import CommandStore
from agent.energy.grid import GridRunner
from agent.energy.schedule import ScheduleRunner
from agent.errors import AgentError, ConfigError
from agent.maintenance.alerts import AlertEngine
from agent.maintenance.diagnostics import DtcReader, dtc_changes
from agent.notify import SystemdNotifier
from agent.sim.scenario import Scenario
from agent.uplink.health import Health
from agent.uplink.lock import StorageLock
from agent.uplink.mqtt import Uplink
from agent.uplink.outbox import Outbox, OutboxError
from agent.uplink.pipeline import Pipeline
from agent.vehicle.can_io import CanReceiver, kernel_filters, open_bus
from agent.vehicle.compute import Computer
from agent.vehicle.dbc import Vehicle
from agent.vehicle.decode import build_decoders
from agent.vehicle.model import RawFrame
from agent.vehicle.signals import Sampler, policies_of

log = structlog.get_logger("agent")

STOP_BUDGET_S = 5.0
DRAIN_S = 3.0


class _Shutdown(Exception):
    """Raised inside the TaskGroup once the orderly stop is done, to end the other tasks."""


def _route(
    bus: str, dtc_reader: DtcReader, decode: Callable[[can.Message], None]
) -> Callable[[can.Message], None]:
    """Frames answering a diagnostic request go to the UDS tester; the rest to decoding."""

    if not dtc_reader.response_ids(bus):
        return decode  # no ECU answers on this bus: nothing added to the per-frame path

    def on_frame(msg: can.Message) -> None:
        if not dtc_reader.feed(bus, msg):
            decode(msg)

    return on_frame


def _route_frames(
    bus: str, dtc_reader: DtcReader, decode: Callable[[list[RawFrame]], None]
) -> Callable[[list[RawFrame]], None]:
    """`_route` for frames read many at a time from a socket (CanReceiver's `on_frames`)."""
    ids = frozenset(dtc_reader.response_ids(bus))  # 11-bit ids: the frame key is the id
    if not ids:
        return decode

    def on_frames(frames: list[RawFrame]) -> None:
        ours = [frame for frame in frames if frame[0] in ids]
        if ours:
            for key, data, ts in ours:
                dtc_reader.feed(
                    bus,
                    can.Message(arbitration_id=key, is_extended_id=False, data=data, timestamp=ts),
                )
            frames = [frame for frame in frames if frame[0] not in ids]
        decode(frames)

    return on_frames


_POLICY_KEYS = {"on_change", "deadband", "min_interval_ms", "max_interval_s"}


def _load_for_reload(path: str) -> tuple[Vehicle, dict[str, definitions.ResolvedCommand]]:
    from agent import config
    from agent.vehicle import dbc

    vehicle = dbc.load_vehicle(config.load(path))
    return vehicle, definitions.resolve(vehicle)


class Agent:
    """The running daemon."""

    def __init__(self, vehicle: Vehicle, *, scenario: Scenario | None = None) -> None:
        self.vehicle = vehicle
        self._scenario = scenario  # overrides simulator.scenario (the demo's own story)
        self.settings = vehicle.loaded.settings
        self.boot_id = str(uuid.uuid4())
        self.stop_requested = asyncio.Event()
        self.reload_requested = asyncio.Event()
        self.alerts = AlertEngine.from_settings(self.settings.alerts)
        self.uplink: Uplink | None = None
        self.executor: Executor | None = None
        self.schedule: ScheduleRunner | None = None
        self.grid: GridRunner | None = None
        self.campaigns: CampaignEngine | None = None
        self._signals = 0

    def _on_request(self, payload: bytes, properties: Any) -> None:
        if self.executor is not None:
            self.executor.on_request(payload, properties)

    def _values(self) -> dict[str, Any]:
        """The latest value of every path seen: what preconditions, feedback, the schedule
        and alerts read."""
        return dict(self._sampler.values)

    def _state(self) -> dict[str, Any] | None:
        values = self._sampler.values
        if not values:
            return None
        return {
            "ts": round(time.time(), 3),
            "values": dict(values),
            "alerts": self.alerts.active,
            "campaigns": self.campaigns.state() if self.campaigns is not None else [],
            "charging": {
                "plan": self.schedule.state() if self.schedule is not None else None,
                **(self.grid.state() if self.grid is not None else {"limit": None}),
            },
        }

    def _on_signal(self, signum: int) -> None:
        self._signals += 1
        if self._signals == 1:
            log.info("stopping", signal=signal.Signals(signum).name)
            self.stop_requested.set()
        else:
            log.warning("stopping_now", signal=signal.Signals(signum).name)
            os._exit(1)

    async def run(self) -> None:
        settings = self.settings
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGHUP, self.reload_requested.set)
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, self._on_signal, sig)
        async with AsyncExitStack() as stack:
            storage = settings.storage
            self._lock = stack.enter_context(StorageLock(storage.path))
            self._outbox = stack.enter_context(
                Outbox(
                    storage.path,
                    sync=storage.sync,
                    max_bytes=int(storage.max_mb * 1024 * 1024),
                    max_age_s=storage.max_age_h * 3600 if storage.max_age_h else None,
                )
            )
            decoders = build_decoders(self.vehicle)
            self._sampler = Sampler(policies_of(settings.signals))
            pipeline = Pipeline(
                vehicle_id=settings.vehicle_id,
                decoders=decoders,
                sampler=self._sampler,
                outbox=self._outbox,
                settings=settings.telemetry,
                on_stored=lambda: self.uplink.notify() if self.uplink else None,
                computer=Computer(settings.signals, self.vehicle.types),
            )
            by_bus: dict[str, CanReceiver] = {}
            dtc_reader = DtcReader(settings.diagnostics, lambda bus, frame: by_bus[bus].send(frame))
            receivers = [
                CanReceiver(
                    bus.settings,
                    _route(name, dtc_reader, pipeline.receiver_for(name)),
                    on_frames=_route_frames(name, dtc_reader, pipeline.frames_receiver_for(name)),
                    filters=kernel_filters(
                        decoders[name].frame_keys | frozenset(dtc_reader.response_ids(name))
                    )
                    or None,
                )
                for name, bus in self.vehicle.buses.items()
            ]
            by_bus.update({r.name: r for r in receivers})
            health = Health(
                boot_id=self.boot_id,
                decoders=decoders,
                receivers=receivers,
                pipeline=pipeline,
                outbox=self._outbox,
                uplink=lambda: self.uplink,
                commands=lambda: (
                    self.executor.stats if self.executor else CommandStats()
                ).as_health(),
            )
            self.uplink = Uplink(
                settings=settings,
                outbox=self._outbox,
                boot_id=self.boot_id,
                state=self._state,
                health=health.snapshot,
                on_request=self._on_request,
            )
            store = stack.enter_context(CommandStore(storage.path.with_name("commands.db")))
            self.executor = Executor(
                verifier=Verifier.from_settings(settings.vehicle_id, settings.commands),
                commands=definitions.resolve(self.vehicle),
                store=store,
                outbox=self._outbox,
                notify=self.uplink.notify,
                values=self._values,
                transmit=lambda bus, frame: by_bus[bus].send(frame),
                request_state=self.uplink.request_state,
                rejections_per_s=settings.commands.rejections_per_s,
            )
            self.grid = grid = GridRunner(
                store=store, power_cap=self.executor.power_cap, event=self._charging_event
            )
            self.schedule = schedule = ScheduleRunner(
                settings=settings.charging,
                store=store,
                values=self._values,
                charge=self.executor.charge,
                event=self._charging_event,
                grid=grid.current,
            )
            grid.load()  # before the schedule resumes: it plans with the stored signal
            grid.on_change = schedule.on_grid_change
            self.campaigns = campaigns = CampaignEngine(
                # Every configured path, decoded or computed: a campaign may collect either.
                mapped=frozenset(s.path for s in settings.signals),
                store=store,
                publish=self._publish_capture,
                event=self._campaign_event,
                max_memory_bytes=settings.campaigns.max_memory_kb * 1024,
                on_paths=lambda paths: pipeline.set_taps(paths, campaigns.pending),
            )
            campaigns.load()
            self.executor.handlers.update(
                {
                    "charging.schedule": schedule.accept,
                    "grid.signal": grid.accept,
                    "grid.clear": grid.clear,
                    "campaign.apply": campaigns.apply,
                    "campaign.remove": campaigns.remove,
                }
            )
            self.executor.validators.update(
                {
                    "campaign.apply": campaigns.validate,
                    "campaign.remove": campaigns.validate_remove,
                    "grid.signal": grid.validate,
                }
            )
            if settings.diagnostics.ecus:
                self.executor.read_dtcs = dtc_reader.read
            self._dtc_reader = dtc_reader
            for receiver in receivers:
                await stack.enter_async_context(receiver)
            simulator = self._simulator(stack)
            log.info(
                "started",
                vehicle_id=settings.vehicle_id,
                boot_id=self.boot_id,
                buses={r.name: r.settings.channel for r in receivers},
                signals=len(self.vehicle.mapped),
                outbox=str(settings.storage.path),
                pending=self._outbox.depth(),
                broker=f"{settings.mqtt.host}:{settings.mqtt.port}",
                simulator=simulator is not None,
            )
            notifier = SystemdNotifier()
            stack.callback(notifier.close)
            notifier.ready(self._status(receivers, pipeline))
            try:
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(self._watchdog(notifier, receivers, pipeline))
                    tg.create_task(self._reloader())
                    tg.create_task(self._watch_alerts())
                    tg.create_task(self._scan_dtcs())
                    tg.create_task(schedule.run())
                    tg.create_task(grid.run())
                    tg.create_task(campaigns.run())
                    tg.create_task(self.uplink.run())
                    tg.create_task(pipeline.run())
                    tg.create_task(health.log_stats(settings.logging.stats_interval_s))
                    tg.create_task(self._maintain_outbox())
                    tg.create_task(self.executor.run())
                    for receiver in receivers:
                        tg.create_task(receiver.run())
                    if simulator is not None:
                        tg.create_task(simulator.run())
                    tg.create_task(self._stop_when_asked(receivers, pipeline))
            except* _Shutdown:
                pass
        log.info("stopped", published=self.uplink.stats.published)

    async def _maintain_outbox(self) -> None:
        """Every 5 s: retry what the disk refused, notice a vanished file, keep the reserve;
        every 30 s expire telemetry past `storage.max_age_h`."""
        rounds = 0
        while True:
            try:
                self._lock.check()
                self._outbox.maintain()
                if rounds % 6 == 0:
                    self._outbox.expire()
            except OutboxError as exc:
                log.error("outbox_maintenance_failed", error=str(exc))
            rounds += 1
            await asyncio.sleep(5)

    def _simulator(self, stack: AsyncExitStack) -> Any:
        sim_settings = self.settings.simulator
        if not sim_settings.enabled:
            return None
        from agent.sim.runner import LiveSimulator, SimulatedCar
        from agent.sim.scenario import load_scenario

        scenario = self._scenario or load_scenario(
            sim_settings.scenario, self.vehicle.loaded.base_dir
        )
        buses = {}
        for name, bus in self.vehicle.buses.items():
            opened = open_bus(bus.settings)
            stack.callback(opened.shutdown)
            buses[name] = opened
        car = SimulatedCar(self.vehicle, scenario, seed=sim_settings.seed)
        return LiveSimulator(car, buses, speedup=sim_settings.speedup)

    def _status(self, receivers: list[CanReceiver], pipeline: Pipeline) -> str:
        frames = sum(r.stats.frames for r in receivers)
        uplink = self.uplink
        mqtt = "connected" if uplink is not None and uplink.stats.connected else "offline"
        return (
            f"{frames} frames, {pipeline.stats.batches} batches, "
            f"outbox {self._outbox.depth()}, mqtt {mqtt}"
        )

    async def _watchdog(
        self, notifier: SystemdNotifier, receivers: list[CanReceiver], pipeline: Pipeline
    ) -> None:
        """WATCHDOG=1 only while the pipeline's batch timer keeps ticking: a stalled loop,
        or a pipeline that stopped, stops the pings and systemd restarts the service."""
        interval = notifier.watchdog_interval_s
        if not notifier.enabled:
            return
        period = interval if interval is not None else 10.0
        allowed = max(3 * self.settings.telemetry.batch_interval_ms / 1000.0, 2 * period)
        while True:
            await asyncio.sleep(period)
            status = self._status(receivers, pipeline)
            if time.monotonic() - pipeline.last_tick > allowed:
                log.error(
                    "watchdog_withheld",
                    since_tick_s=round(time.monotonic() - pipeline.last_tick, 1),
                )
                continue
            if interval is not None:
                notifier.watchdog(status)
            else:
                notifier.send(f"STATUS={status}")

    def _campaign_event(self, name: str, data: dict[str, Any]) -> None:
        log.info("campaign_event", name=name, **data)
        self._outbox.append_event("campaign", name, data)
        if self.uplink is not None:
            self.uplink.notify()

    def _publish_capture(self, campaign: Campaign, trigger_ts: float, samples: list[Any]) -> None:
        vehicle_id = self.settings.vehicle_id
        chunks = capture_parts(samples)
        for number, chunk in enumerate(chunks, start=1):

            def payload(seq: int, chunk: list[Any] = chunk, number: int = number) -> bytes:
                return capture_payload(
                    vehicle_id, campaign, seq, trigger_ts, chunk, number, len(chunks)
                )

            self._outbox.append(
                "campaign",
                f"campaigns/{campaign.id}",
                payload,
                stream=f"campaign/{campaign.id}",
                items=len(chunk),
                priority=campaign.priority,
            )
        if self.uplink is not None:
            self.uplink.notify()

    def _charging_event(self, name: str, data: dict[str, Any]) -> None:
        log.info("charging_event", name=name, **{k: v for k, v in data.items() if k != "slots"})
        self._outbox.append_event("charging", name, data)
        if self.uplink is not None:
            self.uplink.notify()

    async def _scan_dtcs(self) -> None:
        """With diagnostics.scan_interval_s: read the DTCs that often and publish new and
        cleared ones as P/events (type dtc)."""
        interval = self.settings.diagnostics.scan_interval_s
        if interval is None or not self.settings.diagnostics.ecus:
            return
        known: dict[str, dict[str, int]] = {}
        while True:
            await asyncio.sleep(interval)
            known, changes = dtc_changes(known, await self._dtc_reader.read())
            for name, data in changes:
                log.info("dtc", change=name, **data)
                self._outbox.append_event("dtc", name, data)
            if changes and self.uplink is not None:
                self.uplink.notify()

    async def _watch_alerts(self) -> None:
        """Evaluate the alert rules every second; raised and cleared alerts become events."""
        while True:
            await asyncio.sleep(1.0)
            values = self._values()
            for change in self.alerts.evaluate(values, time.monotonic()):
                log.warning(
                    "alert",
                    name=change.name,
                    state=change.state,
                    severity=change.severity,
                    values=change.values,
                )
                self._outbox.append_event(
                    "alert",
                    change.name,
                    {
                        "state": change.state,
                        "severity": change.severity,
                        "values": change.values,
                    },
                )
                if self.uplink is not None:
                    self.uplink.notify()
                    self.uplink.request_state()  # the active set is part of P/state

    async def _reloader(self) -> None:
        """SIGHUP: read the configuration again and apply what can change while running
        (trusted keys, command definitions, signal policies). Buses, decoders and batches
        are untouched, so no frame and no buffered sample is lost. A configuration with
        problems is refused as a whole: the old one keeps running."""
        while True:
            await self.reload_requested.wait()
            self.reload_requested.clear()
            path = self.vehicle.loaded.file
            try:
                vehicle, resolved = await asyncio.to_thread(_load_for_reload, path)
            except ConfigError as exc:
                for problem in exc.problems:
                    log.error("config_reload_problem", problem=str(problem))
                log.error(
                    "config_reload_failed",
                    path=path,
                    problems=len(exc.problems),
                    action="kept the running configuration",
                )
                continue
            new = vehicle.loaded.settings
            restart_for = [
                name
                for name in ("vehicle_id", "can", "mqtt", "storage", "telemetry")
                if getattr(new, name) != getattr(self.settings, name)
            ]
            if [s.model_dump(exclude=_POLICY_KEYS) for s in new.signals] != [
                s.model_dump(exclude=_POLICY_KEYS) for s in self.settings.signals
            ]:
                restart_for.append("signals (mappings)")
            self._sampler.update_policies(policies_of(new.signals))
            self.alerts.replace_rules(AlertEngine.from_settings(new.alerts))
            assert self.executor is not None
            self.executor.reload(
                verifier=Verifier.from_settings(self.settings.vehicle_id, new.commands),
                commands=resolved,
                rejections_per_s=new.commands.rejections_per_s,
            )
            log.info(
                "config_reloaded",
                path=path,
                trusted_keys=len(new.commands.trust),
                commands=len(resolved),
                needs_restart_for=restart_for,
            )

    async def _stop_when_asked(self, receivers: list[CanReceiver], pipeline: Pipeline) -> None:
        await self.stop_requested.wait()
        started = time.monotonic()
        SystemdNotifier().stopping()
        for receiver in receivers:
            receiver.stop()
        pipeline.stop_accepting()
        pipeline.flush()
        assert self.uplink is not None
        await self.uplink.stop(drain_s=DRAIN_S)
        log.info(
            "stop_done", seconds=round(time.monotonic() - started, 2), outbox=self._outbox.depth()
        )
        raise _Shutdown


def run(vehicle: Vehicle) -> int:
    try:
        asyncio.run(Agent(vehicle).run())
    except AgentError:
        raise
    return 0
