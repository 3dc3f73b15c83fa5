"""Shared fixtures: the repository's paths and configurations written for one test."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from agent import config, dbc

ROOT = Path(__file__).resolve().parent.parent
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


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[[str], Path]:
    """Write YAML text to a fresh file in the test's folder and return its path."""
    counter = iter(range(1000))

    def write(text: str) -> Path:
        path = tmp_path / f"config-{next(counter)}.yaml"
        path.write_text(text)
        return path

    return write


@pytest.fixture
def channel_tag() -> str:
    """A unique tag so python-can virtual channels of different tests never meet."""
    return uuid.uuid4().hex[:8]


@pytest.fixture
def demo_vehicle(write_config: Callable[[str], Path], channel_tag: str) -> dbc.Vehicle:
    return dbc.load_vehicle(config.load(write_config(demo_text(channel_tag))))


_FIGURES: list[str] = []


@pytest.fixture
def report() -> Callable[[str], None]:
    """Record a measured figure (fault test, cap test, flood test) for the run's summary, so
    it shows in CI output even when the test passes quietly."""
    return _FIGURES.append


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _FIGURES:
        terminalreporter.section("figures measured by the tests")
        for line in _FIGURES:
            terminalreporter.write_line(line)
