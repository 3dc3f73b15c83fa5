"""The campaign engine at its seams: a fake clock, the real command store, a recorder for
what it publishes; samples fed as the pipeline would tap them."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from agent.campaigns.engine import CampaignEngine
from agent.campaigns.ring import Ring
from agent.campaigns.spec import BYTES_PER_SAMPLE, Campaign, CampaignError
from agent.commands.store import CommandStore
from agent.vehicle.model import Sample

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC).timestamp()
TEMP = "Vehicle.Powertrain.TractionBattery.Temperature.Average"
SPEED = "Vehicle.Speed"
SOC = "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current"
MAPPED = frozenset({TEMP, SPEED, SOC})


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(T0 + seconds, UTC).isoformat()


def heat(**over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "battery-heat",
        "version": 1,
        "expires": iso(3600),
        "signals": [{"path": TEMP, "min_interval_ms": 0, "max_samples": 600}, {"path": SPEED}],
        "trigger": {
            "condition": f"avg({TEMP}, 10) > 45",
            "mode": "rising_edge",
            "min_interval_s": 60,
        },
        "pre_trigger_s": 10,
        "post_trigger_s": 5,
        "priority": 2,
    }
    body.update(over)
    return body


class Rig:
    def __init__(self, store: CommandStore, budget: int = 10_000_000) -> None:
        self.now = T0
        self.published: list[tuple[str, int, float, list[Sample]]] = []
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.engine = CampaignEngine(
            mapped=MAPPED,
            store=store,
            publish=lambda c, ts, s: self.published.append((c.id, c.version, ts, s)),
            event=lambda name, data: self.events.append((name, data)),
            max_memory_bytes=budget,
            clock=lambda: self.now,
        )

    def feed(self, start: float, end: float, temp: Any, hz: float = 10.0) -> None:
        """Samples of TEMP (temp(t) for t in [start, end)) and SPEED at `hz`, ticking."""
        n = round((end - start) * hz)
        for k in range(n):
            t = start + k / hz
            self.now = T0 + t
            for sample in (Sample(TEMP, T0 + t, temp(t)), Sample(SPEED, T0 + t, 0.0)):
                if sample.path in self.engine.paths:
                    self.engine.tap(sample)
            self.engine.tick()  # the daemon ticks every 0.1 s: after each 10 Hz frame

    def names(self) -> list[str]:
        return [n for n, _ in self.events]


@pytest.fixture
def store(tmp_path: Path) -> Any:
    with CommandStore(tmp_path / "commands.db") as s:
        yield s


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (heat(signals=[{"path": "Vehicle.Nope"}]), "signals.0.path: Vehicle.Nope is not a mapped"),
        (
            heat(trigger={"condition": "avg(Vehicle.Nope, 10) > 1"}),
            "trigger.condition: Vehicle.Nope is not a mapped path",
        ),
        (heat(trigger={"condition": f"avg({TEMP}, 0) > 1"}), "the window must be more than 0"),
        (heat(trigger={"condition": f"{TEMP} >"}), "trigger.condition:"),
        (heat(trigger={"condition": f"{TEMP} > 1", "mode": "always"}), "needs min_interval_s"),
        (heat(priority=12), "priority: Input should be less than or equal to 9"),
        (heat(expires="2026-12-01T12:00:00"), "expires: Value error, give a time zone"),
        (heat(signals=[{"path": TEMP}, {"path": TEMP}]), "listed twice"),
    ],
)
def test_a_bad_campaign_is_refused_with_a_detail_naming_the_problem(
    store: CommandStore, body: dict[str, Any], message: str
) -> None:
    rig = Rig(store)
    with pytest.raises(CampaignError) as caught:
        rig.engine.validate({"campaign": body})
    assert message in str(caught.value)
    status, detail = rig.engine.apply({"campaign": body})
    assert status == "failed" and detail is not None and message in detail
    assert rig.engine.state() == [] and store.load_campaigns() == [] and not rig.engine.paths


def test_memory_is_stated_and_enforced(store: CommandStore) -> None:
    body = heat(signals=[{"path": TEMP, "max_samples": 1000}, {"path": SPEED, "max_samples": 500}])
    stated = Campaign.model_validate(body).memory_bytes
    # The campaign, two rings of 16 bytes a sample plus their overhead, one condition window.
    assert stated == 16_384 + 1500 * BYTES_PER_SAMPLE + 2 * 600 + 2000 * 110
    rig = Rig(store, budget=stated + 10_000)
    assert rig.engine.apply({"campaign": body}) == ("succeeded", None)
    other = heat(id="other", signals=[{"path": SOC, "max_samples": 600}])
    with pytest.raises(CampaignError, match=f"the car allows {stated + 10_000}"):
        rig.engine.validate({"campaign": other})
    # A new version of the same campaign replaces it, so only its own size counts.
    assert rig.engine.apply({"campaign": {**body, "version": 2}}) == ("succeeded", None)


def test_ten_campaigns_of_fifty_signals_stay_under_their_stated_memory(
    tmp_path: Path, report: Callable[[str], None]
) -> None:
    """Measured with tracemalloc: the engine's allocations once every ring is full."""
    import tracemalloc

    paths = [f"Vehicle.Test.Signal{i}" for i in range(500)]
    with CommandStore(tmp_path / "commands.db") as store:
        engine = CampaignEngine(
            mapped=frozenset(paths),
            store=store,
            publish=lambda *a: None,
            event=lambda *a: None,
            max_memory_bytes=1 << 30,
            clock=lambda: T0,
        )
        samples = [Sample(p, T0 + k * 0.01, float(k)) for k in range(700) for p in paths]
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        stated = 0
        for c in range(10):
            mine = paths[c * 50 : (c + 1) * 50]
            body = heat(
                id=f"c{c}",
                signals=[{"path": p, "max_samples": 600} for p in mine],
                trigger={"condition": f"avg({mine[0]}, 10) > 1e9 and {mine[1]} < -1"},
            )
            assert engine.apply({"campaign": body}) == ("succeeded", None)
            stated += Campaign.model_validate(body).memory_bytes
        for i, sample in enumerate(samples):  # more than every ring holds: they are full
            engine.tap(sample)
            if i % 5000 == 0:
                engine.tick()  # the daemon's tick moves the tapped samples into the rings
        engine.tick()
        # Everything allocated since, whoever allocated it (pydantic, sqlite, json included).
        used = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(before, "filename"))
        tracemalloc.stop()
    assert 0 < used <= stated, (used, stated)
    assert used > 0.5 * stated  # the statement is not a wild overestimate either
    report(
        f"campaign memory test: ten campaigns of 50 signals of 600 samples, rings full: "
        f"{used / 1e6:.2f} MB used (tracemalloc), {stated / 1e6:.2f} MB stated"
    )


