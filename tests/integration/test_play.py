"""`vehicle-agent play` feeds a daemon in another process over python-can's `udp_multicast`
(the bench without vcan), and the telemetry equals `replay`'s output for the same log.

The multicast groups are interface-local IPv6 (`ff01::/16`): the kernel delivers them to this
machine's own sockets only, never transmits them on a network and sends no MLD report for them.
The sampling policies are the demo's minus the time-based ones (`min_interval_ms`,
`max_interval_s`): the receiving bus stamps frames on arrival, as a real bus does, so only
policies that do not depend on time can be compared sample for sample with `replay`, which uses
the log's own timestamps.
"""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from tests.support.brokers import Broker, Daemon, Subscriber, free_port, running, wait_until
from tests.support.configs import demo_text

SCENARIO = """\
mode: driving
initial: {soc: 61.0, cabin_temp: 26.0, exterior_temp: 18.0}
events:
  - {at_s: 8, mode: parked}
  - {at_s: 10, set: {climate_on: true, target_temp: 21.0, fan_level: 3}}
  - {at_s: 13, mode: plugged_in}
"""


def _agent(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )


def _bench_config(broker_port: int, folder: Path, udp_port: int) -> str:
    """The demo car on two udp_multicast groups, no simulator, time-free policies."""
    group = random.randrange(1, 0xFFFF)
    text = demo_text()
    text = text.replace("path: state/outbox.db", f"path: {folder}/state/outbox.db")
    for bus, index in (("demo-powertrain", 1), ("demo-body", 2)):
        # `port` is not a bus key: python-can takes it from the channel's environment below.
        text = text.replace(
            f"      interface: virtual\n      channel: {bus}\n",
            f"      interface: udp_multicast\n      channel: 'ff01::7661:{group:x}:{index}'\n",
        )
    text = re.sub(r"\n    (min_interval_ms|max_interval_s): [^\n]*", "", text)
    text = text.replace("simulator:\n  enabled: true", "simulator:\n  enabled: false")
    text = text.replace("  format: console", "  format: json")
    start, end = text.index("telemetry:\n"), text.index("storage:\n")
    text = (
        text[:start] + "telemetry:\n  batch_interval_ms: 200\n  health_interval_s: 1\n" + text[end:]
    )
    return text + f"mqtt:\n  host: 127.0.0.1\n  port: {broker_port}\n"


def _telemetry(sub: Subscriber) -> list[dict[str, Any]]:
    return [s for m in sub.on("telemetry") for s in m.json()["samples"]]


def _by_path(samples: list[dict[str, Any]]) -> dict[str, list[Any]]:
    paths: dict[str, list[Any]] = defaultdict(list)
    for sample in samples:
        paths[sample["path"]].append(sample["value"])
    return dict(paths)


def test_a_daemon_receives_a_played_log_over_udp_multicast(
    broker: Broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Both processes (daemon and player) use the same UDP port for the groups: python-can's
    # udp_multicast takes `port` from its configuration, here the CAN_CONFIG environment.
    udp_port = free_port()
    monkeypatch.setenv("CAN_CONFIG", json.dumps({"port": udp_port, "hop_limit": 0}))
    record_cfg = tmp_path / "record.yaml"
    record_cfg.write_text(demo_text())
    (tmp_path / "scenario.yaml").write_text(SCENARIO)
    log = tmp_path / "drive.log"
    done = _agent(
        "simulate", "-c", str(record_cfg), "--scenario", "scenario.yaml",
        "--duration", "16", "--record", str(log),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr

    folder = tmp_path / "d"
    folder.mkdir()
    cfg = folder / "agent.yaml"
    cfg.write_text(_bench_config(broker.port, folder, udp_port))
    channels = ["--map-channel", "demo-powertrain=powertrain", "--map-channel", "demo-body=body"]
    replayed = _agent("replay", "-c", str(cfg), str(log), "-q", *channels)
    assert replayed.returncode == 0, replayed.stderr
    expected = [json.loads(line) for line in replayed.stdout.splitlines()]
    assert len(expected) > 100

    sub = Subscriber(broker.port)
    daemon = Daemon(cfg, folder / "agent.log")
    with running(daemon):
        daemon.wait_event("started", timeout=20)
        played = _agent("play", "-c", str(cfg), str(log), "--speed", "4", *channels)
        assert played.returncode == 0, played.stderr
        assert "0 send errors" in played.stderr
        wait_until(
            lambda: len(_telemetry(sub)) >= len(expected), 30, "every replayed sample published"
        )
        sub.wait_for(
            "health",
            lambda m: all(b["received"] > 0 for b in m.json()["buses"].values()),
            timeout=10,
        )
        health = sub.on("health")[-1].json()
    sub.close()
    assert _by_path(_telemetry(sub)) == _by_path(expected)
    for bus in ("powertrain", "body"):
        assert health["buses"][bus]["silent"] is False
        assert health["buses"][bus]["unknown_id"] == 0
