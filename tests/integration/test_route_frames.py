"""The supervisor's routing of socket reads: frames answering a diagnostic request go to the
UDS tester as 11-bit frames (python-can's Message defaults to 29-bit ids, which the tester
refuses), the rest to decoding, in order."""

from __future__ import annotations

import can

from agent.config import DiagnosticsSettings, EcuSettings
from agent.maintenance.diagnostics import DtcReader
from agent.supervisor import _route_frames
from agent.vehicle.model import RawFrame


def test_answers_go_to_the_tester_and_the_rest_to_decoding() -> None:
    settings = DiagnosticsSettings(
        ecus=[EcuSettings(name="bms", bus="pt", request_id=0x7E0, response_id=0x7E8)]
    )
    reader = DtcReader(settings, lambda bus, msg: None)
    fed: list[can.Message] = []
    original = reader.feed

    def feed(bus: str, msg: can.Message) -> bool:
        taken = original(bus, msg)
        if taken:
            fed.append(msg)
        return taken

    reader.feed = feed  # type: ignore[method-assign]
    decoded: list[list[RawFrame]] = []
    route = _route_frames("pt", reader, decoded.append)
    frames: list[RawFrame] = [
        (0x100, b"\x01", 1.0),
        (0x7E8, b"\x03\x59\x02\xff", 1.1),
        (0x8000_07E8, b"\x02", 1.2),  # a 29-bit id that happens to end in 7E8: not an answer
        (0x101, b"\x02", 1.3),
    ]
    route(frames)
    assert decoded == [[frames[0], frames[2], frames[3]]]
    assert [(m.arbitration_id, m.is_extended_id, bytes(m.data), m.dlc) for m in fed] == [
        (0x7E8, False, b"\x03\x59\x02\xff", 4)
    ]
    sink = decoded.append
    assert _route_frames("body", reader, sink) is sink  # no ECU answers there: nothing added
