"""Frames straight from a socket: many kernel CAN frame structs per system call, each with its
kernel timestamp, and the socket's drop counter.

`FrameReader` takes any datagram socket carrying `struct can_frame` / `struct canfd_frame`
(a SocketCAN raw socket that python-can opened, configured and filtered, or one end of a
socket pair in benches and tests). One `read()` drains the socket until it would block or
`limit` frames were read, with `recvmmsg(2)` through ctypes: up to 64 frames, their
SO_TIMESTAMPNS timestamps and SO_RXQ_OVFL counters land in one preallocated buffer in one
call, no address is asked for (Python's recvmsg makes CPython look up the interface's name
with an extra ioctl per frame on a CAN socket), and struct unpacks the lot. Where libc has no
recvmmsg the same comes from Python's `socket.recvmsg`, a frame a call (bench/live.py measures
both: docs/performance.md).

The drop counter the kernel puts in a frame's ancillary data is the socket's count when that
frame was queued, so the last frame of each call carries the newest: only that one is parsed.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import struct
import time
from typing import Any

from agent.vehicle.frames import (
    CAN_EFF_FLAG,
    CANFD_MTU,
    PAYLOAD_LENGTH,
    SFF_KEY_MASK,
    SO_RXQ_OVFL,
    SO_TIMESTAMPNS,
    cmsgs,
    drops_in,
    timestamp_of,
)
from agent.vehicle.model import RawFrame

BATCH = 64  # frames per recvmmsg call
_CONTROL = 64  # bytes of ancillary data per frame: a timespec and a uint32, with headers
_SLOT = CANFD_MTU + _CONTROL  # one frame's data, then its ancillary data (8-byte aligned)
_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
_SCM_TIMESTAMPNS = SO_TIMESTAMPNS

# One slot: can_id, len, (flags, res, len8_dlc, 64 data bytes), then the first cmsghdr
# (len, level, type) and its timespec, then the rest of the control area.
_SLOT_STRUCT = struct.Struct("=IB67xQiiqq" + f"{_CONTROL - 32}x")
assert _SLOT_STRUCT.size == _SLOT


class _IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.c_void_p),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    ]


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _MsgHdr), ("msg_len", ctypes.c_uint)]


def _libc_recvmmsg() -> Any:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        func = libc.recvmmsg
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
    func.restype = ctypes.c_int
    return func


_RECVMMSG = _libc_recvmmsg()


def set_receive_buffer(sock: socket.socket, size: int) -> int:
    """Ask for a receive buffer of `size` bytes (beyond net.core.rmem_max when the process
    may: SO_RCVBUFFORCE); the size the kernel granted (it counts its own overhead in, so it
    reports twice what it was asked)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, size)
    except OSError:  # not CAP_NET_ADMIN: capped at net.core.rmem_max
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    granted: int = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    return granted


