"""The kernel's CAN frame structs: `struct can_frame` / `struct canfd_frame` bytes as the
decoder reads them, and the socket's receive ancillary data (timestamp, drop counter).

The hot path carries a frame as a plain tuple `(key, data, timestamp)`: `key` is the kernel's
`can_id` with an 11-bit id cut to 11 bits (as python-can does) and the EFF, RTR and ERR flags
kept, which makes it the decoder's frame key (bit 31 marks a 29-bit id in both). `KernelFrame`
is the same frame as a `FrameLike` with every attribute python-can's Message would give it,
for the few paths that want one (the UDS tester, tests).
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterable
from typing import NamedTuple

CAN_EFF_FLAG = 0x8000_0000
CAN_RTR_FLAG = 0x4000_0000
CAN_ERR_FLAG = 0x2000_0000
CAN_SFF_MASK = 0x7FF
CAN_EFF_MASK = 0x1FFF_FFFF
# What stays of an 11-bit frame's can_id in its key: the id and the RTR and ERR flags.
SFF_KEY_MASK = CAN_RTR_FLAG | CAN_ERR_FLAG | CAN_SFF_MASK

CAN_MTU = 16  # sizeof(struct can_frame)
CANFD_MTU = 72  # sizeof(struct canfd_frame)
CANFD_BRS = 0x01
CANFD_ESI = 0x02

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
SO_RXQ_OVFL = getattr(socket, "SO_RXQ_OVFL", 40)

# can_id, len, flags (CAN FD; __pad in a classic frame), __res0, len8_dlc
HEADER = struct.Struct("=IBBxB")
_TIMESPEC = struct.Struct("=qq")
_CMSG_HEADER = struct.Struct("=QiI")  # struct cmsghdr on 64-bit Linux: len, level, type
_CMSG_ALIGN = 8
_DROPS = struct.Struct("=I")

# The payload lengths a CAN FD frame can have; a `len` in between rounds up, as python-can's
# dissect_can_frame does.
FD_LENGTHS = (0, 1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 20, 24, 32, 48, 64)
PAYLOAD_LENGTH = tuple(min(n for n in FD_LENGTHS if n >= i) for i in range(65))


class KernelFrame(NamedTuple):
    """One received frame with python-can Message's attributes (a `FrameLike`)."""

    arbitration_id: int
    data: bytes
    timestamp: float
    is_extended_id: bool
    is_remote_frame: bool
    is_error_frame: bool
    is_fd: bool
    bitrate_switch: bool
    error_state_indicator: bool
    dlc: int


def key_of(can_id: int) -> int:
    """The frame key of a kernel `can_id` (see the module's docstring)."""
    return can_id if can_id & CAN_EFF_FLAG else can_id & SFF_KEY_MASK


def payload(frame: bytes | bytearray | memoryview, size: int) -> bytes:
    """The data bytes of a struct of `size` bytes (16 or 72) at the start of `frame`,
    as python-can cuts them: `len` rounded up to a CAN FD length, at most what is there."""
    length = PAYLOAD_LENGTH[min(frame[4], 64)]
    return bytes(frame[8 : 8 + min(length, size - 8)])


def parse(frame: bytes | bytearray | memoryview, timestamp: float) -> KernelFrame:
    """A struct can_frame (16 bytes) or canfd_frame (72) as python-can's Message sees it."""
    size = len(frame)
    can_id, length, flags, len8_dlc = HEADER.unpack_from(frame)
    is_fd = size == CANFD_MTU
    # python-can's Message keeps no data for a remote frame (its length is the DLC asked).
    data = b"" if can_id & CAN_RTR_FLAG else payload(frame, size)
    dlc = PAYLOAD_LENGTH[min(length, 64)]
    if not is_fd:
        flags = 0  # the byte is padding in a classic frame
        if dlc == 8 and 8 < len8_dlc <= 15:
            dlc = len8_dlc  # a classic frame's DLC 9..15 (8 bytes of data)
    extended = bool(can_id & CAN_EFF_FLAG)
    return KernelFrame(
        arbitration_id=can_id & (CAN_EFF_MASK if extended else CAN_SFF_MASK),
        data=data,
        timestamp=timestamp,
        is_extended_id=extended,
        is_remote_frame=bool(can_id & CAN_RTR_FLAG),
        is_error_frame=bool(can_id & CAN_ERR_FLAG),
        is_fd=is_fd,
        bitrate_switch=bool(flags & CANFD_BRS),
        error_state_indicator=bool(flags & CANFD_ESI),
        dlc=dlc,
    )


def timestamp_of(data: bytes) -> float:
    """A `struct timespec` (SCM_TIMESTAMPNS) in seconds, computed as python-can does."""
    seconds, nanoseconds = _TIMESPEC.unpack_from(data)
    return float(seconds + nanoseconds * 1e-9)


def drops_in(ancillary: Iterable[tuple[int, int, bytes]]) -> int | None:
    """The SO_RXQ_OVFL counter in recvmsg's ancillary data: the frames the socket had lost
    (its receive queue full) when this frame was queued; None when absent (the kernel adds
    it only once the count is above 0)."""
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_RXQ_OVFL and len(data) >= 4:
            drops: int = _DROPS.unpack_from(data)[0]
            return drops
    return None


def cmsgs(control: bytes | memoryview) -> list[tuple[int, int, bytes]]:
    """Raw control bytes (a msghdr's msg_control, msg_controllen of them) as the
    (level, type, data) list Python's recvmsg returns."""
    out = []
    offset = 0
    while offset + _CMSG_HEADER.size <= len(control):
        length, level, kind = _CMSG_HEADER.unpack_from(control, offset)
        if length < _CMSG_HEADER.size or offset + length > len(control):
            break  # truncated (MSG_CTRUNC) or not a cmsghdr: nothing more to trust
        out.append((level, kind, bytes(control[offset + _CMSG_HEADER.size : offset + length])))
        offset += (length + _CMSG_ALIGN - 1) & ~(_CMSG_ALIGN - 1)
    return out
