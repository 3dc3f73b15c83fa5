"""The replay progress display: silent for short replays, a line once it takes a while."""

from __future__ import annotations

import io

import pytest

from agent.vehicle import replay


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_appears_only_after_a_moment(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _Clock()
    monkeypatch.setattr(replay.time, "monotonic", clock)
    stream = io.StringIO()  # not a terminal: plain lines, every 5 s
    meter = replay._Progress(stream, size=1000)
    clock.now += 0.5
    meter.tick(4096, 100)
    assert stream.getvalue() == ""
    clock.now += 1.0
    meter.tick(8192, 500)
    assert stream.getvalue() == "replay: 8192 frames, 5,461/s, 50%\n"
    clock.now += 1.0
    meter.tick(12288, 600)  # within 5 s of the last line: nothing new
    assert stream.getvalue().count("\n") == 1
    clock.now += 5.0
    meter.tick(50000, 1200)  # position past the size (compressed logs): capped at 100 %
    assert stream.getvalue().splitlines()[-1].endswith(", 100%")
    meter.done()


def test_progress_on_a_terminal_rewrites_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _Clock()
    monkeypatch.setattr(replay.time, "monotonic", clock)

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Tty()
    meter = replay._Progress(stream, size=None)
    clock.now += 2.0
    meter.tick(10000, None)
    clock.now += 0.5
    meter.tick(20000, None)
    meter.done()
    text = stream.getvalue()
    assert text.count("\r") == 2 and text.endswith("\n")
    assert "%" not in text  # no size known: no percentage
