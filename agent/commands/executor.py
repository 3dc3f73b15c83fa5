"""Signed commands from request to result: verify, refuse replays, check parameters and
preconditions, send the CAN frames, wait for the feedback signal, report through the outbox.

Responses on `P/commands/response`: `accepted` at once, then `succeeded`, `timed_out` or
`failed`; or `rejected` with a reason. Every one of them also goes to the request's MQTT 5
response topic, when it named one, with its correlation data: rejections included, even of a
request that could not be read, so a back end listening there never waits in vain. Rejections
are rate-limited (a flood of forged tokens costs a bounded amount of work and publishes a
bounded number of answers; the rest are counted). A `jti` is committed to the command store
before its command acts, so it acts at most once, across restarts.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import can
import structlog

from agent.commands.auth import (
    MAX_CAMPAIGN_TOKEN_BYTES,
    REASONS,
    AuthError,
    VerifiedCommand,
    Verifier,
)
from agent.commands.definitions import BadParams, ResolvedCommand
from agent.commands.store import CommandStore
from agent.errors import AgentError, StoreError
from agent.logs import Repeating
from agent.uplink.outbox import Outbox, OutboxError

log = structlog.get_logger("agent.commands.definitions")

STATUSES = ("accepted", "in_progress", "succeeded", "failed", "timed_out", "rejected")
QUEUE_SIZE = 8
FEEDBACK_POLL_S = 0.05


def response_payload(
    command_id: str | None,
    status: str,
    reason: str | None = None,
    detail: str | None = None,
    result: dict[str, Any] | None = None,
) -> bytes:
    body: dict[str, Any] = {"id": command_id, "status": status, "ts": round(time.time(), 3)}
    if result is not None:  # what a command reads back, e.g. the DTCs per ECU
        body["result"] = result
    if reason is not None:
        body["reason"] = reason
    if detail is not None:
        body["detail"] = detail
    return json.dumps(body, separators=(",", ":")).encode()


def _reply_to(properties: Any) -> tuple[str, bytes | None] | None:
    """The MQTT 5 ResponseTopic and CorrelationData of a request, if usable."""
    topic = getattr(properties, "ResponseTopic", None)
    if not isinstance(topic, str) or not 0 < len(topic) <= 256 or any(c in topic for c in "+#"):
        return None
    correlation = getattr(properties, "CorrelationData", None)
    if not isinstance(correlation, bytes | bytearray) or len(correlation) > 1024:
        correlation = None
    return topic, bytes(correlation) if correlation is not None else None


# A builtin's handler: the command's checked parameters in, (status, detail) out.
Handler = Callable[[dict[str, Any]], tuple[str, str | None]]


@dataclass(slots=True)
class CommandStats:
    by_status: dict[str, int] = field(default_factory=dict)
    by_reason: dict[str, int] = field(default_factory=dict)
    requests: int = 0
    suppressed: int = 0  # rejections not answered because of the rate limit
    frames_sent: dict[str, int] = field(default_factory=dict)

    def count(self, status: str, reason: str | None = None) -> None:
        self.by_status[status] = self.by_status.get(status, 0) + 1
        if reason is not None:
            self.by_reason[reason] = self.by_reason.get(reason, 0) + 1

    def as_health(self) -> dict[str, Any]:
        """The `commands` object of P/health: every status and reason, zeros included."""
        return {
            **dict.fromkeys(STATUSES, 0),
            **self.by_status,
            "requests": self.requests,
            "reasons": {**dict.fromkeys(REASONS, 0), **self.by_reason},
            "suppressed": self.suppressed,
            "frames_sent": dict(self.frames_sent),
        }


class _Bucket:
    """Token bucket for rejection answers."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens = burst
        self.at = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


@dataclass(frozen=True, slots=True)
class _Job:
    jti: str
    command: ResolvedCommand
    params: dict[str, Any]
    automatic: bool = False  # an auto-stop, not a token
    timer_id: int | None = None


