"""python-can buses: opening a configured bus, and receiving its frames on the event loop.

SocketCAN buses are read straight from the socket python-can opened, configured and filtered
(`bus.socket`): agent.vehicle.sockread drains it many frames a system call, as the kernel's
structs, and hands them over as one list (`on_frames`). Once frames flow, the socket is read
on a timer every `read_interval_s` rather than woken for each frame, and at most
`max_per_turn` frames are handled before the loop's other work gets its turn: a flooded bus
costs the loop a bounded slice, and what the socket cannot hold meanwhile the kernel drops
and counts (SO_RXQ_OVFL, `rx_overflows`, logged when it starts and stops). Its receive buffer
is `rcvbuf_kb`. Other buses with a file descriptor go through python-can's `recv` on the
loop (`add_reader`); buses without one (python-can's `virtual`) through python-can's
Notifier, whose single reader thread hands frames to the loop. Either way there is no task
and no thread per frame.
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
import socket
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
from agent.vehicle.model import RawFrame
from agent.vehicle.sockread import FrameReader, set_receive_buffer

log = structlog.get_logger("agent.can")

SILENT_AFTER_S = 10.0
REOPEN_FIRST_S = 0.2
# While frames flow, the socket is read this often instead of at every frame's wake-up: at
# 12,000 frames/s that is 240 frames a read; the loop's turn, the system calls and the
# policies' bookkeeping per id are shared by more frames. The socket holds them meanwhile:
# 1 MB (rcvbuf_kb), or the 416 KB a default rmem_max grants, is about 400 frames, four times
# what a saturated 500 kbit/s bus sends in 20 ms (about 90). Measured against 10 and 30 ms in
# docs/performance.md; the latency it adds is nothing beside a telemetry batch's.
READ_INTERVAL_S = 0.02
# Frames handled in one turn of the loop at most (about 1.5 ms of work): then commands, health
# and the uplink get theirs, even on a bus flooded beyond what the agent can decode.
MAX_PER_TURN = 256
OVERFLOW_CHECK_S = 1.0


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
    rx_overflows: int = 0  # frames the kernel dropped, the socket's queue full (SO_RXQ_OVFL)
    handler_errors: int = 0  # frames whose handling raised (a bug): logged, reading goes on


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


_told_reader = False


def _tell_reader(reader: FrameReader) -> None:
    """Once a process: a SocketCAN bus read without the C reader costs about twice the CPU
    (docs/performance.md), which an operator sizing a head unit wants to know."""
    global _told_reader
    if reader.method != "native" and not _told_reader:
        _told_reader = True
        log.warning(
            "can_reader_without_c",
            method=reader.method,
            hint="agent/vehicle/_canread.c was not built at install (no C compiler?): "
            "frames are read in Python, at about twice the CPU a frame",
        )


class CanReceiver:
    """Receives one configured bus on the running event loop."""

    def __init__(
        self,
        settings: BusSettings,
        on_frame: Callable[[can.Message], None],
        *,
        on_frames: Callable[[list[RawFrame]], None] | None = None,
        filters: list[dict[str, Any]] | None = None,
        silent_after_s: float = SILENT_AFTER_S,
        reopen_max_s: float = 5.0,
        fast: bool = True,
        read_interval_s: float = READ_INTERVAL_S,
        max_per_turn: int = MAX_PER_TURN,
    ) -> None:
        self.settings = settings
        self._on_frame = on_frame
        # The socket path's callback; without it (or with fast=False, for comparisons)
        # a SocketCAN bus goes through python-can's recv like any other.
        self._on_frames = on_frames if fast else None
        self._read_interval_s = read_interval_s
        self._max_per_turn = max_per_turn
        self._reader: FrameReader | None = None
        self._armed = False  # the reader waits for the socket's readiness (else a timer)
        self._timer: asyncio.Handle | None = None
        self._overflows_before = 0  # counted on sockets closed since (reopens)
        self._overflow_log = Repeating(
            log, "can_rx_overflow", level="warning", clear_event="can_rx_overflow_stopped"
        )
        self._told_rcvbuf = False
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
        self._handler_log = Repeating(log, "can_frames_handler_failed")
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
        sock = getattr(bus, "socket", None)  # SocketcanBus: the raw socket python-can set up
        if isinstance(sock, socket.socket):
            self._receive_buffer(sock)
            if self._on_frames is not None:
                self._reader = FrameReader(sock)
                _tell_reader(self._reader)
                self._fd = sock.fileno()
                self._arm()
                return
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

    def _receive_buffer(self, sock: socket.socket) -> None:
        asked = self.settings.rcvbuf_kb
        if asked is None:
            return
        error: str | None = None
        try:
            granted = set_receive_buffer(sock, asked * 1024)
        except OSError as exc:
            granted, error = 0, str(exc)
        # Linux reports twice the size it was asked (its bookkeeping counted in); less than
        # asked means net.core.rmem_max capped it.
        if granted < asked * 1024 and not self._told_rcvbuf:
            self._told_rcvbuf = True
            log.warning(
                "can_rcvbuf_capped",
                bus=self.name,
                asked_kb=asked,
                granted_kb=granted // 1024,
                error=error,
                hint="raise net.core.rmem_max, or run with CAP_NET_ADMIN",
            )

    def _arm(self) -> None:
        """Wait for the socket's readiness (it was empty at the last read)."""
        assert self._loop is not None and self._fd is not None
        if not self._armed:
            self._loop.add_reader(self._fd, self._turn)
            self._armed = True

    def _turn(self) -> None:
        """One turn of the socket path: read what is there (at most `max_per_turn`), hand it
        over, and decide the next read: at once if more waits, after `read_interval_s` if
        frames came, at the socket's readiness once it stays empty."""
        reader = self._reader
        loop = self._loop
        if reader is None or loop is None:
            return
        self._timer = None
        try:
            frames = reader.read(self._max_per_turn)
        except OSError as exc:
            self.failed(exc)
            return
        self.stats.rx_overflows = self._overflows_before + reader.drops
        if frames:
            self._arrived(len(frames))
            assert self._on_frames is not None
            try:
                self._on_frames(frames)
            except Exception as exc:  # a bug behind us: the bus must not stop being read
                self.stats.handler_errors += len(frames)
                self._handler_log.failed(bus=self.name, error=repr(exc), exc_info=True)
            else:
                if self._handler_log.active:
                    self._handler_log.cleared(bus=self.name)
        if self._reader is not reader:  # stopped or failed meanwhile
            return
        if not frames:
            self._arm()
            return
        if self._armed:
            loop.remove_reader(reader.sock.fileno())  # the timer reads from now on
            self._armed = False
        if reader.drained:
            self._timer = loop.call_later(self._read_interval_s, self._turn)
        else:
            self._timer = loop.call_soon(self._turn)  # the loop's other work first

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
        self._arrived(1)
        self._on_frame(msg)

    def _arrived(self, count: int) -> None:
        """Bookkeeping of frames received: the first after silence or an outage is told."""
        if self._told_silent and self.stats.frames == 0:
            log.info("can_bus_receiving", bus=self.name, first_frame_after_s=self._since_start())
        self.stats.frames += count
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
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._reader is not None:
            self._overflows_before += self._reader.drops  # a new socket counts from 0
            self.stats.rx_overflows = self._overflows_before
            self._reader = None
        if self._fd is not None and self._loop is not None:
            self._loop.remove_reader(self._fd)
            self._fd = None
        self._armed = False
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
        overflows = asyncio.ensure_future(self._watch_overflows())
        try:
            await self._reopen_forever()
        finally:
            watch.cancel()
            overflows.cancel()

    async def _watch_overflows(self) -> None:
        """A line when the kernel starts dropping this bus's frames (the socket's queue
        full), a line a minute while it goes on, one when a second passes without."""
        seen = self.stats.rx_overflows
        while True:
            await asyncio.sleep(OVERFLOW_CHECK_S)
            now = self.stats.rx_overflows
            if now > seen:
                self._overflow_log.failed(bus=self.name, dropped=now - seen, rx_overflows=now)
            else:
                self._overflow_log.cleared(bus=self.name, rx_overflows=now)
            seen = now

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
