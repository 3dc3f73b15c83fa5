"""Test helpers: a real mosquitto on a free loopback port, an MQTT subscriber, the daemon.

Nothing here is faked: the broker is Debian's mosquitto, the daemon is `python -m agent run`
in its own process, the subscriber is paho (the client aiomqtt is built on).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

MOSQUITTO = shutil.which("mosquitto") or (
    "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
)


def need_mosquitto() -> str:
    """The broker binary; its absence fails the run in CI and skips elsewhere."""
    if MOSQUITTO is None:
        message = "mosquitto is not installed (Debian package 'mosquitto')"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return MOSQUITTO


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Broker:
    """One mosquitto process with its own config file; can be stopped and started again."""

    def __init__(
        self, folder: Path, extra: str = "", *, port: int | None = None, persistent: bool = False
    ) -> None:
        self.binary = need_mosquitto()
        self.folder = folder
        self.port = port or free_port()
        self.extra = extra
        self.conf = folder / f"mosquitto-{self.port}.conf"
        self.log = folder / f"mosquitto-{self.port}.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.persistent = persistent

    def write_conf(self) -> None:
        extra = self.extra.replace("{folder}", str(self.folder))
        if "listener" not in extra:
            extra = f"listener {self.port} 127.0.0.1\nallow_anonymous true\n" + extra
        # Started as root, mosquitto drops to the `mosquitto` user and could not read the
        # test's private temporary folder (certificates, ACLs, log): keep it as it is.
        user = "user root\n" if os.geteuid() == 0 else ""
        # Persistent: sessions and queued messages are saved at shutdown and restored.
        persistence = (
            f"persistence true\npersistence_location {self.folder}/\n"
            if self.persistent
            else "persistence false\n"
        )
        self.conf.write_text(f"{user}{persistence}log_dest file {self.log}\nlog_type all\n{extra}")

    def start(self) -> None:
        self.write_conf()
        with open(self.folder / f"mosquitto-{self.port}.stderr", "ab") as err:
            self._proc = subprocess.Popen(
                [self.binary, "-c", str(self.conf)], stdout=err, stderr=subprocess.STDOUT
            )
        self.starts += 1

        def listening() -> bool:
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.port)) == 0

        try:
            wait_until(listening, 10, f"mosquitto on port {self.port}")
        except AssertionError:
            errors = (self.folder / f"mosquitto-{self.port}.stderr").read_text(errors="replace")
            raise AssertionError(f"mosquitto did not start:\n{errors}") from None

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=10)
            self._proc = None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool
    at: float = field(default_factory=time.monotonic)

    def json(self) -> Any:
        return json.loads(self.payload)


class Subscriber:
    """A paho client in its own network thread, recording everything under `topic`."""

    def __init__(
        self,
        port: int,
        topic: str = "vehicles/#",
        *,
        client_id: str = "",
        clean_session: bool = True,
        **tls: Any,
    ) -> None:
        self.messages: list[Received] = []
        self._lock = threading.Lock()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=clean_session,
            protocol=mqtt.MQTTv311,
        )
        self._client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self._client.on_message = self._on_message
        self._client.reconnect_delay_set(0.1, 0.5)
        if tls:
            self._client.tls_set(**tls)
        self._client.connect("127.0.0.1", port)
        self._client.loop_start()

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(Received(msg.topic, bytes(msg.payload), bool(msg.retain)))

    def on(self, suffix: str) -> list[Received]:
        with self._lock:
            return [m for m in self.messages if m.topic.endswith("/" + suffix)]

    def wait_for(
        self,
        suffix: str,
        predicate: Callable[[Received], bool] = lambda _m: True,
        timeout: float = 15.0,
    ) -> Received:
        found: list[Received] = wait_until(
            lambda: [m for m in self.on(suffix) if predicate(m)], timeout, f"a message on {suffix}"
        )
        return found[0]

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


def retained(port: int, topic: str, timeout: float = 5.0) -> Any:
    """What a new subscriber is handed as the retained message of `topic` (JSON)."""
    sub = Subscriber(port, topic)
    try:
        message = sub.wait_for(topic.rsplit("/", 1)[-1], lambda m: m.retain, timeout=timeout)
        return message.json()
    finally:
        sub.close()


class Daemon:
    """`python -m agent run -c CONFIG` as a child process with its log in a file."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config, self.log = config, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0

    def start(self) -> None:
        self.runs += 1
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "agent", "run", "-c", str(self.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                record = json.loads(line)
                if isinstance(record, dict):
                    out.append(record)
        return out

    def wait_event(self, name: str, timeout: float = 15.0, **match: Any) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            for event in self.events():
                if event.get("event") == name and all(event.get(k) == v for k, v in match.items()):
                    return event
            return None

        result: dict[str, Any] = wait_until(found, timeout, f"log event {name} {match}")
        return result

    def stop(self) -> None:
        if self.alive():
            self.signal(signal.SIGTERM)
            try:
                self.wait(10)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.wait(10)


@contextlib.contextmanager
def running(daemon: Daemon) -> Iterator[Daemon]:
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()


@contextlib.contextmanager
def daemons(tmp_path: Path, config_text: Callable[..., str]) -> Iterator[Callable[..., Daemon]]:
    """A factory of daemons, each with its own folder and config (from `config_text(port,
    folder, **kwargs)`); every one still running is stopped at the end."""
    made: list[Daemon] = []

    def make(port: int, **kwargs: object) -> Daemon:
        folder = tmp_path / f"d{len(made)}"
        folder.mkdir()
        config = folder / "agent.yaml"
        config.write_text(config_text(port, folder, **kwargs))
        daemon = Daemon(config, folder / "agent.log")
        made.append(daemon)
        return daemon

    try:
        yield make
    finally:
        for daemon in made:
            daemon.stop()
