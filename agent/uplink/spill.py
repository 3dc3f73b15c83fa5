"""The outbox's bounded in-memory buffer, used while the disk refuses writes (read-only,
vanished, full with nothing left to drop): records wait here in publication order, the
oldest telemetry is dropped first when the buffer is full (counted), and they are written to
the disk as soon as it takes writes again."""

from __future__ import annotations

from dataclasses import dataclass

MAX_RECORDS = 2000
MAX_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Held:
    id: int
    kind: str
    topic: str
    payload: bytes
    correlation: bytes | None
    items: int
    created: float
    priority: int = 5  # kept for the disk: a campaign's capture keeps its place in the drop order


class Spill:
    def __init__(self, max_records: int = MAX_RECORDS, max_bytes: int = MAX_BYTES) -> None:
        self._max_records = max_records
        self._max_bytes = max_bytes
        self.records: dict[int, Held] = {}  # insertion order is id order
        self.bytes = 0
        self.dropped: dict[str, int] = {}
        self.held: dict[str, int] = {}  # records of each kind that ever waited here

    def __len__(self) -> int:
        return len(self.records)

    def add(self, record: Held, in_flight: set[int]) -> None:
        self.records[record.id] = record
        self.bytes += len(record.payload)
        self.held[record.kind] = self.held.get(record.kind, 0) + 1
        while len(self.records) > self._max_records or self.bytes > self._max_bytes:
            victim = self._victim(in_flight)
            if victim is None:
                break
            self._forget(victim)
            for key, value in ((f"dropped_{victim.kind}", 1), ("dropped_samples", victim.items)):
                self.dropped[key] = self.dropped.get(key, 0) + value

    def _victim(self, in_flight: set[int]) -> Held | None:
        for kinds in (("telemetry", "campaign"), ("event", "response")):
            for held in self.records.values():
                if held.kind in kinds and held.id not in in_flight:
                    return held
        return None

    def _forget(self, held: Held) -> None:
        if self.records.pop(held.id, None) is not None:
            self.bytes -= len(held.payload)

    def ack(self, ids: set[int]) -> set[int]:
        """Forget the acknowledged records held here; the ids that were not."""
        rest = set()
        for i in ids:
            held = self.records.get(i)
            if held is None:
                rest.add(i)
            else:
                self._forget(held)
        return rest

    def pending(self, limit: int, after: int) -> list[Held]:
        out = []
        for held in self.records.values():
            if held.id > after:
                out.append(held)
                if len(out) >= limit:
                    break
        return out

    def take(self) -> list[Held]:
        """Everything, to be written to the disk (the caller puts it back on failure)."""
        return list(self.records.values())

    def clear(self, ids: set[int]) -> None:
        for i in ids:
            held = self.records.get(i)
            if held is not None:
                self._forget(held)
