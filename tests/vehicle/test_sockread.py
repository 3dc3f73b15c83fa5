"""The live path's reader: kernel CAN frame structs straight from a socket (here one end of a
datagram socket pair, which carries the same bytes a SocketCAN socket does), parsed exactly as
python-can parses them, drained until the socket would block or the limit is reached, and the
socket's drop counter taken from the ancillary data. The real counter is checked on vcan
(tests/vcan/test_overload.py)."""

from __future__ import annotations

import errno
import json
import os
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import can
import pytest
from can.interfaces.socketcan.socketcan import capture_message
from hypothesis import given, settings
from hypothesis import strategies as st

from agent import config
from agent.vehicle import dbc
from agent.vehicle.decode import Decoder, DecodeStats, build_decoders
from agent.vehicle.frames import (
    CAN_EFF_FLAG,
    CAN_EFF_MASK,
    CAN_ERR_FLAG,
    CAN_RTR_FLAG,
    CAN_SFF_MASK,
    SO_RXQ_OVFL,
    SO_TIMESTAMPNS,
    cmsgs,
    drops_in,
    key_of,
    parse,
    payload,
)
from agent.vehicle.model import Frame, Sample
from agent.vehicle.sockread import _CONTROL, _SLOT, BATCH, FrameReader, available_methods
from tests.support.configs import CONFIG_DIR, ROOT

METHODS = list(available_methods())


def _needs(method: str) -> None:
    """The C reader is built by the install where there is a compiler; CI must have it."""
    if not available_methods()[method]:
        if os.environ.get("CI"):
            pytest.fail(f"the {method} reader is not built (agent/vehicle/_canread.c)")
        pytest.skip(f"the {method} reader is not built here")


EFF, RTR, ERR = 0x8000_0000, 0x4000_0000, 0x2000_0000


def can_frame(can_id: int, data: bytes, *, len8_dlc: int = 0, length: int | None = None) -> bytes:
    n = len(data) if length is None else length
    return struct.pack("=IBBBB", can_id, n, 0, 0, len8_dlc) + data.ljust(8, b"\0")[:8]


def canfd_frame(can_id: int, data: bytes, flags: int = 0, length: int | None = None) -> bytes:
    n = len(data) if length is None else length
    return struct.pack("=IBBBB", can_id, n, flags, 0, 0) + data.ljust(64, b"\0")


FRAMES = {
    "classic 11-bit": can_frame(0x100, bytes(range(8))),
    "classic, 3 bytes": can_frame(0x7FF, b"\x01\x02\x03"),
    "classic, no data": can_frame(0x001, b""),
    "29-bit, EFF flag": can_frame(EFF | 0x18FF50E5, b"\xaa" * 8),
    "remote frame": can_frame(RTR | 0x123, b"", length=4),
    "29-bit remote frame": can_frame(EFF | RTR | 0x1ABCDE, b""),
    "error frame": can_frame(ERR | 0x004, bytes(8)),
    "classic, DLC 12 in len8_dlc": can_frame(0x120, b"\x55" * 8, len8_dlc=12),
    "11-bit id with stray bits": can_frame(0x1F00_0100, b"\x01"),
    "FD, 32 bytes": canfd_frame(0x3C0, bytes(range(32))),
    "FD, BRS": canfd_frame(0x3C0, bytes(range(64)), flags=0x01),
    "FD, ESI": canfd_frame(0x3C1, bytes(12), flags=0x02),
    "FD 29-bit, BRS and ESI": canfd_frame(EFF | 0x1234567, b"\x01" * 48, flags=0x03),
    "FD, len 13 (rounds up to 16)": canfd_frame(0x200, bytes(range(16)), length=13),
    "FD, 8 bytes": canfd_frame(0x201, bytes(8)),
}


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    yield a, b
    a.close()
    b.close()


