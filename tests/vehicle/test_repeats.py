"""Frames that repeat the last one of their id are skipped on the live path, and signals whose
bits did not move are left out of a frame's samples (agent.vehicle.repeats): what is
published, counted and remembered is exactly what decoding every frame gives."""

from __future__ import annotations

import functools
import itertools
import random
from pathlib import Path

import can
from cantools.database.can import Message, Signal
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from agent import config
from agent.sim.runner import record
from agent.sim.scenario import load_scenario
from agent.uplink.pipeline import Pipeline
from agent.vehicle import dbc
from agent.vehicle.model import Frame, RawFrame, Sample
from agent.vehicle.plans import signal_mask
from agent.vehicle.signals import Policy, policies_of
from tests.support.pipelines import Records, recording_pipeline

ROOT = Path(__file__).resolve().parents[2]
TAPPED = "Vehicle.Cabin.HVAC.AmbientAirTemperature"


@given(
    big=st.booleans(),
    start=st.integers(0, 63),
    length=st.integers(1, 32),
    signed=st.booleans(),
    seed=st.integers(0, 2**32),
)
@settings(max_examples=300, deadline=None)
def test_a_signals_mask_is_the_bits_cantools_reads(
    big: bool, start: int, length: int, signed: bool, seed: int
) -> None:
    """Flipping a bit under the mask changes the raw value cantools decodes; flipping any
    other bit changes nothing."""
    signal = Signal(
        "S",
        start,
        length,
        byte_order="big_endian" if big else "little_endian",
        is_signed=signed,
    )
    try:
        message = Message(0x10, "M", 8, [signal], strict=True)
        message.decode(bytes(8), scaling=False)
    except Exception:
        assume(False)  # a layout that does not fit in 8 bytes
    mask = signal_mask([signal])
    assert bin(mask).count("1") == length
    base = random.Random(seed).randbytes(8)
    before = message.decode(base, scaling=False)["S"]
    for bit in range(64):
        flipped = (int.from_bytes(base, "little") ^ (1 << bit)).to_bytes(8, "little")
        after = message.decode(flipped, scaling=False)["S"]
        assert (after != before) == bool(mask >> bit & 1), bit


@functools.cache
def _world() -> tuple[dbc.Vehicle, list[tuple[str, int]], dict[tuple[str, int], list[bytes]]]:
    """The reference car, and for each of its frame ids a few payloads it really sends."""
    vehicle = dbc.load_vehicle(config.load(ROOT / "config" / "demo.yaml"))
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "drive.log"
        record(vehicle, load_scenario("driving"), log, duration_s=30, start_ts=1.7e9)
        by_channel = {b.settings.channel: name for name, b in vehicle.buses.items()}
        pool: dict[tuple[str, int], list[bytes]] = {}
        for msg in can.LogReader(str(log)):
            key = msg.arbitration_id | (0x8000_0000 if msg.is_extended_id else 0)
            seen = pool.setdefault((by_channel[str(msg.channel)], key), [])
            if bytes(msg.data) not in seen and len(seen) < 3:
                seen.append(bytes(msg.data))
    return vehicle, sorted(pool), pool


def _pipeline(vehicle: dbc.Vehicle, records: Records, taps: list[Sample] | None) -> Pipeline:
    built = recording_pipeline(vehicle, records, 5)
    if taps is not None:
        built.set_taps({TAPPED}, taps)
    return built


STEPS = (0.0, 0.01, 0.01, 0.01, 0.02, 0.3, 0.6, 1.0, 61.0, 301.0, -2.0, -0.05)


