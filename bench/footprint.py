"""Benchmark: the daemon's start-up time and steady memory with the demo configuration.

`vehicle-agent run` with config/demo.yaml (the simulator beside the agent on the in-process
`virtual` bus, diagnostics, alerts, every reference command) against a local mosquitto on a
free port. Start-up is from spawning the process to the first telemetry message the broker
delivers to a subscriber; steady RSS is VmRSS read from /proc over the following seconds.

    .venv/bin/python bench/footprint.py              # prints a Markdown table
    .venv/bin/python bench/footprint.py --runs 5 --steady-s 30
    .venv/bin/python bench/footprint.py --trusted-key   # a car that takes signed commands
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_broker(folder: Path) -> tuple[subprocess.Popen[bytes], int]:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = free_port()
    conf = folder / "mosquitto.conf"
    user = "user root\n" if os.geteuid() == 0 else ""
    conf.write_text(f"{user}listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    proc = subprocess.Popen([binary, "-c", str(conf)], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, port
        time.sleep(0.02)
    proc.kill()
    raise SystemExit("mosquitto did not start")


def demo_config(folder: Path, port: int, trusted_key: bool = False) -> Path:
    """config/demo.yaml with absolute DBC paths, storage in `folder`, the local broker; with
    `trusted_key`, one trusted signing key (the demo adds its own at run time)."""
    text = (ROOT / "config" / "demo.yaml").read_text()
    if trusted_key:
        sys.path.insert(0, str(ROOT))
        from agent.commands.keys import keygen

        _, public = keygen("bench", folder / f"keys-{time.monotonic_ns()}")
        entry = f'trust:\n    - {{kid: bench, public_key: "{public}", allow: ["hvac.*"]}}'
        text = text.replace("trust: []", entry, 1)
    text = text.replace("../dbc/", f"{ROOT}/dbc/")
    text = text.replace("../.demo-state/outbox.db", str(folder / "state" / "outbox.db"))
    text = text.replace("  format: console", "  format: json")
    text += f"mqtt:\n  host: 127.0.0.1\n  port: {port}\n"
    path = folder / "demo.yaml"
    path.write_text(text)
    return path


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def one_run(port: int, folder: Path, steady_s: float, trusted_key: bool) -> tuple[float, int, int]:
    """Seconds to the first telemetry; RSS at the end of the steady period and its peak (kB)."""
    first = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.on_connect = lambda c, *_: c.subscribe("vehicles/+/telemetry", qos=1)
    client.on_message = lambda *_: first.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    time.sleep(0.3)  # subscribed before the daemon starts
    shutil.rmtree(folder / "state", ignore_errors=True)
    config = demo_config(folder, port, trusted_key)
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=folder,
    )
    try:
        if not first.wait(30):
            raise SystemExit("no telemetry within 30 s")
        to_first = time.monotonic() - started
        peak = 0
        end = time.monotonic() + steady_s
        while time.monotonic() < end:
            peak = max(peak, rss_kb(proc.pid))
            time.sleep(0.5)
        last = rss_kb(proc.pid)
        return to_first, last, max(peak, last)
    finally:
        proc.terminate()
        proc.wait(10)
        client.loop_stop()
        client.disconnect()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steady-s", type=float, default=20.0)
    parser.add_argument("--trusted-key", action="store_true", help="one trusted signing key")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="va-footprint-"))
    broker, port = start_broker(folder)
    try:
        results = [one_run(port, folder, args.steady_s, args.trusted_key) for _ in range(args.runs)]
    finally:
        broker.terminate()
        broker.wait(10)
        shutil.rmtree(folder, ignore_errors=True)
    print(
        f"`vehicle-agent run` with config/demo.yaml, {args.runs} runs, {args.steady_s:.0f} s "
        f"steady{', one trusted key' if args.trusted_key else ''}, "
        f"Python {platform.python_version()}, {platform.machine()}\n"
    )
    print("| run | start to first telemetry (s) | steady RSS (MB) | peak RSS (MB) |")
    print("|---:|---:|---:|---:|")
    for i, (to_first, last, peak) in enumerate(results, 1):
        print(f"| {i} | {to_first:.2f} | {last / 1024:.1f} | {peak / 1024:.1f} |")


if __name__ == "__main__":
    main()
