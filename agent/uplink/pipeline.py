"""The uplink data path inside the process: frame -> decode -> policies -> batch -> outbox.

`on_frame` runs on the event loop for each received frame (no task, no log line per frame);
batches are written to the outbox when `batch_max_samples` is reached or every
`batch_interval_ms`, whichever comes first. The batch buffer never exceeds
`batch_max_samples`; when the outbox refuses a write (disk full), the batch's samples are
dropped and counted, and the pipeline keeps going.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import structlog

from agent.config import TelemetrySettings
from agent.logs import Repeating
from agent.uplink.encoding import TelemetryEncoder
from agent.uplink.outbox import Outbox, OutboxError, OutboxFull
from agent.vehicle.compute import Computer
from agent.vehicle.decode import Decoder
from agent.vehicle.model import FrameLike, RawFrame, Sample
from agent.vehicle.repeats import MuxRepeat, Repeat, Repeats
from agent.vehicle.signals import Sampler

log = structlog.get_logger("agent.uplink.pipeline")

FIRST_FLUSH_S = 0.1  # time for the first frames of the car's fast (10-100 ms) messages


@dataclass(slots=True)
class PipelineStats:
    samples_published: int = 0  # samples that passed the policies (into batches)
    batches: int = 0
    samples_dropped: int = 0  # lost because the outbox refused the write
    frames_after_stop: int = 0
    frames_repeated: int = 0  # live path: skipped as repeats of the last frame of their id


def telemetry_payload(
    vehicle_id: str, seq: int, samples: list[Sample], encoder: TelemetryEncoder | None = None
) -> bytes:
    body = {
        "v": 1,
        "vehicle_id": vehicle_id,
        "seq": seq,
        "samples": [{"path": s.path, "ts": s.ts, "value": s.value} for s in samples],
    }
    if encoder is not None:
        return encoder.encode(body)
    return json.dumps(body, separators=(",", ":")).encode()


class Pipeline:
    def __init__(
        self,
        *,
        vehicle_id: str,
        decoders: dict[str, Decoder],
        sampler: Sampler,
        outbox: Outbox,
        settings: TelemetrySettings,
        on_stored: Callable[[], None] = lambda: None,
        computer: Computer | None = None,
    ) -> None:
        self._vehicle_id = vehicle_id
        self.decoders = decoders
        self.computer = computer if computer else None  # `compute:` paths, if any
        self.sampler = sampler
        self._outbox = outbox
        self._settings = settings
        self._on_stored = on_stored
        self._encoder = TelemetryEncoder(settings.encoding, settings.compression)
        self._batch: list[Sample] = []
        self._scratch: list[Sample] = []
        self._accepting = True
        # Campaigns tap every sample of the paths they read, before the policies (set_taps):
        # decoded paths inside the decode plan of the frames that carry them (other frames
        # pay nothing); computed paths here, after the computer, only when one is tapped.
        self._tap_computed: set[str] = set()
        self._tap_sink: list[Sample] = []
        self.stats = PipelineStats()
        self._repeats: dict[str, Repeats] = {}  # the live path's, by bus
        self._dropped_log = Repeating(log, "telemetry_dropped")
        self.last_tick = time.monotonic()  # the batch timer's heartbeat, for the watchdog

    def receiver_for(self, bus: str) -> Callable[[FrameLike], None]:
        """The per-frame callback of one bus."""
        decoder = self.decoders[bus]
        scratch = self._scratch
        offer = self.sampler.offer
        batch = self._batch
        limit = self._settings.batch_max_samples
        tap_computed = self._tap_computed
        feed = self.computer.feed if self.computer is not None else None

        def on_frame(frame: FrameLike) -> None:
            if not self._accepting:
                self.stats.frames_after_stop += 1
                return
            scratch.clear()
            decoder.decode_into(frame, scratch)
            if feed is not None and scratch:
                decoded = len(scratch)
                feed(scratch)
                if tap_computed:
                    self._tap_computed_of(scratch, decoded)
            for sample in scratch:
                if offer(sample):
                    batch.append(sample)
                    if len(batch) >= limit:
                        self.flush()

        return on_frame

    def frames_receiver_for(self, bus: str) -> Callable[[list[RawFrame]], None]:
        """The callback of one bus for frames read many at a time, as the kernel's structs
        carry them (agent.vehicle.sockread): the same work as `receiver_for`'s per frame,
        with the sampling policies run once over all the samples of the read, and frames
        that repeat the last one of their id while no policy is due skipped before decoding
        (agent.vehicle.repeats)."""
        decoder = self.decoders[bus]
        decode = decoder.decode_raw
        decode_changed = decoder.decode_changed
        sampler = self.sampler
        select = sampler.select
        batch = self._batch
        limit = self._settings.batch_max_samples
        tap_computed = self._tap_computed
        computer = self.computer
        feed = computer.feed if computer is not None else None
        # Only frames that carry an input of a computed path are looked at by the computer.
        feed_keys = decoder.keys_carrying(computer.inputs) if computer is not None else frozenset()
        stats = self.stats
        repeats = self._repeats.get(bus)
        if repeats is None:
            inputs = computer.inputs if computer is not None else frozenset()
            repeats = self._repeats[bus] = Repeats(decoder, sampler, inputs)
        repeat_of = repeats.by_key.get
        from_bytes = int.from_bytes
        # A computed value is stamped with the newest frame time of its inputs: a frame that
        # is skipped, or a signal left out because it did not move, still renews the time of
        # the inputs it carries, as decoding it would have.
        seen_at = computer.seen_at if computer is not None else None

        def on_frames(frames: list[RawFrame]) -> None:
            if not self._accepting:
                stats.frames_after_stop += len(frames)
                return
            if repeats.version != sampler.rules_version:
                repeats.reset()
            samples: list[Sample] = []
            touched: set[Repeat] = set()
            held_back: list[Repeat] = []  # ids whose held-back values are to be caught up
            skipped = skipped_samples = 0
            for key, data, ts in frames:
                entry = repeat_of(key)
                repeat: Repeat | None = None
                if entry is not None:
                    bits = from_bytes(data, "little") & entry.mask
                    if entry.__class__ is MuxRepeat:  # the selector value's own state
                        repeat = entry.branches.get(entry.selector(bits))
                        if repeat is not None:
                            bits &= repeat.mask
                    else:
                        repeat = entry  # type: ignore[assignment]
                if repeat is None:
                    start = len(samples)
                    decode(key, data, ts, samples)
                else:
                    emit = -1  # every signal's sample
                    held = 0
                    if len(data) == repeat.length and repeat.bits >= 0:
                        if (
                            repeat.dirty
                            and repeat.hopeful
                            and not (bits ^ repeat.bits) & repeat.firm
                        ):
                            # Its id was decoded earlier in this read, and this frame repeats
                            # it (but for signals that may be held back): the policies see
                            # the samples so far, so that it can be judged (the other ids
                            # decoded so far are renewed at the end of the read).
                            if samples:
                                batch.extend(select(samples))
                                samples = []
                            if repeat.stale >= 0:
                                repeats.catch_up(repeat)
                            repeats.renew((repeat,))
                            touched.discard(repeat)
                        if repeat.floor <= ts < repeat.due:
                            # The signals that moved, now or earlier in this read (their
                            # policies are not worked out again yet); the others would not
                            # be published before `due`. Of those that moved, the ones
                            # that no policy would publish before `quiet_until` are held
                            # back, their values caught up at the end of the read.
                            moved = bits ^ repeat.bits
                            if ts < repeat.quiet_until:
                                held = moved & repeat.quiet & ~repeat.dirty
                            if held:
                                moved ^= held
                                if repeat.stale < 0:
                                    held_back.append(repeat)
                                repeat.stale = bits
                            elif repeat.stale >= 0:
                                repeat.stale = -1  # they are back to what `bits` holds
                            emit = moved | repeat.dirty
                            if seen_at is not None:
                                for path, mask in repeat.inputs:
                                    if not emit & mask:
                                        seen_at[path] = ts
                            if not emit:
                                skipped += 1
                                skipped_samples += repeat.count
                                continue
                    if emit == -1 and repeat.stale >= 0:
                        # Caught up now: a full decode gives newer values after these, and
                        # a short frame gives none at all.
                        repeats.catch_up(repeat)
                    start = len(samples)
                    complete = decode_changed(key, data, ts, samples, emit, bits, repeat.branch)
                    repeat.dirty |= emit
                    repeat.length = len(data)
                    # A short frame or a dropped value: the next one is decoded in full. A
                    # held-back signal keeps the bits last given, so that its move shows.
                    repeat.bits = bits ^ held if complete else -1
                    touched.add(repeat)
                if feed is not None and key in feed_keys:
                    decoded = len(samples)
                    feed(samples, start)
                    if tap_computed:
                        self._tap_computed_of(samples, decoded)
            if skipped:
                stats.frames_repeated += skipped
                decoder.stats.decoded += skipped
                decoder.stats.samples += skipped_samples  # as if given again
            if samples:
                batch.extend(select(samples))
            for repeat in held_back:  # after select: the newest values are the held ones
                if repeat.stale >= 0:
                    repeats.catch_up(repeat)
                    touched.add(repeat)
            if len(batch) >= limit:  # samples may have gone in mid-read, too
                self.flush(whole_only=True)
            if touched:
                repeats.renew(touched)

        return on_frames

    def set_taps(self, paths: Iterable[str], sink: list[Sample]) -> None:
        """Tap these paths into `sink` (the campaign engine's pending list): the frames
        that carry a decoded one hand all their samples to it from the decode plan (the
        engine sorts them by path on its tick); computed ones are picked here. Changed in
        place: the frame callbacks hold these very objects."""
        wanted = set(paths)
        for decoder in self.decoders.values():
            decoder.set_tap(wanted, sink if wanted else None)
        for repeats in self._repeats.values():
            repeats.reset()  # tapped plans are not skipped
        computed = self.computer.outputs if self.computer is not None else frozenset()
        self._tap_computed.clear()
        self._tap_computed.update(wanted & computed)
        self._tap_sink = sink

    def _tap_computed_of(self, samples: list[Sample], start: int) -> None:
        tapped = self._tap_computed
        self._tap_sink.extend(s for s in samples[start:] if s[0] in tapped)

    def stop_accepting(self) -> None:
        """Shutdown step one: frames still arriving are ignored (counted)."""
        self._accepting = False

    def flush(self, *, whole_only: bool = False) -> int:
        """Write what is batched to the outbox (as several messages if need be); the count.
        `whole_only`: only batches of `batch_max_samples`, the rest stays for the next."""
        written = 0
        limit = self._settings.batch_max_samples
        while len(self._batch) >= (limit if whole_only else 1):
            chunk = self._batch[:limit]
            del self._batch[:limit]
            try:
                self._outbox.append(
                    "telemetry",
                    "telemetry",
                    self._payload_of(chunk),
                    stream="telemetry",
                    items=len(chunk),
                )
            except OutboxFull:
                pass  # the outbox counted it (dropped_telemetry, dropped_samples)
            except OutboxError as exc:
                self.stats.samples_dropped += len(chunk)
                self._dropped_log.failed(samples=len(chunk), error=str(exc))
            else:
                self._dropped_log.cleared()
                self.stats.batches += 1
                self.stats.samples_published += len(chunk)
                written += len(chunk)
        if written:
            self._on_stored()
        return written

    def _payload_of(self, chunk: list[Sample]) -> Callable[[int], bytes]:
        return lambda seq: telemetry_payload(self._vehicle_id, seq, chunk, self._encoder)

    async def run(self) -> None:
        """Flush every `batch_interval_ms` (measured from the last flush). During the first
        interval the batch is looked at every FIRST_FLUSH_S until one has gone out, so that a
        back end sees a (re)started car's state within a moment, not a whole interval later."""
        interval = self._settings.batch_interval_ms / 1000.0
        # Until the first batch has gone out (the buses may take a moment to deliver), or
        # one interval has passed, look every FIRST_FLUSH_S.
        early_until = time.monotonic() + interval
        while True:
            early = self.stats.batches == 0 and time.monotonic() < early_until
            await asyncio.sleep(min(interval, FIRST_FLUSH_S) if early else interval)
            if self._batch:
                self.flush()
            self.last_tick = time.monotonic()
