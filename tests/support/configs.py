"""Paths of the repository and the configuration texts the tests write: the demo
configuration with private channels, and the same pointed at a test broker for a daemon."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
DBC_DIR = ROOT / "dbc"
CONFIG_DIR = ROOT / "config"


def demo_text(channel_tag: str | None = None) -> str:
    """config/demo.yaml with absolute DBC paths and (optionally) private virtual channels."""
    text = (CONFIG_DIR / "demo.yaml").read_text()
    text = text.replace("../dbc/", f"{DBC_DIR}/")
    text = text.replace("path: ../.demo-state/outbox.db", "path: state/outbox.db")
    if channel_tag is not None:
        text = text.replace("channel: demo-powertrain", f"channel: pt-{channel_tag}")
        text = text.replace("channel: demo-body", f"channel: body-{channel_tag}")
    return text


def daemon_config(
    port: int,
    folder: Path,
    *,
    scenario: str = "parked",
    extra: str = "",
    mqtt_extra: str = "",
    telemetry: str = "  batch_interval_ms: 200\n  state_interval_s: 2\n  health_interval_s: 1\n",
    vehicle_id: str | None = None,
    speedup: float = 1.0,
    storage: str = "",
    every_value: bool = False,
) -> str:
    """The demo configuration pointed at a test broker, with fast timings and its own state."""
    tag = uuid.uuid4().hex[:8]
    text = demo_text(tag)
    text = text.replace("vehicle_id: DEMO-0001", f"vehicle_id: {vehicle_id or 'TEST-' + tag}")
    text = text.replace("path: state/outbox.db", f"path: {folder}/state/outbox.db")
    text = text.replace("  format: console", "  format: json\n  stats_interval_s: 2")
    text = text.replace("  scenario: parked", f"  scenario: {scenario}\n  speedup: {speedup}")
    text = text.replace(
        f"path: {folder}/state/outbox.db", f"path: {folder}/state/outbox.db\n{storage}"
    )
    if every_value:
        # No sampling policy: every decoded value is published (a heavy, steady stream).
        text = re.sub(r"\n    (deadband|min_interval_ms|max_interval_s): [^\n]*", "", text)
        text = text.replace("  - path: ", "  - on_change: false\n    path: ")
    start = text.index("telemetry:\n")
    end = text.index("storage:\n")
    text = text[:start] + "telemetry:\n" + telemetry + text[end:]
    text += f"mqtt:\n  host: 127.0.0.1\n  port: {port}\n{mqtt_extra}" + extra
    return text
