"""SIGHUP: a key added to the configuration is trusted for the next command; a broken
configuration is refused and the running one stays, with no telemetry lost either way."""

from __future__ import annotations

import re
import signal
from collections.abc import Callable

import jwt
import paho.mqtt.publish as publish

from tests.support.agents import Key, trust_entry
from tests.support.brokers import Broker, Daemon, Subscriber, running, wait_until


def test_sighup_reloads_keys_and_refuses_a_broken_config(
    broker: Broker, make_daemon: Callable[..., Daemon]
) -> None:
    old, new = Key("fleet-app"), Key("fleet-app-2027")
    daemon = make_daemon(broker.port, scenario="driving", vehicle_id="RELOAD-1")
    original = re.sub(
        r"  trust: \[\][^\n]*\n", "  trust:\n" + trust_entry(old), daemon.config.read_text()
    )
    daemon.config.write_text(original)
    sub = Subscriber(broker.port)

    def run(key: Key, *, trusted: bool = True) -> dict[str, object]:
        token = key.token("RELOAD-1", "state.snapshot")
        jti = jwt.decode(token, options={"verify_signature": False})["jti"]
        publish.single("vehicles/RELOAD-1/commands/request", token, qos=1, port=broker.port)
        # An untrusted token's answer carries no id (its jti cannot be believed).
        wanted = jti if trusted else None
        return sub.wait_for(
            "commands/response",
            lambda m: m.json()["id"] == wanted and m.json()["status"] != "accepted",
            timeout=15,
        ).json()

    with running(daemon):
        daemon.wait_event("mqtt_connected")
        assert run(new, trusted=False)["reason"] == "UNKNOWN_KEY"

        daemon.config.write_text(original.replace("  trust:\n", "  trust:\n" + trust_entry(new)))
        daemon.signal(signal.SIGHUP)
        reloaded = daemon.wait_event("config_reloaded")
        assert reloaded["trusted_keys"] == 2 and reloaded["needs_restart_for"] == []
        assert run(new)["status"] == "succeeded"

        daemon.config.write_text(
            original.replace("source: VCU_VehicleSpeed", "source: VCU_NoSuchSignal")
        )
        daemon.signal(signal.SIGHUP)
        failed = daemon.wait_event("config_reload_failed")
        assert failed["problems"] == 1
        problem = daemon.wait_event("config_reload_problem")["problem"]
        assert "signals." in problem and "VCU_NoSuchSignal" in problem
        assert daemon.alive()
        assert run(new)["status"] == "succeeded"  # the running configuration is intact
        assert run(old)["status"] == "succeeded"
        seqs_then = [m.json()["seq"] for m in sub.on("telemetry")]
        wait_until(lambda: len(sub.on("telemetry")) > len(seqs_then) + 3, 10, "more telemetry")
    sub.close()
    seqs = [m.json()["seq"] for m in sub.on("telemetry")]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # nothing lost across two reloads
