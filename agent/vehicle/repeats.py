"""Frames that repeat the last one of their id, skipped before they are decoded.

Most frames on a bus carry what the one before them carried: a pack voltage that moves every
few seconds, sent every 10 ms. Such a frame decodes to the values the sampler already holds,
and while no policy of its paths is due it publishes nothing and changes nothing that anyone
reads. The live path (Pipeline.frames_receiver_for) therefore compares each frame, under a
mask of the bits its decode plan reads, with the last frame of its id that was decoded, and
skips it when the bits are equal and its time is before the earliest moment a policy would
publish one of its paths (Sampler.timing). A frame whose bits moved gives the samples of the
signals that moved; until the read's samples have been through the policies and the moment
is worked out again (`renew`), those signals are given with every frame of the id (`dirty`:
their policies may have moved the moment), while the others are still left out. Skipped
frames count as decoded and their samples in the decoder's `samples`, so the decode counters
read as if each frame had gone the whole way; the sampler's own `offered` and `suppressed`
count what it was shown.

What a skip leaves out, and why that is safe:
- the sampler's latest value of each path: unchanged, the bits are the same;
- the computer: its values are unchanged; the times of its inputs, which stamp a computed
  value, are renewed by the pipeline for the inputs the frame carries;
- a campaign's tap: tapped plans are never skipped (Decoder.repeat_masks leaves them out).

A plan that dropped a value (a sentinel, out of range) is not skipped until it decodes a
frame in full again, since a skip could not count the drop.

Held back: a signal whose bits moved is still left out while its path's `min_interval_ms`
since the last publish runs (`Sampler.timing`): whatever its value, no policy publishes
it before then (a speed that moves with every frame, published twice a second at most, is
decoded twice a second, not a hundred times). Only signals that cannot drop a value (a whole
or exact decimal conversion with no bound to cross: `SkipUnit.steady`) and that no computed
path reads. Their bits stay the last ones given in `bits`, so that once the interval is over
any move shows; the sampler's latest value of their paths is caught up from the id's newest
frame at the end of the read (and before a renewal), so that no one reading it, and no
`due`, sees an older value than decoding every frame would leave.

A multiplexed id (a TPMS frame taking each wheel in turn, a BMS frame carrying a few cells at a
time) keeps one state per selector value (`MuxRepeat`): frames of one wheel are compared with
the last frame of that wheel. Only where all its mapped signals are in branches, each in one:
a mapped base signal rides on every branch's frames, and so does a signal of several branches
(extended multiplexing), so one branch's bits could not stand for its value.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from agent.vehicle.decode import Decoder
from agent.vehicle.plans import MuxUnits, SkipUnit
from agent.vehicle.signals import Sampler

# The policies compare `ts - published_ts` with an interval; the skip compares `ts` with
# `published_ts + interval`, which floating point may round the other way by an ulp of the
# time. Skipping stops this much earlier than the moment, so the two never disagree.
_MARGIN_S = 1e-6
_MARGIN_RELATIVE = 4e-16


class Repeat:
    """The skip state of one frame id (or of one selector value of a multiplexed id)."""

    __slots__ = (
        "bits",
        "branch",
        "count",
        "dirty",
        "due",
        "dues",
        "firm",
        "floor",
        "helds",
        "holdable",
        "hopeful",
        "inputs",
        "key",
        "length",
        "mask",
        "path_bits",
        "paths",
        "published",
        "quiet",
        "quiet_until",
        "stale",
    )

    def __init__(self, key: int, unit: SkipUnit, inputs: frozenset[str]) -> None:
        self.key = key
        self.mask = unit.mask
        self.paths = unit.paths
        self.branch = unit.branch  # the selector value, for a multiplexed id
        # (path, bits) of the outputs that a computed path reads: their times are renewed
        # when the frame is skipped or they did not move.
        self.inputs = tuple((path, bits) for path, bits in unit.outputs if path in inputs)
        self.count = len(unit.paths)  # the samples a frame of this id gives
        self.bits = -1  # the masked bits of the last frame decoded; -1: none to compare with
        self.length = unit.length  # its number of bytes (a shorter frame could look equal)
        self.floor = math.inf  # no skip before this time: the newest publish of the paths
        self.due = -math.inf  # no skip from this time on: a policy would publish
        # The signals given since the last renewal (-1: all, as before the first): their
        # policies may have moved `due`, so they are given again until the next renewal; for
        # the others it holds. A renewal works out only their paths' timing again.
        self.dirty = -1
        # False when the last renewal found no time a repeat could be skipped in (a path
        # published at every value): such an id is not worth renewing in the middle of a read.
        self.hopeful = True
        by_bits: dict[int, set[str]] = {}  # each signal's bits and its paths
        bits_of: dict[str, int] = {}
        for path, bits in unit.outputs:
            by_bits.setdefault(bits, set()).add(path)
            bits_of[path] = bits_of.get(path, 0) | bits
        # Each path's bits, and its due time, last publish and held-until time from the
        # sampler (Sampler.timing) as of the last renewal: nothing but its own signal's
        # samples moves a path's value or its last publish.
        self.path_bits = tuple(bits_of[path] for path in self.paths)
        self.dues = [-math.inf] * len(self.paths)
        self.published = [-math.inf] * len(self.paths)
        self.helds = [-math.inf] * len(self.paths)

        def alone(bits: int) -> bool:  # no other signal reads these bits (strict: false)
            return not any(bits & other for other in by_bits if other != bits)

        # (bits, path indexes) of each signal that may be held back: all its paths steady,
        # none read by a computed path.
        index = {path: i for i, path in enumerate(self.paths)}
        self.holdable = tuple(
            (bits, tuple(index[path] for path in sorted(paths)))
            for bits, paths in by_bits.items()
            if paths <= unit.steady and not paths & inputs and alone(bits)
        )
        # The bits of the signals never held back: a frame whose other bits moved is a
        # repeat but for what may be held back, worth renewing for mid-read.
        self.firm = self.mask
        for bits, _ in self.holdable:
            self.firm &= ~bits
        self.quiet = 0  # the bits of the signals held back until `quiet_until`
        self.quiet_until = -math.inf
        # The masked bits of the id's newest frame when its held-back signals moved in it
        # (their values to catch up in the sampler); -1: nothing to catch up.
        self.stale = -1


class MuxRepeat:
    """A multiplexed id: one Repeat per selector value, found from the frame's bits."""

    __slots__ = ("branches", "mask", "selector")

    def __init__(self, key: int, units: MuxUnits, inputs: frozenset[str]) -> None:
        self.mask = units.mask
        self.selector = units.selector
        self.branches = {value: Repeat(key, unit, inputs) for value, unit in units.branches.items()}


