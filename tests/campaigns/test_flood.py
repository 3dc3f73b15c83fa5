"""Under attack with the largest tokens the car accepts: a burst of forged 60 KiB
`campaign.apply` tokens (a trusted kid, a forged signature) and oversized ones costs bounded
CPU, telemetry keeps flowing meanwhile, and a valid campaign sent right after is applied."""

from __future__ import annotations

import base64
import itertools
import re
import time
from collections.abc import Callable

import jwt
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from tests.commands.test_flood import _cpu_seconds
from tests.support.agents import Key, trust_entry
from tests.support.brokers import Broker, Daemon, Subscriber, running, wait_until

TEMP = "Vehicle.Powertrain.TractionBattery.Temperature.Average"


def _campaign(padding: int) -> dict[str, object]:
    return {
        "id": "flood",
        "version": 1,
        "expires": "2099-01-01T00:00:00Z",
        "signals": [{"path": TEMP}],
        "trigger": {"condition": f"{TEMP} > 1000"},
        # A long (valid) description of the condition is how a real token gets this big.
        "note": "x" * padding,
    }


def test_flood_of_large_forged_campaign_tokens(
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
    big = key.token(vehicle, "campaign.apply", {"campaign": _campaign(45_500)})
    h, p, _ = big.split(b".")
    forged = b".".join([h, p, forged_sig])
    oversized = b"a" * (64 * 1024 + 1)
    assert 60_000 < len(forged) <= 64 * 1024
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
        for i in range(400):
            flooder.publish(topic, oversized if i % 4 == 3 else forged, qos=1)
        body = _campaign(0)
        del body["note"]
        valid = key.token(vehicle, "campaign.apply", {"campaign": body})
        flooder.publish(topic, valid, qos=1).wait_for_publish(60)
        burst_s = time.monotonic() - started
        jti = jwt.decode(valid, options={"verify_signature": False})["jti"]
        applied = sub.wait_for(
            "commands/response",
            lambda m: m.json()["id"] == jti and m.json()["status"] == "succeeded",
            timeout=60,
        )
        cpu = _cpu_seconds(daemon.proc.pid) - cpu_before
        # Telemetry kept coming while the car worked through the burst (until the valid
        # campaign's answer): no gap of more than a second and a half between messages.
        arrivals = [m.at for m in sub.on("telemetry") if started <= m.at <= applied.at]
        gap = max(b - a for a, b in itertools.pairwise([started, *arrivals, applied.at]))
        time.sleep(2.0)
        seq_after = sub.on("telemetry")[-1].json()["seq"]
        flooder.loop_stop()
        flooder.disconnect()
    sub.close()
    rejections = [m.json() for m in sub.on("commands/response") if m.json()["status"] == "rejected"]
    assert rejections and {r["reason"] for r in rejections} <= {"BAD_SIGNATURE", "MALFORMED"}
    assert seq_after > seq_before + 2
    assert gap < 1.5, f"telemetry stalled for {gap:.2f} s during the burst"
    mb = (300 * len(forged) + 100 * len(oversized)) / 1e6
    report(
        f"campaign flood test: 300 forged 60 KiB campaign tokens and 100 oversized in "
        f"{burst_s:.2f} s ({mb:.0f} MB); daemon CPU {cpu:.2f} s ({cpu / 401 * 1e6:.0f} µs a "
        f"request); longest telemetry gap meanwhile {gap:.2f} s over {applied.at - started:.2f} s; "
        f"the valid campaign after it succeeded; telemetry seq {seq_before} -> {seq_after}"
    )
