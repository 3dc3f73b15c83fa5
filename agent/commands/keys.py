"""Key pairs and tokens for the command CLI: `keygen` and `sign` (what a back end does)."""

from __future__ import annotations

import base64
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.errors import AgentError


def keygen(kid: str, out: Path) -> tuple[Path, str]:
    """Write `<kid>.pem` (private, mode 0600) and `<kid>.pub`; the raw public key in base64."""
    key = Ed25519PrivateKey.generate()
    out.mkdir(parents=True, exist_ok=True)
    private = out / f"{kid}.pem"
    if private.exists():
        raise AgentError(f"{private} exists; not overwriting a private key")
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    public = base64.b64encode(key.public_key().public_bytes_raw()).decode()
    (out / f"{kid}.pub").write_text(public + "\n")
    return private, public


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise AgentError(f"cannot read private key {path}: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise AgentError(f"{path} is not an Ed25519 private key")
    return key


def parse_param(text: str) -> tuple[str, Any]:
    """`k=v`: v as JSON where it reads as JSON (21.5, true, "x"), else as a string."""
    name, sep, raw = text.partition("=")
    if not sep or not name:
        raise AgentError(f"--param wants NAME=VALUE, got {text!r}")
    try:
        value: Any = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return name, value


def sign(
    key: Ed25519PrivateKey,
    *,
    kid: str,
    vehicle: str,
    command: str,
    params: dict[str, Any],
    ttl_s: float = 60,
    now: float | None = None,
    jti: str | None = None,
) -> str:
    issued = int(now if now is not None else time.time())
    claims = {
        "jti": jti or str(uuid.uuid4()),
        "aud": vehicle,
        "iat": issued,
        "exp": issued + int(ttl_s),
        "cmd": command,
        "params": params,
    }
    return jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": kid})
