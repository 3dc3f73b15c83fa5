"""CanReceiver's socket path on the event loop, over a datagram socket pair standing in for
python-can's SocketCAN socket: frames handed over many at a time, at most `max_per_turn` a
turn of the loop with the loop's other work in between, the socket read on a timer while
frames flow and woken again when it stays empty; kernel drops logged when they start and
stop."""

from __future__ import annotations

import asyncio
import itertools
import socket
import struct
from collections.abc import Iterator
from typing import Any

import pytest
from structlog.testing import capture_logs

from agent.config import BusSettings
from agent.vehicle import can_io
from agent.vehicle.can_io import CanReceiver
from agent.vehicle.model import RawFrame

SETTINGS = BusSettings(name="pt", interface="socketcan", channel="pair0", dbc=["x.dbc"])


class PairBus:
    """What CanReceiver needs of python-can's SocketcanBus: its socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.socket = sock

    def shutdown(self) -> None:
        self.socket.close()


@pytest.fixture
def feeder(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    rx, tx = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    tx.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    monkeypatch.setattr(can_io, "open_bus", lambda settings, **extra: PairBus(rx))
    yield tx
    tx.close()


def frame(i: int) -> bytes:
    return struct.pack("=IBBBB", 0x100, 4, 0, 0, 0) + struct.pack("<I", i) + bytes(4)


def never(msg: Any) -> None:
    raise AssertionError("the socket path hands over lists, not python-can Messages")


async def test_a_flood_is_handled_in_bounded_turns_with_the_loops_work_between(
    feeder: socket.socket,
) -> None:
    turns: list[tuple[int, int]] = []  # (frames, ticks of another task so far)
    ticks = 0
    got: list[int] = []

    def on_frames(frames: list[RawFrame]) -> None:
        turns.append((len(frames), ticks))
        got.extend(struct.unpack_from("<I", data)[0] for _, data, _ in frames)

    for i in range(1000):  # already waiting when the receiver starts: a backlog
        feeder.send(frame(i))
    receiver = CanReceiver(SETTINGS, never, on_frames=on_frames, max_per_turn=100)
    async with receiver:

        async def other_work() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.ensure_future(other_work())
        for _ in range(200):
            if len(got) >= 1000:
                break
            await asyncio.sleep(0.01)
        task.cancel()
    assert got == list(range(1000))  # all of them, in order
    assert max(n for n, _ in turns) == 100 and len(turns) >= 10
    seen = [t for _, t in turns]
    assert all(b > a for a, b in itertools.pairwise(seen))  # other work in between
    assert receiver.stats.frames == 1000


async def test_frames_flow_on_a_timer_and_an_idle_socket_waits_for_readiness(
    feeder: socket.socket,
) -> None:
    batches: list[int] = []
    receiver = CanReceiver(
        SETTINGS,
        never,
        on_frames=lambda frames: batches.append(len(frames)),
        read_interval_s=0.5,  # long against a loaded machine's lateness
    )

    async def until(condition: Any) -> None:
        for _ in range(500):
            if condition():
                return
            await asyncio.sleep(0.01)
        raise AssertionError("not within 5 s")

    async with receiver:
        await asyncio.sleep(0.02)
        assert receiver._armed  # nothing yet: waiting for the socket
        feeder.send(frame(0))
        await until(lambda: batches == [1])
        assert not receiver._armed  # frames flow: read on the timer
        for i in range(5):
            feeder.send(frame(i))
        await asyncio.sleep(0.05)
        assert batches == [1]  # not woken per frame: they wait for the timer ...
        await until(lambda: len(batches) > 1)
        assert batches == [1, 5]  # ... which reads them together
        await until(lambda: receiver._armed)  # a timer read found nothing: readiness again
        feeder.send(frame(9))
        await until(lambda: len(batches) > 2)
        assert batches == [1, 5, 1]
    assert not receiver._armed and receiver._timer is None  # stopped clean


async def test_kernel_drops_are_logged_when_they_start_and_when_they_stop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The counter itself comes from the socket (tests/vcan/test_overload.py); here it moves
    by hand under the watcher, which checks it every OVERFLOW_CHECK_S."""
    monkeypatch.setattr(can_io, "OVERFLOW_CHECK_S", 0.1)
    settings = BusSettings(name="pt", interface="virtual", channel="drops-x", dbc=["x.dbc"])
    receiver = CanReceiver(settings, lambda msg: None)
    with capture_logs() as logs:
        async with receiver:
            task = asyncio.ensure_future(receiver.run())
            await asyncio.sleep(0.15)
            receiver.stats.rx_overflows = 40
            await asyncio.sleep(0.1)
            receiver.stats.rx_overflows = 90
            await asyncio.sleep(0.35)
            task.cancel()
    lines = [e for e in logs if str(e["event"]).startswith("can_rx_overflow")]
    assert [e["event"] for e in lines] == ["can_rx_overflow", "can_rx_overflow_stopped"]
    assert lines[0]["log_level"] == "warning"
    assert (lines[0]["bus"], lines[0]["dropped"], lines[0]["rx_overflows"]) == ("pt", 40, 40)
    assert lines[1]["rx_overflows"] == 90 and lines[1]["failures"] == 2


async def test_a_handler_that_raises_does_not_stop_the_bus_being_read(
    feeder: socket.socket,
) -> None:
    """A bug behind the receiver (the pipeline raising) is logged once and counted; the next
    frames are read and handed over as before, and recovery is logged. It raises in turns of
    the timer (frames flowing), where nothing else would read the socket again."""
    handed: list[int] = []

    def on_frames(frames: list[RawFrame]) -> None:
        handed.append(len(frames))
        if 2 <= len(handed) <= 3:
            assert not receiver._armed  # a turn of the timer
            raise ValueError("a bug")

    # Each frame is sent as soon as the one before was handed over: the timer, 0.2 s long,
    # is what reads it.
    receiver = CanReceiver(SETTINGS, never, on_frames=on_frames, read_interval_s=0.2)
    with capture_logs() as logs:
        async with receiver:
            for i in range(5):
                feeder.send(frame(i))
                for _ in range(100):
                    if len(handed) > i:
                        break
                    await asyncio.sleep(0.01)
    assert len(handed) == 5
    assert receiver.stats.handler_errors == 2
    events = [entry["event"] for entry in logs]
    assert events.count("can_frames_handler_failed") == 1
    assert events.count("can_frames_handler_failed_cleared") == 1
