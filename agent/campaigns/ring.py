"""Bounded sample stores for campaigns: a ring of the last N samples of one signal, and a
time window for a condition's `avg`/`min`/`max`. Pure data structures, no I/O.

A ring preallocates two arrays of doubles (timestamp, value): 16 bytes a sample, whatever the
traffic, so a campaign's memory is known when it is applied. Booleans and integers are kept
as doubles and given back as what they were; a string signal keeps its values in a list of
the same length instead (the strings themselves are shared with the decoder's choice names).
"""

from __future__ import annotations

from array import array
from collections import deque
from collections.abc import Iterator

from agent.vehicle.model import Value

MAX_WINDOW_SAMPLES = 2_000  # per condition window: 20 s of a 100 Hz signal


class Ring:
    __slots__ = (
        "_kind",
        "_min_gap",
        "_n",
        "_next",
        "_size",
        "_strings",
        "_ts",
        "_values",
        "last_ts",
    )

    def __init__(self, capacity: int, min_interval_ms: int = 0) -> None:
        self._n = capacity
        self._ts = array("d", bytes(8 * capacity))
        self._values = array("d", bytes(8 * capacity))
        self._strings: list[str] | None = None
        self._kind: type | None = None  # bool, int, float or str: set by the first value
        self._next = 0
        self._size = 0
        self._min_gap = min_interval_ms / 1000.0
        self.last_ts = float("-inf")

    def __len__(self) -> int:
        return self._size

    def add(self, ts: float, value: Value) -> None:
        # Float noise must not drop a frame; a clock stepped back (or a log played again)
        # starts the interval afresh rather than refusing every sample until it catches up.
        if 0.0 <= ts - self.last_ts < self._min_gap - 1e-6:
            return
        kind = type(value)
        if kind is not self._kind:
            if self._kind is None:
                self._kind = kind
                if kind is str:
                    self._strings = [""] * self._n
            elif self._kind is int and kind is float:
                self._kind = float  # a computed path may give both: numbers are doubles here
            elif not (self._kind is float and kind is int):
                return  # one type per path (the decoder types them); nothing else is kept
        i = self._next
        self._ts[i] = ts
        if self._strings is None:
            self._values[i] = value  # type: ignore[assignment]  # bool/int/float: a double
        else:
            self._strings[i] = value  # type: ignore[assignment]
        i += 1
        self._next = 0 if i == self._n else i
        if self._size < self._n:
            self._size += 1
        self.last_ts = ts

    def between(self, start: float, end: float) -> Iterator[tuple[float, Value]]:
        """The samples with start <= ts <= end, oldest first."""
        first = (self._next - self._size) % self._n
        kind = self._kind
        for k in range(self._size):
            i = (first + k) % self._n
            ts = self._ts[i]
            if start <= ts <= end:
                if self._strings is not None:
                    yield ts, self._strings[i]
                elif kind is bool:
                    yield ts, self._values[i] != 0.0
                elif kind is int:
                    yield ts, int(self._values[i])
                else:
                    yield ts, self._values[i]


class Window:
    """The numbers of one path over the last `seconds`, for avg/min/max. Adding is an
    append (it runs for every frame); the work is done when the condition is evaluated, a few
    times a second, over at most MAX_WINDOW_SAMPLES values. A timestamp older than the newest
    (a log played again from its start) starts the window afresh."""

    __slots__ = ("_items", "_seconds", "newest")

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._items: deque[tuple[float, Value]] = deque(maxlen=MAX_WINDOW_SAMPLES)
        self.newest = float("-inf")  # the newest sample's time

    def add(self, ts: float, value: Value) -> None:
        if ts < self.newest:
            self._items.clear()
        self.newest = ts
        self._items.append((ts, value))

    def value(self, function: str, now: float) -> float | None:
        """avg, min or max over (now - seconds, now]; None while it holds no number."""
        items = self._items
        cutoff = now - self._seconds
        while items and items[0][0] <= cutoff:
            items.popleft()
        numbers = [float(v) for t, v in items if t <= now and not isinstance(v, bool | str)]
        if not numbers:
            return None
        if function == "avg":
            return sum(numbers) / len(numbers)
        return min(numbers) if function == "min" else max(numbers)
