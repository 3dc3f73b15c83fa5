"""candump text logs (`(ts) can0 123#DEADBEEF`) read into light frames, as python-can reads them.

Replay spends most of its time reading the log when python-can's `CanutilsLogReader` does it:
a `can.Message` per line and a hex digit pair parsed at a time. This reader gives the same
frames for the same lines (id, extended flag, dlc and data, CAN FD with BRS/ESI, remote and
error frames, channel, timestamp, direction) as `CandumpFrame` tuples, which fit the decoder's
`FrameLike`. tests/vehicle/test_candump.py holds the two readers to that over varied and
malformed lines.

How: the file is read in large blocks of text and one compiled pattern matches every line of
the common shape, `(digits.digits) channel ID#HEX` or `ID##<flag>HEX` with an optional ` R`/` T`,
in one C-level pass (`findall`); a line of any other shape (remote frames, odd digit counts,
extra spaces, garbage) is parsed by `_parse_line`, which follows python-can's own steps one by
one, raising the same exceptions on the same lines. Other log formats stay with python-can.

A byte the locale's encoding cannot decode fails python-can's read of the 8 KB around it; this
reader then reads that block again line by line in the same steps, so the error comes after
about the same frames (exactly the same when the block starts the file).
"""

from __future__ import annotations

import locale
import re
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple, TextIO

# python-can's can.io.canutils constants: an id with both error bits is an error frame.
CAN_ERR_FLAG = 0x2000_0000
CAN_ERR_BUSERROR = 0x0000_0080
CANFD_BRS = 0x01
CANFD_ESI = 0x02

BLOCK_CHARS = 1 << 20

IDS_CACHED = 4096  # distinct id texts remembered per reader (a car has a few hundred)

# One line of the common shape, or (the last group) any other line whole. ASCII classes only,
# so that a matched line splits exactly as python-can's `str.split()` would split it. The
# second alternative also matches the empty string after the last newline (a blank line,
# skipped as python-can skips blank lines). Data with an odd digit count matches too and is
# handed to `_parse_line` when bytes.fromhex refuses it.
_LINE = re.compile(
    r"^\(([0-9]+\.[0-9]+)\) ([A-Za-z0-9_.:-]+) ([0-9A-Fa-f]+)#(#[0-9])?([0-9A-Fa-f]*)( [RrTt])?$"
    r"|^(.*)$",
    re.MULTILINE,
)


class CandumpFrame(NamedTuple):
    """A frame as `can.Message` would carry it, the fields python-can's reader sets."""

    timestamp: float
    arbitration_id: int
    is_extended_id: bool
    is_remote_frame: bool
    is_error_frame: bool
    channel: str | int | None
    dlc: int
    data: bytes
    is_fd: bool
    is_rx: bool
    bitrate_switch: bool
    error_state_indicator: bool


def _frame(
    timestamp: float,
    can_id: int,
    is_extended: bool,
    is_remote: bool,
    channel: str | int,
    dlc: int,
    data: bytes,
    is_fd: bool,
    is_rx: bool,
    brs: bool,
    esi: bool,
) -> CandumpFrame:
    if can_id & CAN_ERR_FLAG and can_id & CAN_ERR_BUSERROR:
        # python-can builds an error frame from the timestamp alone: Message's defaults
        # for the rest (id 0, extended, no channel, no data, received).
        return CandumpFrame(
            timestamp, 0, True, False, True, None, 0, b"", False, True, False, False
        )
    return CandumpFrame(
        timestamp,
        can_id & 0x1FFF_FFFF,
        is_extended,
        is_remote,
        False,
        channel,
        dlc,
        b"" if is_remote else data,
        is_fd,
        is_rx,
        brs,
        esi,
    )


def _parse_line(line: str) -> CandumpFrame | None:
    """One line the way python-can's CanutilsLogReader reads it, step for step (None for a
    blank line); the same exception where it raises one."""
    temp = line.strip()
    if not temp:
        return None
    if temp[-2:].lower() in (" r", " t"):
        timestamp_string, channel_string, frame, is_rx_string = temp.split()
        is_rx = is_rx_string.strip().lower() == "r"
    else:
        timestamp_string, channel_string, frame = temp.split()
        is_rx = True
    timestamp = float(timestamp_string[1:-1])
    can_id_string, data = frame.split("#", maxsplit=1)
    channel: str | int = int(channel_string) if channel_string.isdigit() else channel_string
    is_extended = len(can_id_string) > 3
    can_id = int(can_id_string, 16)
    is_fd = brs = esi = False
    if data and data[0] == "#":
        is_fd = True
        fd_flags = int(data[1])
        brs = bool(fd_flags & CANFD_BRS)
        esi = bool(fd_flags & CANFD_ESI)
        data = data[2:]
    if data and data[0].lower() == "r":
        dlc = int(data[1:]) if len(data) > 1 else 0
        return _frame(
            timestamp, can_id, is_extended, True, channel, dlc, b"", is_fd, is_rx, brs, esi
        )
    payload = bytearray()
    for i in range(0, len(data), 2):
        payload.append(int(data[i : i + 2], 16))
    dlc = len(data) // 2  # an odd digit count: the last digit alone is a byte, not counted
    return _frame(
        timestamp, can_id, is_extended, False, channel, dlc, bytes(payload), is_fd, is_rx, brs, esi
    )