def test_a_rising_edge_publishes_the_pre_and_post_window_once(store: CommandStore) -> None:
    rig = Rig(store)
    assert rig.engine.apply({"campaign": heat()}) == ("succeeded", None)
    assert rig.engine.paths == {TEMP, SPEED}
    assert rig.names() == ["started", "accepted"] or rig.names() == ["accepted", "started"]

    def temp(t: float) -> float:  # 40 degC, heating 1 degC/s from t=30 to 40, then 50
        return 40.0 if t < 30 else min(50.0, 40.0 + (t - 30))

    rig.feed(0, 60, temp)
    (campaign, version, trigger_ts, samples) = rig.published[0]
    assert (campaign, version, len(rig.published)) == ("battery-heat", 1, 1)
    # avg over 10 s passes 45 first at the sample where it does, computed independently:
    times = [k / 10 for k in range(600)]
    first = next(
        t
        for t in times
        if sum(temp(u) for u in times if t - 10 < u <= t) / sum(1 for u in times if t - 10 < u <= t)
        > 45
    )
    assert trigger_ts == pytest.approx(T0 + first)
    expected = [
        (path, T0 + t)
        for t in times
        if first - 10 <= t <= first + 5
        for path in sorted((TEMP, SPEED))
    ]
    assert [(s.path, s.ts) for s in samples] == sorted(expected, key=lambda e: (e[1], e[0]))
    assert all(s.value == temp(round(s.ts - T0, 1)) for s in samples if s.path == TEMP)
    # Cooling down and heating again within min_interval_s (60 s): no second capture.
    rig.feed(60, 80, lambda t: 30.0)
    rig.feed(80, 100, temp=lambda t: 50.0)
    assert len(rig.published) == 1
    # Past min_interval_s of the first trigger, a new rising edge captures again.
    rig.feed(100, 130, lambda t: 30.0)
    rig.feed(130, 160, lambda t: 50.0)
    assert len(rig.published) == 2
    assert rig.names().count("triggered") == 2  # 100 s apart: both reported


