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
from datetime import UTC, datetime
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
    ("Battery temperature", "Vehicle.Powertrain.TractionBattery.Temperature.Average", "{:.1f} °C"),
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

# A hot afternoon: plugged in with a warm cabin (the console pre-conditions it with a signed
# hvac.start) and a warm pack whose coolant pump stutters from 5 s to 12 s (the pack heats by
# 1 degC a second while charging, then cools as fast: the campaign the console applies fires
# on it), then a drive, then parked and plugged in again. Enough happens to watch.
DEMO_SCENARIO = Scenario(
    mode="plugged_in",
    initial={"soc": 64.0, "cabin_temp": 31.0, "exterior_temp": 29.0, "pack_temp": 36.0},
    tyre_leak_bar_per_h={"rear_left": 0.6},
    events=[
        Event(at_s=5, set={"pack_heating_c_per_min": 60}),
        Event(at_s=12, set={"pack_heating_c_per_min": -60}),
        Event(at_s=19, set={"pack_heating_c_per_min": 0}),
        Event(at_s=45, mode="driving"),
        Event(at_s=120, mode="parked"),
        Event(at_s=135, mode="plugged_in"),
    ],
)
DEMO_KID = "demo-console"
DEMO_TARGET_C = 21.0
SEND_AFTER_S = 4.0
# The fleet's telemetry team, with a key of its own that may only send campaigns: what a
# back end does to learn about a failing pump (docs/campaigns.md). Windows short enough for
# `--duration 20`: applied at the first P/state (~1 s), triggered ~10 s, published ~14 s.
TEAM_KID = "demo-telemetry-team"
PACK_TEMP = "Vehicle.Powertrain.TractionBattery.Temperature.Average"
DEMO_CAMPAIGN: dict[str, Any] = {
    "id": "battery-heat",
    "version": 1,
    "signals": [
        {"path": PACK_TEMP, "min_interval_ms": 0, "max_samples": 200},
        {
            "path": "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current",
            "min_interval_ms": 1000,
            "max_samples": 20,
        },
    ],
    "trigger": {
        "condition": f"avg({PACK_TEMP}, 2) > 40",
        "mode": "rising_edge",
        "min_interval_s": 600,
    },
    "pre_trigger_s": 5,
    "post_trigger_s": 3,
    "priority": 2,
}


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
        self.campaign = "[dim]…[/dim]"
        self.campaign_statuses: list[str] = []
        self.campaign_command_id: str | None = None
        self.captures: list[dict[str, Any]] = []
        self.state_seen = asyncio.Event()
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
        table.add_row("Campaign", self.campaign)
        return table

    def capture_summary(self, capture: dict[str, Any]) -> str:
        """A P/campaigns message in a line: how many samples, the window around the trigger,
        and the pack temperature from its start to its end."""
        samples = capture.get("samples", [])
        trigger = float(capture.get("trigger_ts", 0.0))
        if not samples:
            return f"{capture.get('campaign')}: an empty capture"
        times = [float(s["ts"]) - trigger for s in samples]
        temps = [s["value"] for s in samples if s["path"] == PACK_TEMP]
        pack = f", pack {temps[0]:.1f} → {temps[-1]:.1f} °C" if temps else ""
        return (
            f"{capture.get('campaign')} v{capture.get('version')}: {len(samples)} samples "
            f"({len(temps)} of the pack temperature), {min(times):+.1f} s to "
            f"{max(times):+.1f} s around its trigger{pack}, seq {capture.get('seq')}"
        )

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
            self.state_seen.set()
        elif "/campaigns/" in topic:
            self.captures.append(body)
            self.campaign = "[green]captured[/green] " + self.capture_summary(body)
        elif (
            topic.endswith("/events")
            and body.get("type") == "campaign"
            and body.get("name") == "triggered"
            and not self.captures
        ):
            temp = self.values.get(PACK_TEMP)
            at = f" at {float(temp):.1f} °C" if isinstance(temp, int | float) else ""
            self.campaign = f"battery-heat: [yellow]triggered[/yellow]{at}, capturing…"
        elif topic.endswith("/commands/response") and body.get("id") == self.campaign_command_id:
            status = str(body.get("status"))
            if body.get("reason"):
                status += f" ({body['reason']}: {body.get('detail')})"
            self.campaign_statuses.append(status)
            if not self.captures:
                self.campaign = "campaign.apply battery-heat: " + " → ".join(self.campaign_statuses)
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