class Repeats:
    """The skip states of one bus's frame ids, rebuilt when the policies or the taps change."""

    def __init__(
        self, decoder: Decoder, sampler: Sampler, inputs: frozenset[str] = frozenset()
    ) -> None:
        self._decoder = decoder
        self._sampler = sampler
        self._inputs = inputs  # the paths computed ones are made of
        # Changed in place: the frame callback holds it.
        self.by_key: dict[int, Repeat | MuxRepeat] = {}
        self.version = -1
        self.reset()

    def reset(self) -> None:
        """Forget every state (the decode plans' taps or the policies changed)."""
        self.by_key.clear()
        for key, unit in self._decoder.repeat_masks().items():
            if isinstance(unit, MuxUnits):
                self.by_key[key] = MuxRepeat(key, unit, self._inputs)
            else:
                self.by_key[key] = Repeat(key, unit, self._inputs)
        self.version = self._sampler.rules_version

    def catch_up(self, repeat: Repeat) -> None:
        """Give the sampler the values of the signals `repeat` held back, as its newest
        frame carries them, and take its bits as theirs."""
        stale, repeat.stale = repeat.stale, -1
        values = self._sampler.values
        for path, _ts, value in self._decoder.values_of(
            repeat.key, stale, repeat.quiet, repeat.branch
        ):
            values[path] = value
        if repeat.bits >= 0:
            repeat.bits = (repeat.bits & ~repeat.quiet) | (stale & repeat.quiet)
        repeat.dirty |= repeat.quiet  # their timing, worked out again at the renewal

    def renew(self, touched: Iterable[Repeat]) -> None:
        """Work out again, after the policies have seen a read's samples, from when the
        ids decoded in it may be skipped and until when, and which signals are held back
        until when."""
        timing_of = self._sampler.timing
        for repeat in touched:
            if repeat.bits < 0:
                repeat.dirty = -1  # all to work out once a frame is decoded in full
                repeat.due = -math.inf
                repeat.quiet, repeat.quiet_until = 0, -math.inf
                continue
            dirty, repeat.dirty = repeat.dirty, 0
            dues, published, helds = repeat.dues, repeat.published, repeat.helds
            for i, bits in enumerate(repeat.path_bits):
                if dirty & bits:
                    dues[i], published[i], helds[i] = timing_of(repeat.paths[i])
            due = min(dues)
            newest = max(published)
            repeat.floor = newest
            if math.isfinite(due):
                due -= _MARGIN_S + abs(due) * _MARGIN_RELATIVE
            repeat.due = due
            repeat.hopeful = due > newest
            quiet, until = 0, math.inf
            for bits, indexes in repeat.holdable:
                # select() holds a sample back while `ts - published < min_interval`.
                held = min([helds[i] for i in indexes])
                held -= _MARGIN_S + abs(held) * _MARGIN_RELATIVE
                if held > newest:
                    quiet |= bits
                    until = min(until, held)
            repeat.quiet = quiet
            repeat.quiet_until = until if quiet else -math.inf
