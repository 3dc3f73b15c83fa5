"""Fixtures for tests against a real broker and the daemon as a subprocess."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import demo_text
from tests.integration.brokers import Broker, Daemon, daemons


@pytest.fixture
def broker_factory(tmp_path: Path) -> Iterator[Callable[..., Broker]]:
    brokers: list[Broker] = []

    def make(
        extra: str = "", *, start: bool = True, port: int | None = None, persistent: bool = False
    ) -> Broker:
        broker = Broker(tmp_path, extra, port=port, persistent=persistent)
        brokers.append(broker)
        if start:
            broker.start()
        return broker

    yield make
    for broker in brokers:
        broker.stop()


@pytest.fixture
def broker(broker_factory: Callable[..., Broker]) -> Broker:
    return broker_factory()


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


@pytest.fixture
def make_daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    with daemons(tmp_path, daemon_config) as make:
        yield make
