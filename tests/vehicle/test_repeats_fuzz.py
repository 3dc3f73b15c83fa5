"""The live path (repeats skipped, unmoved signals left out, generated decode functions)
against decoding every frame, on a two-bus DBC written to have what real ones have: Intel and
Motorola signals, signed ones, an IEEE float, choices with a sentinel, a `map` to null, one
signal mapped to two paths, one message on both buses, computed paths across messages and
across buses. Frames come short, padded as CAN FD pads them and with bits flipped; time steps
back and stands still; policies are reloaded and campaign taps set mid-stream; batches fill
mid-read; multiplexed ids, with their mapped signals in branches only and with a mapped base
signal. Both ways see the frames in the same order (a read's frames, bus by bus) and must
agree on everything: what is published, the values, every counter, the taps."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent import config
from agent.vehicle import dbc
from agent.vehicle.model import Frame, RawFrame, Sample
from agent.vehicle.signals import Policy
from tests.support.pipelines import Records, recording_pipeline

DBC_A = """VERSION ""
NS_ :
BS_:
BU_: X
BO_ 256 M1: 8 X
 SG_ A : 0|10@1+ (0.1,0) [0|100] "" X
 SG_ B : 10|8@1- (1,0) [-128|127] "" X
 SG_ C : 31|12@0+ (0.5,-40) [-40|2007.5] "" X
 SG_ G : 40|3@1+ (1,0) [0|7] "" X
 SG_ F : 43|1@1+ (1,0) [0|1] "" X
 SG_ K : 44|4@1+ (1,0) [0|15] "" X
 SG_ D : 48|16@1+ (0.01,0) [0|300] "" X
BO_ 257 M2: 8 X
 SG_ FL : 0|32@1- (1,0) [0|0] "" X
 SG_ E : 39|8@0- (1,0) [-128|127] "" X
 SG_ K2 : 48|8@1+ (1,0) [0|255] "" X
BO_ 260 MB: 8 X
 SG_ SB M : 0|1@1+ (1,0) [0|1] "" X
 SG_ BASE : 8|8@1+ (1,0) [0|255] "" X
 SG_ X0 m0 : 16|8@1+ (1,0) [0|255] "" X
 SG_ X1 m1 : 16|8@1+ (1,0) [0|255] "" X
BO_ 261 MW: 8 X
 SG_ SW M : 0|2@1+ (1,0) [0|3] "" X
 SG_ W12 m1 : 8|8@1+ (1,0) [0|255] "" X
 SG_ W3 m3 : 16|8@1+ (1,0) [0|255] "" X
VAL_ 256 G 0 "P" 1 "R" 2 "N" 3 "D" 7 "SNA" ;
SIG_VALTYPE_ 257 FL : 1;
SG_MUL_VAL_ 261 W12 SW 1-2;
SG_MUL_VAL_ 261 W3 SW 3-3;
"""
DBC_B = """VERSION ""
NS_ :
BS_:
BU_: X
BO_ 258 M3: 4 X
 SG_ H : 0|12@1+ (1,0) [0|4095] "" X
 SG_ I : 12|4@1+ (1,0) [0|15] "" X
 SG_ J : 23|8@0+ (1,0) [0|255] "" X
BO_ 256 M1: 8 X
 SG_ A : 0|10@1+ (0.1,0) [0|100] "" X
BO_ 259 MX: 8 X
 SG_ S M : 0|2@1+ (1,0) [0|3] "" X
 SG_ P0 m0 : 8|8@1+ (0.5,0) [0|127.5] "" X
 SG_ T0 m0 : 23|8@0- (1,0) [-128|127] "" X
 SG_ P1 m1 : 8|8@1+ (0.5,0) [0|127.5] "" X
 SG_ T1 m1 : 16|8@1+ (1,-40) [-40|215] "" X
 SG_ Q2 m2 : 8|16@1+ (1,0) [0|65535] "" X
