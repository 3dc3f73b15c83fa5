"""One CAN database file (.dbc, .arxml, .kcd, .sym) to a cantools Database, strictly or leniently.

Real-world DBC files carry quirks that other tools accept and cantools refuses (sometimes even
with `strict=False`). Rather than fork cantools, a lenient load rewrites the DBC text first,
keeping every line where it was so cantools' own line numbers still point into the file, and
reports each rewrite as a `Leniency`. A strict load reports the same quirks as errors.

Quirks handled (DBC text): frame ids over 11 bits without the extended flag (taken as extended),
value tables (VAL_) and signal types (SIG_VALTYPE_) for signals that do not exist (ignored),
comments (CM_) on messages, signals or nodes that do not exist (ignored), numbers written like
`.25` (read as 0.25), UTF-8 text where DBC files are cp1252 (read as UTF-8). In every format:
overlapping signals or signals outside their message (loaded as written, cantools' own
non-strict behaviour).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cantools
from cantools.database.can import Database

EXTENDED_FLAG = 0x8000_0000
MAX_EXTENDED_ID = 0x1FFF_FFFF
MAX_STANDARD_ID = 0x7FF

# The same string token cantools' DBC tokenizer uses: text inside quotes is never rewritten.
_STRING = r'"(?:\\"|[^"])*?"'
_SPLIT_STRINGS = re.compile(f"({_STRING})", re.DOTALL)
_MESSAGE = re.compile(r"^[ \t]*BO_[ \t]+(\d+)[ \t]+(\w+)[ \t]*:", re.MULTILINE)
_SIGNAL = re.compile(r"^[ \t]*SG_[ \t]+(\w+)[ \t]*(?:[mM]\d*M?[ \t]*)?:", re.MULTILINE)
_NODES = re.compile(r"^[ \t]*BU_[ \t]*:([^\n]*)", re.MULTILINE)
_VALUE_TABLE = re.compile(
    rf"^[ \t]*VAL_[ \t]+(\d+)[ \t]+(\w+)(?:\s+[-+]?\d+\s+{_STRING})*\s*;", re.MULTILINE
)
_VALUE_TYPE = re.compile(
    r"^[ \t]*SIG_VALTYPE_[ \t]+(\d+)[ \t]+(\w+)[ \t]*:?[ \t]*\d+[ \t]*;", re.MULTILINE
)
_COMMENT = re.compile(
    rf"^[ \t]*CM_[ \t]+(BO_|SG_|BU_)[ \t]+(\w+)(?:[ \t]+(\w+))?\s+{_STRING}\s*;", re.MULTILINE
)
# `.25`, `-.5`: cantools' NUMBER token needs a digit before the point.
_BARE_POINT = re.compile(r"(?<![\w.])([-+]?)\.(\d)")
# Keywords followed by a frame id, wherever a statement refers to a message.
_ID_REFERENCE = re.compile(
    r"\b(BO_|SG_|VAL_|SIG_VALTYPE_|BO_TX_BU_|SG_MUL_VAL_|SIG_GROUP_|SIG_TYPE_REF_)(\s+)(\d+)\b"
)
_FORMAT_PREFIX = re.compile(r'^(?:DBC|KCD|SYM|ARXML|CDD): "(.*)"$')
_SYNTAX_ERROR = re.compile(r'Invalid syntax at line (\d+), column (\d+): "(.*)"$')
_LINE_IN_ERROR = re.compile(r"\bline (\d+)")
_MESSAGE_IN_ERROR = re.compile(r"in message (\w+)")


@dataclass(frozen=True, slots=True)
class Leniency:
    """One quirk taken (or, strictly, refused): where in the file and what was done."""

    kind: str
    line: int
    name: str  # the message, signal or number concerned, for collapsed summaries
    quirk: str  # what the file says, in plain words
    action: str  # what a lenient load does about it

    @property
    def message(self) -> str:
        return f"{self.quirk}; {self.action}"


# Plural wording for collapsing many quirks of one kind into one line: (what, lenient action).
KINDS = {
    "extended_id": (
        "frame ids over 11 bits without the extended flag",
        "taken as extended",
    ),
    "unknown_value_table": ("value tables (VAL_) for signals that do not exist", "ignored"),
    "unknown_value_type": ("signal types (SIG_VALTYPE_) for signals that do not exist", "ignored"),
    "unknown_comment": ("comments (CM_) on objects that do not exist", "ignored"),
    "encoding": ("files that are UTF-8 rather than cp1252", "read as UTF-8"),
    "bare_point_number": ("numbers written without a digit before the point", "read as 0.x"),
    "overlap": (
        "messages with overlapping signals or signals outside the message",
        "loaded as written",
    ),
}


class DatabaseLoadError(Exception):
    """The file cannot be loaded: `line` in the file (0 when unknown) and why, in one line."""

    def __init__(self, line: int, reason: str) -> None:
        self.line = line
        self.reason = reason
        super().__init__(f"line {line}: {reason}" if line else reason)


class StrictRefusal(Exception):
    """A strict load met quirks that `strict: false` would take; carries each one."""

    def __init__(self, quirks: list[Leniency]) -> None:
        self.quirks = quirks
        super().__init__(f"{len(quirks)} quirks")


@dataclass(slots=True)
class _Scan:
    messages: dict[int, tuple[str, int, set[str]]] = field(default_factory=dict)  # id -> ...
    nodes: set[str] = field(default_factory=set)


def load(path: Path, *, strict: bool) -> tuple[Database, list[Leniency]]:
    """Load one database file; DatabaseLoadError, StrictRefusal or OSError when it cannot."""
    if path.suffix.lower() == ".dbc":
        text, encoding = _read_dbc(path)
        fixed, quirks = normalise_dbc(text)
        quirks[:0] = encoding
        if strict and quirks:
            raise StrictRefusal(quirks)
        db = _parse(lambda: cantools.database.load_string(fixed, "dbc", strict=strict), text)
    else:
        text = path.read_text(encoding="utf-8", errors="replace")
        quirks = []
        db = _parse(lambda: cantools.database.load_file(str(path), strict=strict), text)
    if not strict:
        quirks += _layout_quirks(db, text)
    return db, quirks


def _read_dbc(path: Path) -> tuple[str, list[Leniency]]:
    """DBC files are cp1252 (cantools' default too); many real ones are UTF-8 instead."""
    raw = path.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):
        return raw[3:].decode("utf-8", errors="replace"), [
            Leniency("encoding", 1, path.name, "file starts with a UTF-8 byte order mark", _UTF8)
        ]
    try:
        return raw.decode("cp1252"), []
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        byte = f"byte {raw[exc.start]:#04x}"
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise DatabaseLoadError(line, f"{byte} is neither cp1252 nor UTF-8 text") from None
        return text, [
            Leniency(
                "encoding", line, path.name, f"{byte} is not cp1252 text (DBC's encoding)", _UTF8
            )
        ]


