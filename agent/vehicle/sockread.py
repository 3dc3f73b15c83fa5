"""Frames straight from a socket: many kernel CAN frame structs per system call, each with its
kernel timestamp, and the socket's drop counter.

`FrameReader` takes any datagram socket carrying `struct can_frame` / `struct canfd_frame`
(a SocketCAN raw socket that python-can opened, configured and filtered, or one end of a
socket pair in benches and tests). One `read()` drains the socket until it would block or
`limit` frames were read, with `recvmmsg(2)`: up to 64 frames, their SO_TIMESTAMPNS
timestamps and SO_RXQ_OVFL counters in one call, no address asked for (Python's recvmsg
makes CPython look up the interface's name with an extra ioctl per frame on a CAN socket).
Three ways to the same frames, the first available taken:

- `native`: agent/vehicle/_canread.c, built by the install where there is a C compiler. It
  builds each frame's tuple directly, which in Python cost more than the system call;
- `recvmmsg`: the same system call through ctypes, the frames unpacked by struct;
- `recvmsg`: Python's `socket.recvmsg`, a frame a call (libc without recvmmsg).

bench/live.py measures them (docs/performance.md); tests/vehicle/test_sockread.py holds them
to the same output, for any datagram. The drop counter the kernel puts in a frame's ancillary
data is the socket's count when that frame was queued, so the last frame of each call carries
the newest: only that one is parsed. A datagram shorter than a frame's 8-byte header (a socket
pair carries anything; SocketCAN never sends one) is left out and counted in `short`.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import struct
import time
from collections.abc import Callable
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


def _native() -> Callable[[int, int], tuple[list[RawFrame], bool, int, int, int]] | None:
    try:
        from agent.vehicle._canread import read_frames
    except ImportError:  # not built (no C compiler where it was installed): ctypes instead
        return None
    return read_frames


_native_read = _native()

BATCH = 64  # frames per recvmmsg call
_CONTROL = 64  # bytes of ancillary data per frame: a timespec and a uint32, with headers
_SLOT = CANFD_MTU + _CONTROL  # one frame's data, then its ancillary data (8-byte aligned)
_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
_SCM_TIMESTAMPNS = SO_TIMESTAMPNS

# One slot: can_id, len, (flags, res, len8_dlc, 64 data bytes), then the first cmsghdr
# (len, level, type) and its timespec, then the rest of the control area.
_SLOT_STRUCT = struct.Struct("=IB67xQiiqq" + f"{_CONTROL - 32}x")
assert _SLOT_STRUCT.size == _SLOT
_HEADER = 8  # can_id, len, flags, res0, len8_dlc: the bytes before the data


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


# The bytes each message brought (msg_len), read out of the headers of one call.
_MSG_LEN_AT = _MMsgHdr.msg_len.offset
_MSG_LEN = struct.Struct(f"={_MSG_LEN_AT}xI{ctypes.sizeof(_MMsgHdr) - _MSG_LEN_AT - 4}x")


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
        self.method = method or next(m for m, ok in available_methods().items() if ok)
        if not available_methods().get(self.method, False):
            raise OSError(errno.ENOSYS, f"reading frames by {self.method} is not available")
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
        self.drops = 0  # the kernel's count of frames this socket lost (receive queue full)
        self.drained = True  # the last read() emptied the socket
        self.short = 0  # datagrams too short to be a frame, left out (see the module's doc)
        # An error that ended a read after frames were read: raised by the next read (a
        # socket reports some only once: an interface gone down, a USB adapter pulled).
        self._pending: OSError | None = None
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
        """Up to `limit` datagrams' frames, oldest first; `drained` tells whether the socket
        is empty. OSError for anything but "would block" (an interface gone down, for
        instance), unless frames were read before it: those are returned, and the error is
        raised by the next read."""
        if self._pending is not None:
            error, self._pending = self._pending, None
            raise error
        if self.method == "native":
            assert _native_read is not None
            frames, self.drained, drops, short, code = _native_read(self._fd, limit)
            if drops >= 0:
                self.drops = drops
            self.short += short
            if code:
                self._pending = OSError(code, os.strerror(code))
            return frames
        if self.method == "recvmsg":
            return self._read_recvmsg(limit)
        return self._read_recvmmsg(limit)

    def _read_recvmmsg(self, limit: int) -> list[RawFrame]:
        out: list[RawFrame] = []
        address = ctypes.addressof(self._msgs)
        stamped = _SCM_TIMESTAMPNS
        pristine = self._pristine
        view = self._view
        headers = memoryview(self._msgs).cast("B")
        unpack = _SLOT_STRUCT.iter_unpack
        lengths_of = _MSG_LEN.iter_unpack
        eff = CAN_EFF_FLAG
        sff = SFF_KEY_MASK
        taken = 0  # datagrams, short ones too: a stream of empty ones must end
        while taken < limit:
            want = min(BATCH, limit - taken)
            ctypes.memmove(address, pristine, len(pristine))
            got = _RECVMMSG(self._fd, address, want, socket.MSG_DONTWAIT, None)
            if got < 0:
                code = ctypes.get_errno()
                if code == errno.EINTR:
                    continue
                if code in (errno.EAGAIN, errno.EWOULDBLOCK):
                    self.drained = True
                    return out
                if taken:  # what was read is kept; the next read raises the error
                    self._pending = OSError(code, os.strerror(code))
                    break
                raise OSError(code, os.strerror(code))
            taken += got
            raw = view[: got * _SLOT].tobytes()
            received = [n for (n,) in lengths_of(headers[: got * ctypes.sizeof(_MMsgHdr)])]
            # One comprehension over the slots: per frame a key, the data bytes and the
            # kernel's time. The first cmsg of a slot is the timestamp (SO_TIMESTAMPNS is on
            # for this socket, and the kernel puts it before the drop counter); a frame
            # without one (never seen on Linux) gets the time of reading. A length above 8
            # is CAN FD, or a malformed classic frame: cut as python-can does; never past
            # what the datagram brought.
            out += [
                (
                    can_id if can_id & eff else can_id & sff,
                    raw[offset : offset + min(PAYLOAD_LENGTH[min(length, 64)], size - 8)],
                    sec + nsec * 1e-9 if kind == stamped else time.time(),
                )
                for offset, size, (can_id, length, _clen, _level, kind, sec, nsec) in zip(
                    range(_HEADER, got * _SLOT, _SLOT), received, unpack(raw), strict=True
                )
                if size >= _HEADER
            ]
            if min(received) < _HEADER:
                self.short += sum(size < _HEADER for size in received)
            self._note_drops(got - 1)
            if got < want:
                self.drained = True
                return out
        self.drained = False
        return out

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
        taken = 0  # datagrams, short ones too: a stream of empty ones must end
        while taken < limit:
            try:
                frame, ancillary, _flags, _address = recvmsg(CANFD_MTU, space, socket.MSG_DONTWAIT)
            except BlockingIOError:
                self.drained = True
                break
            except InterruptedError:
                continue
            except OSError as exc:
                if not taken:
                    raise
                self._pending = exc  # what was read is kept; the next read raises this
                self.drained = False
                break
            taken += 1
            last = ancillary
            if len(frame) < _HEADER:
                self.short += 1
                continue
            can_id, length = struct.unpack_from("=IB", frame)
            stamp = time.time()
            for level, kind, data in ancillary:
                if level == socket.SOL_SOCKET and kind == _SCM_TIMESTAMPNS:
                    stamp = timestamp_of(data)
                    break
            key = can_id if can_id & CAN_EFF_FLAG else can_id & SFF_KEY_MASK
            out.append((key, frame[_HEADER : _HEADER + PAYLOAD_LENGTH[min(length, 64)]], stamp))
        else:
            self.drained = False
        if last is not None:
            drops = drops_in(last)
            if drops is not None:
                self.drops = drops
        return out


def available_methods() -> dict[str, bool]:
    """The ways to read frames, fastest first, and whether this installation has each."""
    return {
        "native": _native_read is not None,
        "recvmmsg": _RECVMMSG is not None,
        "recvmsg": True,
    }