class FrameReader:
    """Reads kernel CAN frame structs from one socket; see the module's docstring."""

    def __init__(self, sock: socket.socket, *, method: str | None = None) -> None:
        self.sock = sock
        self.method = method or ("recvmmsg" if _RECVMMSG is not None else "recvmsg")
        if self.method == "recvmmsg" and _RECVMMSG is None:
            raise OSError(errno.ENOSYS, "recvmmsg is not available")
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
        self.drops = 0  # the kernel's count of frames this socket lost (receive queue full)
        self.drained = True  # the last read() emptied the socket
        self._fd = sock.fileno()
        self._buffer = ctypes.create_string_buffer(_SLOT * BATCH)
        self._view = memoryview(self._buffer).cast("B")
        self._iov = (_IoVec * BATCH)()
        self._msgs = (_MMsgHdr * BATCH)()
        base = ctypes.addressof(self._buffer)
        for i in range(BATCH):
            self._iov[i].iov_base = base + _SLOT * i
            self._iov[i].iov_len = CANFD_MTU
            hdr = self._msgs[i].msg_hdr
            hdr.msg_iov = ctypes.addressof(self._iov[i])
            hdr.msg_iovlen = 1
            hdr.msg_control = base + _SLOT * i + CANFD_MTU
            hdr.msg_controllen = _CONTROL
        # The kernel overwrites msg_controllen and msg_len: one memmove restores them all.
        self._pristine = bytes(self._msgs)

    def read(self, limit: int) -> list[RawFrame]:
        """Up to `limit` frames, oldest first; `drained` tells whether the socket is empty.
        OSError for anything but "would block" (an interface gone down, for instance)."""
        if self.method == "recvmsg":
            return self._read_recvmsg(limit)
        out: list[RawFrame] = []
        address = ctypes.addressof(self._msgs)
        fd_length = self._fd_length
        stamped = _SCM_TIMESTAMPNS
        pristine = self._pristine
        view = self._view
        unpack = _SLOT_STRUCT.iter_unpack
        eff = CAN_EFF_FLAG
        sff = SFF_KEY_MASK
        while len(out) < limit:
            want = min(BATCH, limit - len(out))
            ctypes.memmove(address, pristine, len(pristine))
            got = _RECVMMSG(self._fd, address, want, socket.MSG_DONTWAIT, None)
            if got < 0:
                code = ctypes.get_errno()
                if code in (errno.EAGAIN, errno.EWOULDBLOCK):
                    self.drained = True
                    return out
                raise OSError(code, os.strerror(code))
            raw = view[: got * _SLOT].tobytes()
            # One comprehension over the slots: per frame a key, the data bytes and the
            # kernel's time. The first cmsg of a slot is the timestamp (SO_TIMESTAMPNS is on
            # for this socket, and the kernel puts it before the drop counter); a frame
            # without one (never seen on Linux) gets the time of reading. A length above 8
            # is CAN FD, or a malformed classic frame: cut as python-can does.
            out += [
                (
                    can_id if can_id & eff else can_id & sff,
                    raw[offset : offset + (length if length <= 8 else fd_length(length, offset))],
                    sec + nsec * 1e-9 if kind == stamped else time.time(),
                )
                for offset, (can_id, length, _clen, _level, kind, sec, nsec) in zip(
                    range(8, got * _SLOT, _SLOT), unpack(raw), strict=True
                )
            ]
            self._note_drops(got - 1)
            if got < want:
                self.drained = True
                return out
        self.drained = False
        return out

    def _fd_length(self, length: int, offset: int) -> int:
        """The data length of the frame whose data starts at `offset` in the slots, when its
        `len` is above 8: rounded up to a CAN FD length, at most what the datagram held."""
        received: int = self._msgs[offset // _SLOT].msg_len - 8
        return min(PAYLOAD_LENGTH[min(length, 64)], received)

    def _note_drops(self, index: int) -> None:
        controllen = self._msgs[index].msg_hdr.msg_controllen
        start = _SLOT * index + CANFD_MTU
        drops = drops_in(cmsgs(self._view[start : start + min(controllen, _CONTROL)]))
        if drops is not None:
            self.drops = drops

    def _read_recvmsg(self, limit: int) -> list[RawFrame]:
        out: list[RawFrame] = []
        recvmsg = self.sock.recvmsg
        space = _CONTROL
        last: list[tuple[int, int, bytes]] | None = None
        while len(out) < limit:
            try:
                frame, ancillary, _flags, _address = recvmsg(CANFD_MTU, space, socket.MSG_DONTWAIT)
            except BlockingIOError:
                self.drained = True
                break
            can_id, length = struct.unpack_from("=IB", frame)
            stamp = time.time()
            for level, kind, data in ancillary:
                if level == socket.SOL_SOCKET and kind == _SCM_TIMESTAMPNS:
                    stamp = timestamp_of(data)
            if length > 8:
                length = min(PAYLOAD_LENGTH[min(length, 64)], len(frame) - 8)
            key = can_id if can_id & CAN_EFF_FLAG else can_id & SFF_KEY_MASK
            out.append((key, frame[8 : 8 + length], stamp))
            last = ancillary
        else:
            self.drained = False
        if last is not None:
            drops = drops_in(last)
            if drops is not None:
                self.drops = drops
        return out
