"""Benchmark: outbox append throughput (storage.sync normal and full) and the drain rate after
an outage of 100,000 samples against a local mosquitto.

    .venv/bin/python bench/outbox.py     # needs mosquitto (Debian package)

Appends are telemetry records of 50 samples (~3.5 KB, a typical batch). The drain fills the
outbox as an outage would, then starts the uplink against a fresh mosquitto on a free port of
127.0.0.1 and times until the outbox is empty.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent import config  # noqa: E402
from agent.uplink.mqtt import Uplink  # noqa: E402
from agent.uplink.outbox import Outbox  # noqa: E402
from agent.uplink.pipeline import telemetry_payload  # noqa: E402
from agent.vehicle.model import Sample  # noqa: E402


def _samples(n: int) -> list[Sample]:
    return [Sample(f"Vehicle.Bench.Signal{i % 29}", 1.7e9 + i / 100, 12.5 + i) for i in range(n)]


def bench_append(folder: Path, sync: str, count: int, per_message: int) -> float:
    chunk = _samples(per_message)
    with Outbox(folder / f"append-{sync}.db", sync=sync) as box:  # type: ignore[arg-type]
        started = time.perf_counter()
        for _ in range(count):
            box.append(
                "telemetry",
                "telemetry",
                lambda seq: telemetry_payload("BENCH", seq, chunk),
                stream="telemetry",
                items=per_message,
            )
        return time.perf_counter() - started


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _drain(outbox: Outbox, port: int) -> float:
    loaded = config.load(ROOT / "config" / "demo.yaml")
    settings = loaded.settings.model_copy(
        update={"mqtt": loaded.settings.mqtt.model_copy(update={"port": port})}
    )
    uplink = Uplink(
        settings=settings,
        outbox=outbox,
        boot_id="bench",
        state=lambda: None,
        health=dict,
        on_request=lambda _p, _q: None,
    )
    started = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        tg.create_task(uplink.run())
        while outbox.depth():  # noqa: ASYNC110 - the bench polls the file, as a person would
            await asyncio.sleep(0.01)
        elapsed = time.perf_counter() - started
        await uplink.stop(drain_s=1.0)
    return elapsed


def bench_drain(folder: Path, samples: int, per_message: int) -> tuple[int, float]:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = _free_port()
    conf = folder / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        f"max_inflight_messages 0\nmax_queued_messages 0\n"
    )
    path = folder / f"drain-{per_message}.db"
    chunk = _samples(per_message)
    messages = samples // per_message
    with Outbox(path) as box:
        for _ in range(messages):
            box.append(
                "telemetry",
                "telemetry",
                lambda seq: telemetry_payload("BENCH", seq, chunk),
                stream="telemetry",
                items=per_message,
            )
    broker = subprocess.Popen(
        [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        for _ in range(100):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        with Outbox(path) as box:
            elapsed = asyncio.run(_drain(box, port))
    finally:
        broker.terminate()
        broker.wait()
    return messages, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--appends", type=int, default=3000)
    parser.add_argument("--samples", type=int, default=100_000)
    args = parser.parse_args()
    # On the project's disk (not a tmpfs /tmp), under out/, which git ignores: an interrupted
    # run must not leave folders that look like part of the checkout.
    scratch = ROOT / "out" / "bench"
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        folder = Path(tmp)
        print(
            f"Python {platform.python_version()}, SQLite {__import__('sqlite3').sqlite_version}, "
            f"{platform.machine()}, {time.strftime('%Y-%m-%d')}"
        )
        print()
        print("| outbox append, 50 samples (~3.5 KB) per record | records/s | ms/record |")
        print("|---|---:|---:|")
        for sync in ("normal", "full"):
            seconds = bench_append(folder, sync, args.appends, 50)
            print(
                f"| `storage.sync: {sync}` | {args.appends / seconds:,.0f} | "
                f"{seconds / args.appends * 1000:.3f} |"
            )
        print()
        print(
            f"| drain after an outage of {args.samples:,} samples | messages | seconds | "
            "messages/s | samples/s |"
        )
        print("|---|---:|---:|---:|---:|")
        for per_message in (50, 1):
            messages, seconds = bench_drain(folder, args.samples, per_message)
            print(
                f"| {per_message} sample(s) per message | {messages:,} | {seconds:.2f} | "
                f"{messages / seconds:,.0f} | {args.samples / seconds:,.0f} |"
            )


if __name__ == "__main__":
    main()
