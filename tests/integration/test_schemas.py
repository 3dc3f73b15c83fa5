"""Every payload on every topic against its JSON Schema in docs/schemas/: what the daemon (a
subprocess) really published to a real mosquitto, so the documented contract and the code
cannot drift apart. A negative control shows the check bites when a key goes missing.

Events of the types this run cannot raise quickly are checked where they are raised: storage
in tests/uplink/test_reliability.py, charging and automatic stops in
tests/commands/test_commands.py."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.support.agents import Key, trust_entry
from tests.support.brokers import Broker, Daemon, Subscriber, running, wait_until
from tests.support.configs import daemon_config
from tests.support.schemas import (
    BY_TOPIC,
    FORMATS,
    SCHEMAS,
    errors,
    formats_used,
    schema,
    validate,
)

ALERT = """\
  - name: schema_test_tyre
    raise_when: Vehicle.Chassis.Axle.Row1.Wheel.Left.Tire.Pressure < 400
    severity: info
"""


def _suffix(topic: str, vehicle: str) -> str:
    return topic.removeprefix(f"vehicles/{vehicle}/")


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Any]]:
    """One daemon run's payloads by topic suffix, plus `reply` (the MQTT 5 response topic)."""
    folder = tmp_path_factory.mktemp("schemas")
    broker = Broker(folder)
    broker.start()
    key = Key("fleet-app")
    text = daemon_config(broker.port, folder, vehicle_id="SCHEMA-1")
    text = re.sub(r"  trust: \[\][^\n]*\n", "  trust:\n" + trust_entry(key), text)
    text = re.sub(r"(alerts:[^\n]*\n)", r"\g<1>" + ALERT, text)
    text = re.sub(r"(diagnostics:[^\n]*\n)", r"\g<1>  scan_interval_s: 1\n", text)
    config = folder / "agent.yaml"
    config.write_text(text)
    daemon = Daemon(config, folder / "agent.log")
    sub = Subscriber(broker.port)
    replies: list[Any] = []
    app = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    app.on_message = lambda _c, _u, m: replies.append(json.loads(m.payload))
    app.connect("127.0.0.1", broker.port)
    app.loop_start()
    app.subscribe("backend/schema/#", qos=1)
    requests = [
        key.token("SCHEMA-1", "hvac.start", {"target_temp_c": 21.0}),
        key.token("SCHEMA-1", "hvac.start", {"target_temp_c": 99}),  # BAD_PARAMS
        key.token("SCHEMA-1", "diagnostics.read_dtcs"),
        b"not a token",  # MALFORMED, id null
    ]
    try:
        with running(daemon):
            wait_until(lambda: len(sub.on("health")) >= 2, 20, "two health messages")
            wait_until(lambda: sub.on("state"), 20, "the state")
            for token in requests:
                props = Properties(PacketTypes.PUBLISH)
                props.ResponseTopic = "backend/schema/replies"
                props.CorrelationData = b"schema"
                app.publish(
                    "vehicles/SCHEMA-1/commands/request", token, qos=1, properties=props
                ).wait_for_publish(5)
            finals = ("succeeded", "failed", "timed_out", "rejected")
            wait_until(
                lambda: sum(r["status"] in finals for r in replies) >= len(requests),
                30,
                "every final answer",
            )
            wait_until(
                lambda: {m.json()["type"] for m in sub.on("events")} >= {"alert", "dtc"},
                20,
                "alert and dtc events",
            )
            wait_until(lambda: len(sub.on("telemetry")) >= 2, 20, "telemetry")
    finally:
        app.loop_stop()
        app.disconnect()
        sub.close()
        broker.stop()
    by_topic: dict[str, list[Any]] = {"reply": replies}
    for message in sub.messages:
        suffix = _suffix(message.topic, "SCHEMA-1")
        if suffix in BY_TOPIC:  # not the requests the test itself sent
            by_topic.setdefault(suffix, []).append(message.json())
    return by_topic


def test_every_topic_was_seen(published: dict[str, list[Any]]) -> None:
    assert set(BY_TOPIC) <= set(published), sorted(published)
    assert {e["type"] for e in published["events"]} >= {"alert", "dtc"}
    statuses = {r["status"] for r in published["commands/response"]}
    assert statuses >= {"accepted", "succeeded", "rejected"}
    assert len(published["reply"]) == len(published["commands/response"])


