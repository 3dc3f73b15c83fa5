"""Store-and-forward outbox in SQLite (WAL): a record is on disk before it is published and
deleted only after the broker acknowledged it (PUBACK).

Sequence numbers: each stream (telemetry, events) has its own `seq`, allocated in the same
transaction that stores the record, so it never repeats, survives restarts and has no gaps on
disk. Row ids (AUTOINCREMENT, never reused) give the publication order.

Bounded: the database may use at most `max_bytes` (the main file is capped with SQLite's
`max_page_count`; the WAL is checkpointed and truncated at a small fraction of the cap). When
an append does not fit, the oldest telemetry goes first, then the oldest events and command
responses; every dropped record is counted (the counters live in the same file, so they
survive restarts). Records currently in flight are never chosen. Dropping raises one
`storage` event when it starts and one when it stops. Telemetry older than `max_age_s` is
expired (counted) by `expire()`.

A damaged file (not a database, failed integrity check) is moved aside and a fresh one is
started; its sequence numbers start from the clock in milliseconds so that they cannot repeat
numbers the lost file had handed out.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

import structlog

from agent.errors import AgentError
from agent.events import event_payload

log = structlog.get_logger("agent.uplink.outbox")

Kind = Literal["telemetry", "event", "response", "campaign"]
KINDS: tuple[Kind, ...] = ("telemetry", "event", "response", "campaign")
TELEMETRY_PRIORITY = 5  # campaigns above it are dropped before telemetry, below it after

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    created REAL NOT NULL,
    items INTEGER NOT NULL DEFAULT 0,
    correlation BLOB,
    priority INTEGER NOT NULL DEFAULT 5
);
CREATE INDEX IF NOT EXISTS outbox_kind ON outbox(kind, id);
CREATE TABLE IF NOT EXISTS seq (
    stream TEXT PRIMARY KEY,
    last INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""

WAL_SHARE = 0.1  # of the cap, kept for the write-ahead log; the main file gets the rest
WAL_MIN_FRAMES = 16
STOP_BELOW = 0.8  # dropping has stopped once an append fits and use is under this share
_STREAMS = ("telemetry", "events")


class OutboxError(AgentError):
    """The outbox could not be opened or written."""


class OutboxFull(OutboxError):
    """Even after dropping everything droppable, the record does not fit (it was dropped)."""


@dataclass(frozen=True, slots=True)
class Record:
    id: int
    kind: str
    topic: str  # suffix under the prefix ("telemetry", ...), or "@" + a full topic
    payload: bytes
    correlation: bytes | None = None  # MQTT 5 correlation data of a request's response topic


class _Damaged(sqlite3.DatabaseError):
    """The file opened but failed SQLite's integrity check."""


