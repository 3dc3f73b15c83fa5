"""Under systemd: the notification protocol as the daemon speaks it, and the unit's checks."""

from __future__ import annotations

import itertools
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.brokers import Broker, Daemon, wait_until
from tests.support.configs import ROOT


class NotifySocket:
    """A datagram socket bound where $NOTIFY_SOCKET points, recording what arrives."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._stop = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.append((time.monotonic(), data.decode()))

    def fields(self, name: str) -> list[float]:
        return [t for t, m in self.messages if f"{name}=" in m]

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        self.sock.close()


def test_ready_watchdog_status_and_stopping(
    broker: Broker, make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    """READY=1 with a STATUS=, WATCHDOG=1 every half period; a stalled process (SIGSTOP)
    stops the pings, they resume after SIGCONT, and STOPPING=1 comes at SIGTERM."""
    notify = NotifySocket(tmp_path / "notify.sock")
    daemon = make_daemon(broker.port)
    env = {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "1000000", "PATH": "/usr/bin:/bin"}
    with open(daemon.log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "-c", str(daemon.config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        wait_until(lambda: notify.fields("READY"), 15, "READY=1")
        ready = next(m for _, m in notify.messages if "READY=1" in m)
        assert re.search(r"STATUS=\d+ frames, \d+ batches, outbox \d+, mqtt", ready), ready
        wait_until(lambda: len(notify.fields("WATCHDOG")) >= 4, 10, "four watchdog pings")
        pings = notify.fields("WATCHDOG")
        gaps = [b - a for a, b in itertools.pairwise(pings)]
        assert max(gaps) < 1.0  # every half of WATCHDOG_USEC (1 s), a little slack

        proc.send_signal(signal.SIGSTOP)  # the whole process stalls
        stalled_at = time.monotonic()
        time.sleep(2.5)
        assert not [t for t in notify.fields("WATCHDOG") if t > stalled_at + 0.1]
        proc.send_signal(signal.SIGCONT)
        resumed_at = time.monotonic()
        wait_until(
            lambda: [t for t in notify.fields("WATCHDOG") if t > resumed_at],
            5,
            "pings after SIGCONT",
        )

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(5) == 0
        assert notify.fields("STOPPING")
        assert notify.fields("STOPPING")[-1] > resumed_at
    finally:
        if proc.poll() is None:
            proc.kill()
        notify.close()


@pytest.fixture
def unit(tmp_path: Path) -> Path:
    """The shipped unit with ExecStart pointing at this checkout's installed script
    (systemd-analyze verify checks that the program exists)."""
    if shutil.which("systemd-analyze") is None:
        import os

        if os.environ.get("CI"):
            pytest.fail("systemd-analyze is missing (Debian package systemd)")
        pytest.skip("systemd-analyze is missing (Debian package systemd)")
    text = (ROOT / "systemd" / "vehicle-agent.service").read_text()
    script = Path(sys.executable).parent / "vehicle-agent"
    path = tmp_path / "vehicle-agent.service"
    path.write_text(text.replace("/opt/vehicle-agent/bin/vehicle-agent", str(script)))
    return path


def test_unit_verifies(unit: Path) -> None:
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


def test_unit_exposure_is_ok(unit: Path, report: Callable[[str], None]) -> None:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(unit)],
        capture_output=True,
        text=True,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: ([\d.]+) (\w+)", result.stdout)
    assert match, result.stdout + result.stderr
    report(f"systemd-analyze security: {match[1]} {match[2]}")
    assert float(match[1]) <= 2.0 and match[2] == "OK"