def test_periodic_trigger_expiry_and_an_idle_engine_taps_nothing(store: CommandStore) -> None:
    rig = Rig(store)
    body = heat(trigger={"period_s": 20}, pre_trigger_s=5, post_trigger_s=0, expires=iso(70))
    rig.engine.apply({"campaign": body})
    rig.feed(0, 75, lambda t: 20.0)
    assert [round(ts - T0) for _, _, ts, _ in rig.published] == [20, 40, 60]
    assert all(len(s) == 2 * 51 for *_, s in rig.published)  # 5 s at 10 Hz, both ends
    assert rig.names()[-1] == "expired"
    assert rig.names().count("triggered") == 1  # 20 s apart: one event a minute, not three
    assert rig.engine.state() == [
        {"id": "battery-heat", "version": 1, "state": "expired", "triggers": 3}
    ]
    assert rig.engine.paths == set() and rig.engine.memory_bytes() == 0


def test_pending_until_start_then_survives_a_restart_and_remove(store: CommandStore) -> None:
    rig = Rig(store)
    rig.engine.apply({"campaign": heat(start=iso(30))})
    assert rig.engine.state()[0]["state"] == "pending" and not rig.engine.paths
    rig.now = T0 + 31
    rig.engine.tick()
    assert rig.engine.state()[0]["state"] == "active" and rig.engine.paths == {TEMP, SPEED}
    again = Rig(store)  # the agent restarted
    again.now = T0 + 40
    again.engine.load()
    assert again.engine.state()[0]["state"] == "active" and again.engine.paths == {TEMP, SPEED}
    assert again.engine.apply({"campaign": heat(start=iso(30))})[0] == "failed"  # not newer
    assert again.engine.remove({"id": "battery-heat"}) == ("succeeded", None)
    assert store.load_campaigns() == [] and again.engine.paths == set()
    assert again.engine.remove({"id": "battery-heat"})[0] == "failed"


def test_a_ring_keeps_the_last_n_and_honours_min_interval() -> None:
    ring = Ring(3, min_interval_ms=100)
    for k in range(10):
        ring.add(k * 0.05, k)  # every 50 ms: every other one is kept
    assert [(round(t, 3), v) for t, v in ring.between(0, 10)] == [(0.2, 4), (0.3, 6), (0.4, 8)]
    flags = Ring(2)
    flags.add(1.0, True)
    flags.add(2.0, False)
    names = Ring(2)
    names.add(1.0, "P")
    assert list(flags.between(0, 5)) == [(1.0, True), (2.0, False)]
    assert list(names.between(0, 5)) == [(1.0, "P")]


def test_windows_match_a_plain_computation_over_random_samples() -> None:
    import random

    from agent.campaigns.ring import Window

    rng = random.Random(15)
    windows = {f: Window(2.5) for f in ("avg", "min", "max")}
    history: list[tuple[float, float]] = []
    t = 0.0
    for _ in range(3000):
        t += rng.choice([0.01, 0.1, 0.3, 1.0])
        value = rng.uniform(-50, 50)
        history.append((t, value))
        for function, window in windows.items():
            window.add(t, value)
            inside = [v for ts, v in history if t - 2.5 < ts <= t]
            want = {"avg": sum(inside) / len(inside), "min": min(inside), "max": max(inside)}
            assert window.value(function, t) == pytest.approx(want[function], abs=1e-9)
    # A log played again from its start: the window starts afresh.
    windows["max"].add(1.0, -100.0)
    assert windows["max"].value("max", 1.0) == -100.0


