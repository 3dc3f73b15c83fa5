"""Logging, done once per process: structlog renders JSON lines for journald (console on a
tty), the standard library's records (asyncio, python-can, paho, aiomqtt) go through the same
renderer, and `Repeating` keeps a failure that repeats to a few lines."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

import structlog

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

EVERY_S = 60.0  # a repeating failure logs at most one line per this many seconds


def configure(level: str = "info", fmt: str | None = None, stream: TextIO | None = None) -> None:
    """`fmt` None picks console rendering on a terminal and JSON otherwise."""
    out = stream if stream is not None else sys.stdout
    if fmt is None:
        fmt = "console" if out.isatty() else "json"
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer(colors=out.isatty())
        if fmt == "console"
        else structlog.processors.JSONRenderer()
    )
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    # The standard library's records (asyncio's "Exception in callback", python-can's
    # "Could not access SocketCAN device", paho's) become the same JSON lines, with the
    # logger's name, instead of plain text in the middle of the log.
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    handler.addFilter(_RepeatFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_agent", False):
            root.removeHandler(old)
    handler._agent = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(max(_LEVELS[level], logging.WARNING))  # libraries' chatter stays out


class _RepeatFilter(logging.Filter):
    """Libraries log a failure per attempt (python-can per reopen, asyncio per callback):
    the same message from the same logger passes once a minute, with the count since."""

    def __init__(self, every_s: float = EVERY_S) -> None:
        super().__init__()
        self._every_s = every_s
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg))
        now = time.monotonic()
        last = self._seen.get(key)
        if last is not None and now - last[0] < self._every_s:
            self._seen[key] = (last[0], last[1] + 1)
            return False
        if last is not None and last[1]:
            record.msg = f"{record.msg} (and {last[1]} more like it in {now - last[0]:.0f} s)"
        if len(self._seen) > 1000:  # messages with variable text: keep the table small
            self._seen.clear()
        self._seen[key] = (now, 0)
        return True


class Repeating:
    """The log discipline of one failure that can repeat (a full disk, a lost broker, a bus
    that is down): the first occurrence is logged, then at most one line per `every_s` with
    the count since the last line, then one `<event>_cleared` line when it stops."""

    def __init__(
        self,
        logger: Any,
        event: str,
        *,
        level: str = "error",
        every_s: float = EVERY_S,
        clear_event: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = logger
        self.event = event
        self._clear_event = clear_event or f"{event}_cleared"
        self._level = level
        self._every_s = every_s
        self._clock = clock
        self.active = False
        self.count = 0  # occurrences in this episode
        self._unlogged = 0
        self._since = 0.0
        self._last_line = 0.0

    def failed(self, **fields: Any) -> bool:
        """One occurrence; True if it was logged."""
        now = self._clock()
        self.count += 1
        if not self.active:
            self.active, self._since, self._last_line, self._unlogged = True, now, now, 0
            getattr(self._log, self._level)(self.event, **fields)
            return True
        self._unlogged += 1
        if now - self._last_line < self._every_s:
            return False
        getattr(self._log, self._level)(
            self.event, repeated=self._unlogged, for_s=round(now - self._since, 1), **fields
        )
        self._last_line, self._unlogged = now, 0
        return True

    def cleared(self, **fields: Any) -> bool:
        """The failure stopped; True if a line was logged (only after a failure)."""
        if not self.active:
            return False
        now = self._clock()
        self._log.info(
            self._clear_event,
            failures=self.count,
            repeated=self._unlogged,  # since the last line
            for_s=round(now - self._since, 1),
            **fields,
        )
        self.active, self.count, self._unlogged = False, 0, 0
        return True
