"""The simulator's UDS responders: ECUs that answer ReadDTCInformation (0x19 0x02) over
ISO-TP with the DTCs the scenario stored in the car's state."""

from __future__ import annotations

from collections.abc import Callable

import can

from agent.maintenance.diagnostics import IsoTpChannel, sender_for
from agent.sim.physics import VehicleState

# (ECU name in VehicleState.dtcs, bus, request id, response id). The OBC (0x7E2) is
# deliberately absent: it never answers, as a sleeping or missing ECU would not.
RESPONDERS = (("bms", "powertrain", 0x7E0, 0x7E8), ("hvac", "body", 0x7E1, 0x7E9))


class UdsResponders:
    def __init__(
        self, state: Callable[[], VehicleState], send: Callable[[str, can.Message], None]
    ) -> None:
        self._state = state
        self._ecus: dict[tuple[str, int], tuple[str, IsoTpChannel]] = {}
        for name, bus, request_id, response_id in RESPONDERS:
            channel = IsoTpChannel(response_id, request_id, sender_for(send, bus))
            self._ecus[(bus, request_id)] = (name, channel)

    def feed(self, bus: str, msg: can.Message) -> bool:
        entry = self._ecus.get((bus, msg.arbitration_id))
        if entry is None or msg.is_extended_id:
            return False
        entry[1].feed(msg)
        return True

    def process(self) -> None:
        for name, channel in self._ecus.values():
            if not channel.active:  # nothing asked of this ECU yet: no transport to step
                continue
            channel.layer.process()
            if not channel.layer.available():
                continue
            request = channel.layer.recv()
            if request is None:
                continue
            channel.layer.send(self._answer(name, bytes(request)))

    def _answer(self, name: str, request: bytes) -> bytes:
        if len(request) < 3 or request[0] != 0x19:
            return bytes([0x7F, request[0] if request else 0, 0x11])  # serviceNotSupported
        if request[1] != 0x02:
            return bytes([0x7F, 0x19, 0x12])  # subFunctionNotSupported
        mask = request[2]
        records = b"".join(
            code.to_bytes(3, "big") + bytes([status])
            for code, status in self._state().dtcs.get(name, [])
            if status & mask
        )
        return bytes([0x59, 0x02, 0xFF]) + records
