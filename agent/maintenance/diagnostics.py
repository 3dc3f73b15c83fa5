"""Diagnostic trouble codes: UDS ReadDTCInformation (0x19, reportDTCByStatusMask) over
ISO-TP, one ECU after another, each with its own clear result or error.

can-isotp's transport logic is stepped from the event loop (its receive and send functions
are ours: frames arrive through the bus receiver, go out through its `send`), and udsoncan
encodes the request and reads the answer, so the agent writes neither protocol itself.
Both libraries are imported on the first exchange, not at start: a car that never reads its
DTCs keeps their ~2 MB of code out of a head unit's memory (bench/footprint.py).
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import can

from agent.config import DiagnosticsSettings, EcuSettings
from agent.errors import AgentError

if TYPE_CHECKING:
    import isotp

STEP_S = 0.002


class IsoTpChannel:
    """One ECU's ISO-TP link, fed with frames and stepped by its owner. The transport is
    built on first use (`layer`); until then `active` is False and stepping it is pointless."""

    def __init__(self, tx_id: int, rx_id: int, send: Callable[[can.Message], None]) -> None:
        self.rx_id = rx_id
        self._tx_id = tx_id
        # Frames as (id, data, dlc, extended) until the transport exists to take them.
        self._queue: collections.deque[tuple[int, bytes, int, bool]] = collections.deque(maxlen=256)
        self._send = send
        self._layer: isotp.TransportLayerLogic | None = None

    @property
    def active(self) -> bool:
        """The transport exists: something was sent or received on this link."""
        return self._layer is not None or bool(self._queue)

    @property
    def layer(self) -> isotp.TransportLayerLogic:
        if self._layer is None:
            import isotp

            self._layer = isotp.TransportLayerLogic(
                rxfn=self._rxfn,
                txfn=self._txfn,
                address=isotp.Address(
                    isotp.AddressingMode.Normal_11bits, txid=self._tx_id, rxid=self.rx_id
                ),
                params={"tx_padding": 0xCC, "blocking_send": False},
            )
        return self._layer

    def _rxfn(self, timeout: float) -> isotp.CanMessage | None:
        if not self._queue:
            return None
        import isotp

        arbitration_id, data, dlc, extended = self._queue.popleft()
        return isotp.CanMessage(
            arbitration_id=arbitration_id, data=data, dlc=dlc, extended_id=extended
        )

    def _txfn(self, msg: isotp.CanMessage) -> None:
        self._send(
            can.Message(
                arbitration_id=msg.arbitration_id,
                data=bytes(msg.data),
                is_extended_id=msg.is_extended_id,
            )
        )

    def feed(self, msg: can.Message) -> None:
        self._queue.append((msg.arbitration_id, bytes(msg.data), msg.dlc, msg.is_extended_id))


def dtc_request(status_mask: int) -> bytes:
    from udsoncan.services.ReadDTCInformation import ReadDTCInformation

    request = ReadDTCInformation.make_request(
        subfunction=ReadDTCInformation.Subfunction.reportDTCByStatusMask,
        status_mask=status_mask,
    )
    payload: bytes = request.get_payload()
    return payload


def parse_dtcs(payload: bytes) -> list[dict[str, Any]]:
    """The DTC records of a positive answer; AgentError for a negative or odd one."""
    from udsoncan.Response import Response
    from udsoncan.services.ReadDTCInformation import ReadDTCInformation

    response = Response.from_payload(payload)
    if not response.valid:
        raise AgentError(f"invalid UDS answer: {response.invalid_reason}")
    if not response.positive:
        raise AgentError(f"negative answer: {response.code_name} (0x{response.code:02X})")
    ReadDTCInformation.interpret_response(
        response, subfunction=ReadDTCInformation.Subfunction.reportDTCByStatusMask
    )
    data: Any = response.service_data
    return [{"code": f"{dtc.id:06X}", "status": dtc.status.get_byte_as_int()} for dtc in data.dtcs]


def sender_for(send: Callable[[str, can.Message], None], bus: str) -> Callable[[can.Message], None]:
    return lambda msg: send(bus, msg)


class DtcReader:
    """The agent's UDS tester: frames from the ECUs' response ids come here, not to decode."""

    def __init__(
        self, settings: DiagnosticsSettings, send: Callable[[str, can.Message], None]
    ) -> None:
        self._settings = settings
        self._lock = asyncio.Lock()  # one exchange at a time: a scan and a command share links
        self._channels: dict[tuple[str, int], tuple[EcuSettings, IsoTpChannel]] = {}
        for ecu in settings.ecus:
            channel = IsoTpChannel(ecu.request_id, ecu.response_id, sender_for(send, ecu.bus))
            self._channels[(ecu.bus, ecu.response_id)] = (ecu, channel)

    def response_ids(self, bus: str) -> set[int]:
        return {rx for (b, rx) in self._channels if b == bus}

    def feed(self, bus: str, msg: can.Message) -> bool:
        """Take a frame if it answers one of our ECUs; True if it was ours."""
        if msg.is_extended_id:
            return False
        entry = self._channels.get((bus, msg.arbitration_id))
        if entry is None:
            return False
        entry[1].feed(msg)
        return True

    async def read(self) -> dict[str, Any]:
        """{ecu: {"dtcs": [...]}} or {ecu: {"error": "..."}} for every configured ECU."""
        results: dict[str, Any] = {}
        request = dtc_request(self._settings.status_mask)
        async with self._lock:
            for ecu, channel in self._channels.values():
                try:
                    answer = await self._exchange(channel, request)
                    results[ecu.name] = {"dtcs": parse_dtcs(answer)}
                except AgentError as exc:
                    results[ecu.name] = {"error": str(exc)}
        return results

    async def _exchange(self, channel: IsoTpChannel, request: bytes) -> bytes:
        layer = channel.layer
        layer.reset()
        try:
            layer.send(request)
        except Exception as exc:  # isotp refuses what it cannot send; say so per ECU
            raise AgentError(f"cannot send the request: {exc}") from exc
        deadline = time.monotonic() + self._settings.timeout_s
        while time.monotonic() < deadline:
            try:
                layer.process()
            except AgentError:
                raise
            except Exception as exc:  # the bus went down under the transport
                raise AgentError(f"transport failed: {exc}") from exc
            if layer.available():
                answer = layer.recv()
                if answer is not None:
                    return bytes(answer)
            await asyncio.sleep(STEP_S)
        raise AgentError(f"no answer within {self._settings.timeout_s:g} s")


def dtc_changes(
    before: dict[str, dict[str, int]], result: dict[str, Any]
) -> tuple[dict[str, dict[str, int]], list[tuple[str, dict[str, Any]]]]:
    """Compare a scan with the last known DTCs per ECU: (new known set, [(event, data)]).
    An ECU that did not answer keeps its last known DTCs (no clears from silence)."""
    known = dict(before)
    events: list[tuple[str, dict[str, Any]]] = []
    for ecu, answer in result.items():
        if "dtcs" not in answer:
            continue
        now = {d["code"]: d["status"] for d in answer["dtcs"]}
        previous = known.get(ecu, {})
        for code in sorted(set(now) - set(previous)):
            events.append(("dtc_new", {"ecu": ecu, "code": code, "status": now[code]}))
        for code in sorted(set(previous) - set(now)):
            events.append(("dtc_cleared", {"ecu": ecu, "code": code}))
        known[ecu] = now
    return known, events
