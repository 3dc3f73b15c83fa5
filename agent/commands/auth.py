"""Command token verification: the car itself checks every command end to end.

A token is a compact JWT signed with EdDSA (Ed25519). Checks, cheapest first, each failure
with its reason code: size and shape (MALFORMED), `alg` exactly EdDSA (BAD_SIGNATURE), `kid`
in the trust store (UNKNOWN_KEY), the signature (BAD_SIGNATURE), the key's revocation and
`not_after` (KEY_REVOKED), `aud` (WRONG_VEHICLE), lifetime (TTL_TOO_LONG), `exp` (EXPIRED),
`iat` (NOT_YET_VALID), and the key's `allow` patterns against `cmd` (NOT_PERMITTED).
Pure functions over plain data: no clock, no I/O.
"""

from __future__ import annotations

import fnmatch
import importlib
import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeGuard

from agent.config import CommandSettings, public_key_bytes
from agent.errors import AgentError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

# PyJWT and cryptography (OpenSSL's bindings, ~10 MB resident) are imported when the first key
# is loaded or the first token arrives: a car without trusted keys or commands never pays.

MAX_TOKEN_BYTES = 16 * 1024
# campaign.apply and campaign.remove only: a campaign names many signals. Every other command
# is refused above MAX_TOKEN_BYTES once its claims are read.
MAX_CAMPAIGN_TOKEN_BYTES = 64 * 1024
LARGE_COMMANDS = frozenset({"campaign.apply", "campaign.remove"})

REASONS = (
    "MALFORMED",
    "BAD_SIGNATURE",
    "UNKNOWN_KEY",
    "KEY_REVOKED",
    "NOT_PERMITTED",
    "EXPIRED",
    "NOT_YET_VALID",
    "TTL_TOO_LONG",
    "WRONG_VEHICLE",
    "REPLAY",
    "UNKNOWN_COMMAND",
    "BAD_PARAMS",
    "PRECONDITION_FAILED",
    "BUSY",
)