class Executor:
    def __init__(
        self,
        *,
        verifier: Verifier,
        commands: dict[str, ResolvedCommand],
        store: CommandStore,
        outbox: Outbox,
        notify: Callable[[], None],
        values: Callable[[], Mapping[str, Any]],
        transmit: Callable[[str, can.Message], None],
        request_state: Callable[[], None],
        rejections_per_s: float = 20.0,
        clock: Callable[[], float] = time.time,
        handlers: dict[str, Handler] | None = None,
    ) -> None:
        # Builtins that other stages register (charging.schedule, grid.signal, grid.clear):
        # the executor verifies and admits the command, the handler carries it out.
        self.handlers: dict[str, Handler] = dict(handlers or {})
        # Their checks of parameters beyond the types (a campaign against the mapped paths),
        # run at admission: a BadParams there is a BAD_PARAMS rejection, before `accepted`.
        self.validators: dict[str, Callable[[dict[str, Any]], None]] = {}
        self.read_dtcs: Callable[[], Awaitable[dict[str, Any]]] | None = None
        self._verifier = verifier
        self._commands = commands
        self._store = store
        self._store_failed = Repeating(log, "command_store_failed")
        self._outbox = outbox
        self._notify = notify
        self._values = values
        self._transmit = transmit
        self._request_state = request_state
        self._clock = clock
        self._bucket = _Bucket(rejections_per_s, 2 * rejections_per_s)
        self._queue: asyncio.Queue[_Job] = asyncio.Queue(QUEUE_SIZE)
        self._replies: dict[str, tuple[str, bytes | None]] = {}
        self._idle = asyncio.Event()
        self._idle.set()
        self.stats = CommandStats()

    def reload(
        self, *, verifier: Verifier, commands: dict[str, ResolvedCommand], rejections_per_s: float
    ) -> None:
        """New keys and definitions for the next request; commands in flight finish as they
        started."""
        self._verifier = verifier
        self._commands = commands
        self._bucket = _Bucket(rejections_per_s, 2 * rejections_per_s)

    # --- requests (synchronous: called for each MQTT request) ---------------------------
    def on_request(self, payload: bytes, properties: Any = None) -> None:
        self.stats.requests += 1
        # The response topic comes from the MQTT packet, not the token: it is known even for a
        # request that cannot be read. Where the car may publish is bounded by the broker's
        # ACL, and how often by the rejection rate limit, whoever sent the request.
        reply = _reply_to(properties)
        # 64 KiB for campaign.* only; every other command is held to 16 KiB once its claims
        # are read (auth.py), before any parsing here only the larger bound can apply.
        if len(payload) > MAX_CAMPAIGN_TOKEN_BYTES:  # refused before any parsing
            self._reject(
                None,
                "MALFORMED",
                f"request of {len(payload)} bytes is over {MAX_CAMPAIGN_TOKEN_BYTES}",
                reply,
            )
            return
        command_id: str | None = None
        try:
            command = self._verifier.verify(payload, self._clock())
            command_id = command.jti
            self._admit(command, reply)
        except AuthError as exc:
            self._reject(exc.command_id, exc.reason, exc.detail, reply)
        except StoreError as exc:
            self._store_failed.failed(command_id=command_id, error=str(exc))
            self._reject(command_id, "BUSY", "the vehicle cannot record commands right now", reply)
        except Exception as exc:  # bad input must never end the daemon
            log.error("command_request_failed", command_id=command_id, error=repr(exc)[:200])
            self._reject(command_id, "MALFORMED", "the request could not be processed", reply)

    def _admit(self, command: VerifiedCommand, reply: tuple[str, bytes | None] | None) -> None:
        jti = command.jti
        prior = self._store.seen(jti)
        if prior is not None:
            result = prior.status + (f"/{prior.reason}" if prior.reason else "")
            self._reject(jti, "REPLAY", f"already handled: {result}", reply)
            return
        keep_until = command.expires_at + self._verifier.clock_skew_s
        resolved = self._commands.get(command.command)
        reason, detail = None, None
        params: dict[str, Any] = {}
        if resolved is None:
            reason, detail = "UNKNOWN_COMMAND", f"this vehicle has no command {command.command!r}"
        else:
            try:
                params = resolved.check_params(command.params)
                builtin = resolved.definition.builtin
                validate = self.validators.get(builtin) if builtin is not None else None
                if validate is not None:
                    try:
                        validate(params)
                    except BadParams:
                        raise
                    except ValueError as exc:  # the validator's own error: its message
                        raise BadParams(str(exc)) from None
            except BadParams as exc:
                reason, detail = "BAD_PARAMS", str(exc)
            else:
                values = self._values()
                for condition in resolved.preconditions:
                    if not condition.evaluate(values, params):
                        reason = "PRECONDITION_FAILED"
                        detail = f"not {condition.explain(values)}"
                        break
        if reason is None and self._queue.full():
            # Not spent: the same token may be sent again once the queue has room.
            self._reject(jti, "BUSY", "commands are queued; try again", reply)
            return
        if reason is not None and detail is not None:
            # Verified but refused: the jti is spent, so a replay gets the same answer.
            if self._store.claim(jti, command.command, keep_until, "rejected", reason, detail):
                self._reject(jti, reason, detail, reply)
            else:
                self._reject(jti, "REPLAY", "already handled", reply)
            return
        assert resolved is not None
        if not self._store.claim(jti, command.command, keep_until, "accepted"):
            self._reject(jti, "REPLAY", "already handled", reply)
            return
        if reply is not None:
            # Kept until the final answer: in_progress and the result go there too.
            self._replies[jti] = reply
        log.info(
            "command_accepted",
            command_id=jti,
            command=command.command,
            kid=command.kid,
            params=params,
        )
        self._respond(jti, "accepted")
        self._queue.put_nowait(_Job(jti, resolved, params))

    def _reject(
        self,
        jti: str | None,
        reason: str,
        detail: str,
        reply: tuple[str, bytes | None] | None = None,
    ) -> None:
        self.stats.count("rejected", reason)
        if not self._bucket.take():
            self.stats.suppressed += 1
            return
        log.info("command_rejected", command_id=jti, reason=reason, detail=detail)
        self._publish(jti, "rejected", reason, detail, count=False, reply=reply)

    def _respond(
        self,
        jti: str,
        status: str,
        reason: str | None = None,
        detail: str | None = None,
        result: dict[str, Any] | None = None,
    ) -> None:
        self._publish(jti, status, reason, detail, result=result)

    def _publish(
        self,
        jti: str | None,
        status: str,
        reason: str | None,
        detail: str | None,
        *,
        count: bool = True,
        result: dict[str, Any] | None = None,
        reply: tuple[str, bytes | None] | None = None,
    ) -> None:
        if count:
            self.stats.count(status, reason)
        final = status not in ("accepted", "in_progress")
        if status != "rejected" and jti is not None:
            # A rejection brings its own (a replay of a jti in flight must not take the
            # original request's response topic away from it).
            reply = self._replies.pop(jti, None) if final else self._replies.get(jti)
        destinations: list[tuple[str, bytes | None]] = [("commands/response", None)]
        if reply is not None:
            destinations.append(("@" + reply[0], reply[1]))
        payload = response_payload(jti, status, reason, detail, result)
        for topic, correlation in destinations:
            try:
                self._outbox.append(
                    "response", topic, lambda _seq: payload, correlation=correlation
                )
            except OutboxError as exc:
                log.error("command_response_lost", command_id=jti, status=status, error=str(exc))
        self._notify()

    # --- execution -----------------------------------------------------------------------
    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._timers())
            while True:
                job = await self._queue.get()
                self._idle.clear()
                try:
                    await self._execute(job)
                finally:
                    if job.timer_id is not None:
                        self._drop_timer(job.timer_id)
                    if self._queue.empty():
                        self._idle.set()

    async def _execute(self, job: _Job) -> None:
        resolved, params = job.command, job.params
        definition = resolved.definition
        status, reason, detail = "succeeded", None, None
        result: dict[str, Any] | None = None
        if definition.builtin == "state.snapshot":
            self._request_state()
        elif definition.builtin == "diagnostics.read_dtcs":
            if self.read_dtcs is None:
                status, detail = "failed", "no ECUs are configured under diagnostics.ecus"
            else:
                ecus = await self.read_dtcs()
                failed = sorted(name for name, r in ecus.items() if "error" in r)
                # Still `succeeded` (the command ran; the ECUs that answered are in the
                # result), but a back end must not take a silent ECU's missing codes as none.
                result = {**ecus, "partial": bool(failed)}
                if failed:
                    detail = f"no DTCs from {', '.join(failed)} (see result)"
        elif definition.builtin is not None:
            handler = self.handlers.get(definition.builtin)
            if handler is None:
                status, detail = "failed", f"{definition.builtin} is not available on this car"
            else:
                try:
                    status, detail = handler(params)
                except Exception as exc:  # a stage's bug must cost a command, not the daemon
                    log.error("command_handler_failed", command=resolved.name, error=repr(exc))
                    status, detail = "failed", f"{definition.builtin} failed: {type(exc).__name__}"
        else:
            status, detail = await self._send_frames(resolved, params)
            if status == "succeeded" and resolved.feedback is not None:
                status, detail = await self._await_feedback(
                    resolved, self._as_sent(resolved, params)
                )
        if status == "succeeded":
            self._after_success(job)
        log.info(
            "command_finished",
            command_id=job.jti,
            command=resolved.name,
            status=status,
            detail=detail,
        )
        if job.automatic:
            self._outbox.append_event(
                "command",
                resolved.name,
                {
                    "status": status,
                    "origin": job.jti,
                    "detail": detail or "",
                    "automatic": True,
                },
            )
            self._notify()
            return
        try:
            self._store.finish(job.jti, status, reason, detail)
        except StoreError as exc:
            self._store_failed.failed(command_id=job.jti, error=str(exc))
        self._respond(job.jti, status, reason, detail, result)

    async def _send_frames(
        self, resolved: ResolvedCommand, params: dict[str, Any]
    ) -> tuple[str, str | None]:
        action = resolved.definition.action
        message, bus = resolved.message, resolved.bus
        assert action is not None and message is not None and bus is not None
        try:
            data = message.encode(resolved.frame_values(params), strict=True)
        except Exception as exc:  # cantools EncodeError and friends: a value that cannot go out
            return "failed", f"cannot encode {message.name}: {exc}"
        frame = can.Message(
            arbitration_id=message.frame_id,
            is_extended_id=message.is_extended_frame,
            is_fd=message.is_fd,
            bitrate_switch=message.is_fd,
            data=data,
        )
        for attempt in range(action.repeat):
            try:
                self._transmit(bus, frame)
            except AgentError as exc:
                return "failed", f"cannot send {message.name} on {bus}: {exc}"
            self.stats.frames_sent[message.name] = self.stats.frames_sent.get(message.name, 0) + 1
            if attempt + 1 < action.repeat:
                await asyncio.sleep(action.interval_ms / 1000.0)
        return "succeeded", None

    async def charge(self, on: bool) -> str | None:
        """Send charging.start or charging.stop's frames (for the schedule runner, which
        watches the outcome itself); the error detail, or None."""
        resolved = self._commands.get("charging.start" if on else "charging.stop")
        if resolved is None or resolved.definition.action is None:
            return "charging.start/charging.stop are not defined for this car"
        status, detail = await self._send_frames(resolved, {})
        return None if status == "succeeded" else detail

    async def power_cap(self, cap_kw: float | None) -> str | None:
        """Ask the charger to draw at most `cap_kw` (charging.set_power_max), or lift the cap
        (charging.clear_power_max), for the grid runner; the error detail, or None."""
        name = "charging.set_power_max" if cap_kw is not None else "charging.clear_power_max"
        resolved = self._commands.get(name)
        if resolved is None or resolved.definition.action is None:
            return f"{name} is not defined for this car"
        params = {"power_kw": cap_kw} if cap_kw is not None else {}
        status, detail = await self._send_frames(resolved, params)
        return None if status == "succeeded" else detail

    @staticmethod
    def _as_sent(resolved: ResolvedCommand, params: dict[str, Any]) -> dict[str, Any]:
        """Parameters as the frame carries them (21.3 degC goes out as 21.5 on a 0.5 degC
        signal), so the feedback compares with what the car was actually asked for."""
        message, action = resolved.message, resolved.definition.action
        assert message is not None and action is not None
        try:
            sent: Any = message.decode(
                message.encode(resolved.frame_values(params)), decode_choices=False
            )
        except Exception:  # the frame went out, so this cannot fail; keep the raw params
            return params
        effective = dict(params)
        for signal, value in action.signals.items():
            if isinstance(value, str) and value.startswith("$") and signal in sent:
                effective[value[1:]] = sent[signal]
        return effective

    async def _await_feedback(
        self, resolved: ResolvedCommand, params: dict[str, Any]
    ) -> tuple[str, str | None]:
        feedback = resolved.feedback
        spec = resolved.definition.feedback
        assert feedback is not None and spec is not None
        deadline = time.monotonic() + spec.timeout_s
        while True:
            values = self._values()
            if feedback.evaluate(values, params):
                return "succeeded", None
            if time.monotonic() >= deadline:
                return (
                    "timed_out",
                    f"no confirmation within {spec.timeout_s:g} s: {feedback.explain(values)}",
                )
            await asyncio.sleep(FEEDBACK_POLL_S)

    def _after_success(self, job: _Job) -> None:
        resolved = job.command
        try:
            # A stop that ran (asked for or automatic) makes pending automatic stops moot.
            self._store.drop_timers_of(resolved.name)
            stop = resolved.definition.auto_stop
            if stop is not None and stop.after_param in job.params:
                due = self._clock() + float(job.params[stop.after_param]) * 60.0
                self._store.drop_timers_of(stop.command)  # a new session restarts the countdown
                self._store.add_timer(due, stop.command, job.jti, {})
                log.info(
                    "command_auto_stop_set",
                    command_id=job.jti,
                    stop=stop.command,
                    due_in_s=round(due - self._clock()),
                )
        except StoreError as exc:
            self._store_failed.failed(command_id=job.jti, error=str(exc))

    async def _timers(self) -> None:
        """Run automatic stops when due. A timer is deleted only after its stop ran, so a
        crash or restart in between runs it again rather than leaving climate on."""
        pruned_at = 0.0
        while True:
            now = self._clock()
            try:
                if now - pruned_at > 60:
                    self._store.prune(now)
                    pruned_at = now
                due = [t for t in self._store.timers() if t.due <= now]
                self._store_failed.cleared()
            except StoreError as exc:
                self._store_failed.failed(error=str(exc))
                due = []
            for timer in due:
                resolved = self._commands.get(timer.command)
                if resolved is None:
                    self._drop_timer(timer.id)
                    continue
                log.info("command_auto_stop", command=timer.command, origin=timer.origin)
                await self._queue.put(
                    _Job(timer.origin, resolved, timer.params, automatic=True, timer_id=timer.id)
                )
                await self._idle.wait()  # one at a time: the job drops its timer when done
            await asyncio.sleep(1.0)

    def _drop_timer(self, timer_id: int) -> None:
        try:
            self._store.drop_timer(timer_id)
        except StoreError as exc:
            self._store_failed.failed(error=str(exc))
