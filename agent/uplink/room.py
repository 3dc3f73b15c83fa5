"""The outbox file's room on its filesystem: the cap in pages (`max_page_count`), a WAL kept
small, and a reserve file given back when the disk is full.

Measured on a 400 kB tmpfs: a WAL that grew to 370 kB could never be checkpointed again (the
checkpoint needs room in the main file) and the first acknowledgement's DELETE failed with
"database or disk is full". So the WAL is checkpointed every few frames (a small share of a
small filesystem), and a reserve file of our own (128 KiB, at most an eighth of the
filesystem) is unlinked on SQLITE_FULL so that the DELETE fits. From then on the cap is
lowered to the file's size, so appends make room by the outbox's own priorities instead of
failing; once the filesystem has room again the reserve is taken back and the file may grow
into what is free beyond the reserve and the WAL.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

import structlog

from agent.logs import Repeating

log = structlog.get_logger("agent.uplink.outbox")

WAL_SHARE = 0.1  # of the cap, kept for the write-ahead log; the main file gets the rest
WAL_MIN_FRAMES = 16
WAL_MAX_FRAMES = 64  # checkpoint at least this often: a big WAL cannot be checkpointed when full
RESERVE_BYTES = 128 * 1024
UNLIMITED_PAGES = 4294967294


def is_full(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code == sqlite3.SQLITE_FULL or "full" in str(exc).lower()


def _statvfs(folder: Path) -> os.statvfs_result | None:
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return os.statvfs(folder)
    except OSError:
        return None


def _free_bytes(folder: Path) -> int:
    stat = _statvfs(folder)
    return stat.f_bavail * stat.f_frsize if stat else 0


def _scalar(db: sqlite3.Connection, sql: str) -> int:
    try:
        return int(db.execute(sql).fetchone()[0])
    except sqlite3.Error:
        return 0


class Room:
    def __init__(self, path: Path, max_bytes: int | None) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.reserve = Path(f"{path}.reserve")
        self.max_pages = 0  # the cap in force (lowered to the file's size on a full disk)
        self.cap_pages = 0  # the configured cap
        self.lowered = False
        self.reserve_bytes = RESERVE_BYTES
        self.wal_bytes = 0
        self.full = Repeating(log, "outbox_disk_full")

    def configure(self, db: sqlite3.Connection) -> None:
        """The cap and the WAL's size, on a just opened connection."""
        page, wal_frames = 4096, WAL_MAX_FRAMES * 3
        if self.max_bytes is not None:
            # The WAL gets WAL_SHARE of the cap (at least WAL_MIN_FRAMES frames) and is
            # checkpointed at a third of that, so the transaction that crosses the mark
            # still fits; the main file gets the rest, enforced by max_page_count.
            page = int(db.execute("PRAGMA page_size").fetchone()[0])
            frame = page + 24
            wal_frames = max(WAL_MIN_FRAMES, int(self.max_bytes * WAL_SHARE) // frame)
            self.max_pages = max(8, (self.max_bytes - wal_frames * frame - 32) // page)
            db.execute(f"PRAGMA max_page_count={self.max_pages}")
        self.cap_pages = self.max_pages
        # On a small filesystem both the WAL and the reserve are a small share of it.
        stat = _statvfs(self.path.parent)
        total = stat.f_blocks * stat.f_frsize if stat else 1 << 40
        self.reserve_bytes = max(16 * 1024, min(RESERVE_BYTES, total // 8))
        frames = max(4, min(wal_frames // 3, WAL_MAX_FRAMES, total // 16 // (page + 24)))
        self.wal_bytes = frames * (page + 24)
        db.execute(f"PRAGMA wal_autocheckpoint={frames}")
        db.execute(f"PRAGMA journal_size_limit={self.wal_bytes}")

    def refuses(self) -> bool:
        """The filesystem under the path is read-only or full (not: a bad path)."""
        stat = _statvfs(self.path.parent)
        return stat is None or bool(stat.f_flag & os.ST_RDONLY) or stat.f_bavail == 0

    def spared(self, db: sqlite3.Connection, op: Callable[[], int], *, grows: bool) -> int:
        """Run a write; on a full disk give the reserve back to the filesystem, lower the cap
        to the file's size and try once more."""
        try:
            return op()
        except sqlite3.Error as exc:
            if not is_full(exc) or (grows and self.at_cap(db)):
                raise  # an insert beyond the cap: the caller makes room
            self.full.failed(
                path=str(self.path),
                error=str(exc),
                action="gave the reserve back; the file may not grow: oldest telemetry is "
                "dropped to make room",
            )
            pages = _scalar(db, "PRAGMA page_count")
            if pages:
                self.max_pages, self.lowered = pages, True
                with contextlib.suppress(sqlite3.Error):
                    db.execute(f"PRAGMA max_page_count={pages}")
            if not self._release_reserve():
                raise
            return op()

    def at_cap(self, db: sqlite3.Connection) -> bool:
        """SQLITE_FULL from our own cap (max_page_count), not from the filesystem."""
        return bool(self.max_pages) and _scalar(db, "PRAGMA page_count") >= self.max_pages

    def used_share(self, db: sqlite3.Connection) -> float:
        """Pages in use over the cap's pages (0 when there is no cap)."""
        if not self.max_pages:
            return 0.0
        pages = _scalar(db, "PRAGMA page_count")
        free = _scalar(db, "PRAGMA freelist_count")
        return (pages - free) / self.max_pages

    def _release_reserve(self) -> bool:
        try:
            self.reserve.unlink()
        except OSError:
            return False
        log.debug("outbox_reserve_released", path=str(self.reserve), bytes=self.reserve_bytes)
        return True

    def spare(self, db: sqlite3.Connection) -> None:
        """Take the reserve (back) when there is room; then let a lowered cap grow into what
        is free beyond the reserve and the WAL, never into the last of it (so the cap, not the
        disk, says when to drop)."""
        try:
            if not self.reserve.exists():
                if self.lowered:  # the WAL's disk space back first (it is small)
                    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                if _free_bytes(self.reserve.parent) < 2 * self.reserve_bytes:
                    return
                with open(self.reserve, "wb") as f:
                    os.posix_fallocate(f.fileno(), 0, self.reserve_bytes)
            if self.lowered:
                self._raise_cap(db)
            if not self.lowered:
                self.full.cleared(path=str(self.path))
        except (OSError, sqlite3.Error):
            with contextlib.suppress(OSError):
                if self.reserve.stat().st_size < self.reserve_bytes:
                    self.reserve.unlink()

    def _raise_cap(self, db: sqlite3.Connection) -> None:
        page = _scalar(db, "PRAGMA page_size") or 4096
        # Room for the WAL twice over: a transaction can take it past its checkpoint mark.
        spare = _free_bytes(self.path.parent) - self.reserve_bytes - 2 * self.wal_bytes
        pages = spare // page
        if pages < 4:
            return
        target = self.max_pages + pages
        if self.cap_pages and target >= self.cap_pages:
            target, self.lowered = self.cap_pages, False
        self.max_pages = target
        db.execute(f"PRAGMA max_page_count={target or UNLIMITED_PAGES}")
