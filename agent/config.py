"""YAML -> validated, frozen settings; every problem reported as `FILE:LINE: key.path: message`.

This module checks shape, types and ranges. Whether a mapping fits the DBC files (signal names,
choices, buses) is checked by `agent.vehicle.dbc`, which reuses `Loaded.problem()` for its lines.
"""

from __future__ import annotations

import base64
import binascii
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from agent import yamlpos
from agent.errors import ConfigError, Problem

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
VSS_PATH_RE = re.compile(rf"^{_IDENT}(\.{_IDENT})+$")
SOURCE_RE = re.compile(rf"^{_IDENT}(\.{_IDENT})?$")

Scalar = bool | int | float | str


def _resolve_path(value: Path, info: ValidationInfo) -> Path:
    """Relative paths in the file resolve against the file's own folder."""
    base = (info.context or {}).get("base_dir")
    if base is not None and not value.is_absolute():
        return (Path(base) / value).resolve()
    return value


def _readable_file(value: Path) -> Path:
    if not value.is_file():
        raise ValueError(f"file not found: {value}")
    return value


ConfigPath = Annotated[Path, AfterValidator(_resolve_path)]
ExistingFile = Annotated[Path, AfterValidator(_resolve_path), AfterValidator(_readable_file)]


def _one_or_many(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


def _default_state_dir() -> Path:
    # systemd's StateDirectory= exports STATE_DIRECTORY (possibly a colon-separated list).
    state = os.environ.get("STATE_DIRECTORY")
    if state:
        return Path(state.split(":")[0])
    return Path("/var/lib/vehicle-agent")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BusSettings(_Model):
    name: Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_-]*$", max_length=32)]
    interface: Annotated[str, Field(min_length=1)] = "socketcan"
    channel: Annotated[str, Field(min_length=1)]
    fd: bool = False
    bitrate: Annotated[int, Field(gt=0)] | None = None
    dbc: Annotated[list[ConfigPath], BeforeValidator(_one_or_many), Field(min_length=1)]
    strict: bool = True  # false: load DBC quirks the way real tools do, each one a warning
    # SocketCAN: the socket's receive buffer, what the kernel holds while the agent is busy
    # (about a kilobyte a frame); null keeps the kernel's default (net.core.rmem_default).
    rcvbuf_kb: Annotated[int, Field(ge=64, le=262_144)] | None = 1024


class CanSettings(_Model):
    buses: Annotated[list[BusSettings], Field(min_length=1)]


class LinearTransform(_Model):
    scale: float = 1.0
    offset: float = 0.0

    @field_validator("scale", "offset")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value


class Transform(_Model):
    """Exactly one of `linear` or `map`. Map keys are checked against the DBC by vehicle.dbc."""

    linear: LinearTransform | None = None
    map: dict[Any, Any] | None = None

    @field_validator("map")
    @classmethod
    def _map_shape(cls, value: dict[Any, Any] | None) -> dict[Any, Any] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("map needs at least one entry")
        for key, out in value.items():
            if isinstance(key, bool) or not isinstance(key, str | int):
                raise ValueError(f"map key {key!r} must be a choice name or a whole number")
            if out is not None and not isinstance(out, Scalar):  # null: drop that choice
                raise ValueError(f"map value for {key!r} must be a boolean, number, string or null")
            if isinstance(out, float) and not math.isfinite(out):
                raise ValueError(f"map value for {key!r} must be finite")
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> Transform:
        if (self.linear is None) == (self.map is None):
            raise ValueError("give exactly one of 'linear' or 'map'")
        return self


def _check_compute(value: str) -> str:
    from agent.expr import ExprError, parse_arithmetic

    try:
        parse_arithmetic(value)
    except ExprError as exc:
        raise ValueError(f"not a valid expression: {exc}") from exc
    return value


class SignalSettings(_Model):
    path: Annotated[str, Field(pattern=VSS_PATH_RE.pattern, max_length=256)]
    source: Annotated[str, Field(pattern=SOURCE_RE.pattern)] | None = None
    compute: Annotated[str, AfterValidator(_check_compute)] | None = None
    bus: str | None = None
    transform: Transform | None = None
    invalid: list[Annotated[str, Field(min_length=1)] | int] = Field(default_factory=list)
    decimals: Annotated[int, Field(ge=0, le=12)] | None = None
    on_change: bool = True
    deadband: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0
    min_interval_ms: Annotated[int, Field(ge=0, le=86_400_000)] = 0
    max_interval_s: Annotated[float, Field(gt=0, le=86_400, allow_inf_nan=False)] | None = None

    @model_validator(mode="after")
    def _source_or_compute(self) -> SignalSettings:
        if (self.source is None) == (self.compute is None):
            raise ValueError("give exactly one of 'source' (a DBC signal) or 'compute'")
        if self.compute is not None and (self.transform is not None or self.invalid):
            raise ValueError("a 'compute' path takes no 'transform' or 'invalid'")
        return self


