"""One daemon per storage path: an exclusive lock (flock) on a file beside the outbox, holding
the owner's pid, so that a second instance fails at once with a line that names the first."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from types import TracebackType
from typing import Self

from agent.errors import AgentError


class StorageLocked(AgentError):
    """Another process holds the storage path."""


class StorageLock:
    def __init__(self, outbox: Path) -> None:
        self.path = Path(f"{outbox}.lock")
        self._fd: int | None = None

    def __enter__(self) -> Self:
        with contextlib.suppress(OSError):
            self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = self._open()
        if fd is None:
            return self  # nowhere to lock (a read-only disk without the file): run unguarded
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StorageLocked(
                f"another vehicle-agent (pid {holder}) is running on {self.path.parent}: "
                f"one daemon per storage.path"
            ) from None
        with contextlib.suppress(OSError):  # the pid is a courtesy: not on a read-only disk
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def check(self) -> None:
        """The lock file deleted under us (with the storage directory) or replaced (another
        filesystem mounted at the path): take a new one, or a second daemon could start on
        the path."""
        if self._fd is None:
            return
        try:
            now, held = os.stat(self.path), os.fstat(self._fd)
            if (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino):
                return
        except OSError:
            pass
        old, self._fd = self._fd, None
        try:
            self.__enter__()
        except StorageLocked:
            self._fd = old  # someone else took the path meanwhile: nothing better to do
            return
        os.close(old)

    def _open(self) -> int | None:
        for flags in (os.O_RDWR | os.O_CREAT, os.O_RDONLY):
            with contextlib.suppress(OSError):
                return os.open(self.path, flags | os.O_CLOEXEC, 0o644)
        with contextlib.suppress(OSError):
            return os.open(self.path.parent, os.O_RDONLY | os.O_CLOEXEC)
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._fd is not None:
            os.close(self._fd)  # the lock goes with the descriptor
            self._fd = None