@given(
    timeline=st.lists(
        st.tuples(
            st.integers(0, 2),  # which of this run's frame ids
            st.integers(0, 2),  # which of its payloads
            st.integers(-1000, 511),  # a bit to flip (negative: none)
            st.sampled_from(STEPS),  # time since the frame before
            st.integers(0, 60),  # 0: reload the policies here
        ),
        min_size=1,
        max_size=400,
    ),
    read_size=st.integers(1, 40),
    ids=st.lists(st.integers(0, 99), min_size=1, max_size=3),
)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_skipping_repeats_publishes_what_decoding_every_frame_does(
    timeline: list[tuple[int, int, int, float, int]], read_size: int, ids: list[int]
) -> None:
    vehicle, all_keys, pool = _world()
    keys = [all_keys[i % len(all_keys)] for i in ids]  # a few ids a run: more repeats
    frames: list[tuple[str, RawFrame]] = []
    reloads: set[int] = set()
    ts = 1.7e9
    for index, (which, payload, flip, step, reload) in enumerate(timeline):
        bus, key = keys[which % len(keys)]
        payloads = pool[(bus, key)]
        data = payloads[payload % len(payloads)]
        if 0 <= flip < 8 * len(data):  # a value out of range, a sentinel, a new number
            data = (int.from_bytes(data, "little") ^ (1 << flip)).to_bytes(len(data), "little")
        ts += step
        frames.append((bus, (key, data, ts)))
        if reload == 0:
            reloads.add(index)
    tightened = {
        path: Policy(on_change=policy.on_change, deadband=policy.deadband, max_interval_s=0.5)
        for path, policy in policies_of(vehicle.loaded.settings.signals).items()
    }

    one_records, one_taps = Records(), []
    one = _pipeline(vehicle, one_records, one_taps)
    per_frame = {name: one.receiver_for(name) for name in vehicle.buses}
    many_records, many_taps = Records(), []
    many = _pipeline(vehicle, many_records, many_taps)
    per_read = {name: many.frames_receiver_for(name) for name in vehicle.buses}
    pending: dict[str, list[RawFrame]] = {name: [] for name in vehicle.buses}

    def read_all() -> None:
        # The reference sees the frames in the order the reads hand them over: each bus's
        # socket is read in turn, so the buses' frames do not interleave as they were sent.
        for name, waiting in pending.items():
            if waiting:
                for key, data, stamp in waiting:
                    extended = bool(key & 0x8000_0000)
                    per_frame[name](Frame(key & 0x1FFF_FFFF, data, stamp, is_extended_id=extended))
                per_read[name](waiting)
                pending[name] = []
                assert len(many._batch) < 5  # whole batches went out, mid-read ones too

    for index, (bus, (key, data, stamp)) in enumerate(frames):
        pending[bus].append((key, data, stamp))
        if len(pending[bus]) >= read_size:
            read_all()
        if index in reloads:  # a SIGHUP between two reads
            read_all()
            rules = tightened if len(reloads & set(range(index + 1))) % 2 else None
            for built in (one, many):
                built.sampler.update_policies(rules or policies_of(vehicle.loaded.settings.signals))
    read_all()
    one.flush()
    many.flush()

    assert many_records.by_path == one_records.by_path
    assert many.sampler.values == one.sampler.values
    assert many_taps == one_taps
    for name in vehicle.buses:
        assert many.decoders[name].stats == one.decoders[name].stats
    assert many.computer is not None and one.computer is not None
    assert many.computer.stats == one.computer.stats


def test_most_frames_of_a_drive_are_skipped_or_cut_short() -> None:
    """On the reference car's drive, what the skip is for: over half the frames are
    repeats, and the published telemetry is the same as without it (the property above)."""
    vehicle, _, _ = _world()
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "drive.log"
        record(vehicle, load_scenario("driving"), log, duration_s=60, start_ts=1.7e9)
        by_channel = {b.settings.channel: name for name, b in vehicle.buses.items()}
        messages = [(by_channel[str(m.channel)], m) for m in can.LogReader(str(log))]
    built = _pipeline(vehicle, Records(), None)
    per_read = {name: built.frames_receiver_for(name) for name in vehicle.buses}
    for bus, msg in messages:
        key = msg.arbitration_id | (0x8000_0000 if msg.is_extended_id else 0)
        per_read[bus]([(key, bytes(msg.data), msg.timestamp)])
    decoded = sum(d.stats.decoded for d in built.decoders.values())
    assert decoded == len(messages)
    assert built.stats.frames_repeated > len(messages) / 2
    # A campaign reading a path of the climate frame: that frame is decoded every time.
    tapped: list[Sample] = []
    built = _pipeline(vehicle, Records(), tapped)
    per_read = {name: built.frames_receiver_for(name) for name in vehicle.buses}
    for bus, msg in messages:
        key = msg.arbitration_id | (0x8000_0000 if msg.is_extended_id else 0)
        per_read[bus]([(key, bytes(msg.data), msg.timestamp)])
    climate = sum(1 for _, msg in messages if msg.arbitration_id == 0x280)
    assert len([s for s in tapped if s.path == TAPPED]) == climate


def _both_ways(frames: list[RawFrame], read_size: int = 1) -> tuple[Pipeline, Records, Records]:
    """The powertrain frames through the per-frame way and the live way; (live pipeline,
    published by the per-frame way, published by the live way)."""
    vehicle, _, _ = _world()
    one_records, many_records = Records(), Records()
    one, many = _pipeline(vehicle, one_records, None), _pipeline(vehicle, many_records, None)
    per_frame, per_read = one.receiver_for("powertrain"), many.frames_receiver_for("powertrain")
    for key, data, ts in frames:
        per_frame(Frame(key, data, ts))
    for start in range(0, len(frames), read_size):
        per_read(frames[start : start + read_size])
    one.flush()
    many.flush()
    return many, one_records, many_records