class AuthError(AgentError):
    """A token was refused; `reason` is one of REASONS. `command_id` is set once trusted."""

    def __init__(self, reason: str, detail: str, command_id: str | None = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.command_id = command_id


@dataclass(frozen=True, slots=True)
class TrustedKey:
    kid: str
    key: Ed25519PublicKey
    allow: tuple[str, ...]
    not_after: float | None
    revoked: bool

    def permits(self, command: str) -> bool:
        return any(fnmatch.fnmatchcase(command, pattern) for pattern in self.allow)


@dataclass(frozen=True, slots=True)
class VerifiedCommand:
    jti: str
    kid: str
    command: str
    params: dict[str, Any]
    issued_at: float
    expires_at: float
    token: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class Verifier:
    vehicle_id: str
    keys: dict[str, TrustedKey]
    max_ttl_s: float
    clock_skew_s: float

    @classmethod
    def from_settings(cls, vehicle_id: str, settings: CommandSettings) -> Verifier:
        keys = {}
        if settings.trust:
            from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

            # PyJWT too, now rather than on the first command: its import took ~0.5 s in
            # User-Mode Linux (a slow head unit), which the first `accepted` would wait for.
            importlib.import_module("jwt")
        for entry in settings.trust:
            raw = public_key_bytes(entry.public_key)
            keys[entry.kid] = TrustedKey(
                kid=entry.kid,
                key=Ed25519PublicKey.from_public_bytes(raw),
                allow=tuple(entry.allow),
                not_after=_epoch(entry.not_after),
                revoked=entry.revoked,
            )
        return cls(vehicle_id, keys, settings.max_ttl_s, settings.clock_skew_s)

    def verify(self, token: bytes, now: float) -> VerifiedCommand:
        import jwt

        if len(token) > MAX_CAMPAIGN_TOKEN_BYTES:
            raise AuthError(
                "MALFORMED", f"token of {len(token)} bytes is over {MAX_CAMPAIGN_TOKEN_BYTES}"
            )
        try:
            text = token.decode("ascii").strip()
            header = jwt.get_unverified_header(text)
        except (UnicodeDecodeError, jwt.PyJWTError, ValueError, TypeError) as exc:
            raise AuthError("MALFORMED", f"not a compact JWT ({type(exc).__name__})") from None
        if header.get("alg") != "EdDSA":
            raise AuthError("BAD_SIGNATURE", f"alg {header.get('alg')!r} is not accepted")
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise AuthError("UNKNOWN_KEY", "no kid in the header")
        key = self.keys.get(kid)
        if key is None:
            raise AuthError("UNKNOWN_KEY", f"kid {kid[:64]!r} is not trusted")
        try:
            claims = jwt.decode(
                text,
                key=key.key,
                algorithms=["EdDSA"],
                options={
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                    "verify_aud": False,
                    "verify_iss": False,
                },
            )
        except jwt.InvalidSignatureError:
            raise AuthError("BAD_SIGNATURE", "signature does not verify") from None
        except jwt.PyJWTError as exc:
            raise AuthError("MALFORMED", f"cannot read the token ({type(exc).__name__})") from None
        jti = claims.get("jti")
        if not isinstance(jti, str) or not 0 < len(jti) <= 128:
            raise AuthError("MALFORMED", "jti must be a string of 1 to 128 characters")
        if key.revoked:
            raise AuthError("KEY_REVOKED", f"key {kid!r} is revoked", jti)
        if key.not_after is not None and now > key.not_after:
            raise AuthError("KEY_REVOKED", f"key {kid!r} expired (not_after)", jti)
        aud = claims.get("aud")
        if aud != self.vehicle_id:
            raise AuthError("WRONG_VEHICLE", "aud is not this vehicle", jti)
        iat_claim, exp_claim = claims.get("iat"), claims.get("exp")
        if not _number(iat_claim) or not _number(exp_claim):
            raise AuthError("MALFORMED", "iat and exp must be numbers", jti)
        iat, exp = float(iat_claim), float(exp_claim)
        if exp < iat:
            raise AuthError("MALFORMED", "exp is before iat", jti)
        if exp - iat > self.max_ttl_s:
            raise AuthError("TTL_TOO_LONG", f"lifetime {exp - iat:g} s > {self.max_ttl_s:g} s", jti)
        if now > exp + self.clock_skew_s:
            raise AuthError("EXPIRED", f"expired {now - exp:.0f} s ago", jti)
        if iat > now + self.clock_skew_s:
            raise AuthError("NOT_YET_VALID", f"issued {iat - now:.0f} s in the future", jti)
        command = claims.get("cmd")
        if not isinstance(command, str) or not command:
            raise AuthError("MALFORMED", "cmd must be a non-empty string", jti)
        if len(token) > MAX_TOKEN_BYTES and command not in LARGE_COMMANDS:
            raise AuthError(
                "MALFORMED",
                f"token of {len(token)} bytes is over {MAX_TOKEN_BYTES} "
                "(64 KiB only for campaign.apply and campaign.remove)",
                jti,
            )
        params = claims.get("params", {})
        if not isinstance(params, dict):
            raise AuthError("BAD_PARAMS", "params must be an object", jti)
        if not key.permits(command):
            raise AuthError("NOT_PERMITTED", f"key {kid!r} may not send {command!r}", jti)
        return VerifiedCommand(jti, kid, command, params, iat, exp, token)


MAX_TIME = 1e11  # year 5138: beyond it a time claim is nonsense, and huge ints overflow floats


def _number(value: Any) -> TypeGuard[int | float]:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if isinstance(value, int):
        return abs(value) <= MAX_TIME  # compared as an int: 10**400 must not reach float()
    return math.isfinite(value) and abs(value) <= MAX_TIME


def _epoch(moment: datetime | None) -> float | None:
    return moment.timestamp() if moment is not None else None
