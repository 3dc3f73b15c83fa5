"""Nothing acknowledged is lost: broker restarts and SIGKILLs, the size cap, damaged files.

These run the daemon as a subprocess with the simulator in-process, against a real mosquitto
that persists its sessions, and a back-end subscriber with a persistent session (clean session
off, QoS 1), as a fleet back end would run.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.uplink.outbox import Outbox
from tests.support.brokers import Broker, Daemon, Subscriber, running, wait_until
from tests.support.schemas import validate

KIB = 1024


def _db(daemon: Daemon) -> Path:
    return daemon.config.parent / "state" / "outbox.db"


def _sql(daemon: Daemon, query: str) -> list[tuple[object, ...]]:
    db = sqlite3.connect(_db(daemon))
    try:
        return db.execute(query).fetchall()
    finally:
        db.close()


def _last_seq(daemon: Daemon, stream: str = "telemetry") -> int:
    rows = _sql(daemon, f"SELECT last FROM seq WHERE stream = '{stream}'")
    return int(rows[0][0]) if rows else 0  # type: ignore[arg-type]


def _first_seq(daemon: Daemon) -> int:
    """A new outbox numbers its streams from the clock; the first telemetry seq it gives."""
    return int(daemon.wait_event("outbox_created")["seq_from"])


def _telemetry_seqs(sub: Subscriber) -> list[int]:
    return [m.json()["seq"] for m in sub.on("telemetry")]


def test_fault_broker_restarts_and_sigkills_lose_nothing(
    broker_factory: Callable[..., Broker],
    make_daemon: Callable[..., Daemon],
    report: Callable[[str], None],
) -> None:
    """10 broker stops and starts, 3 SIGKILLs of the daemon: every seq arrives, no gap."""
    rng = random.Random(7)
    broker = broker_factory(persistent=True)
    backend = Subscriber(broker.port, client_id="fleet-backend", clean_session=False)
    daemon = make_daemon(broker.port, scenario="driving", speedup=4.0, every_value=True)
    daemon.start()
    backend.wait_for("telemetry", timeout=20)
    outages: list[float] = []
    kills = 0
    for cycle in range(10):
        time.sleep(rng.uniform(0.8, 1.6))
        broker.stop()
        down = time.monotonic()
        time.sleep(rng.uniform(0.3, 1.2))
        if cycle in (2, 5, 8):
            daemon.signal(signal.SIGKILL)
            daemon.wait(10)
            kills += 1
            daemon.start()
            time.sleep(0.5)
        broker.start()
        outages.append(time.monotonic() - down)
    time.sleep(2.0)
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(10) == 0
    depth = int(_sql(daemon, "SELECT count(*) FROM outbox")[0][0])  # type: ignore[arg-type]
    if depth:  # what the 3 s drain at shutdown could not send goes out on the next start
        with running(daemon):
            wait_until(
                lambda: _sql(daemon, "SELECT count(*) FROM outbox")[0][0] == 0,
                20,
                "the outbox to drain",
            )
    last, first = _last_seq(daemon), _first_seq(daemon)
    wait_until(
        lambda: set(range(first, last + 1)) <= set(_telemetry_seqs(backend)),
        30,
        f"every seq up to {last}",
    )
    backend.close()
    seqs = _telemetry_seqs(backend)
    missing = sorted(set(range(first, last + 1)) - set(seqs))
    duplicates = len(seqs) - len(set(seqs))
    report(
        f"fault test: {len(seqs)} telemetry messages received, seq {first}..{last}, "
        f"{duplicates} duplicates, {broker.starts - 1} broker restarts, {kills} SIGKILLs, "
        f"longest outage {max(outages):.2f} s, missing {missing}"
    )
    assert broker.starts - 1 >= 10 and kills >= 3
    assert missing == []
    assert max(seqs) == last  # nothing beyond what the daemon handed out


def test_cap_holds_and_drop_counters_are_exact(
    broker_factory: Callable[..., Broker],
    make_daemon: Callable[..., Daemon],
    report: Callable[[str], None],
) -> None:
    """Broker down, a 0.25 MB outbox and a heavy stream: the file stays under the cap, the
    oldest telemetry is dropped and counted exactly, and the storage event survives."""
    broker = broker_factory(persistent=True)
    backend = Subscriber(broker.port, client_id="fleet-backend", clean_session=False)
    time.sleep(0.5)  # the persistent session exists on the broker
    broker.stop()
    cap = int(0.25 * 1024 * KIB)
    daemon = make_daemon(
        broker.port,
        scenario="driving",
        speedup=10.0,
        every_value=True,
        storage="  max_mb: 0.25\n",
        telemetry="  batch_interval_ms: 50\n  batch_max_samples: 50\n  health_interval_s: 1\n",
    )
    daemon.start()
    peak = 0
    db, wal = _db(daemon), Path(f"{_db(daemon)}-wal")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        size = sum(p.stat().st_size for p in (db, wal) if p.exists())
        peak = max(peak, size)
        if db.exists():
            try:
                rows = _sql(daemon, "SELECT value FROM counters WHERE name = 'dropped_telemetry'")
            except sqlite3.OperationalError:  # the daemon is still creating the file
                rows = []
            if rows and int(rows[0][0]) > 200:  # type: ignore[call-overload]
                break
        time.sleep(0.05)
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(10) == 0
    size = sum(p.stat().st_size for p in (db, wal) if p.exists())
    assert max(peak, size) <= cap * 1.01, (peak, size, cap)

    counters = dict(_sql(daemon, "SELECT name, value FROM counters"))
    dropped = int(counters["dropped_telemetry"])  # type: ignore[call-overload]
    kept = [int(r[0]) for r in _sql(daemon, "SELECT id FROM outbox WHERE kind = 'telemetry'")]
    last, first = _last_seq(daemon), _first_seq(daemon)
    assert dropped > 200
    assert dropped + len(kept) == last - first + 1  # every seq is either kept or counted
    assert "dropped_event" not in counters  # events go last
    names = [str(r[0]) for r in _sql(daemon, "SELECT payload FROM outbox WHERE kind = 'event'")]
    assert any('"name":"dropping_started"' in n for n in names)

    # The broker returns: the kept telemetry and the storage event arrive; the missing seqs
    # are exactly the dropped ones, the oldest.
    broker.start()
    with running(daemon):
        wait_until(
            lambda: (
                _last_seq(daemon) in _telemetry_seqs(backend)
                or max(_telemetry_seqs(backend) or [0]) > last
            ),
            30,
            "the backlog",
        )
        health = backend.wait_for("health", lambda m: m.json()["dropped"]["dropped_telemetry"] > 0)
    backend.close()
    received = {s for s in _telemetry_seqs(backend) if s <= last}
    missing = set(range(first, last + 1)) - received
    assert missing == set(range(first, first + dropped))
    assert health.json()["dropped"]["dropped_telemetry"] >= dropped
    storage = [m.json() for m in backend.on("events") if m.json()["type"] == "storage"]
    assert storage[0]["name"] == "dropping_started"
    for event in storage:
        validate("events", event)
    validate("health", health.json())
    report(
        f"cap test: cap {cap} B, peak {max(peak, size)} B, dropped {dropped} oldest "
        f"telemetry messages of {last - first + 1}, kept and delivered {len(received)}"
    )


def test_a_damaged_outbox_is_moved_aside_and_the_daemon_runs(
    broker: Broker, make_daemon: Callable[..., Daemon], report: Callable[[str], None]
) -> None:
    """Random bytes as the outbox: not even the ids can be read, so nothing is salvaged and
    `lost` is null (unknown), not 0; the daemon runs on a fresh file."""
    daemon = make_daemon(broker.port)
    db = _db(daemon)
    db.parent.mkdir(parents=True)
    db.write_bytes(os.urandom(32 * KIB))
    backend = Subscriber(broker.port)
    with running(daemon):
        event = daemon.wait_event("outbox_damaged")
        assert Path(event["moved_to"]).exists()
        assert "not a database" in event["error"]
        first = backend.wait_for("telemetry").json()
        storage = backend.wait_for("events").json()
        salvaged = daemon.wait_event("outbox_salvaged")
        health = backend.wait_for("health").json()
        time.sleep(1.0)
        assert daemon.alive()
    backend.close()
    report(
        f"not a database (random bytes) under the daemon: {storage['data']['salvaged']} "
        f"salvaged, lost {storage['data']['lost']} (event; log: salvaged "
        f"{salvaged['salvaged']}, lost {salvaged['lost']}), lost_records in P/health "
        f"{health['dropped'].get('lost_records', 0)}; {len(backend.on('telemetry'))} new "
        f"telemetry messages delivered"
    )
    assert first["seq"] > 10**12  # numbered from the clock: no reuse of lost numbers
    assert (storage["type"], storage["name"]) == ("storage", "outbox_damaged")
    assert storage["data"]["moved_to"] == event["moved_to"]
    assert storage["data"]["salvaged"] == salvaged["salvaged"] == 0
    assert storage["data"]["lost"] is None and salvaged["lost"] is None
    assert health["dropped"].get("lost_records", 0) == 0  # an unknown count is not made 0+
    validate("events", storage)


@pytest.mark.parametrize("damage", ["torn page", "main file cut in half"])
def test_a_damaged_file_loses_only_its_unreadable_records_and_says_how_many(
    broker: Broker, make_daemon: Callable[..., Daemon], report: Callable[[str], None], damage: str
) -> None:
    """300 stored telemetry records, one page overwritten (a torn write in a power cut) or
    the main file cut in half: the daemon starts, delivers what is readable, and reports
    the lost count in the `outbox_damaged` event and in P/health."""
    daemon = make_daemon(broker.port)
    db = _db(daemon)
    db.parent.mkdir(parents=True)
    with Outbox(db, clock=lambda: 0.0) as box:
        for _ in range(300):
            box.append(
                "telemetry",
                "telemetry",
                lambda seq: json.dumps({"v": 1, "seq": seq, "pad": "x" * 1500}).encode(),
                stream="telemetry",
            )
        box.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray(db.read_bytes())
    if damage == "torn page":
        middle = len(data) // 4096 // 2
        data[middle * 4096 : (middle + 1) * 4096] = os.urandom(4096)
    else:
        del data[len(data) // 2 :]
    db.write_bytes(bytes(data))
    backend = Subscriber(broker.port)
    with running(daemon):
        event = daemon.wait_event("outbox_salvaged")
        storage = backend.wait_for("events", lambda m: m.json()["name"] == "outbox_damaged")
        wait_until(
            lambda: len([s for s in _telemetry_seqs(backend) if s <= 300]) >= event["salvaged"],
            20,
            "the salvaged records",
        )
        health = backend.wait_for("health", lambda m: "lost_records" in m.json()["dropped"])
    backend.close()
    old = sorted(s for s in _telemetry_seqs(backend) if s <= 300)
    lost = health.json()["dropped"]["lost_records"]
    report(
        f"{damage} under the daemon: {len(old)} of 300 stored records delivered, {lost} "
        f"reported lost (event: salvaged {storage.json()['data']['salvaged']}, "
        f"lost {storage.json()['data']['lost']})"
    )
    assert lost == event["lost"] == storage.json()["data"]["lost"] >= 1
    assert len(old) == event["salvaged"] and len(old) + lost >= 300
    assert len(old) + lost == 300  # each stored record: delivered or counted lost
    assert len(set(old)) == len(old)
    assert min(s for s in _telemetry_seqs(backend) if s > 300) > 10**12  # new ones: the clock


def test_a_wal_cut_short_by_a_power_cut_keeps_the_committed_prefix(
    broker: Broker, make_daemon: Callable[..., Daemon], report: Callable[[str], None]
) -> None:
    """40 records in the WAL of a file left open by an earlier boot, the WAL cut in half
    (a power cut with `sync: normal`): the daemon delivers the committed prefix, and tells
    the back end that records may be lost (`outbox_power_cut`, `lost` null: the cut-off
    tail cannot be counted) and where the streams continue (from the clock)."""
    daemon = make_daemon(broker.port)
    db = _db(daemon)
    db.parent.mkdir(parents=True)
    before = db.parent / "before-the-cut" / "outbox.db"
    before.parent.mkdir()
    with Outbox(before, clock=lambda: 0.0, boot_id="an-earlier-boot") as box:
        box.db.execute("PRAGMA wal_autocheckpoint=0")  # everything stays in the WAL
        for _ in range(40):
            box.append(
                "telemetry",
                "telemetry",
                lambda seq: json.dumps({"v": 1, "seq": seq, "pad": "x" * 1500}).encode(),
                stream="telemetry",
            )
        wal = Path(f"{before}-wal").read_bytes()
        db.write_bytes(before.read_bytes())  # the files as the power cut leaves them
    Path(f"{db}-wal").write_bytes(wal[: len(wal) // 2])
    backend = Subscriber(broker.port)
    with running(daemon):
        line = daemon.wait_event("outbox_power_cut")
        cut = backend.wait_for("events", lambda m: m.json()["name"] == "outbox_power_cut").json()
        wait_until(lambda: [s for s in _telemetry_seqs(backend) if s > 10**12], 20, "new telemetry")
        time.sleep(1.0)  # the committed prefix went first
    backend.close()
    seqs = _telemetry_seqs(backend)
    old = sorted(s for s in seqs if s <= 40)
    new = [s for s in seqs if s > 40]
    report(
        f"WAL cut in half by a power cut, under the daemon: {len(old)} of 40 stored records "
        f"delivered (the committed prefix), {40 - len(old)} lost with the cut (reported: "
        f"lost {cut['data']['lost']}, the count cannot be read); new seqs from "
        f"{cut['data']['seq_from']}; {len(new)} new telemetry messages"
    )
    assert 0 < len(old) < 40 and old == list(range(1, len(old) + 1))
    assert cut["data"] == {"seq_from": min(new), "lost": None}
    assert line["path"] == str(db)
    assert len(seqs) == len(set(seqs))
    validate("events", cut)
