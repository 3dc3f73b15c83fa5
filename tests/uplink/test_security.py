"""TLS, mutual TLS, passwords and ACLs against a real mosquitto: what works, and that what
is refused is logged clearly while the daemon keeps running (no crash loop)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.brokers import (
    Broker,
    Daemon,
    Subscriber,
    free_port,
    port_open,
    running,
    wait_until,
)
from tests.support.certs import CertificateAuthority


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, object]:
    ca = CertificateAuthority(tmp_path, "fleet")
    server = ca.issue("broker", server=True)
    client = ca.issue("TEST-car", server=False)
    other = CertificateAuthority(tmp_path, "other")
    return {"ca": ca, "server": server, "client": client, "other": other}


def _tls_broker(
    broker_factory: Callable[..., Broker], pki: dict[str, object], *, require_cert: bool
) -> tuple[Broker, int]:
    tls_port, plain_port = free_port(), free_port()
    ca, server = pki["ca"], pki["server"]
    extra = (
        f"allow_anonymous true\n"
        f"listener {tls_port} 127.0.0.1\n"
        f"cafile {ca.cert_path}\ncertfile {server.cert}\nkeyfile {server.key}\n"  # type: ignore[attr-defined]
        f"require_certificate {'true' if require_cert else 'false'}\n"
        f"listener {plain_port} 127.0.0.1\n"
    )
    broker = broker_factory(extra, port=tls_port)
    # mosquitto opens its listeners one after the other: wait for the plain one as well.
    wait_until(lambda: port_open(plain_port), 10, f"mosquitto on port {plain_port}")
    return broker, plain_port


def _still_running(daemon: Daemon, seconds: float = 3.0) -> None:
    time.sleep(seconds)
    assert daemon.alive(), daemon.log.read_text()[-2000:]


def test_tls_with_the_test_ca(
    broker_factory: Callable[..., Broker],
    make_daemon: Callable[..., Daemon],
    pki: dict[str, object],
) -> None:
    broker, plain = _tls_broker(broker_factory, pki, require_cert=False)
    sub = Subscriber(plain)
    daemon = make_daemon(broker.port, mqtt_extra=f"  tls:\n    ca: {pki['ca'].cert_path}\n")  # type: ignore[attr-defined]
    with running(daemon):
        daemon.wait_event("mqtt_connected")
        first = daemon.wait_event("outbox_created")["seq_from"]  # a new outbox: the clock
        assert sub.wait_for("telemetry").json()["seq"] == first
    sub.close()


def test_tls_with_a_wrong_ca_is_refused_clearly(
    broker_factory: Callable[..., Broker],
    make_daemon: Callable[..., Daemon],
    pki: dict[str, object],
) -> None:
    broker, _ = _tls_broker(broker_factory, pki, require_cert=False)
    daemon = make_daemon(broker.port, mqtt_extra=f"  tls:\n    ca: {pki['other'].cert_path}\n")  # type: ignore[attr-defined]
    with running(daemon):
        event = daemon.wait_event("mqtt_tls_failed")
        assert "CERTIFICATE_VERIFY_FAILED" in event["error"]
        assert "mqtt.tls" in event["hint"]
        _still_running(daemon)
        assert not any(e.get("event") == "mqtt_connected" for e in daemon.events())


def test_mutual_tls_with_a_client_certificate(
    broker_factory: Callable[..., Broker],
    make_daemon: Callable[..., Daemon],
    pki: dict[str, object],
) -> None:
    broker, plain = _tls_broker(broker_factory, pki, require_cert=True)
    client = pki["client"]
    sub = Subscriber(plain)
    tls = (
        f"  tls:\n    ca: {pki['ca'].cert_path}\n"  # type: ignore[attr-defined]
        f"    cert: {client.cert}\n    key: {client.key}\n"  # type: ignore[attr-defined]
    )
    daemon = make_daemon(broker.port, mqtt_extra=tls)
    with running(daemon):
        daemon.wait_event("mqtt_connected")
        sub.wait_for("telemetry")
    sub.close()


def test_mutual_tls_without_a_client_certificate_is_refused(
    broker_factory: Callable[..., Broker],
    make_daemon: Callable[..., Daemon],
    pki: dict[str, object],
) -> None:
    broker, _ = _tls_broker(broker_factory, pki, require_cert=True)
    daemon = make_daemon(broker.port, mqtt_extra=f"  tls:\n    ca: {pki['ca'].cert_path}\n")  # type: ignore[attr-defined]
    with running(daemon):
        event = daemon.wait_event("mqtt_tls_failed")
        assert "mqtt.tls" in event["hint"]
        _still_running(daemon)
        assert not any(e.get("event") == "mqtt_connected" for e in daemon.events())


def test_wrong_password_is_logged_and_retried_slowly(
    broker_factory: Callable[..., Broker], make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    passwords = tmp_path / "broker-passwords"
    subprocess.run(
        ["mosquitto_passwd", "-b", "-c", str(passwords), "car", "right-secret"], check=True
    )
    port = free_port()
    broker = broker_factory(
        f"listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {passwords}\n",
        port=port,
    )
    secret = tmp_path / "car-password"
    secret.write_text("wrong-secret\n")
    daemon = make_daemon(broker.port, mqtt_extra=f"  username: car\n  password_file: {secret}\n")
    with running(daemon):
        event = daemon.wait_event("mqtt_auth_refused")
        assert event["retry_s"] >= 45  # slow: not a hammering loop
        assert "password_file" in event["hint"]
        _still_running(daemon)
        assert sum(e.get("event") == "mqtt_auth_refused" for e in daemon.events()) == 1

    secret.write_text("right-secret\n")
    with running(daemon):
        daemon.wait_event("mqtt_connected")


def test_acl_forbidding_the_vehicle_topics_is_a_clear_error(
    broker_factory: Callable[..., Broker], make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    acl = tmp_path / "acl"
    acl.write_text("topic read $SYS/#\n")  # anonymous clients may do nothing else
    port = free_port()
    broker = broker_factory(
        f"listener {port} 127.0.0.1\nallow_anonymous true\nacl_file {acl}\n", port=port
    )
    daemon = make_daemon(broker.port)
    with running(daemon):
        daemon.wait_event("mqtt_connected")
        # mosquitto grants the subscription and filters at delivery, so the refusal shows on
        # publishing: MQTT 5 PUBACKs carry "Not authorized".
        published = daemon.wait_event("mqtt_publish_refused")
        assert published["reason"] == "Not authorized"
        assert "ACL" in published["hint"] and published["kept"] is True
        _still_running(daemon)
        connects = [e for e in daemon.events() if e.get("event") == "mqtt_connected"]
        assert len(connects) == 1  # one connection, no reconnect loop
        refusals = [e for e in daemon.events() if e.get("event") == "mqtt_publish_refused"]
        assert len(refusals) == 1  # retried slowly: one line per 15 s, not a flood
    # Nothing the broker refused was dropped: it waits in the outbox.
    import sqlite3

    db = sqlite3.connect(daemon.config.parent / "state" / "outbox.db")
    assert db.execute("SELECT count(*) FROM outbox WHERE kind = 'telemetry'").fetchone()[0] >= 1