"""
SIGNALS = """signals:
  - {path: Vehicle.Powertrain.TractionBattery.StateOfCharge.Current, source: A, bus: a}
  - {path: Test.M1.B, source: B}
  - {path: Test.M1.C, source: C, decimals: 1}
  - {path: Test.M1.G, source: G, invalid: [SNA]}
  - {path: Test.M1.GM, source: G, transform: {map: {P: 0, R: 1, N: 2, D: 3, SNA: null}}}
  - {path: Vehicle.Powertrain.Transmission.IsParkLockEngaged, source: F}
  - {path: Test.M1.F2, source: F}
  - {path: Test.M1.D, source: D}
  - {path: Test.M2.FL, source: FL}
  - {path: Test.M2.E, source: E, invalid: [-128]}
  - {path: Test.M3.H, source: H}
  - {path: Test.M3.I, source: I}
  - {path: Test.M3.J, source: J, transform: {linear: {scale: 2, offset: -10}}}
  - {path: Test.M3.A, source: A, bus: b}
  - {path: Test.MX.P0, source: P0}
  - {path: Test.MX.T0, source: T0, invalid: [-128]}
  - {path: Test.MX.P1, source: P1}
  - {path: Test.MX.T1, source: T1}
  - {path: Test.MB.BASE, source: BASE}
  - {path: Test.MB.X0, source: X0}
  - {path: Test.MB.X1, source: X1}
  - {path: Test.MW.W12, source: W12}
  - {path: Test.MW.W3, source: W3}
  - {path: Test.Comp, compute: Test.M1.B + Test.M3.H}
  - {path: Test.Comp2, compute: Test.M1.D * 2}
  - {path: Test.CompMux, compute: Test.MX.P0 - Test.MX.P1}
