"""The outbox on its own: order, seq, the size cap and its drop policy, expiry, damage."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest

from agent.uplink.outbox import Outbox, OutboxError, OutboxFull

KIB = 1024


def telemetry(outbox: Outbox, size: int = 1000, items: int = 10) -> int:
    body = b"x" * size
    return outbox.append(
        "telemetry",
        "telemetry",
        lambda seq: json.dumps({"seq": seq}).encode() + body,
        stream="telemetry",
        items=items,
    )


def kinds_and_seqs(outbox: Outbox) -> list[tuple[str, int]]:
    out = []
    for record in outbox.pending(1_000_000):
        if record.kind == "telemetry":  # {"seq": N} then padding
            head = record.payload.split(b"}")[0] + b"}"
            out.append((record.kind, json.loads(head)["seq"]))
        else:
            out.append((record.kind, json.loads(record.payload)["seq"]))
    return out


def events(outbox: Outbox) -> list[dict[str, object]]:
    return [json.loads(r.payload) for r in outbox.pending(1_000_000) if r.kind == "event"]


def epoch() -> float:
    """A clock at 0: a new file's streams start at 1 (they start from the clock in ms)."""
    return 0.0


def test_a_new_file_numbers_its_streams_from_the_clock(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db", clock=lambda: 1_800_000_000.0) as box:
        assert telemetry(box) == 1_800_000_000_001
        assert box.last_seq("events") == 1_800_000_000_000


def test_order_seq_and_ack_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    with Outbox(path, clock=epoch) as box:
        assert [telemetry(box) for _ in range(3)] == [1, 2, 3]
        box.append_event("storage", "test", {})
        first = box.pending(2)
        box.ack(r.id for r in first)
        assert box.depth() == 2
    with Outbox(path, clock=epoch) as box:
        assert telemetry(box) == 4  # seq continues after a restart
        assert [r.kind for r in box.pending(10)] == ["telemetry", "event", "telemetry"]
        assert box.last_seq("events") == 1


def test_the_file_stays_under_the_cap_and_drops_are_exact(tmp_path: Path) -> None:
    cap = 256 * KIB
    path = tmp_path / "o.db"
    with Outbox(path, max_bytes=cap, clock=epoch) as box:
        biggest = 0
        for _ in range(2000):  # ~2 MB offered to a 256 KiB outbox
            telemetry(box)
            biggest = max(biggest, box.file_bytes())
        assert biggest <= cap * 1.01, biggest  # the documented margin: 1 %
        counters = box.counters()
        remaining = [s for k, s in kinds_and_seqs(box) if k == "telemetry"]
        # Every seq handed out is either still here or counted as dropped: nothing vanishes.
        assert counters["dropped_telemetry"] + len(remaining) == 2000
        assert counters["dropped_samples"] == 10 * counters["dropped_telemetry"]
        # Oldest first: what is left is the newest, without holes.
        assert remaining == list(range(2001 - len(remaining), 2001))
        assert len(remaining) > 100
        names = [e["name"] for e in events(box)]
        assert names == ["dropping_started"]  # once, and it survived the drops
        assert box.dropping


def test_dropping_stops_once_there_is_room_again(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db", max_bytes=128 * KIB) as box:
        while not box.dropping:
            telemetry(box)
        box.ack(r.id for r in box.pending(1_000_000) if r.kind == "telemetry")
        assert not box.dropping
        stopped = [e for e in events(box) if e["name"] == "dropping_stopped"]
        assert len(stopped) == 1
        assert stopped[0]["type"] == "storage"
        assert stopped[0]["data"]["dropped_telemetry"] >= 1  # type: ignore[index]


def test_events_and_responses_go_last(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db", max_bytes=128 * KIB) as box:
        for i in range(20):
            box.append("response", "commands/response", lambda _s, i=i: f'{{"seq":{i}}}'.encode())
            box.append_event("alert", f"a{i}", {"pad": "y" * 900})
        for _ in range(400):
            telemetry(box)
        counters = box.counters()
        assert counters["dropped_telemetry"] > 0
        assert "dropped_event" not in counters and "dropped_response" not in counters
        kinds = [k for k, _ in kinds_and_seqs(box)]
        assert kinds.count("response") == 20
        assert sum(1 for e in events(box) if str(e["name"]).startswith("a")) == 20


def test_events_are_dropped_when_there_is_no_telemetry_left(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db", max_bytes=64 * KIB) as box:
        for i in range(200):
            box.append_event("alert", f"a{i}", {"pad": "y" * 900})
        counters = box.counters()
        assert counters["dropped_event"] > 0
        names = [str(e["name"]) for e in events(box)]
        alerts = [int(n[1:]) for n in names if n.startswith("a")]
        assert alerts == list(range(200 - len(alerts), 200))  # the oldest went


def test_records_in_flight_are_not_dropped(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db", max_bytes=128 * KIB) as box:
        for _ in range(10):
            telemetry(box)
        box.in_flight = {r.id for r in box.pending(5)}
        for _ in range(600):
            telemetry(box)
        ids = {r.id for r in box.pending(1_000_000)}
        assert box.in_flight <= ids
        assert box.counters()["dropped_telemetry"] > 0


def test_a_record_larger_than_the_cap_is_dropped_and_counted(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db", max_bytes=64 * KIB, clock=epoch) as box:
        with pytest.raises(OutboxFull):
            telemetry(box, size=200 * KIB, items=7)
        assert box.counters()["dropped_telemetry"] == 1
        assert box.counters()["dropped_samples"] == 7
        assert telemetry(box) == 1  # the refused record never got a seq (its write rolled back)


def test_old_telemetry_expires(tmp_path: Path) -> None:
    now = [1000.0]
    with Outbox(tmp_path / "o.db", max_age_s=3600, clock=lambda: now[0]) as box:
        telemetry(box, items=3)
        box.append_event("storage", "kept", {})
        now[0] += 1800
        telemetry(box, items=3)
        now[0] += 1801
        assert box.expire() == 1
        assert box.counters() == {"expired_telemetry": 1, "expired_samples": 3}
        assert [k for k, _ in kinds_and_seqs(box)] == ["event", "telemetry"]


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_damaged_file_is_moved_aside(
    tmp_path: Path, damage: str, report: Callable[[str], None]
) -> None:
    """Random bytes (no record can be read, not even how many there were: `lost` is None)
    or a main file cut in half (the records on the surviving pages are kept, each of the
    others counted as lost)."""
    path = tmp_path / "o.db"
    if damage == "garbage":
        path.write_bytes(os.urandom(64 * KIB))
    else:
        with Outbox(path, clock=epoch) as box:
            for _ in range(300):
                telemetry(box)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2] + b"\0" * 100)
        for suffix in ("-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    now = 1_800_000_000.0
    with Outbox(path, clock=lambda: now) as box:
        assert box.damaged is not None
        moved = Path(box.damaged["moved_to"])
        assert moved.exists() and moved.name.startswith("o.db.damaged-")
        kept = [s for k, s in kinds_and_seqs(box) if k == "telemetry"]
        lost = box.counters().get("lost_records", 0)
        # Fresh numbers start from the clock, so they cannot repeat the lost file's numbers.
        assert telemetry(box) == int(now * 1000) + 1
        damaged = [e for e in events(box) if e["name"] == "outbox_damaged"]
        assert len(damaged) == 1
        info = cast(dict[str, Any], damaged[0]["data"])
        assert info["moved_to"] == str(moved)
    report(
        f"{'random bytes' if damage == 'garbage' else 'main file cut in half'} (unit): "
        f"{len(kept)} of {0 if damage == 'garbage' else 300} records kept, lost "
        f"{info['lost']} (event), {lost} counted in lost_records"
    )
    assert info["salvaged"] == len(kept)
    if damage == "garbage":
        assert kept == [] and info["lost"] is None and lost == 0
    else:
        assert info["lost"] == lost and 0 < lost < 300 and len(kept) + lost == 300
        assert kept == list(range(1, len(kept) + 1))  # the first pages survived the cut


def test_a_path_that_cannot_be_opened_is_an_error_not_damage(tmp_path: Path) -> None:
    """Not the file's fault (here: a directory where the file should be): nothing is moved."""
    path = tmp_path / "o.db"
    path.mkdir()
    with pytest.raises(OutboxError, match="cannot open the outbox"):
        Outbox(path).open()
    assert path.is_dir()
    assert list(tmp_path.iterdir()) == [path]


def test_counters_are_persistent(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    with Outbox(path, max_bytes=64 * KIB) as box:
        for _ in range(300):
            telemetry(box)
        dropped = box.counters()["dropped_telemetry"]
    with Outbox(path, max_bytes=64 * KIB) as box:
        assert box.counters()["dropped_telemetry"] == dropped
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def _checkpointed(path: Path, records: int) -> None:
    with Outbox(path, clock=epoch) as box:
        for _ in range(records):
            telemetry(box, size=1500)
        box.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def test_a_torn_page_costs_only_the_records_on_it(
    tmp_path: Path, report: Callable[[str], None]
) -> None:
    path = tmp_path / "o.db"
    _checkpointed(path, 300)
    data = bytearray(path.read_bytes())
    page = 4096
    middle = len(data) // page // 2
    data[middle * page : (middle + 1) * page] = os.urandom(page)  # a torn write
    path.write_bytes(bytes(data))
    Path(f"{path}-wal").unlink(missing_ok=True)
    with Outbox(path) as box:
        assert box.damaged is not None
        kept = [s for k, s in kinds_and_seqs(box) if k == "telemetry"]
        lost = box.counters().get("lost_records", 0)
        damaged = next(e for e in events(box) if e["name"] == "outbox_damaged")["data"]
    report(f"torn page: {len(kept)} of 300 records kept, {lost} reported lost")
    assert damaged["salvaged"] == len(kept) and damaged["lost"] == lost  # type: ignore[index]
    assert 1 <= lost <= 3 and len(kept) + lost >= 300
    assert kept == sorted(kept) and len(set(kept)) == len(kept)


def test_a_truncated_wal_keeps_the_committed_prefix(
    tmp_path: Path, report: Callable[[str], None]
) -> None:
    """A power cut can leave a WAL cut short: SQLite keeps every transaction whose frames
    are complete; the agent starts on that, no damage."""
    path, copy = tmp_path / "o.db", tmp_path / "copy" / "o.db"
    copy.parent.mkdir()
    with Outbox(path, clock=epoch) as box:
        box.db.execute("PRAGMA wal_autocheckpoint=0")  # everything stays in the WAL
        for _ in range(40):
            telemetry(box, size=1500)
        wal = Path(f"{path}-wal").read_bytes()
        copy.write_bytes(path.read_bytes())  # the files as a power cut leaves them
    Path(f"{copy}-wal").write_bytes(wal[: len(wal) // 2])
    with Outbox(copy, clock=lambda: 1_800_000_000.0, boot_id="after-the-power-cut") as box:
        kept = [s for k, s in kinds_and_seqs(box) if k == "telemetry"]
        assert box.damaged is None
        assert kept == list(range(1, len(kept) + 1))
        after = telemetry(box)
        cut = cast(
            dict[str, Any], next(e for e in events(box) if e["name"] == "outbox_power_cut")["data"]
        )
    report(
        f"truncated WAL after a power cut (unit): {len(kept)} of 40 records kept (the "
        f"committed prefix), {40 - len(kept)} lost (reported: lost {cut['lost']}, not "
        f"countable); the next seq {after} (from the clock: the lost ones may have been sent)"
    )
    assert cut == {"seq_from": after, "lost": None}
    assert 0 < len(kept) < 40
    assert after == 1_800_000_000_001  # not len(kept) + 1, which may have been published


def test_a_file_replaced_under_the_open_outbox_keeps_its_records_and_streams(
    tmp_path: Path,
) -> None:
    """An older copy of the file appears at the path (a repaired filesystem mounted there
    after the disk went read-only): the outbox moves to it with exactly the records it
    still holds (the copy's acknowledged ones are not sent again), its counters, and its
    streams where they were: the open outbox knows every seq it handed out."""
    path = tmp_path / "o.db"
    with Outbox(path, max_bytes=64 * KIB, clock=epoch) as box:
        for _ in range(120):
            telemetry(box)
        box.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        older = path.read_bytes()
        box.ack([r.id for r in box.pending(3)])
        assert telemetry(box) == 121
        waiting = [s for _, s in kinds_and_seqs(box)]
        dropped = box.counters()["dropped_telemetry"]
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        path.write_bytes(older)  # another inode, records that were acknowledged since
        box.maintain()
        assert [s for _, s in kinds_and_seqs(box)][: len(waiting)] == waiting
        assert box.counters()["dropped_telemetry"] == dropped
        assert telemetry(box) == 122
        replaced = next(e for e in events(box) if e["name"] == "outbox_recreated")["data"]
        assert replaced == {"carried_over": len(waiting), "seq_from": 122}
    with Outbox(path, clock=lambda: 0.0) as box:  # and the file holds it all
        assert [s for k, s in kinds_and_seqs(box) if k == "telemetry"] == [*waiting, 122]
        assert telemetry(box) == 123


def test_a_restart_in_the_same_boot_continues_the_streams(tmp_path: Path) -> None:
    """A crash (kill -9) within one boot loses nothing the OS had: no jump."""
    path = tmp_path / "o.db"
    box = Outbox(path, clock=epoch, boot_id="one")
    box.open()
    assert telemetry(box) == 1
    box._db = None  # the process dies: no clean close
    with Outbox(path, clock=lambda: 1_800_000_000.0, boot_id="one") as again:
        assert telemetry(again) == 2


def test_a_campaign_stream_of_a_new_file_starts_from_its_floor(tmp_path: Path) -> None:
    """A stream first used after the file was created (a campaign's) numbers above the
    file's clock seed too, so a deleted outbox never repeats a campaign's seq either."""
    with Outbox(tmp_path / "a.db", clock=lambda: 1_800_000_000.0) as box:
        seq = box.append("campaign", "campaigns/x", lambda s: b"{}", stream="campaign/x")
    assert seq == 1_800_000_000_000 + 1


def test_campaign_captures_are_dropped_by_their_priority(tmp_path: Path) -> None:
    """The drop order of campaigns.md and reliability.md, record by record: campaign captures
    of a priority above telemetry's (5) first, then telemetry and captures of priority 5
    oldest first, then captures below 5 (the highest number first), and only then events and
    command responses, oldest first; records in flight never."""
    with Outbox(tmp_path / "o.db", max_bytes=128 * KIB, clock=epoch) as box:
        pad = "y" * 900
        made: dict[str, int] = {}  # name -> record id

        def add(name: str) -> None:
            kind, priority = name[0], int(name[1]) if name[0] == "c" else 5
            body = json.dumps({"name": name, "pad": pad}).encode()
            if kind == "t":
                box.append("telemetry", "telemetry", lambda _s: body, stream="telemetry")
            elif kind == "c":
                topic = f"campaigns/{name}"
                box.append(
                    "campaign", topic, lambda _s: body, stream=topic, priority=priority, items=3
                )
            elif kind == "e":
                box.append("event", "events", lambda _s: body, stream="events")
            else:
                box.append("response", "commands/response", lambda _s: body)
            made[name] = box.pending(1_000_000)[-1].id

        # In the order they were stored: c<priority><which>, t telemetry, e events, r responses.
        stored = "e1 t1 c2a t2 c9a r1 t3 c7 c0 t4 c9b e2 c5 t5 r2 t6 c2b"
        for name in stored.split():
            add(name)
        assert box.counters() == {} and not box.dropping  # all of it fits
        box.in_flight = {made["t1"], made["c9b"]}  # published, waiting for their PUBACK
        expected = "c9a c7 t2 t3 t4 c5 t5 t6 c2a c2b c0 e1 r1 e2 r2"
        order = expected.split()
        ids = {made[n]: n for n in made}

        def gone() -> list[str]:
            left = {r.id for r in box.pending(1_000_000)}
            return [ids[i] for i in sorted(ids) if i not in left]

        steps: list[list[str]] = []
        for k in range(200):
            box.append("event", "events", lambda _s, k=k: b"x" * 1500, stream="events")
            dropped = gone()
            # Whatever room each append needed, what is gone is the head of the order.
            assert sorted(dropped) == sorted(order[: len(dropped)]), (k, dropped)
            if not steps or len(dropped) > len(steps[-1]):
                steps.append(dropped)
            if len(dropped) == len(order):
                break
        counters = box.counters()
        survivors = {ids[r.id] for r in box.pending(1_000_000) if r.id in ids}
    assert survivors == {"t1", "c9b"}  # in flight all along
    assert len(steps) >= 5  # room was made in several rounds, each one the order's next
    assert (counters["dropped_campaign"], counters["dropped_telemetry"]) == (6, 5)
    assert counters["dropped_response"] == 2
    assert counters["dropped_event"] >= 2  # e1, e2 and some of the events that pushed
    assert counters["dropped_samples"] == 6 * 3


def _priorities(path: Path) -> dict[str, int]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return {str(t): int(p) for t, p in db.execute("SELECT topic, priority FROM outbox")}


def _capture(box: Outbox, name: str, priority: int) -> None:
    topic = f"campaigns/{name}"
    box.append("campaign", topic, lambda s: b'{"seq": %d}' % s, stream=topic, priority=priority)


def test_a_capture_keeps_its_priority_through_memory_salvage_and_a_new_file(
    tmp_path: Path,
) -> None:
    """Whichever way a record reaches the disk again (from the memory buffer, salvaged from a
    damaged file, carried into a file re-created at the path), a campaign capture keeps its
    place in the drop order."""
    now = [0.0]
    path = tmp_path / "o.db"
    with Outbox(path, clock=lambda: now[0]) as box:
        _capture(box, "on-disk", 2)
        # The disk refuses writes (what the outbox does on a read-only or vanished disk): the
        # next records wait in memory and go to the disk when it takes writes again.
        box._to_memory("the disk refuses writes (test)")
        _capture(box, "held", 2)
        _capture(box, "held-high", 9)
        held = [r.topic for r in box.spill.records.values()]  # with the on_memory event
        assert not box.on_disk and held == ["events", "campaigns/held", "campaigns/held-high"]
        now[0] += 60.0
        telemetry(box)  # the next append tries the disk again
        assert box.on_disk and len(box.spill) == 0
        assert _priorities(path) == {
            "campaigns/on-disk": 2,
            "campaigns/held": 2,
            "campaigns/held-high": 9,
            "telemetry": 5,
            "events": 5,  # the on_memory event
        }
        # The file is deleted under the open outbox: a new one at the path takes its records.
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        box.maintain()
        assert _priorities(path)["campaigns/held"] == 2
        assert _priorities(path)["campaigns/held-high"] == 9
        for _ in range(100):  # later records, on later pages
            telemetry(box)
    # Damaged: a file that fails the check is salvaged record by record into a new one.
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA journal_mode=DELETE")  # everything in the main file
    data = bytearray(path.read_bytes())
    data[-4096:] = os.urandom(4096)  # a torn last page: the newest records' (not the captures')
    path.write_bytes(bytes(data))
    with Outbox(path, clock=lambda: now[0]) as box:
        salvaged = box.damaged
        priorities = _priorities(path)
        kept = box.counters()
    assert salvaged is not None and kept.get("lost_records", 0) >= 1
    assert priorities["campaigns/held"] == 2 and priorities["campaigns/held-high"] == 9


def test_a_file_from_before_campaigns_is_salvaged_at_telemetrys_priority(tmp_path: Path) -> None:
    """An outbox written before the priority column existed: its records keep their order and
    get telemetry's priority, the one they had."""
    from agent.uplink.salvage import salvage

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE outbox(id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT, topic TEXT, "
            "payload BLOB, created REAL, items INTEGER, correlation BLOB)"
        )
        db.executemany(
            "INSERT INTO outbox(kind, topic, payload, created, items) VALUES(?, ?, ?, ?, ?)",
            [("telemetry", "telemetry", b"{}", 1.0, 3), ("event", "events", b"{}", 2.0, 0)],
        )
    found = salvage(path)
    assert [(r[0], r[1], r[7]) for r in found.rows] == [(1, "telemetry", 5), (2, "event", 5)]
    assert found.lost == 0
