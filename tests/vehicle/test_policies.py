"""Sampling policies on a synthetic timeline: deadband, minimum interval, heartbeat."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.vehicle.model import Sample, Value
from agent.vehicle.signals import Policy, Sampler, changed

P = "Vehicle.Speed"


def run(policy: Policy, timeline: list[tuple[float, Value]]) -> list[tuple[float, Value]]:
    sampler = Sampler({P: policy})
    return [(ts, v) for ts, v in timeline if sampler.offer(Sample(P, ts, v))]


def test_first_value_is_always_published() -> None:
    assert run(Policy(on_change=True, deadband=100.0), [(5.0, 1.0)]) == [(5.0, 1.0)]


def test_on_change_without_deadband_publishes_every_change_only() -> None:
    timeline = [(0.0, 1.0), (0.1, 1.0), (0.2, 1.5), (0.3, 1.5), (0.4, 1.0)]
    assert run(Policy(), timeline) == [(0.0, 1.0), (0.2, 1.5), (0.4, 1.0)]


def test_deadband_compares_with_the_last_published_value_not_the_last_seen() -> None:
    """Slow drift is caught: 0.3 steps under a 0.5 deadband publish once they add up."""
    timeline = [
        (0.0, 10.0),
        (1.0, 10.3),
        (2.0, 10.6),
        (3.0, 10.9),
        (4.0, 11.2),
        (5.0, 10.8),
        (6.0, 10.6),
    ]
    assert run(Policy(deadband=0.5), timeline) == [
        (0.0, 10.0),
        (2.0, 10.6),
        (4.0, 11.2),
        (6.0, 10.6),
    ]


def test_deadband_is_exclusive() -> None:
    """'More than' the deadband: exactly the deadband does not publish."""
    assert run(Policy(deadband=0.5), [(0.0, 1.0), (1.0, 1.5), (2.0, 1.51)]) == [
        (0.0, 1.0),
        (2.0, 1.51),
    ]


def test_min_interval_holds_back_changes_and_the_next_frame_after_it_catches_up() -> None:
    timeline = [(0.0, 1.0), (0.2, 2.0), (0.5, 3.0), (0.99, 4.0), (1.0, 5.0), (1.5, 5.0)]
    assert run(Policy(min_interval_s=1.0), timeline) == [(0.0, 1.0), (1.0, 5.0)]


def test_min_interval_caps_the_heartbeat_too() -> None:
    policy = Policy(on_change=True, min_interval_s=2.0, max_interval_s=1.0)
    timeline = [(float(t), 7.0) for t in range(7)]
    assert run(policy, timeline) == [(0.0, 7.0), (2.0, 7.0), (4.0, 7.0), (6.0, 7.0)]


def test_heartbeat_republishes_an_unchanged_value() -> None:
    timeline = [(t / 2, 3.0) for t in range(25)]  # every 0.5 s for 12 s
    published = run(Policy(max_interval_s=5.0), timeline)
    assert [ts for ts, _ in published] == [0.0, 5.0, 10.0]


def test_heartbeat_restarts_after_a_change() -> None:
    timeline = [(0.0, 1.0), (3.0, 2.0), (6.0, 2.0), (8.0, 2.0), (9.0, 2.0)]
    assert run(Policy(max_interval_s=5.0), timeline) == [(0.0, 1.0), (3.0, 2.0), (8.0, 2.0)]


def test_periodic_only_when_on_change_is_off() -> None:
    """on_change false + heartbeat: only the heartbeat publishes, changes or not."""
    timeline = [(float(t), float(t)) for t in range(11)]
    assert run(Policy(on_change=False, max_interval_s=5.0), timeline) == [
        (0.0, 0.0),
        (5.0, 5.0),
        (10.0, 10.0),
    ]


def test_every_value_rate_limited_when_on_change_is_off_without_heartbeat() -> None:
    timeline = [(t / 10, 1.0) for t in range(21)]
    published = run(Policy(on_change=False, min_interval_s=0.5), timeline)
    assert [ts for ts, _ in published] == [0.0, 0.5, 1.0, 1.5, 2.0]


def test_time_going_backwards_does_not_stall_the_signal() -> None:
    timeline = [(100.0, 1.0), (100.5, 1.0), (3.0, 2.0), (3.1, 2.0), (3.2, 3.0)]
    published = run(Policy(min_interval_s=1.0, max_interval_s=60.0), timeline)
    assert published == [(100.0, 1.0), (3.0, 2.0)]


def test_strings_and_booleans_compare_by_equality_whatever_the_deadband() -> None:
    assert run(Policy(deadband=10.0), [(0, "P"), (1, "P"), (2, "D")]) == [(0, "P"), (2, "D")]
    assert run(Policy(deadband=10.0), [(0, False), (1, True), (2, True)]) == [(0, False), (1, True)]


def test_changed_treats_a_type_change_as_a_change() -> None:
    assert changed(1, True, 0.0)  # 1 == True in Python, but a bool is not a number here
    assert changed("1", 1, 0.0)
    assert not changed(2, 2.0, 0.0)


def test_paths_are_independent_and_latest_is_kept() -> None:
    sampler = Sampler({"A": Policy(min_interval_s=10.0), "B": Policy()})
    assert sampler.offer(Sample("A", 0.0, 1))
    assert sampler.offer(Sample("B", 0.5, 1))
    assert not sampler.offer(Sample("A", 1.0, 2))
    assert sampler.offer(Sample("B", 1.0, 2))
    assert sampler.values["A"] == 2  # last known, even when not published
    assert (sampler.offered, sampler.suppressed) == (4, 1)


_VALUES = st.one_of(
    st.booleans(),
    st.integers(-3, 3),
    st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.75, -1.5]),
    st.sampled_from(["ON", "OFF"]),
)
_POLICIES = st.builds(
    Policy,
    on_change=st.booleans(),
    deadband=st.sampled_from([0.0, 0.3, 1.0]),
    min_interval_s=st.sampled_from([0.0, 0.2, 1.0]),
    max_interval_s=st.sampled_from([None, 0.5, 2.0]),
)


def _reference(rules: dict[str, Policy], samples: list[Sample]) -> list[Sample]:
    """The policies as the module docstring states them, written plainly, one sample at a
    time: the model the Sampler's fast loop is held to."""
    published: dict[str, Sample] = {}
    out = []
    for sample in samples:
        policy, last = rules.get(sample.path), published.get(sample.path)
        due = policy is None or last is None
        if not due:
            assert policy is not None and last is not None
            elapsed = sample.ts - last.ts
            elapsed = float("inf") if elapsed < 0 else elapsed  # time ran backwards
            if elapsed < policy.min_interval_s:
                due = False
            elif policy.max_interval_s is not None and elapsed >= policy.max_interval_s:
                due = True
            elif policy.on_change:
                due = changed(sample.value, last.value, policy.deadband)
            else:
                due = policy.max_interval_s is None
        if due:
            published[sample.path] = sample
            out.append(sample)
    return out


