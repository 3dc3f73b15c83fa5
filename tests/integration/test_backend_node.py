"""examples/backend-node, the Node.js back end of docs/backend.md, against the daemon and a
real mosquitto: `npm ci` from its lock file, then it signs and sends hvac.start twice and must
hear both answers on its own MQTT 5 response topic: `succeeded`, and `rejected` / BAD_PARAMS
for a target out of range."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
)

from tests.support.agents import Key, trust_entry
from tests.support.brokers import Broker, Daemon, Subscriber, running
from tests.support.configs import ROOT, daemon_config
from tests.support.schemas import validate

EXAMPLE = ROOT / "examples" / "backend-node"


def _need(tool: str) -> str:
    found = shutil.which(tool)
    if found is None:
        message = f"{tool} is not installed (Debian packages nodejs and npm)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


@pytest.fixture(scope="module")
def node_example() -> Path:
    """The example with its exact dependencies installed (node_modules is git-ignored)."""
    npm = _need("npm")
    done = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=EXAMPLE,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return EXAMPLE


def test_the_node_backend_hears_every_answer_on_its_response_topic(
    node_example: Path, broker: Broker, tmp_path: Path
) -> None:
    node = _need("node")
    key = Key("fleet-app")
    pem = tmp_path / "fleet-app.pem"
    pem.write_bytes(key.private.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    text = daemon_config(broker.port, tmp_path, vehicle_id="NODE-1")
    text = re.sub(
        r"  trust: \[\][^\n]*\n",
        "  trust:\n" + trust_entry(key, allow='["hvac.*"]'),
        text,
    )
    config = tmp_path / "agent.yaml"
    config.write_text(text)
    sub = Subscriber(broker.port)
    with running(Daemon(config, tmp_path / "agent.log")):
        sub.wait_for("state", lambda m: len(m.json()["values"]) >= 20, timeout=20)
        done = subprocess.run(
            [
                node,
                "backend.js",
                "--url",
                f"mqtt://127.0.0.1:{broker.port}",
                "--vehicle",
                "NODE-1",
                "--key",
                str(pem),
                "--kid",
                "fleet-app",
                "--send",
                'hvac.start {"target_temp_c": 21}',
                "--send",
                'hvac.start {"target_temp_c": 40}',
                "--exit-when-answered",
                "--timeout-s",
                "60",
            ],
            cwd=node_example,
            capture_output=True,
            text=True,
            timeout=90,
        )
    sub.close()
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    lines: list[dict[str, Any]] = [json.loads(line) for line in done.stdout.splitlines()]
    kinds = {line["kind"] for line in lines}
    assert {"connected", "status", "health", "sent", "response"} <= kinds
    sent = [line for line in lines if line["kind"] == "sent"]
    ok_id, bad_id = sent[0]["id"], sent[1]["id"]
    answers = [line for line in lines if line["kind"] == "response"]
    assert all(a["on_reply_topic"] for a in answers)
    ok = [(a["status"], a["reason"]) for a in answers if a["id"] == ok_id]
    bad = [(a["status"], a["reason"]) for a in answers if a["id"] == bad_id]
    assert ok == [("accepted", None), ("succeeded", None)], answers
    assert bad == [("rejected", "BAD_PARAMS")], answers
    # Each answer came back with the correlation data the request carried.
    assert {a["correlation"] for a in answers if a["id"] == ok_id} == {f"hvac.start:{ok_id}"}
    assert {a["correlation"] for a in answers if a["id"] == bad_id} == {f"hvac.start:{bad_id}"}
    # The same answers went to P/commands/response, in the documented shape.
    shared = [m.json() for m in sub.on("commands/response")]
    for body in shared:
        validate("command-response", body)
    assert {(b["id"], b["status"]) for b in shared} >= {
        (ok_id, "succeeded"),
        (bad_id, "rejected"),
    }


def test_the_node_backend_applies_a_campaign_and_receives_its_captures(
    node_example: Path, broker: Broker, tmp_path: Path
) -> None:
    """docs/campaigns.md's Node.js path: the example signs campaign.apply with jose, the car
    applies it, and the back end receives the periodic captures on P/campaigns/{id}."""
    node = _need("node")
    key = Key("fleet-app")
    pem = tmp_path / "fleet-app.pem"
    pem.write_bytes(key.private.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    text = daemon_config(broker.port, tmp_path, vehicle_id="NODE-2")
    text = re.sub(
        r"  trust: \[\][^\n]*\n",
        "  trust:\n" + trust_entry(key, allow='["campaign.*"]'),
        text,
    )
    config = tmp_path / "agent.yaml"
    config.write_text(text)
    campaign = {
        "id": "soc-every-2s",
        "version": 1,
        "expires": "2099-01-01T00:00:00Z",
        "signals": [{"path": "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current"}],
        "trigger": {"period_s": 2},
        "pre_trigger_s": 2,
    }
    with running(Daemon(config, tmp_path / "agent.log")):
        Subscriber(broker.port).wait_for("state", lambda m: True, timeout=20)
        done = subprocess.run(
            [
                *(node, "backend.js", "--url", f"mqtt://127.0.0.1:{broker.port}"),
                *("--vehicle", "NODE-2", "--key", str(pem), "--kid", "fleet-app"),
                *("--send", f"campaign.apply {json.dumps({'campaign': campaign})}"),
                *("--exit-when-answered", "--linger-s", "5", "--timeout-s", "60"),
            ],
            cwd=node_example,
            capture_output=True,
            text=True,
            timeout=90,
        )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    lines: list[dict[str, Any]] = [json.loads(line) for line in done.stdout.splitlines()]
    answers = [(a["status"], a["on_reply_topic"]) for a in lines if a["kind"] == "response"]
    assert answers == [("accepted", True), ("succeeded", True)], lines
    captures = [line for line in lines if line["kind"] == "campaign"]
    assert len(captures) >= 2, lines
    first = captures[0]["seq"]
    assert [c["seq"] for c in captures] == list(range(first, first + len(captures)))
    assert all(c["campaign"] == "soc-every-2s" and c["samples"] >= 1 for c in captures)
