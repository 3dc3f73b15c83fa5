"""What must survive a restart about commands: every accepted `jti` with its result (replay
protection), and pending timers (a climate session's automatic stop).

SQLite next to the outbox (`commands.db`). A `jti` is committed here before its command acts,
and kept until its token's expiry plus the clock skew (after that the token is refused as
expired anyway).
"""

from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import structlog

from agent.errors import StoreError

log = structlog.get_logger("agent.commands.store")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS seen (
    jti TEXT PRIMARY KEY,
    command TEXT NOT NULL,
    keep_until REAL NOT NULL,
    status TEXT NOT NULL,
    reason TEXT,
    detail TEXT
);
CREATE TABLE IF NOT EXISTS schedule (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS grid (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS campaigns (
    id TEXT PRIMARY KEY,
    body TEXT NOT NULL,
    last_trigger REAL
);
CREATE TABLE IF NOT EXISTS timers (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    due REAL NOT NULL,
    command TEXT NOT NULL,
    origin TEXT NOT NULL,
    params TEXT NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class Seen:
    jti: str
    command: str
    status: str
    reason: str | None
    detail: str | None


@dataclass(frozen=True, slots=True)
class Timer:
    id: int
    due: float
    command: str
    origin: str
    params: dict[str, Any]


def _refusing(folder: Path) -> bool:
    """The filesystem at (or above) `folder` is read-only or full."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        stat = os.statvfs(folder)
    except OSError:
        return False
    return bool(stat.f_flag & os.ST_RDONLY) or stat.f_bavail == 0


class CommandStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None

    def __enter__(self) -> Self:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            # Always FULL, whatever storage.sync says: a spent jti lost in a power cut could
            # be replayed and act twice. Commands are rare, so the fsync costs nothing.
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            if not _refusing(self.path.parent):
                raise StoreError(f"cannot open the command store at {self.path}: {exc}") from exc
            db = self._in_memory(str(exc))
        self._db = db
        return self

    def _in_memory(self, error: str) -> sqlite3.Connection:
        """The disk refuses writes (read-only, full): keep the store in memory for this run,
        starting from what the file holds, so spent jtis stay spent."""
        db = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        if self.path.exists():
            try:
                src = sqlite3.connect(f"file:{self.path}?mode=ro&immutable=1", uri=True)
                try:
                    src.backup(db)
                finally:
                    src.close()
            except sqlite3.Error:
                pass  # unreadable too: start empty (tokens still expire)
        db.executescript(_SCHEMA)
        log.error(
            "command_store_on_memory",
            path=str(self.path),
            error=error,
            action="commands are recorded in memory until the next start",
        )
        return db

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _run(self, sql: str, args: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        if self._db is None:
            raise StoreError("command store is not open")
        try:
            return self._db.execute(sql, args)
        except sqlite3.Error as exc:
            raise StoreError(f"command store at {self.path}: {exc}") from exc

    def seen(self, jti: str) -> Seen | None:
        row = self._run(
            "SELECT jti, command, status, reason, detail FROM seen WHERE jti = ?", (jti,)
        ).fetchone()
        return Seen(*row) if row else None

    def claim(
        self,
        jti: str,
        command: str,
        keep_until: float,
        status: str,
        reason: str | None = None,
        detail: str | None = None,
    ) -> bool:
        """Record a jti; False if it was already there (a replay). Committed on return."""
        cursor = self._run(
            "INSERT OR IGNORE INTO seen(jti, command, keep_until, status, reason, detail) "
            "VALUES(?, ?, ?, ?, ?, ?)",
            (jti, command, keep_until, status, reason, detail),
        )
        return cursor.rowcount == 1

    def finish(self, jti: str, status: str, reason: str | None, detail: str | None) -> None:
        self._run(
            "UPDATE seen SET status = ?, reason = ?, detail = ? WHERE jti = ?",
            (status, reason, detail, jti),
        )

    def prune(self, now: float) -> int:
        """Forget jtis whose tokens have expired (they are refused as EXPIRED anyway)."""
        return self._run("DELETE FROM seen WHERE keep_until < ?", (now,)).rowcount

    def add_timer(self, due: float, command: str, origin: str, params: dict[str, Any]) -> None:
        self._run(
            "INSERT INTO timers(due, command, origin, params) VALUES(?, ?, ?, ?)",
            (due, command, origin, json.dumps(params)),
        )

    def timers(self) -> list[Timer]:
        rows = self._run(
            "SELECT id, due, command, origin, params FROM timers ORDER BY due"
        ).fetchall()
        return [Timer(r[0], r[1], r[2], r[3], json.loads(r[4])) for r in rows]

    def drop_timer(self, timer_id: int) -> None:
        self._run("DELETE FROM timers WHERE id = ?", (timer_id,))

    def drop_timers_of(self, command: str) -> None:
        self._run("DELETE FROM timers WHERE command = ?", (command,))

    def save_schedule(self, body: str | None) -> None:
        """The charging schedule being run (one at a time), or None when there is none."""
        if body is None:
            self._run("DELETE FROM schedule")
        else:
            self._run("INSERT OR REPLACE INTO schedule(id, body) VALUES(1, ?)", (body,))

    def load_schedule(self) -> str | None:
        row = self._run("SELECT body FROM schedule WHERE id = 1").fetchone()
        return str(row[0]) if row else None

    def save_grid(self, body: str | None) -> None:
        """The latest grid signal (tariff, limits, valid until), or None after grid.clear."""
        if body is None:
            self._run("DELETE FROM grid")
        else:
            self._run("INSERT OR REPLACE INTO grid(id, body) VALUES(1, ?)", (body,))

    def load_grid(self) -> str | None:
        row = self._run("SELECT body FROM grid WHERE id = 1").fetchone()
        return str(row[0]) if row else None

    def save_campaign(self, campaign_id: str, body: str | None) -> None:
        """A campaign as applied (its latest version), or None once it is removed."""
        if body is None:
            self._run("DELETE FROM campaigns WHERE id = ?", (campaign_id,))
        else:
            self._run(
                "INSERT OR REPLACE INTO campaigns(id, body) VALUES(?, ?)", (campaign_id, body)
            )

    def note_trigger(self, campaign_id: str, ts: float) -> None:
        """A campaign's last trigger, so that min_interval_s holds across restarts."""
        self._run("UPDATE campaigns SET last_trigger = ? WHERE id = ?", (ts, campaign_id))

    def load_campaigns(self) -> list[tuple[str, float | None]]:
        rows = self._run("SELECT body, last_trigger FROM campaigns ORDER BY id").fetchall()
        return [(str(r[0]), None if r[1] is None else float(r[1])) for r in rows]
