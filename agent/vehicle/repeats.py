"""Frames that repeat the last one of their id, skipped before they are decoded.

Most frames on a bus carry what the one before them carried: a pack voltage that moves every
few seconds, sent every 10 ms. Such a frame decodes to the values the sampler already holds,
and while no policy of its paths is due it publishes nothing and changes nothing that anyone
reads. The live path (Pipeline.frames_receiver_for) therefore compares each frame, under a
mask of the bits its decode plan reads, with the last frame of its id that was decoded, and
skips it when the bits are equal and its time is before the earliest moment a policy would
publish one of its paths (Sampler.due). Every other frame is decoded as before; the skip is
then off for that id until the read's samples have been through the policies and the moment
is worked out again (`renew`). Skipped frames count as decoded and their samples in the
decoder's `samples`, so the decode counters read as if each frame had gone the whole way; the
sampler's own `offered` and `suppressed` count what it was shown.

What a skip leaves out, and why that is safe:
- the sampler's latest value of each path: unchanged, the bits are the same;
- the computer: its values are unchanged; the times of its inputs, which stamp a computed
  value, are renewed by the pipeline for the inputs the frame carries;
- a campaign's tap: tapped plans are never skipped (Decoder.repeat_masks leaves them out).

A plan that dropped a value (a sentinel, out of range) is not skipped until it decodes a
frame in full again, since a skip could not count the drop.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from agent.vehicle.decode import Decoder
from agent.vehicle.signals import Sampler

# The policies compare `ts - published_ts` with an interval; the skip compares `ts` with
# `published_ts + interval`, which floating point may round the other way by an ulp of the
# time. Skipping stops this much earlier than the moment, so the two never disagree.
_MARGIN_S = 1e-6
_MARGIN_RELATIVE = 4e-16


class Repeat:
    """The skip state of one frame id."""

    __slots__ = ("bits", "count", "due", "floor", "hopeful", "length", "mask", "paths")

    def __init__(self, mask: int, length: int, paths: tuple[str, ...]) -> None:
        self.mask = mask
        self.paths = paths
        self.count = len(paths)  # the samples a frame of this id gives
        self.bits = -1  # the masked bits of the last frame decoded; -1: none to compare with
        self.length = length  # its number of bytes (a shorter frame could look equal)
        self.floor = math.inf  # no skip before this time: the newest publish of the paths
        self.due = -math.inf  # no skip from this time on: a policy would publish
        # False when the last renewal found no time a repeat could be skipped in (a path
        # published at every value): such an id is not worth renewing in the middle of a read.
        self.hopeful = True


class Repeats:
    """The skip states of one bus's frame ids, rebuilt when the policies or the taps change."""

    def __init__(self, decoder: Decoder, sampler: Sampler) -> None:
        self._decoder = decoder
        self._sampler = sampler
        self.by_key: dict[int, Repeat] = {}  # changed in place: the frame callback holds it
        self.version = -1
        self.reset()

    def reset(self) -> None:
        """Forget every state (the decode plans' taps or the policies changed)."""
        self.by_key.clear()
        for key, (mask, length, paths) in self._decoder.repeat_masks().items():
            self.by_key[key] = Repeat(mask, length, paths)
        self.version = self._sampler.rules_version

    def renew(self, touched: Iterable[Repeat]) -> None:
        """Work out again, after the policies have seen a read's samples, from when the
        ids decoded in it may be skipped and until when."""
        due_of = self._sampler.due
        for repeat in touched:
            if repeat.bits < 0:
                repeat.due = -math.inf
                continue
            due, newest = due_of(repeat.paths)
            repeat.floor = newest
            if math.isfinite(due):
                due -= _MARGIN_S + abs(due) * _MARGIN_RELATIVE
            repeat.due = due
            repeat.hopeful = due > newest