@given(
    policies=st.lists(_POLICIES, min_size=3, max_size=3),
    timeline=st.lists(
        st.tuples(st.integers(0, 3), st.floats(-0.5, 1.5, allow_nan=False), _VALUES),
        max_size=60,
    ),
)
@settings(max_examples=300, deadline=None)
def test_select_over_a_whole_read_decides_as_offer_does_sample_by_sample(
    policies: list[Policy], timeline: list[tuple[int, float, Value]]
) -> None:
    """The live path runs the policies once over all the samples of a read (`select`): the
    same samples pass as with `offer` one by one, and as with the plain statement of the
    policies (`_reference`), whatever the values' types, the steps in time (backwards too)
    and the policies; path 3 has none (every sample passes)."""
    paths = ["A.a", "A.b", "A.c", "A.d"]
    rules = dict(zip(paths, policies, strict=False))
    one, many = Sampler(rules), Sampler(rules)
    ts = 0.0
    samples = []
    for path, step, value in timeline:
        ts += step
        samples.append(Sample(paths[path], ts, value))
    assert many.select(samples) == [s for s in samples if one.offer(s)]
    later = [Sample(p, ts + 0.1, 1) for p in paths]  # the history carries over
    assert many.select(later) == [s for s in later if one.offer(s)]
    assert _reference(rules, samples + later) == Sampler(rules).select(samples + later)
    assert many.values == one.values
    assert (many.offered, many.suppressed) == (one.offered, one.suppressed)
