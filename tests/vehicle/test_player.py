"""`play`: frames of a log onto the configured buses, routed like `replay`, at the log's pace."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import can
import pytest

from agent.vehicle import player
from agent.vehicle.dbc import Vehicle


def _write_log(path: Path, frames: list[can.Message]) -> None:
    with can.Logger(str(path)) as writer:
        for frame in frames:
            writer.on_message_received(frame)


def _frame(ts: float, frame_id: int, channel: str, **extra: object) -> can.Message:
    return can.Message(
        timestamp=ts,
        arbitration_id=frame_id,
        is_extended_id=False,
        data=bytes([frame_id & 0xFF] * 8),
        channel=channel,
        **extra,  # type: ignore[arg-type]
    )


def test_routes_like_replay(demo_vehicle: Vehicle) -> None:
    router = player.Router(demo_vehicle, {"can1": "body"})
    pt = demo_vehicle.buses["powertrain"]
    body_id = next(iter(demo_vehicle.buses["body"].messages))
    pt_id = next(iter(pt.messages))

    def route(frame_id: int, channel: str | None) -> str:
        msg = can.Message(arbitration_id=frame_id & 0x1FFF_FFFF, channel=channel)
        msg.is_extended_id = bool(frame_id & 0x8000_0000)
        return router.route(msg)

    assert route(body_id, pt.settings.channel) == "powertrain"  # the channel wins
    assert route(pt_id, "body") == "body"  # a bus name as channel
    assert route(pt_id, "can1") == "body"  # --map-channel
    assert route(body_id, "unknown") == "body"  # else the bus that defines the id
    assert route(0x7AB, None) == "powertrain"  # else the first bus
    with pytest.raises(Exception, match="no bus named 'radar'"):
        player.Router(demo_vehicle, {"can2": "radar"})


async def test_plays_at_the_logs_pace_loops_and_skips_error_frames(
    demo_vehicle: Vehicle, tmp_path: Path
) -> None:
    pt = demo_vehicle.buses["powertrain"].settings.channel
    body = demo_vehicle.buses["body"].settings.channel
    log = tmp_path / "bench.log"
    _write_log(
        log,
        [
            _frame(100.0, 0x101, pt),
            _frame(100.2, 0x102, body),
            _frame(100.3, 0x000, pt, is_error_frame=True),
            _frame(100.4, 0x103, pt),
        ],
    )
    send = {name: can.Bus(interface="virtual", channel=b.settings.channel) for name, b in
            demo_vehicle.buses.items()}  # fmt: skip
    watch = {name: can.Bus(interface="virtual", channel=b.settings.channel) for name, b in
             demo_vehicle.buses.items()}  # fmt: skip
    stats = player.PlayStats()
    started = time.monotonic()
    task = asyncio.ensure_future(
        player.play(demo_vehicle, log, send, speed=2.0, loop=True, stats=stats)
    )
    got: list[tuple[str, int, float]] = []
    try:
        while len(got) < 6 and time.monotonic() - started < 10:
            for name, bus in watch.items():
                msg = bus.recv(0)
                if msg is not None:
                    # The virtual bus stamps each frame when it is sent.
                    got.append((name, msg.arbitration_id, msg.timestamp))
            await asyncio.sleep(0.005)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        for bus in (*send.values(), *watch.values()):
            bus.shutdown()
    assert [(name, frame_id) for name, frame_id, _ in got] == [
        ("powertrain", 0x101),
        ("body", 0x102),
        ("powertrain", 0x103),
    ] * 2
    # Never early: the third frame of each pass is 0.4 s of log, 0.2 s at --speed 2.
    assert got[2][2] - got[0][2] >= 0.19 and got[5][2] - got[3][2] >= 0.19
    assert stats.skipped >= 2 and stats.loops >= 1 and stats.send_errors == 0


def _agent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args], capture_output=True, text=True, check=False
    )


def test_cli_missing_log_and_bad_channel_map_are_one_line(tmp_path: Path) -> None:
    from tests.support.configs import demo_text

    cfg = tmp_path / "demo.yaml"
    cfg.write_text(demo_text())
    missing = _agent("play", "-c", str(cfg), str(tmp_path / "none.log"))
    assert missing.returncode == 1
    assert missing.stderr.splitlines()[-1] == (
        f"vehicle-agent play: log file not found: {tmp_path / 'none.log'}"
    )
    log = tmp_path / "one.log"
    _write_log(log, [_frame(1.0, 0x101, "x")])
    wrong = _agent("play", "-c", str(cfg), str(log), "--map-channel", "x=radar")
    assert (wrong.returncode, wrong.stderr) == (
        1,
        "vehicle-agent play: --map-channel x=radar: no bus named 'radar'\n",
    )