def _bms(soc: float, counter: int = 0, current: float = -20.0) -> bytes:
    vehicle, _, _ = _world()
    message = vehicle.buses["powertrain"].by_name["BMS_Status"]
    values = {
        "BMS_SOC": soc,
        "BMS_SOH": 97.0,
        "BMS_PackVoltage": 400.0,
        "BMS_PackCurrent": current,
        "BMS_PackTempAvg": 25.0,
        "BMS_StatusCounter": counter,
    }
    return bytes(message.encode(values))


SOC = "Vehicle.Powertrain.TractionBattery.StateOfCharge.Current"  # deadband 0.5, 1 s, 60 s


def test_a_change_held_back_by_min_interval_goes_out_while_the_frame_repeats() -> None:
    """The state of charge moves by 1 % 0.1 s after it was published; `min_interval_ms:
    1000` holds it back, and the frames after it all repeat (only the rolling counter,
    which is not mapped, moves): it is published with the first frame at 1 s."""
    t0 = 1.7e9
    frames = [(0x100, _bms(80.0), t0)]
    frames += [(0x100, _bms(81.0, i % 16), t0 + 0.1 * i) for i in range(1, 30)]
    for read_size in (1, 7, 30):
        live, one, many = _both_ways(frames, read_size)
        assert many.by_path == one.by_path
        assert many.by_path[SOC] == [(t0, 80.0), (t0 + 0.1 * 10, 81.0)]
        assert live.stats.frames_repeated >= 18  # all but the first, the change, the publish


def test_a_change_held_back_goes_out_with_the_next_frame_in_the_same_read() -> None:
    """One read: the state of charge moves and is held back (1 s), then, after that second,
    a frame in which only the current moved. The state of charge did not move in it, but its
    held-back value is due: it goes out with that frame, as decoding every frame gives."""
    t0 = 1.7e9
    frames = [(0x100, _bms(80.0), t0)]
    later = [(0x100, _bms(81.0), t0 + 0.1), (0x100, _bms(81.0, current=-30.0), t0 + 1.05)]
    vehicle, _, _ = _world()
    one_records, many_records = Records(), Records()
    one, many = _pipeline(vehicle, one_records, None), _pipeline(vehicle, many_records, None)
    per_frame, per_read = one.receiver_for("powertrain"), many.frames_receiver_for("powertrain")
    for read in (frames, later):
        for key, data, ts in read:
            per_frame(Frame(key, data, ts))
        per_read(read)
    one.flush()
    many.flush()
    assert many_records.by_path == one_records.by_path
    assert many_records.by_path[SOC] == [(t0, 80.0), (t0 + 1.05, 81.0)]


def test_a_heartbeat_goes_out_while_the_frame_repeats() -> None:
    t0 = 1.7e9
    frames = [(0x100, _bms(80.0, i % 16), t0 + 0.5 * i) for i in range(260)]
    live, one, many = _both_ways(frames, 13)
    assert many.by_path == one.by_path
    assert [ts - t0 for ts, _ in many.by_path[SOC]] == [0.0, 60.0, 120.0]
    assert live.stats.frames_repeated >= 250


def test_time_running_backwards_is_judged_in_full() -> None:
    """A clock reset: the repeated frame's interval counts as elapsed, as without the skip."""
    t0 = 1.7e9
    frames = [(0x100, _bms(80.0), t0 + 0.1 * i) for i in range(5)]
    frames += [(0x100, _bms(80.0), t0 - 100.0 + 0.1 * i) for i in range(5)]
    _, one, many = _both_ways(frames, 3)
    assert many.by_path == one.by_path
    assert (t0 - 100.0, 80.0) in many.by_path[SOC]


POWER = "Vehicle.Powertrain.TractionBattery.CurrentPower"  # voltage * current