def python_can(raw: bytes) -> can.Message:
    """python-can's own parsing of these bytes, through its SocketCAN receive function."""
    rx, tx = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with rx, tx:
        rx.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        tx.send(raw)
        msg = capture_message(rx)
    assert msg is not None
    return msg


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", list(FRAMES))
def test_a_frame_reads_as_python_can_gives_it(
    pair: tuple[socket.socket, socket.socket], name: str, method: str
) -> None:
    _needs(method)
    raw = FRAMES[name]
    rx, tx = pair
    reader = FrameReader(rx, method=method)
    before = time.time()
    tx.send(raw)
    [(key, data, ts)] = reader.read(10)
    msg = python_can(raw)
    frame = parse(raw, ts)
    for attribute in (
        "arbitration_id",
        "is_extended_id",
        "is_remote_frame",
        "is_error_frame",
        "is_fd",
        "bitrate_switch",
        "error_state_indicator",
        "dlc",
    ):
        assert getattr(frame, attribute) == getattr(msg, attribute), attribute
    assert frame.data == bytes(msg.data)
    # The hot path's tuple carries the struct's bytes (a remote frame's are never decoded).
    assert data == (payload(raw, len(raw)) if msg.is_remote_frame else frame.data)
    assert key == key_of(struct.unpack_from("=I", raw)[0])
    assert before - 1 <= ts <= time.time() + 1  # the kernel's receive time, not a constant
    # The hot path's key carries the same id and flags.
    extended = bool(key & CAN_EFF_FLAG)
    assert (key & (CAN_EFF_MASK if extended else CAN_SFF_MASK), extended) == (
        msg.arbitration_id,
        msg.is_extended_id,
    )
    assert (bool(key & CAN_RTR_FLAG), bool(key & CAN_ERR_FLAG)) == (
        msg.is_remote_frame,
        msg.is_error_frame,
    )


@pytest.mark.parametrize("method", METHODS)
def test_a_read_drains_until_the_socket_would_block_or_the_limit(
    pair: tuple[socket.socket, socket.socket], method: str
) -> None:
    _needs(method)
    rx, tx = pair
    reader = FrameReader(rx, method=method)
    sent = [can_frame(0x100 + i % 0x600, struct.pack("<I", i)) for i in range(300)]
    for raw in sent:
        tx.send(raw)
    got = reader.read(1000)
    assert reader.drained and len(got) == 300
    assert [struct.unpack("<I", data)[0] for _, data, _ in got] == list(range(300))  # in order
    assert [ts for _, _, ts in got] == sorted(ts for _, _, ts in got)
    for raw in sent:
        tx.send(raw)
    first = reader.read(100)  # the per-turn bound: what is left waits for the next turn
    assert len(first) == 100 and not reader.drained
    rest = reader.read(1000)
    assert len(rest) == 200 and reader.drained
    assert reader.read(1000) == [] and reader.drained
    assert BATCH < 100  # the first read took several system calls


def test_every_method_gives_the_same_tuples(pair: tuple[socket.socket, socket.socket]) -> None:
    rx, tx = pair
    got = {}
    for method in METHODS:
        _needs(method)
        for raw in FRAMES.values():
            tx.send(raw)
        got[method] = FrameReader(rx, method=method).read(100)
    keys_and_data = {m: [(k, d) for k, d, _ in frames] for m, frames in got.items()}
    assert len(keys_and_data["recvmsg"]) == len(FRAMES)
    assert all(frames == keys_and_data["recvmsg"] for frames in keys_and_data.values())


@given(
    datagrams=st.lists(
        st.one_of(
            st.binary(min_size=16, max_size=16),  # a can_frame, any bytes
            st.binary(min_size=72, max_size=72),  # a canfd_frame
            st.binary(max_size=80),  # anything a socket pair can carry: short, odd, too long
        ),
        max_size=150,
    ),
    limit=st.integers(1, 200),
)
@settings(max_examples=150, deadline=None)
def test_any_datagrams_read_the_same_by_every_method(datagrams: list[bytes], limit: int) -> None:
    """The C reader against the two Python ones on whatever arrives: same tuples (the
    timestamps are each read's own), same `drained`, same count of datagrams too short to
    be a frame, in reads of `limit`."""
    results = {}
    for method in METHODS:
        _needs(method)
        rx, tx = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        with rx, tx:
            tx.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
            for raw in datagrams:
                tx.send(raw)
            reader = FrameReader(rx, method=method)
            reads = []
            while True:
                frames = reader.read(limit)
                reads.append(([(k, d) for k, d, _ in frames], reader.drained))
                assert all(isinstance(ts, float) and ts > 1e9 for _, _, ts in frames)
                if reader.drained:
                    break
            results[method] = (reads, reader.short)
    expected = results["recvmsg"]
    assert all(result == expected for result in results.values()), results.keys()
    frames = [frame for read, _ in expected[0] for frame in read]
    assert len(frames) + expected[1] == len(datagrams)
    assert expected[1] == sum(len(raw) < 8 for raw in datagrams)
    for (key, data), raw in zip(frames, (r for r in datagrams if len(r) >= 8), strict=True):
        assert key == key_of(struct.unpack_from("=I", raw)[0])
        assert data == raw[8 : 8 + min(len(raw) - 8, payload_length(raw[4]))]


