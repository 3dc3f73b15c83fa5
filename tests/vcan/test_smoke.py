"""Real SocketCAN is here: vcan0 carries CAN FD, vcan1 classic CAN."""

from __future__ import annotations

import can


def test_vcan_interfaces_send_and_receive() -> None:
    with (
        can.Bus(interface="socketcan", channel="vcan0", fd=True) as tx,
        can.Bus(interface="socketcan", channel="vcan0", fd=True) as rx,
    ):
        tx.send(can.Message(arbitration_id=0x3C0, data=bytes(range(32)), is_fd=True))
        msg = rx.recv(2.0)
    assert msg is not None and msg.is_fd and bytes(msg.data) == bytes(range(32))
