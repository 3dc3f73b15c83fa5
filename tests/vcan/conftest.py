"""Fixtures for tests on real SocketCAN (vcan0 with CAN FD, vcan1 classic)."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.brokers import Daemon, daemons
from tests.support.configs import CONFIG_DIR, DBC_DIR

if not Path("/sys/class/net/vcan0").exists():  # pragma: no cover - depends on the host
    message = "no vcan0: run tests/vcan/run.sh (it uses User-Mode Linux where needed)"
    if os.environ.get("CI") or os.environ.get("VEHICLE_AGENT_VCAN"):
        raise RuntimeError(message)
    pytest.skip(message, allow_module_level=True)


def ip(*args: str) -> None:
    subprocess.run(["ip", "link", *args], check=True)


def vcan_config(
    port: int,
    folder: Path,
    *,
    extra: str = "",
    body_channel: str = "vcan1",
    trust: str = "",
    rcvbuf_kb: int | None = None,
) -> str:
    """config/vehicle.yaml on vcan0/vcan1, pointed at a test broker, fast timings;
    `rcvbuf_kb` for the powertrain bus (vcan0)."""
    text = (CONFIG_DIR / "vehicle.yaml").read_text().replace("../dbc/", f"{DBC_DIR}/")
    if rcvbuf_kb is not None:
        text = text.replace(
            "      channel: vcan0\n", f"      channel: vcan0\n      rcvbuf_kb: {rcvbuf_kb}\n"
        )
    text = text.replace("path: /var/lib/vehicle-agent/outbox.db", f"path: {folder}/state/outbox.db")
    text = text.replace("  port: 1883", f"  port: {port}")
    text = text.replace("channel: vcan1", f"channel: {body_channel}")
    text = text.replace("  batch_interval_ms: 1000", "  batch_interval_ms: 100")
    text = text.replace("  state_interval_s: 10", "  state_interval_s: 1\n  health_interval_s: 1")
    text = text.replace("  format: json", "  format: json\n  stats_interval_s: 1")
    text = re.sub(
        r"  trust: \[\][^\n]*\n", "  trust:\n" + trust if trust else "  trust: []\n", text
    )
    return text + extra


@pytest.fixture
def vcan_daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    with daemons(tmp_path, vcan_config) as make:
        yield make
