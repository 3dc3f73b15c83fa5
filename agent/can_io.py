"""python-can buses from settings: the one place that knows how a configured bus is opened."""

from __future__ import annotations

from typing import Any

import can

from agent.config import BusSettings
from agent.errors import AgentError


def open_bus(settings: BusSettings, **extra: Any) -> can.BusABC:
    """Open one configured bus; a clear AgentError when the interface is missing or refuses."""
    kwargs: dict[str, Any] = {"interface": settings.interface, "channel": settings.channel}
    if settings.fd:
        kwargs["fd"] = True
    if settings.bitrate is not None:
        kwargs["bitrate"] = settings.bitrate
    kwargs.update(extra)
    try:
        return can.Bus(**kwargs)
    except (can.CanError, OSError, ValueError, ImportError, NotImplementedError) as exc:
        raise AgentError(
            f"cannot open bus {settings.name!r} ({settings.interface}:{settings.channel}): {exc}"
        ) from exc
