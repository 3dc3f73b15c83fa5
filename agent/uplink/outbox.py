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

The disk's faults never fail an append or an acknowledgement: a full disk is handled by
`room.Room` (reserve file, lowered cap); a disk that refuses writes (read-only, gone) sends
records to a bounded memory buffer (`spill.Spill`) until it takes them again; an
acknowledgement that cannot be saved is kept in memory and retried. A damaged file is moved
aside, what is readable is salvaged (`salvage`) and the rest counted. A new file, a file
replaced under the running daemon, a file left open by an earlier boot (power cut) and the
memory buffer all continue the streams from the clock in milliseconds, so a seq is never
handed out twice.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import os
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
from agent.logs import Repeating
from agent.uplink.room import Room, is_full
from agent.uplink.salvage import Salvage, salvage
from agent.uplink.spill import Held, Spill

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

RETRY_S = 5.0  # how often a refusing disk is tried again
STOP_BELOW = 0.8  # dropping has stopped once an append fits and use is under this share
# "*" is the floor of every stream that has no row of its own yet (a campaign's, made later
# in the file's life): a new, damaged or memory-backed outbox seeds it with the rest.
_STREAMS = ("telemetry", "events", "*")


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


_is_full = is_full


def _file_id(path: Path) -> tuple[int, int]:
    stat = os.stat(path)
    return stat.st_dev, stat.st_ino