def test_a_computed_value_keeps_the_time_of_its_newest_input_across_skipped_frames() -> None:
    """The battery's power is stamped with the newest frame time of voltage and current.
    A frame whose voltage did not move still renews the voltage's time, skipped or cut short,
    as decoding it in full does; here the clock steps back at the end."""
    vehicle, _, _ = _world()
    message = vehicle.buses["powertrain"].by_name["BMS_Status"]

    def bms(current: float) -> bytes:
        values = {
            "BMS_SOC": 80.0,
            "BMS_SOH": 97.0,
            "BMS_PackVoltage": 400.0,
            "BMS_PackCurrent": current,
            "BMS_PackTempAvg": 25.0,
            "BMS_StatusCounter": 0,
        }
        return bytes(message.encode(values))

    t0 = 1.7e9
    reads = [
        [(0x100, bms(-20.0), t0)],
        [(0x100, bms(-20.5), t0 + 49), (0x100, bms(-21.0), t0 + 50)],
        [(0x100, bms(-22.0), t0 + 20)],
    ]
    one, many, one_records, many_records = _read_by_read(reads)
    assert many_records.by_path[POWER] == one_records.by_path[POWER]
    assert many.computer is not None and one.computer is not None
    assert many.computer.seen_at == one.computer.seen_at


OUTSIDE_DBC = """VERSION ""
NS_ :
BS_:
BU_: X
BO_ 256 A: 2 X
 SG_ Spd : 8|16@1+ (0.01,0) [0|300] "km/h" X
BO_ 257 B: 2 X
 SG_ Volt : 15|16@0+ (0.1,0) [0|1000] "V" X
"""


def test_a_signal_running_past_its_message_is_counted_failed_as_without_the_skip(
    tmp_path: Path,
) -> None:
    """`strict: false` loads a signal that runs past its 2-byte message as written: such
    frames fail to decode and are counted `failed`, on the live path too (no generated
    function for them), whatever the frame's length; nothing raises, nothing is published."""
    (tmp_path / "outside.dbc").write_text(OUTSIDE_DBC)
    (tmp_path / "outside.yaml").write_text(
        "vehicle_id: OUT-1\n"
        "can:\n"
        "  buses:\n"
        "    - {name: a, interface: virtual, channel: out-a, dbc: [outside.dbc], strict: false}\n"
        "signals:\n"
        "  - {path: Vehicle.Speed, source: Spd}\n"
        "  - {path: Vehicle.Powertrain.TractionBattery.CurrentVoltage, source: Volt}\n"
    )
    vehicle = dbc.load_vehicle(config.load(tmp_path / "outside.yaml"))
    frames = [
        (key, data, 1.7e9 + index)
        for index, (key, data) in enumerate(
            [(0x100, bytes([1, 2])), (0x100, bytes(range(1, 9))), (0x101, bytes([1, 2]))]
            + [(0x101, bytes(range(1, 9)))] * 2
        )
    ]
    records = {"one": Records(), "many": Records()}
    built = {way: recording_pipeline(vehicle, records[way], 500) for way in records}
    for key, data, ts in frames:
        built["one"].receiver_for("a")(Frame(key, data, ts))
    built["many"].frames_receiver_for("a")(frames)
    for pipeline in built.values():
        pipeline.flush()
    assert records["many"].by_path == records["one"].by_path == {}
    stats = built["many"].decoders["a"].stats
    assert stats == built["one"].decoders["a"].stats
    assert stats.failed == len(frames)


SPEED = "Vehicle.Speed"  # deadband 0.5, min_interval_ms 500, max_interval_s 60: held back
GEAR = "Vehicle.Powertrain.Transmission.SelectedGear"  # a table: never held back


def _vcu(speed: float, gear: int = 3, counter: int = 0) -> bytes:
    vehicle, _, _ = _world()
    message = vehicle.buses["powertrain"].by_name["VCU_Status"]
    values = {
        "VCU_VehicleSpeed": speed,
        "VCU_GearPos": gear,
        "VCU_ParkLock": 0,
        "VCU_Ignition": 3,
        "VCU_Odometer": 12345.6,
        "VCU_Counter": counter,
    }
    return bytes(message.encode(values, scaling=True, strict=False))


def _read_by_read(reads: list[list[RawFrame]]) -> tuple[Pipeline, Pipeline, Records, Records]:
    """Each read through both ways; after each, the sampler's latest values must agree (a
    held-back value is caught up by the end of its read)."""
    vehicle, _, _ = _world()
    one_records, many_records = Records(), Records()
    one, many = _pipeline(vehicle, one_records, None), _pipeline(vehicle, many_records, None)
    per_frame, per_read = one.receiver_for("powertrain"), many.frames_receiver_for("powertrain")
    for read in reads:
        for key, data, ts in read:
            per_frame(Frame(key, data, ts))
        per_read(read)
        assert many.sampler.values == one.sampler.values
    one.flush()
    many.flush()
    assert many.decoders["powertrain"].stats == one.decoders["powertrain"].stats
    return one, many, one_records, many_records