class VssSettings(_Model):
    """The VSS catalog mapped paths are checked and typed against (agent.vehicle.catalog)."""

    release: Literal["6.0"] = "6.0"
    overlays: list[ExistingFile] = Field(default_factory=list)
    unknown_paths: Literal["error", "warn"] = "error"

    @field_validator("release", mode="before")
    @classmethod
    def _release_text(cls, value: Any) -> Any:
        # `release: 6.0` in YAML is a number; accept it as the version it names.
        return str(value) if isinstance(value, float) else value


class TelemetrySettings(_Model):
    batch_interval_ms: Annotated[int, Field(ge=10, le=600_000)] = 1000
    batch_max_samples: Annotated[int, Field(ge=1, le=100_000)] = 500
    state_interval_s: Annotated[float, Field(gt=0, le=86_400)] = 10
    health_interval_s: Annotated[float, Field(gt=0, le=86_400)] = 60
    # Telemetry's bytes on the wire (uplink/encoding.py); the MQTT 5 content type says which.
    encoding: Literal["json", "cbor"] = "json"
    compression: Literal["none", "zstd"] = "none"


class TlsSettings(_Model):
    ca: ExistingFile | None = None
    cert: ExistingFile | None = None
    key: ExistingFile | None = None

    @model_validator(mode="after")
    def _pair(self) -> TlsSettings:
        if (self.cert is None) != (self.key is None):
            raise ValueError("mutual TLS needs both 'cert' and 'key'")
        return self


class MqttSettings(_Model):
    host: Annotated[str, Field(min_length=1)] = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 1883
    topic_prefix: Annotated[str, Field(min_length=1)] = "vehicles/{vehicle_id}"
    tls: TlsSettings | None = None
    username: str | None = None
    password_file: ExistingFile | None = None
    keepalive_s: Annotated[int, Field(ge=5, le=3600)] = 30
    protocol: Literal["5", "3.1.1"] = "5"

    @field_validator("protocol", mode="before")
    @classmethod
    def _protocol_text(cls, value: Any) -> Any:
        # `protocol: 5` in YAML is a number; accept it as the version it names.
        return (
            str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value
        )

    @field_validator("topic_prefix")
    @classmethod
    def _no_wildcards(cls, value: str) -> str:
        if any(c in value for c in "+#\0") or value.startswith("/") or value.endswith("/"):
            raise ValueError("topic_prefix may not contain + # or start/end with /")
        return value


class StorageSettings(_Model):
    path: ConfigPath = Field(default_factory=lambda: _default_state_dir() / "outbox.db")
    max_mb: Annotated[float, Field(ge=0.25, le=1_000_000)] = 256
    sync: Literal["normal", "full"] = "normal"
    max_age_h: Annotated[float, Field(gt=0)] | None = None


def _check_public_key(value: str) -> str:
    public_key_bytes(value)
    return value


def public_key_bytes(value: str) -> bytes:
    """The raw 32-byte Ed25519 key from base64 or a PEM block; ValueError if it is neither."""
    # Imported here: OpenSSL's bindings cost ~10 MB of a head unit's memory, and a
    # configuration without trusted keys never needs them.
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    text = value.strip()
    if text.startswith("-----BEGIN"):
        try:
            key = load_pem_public_key(text.encode())
        except (ValueError, TypeError) as exc:
            raise ValueError(f"not a readable PEM public key ({exc})") from exc
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError("PEM key is not an Ed25519 public key")
        return key.public_bytes_raw()
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("not valid base64 and not a PEM block") from exc
    if len(raw) != 32:
        raise ValueError(f"an Ed25519 public key is 32 bytes, this one is {len(raw)}")
    Ed25519PublicKey.from_public_bytes(raw)
    return raw


class TrustedKey(_Model):
    kid: Annotated[str, Field(pattern=r"^[A-Za-z0-9._:-]{1,64}$")]
    public_key: Annotated[str, AfterValidator(_check_public_key)]
    allow: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.*?]+$")]] = Field(default_factory=list)
    not_after: datetime | None = None
    revoked: bool = False

    @field_validator("not_after")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("give a time zone, e.g. 2027-12-31T00:00:00Z")
        return value


class ParamSpec(_Model):
    type: Literal[
        "number", "integer", "boolean", "string", "datetime", "tariff", "limits", "object"
    ]
    min: Annotated[float, Field(allow_inf_nan=False)] | None = None
    max: Annotated[float, Field(allow_inf_nan=False)] | None = None
    choices: list[str] | None = None
    default: bool | int | float | str | None = None
    required: bool | None = None  # default: required when there is no default


