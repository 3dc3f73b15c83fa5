"""The decode functions generated per frame id give exactly what the general plan gives
(bitstruct, then the output loops): the same samples, the same drops, the same counters."""

from __future__ import annotations

import copy
import random
from pathlib import Path

from cantools.database.can import Message, Signal
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from agent.vehicle import dbc
from agent.vehicle.decode import Decoder, build_decoders
from agent.vehicle.model import Sample
from agent.vehicle.plans import Drop, Outputs, signal_mask
from agent.vehicle.plans import unpack as unpack_with_bitstruct
from agent.vehicle.unpackers import generate, raw_reader
from tests.vehicle.test_decode import all_signals  # noqa: F401 - the fixture

ROOT = Path(__file__).resolve().parents[2]


@given(
    big=st.booleans(),
    start=st.integers(0, 63),
    length=st.integers(1, 64),
    signed=st.booleans(),
    data=st.binary(min_size=8, max_size=8),
)
@settings(max_examples=400, deadline=None)
def test_a_generated_raw_value_is_the_one_cantools_decodes(
    big: bool, start: int, length: int, signed: bool, data: bytes
) -> None:
    """Any layout cantools accepts in 8 bytes: Intel or Motorola, signed or not."""
    signal = Signal(
        "S", start, length, byte_order="big_endian" if big else "little_endian", is_signed=signed
    )
    try:
        message = Message(0x10, "M", 8, [signal], strict=True)
        expected = message.decode(data, scaling=False)["S"]
    except Exception:
        assume(False)  # does not fit in 8 bytes
    outs = Outputs()
    outs.general.append((signal_mask([signal]), "P", "S", lambda raw: raw))
    unpack = generate(outs, {"S": signal}, 8, Drop)
    assert unpack is not None
    out: list[Sample] = []
    bits = int.from_bytes(data, "little") & signal_mask([signal])
    unpack(bits, 0.0, out, -1, None)
    assert out == [Sample("P", 0.0, expected)]
    assert raw_reader(signal, 8)(bits) == expected  # how a multiplexer's selector is read


def _compare(decoder: Decoder, seed: int) -> int:
    """Random frames, and random sets of changed signals, through both ways; the number of
    plans that have a generated function."""
    rng = random.Random(seed)
    generated = 0
    for plan in decoder._plans.values():
        if plan.fast is None:  # multiplexed, or a float signal
            continue
        generated += 1
        for _ in range(300):
            data = rng.randbytes(plan.length)
            bits = int.from_bytes(data, "little") & plan.mask
            changed = rng.choice([-1, -1, rng.getrandbits(8 * plan.length), 0])
            general, fast = copy.deepcopy(decoder.stats), copy.deepcopy(decoder.stats)
            decoder.stats = general
            out_general: list[Sample] = []
            dropped_general = decoder._emit(
                plan.outs, unpack_with_bitstruct(plan, data), 1.5, out_general, changed
            )
            decoder.stats = fast
            out_fast: list[Sample] = []
            before = len(out_fast)
            dropped_fast = plan.fast(bits, 1.5, out_fast, changed, fast)
            fast.samples += len(out_fast) - before
            assert out_fast == out_general, (plan.name, data.hex(), hex(changed))
            assert [type(s.value) for s in out_fast] == [type(s.value) for s in out_general]
            assert dropped_fast == dropped_general
            assert fast == general
    return generated


def test_the_reference_cars_frames(demo_vehicle: dbc.Vehicle) -> None:
    """The demo mapping: linear transforms, maps to booleans and gears, choice names, ranges;
    big- and little-endian signals."""
    generated = 0
    for decoder in build_decoders(demo_vehicle).values():
        generated += _compare(decoder, 7)
    assert generated >= 6


def test_every_signal_of_the_reference_dbcs(all_signals: dbc.Vehicle) -> None:  # noqa: F811
    generated = 0
    for decoder in build_decoders(all_signals).values():
        generated += _compare(decoder, 11)
    assert generated >= 8