def payload_length(length: int) -> int:
    return min(
        n for n in (0, 1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 20, 24, 32, 48, 64) if n >= min(length, 64)
    )


def _cmsg(level: int, kind: int, data: bytes) -> bytes:
    header = struct.pack("=QiI", 16 + len(data), level, kind)
    body = header + data
    return body + b"\0" * (-len(body) % 8)


def test_the_drop_counter_is_read_from_the_ancillary_data() -> None:
    timestamp = _cmsg(socket.SOL_SOCKET, SO_TIMESTAMPNS, struct.pack("=qq", 1_700_000_000, 5))
    drops = _cmsg(socket.SOL_SOCKET, SO_RXQ_OVFL, struct.pack("=I", 4_000_000_123))
    parsed = cmsgs(timestamp + drops)
    assert [(level, kind) for level, kind, _ in parsed] == [
        (socket.SOL_SOCKET, SO_TIMESTAMPNS),
        (socket.SOL_SOCKET, SO_RXQ_OVFL),
    ]
    assert drops_in(parsed) == 4_000_000_123  # a uint32, unsigned
    assert drops_in(cmsgs(timestamp)) is None  # the kernel adds it once the count is above 0
    assert drops_in(cmsgs(timestamp + drops[:20])) == 4_000_000_123  # no padding at the end
    assert drops_in(cmsgs(timestamp + drops[:18])) is None  # truncated: not trusted
    assert cmsgs(b"") == []
    other = _cmsg(socket.SOL_SOCKET, 99, struct.pack("=I", 7))
    assert drops_in(cmsgs(other + drops)) == 4_000_000_123