def _current_boot() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _is_unwritable(exc: sqlite3.Error) -> bool:
    """A disk that refuses writes for now: read-only, gone, I/O errors, full."""
    code = getattr(exc, "sqlite_errorcode", None)
    base = code & 0xFF if isinstance(code, int) else None
    refusing = (
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_BUSY,
    )
    text = str(exc).lower()
    return base in refusing or "readonly" in text or "read-only" in text or _is_full(exc)


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
        boot_id: str | None = None,
    ) -> None:
        self.path = path
        self._boot_id = boot_id if boot_id is not None else _current_boot()
        self._sync = sync
        self.max_bytes = max_bytes
        self._max_age_s = max_age_s
        self._clock = clock
        self._db: sqlite3.Connection | None = None
        self.room = Room(path, max_bytes)  # the cap, the WAL's size, the reserve file
        self.in_flight: set[int] = set()
        self.dropping = False
        self._episode: dict[str, int] = {}
        self._emitting = False
        self.damaged: dict[str, str] | None = None  # set when a damaged file was moved aside
        self.appended = 0
        self.acked = 0
        self.spill = Spill()  # records the disk would not take
        self.on_disk = True  # False while records go to the in-memory buffer
        self._retry_at = 0.0
        self._last_id = 0  # the highest record id handed out (disk or memory)
        self._seq: dict[str, int] = {}  # the last seq of each stream (disk or memory)
        self._unacked: set[int] = set()  # acknowledged, but the DELETE could not be saved
        # (device, inode) of the open file: a file replaced by one on another filesystem
        # (a repaired one mounted at the path) can have the same inode number
        self._file: tuple[int, int] | None = None
        self._refused = Repeating(log, "outbox_on_memory")
        self._ack_failed = Repeating(log, "outbox_ack_not_saved", level="warning")
        self._vanished = Repeating(log, "outbox_file_vanished")

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
            if exc.errno not in (errno.EROFS, errno.ENOSPC):
                raise OutboxError(f"cannot create {self.path.parent}: {exc.strerror}") from exc
        fresh = not self.path.exists()
        try:
            self._db = self._connect()
        except sqlite3.Error as exc:
            if _is_unwritable(exc) and self.room.refuses():  # run on memory, retry later
                self._db = None
                self._to_memory(str(exc))
                return
            if not _is_damage(exc):  # permissions, a directory in the way: not the file's fault
                raise OutboxError(f"cannot open the outbox at {self.path}: {exc}") from exc
            try:
                self._move_aside(str(exc))
                self._db = self._connect()
            except (sqlite3.Error, OSError) as again:
                raise OutboxError(f"cannot open the outbox at {self.path}: {again}") from again
        except OSError as exc:
            raise OutboxError(f"cannot open the outbox at {self.path}: {exc}") from exc
        power_cut = not fresh and self.damaged is None and self._power_was_cut()
        fresh = fresh or power_cut
        found = salvage(Path(self.damaged["moved_to"])) if self.damaged is not None else None
        if found is not None:
            self._seq = dict(found.seq)  # the new streams start above these (and the clock)
        self._loaded(fresh or self.damaged is not None)
        if self.damaged is not None and found is not None:
            self._restore(found)
            self.damaged["seq_from"] = str(self._seq["telemetry"] + 1)
            data: dict[str, object] = dict(self.damaged)
            data.update(salvaged=len(found.rows), lost=found.lost)
            log.error(
                "outbox_salvaged", path=str(self.path), salvaged=len(found.rows), lost=found.lost
            )
            self.append_event("storage", "outbox_damaged", data)
        if power_cut:
            # What the cut took (the WAL's unsynced tail) is gone with it: not even its
            # count can be read, so the back end is told that records may be lost, and
            # where the streams continue.
            self.append_event(
                "storage",
                "outbox_power_cut",
                {"seq_from": self._seq["telemetry"] + 1, "lost": None},
            )
        self._mark_open()
        self._spare()

    def _power_was_cut(self) -> bool:
        """The file was left open by a run in an earlier boot: the machine lost power (or
        crashed) with the daemon running. With `sync: normal` the last transactions may be
        gone while their records were already published, so the streams continue from the
        clock: a seq must never be handed out twice."""
        mark = self._scalar("PRAGMA user_version")
        if not mark or not self._boot_id or mark == self._boot_mark() or self._sync == "full":
            return False
        log.warning(
            "outbox_power_cut",
            path=str(self.path),
            action="the file was not closed before a reboot; seq continues from the clock",
        )
        return True

    def _boot_mark(self) -> int:
        """The boot id as a non-zero 31-bit number, kept in the file header's user_version
        while the file is open (0 after a clean close): no page of the cap is spent on it."""
        return int(hashlib.sha256(self._boot_id.encode()).hexdigest()[:8], 16) % (2**31 - 1) + 1

    def _mark_open(self) -> None:
        with contextlib.suppress(sqlite3.Error, OutboxError):
            self.db.execute(f"PRAGMA user_version={self._boot_mark() if self._boot_id else 0}")

    def _restore(self, found: Salvage) -> None:
        """Put what could be read from the damaged file into the new one, with its ids (the
        publication order); `lost_records` counts what could not be read."""
        with self._tx() as db:
            db.executemany(
                "INSERT OR REPLACE INTO outbox(id, kind, topic, payload, created, items, "
                "correlation, priority) VALUES(?, ?, ?, ?, ?, ?, ?, ?)",
                found.rows,
            )
            counts = dict(found.counters)
            if found.lost:
                counts["lost_records"] = counts.get("lost_records", 0) + found.lost
            self._count(counts, db)
        if found.rows:
            self._last_id = max(self._last_id, max(r[0] for r in found.rows))

    def _loaded(self, fresh: bool) -> None:
        """Read the ids and seqs of a just opened file. A new file's streams start from the
        clock in milliseconds: a vehicle whose file was deleted or replaced must not repeat
        numbers it published before."""
        db = self.db
        self._file = _file_id(self.path)
        if fresh:
            seed = max(int(self._clock() * 1000), *self._seq.values(), 0)
            with self._tx() as tx:
                for stream in _STREAMS:
                    tx.execute(
                        "INSERT INTO seq(stream, last) VALUES(?, ?) ON CONFLICT(stream) "
                        "DO UPDATE SET last = max(last, excluded.last)",
                        (stream, seed),
                    )
            log.info("outbox_created", path=str(self.path), seq_from=seed + 1)
        for stream, last in db.execute("SELECT stream, last FROM seq"):
            self._seq[str(stream)] = max(int(last), self._seq.get(str(stream), 0))
        row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
        self._last_id = max(self._last_id, int(row[0]) if row else 0)

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
            self.room.configure(db)
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
            action="started a fresh outbox with what can still be read from the damaged one",
        )
        self.damaged = {"moved_to": str(target), "error": error}

    def close(self) -> None:
        if not self.on_disk:
            self._back_to_disk()  # one last try: what waits in memory dies with the process
        if self.spill:
            log.error("outbox_memory_records_lost", path=str(self.path), records=len(self.spill))
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("PRAGMA user_version=0")  # a clean close
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
        raises OutboxFull if the record cannot fit at all (it is counted as dropped). A disk
        that refuses writes (read-only, gone, full with nothing to drop) does not fail the
        append: the record waits in the bounded in-memory buffer."""
        if not self.on_disk and self._clock() >= self._retry_at:
            self._back_to_disk()
        if not self.on_disk:
            return self._hold(kind, topic, payload, stream, items, correlation, priority)
        dropped_any = False
        for _ in range(64):
            try:
                seq = self._spared(
                    lambda: self._insert(
                        kind, topic, payload, stream, items, correlation, priority
                    ),
                    grows=True,
                )
                break
            except sqlite3.Error as exc:
                if not _is_full(exc):
                    if _is_unwritable(exc):
                        self._to_memory(str(exc))
                        return self._hold(
                            kind, topic, payload, stream, items, correlation, priority
                        )
                    raise OutboxError(f"cannot write to the outbox at {self.path}: {exc}") from exc
                try:
                    room = self._make_room()
                except OutboxError as full:  # even a DELETE does not fit: the disk is full
                    self._to_memory(str(full))
                    return self._hold(kind, topic, payload, stream, items, correlation, priority)
                if not room:
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

    def _next_seq(self, stream: str | None) -> int:
        if stream is None:
            return 0
        return self._seq.get(stream, self._seq.get("*", 0)) + 1

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
        seq = self._next_seq(stream)
        with self._tx() as db:
            if stream is not None:
                db.execute(
                    "INSERT INTO seq(stream, last) VALUES(?, ?) "
                    "ON CONFLICT(stream) DO UPDATE SET last = excluded.last",
                    (stream, seq),
                )
            cursor = db.execute(
                "INSERT INTO outbox(id, kind, topic, payload, created, items, correlation, "
                "priority) VALUES(?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    self._last_id + 1,
                    kind,
                    topic,
                    payload(seq),
                    self._clock(),
                    items,
                    correlation,
                    priority,
                ),
            )
        self._last_id = int(cursor.lastrowid or self._last_id + 1)
        if stream is not None:
            self._seq[stream] = seq
        return seq

    def _hold(
        self,
        kind: Kind,
        topic: str,
        payload: Callable[[int], bytes],
        stream: str | None,
        items: int,
        correlation: bytes | None,
        priority: int,
    ) -> int:
        """Keep a record in memory; its seq continues the stream."""
        seq = self._next_seq(stream)
        if stream is not None:
            self._seq[stream] = seq
        self._last_id += 1
        self.spill.add(
            Held(
                self._last_id,
                kind,
                topic,
                payload(seq),
                correlation,
                items,
                self._clock(),
                priority,
            ),
            self.in_flight,
        )
        self.appended += 1
        return seq

    def _to_memory(self, error: str) -> None:
        self._retry_at = self._clock() + RETRY_S
        if not self.on_disk:
            return
        self.on_disk = False
        # The disk cannot record the seqs handed out from memory: if the process died before
        # the disk returns, the next start would hand them out again. From the clock they are
        # above what the disk will say (a stream never outruns the clock in milliseconds).
        seed = int(self._clock() * 1000)
        for stream in _STREAMS:
            self._seq[stream] = max(self._seq.get(stream, 0), seed)
        self._refused.failed(
            path=str(self.path),
            error=error,
            seq_from=self._seq["telemetry"] + 1,
            action="records wait in memory (bounded) until the disk takes writes again",
        )
        self.append_event(
            "storage", "on_memory", {"error": error, "seq_from": self._seq["telemetry"] + 1}
        )

    def _back_to_disk(self) -> None:
        """Try the disk again: (re)open it and write what waited in memory."""
        self._retry_at = self._clock() + RETRY_S
        try:
            if self._db is None:
                fresh = not self.path.exists()
                self._db = self._connect()
                self._loaded(fresh)
                self._mark_open()
            held = self.spill.take()
            with self._tx() as db:
                for stream, last in self._seq.items():
                    db.execute(
                        "INSERT INTO seq(stream, last) VALUES(?, ?) ON CONFLICT(stream) "
                        "DO UPDATE SET last = max(last, excluded.last)",
                        (stream, last),
                    )
                db.executemany(
                    "INSERT OR REPLACE INTO outbox(id, kind, topic, payload, created, items, "
                    "correlation, priority) VALUES(?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        (
                            h.id,
                            h.kind,
                            h.topic,
                            h.payload,
                            h.created,
                            h.items,
                            h.correlation,
                            h.priority,
                        )
                        for h in held
                    ],
                )
            self._count(self.spill.dropped)
        except (sqlite3.Error, OSError):
            return
        self.spill.dropped = {}
        self.spill.clear({h.id for h in held})
        self.on_disk = True
        self._refused.cleared(path=str(self.path), moved_to_disk=len(held))
        self.room.full.cleared(path=str(self.path))

    def _spared(self, op: Callable[[], int], *, grows: bool = False) -> int:
        return self.room.spared(self.db, op, grows=grows)

    def _spare(self) -> None:
        if self._db is not None and self.on_disk:
            self.room.spare(self._db)

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
                self._spared(functools.partial(self._delete, victims, counts))
            except sqlite3.Error as exc:
                raise OutboxError(f"cannot make room in the outbox: {exc}") from exc
            for key, value in counts.items():
                self._episode[key] = self._episode.get(key, 0) + value
            return True
        return False

    def _delete(self, victims: list[tuple[int, str, int]], counts: dict[str, int]) -> int:
        with self._tx() as db:
            db.executemany("DELETE FROM outbox WHERE id = ?", [(r[0],) for r in victims])
            self._count(counts, db)
        return 0

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
        except (sqlite3.Error, OutboxError):
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
        if self._max_age_s is None or self._db is None or not self.on_disk:
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
        """The oldest records not yet acknowledged, in publication order (the disk's, then
        those waiting in memory, whose ids are all higher)."""
        out: list[Record] = []
        if self._db is not None:
            try:
                rows = self._db.execute(
                    "SELECT id, kind, topic, payload, correlation FROM outbox WHERE id > ? "
                    "ORDER BY id LIMIT ?",
                    (after, limit + len(self._unacked)),
                ).fetchall()
            except sqlite3.Error as exc:
                self._refused.failed(path=str(self.path), error=str(exc))
                rows = []
            out = [
                Record(
                    int(r[0]),
                    str(r[1]),
                    str(r[2]),
                    bytes(r[3]),
                    bytes(r[4]) if r[4] is not None else None,
                )
                for r in rows
                if int(r[0]) not in self._unacked
            ][:limit]
        if len(out) < limit and self.spill:
            out += [
                Record(h.id, h.kind, h.topic, h.payload, h.correlation)
                for h in self.spill.pending(limit - len(out), after)
            ]
        return out

    def ack(self, ids: Iterable[int]) -> None:
        """Forget records the broker acknowledged. A DELETE the disk refuses is kept in
        memory and tried again (the record is not published again meanwhile); at worst, after
        a restart, it is published once more: at least once, never lost."""
        done = set(ids)
        if not done:
            return
        self.acked += len(done)
        batch = self.spill.ack(done) | self._unacked
        if not batch or self._db is None:
            self._unacked = batch
            return

        def delete() -> int:
            with self._tx() as db:
                db.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in batch])
            return 0

        try:
            self._spared(delete)
        except (sqlite3.Error, OutboxError) as exc:
            self._unacked = batch
            self._ack_failed.failed(path=str(self.path), error=str(exc), waiting=len(batch))
            return
        self._unacked = set()
        self._ack_failed.cleared(path=str(self.path))
        if self.dropping and self.used_share() < STOP_BELOW:
            self._stop_dropping()

    def maintain(self) -> None:
        """Every few seconds: retry what the disk refused, notice a vanished file, keep the
        reserve, expire old telemetry."""
        if self._unacked:
            self._retry_acks()
        self._check_file()
        if not self.on_disk:
            if self._clock() >= self._retry_at:
                self._back_to_disk()
            return
        self._spare()

    def _retry_acks(self) -> None:
        batch, self._unacked = self._unacked, set()
        self.acked -= len(batch)
        self.ack(batch)

    def _check_file(self) -> None:
        """A file deleted or replaced under the running daemon (also a repaired filesystem
        mounted at the path after the disk went read-only): continue in a file at the path,
        with exactly the records the old one still holds (readable even when it no longer
        takes writes), its counters, and the streams where they are: the running daemon
        knows every seq it handed out, so nothing jumps. Records a replacing file brings
        that the old one no longer holds were acknowledged (or never ours): removed, not
        sent again."""
        if self._db is None or self._file is None:
            return
        try:
            same = _file_id(self.path) == self._file
        except OSError:
            same = False
        if same:
            self._vanished.cleared(path=str(self.path))
            return
        self._vanished.failed(
            path=str(self.path),
            action="starting a new file at the path; records still in memory are kept",
        )
        old = self._db
        try:
            rows = old.execute(
                "SELECT id, kind, topic, payload, created, items, correlation, priority FROM outbox"
            ).fetchall()
            counters = old.execute("SELECT name, value FROM counters").fetchall()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = self._connect()
            with self._tx() as db:
                stale = db.execute("DELETE FROM outbox").rowcount
                db.executemany(
                    "INSERT OR REPLACE INTO outbox(id, kind, topic, payload, created, items, "
                    "correlation, priority) VALUES(?, ?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
                db.executemany(
                    "INSERT INTO counters(name, value) VALUES(?, ?) ON CONFLICT(name) "
                    "DO UPDATE SET value = max(value, excluded.value)",
                    counters,
                )
                db.executemany(
                    "INSERT INTO seq(stream, last) VALUES(?, ?) ON CONFLICT(stream) "
                    "DO UPDATE SET last = max(last, excluded.last)",
                    list(self._seq.items()),
                )
            self._loaded(False)
            self._mark_open()
        except (sqlite3.Error, OSError) as exc:
            if self._db is not old:
                with contextlib.suppress(sqlite3.Error):
                    self.db.close()
                self._db = old  # the old inode still works until the disk takes a new file
            log.debug("outbox_recreate_failed", error=str(exc))
            return
        with contextlib.suppress(sqlite3.Error):
            old.close()
        seq_from = self._seq.get("telemetry", self._seq.get("*", 0)) + 1
        self._vanished.cleared(
            path=str(self.path), carried_over=len(rows), stale=stale, seq_from=seq_from
        )
        self.append_event(
            "storage", "outbox_recreated", {"carried_over": len(rows), "seq_from": seq_from}
        )

    # --- figures -------------------------------------------------------------------------
    def _scalar(self, sql: str) -> int:
        if self._db is None:
            return 0
        try:
            return int(self._db.execute(sql).fetchone()[0])
        except sqlite3.Error:
            return 0

    def depth(self) -> int:
        return max(0, self._scalar("SELECT count(*) FROM outbox") - len(self._unacked)) + len(
            self.spill
        )

    def payload_bytes(self) -> int:
        on_disk = self._scalar("SELECT coalesce(sum(length(payload)), 0) FROM outbox")
        return on_disk + self.spill.bytes

    def file_bytes(self) -> int:
        """The database and its WAL on disk."""
        total = 0
        for suffix in ("", "-wal"):
            path = Path(f"{self.path}{suffix}")
            with contextlib.suppress(OSError):
                total += path.stat().st_size
        return total

    def used_share(self) -> float:
        """Pages in use over the cap's pages (0 when there is no cap)."""
        return self.room.used_share(self._db) if self._db is not None else 0.0

    def counters(self) -> dict[str, int]:
        out: dict[str, int] = {}
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                out = {
                    str(n): int(v) for n, v in self._db.execute("SELECT name, value FROM counters")
                }
        for key, value in self.spill.dropped.items():
            out[key] = out.get(key, 0) + value
        return out

    def storage(self) -> dict[str, object]:
        """For P/health: where records go now and what waits in memory."""
        return {
            "on_disk": self.on_disk,
            "memory_records": len(self.spill),
            # since start, by kind: e.g. command responses the disk would not store and that
            # were published from memory
            "held_in_memory": dict(self.spill.held),
            "acks_waiting": len(self._unacked),
            "reserve": self.room.reserve.exists(),
            "disk_full": self.room.lowered,
        }

    def last_seq(self, stream: str) -> int:
        return self._seq.get(stream, 0)


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
