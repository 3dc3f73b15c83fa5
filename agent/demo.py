"""`vehicle-agent demo`: the whole system on one machine, nothing to install.

An embedded MQTT broker (amqtt) on a free port of 127.0.0.1, the reference vehicle simulator
on python-can's virtual bus, the agent itself, and a live console (rich) that subscribes
through the broker exactly as a fleet back end would and shows the car updating in place.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import logging
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import aiomqtt
import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from rich.console import Console
from rich.live import Live
from rich.table import Table

from agent import config, logs
from agent.aio import wait_event
from agent.commands.keys import sign
from agent.config import TrustedKey
from agent.errors import AgentError
from agent.sim.scenario import Event, Scenario
from agent.supervisor import Agent
from agent.vehicle import dbc

ROWS: list[tuple[str, str, str]] = [
    ("State of charge", "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current", "{:.1f} %"),
    ("Range", "Vehicle.Powertrain.TractionBattery.Range", "km"),
    ("Speed", "Vehicle.Speed", "{:.1f} km/h"),
    ("Battery power", "Vehicle.Powertrain.TractionBattery.CurrentPower", "kw"),  # computed
    ("Cabin temperature", "Vehicle.Cabin.HVAC.AmbientAirTemperature", "{:.1f} °C"),
    ("Target temperature", "Vehicle.Cabin.HVAC.Station.Row1.Driver.Temperature", "{:.1f} °C"),
    ("Climate (A/C)", "Vehicle.Cabin.HVAC.IsAirConditioningActive", "onoff"),
    (
        "Cable connected",
        "Vehicle.Powertrain.TractionBattery.Charging.ChargingPort.AnyPosition.IsChargingCableConnected",
        "yesno",
    ),
    ("Charging", "Vehicle.Powertrain.TractionBattery.Charging.IsCharging", "yesno"),
    ("Tyre front left", "Vehicle.Chassis.Axle.Row1.Wheel.Left.Tire.Pressure", "{:.0f} kPa"),
    ("Tyre front right", "Vehicle.Chassis.Axle.Row1.Wheel.Right.Tire.Pressure", "{:.0f} kPa"),
    ("Tyre rear left", "Vehicle.Chassis.Axle.Row2.Wheel.Left.Tire.Pressure", "{:.0f} kPa"),
    ("Tyre rear right", "Vehicle.Chassis.Axle.Row2.Wheel.Right.Tire.Pressure", "{:.0f} kPa"),
    ("Service in", "Vehicle.Service.DistanceToService", "{:.0f} km"),
    ("Odometer", "Vehicle.TraveledDistance", "km"),  # VSS metres, shown in km
]

# A hot afternoon: parked with a warm cabin (the console pre-conditions it with a signed
# hvac.start), then a drive, then parked and plugged in. Enough happens to watch.
DEMO_SCENARIO = Scenario(
    mode="parked",
    initial={"soc": 64.0, "cabin_temp": 31.0, "exterior_temp": 29.0},
    tyre_leak_bar_per_h={"rear_left": 0.6},
    events=[
        Event(at_s=45, mode="driving"),
        Event(at_s=120, mode="parked"),
        Event(at_s=135, mode="plugged_in"),
    ],
)
DEMO_KID = "demo-console"
DEMO_TARGET_C = 21.0
SEND_AFTER_S = 4.0


def source_config() -> Path:
    """config/demo.yaml of the source checkout this package runs from."""
    path = Path(__file__).resolve().parent.parent / "config" / "demo.yaml"
    if not path.exists():
        raise AgentError(
            f"{path} not found: run the demo from a source checkout (make demo), or pass -c FILE"
        )
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _render(name: str, fmt: str, value: Any) -> str:
    if value is None:
        return "[dim]…[/dim]"
    if fmt == "onoff":
        return "[green]on[/green]" if value else "off"
    if fmt == "yesno":
        return "[green]yes[/green]" if value else "no"
    if fmt == "kw":  # VSS watts, shown in kW
        return f"{float(value) / 1000:+.1f} kW"
    if fmt == "km":
        return f"{float(value) / 1000:.0f} km"
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


class Dashboard:
    """What a back end would see: the car's values, from the broker."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.values: dict[str, Any] = {}
        self.telemetry = 0
        self.first_seq = 0
        self.last_seq = 0
        self.online: bool | None = None
        self.command = "[dim]…[/dim]"
        self.command_statuses: list[str] = []
        self.command_id: str | None = None
        self.first_value_after: float | None = None
        self.said_goodbye = asyncio.Event()
        self._started = time.monotonic()

    def table(self) -> Table:
        status = {
            None: "[dim]waiting[/dim]",
            True: "[green]online[/green]",
            False: "[red]offline[/red]",
        }[self.online]
        table = Table(
            title=f"vehicle-agent demo · {self.prefix} · {status}",
            caption=f"telemetry messages {self.telemetry} · last seq {self.last_seq}",
        )
        table.add_column("signal")
        table.add_column("value", justify="right")
        for label, path, fmt in ROWS:
            table.add_row(label, _render(label, fmt, self.values.get(path)))
        table.add_row("Signed command", self.command)
        return table

    def take(self, topic: str, payload: bytes) -> None:
        try:
            body = json.loads(payload)
        except json.JSONDecodeError:
            return
        if topic.endswith("/telemetry"):
            self.telemetry += 1
            self.last_seq = int(body.get("seq", 0))
            self.first_seq = self.first_seq or self.last_seq
            for sample in body.get("samples", []):
                self.values[sample["path"]] = sample["value"]
        elif topic.endswith("/state"):
            self.values.update(body.get("values", {}))
        elif topic.endswith("/commands/response") and body.get("id") == self.command_id:
            status = str(body.get("status"))
            if body.get("reason"):
                status += f" ({body['reason']})"
            self.command_statuses.append(status)
            colour = "green" if status == "succeeded" else "yellow"
            shown = [*self.command_statuses[:-1], f"[{colour}]{status}[/{colour}]"]
            self.command = f"hvac.start {DEMO_TARGET_C:g} °C: " + " → ".join(shown)
        elif topic.endswith("/status"):
            self.online = bool(body.get("online"))
            if not self.online:
                self.said_goodbye.set()
        if self.first_value_after is None and self.values:
            self.first_value_after = time.monotonic() - self._started

    async def follow(self, port: int, live: Live | None) -> None:
        while True:
            try:
                async with aiomqtt.Client("127.0.0.1", port, identifier="demo-console") as client:
                    await client.subscribe(f"{self.prefix}/#", qos=1)
                    async for message in client.messages:
                        payload = message.payload
                        if isinstance(payload, bytes | bytearray):
                            self.take(str(message.topic), bytes(payload))
                            if live is not None:
                                live.update(self.table())
            except aiomqtt.MqttError:
                await asyncio.sleep(0.5)