_UTF8 = "read as UTF-8"


def _parse(call: Callable[[], object], text: str) -> Database:
    try:
        db = call()
    except Exception as exc:  # cantools, textparser and the XML parsers raise many types
        raise _load_error(exc, text) from exc
    if not isinstance(db, Database):
        raise DatabaseLoadError(0, "not a CAN database (diagnostics databases are not supported)")
    return db


def _load_error(exc: Exception, text: str) -> DatabaseLoadError:
    reason = " ".join(str(exc).split()) or type(exc).__name__
    wrapped = _FORMAT_PREFIX.match(reason)  # cantools: 'DBC: "<the reason>"'
    if wrapped:
        reason = wrapped.group(1)
    syntax = _SYNTAX_ERROR.match(reason)
    if syntax:  # textparser: 'Invalid syntax at line 3, column 25: "<the line, >>!<< marked>"'
        line, column, where = syntax.groups()
        return DatabaseLoadError(
            int(line), f"invalid syntax at column {column} (marked >>!<<): {where.strip()}"
        )
    found = _LINE_IN_ERROR.search(reason)
    if found:
        return DatabaseLoadError(int(found.group(1)), reason)
    named = _MESSAGE_IN_ERROR.search(reason)
    return DatabaseLoadError(_line_of_name(text, named.group(1)) if named else 0, reason)


def _line_of_name(text: str, name: str) -> int:
    """The first line naming `name` as a whole word (a message's definition comes first)."""
    found = re.search(rf"^[ \t]*BO_[ \t]+\d+[ \t]+{re.escape(name)}\b", text, re.MULTILINE)
    found = found or re.search(rf"\b{re.escape(name)}\b", text)
    return text.count("\n", 0, found.start()) + 1 if found else 0


def _layout_quirks(db: Database, text: str) -> list[Leniency]:
    """Overlapping signals and signals outside the message: cantools' strict check per message."""
    quirks = []
    for message in db.messages:
        try:
            message.refresh(strict=True)
        except Exception as exc:  # cantools.database.errors.Error, but be safe
            reason = " ".join(str(exc).split()).rstrip(".")
            quirks.append(
                Leniency(
                    "overlap",
                    _line_of_name(text, message.name),
                    message.name,
                    reason,
                    "loaded as written",
                )
            )
        finally:
            message.refresh(strict=False)
    return quirks


