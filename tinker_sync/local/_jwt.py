"""HS256 JWTs minted by the local server (``POST /api/v1/auth/token`` when started with JWT auth on).

A token carries the owner id of the API key it was exchanged for, so a client that switches to the JWT
keeps seeing its own runs. Claims follow what the official SDK reads: ``sub`` (user URN), ``org_id``,
``email``, ``iat`` and ``exp``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

__all__ = ["JWTError", "decode", "mint"]

_ISSUER = "passport-tinker-sync-local"  # the official whoami() accepts JWT keys from "passport-" issuers
_LEEWAY_S = 5.0


class JWTError(ValueError):
    """The token is malformed, forged or expired (the message says which)."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def mint(secret: bytes, owner: str, *, now: float, lifetime_s: float) -> str:
    """A signed token for ``owner`` valid from ``now`` for ``lifetime_s`` seconds."""
    header = {"alg": "HS256", "typ": "JWT"}
    claims = {"iss": _ISSUER, "sub": f"tml:user:{owner}", "org_id": "local", "email": "",
              "owner": owner, "iat": int(now), "exp": int(now + lifetime_s)}
    signing_input = _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(claims).encode())
    sig = hmac.new(secret, signing_input.encode("ascii"), hashlib.sha256).digest()
    return signing_input + "." + _b64(sig)


def decode(secret: bytes, token: str, *, now: float) -> dict[str, Any]:
    """The verified claims of ``token``.

    Raises:
        JWTError: bad shape or signature, or expired.
    """
    parts = token.split(".")
    if len(parts) != 3:
        raise JWTError("malformed token: expected header.payload.signature")
    try:
        sig = _unb64(parts[2])
        claims = json.loads(_unb64(parts[1]))
    except (ValueError, UnicodeDecodeError):
        raise JWTError("malformed token: undecodable payload") from None
    expected = hmac.new(secret, f"{parts[0]}.{parts[1]}".encode("ascii"), hashlib.sha256).digest()
    if not hmac.compare_digest(sig, expected):
        raise JWTError("token signature does not verify (minted by another server?)")
    if not isinstance(claims, dict) or not isinstance(claims.get("owner"), str):
        raise JWTError("token lacks the owner claim")
    exp = claims.get("exp")
    if not isinstance(exp, (int, float)) or exp + _LEEWAY_S < now:
        raise JWTError("token expired; exchange the API key for a new one (POST /api/v1/auth/token)")
    return claims