def _check_expression(value: str) -> str:
    from agent.expr import ExprError, parse

    try:
        parse(value)
    except ExprError as exc:
        raise ValueError(f"not a valid expression: {exc}") from exc
    return value


Condition = Annotated[str, AfterValidator(_check_expression)]


class ActionSpec(_Model):
    message: Annotated[str, Field(min_length=1)]
    bus: str | None = None
    signals: dict[str, bool | int | float | str] = Field(default_factory=dict)
    repeat: Annotated[int, Field(ge=1, le=100)] = 3
    interval_ms: Annotated[int, Field(ge=10, le=10_000)] = 100


class FeedbackSpec(_Model):
    condition: Condition
    timeout_s: Annotated[float, Field(gt=0, le=600)] = 5.0


class AutoStopSpec(_Model):
    after_param: str  # a parameter of this command, in minutes
    command: str  # the definition run when the time is up


class CommandDefinition(_Model):
    params: dict[str, ParamSpec] = Field(default_factory=dict)
    preconditions: list[Condition] = Field(default_factory=list)
    action: ActionSpec | None = None
    builtin: (
        Literal[
            "state.snapshot",
            "charging.schedule",
            "diagnostics.read_dtcs",
            "grid.signal",
            "grid.clear",
            "campaign.apply",
            "campaign.remove",
        ]
        | None
    ) = None
    feedback: FeedbackSpec | None = None
    auto_stop: AutoStopSpec | None = None

    @model_validator(mode="after")
    def _does_something(self) -> CommandDefinition:
        if (self.action is None) == (self.builtin is None):
            raise ValueError("give exactly one of 'action' (CAN frames) or 'builtin'")
        return self


COMMAND_NAME = r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$"


class CommandSettings(_Model):
    max_ttl_s: Annotated[int, Field(ge=1, le=86_400)] = 300
    clock_skew_s: Annotated[int, Field(ge=0, le=3600)] = 30
    trust: list[TrustedKey] = Field(default_factory=list)
    definitions: dict[Annotated[str, Field(pattern=COMMAND_NAME)], CommandDefinition] = Field(
        default_factory=dict
    )
    rejections_per_s: Annotated[float, Field(gt=0, le=10_000)] = 20.0


SCENARIOS = ("parked", "driving", "plugged_in")


class SimulatorSettings(_Model):
    enabled: bool = False
    scenario: Annotated[str, Field(min_length=1)] = "parked"
    speedup: Annotated[float, Field(gt=0, le=1000)] = 1.0
    seed: int = 0


class AlertSettings(_Model):
    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=64)]
    raise_when: Condition
    clear_when: Condition | None = None  # default: once raise_when is definitely false
    for_s: Annotated[float, Field(ge=0, le=86_400)] = 0
    severity: Literal["info", "warning", "critical"] = "warning"


class ChargingSettings(_Model):
    """The car's charging figures, for the planner behind `charging.schedule`."""

    capacity_kwh: Annotated[float, Field(gt=0, le=1000)] = 75.0
    max_power_kw: Annotated[float, Field(gt=0, le=1000)] = 11.0
    efficiency: Annotated[float, Field(gt=0, le=1)] = 0.92
    replan_drift_pct: Annotated[float, Field(gt=0, le=50)] = 3.0
    # Cost units per kg CO2 the planner weighs against price, where the tariff has intensities.
    co2_weight: Annotated[float, Field(ge=0, le=1e6)] = 0.0


class CampaignSettings(_Model):
    """Bounds on what campaigns (sent by the back end) may take on this car."""

    # All campaigns' rings together, preallocated at 16 bytes a sample (docs/campaigns.md).
    max_memory_kb: Annotated[int, Field(ge=0, le=1_048_576)] = 32_768


class EcuSettings(_Model):
    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")]
    bus: str
    request_id: Annotated[int, Field(ge=0, le=0x7FF)]  # 11-bit physical addressing
    response_id: Annotated[int, Field(ge=0, le=0x7FF)]

    @field_validator("name")
    @classmethod
    def _not_partial(cls, value: str) -> str:
        # read_dtcs's result holds one entry per ECU beside its `partial` flag.
        if value == "partial":
            raise ValueError("'partial' is reserved (read_dtcs's result uses it)")
        return value


class DiagnosticsSettings(_Model):
    """ECUs read by `diagnostics.read_dtcs` (UDS ReadDTCInformation over ISO-TP)."""

    ecus: list[EcuSettings] = Field(default_factory=list)
    status_mask: Annotated[int, Field(ge=1, le=0xFF)] = 0xFF
    timeout_s: Annotated[float, Field(gt=0, le=30)] = 2.0
    scan_interval_s: Annotated[float, Field(ge=1, le=86_400)] | None = None  # periodic scan


