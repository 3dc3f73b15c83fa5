"""The `P/events` payload, shared by everything that raises an event (storage, alerts, ...)."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping


def event_payload(seq: int, kind: str, name: str, data: Mapping[str, object]) -> bytes:
    body = {
        "v": 1,
        "seq": seq,
        "type": kind,
        "name": name,
        "ts": round(time.time(), 3),
        "data": dict(data),
    }
    return json.dumps(body, separators=(",", ":")).encode()