def normalise_dbc(text: str) -> tuple[str, list[Leniency]]:
    """Rewrite DBC quirks cantools refuses; the result has the same lines as the input."""
    scan = _scan(text)
    quirks: list[Leniency] = []
    text = _drop_unknown(text, scan, quirks)
    unflagged = {
        frame_id: name
        for frame_id, (name, _, _) in scan.messages.items()
        if MAX_STANDARD_ID < frame_id <= MAX_EXTENDED_ID
    }
    for frame_id, name in unflagged.items():
        line = scan.messages[frame_id][1]
        quirks.append(
            Leniency(
                "extended_id",
                line,
                name,
                f"frame id {frame_id:#x} of {name} is over 11 bits without the extended flag",
                "taken as extended",
            )
        )
    parts = _SPLIT_STRINGS.split(text)
    line = 1
    for index, part in enumerate(parts):
        if index % 2 == 0:
            part = _fix_numbers(part, line, quirks)
            if unflagged:
                part = _ID_REFERENCE.sub(
                    lambda m: (
                        m.group(1)
                        + m.group(2)
                        + str(
                            int(m.group(3)) | EXTENDED_FLAG
                            if int(m.group(3)) in unflagged
                            else m.group(3)
                        )
                    ),
                    part,
                )
            parts[index] = part
        line += part.count("\n")
    quirks.sort(key=lambda q: (q.line, q.kind))
    return "".join(parts), quirks


def _scan(text: str) -> _Scan:
    scan = _Scan()
    for found in _NODES.finditer(text):
        scan.nodes.update(found.group(1).split())
    # Signals belong to the message defined last before them.
    marks = sorted(
        [(m.start(), "BO", m) for m in _MESSAGE.finditer(text)]
        + [(m.start(), "SG", m) for m in _SIGNAL.finditer(text)],
        key=lambda item: item[0],
    )
    current: set[str] | None = None
    for start, kind, found in marks:
        if kind == "BO":
            current = set()
            line = text.count("\n", 0, start) + 1
            scan.messages.setdefault(int(found.group(1)), (found.group(2), line, current))
        elif current is not None:
            current.add(found.group(1))
    return scan


def _drop_unknown(text: str, scan: _Scan, quirks: list[Leniency]) -> str:
    """Blank out VAL_ and CM_ statements about things that do not exist (lines kept)."""

    def line_at(offset: int) -> int:
        return text.count("\n", 0, offset) + 1

    def blank(found: re.Match[str]) -> str:
        return "\n" * found.group(0).count("\n")

    def value_table(found: re.Match[str]) -> str:
        frame_id, signal = int(found.group(1)), found.group(2)
        message = scan.messages.get(frame_id)
        if message is not None and signal in message[2]:
            return found.group(0)
        what = (
            f"signal {signal} of message {message[0]}"
            if message is not None
            else f"signal {signal} of frame id {frame_id} (no such message)"
        )
        quirks.append(
            Leniency(
                "unknown_value_table",
                line_at(found.start()),
                signal,
                f"value table (VAL_) for {what}",
                "ignored",
            )
        )
        return blank(found)

    def comment(found: re.Match[str]) -> str:
        kind, target, signal = found.group(1), found.group(2), found.group(3)
        what = None
        if kind == "BU_" and target not in scan.nodes:
            what = f"node {target}"
        elif kind in ("BO_", "SG_"):
            message = scan.messages.get(int(target)) if target.isdigit() else None
            if message is None:
                what = f"frame id {target} (no such message)"
            elif kind == "SG_" and signal not in message[2]:
                what = f"signal {signal} of message {message[0]}"
        if what is None:
            return found.group(0)
        quirks.append(
            Leniency(
                "unknown_comment",
                line_at(found.start()),
                signal or target,
                f"comment (CM_) on {what}",
                "ignored",
            )
        )
        return blank(found)

    def value_type(found: re.Match[str]) -> str:
        frame_id, signal = int(found.group(1)), found.group(2)
        message = scan.messages.get(frame_id)
        if message is not None and signal in message[2]:
            return found.group(0)
        where = message[0] if message is not None else f"frame id {frame_id} (no such message)"
        quirks.append(
            Leniency(
                "unknown_value_type",
                line_at(found.start()),
                signal,
                f"signal type (SIG_VALTYPE_) for signal {signal} of {where}",
                "ignored",
            )
        )
        return blank(found)

    text = _VALUE_TABLE.sub(value_table, text)
    text = _VALUE_TYPE.sub(value_type, text)
    return _COMMENT.sub(comment, text)


def _fix_numbers(part: str, first_line: int, quirks: list[Leniency]) -> str:
    def fix(found: re.Match[str]) -> str:
        line = first_line + part.count("\n", 0, found.start())
        written = found.group(0) + _digits_after(part, found.end())
        quirks.append(
            Leniency(
                "bare_point_number",
                line,
                written,
                f"number {written} written without a digit before the point",
                f"read as {found.group(1)}0{written.lstrip('+-')}",
            )
        )
        return f"{found.group(1)}0.{found.group(2)}"

    return _BARE_POINT.sub(fix, part)


def _digits_after(part: str, offset: int) -> str:
    end = offset
    while end < len(part) and part[end].isdigit():
        end += 1
    return part[offset:end]