def test_a_ring_smaller_than_the_post_window_loses_nothing_of_it(store: CommandStore) -> None:
    """The rings are drained into the open capture on every tick: 100 samples of ring, a
    20 s post-trigger window at 10 Hz, and the capture still has every sample of it."""
    rig = Rig(store)
    body = heat(
        signals=[{"path": TEMP, "max_samples": 100}],
        trigger={"condition": f"{TEMP} > 45"},
        pre_trigger_s=5,
        post_trigger_s=20,
    )
    rig.engine.apply({"campaign": body})
    rig.feed(0, 60, lambda t: 50.0 if t >= 10 else 20.0)
    (_, _, trigger_ts, samples) = rig.published[0]
    assert trigger_ts == pytest.approx(T0 + 10)
    times = [round(s.ts - T0, 1) for s in samples]
    assert times == [round(5 + k / 10, 1) for k in range(251)]  # 5 s before to 20 s after


def test_a_new_version_or_a_remove_publishes_the_open_capture_first(store: CommandStore) -> None:
    rig = Rig(store)
    body = heat(trigger={"condition": f"{TEMP} > 45", "min_interval_s": 600}, post_trigger_s=30)
    rig.engine.apply({"campaign": body})
    rig.feed(0, 12, lambda t: 50.0 if t >= 10 else 20.0)  # triggered at 10, window open
    assert rig.published == []
    rig.engine.apply({"campaign": {**body, "version": 2}})
    assert [(c, v) for c, v, _, _ in rig.published] == [("battery-heat", 1)]
    rig.feed(12, 20, lambda t: 20.0)
    rig.feed(20, 30, lambda t: 50.0)  # a new edge, but within v1's min_interval_s
    rig.engine.remove({"id": "battery-heat"})
    assert len(rig.published) == 1
    with pytest.raises(CampaignError, match="no campaign 'battery-heat'"):
        rig.engine.validate_remove({"id": "battery-heat"})


def test_expired_campaigns_free_their_budget_and_past_expiry_is_refused(
    store: CommandStore,
) -> None:
    budget = Campaign.model_validate(heat()).memory_bytes + 1000
    rig = Rig(store, budget=budget)
    rig.engine.apply({"campaign": heat(expires=iso(10))})
    rig.now = T0 + 11
    rig.engine.tick()
    assert rig.engine.state()[0]["state"] == "expired"
    assert rig.engine.apply({"campaign": heat(id="next")}) == ("succeeded", None)
    with pytest.raises(CampaignError, match="expires: it is in the past"):
        rig.engine.validate({"campaign": heat(id="late", expires=iso(5))})


def test_a_capture_goes_out_in_parts_of_at_most_a_thousand_samples() -> None:
    from agent.campaigns.engine import MESSAGE_SAMPLES, capture_payload, parts

    samples = [Sample(TEMP, T0 + k, float(k)) for k in range(2500)]
    chunks = parts(samples)
    assert [len(c) for c in chunks] == [1000, 1000, 500] and MESSAGE_SAMPLES == 1000
    campaign = Campaign.model_validate(heat())
    import json

    body = json.loads(capture_payload("V1", campaign, 7, T0, chunks[2], 3, 3))
    assert (body["seq"], body["part"], body["parts"], len(body["samples"])) == (7, 3, 3, 500)
    assert parts([]) == [[]]  # an empty capture is still one (empty) message


def test_a_ring_survives_a_clock_step_back_and_a_path_that_turns_float() -> None:
    ring = Ring(10)
    for k in range(5):
        ring.add(100.0 + k, k)
    ring.add(50.0, 2.5)  # the clock stepped back 54 s; an int path now gives a float
    ring.add(51.0, 3)
    assert [v for _, v in ring.between(0, 200)] == [0, 1, 2, 3, 4, 2.5, 3]
