"""The agent in the test's own process (so python-can's virtual bus is shared with a spy
that sees every frame the agent sends), and token helpers."""

from __future__ import annotations

import asyncio
import base64
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import can
import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent import config
from agent.supervisor import Agent
from agent.vehicle import dbc


@dataclass
class Key:
    kid: str
    private: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)

    @property
    def public_b64(self) -> str:
        return base64.b64encode(self.private.public_key().public_bytes_raw()).decode()

    def token(
        self,
        vehicle: str,
        command: str,
        params: dict[str, Any] | None = None,
        *,
        ttl: int = 60,
        iat: float | None = None,
        **claims: Any,
    ) -> bytes:
        issued = int(iat if iat is not None else time.time())
        body = {
            "jti": str(uuid.uuid4()),
            "aud": vehicle,
            "iat": issued,
            "exp": issued + ttl,
            "cmd": command,
            "params": params if params is not None else {},
        }
        body.update(claims)
        return jwt.encode(body, self.private, algorithm="EdDSA", headers={"kid": self.kid}).encode()


def trust_entry(key: Key, allow: str = '["*"]', extra: str = "") -> str:
    return (
        f'    - {{kid: {key.kid}, public_key: "{key.public_b64}", allow: {allow}'
        f"{', ' + extra if extra else ''}}}\n"
    )


class Spy:
    """Every frame on the agent's virtual channels, as the car's other ECUs would see them."""

    def __init__(self, channels: list[str]) -> None:
        self.frames: list[can.Message] = []
        self._lock = threading.Lock()
        self._buses = [can.Bus(interface="virtual", channel=c) for c in channels]
        self._notifier = can.Notifier(self._buses, [self._on], timeout=0.1)

    def _on(self, msg: can.Message) -> None:
        with self._lock:
            self.frames.append(msg)

    def count(self, frame_id: int) -> int:
        with self._lock:
            return sum(1 for m in self.frames if m.arbitration_id == frame_id)

    def last(self, frame_id: int) -> can.Message | None:
        with self._lock:
            found = [m for m in self.frames if m.arbitration_id == frame_id]
        return found[-1] if found else None

    def close(self) -> None:
        self._notifier.stop()
        for bus in self._buses:
            bus.shutdown()


class InProcessAgent:
    """`Agent.run()` in a thread with its own event loop."""

    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.agent: Agent | None = None
        self.error: BaseException | None = None

    def start(self) -> None:
        vehicle = dbc.load_vehicle(config.load(self.config_path))
        ready = threading.Event()

        def main() -> None:
            async def go() -> None:
                self._loop = asyncio.get_running_loop()
                self.agent = Agent(vehicle)
                ready.set()
                await self.agent.run()

            try:
                asyncio.run(go())
            except BaseException as exc:  # surfaced by stop()
                self.error = exc
                ready.set()

        self._thread = threading.Thread(target=main, daemon=True)
        self._thread.start()
        ready.wait(10)

    def stop(self) -> None:
        if self._thread is None:
            return
        if self._loop is not None and self.agent is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self.agent.stop_requested.set)
        self._thread.join(15)
        assert not self._thread.is_alive(), "agent did not stop"
        self._thread = None
        if self.error is not None:
            raise self.error


@contextmanager
def agent_running(config_path: Path) -> Iterator[InProcessAgent]:
    agent = InProcessAgent(config_path)
    agent.start()
    try:
        yield agent
    finally:
        agent.stop()
