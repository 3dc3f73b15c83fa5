"""Storage faults on a real (small) filesystem: a full disk, a read-only remount. The daemon
runs as a subprocess with its outbox on a tmpfs this test mounts, against a real mosquitto
and a back end with a persistent session."""

from __future__ import annotations

import re
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jwt
import paho.mqtt.publish as publish
import pytest

from tests.support.agents import Key, trust_entry
from tests.support.brokers import Broker, Daemon, Subscriber, wait_until
from tests.support.mounts import ext4, free_bytes, fs_error, remount, repaired, tmpfs

STORAGE_EVENTS = ("outbox_", "telemetry_dropped", "command_store_failed")


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "fs", "400k") as where:
        yield where


def _on(daemon: Daemon, fs: Path) -> Daemon:
    """Move the daemon's storage onto `fs`."""
    text = daemon.config.read_text()
    old = f"{daemon.config.parent}/state/outbox.db"
    assert old in text
    daemon.config.write_text(text.replace(old, f"{fs}/outbox.db"))
    return daemon


def _storage_lines(daemon: Daemon) -> list[dict[str, Any]]:
    return [e for e in daemon.events() if str(e.get("event", "")).startswith(STORAGE_EVENTS)]


def _seqs(sub: Subscriber) -> list[int]:
    return [m.json()["seq"] for m in sub.on("telemetry")]


