"""Under attack: 2,000 invalid tokens in a burst cost bounded CPU, answers are rate-limited,
telemetry keeps flowing, and a valid command sent right after still executes."""

from __future__ import annotations

import base64
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

import jwt
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from tests.support.agents import Key, trust_entry
from tests.support.brokers import Broker, Daemon, Subscriber, running, wait_until


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime


def test_flood_of_invalid_tokens(
    broker: Broker, make_daemon: Callable[..., Daemon], report: Callable[[str], None]
) -> None:
    key = Key("fleet-app")
    daemon = make_daemon(broker.port, scenario="driving")
    text = daemon.config.read_text()
    text = re.sub(r"  trust: \[\][^\n]*\n", "  trust:\n" + trust_entry(key), text)
    daemon.config.write_text(text)
    vehicle = re.search(r"vehicle_id: (\S+)", text)[1]  # type: ignore[index]
    sub = Subscriber(broker.port)
    forged_sig = base64.urlsafe_b64encode(b"\x00" * 64).rstrip(b"=")
    with running(daemon):
        daemon.wait_event("mqtt_connected")
        wait_until(lambda: len(sub.on("telemetry")) >= 2, 15, "telemetry before the flood")
        assert daemon.proc is not None
        cpu_before = _cpu_seconds(daemon.proc.pid)
        seq_before = sub.on("telemetry")[-1].json()["seq"]
        flooder = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        flooder.connect("127.0.0.1", broker.port)
        flooder.loop_start()
        topic = f"vehicles/{vehicle}/commands/request"
        started = time.monotonic()
        for i in range(2000):
            # Each costs the car a full signature check: the trusted kid, a forged signature.
            forged = key.token(vehicle, "hvac.start", {"target_temp_c": 20 + i % 8})
            h, p, _ = forged.split(b".")
            flooder.publish(topic, b".".join([h, p, forged_sig]), qos=1)
        valid = key.token(vehicle, "state.snapshot")
        info = flooder.publish(topic, valid, qos=1)
        info.wait_for_publish(30)
        burst_s = time.monotonic() - started
        jti = jwt.decode(valid, options={"verify_signature": False})["jti"]
        done = sub.wait_for(
            "commands/response",
            lambda m: m.json()["id"] == jti and m.json()["status"] == "succeeded",
            timeout=30,
        ).json()
        cpu = _cpu_seconds(daemon.proc.pid) - cpu_before
        time.sleep(2.0)
        seq_after = sub.on("telemetry")[-1].json()["seq"]
        health = sub.wait_for(
            "health", lambda m: m.json()["commands"].get("requests", 0) >= 2001
        ).json()
        flooder.loop_stop()
        flooder.disconnect()
    sub.close()
    rejections = [m.json() for m in sub.on("commands/response") if m.json()["status"] == "rejected"]
    commands = health["commands"]
    report(
        f"flood test: 2000 forged tokens in {burst_s:.2f} s; daemon CPU during the burst "
        f"{cpu:.2f} s ({cpu / 2001 * 1e6:.0f} µs per request); {len(rejections)} rejections "
        f"answered, {commands['suppressed']} suppressed by the rate limit; telemetry seq "
        f"{seq_before} -> {seq_after}"
    )
    assert done["status"] == "succeeded"
    assert commands["reasons"]["BAD_SIGNATURE"] == 2000
    assert commands["suppressed"] >= 2000 - 200  # answers are bounded, the rest counted
    assert len(rejections) + commands["suppressed"] == 2000
    assert seq_after > seq_before  # telemetry kept flowing
    assert cpu < 10.0  # bounded: a few hundred microseconds a token on this machine
    assert commands.get("frames_sent", {}) == {}  # nothing forged reached the bus
