"""Counters from every component: the `P/health` payload and the periodic stats log line."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import structlog

from agent.uplink.mqtt import Uplink, UplinkStats
from agent.uplink.outbox import Outbox
from agent.uplink.pipeline import Pipeline
from agent.vehicle.can_io import CanReceiver
from agent.vehicle.decode import Decoder

log = structlog.get_logger("agent.stats")

# The outbox's persistent drop counters, each present from the start (zeros included) so a
# back end never has to tell "none yet" from "not reported". docs/schemas/health.schema.json
# lists every key of P/health; a key added here goes there too.
DROPPED_COUNTERS = (
    "dropped_telemetry",
    "dropped_event",
    "dropped_response",
    "dropped_campaign",
    "dropped_samples",
    "expired_telemetry",
    "expired_samples",
    "lost_records",
)


class Health:
    def __init__(
        self,
        *,
        boot_id: str,
        decoders: dict[str, Decoder],
        receivers: list[CanReceiver],
        pipeline: Pipeline,
        outbox: Outbox,
        uplink: Callable[[], Uplink | None],
        commands: Callable[[], dict[str, Any]],
    ) -> None:
        self._boot_id = boot_id
        self._decoders = decoders
        self._receivers = receivers
        self._pipeline = pipeline
        self._outbox = outbox
        self._uplink = uplink
        # The executor's counters, through a callable: uplink/ sits below commands/.
        self._commands = commands
        self._started = time.monotonic()

    def snapshot(self) -> dict[str, Any]:
        buses: dict[str, Any] = {}
        for receiver in self._receivers:
            stats: dict[str, Any] = dict(self._decoders[receiver.name].stats.as_dict())
            stats.update(
                received=receiver.stats.frames,
                bus_errors=receiver.stats.errors,
                reopens=receiver.stats.reopens,
                outages=receiver.stats.outages,
                down_s=round(receiver.down_s(), 2),  # live: the outage going on included
                silent=receiver.silent,  # nothing received since start (10 s and more)
                rx_overflows=receiver.stats.rx_overflows,  # dropped by the kernel, queue full
            )
            buses[receiver.name] = stats
        uplink = self._uplink()
        u = uplink.stats if uplink is not None else UplinkStats()
        mqtt = {
            "connected": u.connected,
            "reconnects": u.reconnects,
            "connect_failures": u.connect_failures,
            "published": u.published,
            "refused": u.publish_refused,
            "requests": u.requests,
        }
        p = self._pipeline.stats
        return {
            "ts": round(time.time(), 3),
            "boot_id": self._boot_id,
            "uptime_s": round(time.monotonic() - self._started, 1),
            "buses": buses,
            "decode_errors": sum(
                d.stats.short + d.stats.failed + d.stats.unmapped_values + d.stats.nonfinite
                for d in self._decoders.values()
            ),
            "samples": {
                "decoded": sum(d.stats.samples for d in self._decoders.values()),
                # Values dropped by the VSS typing (INTERFACE section 7); per bus as well.
                "invalid_values": sum(d.stats.invalid_values for d in self._decoders.values()),
                "out_of_range": sum(d.stats.out_of_range for d in self._decoders.values()),
                "published": p.samples_published,
                "dropped": p.samples_dropped,
            },
            "outbox": {
                "depth": self._outbox.depth(),
                "bytes": self._outbox.payload_bytes(),
                "file_bytes": self._outbox.file_bytes(),
                "max_bytes": self._outbox.max_bytes,
                "dropping": self._outbox.dropping,
                # on_disk, memory_records, acks_waiting, reserve, disk_full (reliability.md)
                **self._outbox.storage(),
            },
            # Persistent counters from the outbox: dropped_telemetry, dropped_event,
            # dropped_response, dropped_samples, expired_telemetry, expired_samples.
            "dropped": {
                **dict.fromkeys(DROPPED_COUNTERS, 0),
                **self._outbox.counters(),
                "unstored_samples": p.samples_dropped,
            },
            "mqtt": mqtt,
            "commands": self._commands(),
        }

    async def log_stats(self, interval: float) -> None:
        """One line every `interval` seconds: rates since the last line, never per frame."""
        last_frames = {r.name: r.stats.frames for r in self._receivers}
        last_t = time.monotonic()
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            span = max(1e-6, now - last_t)
            rates = {}
            for receiver in self._receivers:
                frames = receiver.stats.frames
                rates[receiver.name] = round((frames - last_frames[receiver.name]) / span, 1)
                last_frames[receiver.name] = frames
            last_t = now
            uplink = self._uplink()
            log.info(
                "stats",
                frames_per_s=rates,
                rx_overflows={r.name: r.stats.rx_overflows for r in self._receivers},
                samples=self._pipeline.stats.samples_published,
                published=uplink.stats.published if uplink else 0,
                reconnects=uplink.stats.reconnects if uplink else 0,
                connected=uplink.stats.connected if uplink else False,
                outbox=self._outbox.depth(),
            )
