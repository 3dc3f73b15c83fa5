"""The `vehicle-agent` verbs. Exit codes: 0 success, 1 runtime failure, 2 bad usage or config."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent import __version__
from agent.errors import AgentError, ConfigError

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


if TYPE_CHECKING:
    from agent.vehicle.dbc import Vehicle


def _load_vehicle(path: str) -> Vehicle:
    # Imported here so `--help` and argument errors stay fast on a slow head unit.
    from agent import config
    from agent.commands import definitions
    from agent.vehicle import dbc

    vehicle = dbc.load_vehicle(config.load(path))
    definitions.resolve(vehicle)  # command definitions are part of a valid configuration
    return vehicle


def cmd_check_config(args: argparse.Namespace) -> int:
    vehicle = _load_vehicle(args.config)
    for warning in vehicle.warnings:
        print(warning, file=sys.stderr)
    print("OK")
    return EXIT_OK


def cmd_replay(args: argparse.Namespace) -> int:
    from agent.vehicle import replay

    vehicle = _load_vehicle(args.config)
    if not args.quiet:
        for warning in vehicle.warnings:
            print(warning, file=sys.stderr)
    channel_map = replay.parse_channel_map(args.map_channel or [])
    out = replay.open_output(args.output)
    try:
        summary = replay.replay(
            vehicle,
            Path(args.log),
            out,
            every_frame=args.every_frame,
            channel_map=channel_map,
            progress=None if args.quiet else sys.stderr,
        )
    finally:
        if out is not sys.stdout:
            out.close()
        else:
            out.flush()
    if not args.quiet:
        print(summary.line(), file=sys.stderr)
    return EXIT_OK


def _without_rich() -> None:
    """Keep rich out of the daemon's process. structlog imports rich whenever it is installed,
    for pretty tracebacks on a console; the daemon writes JSON lines for journald and never
    uses it, and rich with pygments costs ~5 MB resident on a head unit (bench/footprint.py).
    Only `demo` draws with rich, in its own process."""
    if "structlog" not in sys.modules:
        sys.modules.setdefault("rich", None)  # type: ignore[arg-type]  # import -> ImportError


def cmd_run(args: argparse.Namespace) -> int:
    _without_rich()
    import structlog

    from agent import logs, supervisor

    vehicle = _load_vehicle(args.config)
    settings = vehicle.loaded.settings
    logs.configure(settings.logging.level, settings.logging.format)
    for warning in vehicle.warnings:
        structlog.get_logger("agent.config").warning("config_warning", problem=str(warning))
    return supervisor.run(vehicle)


def cmd_demo(args: argparse.Namespace) -> int:
    from agent.demo import run_demo

    return run_demo(Path(args.config) if args.config else None, args.duration)


def cmd_keygen(args: argparse.Namespace) -> int:
    from agent.commands.keys import keygen

    private, public = keygen(args.kid, Path(args.out))
    print(f"private key: {private} (keep it on the back end, never on the car)", file=sys.stderr)
    print("add to the vehicle's configuration:", file=sys.stderr)
    print("commands:\n  trust:")
    # Exactly the patterns asked for (least privilege: there is no default of "*").
    print(f'    - kid: {args.kid}\n      public_key: "{public}"')
    print(f"      allow: {json.dumps(args.allow)}")
    return EXIT_OK


def cmd_sign(args: argparse.Namespace) -> int:
    from agent.commands.keys import load_private_key, parse_param, sign

    params = dict(parse_param(p) for p in args.param or [])
    token = sign(
        load_private_key(Path(args.key)),
        kid=args.kid,
        vehicle=args.vehicle,
        command=args.command,
        params=params,
        ttl_s=args.ttl,
    )
    print(token)
    return EXIT_OK


def cmd_send(args: argparse.Namespace) -> int:
    import json

    import jwt

    from agent import config
    from agent.uplink.mqtt import send_token

    settings = config.load(args.config).settings
    text = sys.stdin.read() if args.token == "-" else args.token
    if text.startswith("@"):
        text = Path(text[1:]).read_text()
    token = text.strip().encode()
    try:
        command_id = jwt.decode(token, options={"verify_signature": False}).get("jti")
    except jwt.PyJWTError as exc:
        raise AgentError(f"not a token: {exc}") from exc

    def show(body: dict[str, object]) -> None:
        print(json.dumps(body), flush=True)

    final = asyncio.run(send_token(settings, token, command_id, args.timeout, show))
    if final is None:
        print(f"vehicle-agent send: no final response within {args.timeout:g} s", file=sys.stderr)
        return EXIT_FAIL
    return EXIT_OK if final.get("status") == "succeeded" else EXIT_FAIL


def cmd_plan_charge(args: argparse.Namespace) -> int:
    import json

    from pydantic import ValidationError

    from agent.energy.planner import Problem, plan
    from agent.errors import Problem as ConfigProblem

    name = args.input
    try:
        text = sys.stdin.read() if name == "-" else Path(name).read_text(encoding="utf-8")
        data = json.loads(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError([ConfigProblem(name, 1, "(file)", f"cannot read JSON: {exc}")]) from exc
    try:
        problem = Problem.model_validate(data)
    except ValidationError as exc:
        problems = [
            ConfigProblem(
                name,
                1,
                ".".join(str(p) for p in err["loc"]) or "(document)",
                str(err["msg"]).removeprefix("Value error, "),
            )
            for err in exc.errors()
        ]
        raise ConfigError(problems) from exc
    print(json.dumps(plan(problem).to_json(), indent=2))
    return EXIT_OK


def cmd_simulate(args: argparse.Namespace) -> int:
    from agent import logs
    from agent.sim.runner import LiveSimulator, SimulatedCar, record
    from agent.sim.scenario import load_scenario

    vehicle = _load_vehicle(args.config)
    settings = vehicle.loaded.settings
    scenario = load_scenario(args.scenario or settings.simulator.scenario, vehicle.loaded.base_dir)
    speedup = args.speedup or settings.simulator.speedup
    if args.record:
        if args.duration is None:
            raise AgentError("--record needs --duration (simulated seconds to write)")
        count = record(
            vehicle,
            scenario,
            Path(args.record),
            duration_s=args.duration,
            start_ts=time.time(),
            seed=settings.simulator.seed,
        )
        print(
            f"simulate: wrote {count} frames ({args.duration:g} simulated s) to {args.record}",
            file=sys.stderr,
        )
        return EXIT_OK
    logs.configure(settings.logging.level, settings.logging.format, stream=sys.stderr)
    from agent.vehicle.can_io import open_bus

    buses = {}
    try:
        for name, bus_db in vehicle.buses.items():
            buses[name] = open_bus(bus_db.settings)
        car = SimulatedCar(vehicle, scenario, seed=settings.simulator.seed)
        sim = LiveSimulator(car, buses, speedup=speedup)
        duration = args.duration
        _run_until_signal(sim.run(duration))
        stats = car.stats
        print(
            f"simulate: {stats.frames_sent} frames sent, {stats.send_errors} send errors, "
            f"{stats.commands} commands answered",
            file=sys.stderr,
        )
    finally:
        for bus in buses.values():
            bus.shutdown()
    return EXIT_OK


def cmd_play(args: argparse.Namespace) -> int:
    from agent import logs
    from agent.vehicle import player
    from agent.vehicle.can_io import open_bus
    from agent.vehicle.replay import parse_channel_map

    vehicle = _load_vehicle(args.config)
    settings = vehicle.loaded.settings
    logs.configure(settings.logging.level, settings.logging.format, stream=sys.stderr)
    channel_map = parse_channel_map(args.map_channel or [])
    player.Router(vehicle, channel_map)  # a wrong --map-channel fails before any bus opens
    stats = player.PlayStats()
    buses = {}
    try:
        for name, bus_db in vehicle.buses.items():
            buses[name] = open_bus(bus_db.settings)
        _run_until_signal(
            player.play(
                vehicle,
                Path(args.log),
                buses,
                speed=args.speed,
                loop=args.loop,
                channel_map=channel_map,
                stats=stats,
            )
        )
    finally:
        for bus in buses.values():
            bus.shutdown()
    print(stats.line(), file=sys.stderr)
    return EXIT_OK


def _run_until_signal(coro: Coroutine[Any, Any, object]) -> None:
    """Run a coroutine until it ends or SIGINT/SIGTERM arrives (then cancel it cleanly)."""

    async def main() -> None:
        task = asyncio.ensure_future(coro)
        loop = asyncio.get_running_loop()
        if threading.current_thread() is threading.main_thread():  # tests run verbs in threads
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(main())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vehicle-agent",
        description="In-vehicle telematics agent: CAN/DBC -> COVESA VSS -> MQTT.",
    )
    parser.add_argument("--version", action="version", version=f"vehicle-agent {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    def verb(
        name: str, func: Callable[[argparse.Namespace], int], text: str
    ) -> argparse.ArgumentParser:
        sub = verbs.add_parser(name, help=text, description=text)
        sub.set_defaults(func=func)
        return sub

    sub = verb(
        "run",
        cmd_run,
        "The daemon: read the buses, publish telemetry over MQTT, take commands. "
        "SIGTERM/SIGINT flush and exit 0.",
    )
    sub.add_argument("-c", "--config", required=True, metavar="FILE")

    sub = verb(
        "demo",
        cmd_demo,
        "Everything on one machine: an embedded MQTT broker, the simulator on a virtual bus, "
        "the agent, and a live console of what a back end sees.",
    )
    sub.add_argument("--duration", type=_positive, metavar="S", help="stop after S seconds")
    sub.add_argument("-c", "--config", metavar="FILE", help="default: config/demo.yaml")

    sub = verb(
        "keygen",
        cmd_keygen,
        "Make an Ed25519 key pair for signing commands; print the trust entry, allowing "
        "exactly the commands given.",
    )
    sub.add_argument("--kid", required=True, metavar="NAME")
    sub.add_argument(
        "--allow",
        required=True,
        nargs="+",
        type=_pattern,
        metavar="PATTERN",
        help='command names or patterns the key may send, e.g. "hvac.*" state.snapshot',
    )
    sub.add_argument("--out", default=".", metavar="DIR")

    sub = verb("sign", cmd_sign, "Print a signed command token.")
    sub.add_argument("--key", required=True, metavar="PEM")
    sub.add_argument("--kid", required=True, metavar="NAME")
    sub.add_argument("--vehicle", required=True, metavar="ID")
    sub.add_argument("--command", required=True, metavar="NAME")
    sub.add_argument("--param", action="append", metavar="K=V", help="repeatable; V as JSON")
    sub.add_argument("--ttl", type=_positive, default=60, metavar="S")

    sub = verb(
        "send",
        cmd_send,
        "Publish a token to the vehicle's request topic; print each response until "
        "a final one. Exit 0 on succeeded.",
    )
    sub.add_argument("-c", "--config", required=True, metavar="FILE")
    sub.add_argument("token", metavar="TOKEN", help="the token, - for stdin, or @FILE")
    sub.add_argument("--timeout", type=_positive, default=30, metavar="S")

    sub = verb(
        "plan-charge",
        cmd_plan_charge,
        "The smart-charging planner offline: read a JSON problem, print the JSON plan.",
    )
    sub.add_argument("--input", required=True, metavar="FILE", help="a JSON file, or -")

    sub = verb(
        "check-config",
        cmd_check_config,
        "Validate the config, its DBC files, signal mappings and keys; print OK or "
        "one line per problem (FILE:LINE: key.path: message) and exit 2.",
    )
    sub.add_argument("-c", "--config", required=True, metavar="FILE")

    sub = verb(
        "replay",
        cmd_replay,
        "Decode a recorded CAN log (candump .log, .asc, .blf, .trc, ...) with the "
        "daemon's decode path; write JSON Lines samples.",
    )
    sub.add_argument("-c", "--config", required=True, metavar="FILE")
    sub.add_argument("log", metavar="LOG")
    sub.add_argument("-o", "--output", metavar="OUT", help="write samples here (default stdout)")
    sub.add_argument(
        "--every-frame",
        action="store_true",
        help="every mapped signal of every frame, bypassing the sampling policies",
    )
    sub.add_argument(
        "--map-channel",
        action="append",
        metavar="CHANNEL=BUS",
        help="decode frames of log channel CHANNEL with bus BUS (repeatable)",
    )
    sub.add_argument("-q", "--quiet", action="store_true", help="no progress and no summary")

    sub = verb(
        "play",
        cmd_play,
        "Play a recorded CAN log onto the configured buses with the log's own timing "
        "(like canplayer), for benches: another process's `run` receives it.",
    )
    sub.add_argument("-c", "--config", required=True, metavar="FILE")
    sub.add_argument("log", metavar="LOG")
    sub.add_argument(
        "--speed", type=_positive, default=1.0, metavar="X", help="X times the log's pace"
    )
    sub.add_argument("--loop", action="store_true", help="start over at the end, until stopped")
    sub.add_argument(
        "--map-channel",
        action="append",
        metavar="LOGCH=BUS",
        help="send frames of log channel LOGCH on bus BUS (repeatable)",
    )

    sub = verb(
        "simulate",
        cmd_simulate,
        "Run the reference vehicle simulator on the configured buses, answering "
        "command frames; or write a log of it with --record.",
    )
    sub.add_argument("-c", "--config", required=True, metavar="FILE")
    sub.add_argument(
        "--scenario",
        metavar="NAME|FILE",
        help="parked, driving, plugged_in, or a scenario YAML file",
    )
    sub.add_argument(
        "--speedup", type=_positive, metavar="N", help="simulated seconds per wall-clock second"
    )
    sub.add_argument(
        "--duration", type=_positive, metavar="S", help="stop after S simulated seconds"
    )
    sub.add_argument(
        "--record",
        metavar="LOG",
        help="write frames to LOG (candump .log, .asc, .blf, ...) as fast as "
        "possible instead of using the buses",
    )
    return parser


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number: {text!r}")
    return value


def _pattern(text: str) -> str:
    """An `allow` pattern as commands.trust accepts it (letters, digits, `_ . * ?`)."""
    if not re.fullmatch(r"[A-Za-z0-9_.*?]+", text):
        raise argparse.ArgumentTypeError(
            f"not a command name or pattern: {text!r} (letters, digits, _ . * ?)"
        )
    return text


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_USAGE
    except AgentError as exc:
        print(f"vehicle-agent {args.verb}: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `vehicle-agent replay ... | head`: the reader left; that is not an error.
        with contextlib.suppress(OSError):
            sys.stdout = None
        return EXIT_OK
