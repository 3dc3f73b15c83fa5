"""One daemon per storage path, and two cars configured with one vehicle_id: the second
daemon on a path exits at once naming the first; two clients fighting over one MQTT client id
back off and log a few lines a minute."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable

from tests.support.brokers import Broker, Daemon, running

MQTT_EVENTS = ("mqtt_",)


def test_a_second_daemon_on_the_same_path_exits_1_naming_the_first(
    broker: Broker, make_daemon: Callable[..., Daemon], report: Callable[[str], None]
) -> None:
    first = make_daemon(broker.port)
    with running(first):
        first.wait_event("mqtt_connected")
        started = time.monotonic()
        second = subprocess.run(
            [sys.executable, "-m", "agent", "run", "-c", str(first.config)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        took = time.monotonic() - started
        assert first.alive()
    lines = [line for line in (second.stdout + second.stderr).splitlines() if line.strip()]
    report(f"second daemon on one path: exit {second.returncode} after {took:.1f} s, {lines}")
    assert second.returncode == 1
    assert len(lines) == 1
    assert first.proc is not None and f"pid {first.proc.pid}" in lines[0]


def test_two_daemons_with_one_vehicle_id_back_off(
    broker: Broker, make_daemon: Callable[..., Daemon], report: Callable[[str], None]
) -> None:
    """Each connection takes the other's over: both keep running, back off (the backoff is
    not reset by a connection that did not last) and log a few lines a minute."""
    one = make_daemon(broker.port, vehicle_id="TWIN-0001")
    two = make_daemon(broker.port, vehicle_id="TWIN-0001")
    with running(one), running(two):
        time.sleep(60)
        assert one.alive() and two.alive()
    counts = []
    for daemon in (one, two):
        mqtt = [e for e in daemon.events() if str(e.get("event", "")).startswith(MQTT_EVENTS)]
        counts.append(len(mqtt))
    takeovers = broker.log_text().count("already connected")
    report(
        f"two daemons, one vehicle_id, 60 s: mqtt log lines {counts}, "
        f"broker closed a connection for the other {takeovers} times"
    )
    assert max(counts) <= 8, counts
