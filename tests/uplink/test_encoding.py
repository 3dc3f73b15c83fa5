"""Telemetry's encodings: CBOR and zstd carry exactly the JSON message's content, say so in
the MQTT 5 content type, and a daemon configured for them publishes what a back end decodes."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from agent.uplink.encoding import CONTENT_TYPES, TelemetryEncoder, content_type, decode
from agent.uplink.pipeline import telemetry_payload
from agent.vehicle.model import Sample
from tests.support.brokers import Broker, Daemon, running, wait_until
from tests.support.schemas import validate

values = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**53), max_value=2**53),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
samples = st.lists(
    st.builds(
        Sample,
        st.sampled_from(["Vehicle.Speed", "Vehicle.Powertrain.TractionBattery.Range", "Vehicle.X"]),
        st.floats(min_value=1.6e9, max_value=2.2e9),
        values,
    ),
    min_size=1,
    max_size=50,
)


@settings(max_examples=300, deadline=None)
@given(samples=samples, seq=st.integers(min_value=1, max_value=2**40))
def test_every_encoding_carries_exactly_the_json_content(samples: list[Sample], seq: int) -> None:
    plain = telemetry_payload("VIN0000000000000", seq, samples)
    assert content_type(plain) == "application/json"
    expected = json.loads(plain)
    for (encoding, compression), kind in CONTENT_TYPES.items():
        payload = telemetry_payload(
            "VIN0000000000000", seq, samples, TelemetryEncoder(encoding, compression)
        )
        assert decode(payload) == expected, kind
        assert content_type(payload) == kind


def _v5_subscriber(port: int, got: list[tuple[str, bytes, str | None]]) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    lock = threading.Lock()

    def on_message(c: Any, u: Any, msg: mqtt.MQTTMessage) -> None:
        kind = getattr(msg.properties, "ContentType", None) if msg.properties else None
        with lock:
            got.append((msg.topic, bytes(msg.payload), kind))

    client.on_connect = lambda c, *_: c.subscribe("vehicles/+/telemetry", qos=1)
    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client


@pytest.mark.parametrize(
    ("telemetry", "expected"),
    [
        ("  encoding: cbor\n  compression: zstd\n", "application/cbor+zstd"),
        ("", None),  # plain JSON goes without a content type
    ],
)
def test_the_daemon_publishes_the_configured_encoding(
    broker: Broker,
    make_daemon: Callable[..., Daemon],
    telemetry: str,
    expected: str | None,
) -> None:
    daemon = make_daemon(
        broker.port,
        scenario="driving",
        telemetry="  batch_interval_ms: 200\n  state_interval_s: 2\n  health_interval_s: 1\n"
        + telemetry,
    )
    got: list[tuple[str, bytes, str | None]] = []
    client = _v5_subscriber(broker.port, got)
    with running(daemon):
        wait_until(lambda: len(got) >= 5, 30, "five telemetry messages")
    client.loop_stop()
    client.disconnect()
    seqs = []
    for _topic, payload, kind in got:
        assert kind == expected
        body = decode(payload)
        validate("telemetry", body)
        seqs.append(body["seq"])
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))


def test_unused_codecs_are_not_imported(tmp_path: Path) -> None:
    """JSON without compression (the default) loads neither cbor2 nor zstandard."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from agent.uplink.encoding import TelemetryEncoder\n"
        "TelemetryEncoder().encode({'v': 1})\n"
        "print('cbor2' in sys.modules, 'zstandard' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "False"]
