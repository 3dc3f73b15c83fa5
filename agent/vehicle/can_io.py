"""python-can buses: opening a configured bus, and receiving its frames on the event loop.

Buses with a file descriptor (SocketCAN) are read by the event loop itself (`add_reader`);
buses without one (python-can's `virtual`) go through python-can's Notifier, whose single
reader thread hands frames to the loop. Either way there is no task and no thread per frame.
A bus that fails (interface down, bus error) is closed and reopened with capped backoff that
keeps growing until a frame arrives again (a socket that opens on a down interface fails at
its first receive: that is no recovery). The outage counts from the failure and shows live in
the stats; its log lines follow `logs.Repeating`.
A bus that has received nothing 10 s after start is logged once and flagged `silent` (a wrong
channel, or a bench interface such as `virtual` that only reaches its own process).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import can
import structlog

from agent.config import BusSettings
from agent.errors import AgentError
from agent.logs import Repeating

log = structlog.get_logger("agent.can")

SILENT_AFTER_S = 10.0
REOPEN_FIRST_S = 0.2


def open_bus(settings: BusSettings, **extra: Any) -> can.BusABC:
    """Open one configured bus; a clear AgentError when the interface is missing or refuses."""
    kwargs: dict[str, Any] = {"interface": settings.interface, "channel": settings.channel}
    if settings.fd:
        kwargs["fd"] = True
    if settings.bitrate is not None:
        kwargs["bitrate"] = settings.bitrate
    kwargs.update(extra)
    try:
        return can.Bus(**kwargs)
    except (can.CanError, OSError, ValueError, ImportError, NotImplementedError) as exc:
        raise AgentError(
            f"cannot open bus {settings.name!r} ({settings.interface}:{settings.channel}): {exc}"
        ) from exc


@dataclass(slots=True)
class ReceiverStats:
    frames: int = 0
    errors: int = 0
    reopens: int = 0
    outages: int = 0
    down_s: float = 0.0  # from a failure to the first frame received again (ended outages)


def kernel_filters(frame_keys: frozenset[int]) -> list[dict[str, Any]]:
    """python-can filters for exactly these frame keys (bit 31 marks a 29-bit id)."""
    filters = []
    for key in sorted(frame_keys):
        extended = bool(key & 0x8000_0000)
        filters.append(
            {
                "can_id": key & 0x1FFF_FFFF,
                "can_mask": 0x1FFF_FFFF if extended else 0x7FF,
                "extended": extended,
            }
        )
    return filters


class _Listener(can.Listener):
    def __init__(self, receiver: CanReceiver) -> None:
        self._receiver = receiver

    def on_message_received(self, msg: can.Message) -> None:
        self._receiver.deliver(msg)

    def on_error(self, exc: Exception) -> None:
        self._receiver.failed(exc)


class CanReceiver:
    """Receives one configured bus on the running event loop."""

    def __init__(
        self,
        settings: BusSettings,
        on_frame: Callable[[can.Message], None],
        *,
        filters: list[dict[str, Any]] | None = None,
        silent_after_s: float = SILENT_AFTER_S,
        reopen_max_s: float = 5.0,
    ) -> None:
        self.settings = settings
        self._on_frame = on_frame
        # Kernel receive filters (SocketCAN): only mapped ids wake the process at all.
        self._open_args: dict[str, Any] = {"can_filters": filters} if filters else {}
        self._reopen_max_s = reopen_max_s
        self._bus: can.BusABC | None = None
        self._notifier: can.Notifier | None = None
        self._fd: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._failure = asyncio.Event()
        self._stopped = False
        self._down_since: float | None = None
        self._silent_after_s = silent_after_s
        self._entered_at: float | None = None
        self._told_silent = False
        self._delay = REOPEN_FIRST_S
        self._reopened_logged = False
        self._failed_log = Repeating(log, "can_bus_failed", clear_event="can_bus_receiving")
        self._reopen_log = Repeating(log, "can_bus_reopen_failed", level="warning")
        self.stats = ReceiverStats()

    def down_s(self) -> float:
        """Seconds down in all, the outage going on included (live, for P/health)."""
        now = time.monotonic()
        return self.stats.down_s + (now - self._down_since if self._down_since else 0.0)

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def silent(self) -> bool:
        """Nothing received at all since start, for `silent_after_s` or longer."""
        return (
            self.stats.frames == 0
            and self._entered_at is not None
            and time.monotonic() - self._entered_at >= self._silent_after_s
        )

    async def __aenter__(self) -> Self:
        self._loop = asyncio.get_running_loop()
        self._entered_at = time.monotonic()
        try:
            self._start(open_bus(self.settings, **self._open_args))
        except AgentError as exc:
            # Not fatal: an interface may appear later (USB adapter, vcan set up after boot).
            log.error("can_bus_unavailable", bus=self.name, error=str(exc))
            self.stats.errors += 1
            self._went_down()
            self._failure.set()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _start(self, bus: can.BusABC) -> None:
        assert self._loop is not None
        self._bus = bus
        self._failure.clear()
        fd = -1
        try:
            fd = bus.fileno()
        except (NotImplementedError, AttributeError, OSError):
            fd = -1
        if fd >= 0:
            self._fd = fd
            self._loop.add_reader(fd, self._readable)
        else:
            self._notifier = can.Notifier(bus, [_Listener(self)], timeout=0.2, loop=self._loop)

    def _readable(self) -> None:
        bus = self._bus
        if bus is None:
            return
        try:
            # Drain what the socket holds now, bounded so one busy bus cannot starve the loop.
            for _ in range(256):
                msg = bus.recv(0)
                if msg is None:
                    break
                self.deliver(msg)
        except (can.CanError, OSError) as exc:
            self.failed(exc)

    def send(self, msg: can.Message) -> None:
        """Transmit one frame; AgentError when the bus is down or refuses."""
        bus = self._bus
        if bus is None:
            raise AgentError(f"bus {self.name!r} is down")
        try:
            bus.send(msg, timeout=0.2)
        except (can.CanError, OSError) as exc:
            raise AgentError(str(exc)) from exc

    def deliver(self, msg: can.Message) -> None:
        if self._told_silent and self.stats.frames == 0:
            log.info("can_bus_receiving", bus=self.name, first_frame_after_s=self._since_start())
        self.stats.frames += 1
        if self._down_since is not None:
            # A reopened socket may sit on a still-down interface: the outage ends with the
            # first frame, not with the reopen; so does the backoff.
            outage = time.monotonic() - self._down_since
            self._down_since = None
            self.stats.down_s += outage
            self._delay = REOPEN_FIRST_S
            self._reopened_logged = False
            self._reopen_log.cleared(bus=self.name)
            if not self._failed_log.cleared(bus=self.name, outage_s=round(outage, 2)):
                log.info("can_bus_receiving", bus=self.name, outage_s=round(outage, 2))
        self._on_frame(msg)

    def _went_down(self) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()
            self.stats.outages += 1  # counted when it starts: P/health shows it live

    def failed(self, exc: BaseException) -> None:
        """The bus stopped working: stop reading it and let `run()` reopen it."""
        self.stats.errors += 1
        self._went_down()
        if not self._failure.is_set():
            self._failed_log.failed(bus=self.name, channel=self.settings.channel, error=str(exc))
            self._close()
            self._failure.set()

    def stop(self) -> None:
        """Stop reading and close the bus (shutdown)."""
        self._stopped = True
        self._close()

    def _close(self) -> None:
        if self._fd is not None and self._loop is not None:
            self._loop.remove_reader(self._fd)
            self._fd = None
        if self._notifier is not None:
            self._notifier.stop(timeout=1.0)
            self._notifier = None
        if self._bus is not None:
            try:
                self._bus.shutdown()
            except (can.CanError, OSError) as exc:
                log.warning("can_bus_shutdown_failed", bus=self.name, error=str(exc))
            self._bus = None

    def _since_start(self) -> float:
        return round(time.monotonic() - (self._entered_at or time.monotonic()), 1)

    async def _watch_silence(self) -> None:
        await asyncio.sleep(self._silent_after_s)
        if self.stats.frames == 0 and not self._stopped:
            self._told_silent = True
            log.warning(
                "can_bus_silent",
                bus=self.name,
                interface=self.settings.interface,
                channel=self.settings.channel,
                after_s=self._since_start(),
                hint="nothing received since start: check the channel; python-can's "
                "'virtual' interface only reaches buses of the same process",
            )

    async def run(self) -> None:
        """Reopen the bus with capped, jittered backoff whenever it fails; tell a silent bus."""
        watch = asyncio.ensure_future(self._watch_silence())
        try:
            await self._reopen_forever()
        finally:
            watch.cancel()

    async def _reopen_forever(self) -> None:
        while not self._stopped:
            await self._failure.wait()
            while not self._stopped:
                # The delay grows with every attempt of the outage, a successful open
                # included: only a received frame resets it (deliver).
                delay, self._delay = self._delay, min(self._reopen_max_s, self._delay * 2)
                await asyncio.sleep(delay * random.uniform(0.75, 1.0))
                try:
                    bus = open_bus(self.settings, **self._open_args)
                except AgentError as exc:
                    self._reopen_log.failed(
                        bus=self.name, error=str(exc), retry_s=round(self._delay, 1)
                    )
                    continue
                self.stats.reopens += 1
                if not self._reopened_logged:  # once an outage: a down link reopens often
                    self._reopened_logged = True
                    log.info(
                        "can_bus_reopened",
                        bus=self.name,
                        channel=self.settings.channel,
                        after_s=round(self.down_s() - self.stats.down_s, 2),
                    )
                self._start(bus)
                break