async def _send_hvac_start(
    port: int, prefix: str, vehicle_id: str, key: Ed25519PrivateKey, dashboard: Dashboard
) -> None:
    """What a driver's phone does through the back end: a signed hvac.start."""
    await asyncio.sleep(SEND_AFTER_S)
    token = sign(
        key,
        kid=DEMO_KID,
        vehicle=vehicle_id,
        command="hvac.start",
        params={"target_temp_c": DEMO_TARGET_C, "duration_min": 15},
        ttl_s=60,
    )
    dashboard.command_id = jwt.decode(token, options={"verify_signature": False})["jti"]
    dashboard.command = "hvac.start: sent"
    async with aiomqtt.Client("127.0.0.1", port, identifier="demo-phone") as client:
        await client.publish(f"{prefix}/commands/request", token.encode(), qos=1)


def _demo_vehicle(cfg: Path, port: int, state_dir: Path, public_key: str) -> dbc.Vehicle:
    loaded = config.load(cfg)
    s = loaded.settings
    trust = TrustedKey(kid=DEMO_KID, public_key=public_key, allow=["hvac.*", "state.*"])
    settings = s.model_copy(
        update={
            "commands": s.commands.model_copy(update={"trust": [trust]}),
            # amqtt speaks MQTT 3.1.1.
            "mqtt": s.mqtt.model_copy(
                update={"host": "127.0.0.1", "port": port, "protocol": "3.1.1", "tls": None}
            ),
            "storage": s.storage.model_copy(update={"path": state_dir / "outbox.db"}),
            "simulator": s.simulator.model_copy(update={"enabled": True}),
        }
    )
    return dbc.load_vehicle(dataclasses.replace(loaded, settings=settings))


async def _run(cfg: Path, duration: float | None, console: Console) -> int:
    from amqtt.broker import Broker

    for noisy in ("amqtt", "transitions", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    port = _free_port()
    broker = Broker(
        {
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
            },
        }
    )
    await broker.start()
    with tempfile.TemporaryDirectory(prefix="vehicle-agent-demo-") as tmp:
        state_dir = Path(tmp)
        log_path = state_dir / "agent.log"
        with open(log_path, "w", encoding="utf-8") as log_file:  # noqa: ASYNC230 - once, at start
            logs.configure("info", "json", stream=log_file)
            key = Ed25519PrivateKey.generate()
            public = base64.b64encode(key.public_key().public_bytes_raw()).decode()
            vehicle = _demo_vehicle(cfg, port, state_dir, public)
            agent = Agent(vehicle, scenario=DEMO_SCENARIO)
            dashboard = Dashboard(vehicle.loaded.settings.topic_prefix)
            console.print(
                f"broker 127.0.0.1:{port} · simulator on python-can virtual bus · "
                f"subscribe with: mosquitto_sub -p {port} -t '{dashboard.prefix}/#' -v"
            )
            live_ctx = (
                Live(dashboard.table(), console=console, refresh_per_second=4)
                if console.is_terminal
                else contextlib.nullcontext(None)
            )
            try:
                with live_ctx as live:
                    async with asyncio.TaskGroup() as tg:
                        follower = tg.create_task(dashboard.follow(port, live))
                        sender = tg.create_task(
                            _send_hvac_start(
                                port,
                                dashboard.prefix,
                                vehicle.loaded.settings.vehicle_id,
                                key,
                                dashboard,
                            )
                        )
                        if duration is not None:
                            loop = asyncio.get_running_loop()
                            loop.call_later(duration, agent.stop_requested.set)
                        await agent.run()
                        # The agent's goodbye (online: false) is the last thing to show.
                        await wait_event(dashboard.said_goodbye, 3.0)
                        follower.cancel()
                        sender.cancel()
            finally:
                await broker.shutdown()
        if not console.is_terminal:
            console.print(dashboard.table())
        first = dashboard.first_value_after
        if dashboard.command_statuses:
            console.print(f"demo: hvac.start {' → '.join(dashboard.command_statuses)}")
        console.print(
            f"demo: {dashboard.telemetry} telemetry messages, seq {dashboard.first_seq}.."
            f"{dashboard.last_seq}, "
            f"first values after {first:.1f} s"
            if first is not None
            else "demo: no values seen"
        )
    return 0 if dashboard.telemetry > 0 else 1


def run_demo(cfg: Path | None, duration: float | None) -> int:
    console = Console()
    return asyncio.run(_run(cfg or source_config(), duration, console))
