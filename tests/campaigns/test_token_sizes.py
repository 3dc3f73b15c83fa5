"""Token sizes: up to 64 KiB for campaign.apply and campaign.remove, 16 KiB for every other
command, nothing above 64 KiB. On the Verifier (with the campaign engine applying what it
lets through) at the exact limits, and once through the car: mosquitto, the agent's MQTT
client, the executor."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest

from agent.campaigns.engine import CampaignEngine
from agent.commands.auth import (
    MAX_CAMPAIGN_TOKEN_BYTES,
    MAX_TOKEN_BYTES,
    AuthError,
    TrustedKey,
    Verifier,
)
from agent.commands.store import CommandStore
from tests.campaigns.test_campaigns_daemon import TEMP
from tests.commands.test_commands import CLIMATE_REQ, Rig, _run, rig_factory
from tests.support.agents import Key
from tests.support.brokers import wait_until

__all__ = ["rig_factory"]  # the fixture, shared with the command tests

VEHICLE = "VIN0000000000000"
SIGNALS = 200  # the most a campaign may name


def _verifier(key: Key) -> Verifier:
    trusted = TrustedKey(key.kid, key.private.public_key(), ("*",), None, False)
    return Verifier(VEHICLE, {key.kid: trusted}, max_ttl_s=300, clock_skew_s=30)


def _around(make: Callable[[int], bytes], limit: int) -> tuple[bytes, bytes]:
    """The largest token `make(padding)` of at most `limit` bytes and the next one, above it
    (a token grows by base64's steps: the first is within a few bytes of the limit)."""
    low, high = 0, limit  # make(low) fits, make(high) does not
    assert len(make(low)) <= limit < len(make(high))
    while high - low > 1:
        middle = (low + high) // 2
        if len(make(middle)) <= limit:
            low = middle
        else:
            high = middle
    return make(low), make(high)


def _paths(padding: int) -> list[str]:
    """200 paths of a large car; `padding` characters spread over their names."""
    share, extra = divmod(padding, SIGNALS)
    return [
        f"Vehicle.Fleet.Group{i // 10:02d}.Signal{i:03d}V{'x' * (share + (i < extra))}"
        for i in range(SIGNALS)
    ]


def _campaign(paths: list[str]) -> dict[str, Any]:
    return {
        "id": "everything",
        "version": 1,
        "expires": "2099-01-01T00:00:00Z",
        "signals": [{"path": p, "min_interval_ms": 0, "max_samples": 100} for p in paths],
        "trigger": {"condition": f"avg({paths[0]}, 10) > 45 and {paths[1]} < 3"},
        "pre_trigger_s": 10,
        "post_trigger_s": 5,
    }


def test_a_campaign_token_up_to_64_kib_is_verified_and_applied(
    tmp_path: Path, report: Callable[[str], None]
) -> None:
    key = Key("telemetry-team")
    verifier = _verifier(key)

    def apply(padding: int) -> bytes:
        params = {"campaign": _campaign(_paths(padding))}
        return key.token(VEHICLE, "campaign.apply", params)

    largest, over = _around(apply, MAX_CAMPAIGN_TOKEN_BYTES)
    assert MAX_CAMPAIGN_TOKEN_BYTES - 8 <= len(largest) <= MAX_CAMPAIGN_TOKEN_BYTES
    command = verifier.verify(largest, time.time())  # a real campaign of 200 signals
    assert command.command == "campaign.apply"
    assert len(command.params["campaign"]["signals"]) == SIGNALS
    paths = [s["path"] for s in command.params["campaign"]["signals"]]
    with CommandStore(tmp_path / "commands.db") as store:
        engine = CampaignEngine(
            mapped=frozenset(paths),
            store=store,
            publish=lambda *a: None,
            event=lambda *a: None,
            max_memory_bytes=32 << 20,
        )
        assert engine.apply(command.params) == ("succeeded", None)
        assert engine.state() == [
            {"id": "everything", "version": 1, "state": "active", "triggers": 0}
        ]
        assert engine.paths == frozenset(paths)  # every one of its 200 signals is tapped
    with pytest.raises(AuthError) as refused:
        verifier.verify(over, time.time())
    assert refused.value.reason == "MALFORMED"
    assert f"token of {len(over)} bytes is over {MAX_CAMPAIGN_TOKEN_BYTES}" in refused.value.detail
    assert refused.value.command_id is None  # refused before anything in it was read
    # campaign.remove has the same limit (a remove is small, but its token may carry more).
    remove, _ = _around(
        lambda n: key.token(VEHICLE, "campaign.remove", {"id": "everything", "pad": "x" * n}),
        MAX_CAMPAIGN_TOKEN_BYTES,
    )
    assert verifier.verify(remove, time.time()).command == "campaign.remove"
    report(
        f"token sizes: a campaign of {SIGNALS} signals in a {len(largest)}-byte token verified "
        f"and applied; {len(over)} bytes refused MALFORMED"
    )


@pytest.mark.parametrize("command", ["hvac.start", "charging.start", "campaign.list"])
def test_every_other_command_is_held_to_16_kib_naming_the_limit(command: str) -> None:
    key = Key("fleet-app")
    verifier = _verifier(key)

    def padded(n: int) -> bytes:
        return key.token(VEHICLE, command, {"target_temp_c": 21.0, "note": "x" * n})

    largest, over = _around(padded, MAX_TOKEN_BYTES)
    assert MAX_TOKEN_BYTES - 8 <= len(largest) <= MAX_TOKEN_BYTES
    assert verifier.verify(largest, time.time()).command == command
    with pytest.raises(AuthError) as refused:
        verifier.verify(over, time.time())
    error = refused.value
    assert error.reason == "MALFORMED"
    assert error.detail == (
        f"token of {len(over)} bytes is over 16384 "
        "(64 KiB only for campaign.apply and campaign.remove)"
    )
    # Signed and read before it was refused: the answer names the command it refuses.
    assert error.command_id == jwt.decode(over, options={"verify_signature": False})["jti"]
    # ... and what 60 KiB would be for a campaign is refused here as well.
    big = padded(46_500)
    assert 60 * 1024 <= len(big) <= MAX_CAMPAIGN_TOKEN_BYTES
    with pytest.raises(AuthError, match="is over 16384"):
        verifier.verify(big, time.time())


@pytest.mark.parametrize("command", ["campaign.apply", "campaign.remove", "hvac.start"])
def test_nothing_over_64_kib_is_read(command: str) -> None:
    """Over 64 KiB is refused before the signature is checked, whatever the command."""
    key = Key("fleet-app")
    _, over = _around(
        lambda n: key.token(VEHICLE, command, {"note": "x" * n}), MAX_CAMPAIGN_TOKEN_BYTES
    )
    forged = over.rsplit(b".", 1)[0] + b"." + b"A" * 86  # not even the signature is checked
    for token in (over, forged, b"a" * (MAX_CAMPAIGN_TOKEN_BYTES + 1)):
        with pytest.raises(AuthError) as refused:
            _verifier(key).verify(token, time.time())
        assert refused.value.reason == "MALFORMED"
        assert refused.value.detail == f"token of {len(token)} bytes is over 65536"
        assert refused.value.command_id is None


@pytest.mark.timeout(120)
def test_token_sizes_through_the_car(
    rig_factory: Callable[..., tuple[Rig, Callable[[], Any]]],
) -> None:
    """A 60 KiB campaign.apply goes through mosquitto and the agent and is applied; a 20 KiB
    hvac.start is refused naming the 16 KiB limit and sends nothing; 64 KiB and a byte more
    is refused for a campaign too. The reference car maps ~30 paths, too few to make a
    campaign this big: the tokens carry a private claim (RFC 7519 4.3) of filler, which the
    car ignores, as a back end's own claims would be."""
    rig, running = rig_factory(scenario="parked")
    key, car = rig.key, rig.vehicle
    campaign = {
        "id": "large-token",
        "version": 1,
        "expires": "2099-01-01T00:00:00Z",
        "signals": [{"path": TEMP}],
        "trigger": {"condition": f"{TEMP} > 1000"},
    }
    apply = key.token(car, "campaign.apply", {"campaign": campaign}, filler="x" * 46_500)
    assert 60 * 1024 <= len(apply) <= MAX_CAMPAIGN_TOKEN_BYTES
    hvac = key.token(car, "hvac.start", {"target_temp_c": 21.0}, filler="x" * 15_000)
    assert 20_000 <= len(hvac) <= 24 * 1024
    _, too_big = _around(
        lambda n: key.token(car, "campaign.apply", {"campaign": campaign}, filler="x" * n),
        MAX_CAMPAIGN_TOKEN_BYTES,
    )
    with running():
        wait_until(lambda: rig.sub.on("state"), 15, "the first state")
        before = rig.spy.count(CLIMATE_REQ)
        refused = _run(rig, hvac)
        assert (refused["status"], refused["reason"]) == ("rejected", "MALFORMED"), refused
        assert f"token of {len(hvac)} bytes is over 16384" in refused["detail"]
        applied = _run(rig, apply)
        assert applied["status"] == "succeeded", applied
        wait_until(
            lambda: any(
                c["id"] == "large-token" and c["state"] == "active"
                for m in rig.sub.on("state")[-1:]
                for c in m.json().get("campaigns", [])
            ),
            15,
            "P/state listing the campaign",
        )
        count = len(rig.responses())
        rig.send(too_big)
        wait_until(lambda: len(rig.responses()) > count, 15, "the answer to 64 KiB + 1")
        answer = rig.responses()[count]
        assert (answer["id"], answer["status"], answer["reason"]) == (None, "rejected", "MALFORMED")
        assert answer["detail"] == f"request of {len(too_big)} bytes is over 65536"
        assert rig.spy.count(CLIMATE_REQ) == before  # the refused hvac.start sent nothing