@pytest.mark.parametrize("suffix", [*BY_TOPIC, "reply"])
def test_every_payload_matches_its_schema(published: dict[str, list[Any]], suffix: str) -> None:
    name = BY_TOPIC.get(suffix, "command-response")
    for payload in published[suffix]:
        validate(name, payload)


def test_the_status_payloads_are_the_online_branch(published: dict[str, list[Any]]) -> None:
    for payload in published["status"]:
        if payload["online"]:
            validate("status", payload, "online")


def _required_paths(
    document: dict[str, Any], node: dict[str, Any], payload: Any
) -> list[list[str]]:
    """Every (nested) key the schema requires that this payload has: what removing one of
    them should break."""
    if "$ref" in node:
        node = document["$defs"][node["$ref"].rsplit("/", 1)[-1]]
    found: list[list[str]] = []
    if not isinstance(payload, dict):
        return found
    for key in node.get("required", []):
        if key in payload:
            found.append([key])
            child = node.get("properties", {}).get(key)
            if isinstance(child, dict):
                found += [[key, *rest] for rest in _required_paths(document, child, payload[key])]
    return found


@pytest.mark.parametrize("suffix", ["health", "telemetry", "state", "commands/response"])
def test_removing_any_documented_key_fails_the_check(
    published: dict[str, list[Any]], suffix: str
) -> None:
    """The negative control: the check is not vacuous. Each required key (at any depth)
    removed from a real payload makes it invalid."""
    name = BY_TOPIC[suffix]
    payload = published[suffix][-1]
    document = schema(name)
    paths = _required_paths(document, document, payload)
    assert len(paths) >= 3
    for path in paths:
        broken = copy.deepcopy(payload)
        parent = broken
        for part in path[:-1]:
            parent = parent[part]
        del parent[path[-1]]
        assert errors(name, broken), f"{suffix} without {'.'.join(path)} still validates"


def test_an_undocumented_key_fails_the_check(published: dict[str, list[Any]]) -> None:
    health = copy.deepcopy(published["health"][-1])
    health["dropped"]["dropped_gremlins"] = 0
    assert errors("health", health)
    bus = next(iter(health["buses"]))
    del health["dropped"]["dropped_gremlins"]
    health["buses"][bus]["gremlins"] = 0
    assert errors("health", health)


def test_every_bus_reports_the_frames_the_kernel_dropped(published: dict[str, list[Any]]) -> None:
    """`rx_overflows` is there for every bus from the first message, zeros included (an
    in-process `virtual` bus has no socket to drop from)."""
    for health in published["health"]:
        assert {bus["rx_overflows"] for bus in health["buses"].values()} == {0}


def test_the_health_example_in_the_docs_names_the_schema_keys() -> None:
    """docs/mqtt.md's table has a row for every key of the health schema."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "mqtt.md").read_text()
    text = text[text.index("## `P/health`") : text.index("## `P/state`")]
    document = schema("health")
    keys = set(document["properties"])
    for definition in document["$defs"].values():
        keys |= set(definition["properties"])
    keys -= {"reasons"}  # listed as "every reason code"
    missing = sorted(k for k in keys if not re.search(rf"[`.]{k}[`.]", text))
    assert not missing, f"docs/mqtt.md does not describe: {missing}"


def test_formats_are_checked_not_just_named() -> None:
    """jsonschema passes a `format` unchecked unless its checker is installed: a date-time
    that is no RFC 3339 time (a naive one, a date alone, words) must fail the check, and every
    format the schemas name has a checker (tests/support/schemas.py refuses the rest)."""
    used: set[str] = set()
    for path in sorted(SCHEMAS.glob("*.schema.json")):
        used |= formats_used(schema(path.name.removesuffix(".schema.json")))
    assert "date-time" in used
    assert used <= set(FORMATS.checkers)
    event = {
        "v": 1,
        "seq": 7,
        "type": "charging",
        "name": "limit_started",
        "ts": 1795575465.7,
        "data": {
            "start": "2026-11-23T17:00:00+00:00",
            "end": "2026-11-23T18:30:00.250000+01:00",
            "max_power_kw": 3.7,
        },
    }
    validate("events", event)  # the positive control: what the agent's isoformat() writes
    for wrong in ("2026-11-23T17:00:00", "2026-11-23", "at five", "2026-13-23T17:00:00Z"):
        broken = copy.deepcopy(event)
        broken["data"]["start"] = wrong
        assert errors("events", broken), f"{wrong!r} passed as a date-time"
