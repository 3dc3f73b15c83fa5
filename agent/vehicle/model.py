"""Plain data that flows between the stages: frames in, samples out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

Value = bool | int | float | str

# A received frame on the live path, as the kernel's struct carries it: (key, data, timestamp),
# `key` the can_id with its EFF, RTR and ERR flags (agent.vehicle.frames). No object a frame.
RawFrame = tuple[int, bytes, float]


class Sample(NamedTuple):
    """One decoded value of one canonical (VSS) path at a frame's timestamp."""

    path: str
    ts: float
    value: Value


class FrameLike(Protocol):
    """What the decoder reads of a frame; `can.Message` and `Frame` both fit."""

    @property
    def arbitration_id(self) -> int: ...
    @property
    def is_extended_id(self) -> bool: ...
    @property
    def is_error_frame(self) -> bool: ...
    @property
    def is_remote_frame(self) -> bool: ...
    @property
    def data(self) -> bytes | bytearray: ...
    @property
    def timestamp(self) -> float: ...


@dataclass(frozen=True, slots=True)
class Frame:
    """A CAN frame as plain data (tests and the simulator build these)."""

    arbitration_id: int
    data: bytes
    timestamp: float = 0.0
    is_extended_id: bool = False
    is_error_frame: bool = False
    is_remote_frame: bool = False
    is_fd: bool = False
    channel: str | None = field(default=None)
