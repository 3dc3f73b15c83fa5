"""Store-and-forward outbox in SQLite (WAL): a record is on disk before it is published and
deleted only after the broker acknowledged it (PUBACK).

Each stream (telemetry, events) has its own `seq`, allocated in the same transaction that
stores the record, so a sequence number is never handed out twice, survives restarts and has
no gaps on disk. Row ids (AUTOINCREMENT, never reused) give the publication order.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

from agent.errors import AgentError

Kind = Literal["telemetry", "event", "response"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS seq (
    stream TEXT PRIMARY KEY,
    last INTEGER NOT NULL
);
"""


class OutboxError(AgentError):
    """The outbox could not be opened or written (disk full, permissions, damaged file)."""


@dataclass(frozen=True, slots=True)
class Record:
    id: int
    kind: str
    topic: str  # suffix under the topic prefix: "telemetry", "events", "commands/response"
    payload: bytes


class Outbox:
    """The on-disk queue. Synchronous and fast (a few statements per call); used from the
    event loop thread only."""

    def __init__(self, path: Path, *, sync: Literal["normal", "full"] = "normal") -> None:
        self.path = path
        self._sync = sync
        self._db: sqlite3.Connection | None = None
        self.appended = 0
        self.acked = 0

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={'FULL' if self._sync == 'full' else 'NORMAL'}")
            db.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise OutboxError(f"cannot open the outbox at {self.path}: {exc}") from exc
        self._db = db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise OutboxError("outbox is not open")
        return self._db

    def append(
        self, kind: Kind, topic: str, payload: Callable[[int], bytes], *, stream: str | None = None
    ) -> int:
        """Store one record; `payload(seq)` builds it with the stream's next seq (0 without a
        stream). Returns the seq. Raises OutboxError if the disk refuses."""
        db = self.db
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                seq = 0
                if stream is not None:
                    row = db.execute("SELECT last FROM seq WHERE stream = ?", (stream,)).fetchone()
                    seq = (row[0] if row else 0) + 1
                    db.execute(
                        "INSERT INTO seq(stream, last) VALUES(?, ?) "
                        "ON CONFLICT(stream) DO UPDATE SET last = excluded.last",
                        (stream, seq),
                    )
                db.execute(
                    "INSERT INTO outbox(kind, topic, payload, created) VALUES(?, ?, ?, ?)",
                    (kind, topic, payload(seq), time.time()),
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise OutboxError(f"cannot write to the outbox at {self.path}: {exc}") from exc
        self.appended += 1
        return seq

    def pending(self, limit: int, after: int = 0) -> list[Record]:
        """The oldest records not yet acknowledged, in publication order."""
        rows = self.db.execute(
            "SELECT id, kind, topic, payload FROM outbox WHERE id > ? ORDER BY id LIMIT ?",
            (after, limit),
        ).fetchall()
        return [Record(int(r[0]), str(r[1]), str(r[2]), bytes(r[3])) for r in rows]

    def ack(self, ids: Iterable[int]) -> None:
        """Forget records the broker acknowledged."""
        batch = [(i,) for i in ids]
        if not batch:
            return
        db = self.db
        try:
            db.execute("BEGIN IMMEDIATE")
            db.executemany("DELETE FROM outbox WHERE id = ?", batch)
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise OutboxError(f"cannot update the outbox at {self.path}: {exc}") from exc
        self.acked += len(batch)

    def depth(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM outbox").fetchone()[0])

    def payload_bytes(self) -> int:
        row = self.db.execute("SELECT coalesce(sum(length(payload)), 0) FROM outbox").fetchone()
        return int(row[0])

    def last_seq(self, stream: str) -> int:
        row = self.db.execute("SELECT last FROM seq WHERE stream = ?", (stream,)).fetchone()
        return int(row[0]) if row else 0
