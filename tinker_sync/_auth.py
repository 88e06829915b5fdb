"""Credentials sent as ``X-API-Key``: the static API key, or a server-minted JWT (``pjwt_auth_enabled``).

A credential provider has a small interface used by the transport: ``header_value()`` for each request
and ``on_unauthorized(headers, sent)`` after a 401 (True: send the request once more with a fresh value).
``JwtCredentials`` exchanges the key for a JWT (``POST /api/v1/auth/token``), caches it and refreshes it
at about half its lifetime (docs/protocol.rst §1.2), without a thread of its own.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import random
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal, Protocol

import attrs

from ._config import InvalidConfigError
from ._exceptions import (
    APIResponseValidationError,
    AuthenticationError,
    TinkerError,
    register_secret,
    unregister_secret,
)

__all__ = [
    "AUTH_TOKEN_PATH",
    "Credentials",
    "JwtCredentials",
    "StaticKey",
    "TokenTimes",
    "exchange_credential",
    "identity_token",
    "is_invalid_token",
    "jwt_claims",
    "plan_refresh",
    "token_action",
    "token_exchange",
]

logger = logging.getLogger(__name__)

AUTH_TOKEN_PATH = "/api/v1/auth/token"
_REFRESH_ON_DEMAND_S = 60.0  # a token this close to expiry is replaced before use
_RETRY_DELAY_S = 60.0  # after a failed refresh (or an unreadable lifetime), try again this much later
_JITTER = (0.45, 0.55)  # refresh at 50% of the lifetime +-10%
_CREDENTIAL_CMD_TIMEOUT_S = 60.0


class Credentials(Protocol):
    """What the transport asks of a credential provider."""

    def header_value(self) -> str:
        """The ``X-API-Key`` value for the next request (may fetch or refresh a token; thread-safe)."""
        ...

    def on_unauthorized(self, headers: Mapping[str, str], sent: str) -> bool:
        """A request sent with ``sent`` got 401 with ``headers``: True if it should be sent once more."""
        ...

    def current(self) -> str | None:
        """The value in use now without fetching anything (for redaction), or None."""
        ...


@attrs.frozen
class StaticKey:
    """The API key itself (the default: servers without ``pjwt_auth_enabled``)."""

    key: str = attrs.field(repr=False)

    def header_value(self) -> str:
        return self.key

    def on_unauthorized(self, headers: Mapping[str, str], sent: str) -> bool:
        return False

    def current(self) -> str | None:
        return self.key


def jwt_claims(token: str) -> dict[str, Any]:
    """The payload claims of a JWT, NOT verified (the token came from the server over the connection).

    Raises:
        ValueError: not a three-part JWT with a base64url JSON object payload (the message never
            contains the token).
    """
    parts = token.split(".")
    if len(parts) != 3:
        raise ValueError("not a JWT (expected three dot-separated parts)")
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, UnicodeError):
        raise ValueError("the JWT payload is not base64url-encoded JSON") from None
    if isinstance(claims, dict):
        return claims
    raise ValueError("the JWT payload is not a JSON object")


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


@attrs.frozen
class TokenTimes:
    """When a cached token should be refreshed and when it stops being usable (local clock)."""

    refresh_at: float
    expires_at: float


def plan_refresh(claims: Mapping[str, Any], received_at: float, jitter: float) -> TokenTimes:
    """Refresh at ``jitter`` (about 0.5) of the token's lifetime ``exp - iat`` after it was received.

    Both claims come from the server, so the plan measures the lifetime on the server's clock and
    applies it to the local one: clock skew cannot shorten or stretch it. Without a usable lifetime
    (``exp`` alone is a time on the server's clock) a refresh is tried in 60 s and required in 120 s.
    """
    exp, iat = _number(claims.get("exp")), _number(claims.get("iat"))
    if exp is not None and iat is not None and exp > iat:
        lifetime = exp - iat
        return TokenTimes(received_at + lifetime * jitter, received_at + lifetime)
    return TokenTimes(received_at + _RETRY_DELAY_S, received_at + _RETRY_DELAY_S + _REFRESH_ON_DEMAND_S)


def token_action(now: float, times: TokenTimes | None) -> Literal["use", "refresh", "must_refresh"]:
    """What a request at ``now`` does with the cached token.

    ``use`` it; ``refresh`` (past the planned refresh: one caller fetches a new token, others keep
    using the cached one); ``must_refresh`` (none yet, or within 60 s of expiry: every caller waits
    for a new token).
    """
    if times is None or now >= times.expires_at - _REFRESH_ON_DEMAND_S:
        return "must_refresh"
    if now >= times.refresh_at:
        return "refresh"
    return "use"


def is_invalid_token(status: int, headers: Mapping[str, str]) -> bool:
    """A 401 that rejects the token itself (RFC 6750 ``error="invalid_token"``), not the account."""
    if status != 401:
        return False
    value = next((v for k, v in headers.items() if k.lower() == "www-authenticate"), "")
    return 'error="invalid_token"' in value


def identity_token(credentials: Credentials, api_key: str) -> str:
    """The token whose claims ``whoami`` reports: the exchanged JWT when JWT auth is on, else the key itself."""
    return credentials.token() if isinstance(credentials, JwtCredentials) else api_key


def exchange_credential(
    api_key: str, source: str, env: Mapping[str, str] | None = None
) -> Callable[[], str]:
    """What the JWT exchange authenticates with, per the client config's ``credential_default_source``.

    ``"credential_cmd"``: the output of ``TINKER_CREDENTIAL_CMD`` (a shell command run for each exchange),
    unless the key is itself a JWT (used as is, like the official SDK); anything else: the API key.

    Raises:
        InvalidConfigError: the server requires a credential command and TINKER_CREDENTIAL_CMD is unset.
    """
    if source != "credential_cmd" or api_key.startswith("eyJ"):
        return lambda: api_key
    cmd = (os.environ if env is None else env).get("TINKER_CREDENTIAL_CMD", "")
    if not cmd:
        raise InvalidConfigError(
            "the server requires dynamic credentials (credential_default_source='credential_cmd'): set "
            "TINKER_CREDENTIAL_CMD to a command that prints a valid credential"
        )

    def run() -> str:
        try:
            # the user's own command, run by their shell as the official SDK does
            done = subprocess.run(
                cmd, shell=True, capture_output=True, text=True, timeout=_CREDENTIAL_CMD_TIMEOUT_S, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise TinkerError(f"TINKER_CREDENTIAL_CMD could not run: {type(exc).__name__}") from None
        credential = done.stdout.strip()
        if done.returncode != 0 or not credential:
            raise TinkerError(f"TINKER_CREDENTIAL_CMD exited with status {done.returncode} and printed no credential")
        return credential

    return run


def token_exchange(request: Callable[..., Any], credential: Callable[[], str]) -> Callable[[], str]:
    """The exchange ``JwtCredentials`` calls: ``POST /api/v1/auth/token`` with body ``{}``.

    Args:
        request: ``Runtime.request``-like ``(method, path, *, body, headers) -> parsed JSON``.
        credential: the key to exchange (e.g. ``lambda: config.api_key``), sent explicitly as
            ``X-API-Key`` so the transport does not put the JWT it is replacing there.
    """

    def exchange() -> str:
        body = request("POST", AUTH_TOKEN_PATH, body={}, headers={"X-API-Key": credential()})
        jwt = body.get("jwt") if isinstance(body, dict) else None
        if not isinstance(jwt, str) or not jwt:
            raise APIResponseValidationError(
                "POST /api/v1/auth/token: expected {'jwt': '<token>'}", body=None, expected_type="AuthTokenResponse"
            )
        return jwt

    return exchange


class JwtCredentials:
    """A server-minted JWT used as ``X-API-Key``: obtained on first use, cached, refreshed, replaced on rejection.

    Refresh happens in the calling thread, no background task: past ~50% of the lifetime (+-10%
    jitter) one request refreshes while the others keep sending the cached token; within 60 s of
    expiry every request waits for the new one. A failed refresh keeps the cached token until it
    expires and tries again 60 s later; a credential the server rejects (401 on the exchange) raises
    AuthenticationError from ``header_value()``. A 401 carrying ``error="invalid_token"`` replaces
    the token once (concurrent rejections of one token cost one exchange) and asks for a replay.

    Args:
        exchange: returns a fresh JWT (see ``token_exchange``).
        clock: the local clock for refresh timing (injectable; wall or monotonic, used consistently).
        jitter: returns the fraction of the lifetime to refresh at (default uniform 0.45-0.55).
    """

    def __init__(
        self,
        exchange: Callable[[], str],
        *,
        clock: Callable[[], float] = time.monotonic,
        jitter: Callable[[], float] | None = None,
    ) -> None:
        self._exchange = exchange
        self._clock = clock
        self._jitter = jitter or (lambda: random.uniform(*_JITTER))
        self._lock = threading.Lock()  # guards the cached token and its times
        self._fetch_lock = threading.Lock()  # one exchange at a time
        self._token: str | None = None
        self._previous: str | None = None  # still redacted: requests sent with it may still fail
        self._times: TokenTimes | None = None
        self.exchanges = 0  # successful exchanges (tests)

    def __repr__(self) -> str:
        return f"JwtCredentials(cached={self._token is not None}, times={self._times!r})"

    def current(self) -> str | None:
        with self._lock:
            return self._token

    def header_value(self) -> str:
        with self._lock:
            token, action = self._token, token_action(self._clock(), self._times)
        if action == "use" and token is not None:
            return token
        if action == "refresh" and token is not None:
            if not self._fetch_lock.acquire(blocking=False):
                return token  # another request is refreshing it; this one is still valid
            try:
                return self._refresh_soft(token)
            finally:
                self._fetch_lock.release()
        with self._fetch_lock:
            with self._lock:  # someone else may have fetched while we waited
                if token_action(self._clock(), self._times) != "must_refresh" and self._token is not None:
                    return self._token
            return self._fetch_or_fallback()

    def on_unauthorized(self, headers: Mapping[str, str], sent: str) -> bool:
        """Replace a token the server rejected as invalid (once per token); True: replay the request."""
        if not is_invalid_token(401, headers):
            return False
        with self._fetch_lock:
            with self._lock:
                if self._token is not None and self._token != sent:
                    return True  # another request already replaced it
            try:
                self._fetch()
            except Exception as exc:  # noqa: BLE001 - the 401 itself is the error the caller sees
                logger.warning("could not replace the rejected JWT: %s", exc)
                return False
        return True

    def token(self) -> str:
        """A valid JWT (fetched or refreshed if needed); its claims are what ``whoami`` reports."""
        return self.header_value()

    def claims(self) -> dict[str, Any]:
        """The claims of a valid JWT (``sub``, ``email``, ``org_id``, ``exp``, ...), unverified."""
        return jwt_claims(self.token())

    # -- internals -----------------------------------------------------------------------------
    def _fetch(self) -> str:
        """Exchange for a new token and cache it (called with ``_fetch_lock`` held)."""
        token = self._exchange()
        received = self._clock()
        try:
            times = plan_refresh(jwt_claims(token), received, self._jitter())
        except ValueError:
            times = plan_refresh({}, received, 0.5)
        register_secret(token)  # never shown in an error, like the API key
        with self._lock:
            retired, self._previous = self._previous, self._token
            self._token, self._times = token, times
            self.exchanges += 1
        unregister_secret(retired)
        logger.debug("got a JWT; refresh in %.0f s", times.refresh_at - received)
        return token

    def _refresh_soft(self, cached: str) -> str:
        try:
            return self._fetch()
        except Exception as exc:  # noqa: BLE001 - keep the still-valid token and try again later
            now = self._clock()
            with self._lock:
                if self._times is not None:
                    self._times = attrs.evolve(self._times, refresh_at=now + _RETRY_DELAY_S)
            logger.warning(
                "JWT refresh failed (the current token stays in use; retry in %.0f s): %s", _RETRY_DELAY_S, exc
            )
            return cached

    def _fetch_or_fallback(self) -> str:
        try:
            return self._fetch()
        except AuthenticationError:
            raise  # the server refused the credential itself: say so now
        except Exception as exc:
            with self._lock:
                token, times = self._token, self._times
            if token is None or times is None or self._clock() >= times.expires_at:
                raise
            logger.warning("on-demand JWT refresh failed; using the current token until it expires: %s", exc)
            return token