def _is_damage(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(exc, _Damaged) or code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


def _is_full(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code == sqlite3.SQLITE_FULL or "full" in str(exc).lower()


class Outbox:
    """The on-disk queue. Synchronous and quick (a few statements per call); used from the
    event loop thread only."""

    def __init__(
        self,
        path: Path,
        *,
        sync: Literal["normal", "full"] = "normal",
        max_bytes: int | None = None,
        max_age_s: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self._sync = sync
        self.max_bytes = max_bytes
        self._max_age_s = max_age_s
        self._clock = clock
        self._db: sqlite3.Connection | None = None
        self._max_pages = 0
        self.in_flight: set[int] = set()
        self.dropping = False
        self._episode: dict[str, int] = {}
        self._emitting = False
        self.damaged: dict[str, str] | None = None  # set when a damaged file was moved aside
        self.appended = 0
        self.acked = 0

    # --- lifecycle ---------------------------------------------------------------------
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
        except OSError as exc:
            raise OutboxError(f"cannot create {self.path.parent}: {exc.strerror}") from exc
        try:
            self._db = self._connect()
        except sqlite3.Error as exc:
            if not _is_damage(exc):  # permissions, a full disk: not the file's fault
                raise OutboxError(f"cannot open the outbox at {self.path}: {exc}") from exc
            try:
                self._move_aside(str(exc))
                self._db = self._connect()
            except (sqlite3.Error, OSError) as again:
                raise OutboxError(f"cannot open the outbox at {self.path}: {again}") from again
        except OSError as exc:
            raise OutboxError(f"cannot open the outbox at {self.path}: {exc}") from exc
        if self.damaged is not None:
            seed = int(self._clock() * 1000)
            with self._tx() as db:
                for stream in _STREAMS:
                    db.execute(
                        "INSERT OR REPLACE INTO seq(stream, last) VALUES(?, ?)", (stream, seed)
                    )
            self.damaged["seq_from"] = str(seed + 1)
            self.append_event("storage", "outbox_damaged", dict(self.damaged))

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            check = db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise _Damaged(f"integrity check failed: {check}")
            db.execute(f"PRAGMA synchronous={'FULL' if self._sync == 'full' else 'NORMAL'}")
            db.executescript(_SCHEMA)
            columns = {row[1] for row in db.execute("PRAGMA table_info(outbox)")}
            if "items" not in columns:  # files written before the cap existed
                db.execute("ALTER TABLE outbox ADD COLUMN items INTEGER NOT NULL DEFAULT 0")
            if "correlation" not in columns:  # ... and before MQTT 5 request/response
                db.execute("ALTER TABLE outbox ADD COLUMN correlation BLOB")
            if "priority" not in columns:  # ... and before campaigns
                db.execute("ALTER TABLE outbox ADD COLUMN priority INTEGER NOT NULL DEFAULT 5")
            if self.max_bytes is not None:
                # The WAL gets WAL_SHARE of the cap (at least WAL_MIN_FRAMES frames) and is
                # checkpointed at a third of that, so the transaction that crosses the mark
                # still fits; the main file gets the rest, enforced by max_page_count.
                page = int(db.execute("PRAGMA page_size").fetchone()[0])
                frame = page + 24
                wal_frames = max(WAL_MIN_FRAMES, int(self.max_bytes * WAL_SHARE) // frame)
                self._max_pages = max(8, (self.max_bytes - wal_frames * frame - 32) // page)
                db.execute(f"PRAGMA max_page_count={self._max_pages}")
                db.execute(f"PRAGMA wal_autocheckpoint={wal_frames // 3}")
                db.execute(f"PRAGMA journal_size_limit={wal_frames // 3 * frame}")
        except BaseException:
            db.close()
            raise
        return db

    def _move_aside(self, error: str) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self._clock()))
        target = self.path.with_name(f"{self.path.name}.damaged-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(f"{self.path}{suffix}")
            if src.exists():
                src.rename(Path(f"{target}{suffix}"))
        log.error(
            "outbox_damaged",
            path=str(self.path),
            moved_to=str(target),
            error=error,
            action="started a fresh outbox; records in the damaged file are lost",
        )
        self.damaged = {"moved_to": str(target), "error": error}

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise OutboxError("outbox is not open")
        return self._db

    def _tx(self) -> _Transaction:
        return _Transaction(self.db)

    # --- writing -----------------------------------------------------------------------
    def append(
        self,
        kind: Kind,
        topic: str,
        payload: Callable[[int], bytes],
        *,
        stream: str | None = None,
        items: int = 0,
        correlation: bytes | None = None,
        priority: int = TELEMETRY_PRIORITY,
    ) -> int:
        """Store one record; `payload(seq)` builds it with the stream's next seq (0 without a
        stream). Returns the seq. Makes room by dropping old records if the cap is reached;
        raises OutboxFull if the record cannot fit at all (it is counted as dropped)."""
        dropped_any = False
        for _ in range(64):
            try:
                seq = self._insert(kind, topic, payload, stream, items, correlation, priority)
                break
            except sqlite3.Error as exc:
                if not _is_full(exc):
                    raise OutboxError(f"cannot write to the outbox at {self.path}: {exc}") from exc
                if not self._make_room():
                    self._count({f"dropped_{kind}": 1, "dropped_samples": items})
                    self._start_dropping()
                    raise OutboxFull(
                        f"outbox full ({self.path}): a {kind} record was dropped"
                    ) from exc
                dropped_any = True
        else:
            raise OutboxFull(f"outbox full ({self.path}): could not make room")
        self.appended += 1
        if dropped_any:
            self._start_dropping()
        elif self.dropping and self.used_share() < STOP_BELOW:
            self._stop_dropping()
        return seq

    def _insert(
        self,
        kind: Kind,
        topic: str,
        payload: Callable[[int], bytes],
        stream: str | None,
        items: int,
        correlation: bytes | None,
        priority: int = TELEMETRY_PRIORITY,
    ) -> int:
        with self._tx() as db:
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
                "INSERT INTO outbox(kind, topic, payload, created, items, correlation, priority) "
                "VALUES(?, ?, ?, ?, ?, ?, ?)",
                (kind, topic, payload(seq), self._clock(), items, correlation, priority),
            )
        return seq

    def _make_room(self) -> bool:
        """Drop the oldest records, telemetry and campaign data first (campaigns above
        telemetry's priority before it, below it after it); False if nothing could be
        dropped."""
        for kinds in (("telemetry", "campaign"), ("event", "response")):
            marks = ",".join("?" * len(kinds))
            total = self.db.execute(
                f"SELECT count(*) FROM outbox WHERE kind IN ({marks})", kinds
            ).fetchone()[0]
            chunk = max(1, int(total) // 50)  # 2 % at a time: few rounds, little collateral
            rows = self.db.execute(
                f"SELECT id, kind, items FROM outbox WHERE kind IN ({marks}) "
                "ORDER BY priority DESC, id LIMIT ?",
                (*kinds, chunk + len(self.in_flight)),
            ).fetchall()
            victims = [r for r in rows if r[0] not in self.in_flight][:chunk]
            if not victims:
                continue
            counts: dict[str, int] = {}
            for _id, kind, items in victims:
                counts[f"dropped_{kind}"] = counts.get(f"dropped_{kind}", 0) + 1
                counts["dropped_samples"] = counts.get("dropped_samples", 0) + int(items)
            try:
                with self._tx() as db:
                    db.executemany("DELETE FROM outbox WHERE id = ?", [(r[0],) for r in victims])
                    self._count(counts, db)
            except sqlite3.Error as exc:
                raise OutboxError(f"cannot make room in the outbox: {exc}") from exc
            for key, value in counts.items():
                self._episode[key] = self._episode.get(key, 0) + value
            return True
        return False

    def _count(self, counts: dict[str, int], db: sqlite3.Connection | None = None) -> None:
        """Add to the persistent counters (inside the caller's transaction if given)."""
        rows = [(name, value) for name, value in counts.items() if value]
        sql = (
            "INSERT INTO counters(name, value) VALUES(?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value"
        )
        if db is not None:
            db.executemany(sql, rows)
            return
        try:
            with self._tx() as tx:
                tx.executemany(sql, rows)
        except sqlite3.Error:
            log.warning("outbox_counters_not_saved", counts=counts)

    def _start_dropping(self) -> None:
        if self.dropping or self._emitting:
            return
        self.dropping = True
        log.error("outbox_dropping_started", path=str(self.path), max_bytes=self.max_bytes)
        self.append_event(
            "storage", "dropping_started", {"reason": "full", "max_bytes": self.max_bytes}
        )

    def _stop_dropping(self) -> None:
        self.dropping = False
        episode, self._episode = self._episode, {}
        log.info("outbox_dropping_stopped", path=str(self.path), **episode)
        self.append_event("storage", "dropping_stopped", episode)

    def append_event(self, kind: str, name: str, data: Mapping[str, object]) -> None:
        """Store a `P/events` record (events have their own seq stream)."""
        self._emitting = True
        try:
            self.append(
                "event", "events", lambda seq: event_payload(seq, kind, name, data), stream="events"
            )
        except OutboxError as exc:
            log.error("event_dropped", type=kind, name=name, error=str(exc))
        finally:
            self._emitting = False

    def expire(self) -> int:
        """Drop telemetry older than `max_age_s` (counted as expired); the number dropped."""
        if self._max_age_s is None:
            return 0
        cutoff = self._clock() - self._max_age_s
        rows = self.db.execute(
            "SELECT id, items FROM outbox WHERE kind = 'telemetry' AND created < ?", (cutoff,)
        ).fetchall()
        victims = [r for r in rows if r[0] not in self.in_flight]
        if not victims:
            return 0
        try:
            with self._tx() as db:
                db.executemany("DELETE FROM outbox WHERE id = ?", [(r[0],) for r in victims])
                self._count(
                    {
                        "expired_telemetry": len(victims),
                        "expired_samples": sum(int(r[1]) for r in victims),
                    },
                    db,
                )
        except sqlite3.Error as exc:
            raise OutboxError(f"cannot expire old telemetry: {exc}") from exc
        log.warning("outbox_expired", records=len(victims), max_age_s=self._max_age_s)
        return len(victims)

    # --- reading and acknowledging ---------------------------------------------------------
    def pending(self, limit: int, after: int = 0) -> list[Record]:
        """The oldest records not yet acknowledged, in publication order."""
        rows = self.db.execute(
            "SELECT id, kind, topic, payload, correlation FROM outbox WHERE id > ? "
            "ORDER BY id LIMIT ?",
            (after, limit),
        ).fetchall()
        return [
            Record(
                int(r[0]),
                str(r[1]),
                str(r[2]),
                bytes(r[3]),
                bytes(r[4]) if r[4] is not None else None,
            )
            for r in rows
        ]

    def ack(self, ids: Iterable[int]) -> None:
        """Forget records the broker acknowledged."""
        batch = [(i,) for i in ids]
        if not batch:
            return
        try:
            with self._tx() as db:
                db.executemany("DELETE FROM outbox WHERE id = ?", batch)
        except sqlite3.Error as exc:
            raise OutboxError(f"cannot update the outbox at {self.path}: {exc}") from exc
        self.acked += len(batch)
        if self.dropping and self.used_share() < STOP_BELOW:
            self._stop_dropping()

    # --- figures -------------------------------------------------------------------------
    def depth(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM outbox").fetchone()[0])

    def payload_bytes(self) -> int:
        row = self.db.execute("SELECT coalesce(sum(length(payload)), 0) FROM outbox").fetchone()
        return int(row[0])

    def file_bytes(self) -> int:
        """The database and its WAL on disk."""
        total = 0
        for suffix in ("", "-wal"):
            path = Path(f"{self.path}{suffix}")
            if path.exists():
                total += path.stat().st_size
        return total

    def used_share(self) -> float:
        """Pages in use over the cap's pages (0 when there is no cap)."""
        if not self._max_pages:
            return 0.0
        pages = int(self.db.execute("PRAGMA page_count").fetchone()[0])
        free = int(self.db.execute("PRAGMA freelist_count").fetchone()[0])
        return (pages - free) / self._max_pages

    def counters(self) -> dict[str, int]:
        return {str(n): int(v) for n, v in self.db.execute("SELECT name, value FROM counters")}

    def last_seq(self, stream: str) -> int:
        row = self.db.execute("SELECT last FROM seq WHERE stream = ?", (stream,)).fetchone()
        return int(row[0]) if row else 0


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any error."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> sqlite3.Connection:
        self._db.execute("BEGIN IMMEDIATE")
        return self._db

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self._db.execute("COMMIT")
        elif self._db.in_transaction:
            self._db.execute("ROLLBACK")