def test_a_signal_moving_every_frame_is_decoded_when_its_policy_could_publish_it() -> None:
    """The speed moves with every frame (100 a second, 0.01 km/h each); `min_interval_ms:
    500` and the 0.5 km/h deadband publish it about twice a second. The frames between are
    held back, skipped without decoding, and the published speeds, the latest values and
    the counters are those of decoding every frame."""
    t0 = 1.7e9
    frames = [(0x200, _vcu(50.0 + 0.01 * i, counter=i % 16), t0 + 0.01 * i) for i in range(400)]
    reads = [frames[i : i + 25] for i in range(0, len(frames), 25)]
    _one, many, one_records, many_records = _read_by_read(reads)
    assert many_records.by_path == one_records.by_path
    times = [ts for ts, _ in many_records.by_path[SPEED]]
    assert len(times) >= 6 and all(b - a >= 0.5 for a, b in itertools.pairwise(times))
    # Decoded: the first frame, a few after each publish, and the frames due: not 400.
    decoded_in_full_or_part = 400 - many.stats.frames_repeated
    assert decoded_in_full_or_part <= 40, decoded_in_full_or_part


def test_a_held_back_move_shows_once_the_interval_is_over_even_if_absorbed_elsewhere() -> None:
    """The speed moves beyond its deadband while held back, in the same frame as the gear (so
    that frame is decoded, the gear given and the speed not); it then stays. Once the
    interval is over the speed is published at the next frame, as decoding every frame
    does, though no frame after the gear change moved its bits."""
    t0 = 1.7e9
    reads = [
        [(0x200, _vcu(50.0), t0)],  # published
        [(0x200, _vcu(50.2), t0 + 0.1)],  # within the deadband: the heartbeat is next
        [(0x200, _vcu(50.2), t0 + 0.2 + 0.01 * i) for i in range(5)],  # repeats
        [(0x200, _vcu(60.0, gear=2), t0 + 0.3)]  # both move; the speed is held back
        + [(0x200, _vcu(60.0, gear=2), t0 + 0.4 + 0.05 * i) for i in range(6)],
    ]
    _, _, one_records, many_records = _read_by_read(reads)
    assert many_records.by_path == one_records.by_path
    assert many_records.by_path[SPEED] == [(t0, 50.0), (t0 + 0.5, 60.0)]
    assert many_records.by_path[GEAR][-1] == (t0 + 0.3, 0)


@given(
    moves=st.lists(
        st.tuples(
            st.sampled_from([0.0, 0.0, 0.01, 0.3, 0.6, -0.6, 5.0]),  # speed change
            st.booleans(),  # gear change
            st.sampled_from([0.0, 0.01, 0.01, 0.05, 0.2, 0.49, 0.5, 0.51, 1.0, -0.3, 61.0]),
        ),
        min_size=1,
        max_size=300,
    ),
    read_size=st.integers(1, 30),
)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_held_back_signals_publish_and_remember_what_decoding_every_frame_does(
    moves: list[tuple[float, bool, float]], read_size: int
) -> None:
    """Any speeds, gear changes and time steps (backwards too), in reads of any size: the
    same publishes, the same latest values after every read, the same counters."""
    t0, speed, gear = 1.7e9, 50.0, 3
    frames: list[RawFrame] = []
    ts = t0
    for index, (delta, shift, step) in enumerate(moves):
        speed = min(max(speed + delta, 0.0), 300.0)
        gear = (gear + 1) % 4 if shift else gear
        ts += step
        frames.append((0x200, _vcu(speed, gear, index % 16), ts))
    reads = [frames[i : i + read_size] for i in range(0, len(frames), read_size)]
    _, _, one_records, many_records = _read_by_read(reads)
    assert many_records.by_path == one_records.by_path


def test_a_short_frame_after_a_held_back_move_keeps_the_moved_value() -> None:
    """The speed moves while held back, then a truncated frame of the same id arrives in the
    same read (counted short, no value): the sampler's latest speed is the moved one, as
    decoding every frame leaves it, not the one before."""
    t0 = 1.7e9
    reads = [
        [(0x200, _vcu(50.0), t0)],
        [(0x200, _vcu(50.0), t0 + 0.05)],
        [(0x200, _vcu(70.0), t0 + 0.1), (0x200, _vcu(70.0)[:5], t0 + 0.15)],
    ]
    one, many, _, _ = _read_by_read(reads)
    assert many.sampler.values[SPEED] == one.sampler.values[SPEED] == 70.0
    assert many.decoders["powertrain"].stats.short == 1