def test_the_reader_keeps_the_newest_count_of_a_call(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """recvmmsg's path: the count comes from the last frame's control area, as the kernel
    wrote it (written here by hand: a socket pair never drops)."""
    rx, _ = pair
    reader = FrameReader(rx, method="recvmmsg")
    control = _cmsg(socket.SOL_SOCKET, SO_TIMESTAMPNS, bytes(16)) + _cmsg(
        socket.SOL_SOCKET, SO_RXQ_OVFL, struct.pack("=I", 42)
    )
    start = _SLOT * 3 + 72
    reader._view[start : start + len(control)] = control
    reader._msgs[3].msg_hdr.msg_controllen = len(control)
    reader._note_drops(3)
    assert reader.drops == 42
    reader._msgs[3].msg_hdr.msg_controllen = 32  # the timestamp alone: the count stays
    reader._note_drops(3)
    assert reader.drops == 42
    assert len(control) <= _CONTROL


@cache
def _demo_decoders() -> dict[str, Decoder]:
    return build_decoders(dbc.load_vehicle(config.load(CONFIG_DIR / "demo.yaml")))


@given(
    can_id=st.one_of(
        st.integers(0, 0xFFFF_FFFF),
        st.sampled_from([0x100, 0x120, 0x3C0, EFF | 0x18FF50E5, 0x18FF50E5, 0x280, 0x390]),
    ),
    data=st.binary(max_size=64),
)
@settings(max_examples=300, deadline=None)
def test_decode_raw_counts_and_decodes_as_decode_into(can_id: int, data: bytes) -> None:
    """Any can_id and payload: the live path's `decode_raw` on the tuple gives the samples and
    the counter `decode_into` gives on python-can's view of the same frame."""
    raw = (
        canfd_frame(can_id, data)
        if len(data) > 8
        else can_frame(can_id, data[:8], length=len(data))
    )
    frame = parse(raw, 12.5)
    for decoder in _demo_decoders().values():
        by_frame: list[Sample] = []
        by_key: list[Sample] = []
        decoder.stats = DecodeStats()
        decoder.decode_into(
            Frame(
                frame.arbitration_id,
                frame.data,
                frame.timestamp,
                frame.is_extended_id,
                frame.is_error_frame,
                frame.is_remote_frame,
            ),
            by_frame,
        )
        stats_by_frame = decoder.stats
        decoder.stats = DecodeStats()
        decoder.decode_raw(key_of(can_id), frame.data, 12.5, by_key)
        assert by_key == by_frame
        assert decoder.stats == stats_by_frame


# An LD_PRELOAD library: on the Nth receive call on fd $AT_FD it first sends one byte on
# that fd, a connected UDP socket whose peer is closed, so the kernel sets the socket's error
# (ECONNREFUSED) between two calls of one read, as a CAN socket gets ENETDOWN when its
# interface goes down.
_SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>
static int calls;
static void maybe_fail(int fd) {
    const char *on = getenv("AT_FD"), *nth = getenv("AT_CALL");
    if (on && nth && atoi(on) == fd && ++calls == atoi(nth)) {
        send(fd, "x", 1, 0);
        usleep(20000);
    }
}
int recvmmsg(int fd, struct mmsghdr *m, unsigned int n, int flags, struct timespec *t) {
    static int (*real)(int, struct mmsghdr *, unsigned int, int, struct timespec *);
    if (!real) real = dlsym(RTLD_NEXT, "recvmmsg");
    maybe_fail(fd);
    return real(fd, m, n, flags, t);
}
ssize_t recvmsg(int fd, struct msghdr *m, int flags) {
    static ssize_t (*real)(int, struct msghdr *, int);
    if (!real) real = dlsym(RTLD_NEXT, "recvmsg");
    maybe_fail(fd);
    return real(fd, m, flags);
}
"""

_ERROR_RUN = """
import json, os, socket, struct, sys
from agent.vehicle.sockread import BATCH, FrameReader
method = sys.argv[1]
rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
rx.bind(("127.0.0.1", 0))
peer.bind(("127.0.0.1", 0))
rx.connect(peer.getsockname())
for i in range(100):
    peer.sendto(struct.pack("=IB3x", 0x100, 4) + struct.pack("<I", i) + bytes(4), rx.getsockname())
peer.close()
os.environ["AT_FD"] = str(rx.fileno())
os.environ["AT_CALL"] = "2" if method != "recvmsg" else str(BATCH + 1)
reader = FrameReader(rx, method=method)
reads = []
for _ in range(4):
    try:
        frames = reader.read(1000)
        reads.append([struct.unpack("<I", data[:4])[0] for _, data, _ in frames])
    except OSError as exc:
        reads.append(exc.errno)
print(json.dumps(reads))
"""


@pytest.mark.parametrize("method", METHODS)
def test_an_error_after_frames_is_raised_by_the_next_read(method: str, tmp_path: Path) -> None:
    """A socket reports some errors once. One that ends a read after frames were read is
    kept, those frames returned, and the next read raises it; then the frames still queued
    are read. (Between the kernel's calls by an LD_PRELOAD library: see _SHIM.)"""
    _needs(method)
    shim = tmp_path / "shim.so"
    (tmp_path / "shim.c").write_text(_SHIM)
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", shim, tmp_path / "shim.c", "-ldl"], check=True)
    done = subprocess.run(
        [sys.executable, "-c", _ERROR_RUN, method],
        env={**os.environ, "LD_PRELOAD": str(shim)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    first, error, rest, last = json.loads(done.stdout)
    assert first == list(range(BATCH))
    assert error == errno.ECONNREFUSED
    assert rest == list(range(BATCH, 100))
    assert last == []


@pytest.mark.parametrize("method", METHODS)
def test_a_stream_of_empty_datagrams_ends_the_read_at_its_limit(method: str) -> None:
    """A closed SOCK_SEQPACKET peer reads as empty datagrams forever (SocketCAN never does
    this): a read counts them against its limit and returns."""
    _needs(method)
    rx, tx = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with rx, tx:
        tx.close()
        reader = FrameReader(rx, method=method)
        assert reader.read(10) == []
        assert reader.short == 10 and not reader.drained
