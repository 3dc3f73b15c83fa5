"""Bus faults on real SocketCAN, counted in log lines: a link down for a minute, an interface
deleted and re-created, the daemon stopped and continued. Run by tests/vcan/run.sh."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from typing import Any

from tests.support.brokers import Broker, Daemon, Subscriber, running
from tests.vcan.conftest import ip
from tests.vcan.test_socketcan import car


def _health(sub: Subscriber, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    found: dict[str, Any] = sub.wait_for("health", lambda m: predicate(m.json()), 90).json()
    return found


def _bus_lines(daemon: Daemon) -> list[dict[str, Any]]:
    return [
        e
        for e in daemon.events()
        if str(e.get("event", "")).startswith("can_bus")
        or str(e.get("logger", "")).startswith("can")
    ]


def test_a_link_down_for_a_minute_logs_a_handful_and_shows_live(
    broker: Broker, vcan_daemon: Callable[..., Daemon], report: Callable[[str], None]
) -> None:
    """Opening a socket on a down vcan succeeds and its first receive fails: that must not
    reset the backoff. A minute down gives a handful of lines, and P/health shows the outage
    while it lasts."""
    daemon = vcan_daemon(broker.port)
    sub = Subscriber(broker.port)
    with car(daemon.config), running(daemon):
        _health(sub, lambda h: h["buses"]["body"]["received"] > 10)
        ip("set", "vcan1", "down")
        down_at = time.monotonic()
        try:
            daemon.wait_event("can_bus_failed", bus="body")
            live = _health(sub, lambda h: h["buses"]["body"]["down_s"] > 20)["buses"]["body"]
            time.sleep(max(0.0, 60 - (time.monotonic() - down_at)))
            assert daemon.alive()
            during = _bus_lines(daemon)
        finally:
            ip("set", "vcan1", "up")
        back = daemon.wait_event("can_bus_receiving", bus="body", timeout=15)
    sub.close()
    lines = _bus_lines(daemon)
    report(
        f"vcan link down 60 s: {len(during)} bus log lines while down, {len(lines)} in all "
        f"({sorted({str(e['event']) for e in lines})}); live health outages "
        f"{live['outages']}, down_s {live['down_s']}; reopens {live['reopens']}; "
        f"outage {back['outage_s']} s"
    )
    assert live["outages"] == 1 and live["down_s"] > 20  # live, not only after recovery
    assert len(during) <= 6
    assert back["outage_s"] >= 60


def test_a_deleted_interface_and_a_stopped_daemon_leave_only_json_lines(
    broker: Broker, vcan_daemon: Callable[..., Daemon], report: Callable[[str], None]
) -> None:
    daemon = vcan_daemon(broker.port)
    sub = Subscriber(broker.port)
    with running(daemon):
        with car(daemon.config):
            _health(sub, lambda h: h["buses"]["body"]["received"] > 10)
            ip("del", "vcan1")
            try:
                daemon.wait_event("can_bus_failed", bus="body")
                time.sleep(20)
            finally:
                ip("add", "dev", "vcan1", "type", "vcan")
                ip("set", "vcan1", "up")
        with car(daemon.config):  # the car's own socket died with the old interface
            daemon.wait_event("can_bus_receiving", bus="body", timeout=30)
        daemon.signal(signal.SIGSTOP)
        time.sleep(3)
        daemon.signal(signal.SIGCONT)
        time.sleep(3)
        assert daemon.alive()
    sub.close()
    raw = [line for line in daemon.log.read_text(errors="replace").splitlines() if line.strip()]
    plain = []
    for line in raw:
        try:
            json.loads(line)
        except json.JSONDecodeError:
            plain.append(line)
    report(
        f"vcan1 deleted 20 s and re-created, SIGSTOP/SIGCONT: {len(raw)} log lines, "
        f"{len(plain)} not JSON, {len(_bus_lines(daemon))} about the bus"
    )
    assert plain == []
    assert len(_bus_lines(daemon)) <= 8