class CandumpReader:
    """Iterates the frames of one candump text log; a context manager like python-can's
    readers. `position()` is the bytes of the file read so far (for progress)."""

    def __init__(self, path: str | Path) -> None:
        # python-can's TextIOMessageReader opens with the locale's encoding: the same here,
        # so that a file that cannot be decoded fails the same way.
        self.file: TextIO = Path(path).open(  # noqa: SIM115 (closed by stop(), as python-can)
            encoding=locale.getpreferredencoding(False)
        )

    def __enter__(self) -> CandumpReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self.file.close()

    def position(self) -> int | None:
        try:
            return int(self.file.buffer.tell())
        except (OSError, ValueError, AttributeError):
            return None

    def __iter__(self) -> Iterator[CandumpFrame]:
        for block in self.blocks():
            yield from block

    def blocks(self) -> Iterator[list[CandumpFrame]]:
        """The frames a block of the file at a time (replay's loop takes them so). A line
        python-can cannot read raises its exception after the frames before it are given."""
        file = self.file
        ids: dict[str, tuple[int, bool, bool]] = {}
        rest = ""
        while True:
            start = file.tell()
            try:
                text = file.read(BLOCK_CHARS)
            except UnicodeDecodeError:
                # Bytes the encoding refuses somewhere in this block: read it again a line
                # at a time (as python-can reads, in the same 8 KB steps of the text layer),
                # so that the frames before them come first.
                file.seek(start)
                yield from _by_line(file, rest, ids)
                return
            if not text:
                break
            text = rest + text
            cut = text.rfind("\n") + 1
            if cut == 0:  # no line ends in this block yet
                rest = text
                continue
            rest = text[cut:]
            yield from _block(text[:cut], ids)
        if rest:
            yield from _block(rest + "\n", ids)
        self.stop()


def _by_line(
    file: TextIO, rest: str, ids: dict[str, tuple[int, bool, bool]]
) -> Iterator[list[CandumpFrame]]:
    frames: list[CandumpFrame] = []
    try:
        for line in iter(file.readline, ""):
            _frames(rest + line if line.endswith("\n") else rest + line + "\n", frames, ids)
            rest = ""
        if rest:
            _frames(rest + "\n", frames, ids)
    except Exception:
        if frames:
            yield frames
        raise
    yield frames


def _block(text: str, ids: dict[str, tuple[int, bool, bool]]) -> Iterator[list[CandumpFrame]]:
    frames: list[CandumpFrame] = []
    try:
        _frames(text, frames, ids)
    except Exception:
        if frames:
            yield frames  # the frames before the bad line first, as python-can gives them
        raise
    yield frames


def _frames(text: str, frames: list[CandumpFrame], ids: dict[str, tuple[int, bool, bool]]) -> None:
    """Append the frames of whole lines of text (each ending in a newline) to `frames`.
    `ids`: id text -> (29-bit id, extended, error frame), filled as ids are met."""
    append = frames.append
    new = tuple.__new__
    fromhex = bytes.fromhex
    for ts, channel, can_id, fd, data, direction, other in _LINE.findall(text):
        if other or not ts:
            # Another shape, or an empty match: a blank line, or the end after the last
            # newline; python-can skips what is only whitespace.
            if other.strip():
                frame = _parse_line(other)
                if frame is not None:
                    append(frame)
            continue
        ident = ids.get(can_id)
        if ident is None:
            value = int(can_id, 16)
            error = bool(value & CAN_ERR_FLAG and value & CAN_ERR_BUSERROR)
            ident = (value & 0x1FFF_FFFF, len(can_id) > 3, error)
            if len(ids) < IDS_CACHED:
                ids[can_id] = ident
        if ident[2]:  # hex data cannot fail python-can's parse: only the timestamp is kept
            append(_frame(float(ts), CAN_ERR_FLAG | CAN_ERR_BUSERROR, True, False, "", 0, b"",
                          False, True, False, False))  # fmt: skip
            continue
        try:
            payload = fromhex(data)
        except ValueError:  # an odd digit count: python-can's pairwise parse, on the same line
            frame = _parse_line(f"({ts}) {channel} {can_id}#{fd}{data}{direction}")
            if frame is not None:
                append(frame)
            continue
        if fd:
            flags = int(fd[1])
            brs = bool(flags & CANFD_BRS)
            esi = bool(flags & CANFD_ESI)
        else:
            brs = esi = False
        append(
            new(
                CandumpFrame,
                (
                    float(ts),
                    ident[0],
                    ident[1],
                    False,
                    False,
                    int(channel) if channel.isdigit() else channel,
                    len(payload),
                    payload,
                    fd != "",
                    direction != " T" and direction != " t",
                    brs,
                    esi,
                ),
            )
        )
