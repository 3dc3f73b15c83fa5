"""What can still be read from a damaged outbox file (moved aside): the records one by one
(a torn page costs only the records on it), the streams' last seqs and the counters, and how
many records could not be read."""

from __future__ import annotations

import contextlib
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAX_IDS = 500_000  # read one by one up to this span of ids; beyond, a plain scan
Row = tuple[int, str, str, bytes, float, int, bytes | None, int]
# `priority` (a campaign capture's place in the drop order) came with campaigns: a file from
# before them has no such column, and its records all had telemetry's.
_COLUMNS = "id, kind, topic, payload, created, items, correlation, priority"
_COLUMNS_BEFORE_PRIORITY = "id, kind, topic, payload, created, items, correlation, 5"


@dataclass(slots=True)
class Salvage:
    rows: list[Row] = field(default_factory=list)
    seq: dict[str, int] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    lost: int | None = None  # None: not even the ids could be read (not a database)


def salvage(path: Path) -> Salvage:
    found = Salvage()
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error:
        return found
    try:
        # A file cut short (a truncated main file) says in its header that it has more
        # pages than it holds; SQLite refuses such a file as corrupt before reading a page,
        # unless the schema is "writable" (read-only here: nothing is written).
        with contextlib.suppress(sqlite3.Error):
            db.execute("PRAGMA writable_schema=ON")
        with contextlib.suppress(sqlite3.Error):
            found.seq = {str(s): int(v) for s, v in db.execute("SELECT stream, last FROM seq")}
        with contextlib.suppress(sqlite3.Error):
            found.counters = {
                str(n): int(v) for n, v in db.execute("SELECT name, value FROM counters")
            }
        span = _id_span(db)
        if span is None:
            return found
        low, high = span
        if high - low > MAX_IDS:
            _scan(db, found, _columns(db))
            return found
        found.lost = 0
        columns = _columns(db)
        for record_id in range(low, high + 1):
            try:
                row = db.execute(f"SELECT {columns} FROM outbox WHERE id = ?", (record_id,))
                hit = row.fetchone()
            except sqlite3.Error:
                found.lost += 1  # on an unreadable page: counted (at most what was there)
                continue
            if hit is not None:
                found.rows.append(_row(hit))
    finally:
        db.close()
    return found


def _id_span(db: sqlite3.Connection) -> tuple[int, int] | None:
    high = low = None
    with contextlib.suppress(sqlite3.Error):
        row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
        high = int(row[0]) if row else None
    with contextlib.suppress(sqlite3.Error):
        row = db.execute("SELECT min(id), max(id) FROM outbox").fetchone()
        if row and row[0] is not None:
            low, high = int(row[0]), max(int(row[1]), high or 0)
    if high is None:
        return None
    return (low if low is not None else max(1, high - MAX_IDS)), high


def _columns(db: sqlite3.Connection) -> str:
    """The columns to read: with `priority` where the file has it."""
    with contextlib.suppress(sqlite3.Error):
        names = {str(row[1]) for row in db.execute("PRAGMA table_info(outbox)")}
        if names and "priority" not in names:
            return _COLUMNS_BEFORE_PRIORITY
    return _COLUMNS


def _scan(db: sqlite3.Connection, found: Salvage, columns: str) -> None:
    with contextlib.suppress(sqlite3.Error):
        for hit in db.execute(f"SELECT {columns} FROM outbox ORDER BY id"):
            found.rows.append(_row(hit))


def _row(hit: tuple[Any, ...]) -> Row:
    correlation = hit[6]
    return (
        int(hit[0]),
        str(hit[1]),
        str(hit[2]),
        bytes(hit[3]),
        float(hit[4]),
        int(hit[5]),
        bytes(correlation) if correlation is not None else None,
        int(hit[7]),
    )