class LoggingSettings(_Model):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "console"] | None = None
    stats_interval_s: Annotated[float, Field(gt=0, le=86_400)] = 60


class Settings(_Model):
    vehicle_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")]
    can: CanSettings
    signals: Annotated[list[SignalSettings], Field(min_length=1)]
    vss: VssSettings = Field(default_factory=VssSettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)
    mqtt: MqttSettings = Field(default_factory=MqttSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    commands: CommandSettings = Field(default_factory=CommandSettings)
    simulator: SimulatorSettings = Field(default_factory=SimulatorSettings)
    alerts: list[AlertSettings] = Field(default_factory=list)
    charging: ChargingSettings = Field(default_factory=ChargingSettings)
    campaigns: CampaignSettings = Field(default_factory=CampaignSettings)
    diagnostics: DiagnosticsSettings = Field(default_factory=DiagnosticsSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)

    @property
    def topic_prefix(self) -> str:
        return self.mqtt.topic_prefix.replace("{vehicle_id}", self.vehicle_id)


@dataclass(frozen=True, slots=True)
class Loaded:
    """Validated settings plus where each key stood, for later checks that need lines."""

    settings: Settings
    file: str
    base_dir: Path
    positions: yamlpos.Positions

    def problem(self, path: Sequence[str | int], message: str, *, warning: bool = False) -> Problem:
        line = self.positions.line_of(tuple(path))
        return Problem(self.file, line, _dotted(path), message, warning)


def _dotted(path: Sequence[str | int]) -> str:
    return ".".join(str(p) for p in path) or "(document)"


def load(file: str | Path) -> Loaded:
    """Read and validate a configuration file; raise ConfigError listing every problem."""
    name = str(file)
    try:
        text = Path(file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError([Problem(name, 1, "(file)", f"cannot read: {reason}")]) from exc
    data, positions, issues = yamlpos.load(text)
    problems = [Problem(name, i.line, _dotted(i.path), i.message) for i in issues]
    if problems and data is None:
        raise ConfigError(problems)
    if not isinstance(data, Mapping):
        got = "an empty file" if data is None else type(data).__name__
        raise ConfigError(
            [*problems, Problem(name, 1, "(document)", f"expected a mapping, got {got}")]
        )

    base_dir = Path(file).resolve().parent
    try:
        settings = Settings.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        for err in exc.errors():
            loc = tuple(err["loc"])
            problems.append(
                Problem(name, positions.line_of(loc), _dotted(loc), _message(err, data))
            )
        raise ConfigError(problems) from exc
    loaded = Loaded(settings=settings, file=name, base_dir=base_dir, positions=positions)
    problems += _duplicates(loaded)
    if problems:
        raise ConfigError(problems)
    return loaded


def _duplicates(loaded: Loaded) -> list[Problem]:
    """Names that must be unique: bus names, key ids, VSS paths. Reported at the repeat."""
    s = loaded.settings
    groups: list[tuple[str, str, list[str]]] = [
        ("can.buses", "name", [b.name for b in s.can.buses]),
        ("commands.trust", "kid", [k.kid for k in s.commands.trust]),
        ("signals", "path", [m.path for m in s.signals]),
        ("alerts", "name", [a.name for a in s.alerts]),
    ]
    problems = []
    for section, key, values in groups:
        first: dict[str, int] = {}
        for index, value in enumerate(values):
            if value in first:
                section_path: tuple[str | int, ...] = tuple(section.split("."))
                line = loaded.positions.line_of((*section_path, first[value], key))
                where = f"first at {section}.{first[value]}, line {line}"
                problems.append(
                    loaded.problem(
                        (*section_path, index, key), f"duplicate {key} {value!r} ({where})"
                    )
                )
            else:
                first[value] = index
    return problems


def _message(err: Any, data: Any) -> str:
    kind = err["type"]
    loc = tuple(err["loc"])
    if kind == "extra_forbidden":
        key = str(loc[-1])
        allowed = _allowed_keys(loc[:-1])
        import difflib  # only on a mistake: start-up stays lean

        hint = difflib.get_close_matches(key, allowed, n=1)
        suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
        return f"unknown key{suggestion}; allowed here: {', '.join(sorted(allowed))}"
    if kind == "missing":
        return "required key is missing"
    msg = str(err["msg"])
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if kind not in {"value_error", "assertion_error"} and "input" in err:
        got = err["input"]
        if not isinstance(got, dict | list):
            msg = f"{msg} (got {got!r})"
    return msg


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    """Field names of the model that sits at `loc`, for 'did you mean' hints."""
    model: Any = Settings
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return []
        model = _model_in(field.annotation)
        if model is None:
            return []
    return list(model.model_fields)


def _model_in(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    return None