def _health(sub: Subscriber, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    found: dict[str, Any] = sub.wait_for("health", lambda m: predicate(m.json()), 30).json()
    return found


def test_a_full_disk_with_the_broker_down_then_up(
    broker_factory: Callable[..., Broker],
    make_daemon: Callable[..., Daemon],
    small_fs: Path,
    report: Callable[[str], None],
) -> None:
    """400 kB for the outbox, the broker down until the disk is full: the daemon stays up,
    drops the oldest telemetry (counted), drains when the broker returns and publishes new
    telemetry afterwards, in a handful of log lines."""
    broker = broker_factory(persistent=True)
    backend = Subscriber(broker.port, client_id="fleet-backend", clean_session=False)
    time.sleep(0.5)
    broker.stop()
    daemon = _on(
        make_daemon(
            broker.port,
            scenario="driving",
            speedup=10.0,
            every_value=True,
            telemetry="  batch_interval_ms: 50\n  batch_max_samples: 50\n  health_interval_s: 1\n",
        ),
        small_fs,
    )
    daemon.start()
    daemon.wait_event("outbox_disk_full", timeout=60)
    full_at = time.monotonic()
    time.sleep(15)  # the disk stays full for a while: nothing may repeat per batch
    assert daemon.alive()
    assert free_bytes(small_fs) < 100 * 1024
    lines_full = len(_storage_lines(daemon))
    broker.start()
    health = _health(backend, lambda h: h["outbox"]["depth"] < 50)
    wait_until(lambda: len(backend.on("telemetry")) > 0, 30, "telemetry")
    last_before = max(_seqs(backend))
    wait_until(lambda: max(_seqs(backend)) > last_before + 20, 30, "new telemetry after the drain")
    health = _health(backend, lambda h: h["outbox"]["depth"] < 50)
    assert daemon.alive()
    daemon.stop()
    backend.close()
    seqs = _seqs(backend)
    storage = _storage_lines(daemon)
    dropped = health["dropped"].get("dropped_telemetry", 0)
    report(
        f"tiny filesystem (400 kB, broker down {time.monotonic() - full_at:.0f} s after the "
        f"disk filled): {len(set(seqs))} telemetry messages delivered, {dropped} oldest dropped "
        f"(counted), {len(seqs) - len(set(seqs))} duplicates; storage log lines while full "
        f"{lines_full}, in all {len(storage)}: {sorted({str(e['event']) for e in storage})}"
    )
    assert dropped > 0
    assert len(seqs) == len(set(seqs)) or len(seqs) - len(set(seqs)) < 60  # in flight only
    assert lines_full <= 6, [e["event"] for e in storage]
    assert len(storage) <= 10, [e["event"] for e in storage]
    assert not [e for e in daemon.events() if "Traceback" in str(e) or e.get("exception")]


def test_read_only_at_start_then_remounted_rw(
    broker_factory: Callable[..., Broker],
    make_daemon: Callable[..., Daemon],
    small_fs: Path,
    report: Callable[[str], None],
) -> None:
    """The daemon starts on a read-only filesystem: it publishes from memory, says so in
    P/health and one log line; after a rw remount it goes back to the disk, losing nothing."""
    broker = broker_factory()
    backend = Subscriber(broker.port)
    key = Key("fleet-app")
    daemon = _on(
        make_daemon(broker.port, scenario="driving", speedup=4.0, vehicle_id="RO-1"), small_fs
    )
    daemon.config.write_text(
        re.sub(r"  trust: \[\][^\n]*\n", "  trust:\n" + trust_entry(key), daemon.config.read_text())
    )
    daemon.start()
    backend.wait_for("telemetry", timeout=20)
    daemon.stop()
    remount(small_fs, "ro")
    try:
        daemon.start()
        health = _health(backend, lambda h: h["outbox"]["on_disk"] is False)
        count = len(backend.on("telemetry"))
        wait_until(lambda: len(backend.on("telemetry")) > count + 10, 30, "telemetry while ro")
        # Commands are still answered: the response waits in memory and is published.
        token = key.token("RO-1", "state.snapshot")
        jti = jwt.decode(token, options={"verify_signature": False})["jti"]
        publish.single("vehicles/RO-1/commands/request", token, qos=1, port=broker.port)
        answer = backend.wait_for(
            "commands/response",
            lambda m: m.json()["id"] == jti and m.json()["status"] != "accepted",
        ).json()
        assert answer["status"] == "succeeded"
        held = _health(backend, lambda h: h["outbox"]["held_in_memory"].get("response", 0) >= 2)
        time.sleep(8)  # several retries of the disk
        lines_ro = len(_storage_lines(daemon))
        assert daemon.alive()
    finally:
        remount(small_fs, "rw")
    health = _health(backend, lambda h: h["outbox"]["on_disk"] is True)
    count = len(backend.on("telemetry"))
    wait_until(lambda: len(backend.on("telemetry")) > count + 5, 30, "telemetry after rw")
    daemon.stop()
    backend.close()
    seqs = _seqs(backend)
    storage = _storage_lines(daemon)
    report(
        f"read-only at start, then rw: {len(seqs)} telemetry messages delivered, "
        f"{len(seqs) - len(set(seqs))} duplicates; a command answered from memory "
        f"(held_in_memory {held['outbox']['held_in_memory']}); storage log lines while ro "
        f"{lines_ro}, "
        f"in all {len(storage)}: {[str(e['event']) for e in storage]}"
    )
    assert lines_ro <= 3
    events = [e["event"] for e in storage]
    assert events.count("outbox_on_memory") == 1
    jump = next(e for e in storage if e["event"] == "outbox_on_memory")["seq_from"]
    assert min(s for s in seqs if s >= jump) == jump  # the read-only run: from the clock
    assert "outbox_on_memory_cleared" in events
    assert len(seqs) == len(set(seqs))
    assert health["outbox"]["on_disk"] is True


def test_the_disk_goes_read_only_under_a_running_daemon(
    broker_factory: Callable[..., Broker],
    make_daemon: Callable[..., Daemon],
    tmp_path: Path,
    report: Callable[[str], None],
) -> None:
    """An I/O error makes the kernel remount the storage read-only (ext4, errors=remount-ro):
    the daemon keeps publishing from memory and says so once."""
    with ext4(tmp_path / "emmc", tmp_path / "emmc.img") as fs:
        broker = broker_factory()
        backend = Subscriber(broker.port)
        daemon = _on(make_daemon(broker.port, scenario="driving", speedup=4.0), fs)
        daemon.start()
        backend.wait_for("telemetry", timeout=20)
        fs_error(fs)
        health = _health(backend, lambda h: h["outbox"]["on_disk"] is False)
        count = len(backend.on("telemetry"))
        wait_until(lambda: len(backend.on("telemetry")) > count + 10, 30, "telemetry while ro")
        time.sleep(12)  # several retries of the disk
        assert daemon.alive()
        daemon.stop()
    backend.close()
    seqs = _seqs(backend)
    storage = _storage_lines(daemon)
    report(
        f"ext4 error, read-only under a running daemon: {len(seqs)} telemetry messages "
        f"delivered, {len(seqs) - len(set(seqs))} duplicates, memory buffer "
        f"{health['outbox']['memory_records']} records at the first health; storage log lines "
        f"{len(storage)}: {[str(e['event']) for e in storage]}"
    )
    assert [e["event"] for e in storage].count("outbox_on_memory") == 1
    assert len(storage) <= 4
    assert len(seqs) == len(set(seqs))
    # No gap, except the announced jump to numbers from the clock (a restart before the disk
    # returns must not reuse the numbers sent from memory).
    jump = next(e for e in storage if e["event"] == "outbox_on_memory")["seq_from"]
    announced = [m.json() for m in backend.on("events") if m.json()["name"] == "on_memory"]
    assert announced and announced[0]["data"]["seq_from"] == jump
    before, after = [s for s in seqs if s < jump], [s for s in seqs if s >= jump]
    assert before == list(range(before[0], before[0] + len(before)))
    assert after == list(range(jump, jump + len(after)))


def _next_health(sub: Subscriber, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """The first P/health from now on that satisfies `predicate`."""
    seen = len(sub.on("health"))
    found: dict[str, Any] = wait_until(
        lambda: next((h for m in sub.on("health")[seen:] if predicate(h := m.json())), None),
        30,
        "a matching health",
    )
    return found


def test_the_disk_goes_read_only_mid_run_and_comes_back_rw(
    broker_factory: Callable[..., Broker],
    make_daemon: Callable[..., Daemon],
    tmp_path: Path,
    report: Callable[[str], None],
) -> None:
    """The storage goes read-only under the running daemon (an ext4 error, as eMMC faults
    do) and comes back rw (the repaired filesystem mounted at the path: the kernel will not
    remount an ext4 taken read-only on an error rw, see docs/reliability.md). The daemon
    stays up, holds records in memory meanwhile (bounded, said in P/health and one log
    line), goes back to the disk, and the back end sees every seq once."""
    image = tmp_path / "emmc.img"
    with ext4(tmp_path / "emmc", image) as fs:
        broker = broker_factory(persistent=True)
        backend = Subscriber(broker.port, client_id="fleet-backend", clean_session=False)
        daemon = _on(make_daemon(broker.port, scenario="driving", speedup=4.0), fs)
        daemon.start()
        wait_until(lambda: len(backend.on("telemetry")) >= 5, 20, "telemetry on disk")
        fs_error(fs)
        on_memory = _next_health(backend, lambda h: h["outbox"]["on_disk"] is False)
        count = len(backend.on("telemetry"))
        wait_until(lambda: len(backend.on("telemetry")) > count + 10, 30, "telemetry while ro")
        # The broker goes away too: records pile up in the memory buffer while the disk is
        # tried again (every 5 s) and still refuses.
        broker.stop()
        time.sleep(8)
        lines_ro = len(_storage_lines(daemon))
        assert daemon.alive()
        with repaired(fs, image):
            cleared = daemon.wait_event("outbox_on_memory_cleared", timeout=20)
            broker.start()
            back = _next_health(backend, lambda h: h["outbox"]["on_disk"] is True)
            count = len(backend.on("telemetry"))
            wait_until(lambda: len(backend.on("telemetry")) > count + 10, 30, "telemetry on rw")
            assert daemon.alive()
            daemon.stop()
            db = sqlite3.connect(fs / "outbox.db")
            try:
                on_disk_last = int(
                    db.execute("SELECT last FROM seq WHERE stream = 'telemetry'").fetchone()[0]
                )
            finally:
                db.close()
    backend.close()
    seqs = _seqs(backend)
    storage = _storage_lines(daemon)
    events = [str(e["event"]) for e in storage]
    report(
        f"ext4 read-only mid-run, then rw again (repaired filesystem at the path): "
        f"{len(seqs)} telemetry messages delivered, {len(seqs) - len(set(seqs))} repeated "
        f"seqs, 0 lost; {back['outbox']['held_in_memory']} held in memory while ro, "
        f"{cleared['moved_to_disk']} moved to the disk on return; storage log lines while ro "
        f"{lines_ro}, in all {len(storage)}: {events}"
    )
    assert on_memory["outbox"]["memory_records"] <= 2000  # bounded (spill.MAX_RECORDS)
    assert lines_ro <= 2 and events.count("outbox_on_memory") == 1
    assert "outbox_on_memory_cleared" in events and cleared["moved_to_disk"] > 0
    assert back["outbox"]["on_disk"] is True and back["outbox"]["memory_records"] == 0
    assert back["outbox"]["held_in_memory"]["telemetry"] >= cleared["moved_to_disk"]
    assert len(seqs) == len(set(seqs))
    # Every seq handed out arrived: consecutive before the announced jump to the clock and
    # after it, through the memory buffer and back on the disk; the disk recorded the last.
    jump = next(e for e in storage if e["event"] == "outbox_on_memory")["seq_from"]
    before, after = [s for s in seqs if s < jump], [s for s in seqs if s >= jump]
    assert sorted(before) == list(range(before[0], before[0] + len(before)))
    assert sorted(after) == list(range(jump, jump + len(after)))
    assert on_disk_last == max(seqs)


@pytest.mark.parametrize("what", ["file", "directory"])
def test_an_outbox_deleted_under_a_running_daemon_never_repeats_a_seq(
    broker: Broker, make_daemon: Callable[..., Daemon], report: Callable[[str], None], what: str
) -> None:
    """The file is deleted while the daemon runs (noticed, logged, a new file started above
    every seq handed out), then again while it is stopped: the back end sees no seq twice."""
    backend = Subscriber(broker.port)
    daemon = make_daemon(broker.port, scenario="driving", speedup=4.0)
    db = daemon.config.parent / "state" / "outbox.db"
    daemon.start()
    wait_until(lambda: len(backend.on("telemetry")) >= 5, 20, "telemetry")
    if what == "directory":
        shutil.rmtree(db.parent)
    else:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink()
    vanished = daemon.wait_event("outbox_file_vanished", timeout=15)
    count = len(backend.on("telemetry"))
    wait_until(lambda: len(backend.on("telemetry")) >= count + 5, 20, "telemetry after")
    assert db.exists()
    # The lock went with the directory: it is taken again, a second daemon still may not run.
    wait_until(lambda: Path(f"{db}.lock").exists(), 10, "the lock file again")
    second = subprocess.run(
        [sys.executable, "-m", "agent", "run", "-c", str(daemon.config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert second.returncode == 1 and "another vehicle-agent" in second.stderr + second.stdout
    daemon.stop()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    count = len(backend.on("telemetry"))
    daemon.start()
    wait_until(lambda: len(backend.on("telemetry")) >= count + 5, 20, "telemetry after restart")
    daemon.stop()
    backend.close()
    seqs = _seqs(backend)
    events = [m.json() for m in backend.on("events")]
    lines = [e["event"] for e in _storage_lines(daemon)]
    report(
        f"outbox {what} deleted under a running daemon, then before a restart: {len(seqs)} "
        f"telemetry "
        f"messages, {len(seqs) - len(set(seqs))} repeated seqs, storage lines {lines}"
    )
    assert len(seqs) == len(set(seqs))
    assert seqs == sorted(seqs)  # each new file starts above everything before it
    assert lines.count("outbox_file_vanished") == 1 and vanished["path"] == str(db)
    assert any(e["name"] == "outbox_recreated" for e in events)
