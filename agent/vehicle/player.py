"""`vehicle-agent play`: a recorded CAN log onto the configured buses with the log's own timing.

For benches: another process's `vehicle-agent run` receives the frames as it would from the car
(like can-utils' canplayer). Frames go to buses by the same rules as `replay`: a single-bus
configuration takes every frame; otherwise the bus whose `channel` or `name` equals the log's
channel (or the one `--map-channel` names); otherwise the first bus whose DBC files define the
id; otherwise the first bus. Error frames are not sent (no interface can transmit one).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import can
import structlog

from agent.errors import AgentError
from agent.vehicle.dbc import Vehicle, frame_key

log = structlog.get_logger("agent.play")

# Sleeping less than this is not worth a trip through the event loop: send at once.
_MIN_SLEEP_S = 0.0005


@dataclass(slots=True)
class PlayStats:
    frames: int = 0
    sent: int = 0
    send_errors: int = 0
    skipped: int = 0  # error frames
    loops: int = 0

    def line(self) -> str:
        return (
            f"play: {self.sent} frames sent ({self.loops} pass{'es' if self.loops != 1 else ''}"
            f" of the log), {self.send_errors} send errors, {self.skipped} error frames skipped"
        )


class Router:
    """Which configured bus a frame of the log goes to."""

    def __init__(self, vehicle: Vehicle, aliases: Mapping[str, str]) -> None:
        names = list(vehicle.buses)
        self._single = names[0] if len(names) == 1 else None
        self._by_channel: dict[str, str] = {}
        for name, bus in vehicle.buses.items():
            self._by_channel.setdefault(bus.settings.channel, name)
            self._by_channel.setdefault(name, name)
        for channel, name in aliases.items():
            if name not in vehicle.buses:
                raise AgentError(f"--map-channel {channel}={name}: no bus named {name!r}")
            self._by_channel[channel] = name
        self._by_key: dict[int, str] = {}
        for name, bus in vehicle.buses.items():
            for key in bus.messages:
                self._by_key.setdefault(key, name)
        self._fallback = names[0]

    def route(self, msg: can.Message) -> str:
        if self._single is not None:
            return self._single
        if msg.channel is not None:
            found = self._by_channel.get(str(msg.channel))
            if found is not None:
                return found
        return self._by_key.get(frame_key(msg.arbitration_id, msg.is_extended_id), self._fallback)


def outgoing(msg: can.Message) -> can.Message:
    """A fresh frame to transmit: the log's id, flags and data, no channel or timestamp."""
    return can.Message(
        arbitration_id=msg.arbitration_id,
        is_extended_id=msg.is_extended_id,
        is_remote_frame=msg.is_remote_frame,
        is_fd=msg.is_fd,
        bitrate_switch=msg.bitrate_switch,
        error_state_indicator=msg.error_state_indicator,
        dlc=msg.dlc,
        data=msg.data,
    )


def read_log(path: Path) -> Iterator[can.Message]:
    """The log's frames; AgentError (not a traceback) when it cannot be read."""
    if not path.exists():
        raise AgentError(f"log file not found: {path}")
    try:
        reader = can.LogReader(str(path))
    except (OSError, ValueError) as exc:
        raise AgentError(f"cannot read log {path}: {exc}") from exc
    count = 0
    with reader:
        messages = iter(reader)
        while True:
            try:
                msg = next(messages)
            except StopIteration:
                return
            except Exception as exc:  # python-can's readers raise many types on bad lines
                raise AgentError(f"{path}: unreadable after {count} frames: {exc}") from exc
            count += 1
            yield msg


async def play(
    vehicle: Vehicle,
    log_path: Path,
    buses: Mapping[str, can.BusABC],
    *,
    speed: float = 1.0,
    loop: bool = False,
    channel_map: Mapping[str, str] | None = None,
    stats: PlayStats | None = None,
) -> PlayStats:
    """Send the log's frames at their own pace (divided by `speed`); once, or until cancelled."""
    router = Router(vehicle, channel_map or {})
    stats = stats if stats is not None else PlayStats()
    while True:
        first_ts: float | None = None
        started = time.monotonic()
        for msg in read_log(log_path):
            stats.frames += 1
            if msg.is_error_frame:
                stats.skipped += 1
                continue
            if first_ts is None:
                # The pace counts from the first frame as it went out: a late first send
                # (a busy machine) must not make the next ones early against it.
                first_ts = msg.timestamp
                _send(buses[router.route(msg)], msg, stats)
                started = time.monotonic()
                continue
            due = started + (msg.timestamp - first_ts) / speed
            wait = due - time.monotonic()
            # A log spliced from two recordings may step back in time: send such frames at once.
            await asyncio.sleep(wait if wait > _MIN_SLEEP_S else 0)
            _send(buses[router.route(msg)], msg, stats)
        stats.loops += 1
        if not loop or first_ts is None:
            return stats


def _send(bus: can.BusABC, msg: can.Message, stats: PlayStats) -> None:
    try:
        bus.send(outgoing(msg), timeout=0.2)
    except (can.CanError, OSError) as exc:
        stats.send_errors += 1
        # A failing bus fails for every frame: one line, then a count now and then.
        if stats.send_errors == 1 or stats.send_errors % 1000 == 0:
            log.warning("play_send_failed", errors=stats.send_errors, error=str(exc))
        return
    stats.sent += 1