vss: {unknown_paths: warn}
"""
# Three multiplexed ids: MX (mapped signals in branches only: skipped per selector value), MB
# (a mapped base signal) and MW (a signal in two branches, extended multiplexing): decoded
# every time.
KEYS = [
    ("a", 0x100),
    ("a", 0x101),
    ("b", 0x102),
    ("b", 0x100),
    ("b", 0x103),
    ("a", 0x104),
    ("a", 0x105),
]
LENGTH = {0x100: 8, 0x101: 8, 0x102: 4, 0x103: 8, 0x104: 8, 0x105: 8}
SHAPES = ["same", "same", "same", "same", "short", "pad12", "pad64", "long8"]
STEPS = [0.0, 0.0, 1e-9, 1e-7, 0.001, 0.01, 0.01, 0.05, 0.1, 0.3, 0.5, 1.0, -0.5, -5.0]


@pytest.fixture(scope="module")
def vehicle(tmp_path_factory: pytest.TempPathFactory) -> dbc.Vehicle:
    folder = tmp_path_factory.mktemp("fuzz")
    (folder / "a.dbc").write_text(DBC_A)
    (folder / "b.dbc").write_text(DBC_B)
    (folder / "fuzz.yaml").write_text(
        "vehicle_id: FUZZ-1\n"
        "can:\n"
        "  buses:\n"
        "    - {name: a, interface: virtual, channel: fz-a, dbc: [a.dbc], fd: true}\n"
        "    - {name: b, interface: virtual, channel: fz-b, dbc: [b.dbc], fd: true}\n" + SIGNALS
    )
    return dbc.load_vehicle(config.load(folder / "fuzz.yaml"))


def _payloads(seed: int) -> dict[tuple[str, int], list[bytes]]:
    """Four random payloads per frame id; the first two of M1 on bus a with a valid gear
    and state of charge, so that values repeat as well as drop."""
    rng = random.Random(seed)
    pool = {key: [rng.randbytes(LENGTH[key[1]]) for _ in range(4)] for key in KEYS}
    for i in (0, 1):
        bits = int.from_bytes(pool[("a", 0x100)][i], "little")
        bits &= ~(0b100 << 40)
        bits = (bits & ~0x3FF) | rng.randrange(1001)
        pool[("a", 0x100)][i] = bits.to_bytes(8, "little")
    return pool


def run_both(vehicle: dbc.Vehicle, events: list[tuple[Any, ...]], seed: int, batch: int) -> int:
    """Both ways through `events`, compared; the frames the live way skipped."""
    pool = _payloads(seed)
    records = {"one": Records(), "many": Records()}
    built = {way: recording_pipeline(vehicle, records[way], batch) for way in records}
    taps: dict[str, list[Sample]] = {"one": [], "many": []}
    per_frame = {bus: built["one"].receiver_for(bus) for bus in vehicle.buses}
    per_read = {bus: built["many"].frames_receiver_for(bus) for bus in vehicle.buses}
    pending: dict[str, list[RawFrame]] = {bus: [] for bus in vehicle.buses}
    ts = 1.7e9

    def read() -> None:
        for bus, frames in pending.items():
            if frames:
                for key, data, stamp in frames:
                    per_frame[bus](Frame(key, data, stamp))
                per_read[bus](frames)
                assert len(built["many"]._batch) < batch
                # What preconditions and alerts read between reads: held-back values caught up.
                assert built["many"].sampler.values == built["one"].sampler.values
                pending[bus] = []

    for event in events:
        if event[0] == "frame":
            _, which, payload, flips, step, shape = event
            bus, key = KEYS[which]
            data = pool[(bus, key)][payload]
            bits = int.from_bytes(data, "little")
            for flip in flips:
                if flip < 8 * len(data):
                    bits ^= 1 << flip
            data = bits.to_bytes(len(data), "little")
            if shape == "short":
                data = data[:-1]
            elif shape == "pad12":
                data = data + bytes(max(0, 12 - len(data)))
            elif shape == "pad64":
                data = data + bytes([0xAA]) * (64 - len(data))
            elif shape == "long8":
                data = (data + bytes(8))[:8]
            ts += step
            pending[bus].append((key, data, ts))
        elif event[0] == "read":
            read()
        elif event[0] == "reload":
            read()
            for pipeline in built.values():
                pipeline.sampler.update_policies(event[1])
        elif event[0] == "taps":
            read()
            for way, pipeline in built.items():
                pipeline.set_taps(event[1], taps[way])
    read()
    for pipeline in built.values():
        pipeline.flush()

    one, many = built["one"], built["many"]
    assert records["many"].by_path == records["one"].by_path
    assert many.sampler.values == one.sampler.values
    assert taps["many"] == taps["one"]
    for bus in vehicle.buses:
        assert many.decoders[bus].stats == one.decoders[bus].stats, bus
    assert many.computer is not None and one.computer is not None
    assert many.computer.stats == one.computer.stats
    assert many.computer.seen_at == one.computer.seen_at
    return many.stats.frames_repeated


PATH_NAMES = [
    "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current",
    "Test.M1.B",
    "Test.M1.C",
    "Test.M1.G",
    "Test.M1.GM",
    "Vehicle.Powertrain.Transmission.IsParkLockEngaged",
    "Test.M1.F2",
    "Test.M1.D",
    "Test.M2.FL",
    "Test.M2.E",
    "Test.M3.H",
    "Test.M3.I",
    "Test.M3.J",
    "Test.M3.A",
    "Test.MX.P0",
    "Test.MX.T0",
    "Test.MX.P1",
    "Test.MX.T1",
    "Test.MB.BASE",
    "Test.MB.X0",
    "Test.MB.X1",
    "Test.MW.W12",
    "Test.MW.W3",
    "Test.Comp",
    "Test.Comp2",
    "Test.CompMux",
]
_PATHS = st.sampled_from(PATH_NAMES)
_POLICY = st.builds(
    Policy,
    on_change=st.booleans(),
    deadband=st.sampled_from([0.0, 0.5, 5.0]),
    min_interval_s=st.sampled_from([0.0, 0.01, 0.1, 1.0, 0.3]),
    max_interval_s=st.sampled_from([None, None, 0.05, 0.5, 1.0, 0.1]),
)
_EVENT = st.one_of(
    st.tuples(
        st.just("frame"),
        st.integers(0, len(KEYS) - 1),
        st.integers(0, 3),
        st.lists(st.integers(0, 63), max_size=2),
        st.sampled_from(STEPS),
        st.sampled_from(SHAPES),
    ),
    st.tuples(st.just("read")),
    st.tuples(st.just("reload"), st.dictionaries(_PATHS, _POLICY)),  # a path left out: no rule
    st.tuples(st.just("taps"), st.sets(_PATHS, max_size=3)),
)


@given(
    events=st.lists(_EVENT, min_size=1, max_size=300),
    seed=st.integers(0, 2**32),
    batch=st.integers(1, 50),
)
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
def test_random_streams_are_published_as_decoding_every_frame_does(
    vehicle: dbc.Vehicle, events: list[tuple[Any, ...]], seed: int, batch: int
) -> None:
    run_both(vehicle, events, seed, batch)


def test_a_signal_of_two_branches_is_published_as_each_branch_carries_it(
    vehicle: dbc.Vehicle,
) -> None:
    """Extended multiplexing: W12 rides on the frames of selector values 1 and 2. Each
    branch's frames repeat, but the path's value alternates with the branch, and every
    alternation is published (no policy set: every change)."""
    payloads = {1: bytes([1, 5, 0, 0, 0, 0, 0, 0]), 2: bytes([2, 7, 0, 0, 0, 0, 0, 0])}
    records = {"one": Records(), "many": Records()}
    built = {way: recording_pipeline(vehicle, records[way], 1) for way in records}
    per_frame, per_read = built["one"].receiver_for("a"), built["many"].frames_receiver_for("a")
    for i in range(40):
        frame = (0x105, payloads[1 + i % 2], 1.7e9 + i * 0.1)
        per_frame(Frame(*frame))
        per_read([frame])
    published = records["many"].by_path["Test.MW.W12"]
    assert published == records["one"].by_path["Test.MW.W12"]
    assert [value for _, value in published] == [5, 7] * 20


def _timeline(seed: int) -> list[tuple[Any, ...]]:
    """A long stream in which most frames repeat the one before them, as on a real bus."""
    rng = random.Random(seed)
    events: list[tuple[Any, ...]] = []
    read_chance = rng.choice([0.02, 0.1, 0.3, 1.0])
    steps = rng.choice(
        [[0.01], [0.001, 0.01, 0.1], [0.0, 1e-9, 0.01, 0.5], [0.01, -0.5, 0.02, 1e-7]]
    )
    paths = PATH_NAMES
    last: dict[int, int] = {}
    for _ in range(rng.randint(50, 1500)):
        draw = rng.random()
        if draw < 0.01:
            events.append(
                (
                    "reload",
                    {
                        path: Policy(
                            on_change=rng.random() < 0.95,
                            deadband=rng.choice([0.0, 0.0, 0.5, 5.0]),
                            min_interval_s=rng.choice([0.0, 0.01, 0.1, 1.0, 0.3, 0.05]),
                            max_interval_s=rng.choice([None, None, 0.05, 0.5, 1.0, 0.1, 0.02]),
                        )
                        for path in paths
                        if rng.random() < 0.97
                    },
                )
            )
        elif draw < 0.015:
            events.append(("taps", set(rng.sample(paths, rng.randint(0, 2)))))
        else:
            which = rng.randrange(len(KEYS)) if rng.random() < 0.5 else rng.choice((0, 4))
            flips = [rng.randrange(64)] if rng.random() < 0.05 else []
            shape = "same" if rng.random() < 0.95 else rng.choice(SHAPES[4:])
            payload = last.get(which, 0) if rng.random() < 0.85 else rng.randrange(4)
            last[which] = payload
            events.append(("frame", which, payload, flips, rng.choice(steps), shape))
        if rng.random() < read_chance:
            events.append(("read",))
    return events


def test_long_streams_of_mostly_repeated_frames(vehicle: dbc.Vehicle) -> None:
    skipped = 0
    for seed in range(40):
        skipped += run_both(vehicle, _timeline(seed), seed, random.Random(seed).choice([1, 7, 500]))
    assert skipped > 1000  # the skip was exercised, not just the decoding
