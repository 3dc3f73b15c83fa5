"""Small asyncio helpers shared by the long-running components."""

from __future__ import annotations

import asyncio


async def wait_event(event: asyncio.Event, seconds: float) -> bool:
    """Wait for `event` at most `seconds`; True if it is set.

    Written with `asyncio.wait` rather than `asyncio.timeout` on purpose: on Python 3.11 a
    cancellation that arrives just as an `asyncio.timeout` expires can be turned into a
    TimeoutError and lost, and a loop that suppresses the timeout then never stops (seen
    here: the state loop outlived its session). `asyncio.wait` never cancels on our behalf.
    """
    if event.is_set():
        return True
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({waiter}, timeout=seconds)
    finally:
        waiter.cancel()
    return event.is_set()
