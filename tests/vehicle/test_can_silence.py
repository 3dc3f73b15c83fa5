"""A configured bus that receives nothing after start is logged once and flagged `silent`;
the first frame clears the flag."""

from __future__ import annotations

import asyncio

import can
from structlog.testing import capture_logs

from agent.config import BusSettings
from agent.vehicle.can_io import CanReceiver


async def test_a_bus_that_receives_nothing_is_told_once_and_flagged(channel_tag: str) -> None:
    settings = BusSettings(
        name="body", interface="virtual", channel=f"silent-{channel_tag}", dbc=["x.dbc"]
    )
    frames: list[can.Message] = []
    receiver = CanReceiver(settings, frames.append, silent_after_s=0.3)
    with capture_logs() as logs:
        async with receiver:
            task = asyncio.ensure_future(receiver.run())
            assert receiver.silent is False  # not yet: the grace time has not passed
            await asyncio.sleep(0.8)
            assert receiver.silent is True
            silent = [e for e in logs if e["event"] == "can_bus_silent"]
            assert len(silent) == 1  # once, not every interval
            assert silent[0]["log_level"] == "warning"
            assert (silent[0]["bus"], silent[0]["interface"]) == ("body", "virtual")
            assert "same process" in silent[0]["hint"]
            sender = can.Bus(interface="virtual", channel=f"silent-{channel_tag}")
            sender.send(can.Message(arbitration_id=0x300, data=b"\x01"))
            for _ in range(50):
                if frames:
                    break
                await asyncio.sleep(0.02)
            sender.shutdown()
            assert receiver.silent is False
            assert [e["event"] for e in logs if e["event"] == "can_bus_receiving"] == [
                "can_bus_receiving"
            ]
            task.cancel()


async def test_a_bus_that_receives_in_time_is_never_told(channel_tag: str) -> None:
    settings = BusSettings(
        name="pt", interface="virtual", channel=f"busy-{channel_tag}", dbc=["x.dbc"]
    )
    frames: list[can.Message] = []
    receiver = CanReceiver(settings, frames.append, silent_after_s=0.5)
    sender = can.Bus(interface="virtual", channel=f"busy-{channel_tag}")
    with capture_logs() as logs:
        async with receiver:
            task = asyncio.ensure_future(receiver.run())
            await asyncio.sleep(0.1)
            sender.send(can.Message(arbitration_id=0x300, data=b"\x01"))
            await asyncio.sleep(0.8)
            task.cancel()
    sender.shutdown()
    assert frames and receiver.silent is False
    assert not [e for e in logs if e["event"] == "can_bus_silent"]
