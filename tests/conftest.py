"""Shared fixtures: configurations written for one test, private CAN channels, a real
mosquitto on a free loopback port, daemons as subprocesses, and the run's measured figures."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent import config
from agent.vehicle import dbc
from tests.support.brokers import Broker, Daemon, daemons
from tests.support.configs import daemon_config, demo_text


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
def report(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Record a measured figure (fault test, cap test, flood test) for the run's summary, so
    it shows in CI output even when the test passes quietly. The figure travels with the
    test's report, so that it reaches the summary from pytest-xdist's workers too."""

    def add(line: str) -> None:
        request.node.user_properties.append(("figure", line))

    return add


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "teardown":  # the last report of a test carries all its properties
        _FIGURES.extend(str(v) for k, v in report.user_properties if k == "figure")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _FIGURES:
        terminalreporter.section("figures measured by the tests")
        for line in _FIGURES:
            terminalreporter.write_line(line)


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


@pytest.fixture
def make_daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    with daemons(tmp_path, daemon_config) as make:
        yield make


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked `last` (the clean-checkout check) run after all the others."""
    items.sort(key=lambda item: item.get_closest_marker("last") is not None)