async def _send_campaign(
    port: int, prefix: str, vehicle_id: str, key: Ed25519PrivateKey, dashboard: Dashboard
) -> None:
    """What the fleet's telemetry team does: a signed campaign.apply, once the car answers
    (its first P/state comes after it subscribed to its commands)."""
    await dashboard.state_seen.wait()
    campaign = dict(DEMO_CAMPAIGN)
    campaign["expires"] = datetime.fromtimestamp(time.time() + 86_400, UTC).isoformat()
    token = sign(
        key,
        kid=TEAM_KID,
        vehicle=vehicle_id,
        command="campaign.apply",
        params={"campaign": campaign},
        ttl_s=60,
    )
    dashboard.campaign_command_id = jwt.decode(token, options={"verify_signature": False})["jti"]
    dashboard.campaign = "campaign.apply battery-heat: sent"
    async with aiomqtt.Client("127.0.0.1", port, identifier="demo-team") as client:
        await client.publish(f"{prefix}/commands/request", token.encode(), qos=1)


def _demo_vehicle(
    cfg: Path, port: int, state_dir: Path, public_key: str, team_key: str
) -> dbc.Vehicle:
    loaded = config.load(cfg)
    s = loaded.settings
    trust = [
        TrustedKey(kid=DEMO_KID, public_key=public_key, allow=["hvac.*", "state.*"]),
        TrustedKey(kid=TEAM_KID, public_key=team_key, allow=["campaign.*"]),
    ]
    settings = s.model_copy(
        update={
            "commands": s.commands.model_copy(update={"trust": trust}),
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
            key, team = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
            public = base64.b64encode(key.public_key().public_bytes_raw()).decode()
            team_public = base64.b64encode(team.public_key().public_bytes_raw()).decode()
            vehicle = _demo_vehicle(cfg, port, state_dir, public, team_public)
            vehicle_id = vehicle.loaded.settings.vehicle_id
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
                        senders = [
                            tg.create_task(
                                _send_hvac_start(port, dashboard.prefix, vehicle_id, key, dashboard)
                            ),
                            tg.create_task(
                                _send_campaign(port, dashboard.prefix, vehicle_id, team, dashboard)
                            ),
                        ]
                        if duration is not None:
                            loop = asyncio.get_running_loop()
                            loop.call_later(duration, agent.stop_requested.set)
                        await agent.run()
                        # The agent's goodbye (online: false) is the last thing to show.
                        await wait_event(dashboard.said_goodbye, 3.0)
                        follower.cancel()
                        for sender in senders:
                            sender.cancel()
            finally:
                await broker.shutdown()
        if not console.is_terminal:
            console.print(dashboard.table())
        first = dashboard.first_value_after
        # The closing lines are for scripts and CI to read: one line each, however long.
        lines = []
        if dashboard.command_statuses:
            lines.append(f"demo: hvac.start {' → '.join(dashboard.command_statuses)}")
        if dashboard.campaign_statuses:
            lines.append(f"demo: campaign.apply {' → '.join(dashboard.campaign_statuses)}")
        lines += [f"demo: campaign {dashboard.capture_summary(c)}" for c in dashboard.captures]
        lines.append(
            f"demo: {dashboard.telemetry} telemetry messages, seq {dashboard.first_seq}.."
            f"{dashboard.last_seq}, "
            f"first values after {first:.1f} s"
            if first is not None
            else "demo: no values seen"
        )
        for line in lines:
            console.print(line, soft_wrap=True)
    return 0 if dashboard.telemetry > 0 else 1


def run_demo(cfg: Path | None, duration: float | None) -> int:
    console = Console()
    return asyncio.run(_run(cfg or source_config(), duration, console))
