"""The log's shape and discipline: stdlib records as JSON lines, repeating failures kept to a
few lines (first, one a minute with a count, one when cleared)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Callable

import structlog

from agent import logs


def _lines(out: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]  # every line is JSON


def test_a_failure_repeating_for_ten_minutes_logs_a_dozen_lines(
    report: Callable[[str], None],
) -> None:
    out = io.StringIO()
    logs.configure("info", "json", stream=out)
    now = [0.0]
    failure = logs.Repeating(structlog.get_logger("t"), "disk_full", clock=lambda: now[0])
    for _ in range(6000):  # ten failures a second for ten minutes
        failure.failed(path="/x")
        now[0] += 0.1
    failure.cleared()
    lines = _lines(out)
    report(f"Repeating: 6000 failures in 600 s -> {len(lines)} log lines")
    assert lines[0]["event"] == "disk_full" and "repeated" not in lines[0]
    assert lines[-1]["event"] == "disk_full_cleared" and lines[-1]["failures"] == 6000
    assert len(lines) <= 12
    # Every occurrence is accounted for: the first line plus each line's count since the last.
    assert 1 + sum(int(str(line.get("repeated", 0))) for line in lines) == 6000
    assert not failure.cleared()  # nothing to clear twice


def test_library_and_asyncio_records_are_json_lines(report: Callable[[str], None]) -> None:
    out = io.StringIO()
    logs.configure("info", "json", stream=out)
    for _ in range(50):
        logging.getLogger("can.interfaces.socketcan.socketcan").error(
            "Could not access SocketCAN device %s (%s)", "vcan0", "[Errno 19] No such device"
        )

    async def broken() -> None:
        loop = asyncio.get_running_loop()
        loop.call_soon(lambda: 1 / 0)
        await asyncio.sleep(0.01)

    asyncio.run(broken())
    lines = _lines(out)
    report(f"stdlib records: 50 python-can errors and 1 asyncio traceback -> {len(lines)} lines")
    can_lines = [line for line in lines if line.get("logger", "").startswith("can.")]  # type: ignore[union-attr]
    assert len(can_lines) == 1
    assert (
        can_lines[0]["event"]
        == "Could not access SocketCAN device vcan0 ([Errno 19] No such device)"
    )
    asyncio_lines = [line for line in lines if line.get("logger") == "asyncio"]
    assert len(asyncio_lines) == 1 and "ZeroDivisionError" in str(asyncio_lines[0]["exception"])
    assert len(lines) == 2
