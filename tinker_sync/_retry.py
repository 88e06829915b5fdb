"""Retry policy for ordinary requests: which failures are retried, how long to wait, how long in total.

Pure logic (no I/O, no sleeping); the runtime applies it. ``parse_retry_after`` reads the server's
``retry-after-ms`` / ``retry-after`` hints.
"""

from __future__ import annotations

import datetime as _dt
import email.utils
import logging
import math
import random
import time
from collections.abc import Callable, Iterable, Mapping

import attrs

__all__ = [
    "IDEMPOTENT_POST_PATHS",
    "SERVER_ERRORS",
    "RetryPolicy",
    "parse_http_date",
    "parse_retry_after",
    "poll_backoff_s",
]

logger = logging.getLogger(__name__)

_MAX_RETRY_AFTER_S = 60.0

# POST endpoints that are safe to send again after the first attempt may have reached the server
# (a read timeout or a dropped connection after sending). Each is a read, is keyed by a seq_id the
# server de-duplicates on (docs/protocol.rst §5.3/5.4), or is keyed by a session counter (§5.2). Every attempt
# also carries the same X-Idempotency-Key. Anything else is only retried when the request certainly
# never left (connect errors), so a non-idempotent call is never silently doubled.
IDEMPOTENT_POST_PATHS: frozenset[str] = frozenset(
    "/api/v1/" + p
    for p in (
        "retrieve_future",
        "forward_backward",
        "forward",
        "optim_step",
        "save_weights",
        "load_weights",
        "save_weights_for_sampler",
        "asample",
        "create_model",
        "create_sampling_session",
        "create_session",
        "session_heartbeat",
        "get_info",
        "weights_info",
        "unload_model",
        "client/config",
        "client/dynamic_config",
        "auth/token",
    )
)


SERVER_ERRORS: frozenset[int] = frozenset(range(500, 600))


def _int_set(values: Iterable[int]) -> frozenset[int]:
    return frozenset(values)


def _default_retry_statuses() -> frozenset[int]:
    return frozenset({408, 409, 429})


@attrs.frozen
class RetryPolicy:
    """How ordinary (non-poll) requests are retried; change it with ``attrs.evolve(policy, ...)``.

    The delay before retry ``k`` (0-based) is ``min(initial_delay_s * multiplier**k, max_delay_s)``
    reduced by a random fraction of up to ``jitter`` (0.25 = the official SDK's behaviour; 1.0 =
    "full jitter", a uniform draw in [0, cap]). A server ``Retry-After`` hint in (0, 60] s replaces
    the computed delay. Retrying stops after ``max_attempts`` attempts or once ``total_timeout_s``
    would be exceeded. Statuses retried: ``retry_statuses`` plus, while ``retry_server_errors``, every
    5xx; an ``x-should-retry`` response header (``true``/``false``) overrides that decision.
    ``only_statuses()`` makes a copy that retries exactly the given statuses (per-call overrides).
    """

    max_attempts: int = attrs.field(default=10)
    initial_delay_s: float = 0.5
    max_delay_s: float = 10.0
    multiplier: float = 2.0
    jitter: float = 0.25
    total_timeout_s: float = 300.0
    retry_statuses: frozenset[int] = attrs.field(factory=_default_retry_statuses, converter=_int_set)
    retry_server_errors: bool = True

    @max_attempts.validator
    def _check_attempts(self, _attr: attrs.Attribute[int], value: int) -> None:
        if value < 1:
            raise ValueError(f"RetryPolicy.max_attempts must be >= 1 (1 = no retries), got {value}")

    def __attrs_post_init__(self) -> None:
        if self.initial_delay_s < 0 or self.max_delay_s < 0:
            raise ValueError("RetryPolicy delays must be >= 0 seconds")
        if self.multiplier < 1:
            raise ValueError(f"RetryPolicy.multiplier must be >= 1, got {self.multiplier}")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError(f"RetryPolicy.jitter must be within [0, 1], got {self.jitter}")
        if self.total_timeout_s <= 0:
            raise ValueError(f"RetryPolicy.total_timeout_s must be > 0, got {self.total_timeout_s}")

    @classmethod
    def no_retries(cls) -> RetryPolicy:
        """A policy that makes exactly one attempt."""
        return cls(max_attempts=1)

    def only_statuses(self, statuses: Iterable[int]) -> RetryPolicy:
        """A copy that retries exactly ``statuses`` (5xx only if listed, e.g. via ``SERVER_ERRORS``)."""
        return attrs.evolve(self, retry_statuses=_int_set(statuses), retry_server_errors=False)

    def delay_for(
        self, attempt: int, *, retry_after_s: float | None = None, rng: Callable[[], float] = random.random
    ) -> float:
        """Seconds to wait before retry number ``attempt`` (0 = the first retry)."""
        if retry_after_s is not None and 0 < retry_after_s <= _MAX_RETRY_AFTER_S:
            return retry_after_s
        exp = min(max(attempt, 0), 64)  # bounded so the power cannot overflow
        cap = min(self.initial_delay_s * self.multiplier**exp, self.max_delay_s)
        return max(0.0, cap * (1.0 - self.jitter * rng()))

    def is_retryable_status(self, status: int, headers: Mapping[str, str] | None = None) -> bool:
        """Whether an HTTP error status is worth another attempt (``x-should-retry`` wins)."""
        hint = _header(headers, "x-should-retry")
        if hint is not None:
            hint = hint.strip().lower()
            if hint == "true":
                return True
            if hint == "false":
                return False
        return status in self.retry_statuses or (self.retry_server_errors and status >= 500)

    def may_resend(self, method: str, path: str) -> bool:
        """Whether a request that may already have reached the server can be sent again."""
        if method.upper() in ("GET", "HEAD", "OPTIONS", "PUT", "DELETE"):
            return True
        return path.split("?", 1)[0] in IDEMPOTENT_POST_PATHS

    def should_retry(self, attempt: int, elapsed_s: float, delay_s: float) -> bool:
        """Whether attempt ``attempt + 1`` fits the attempt count and the total time budget."""
        return attempt + 1 < self.max_attempts and elapsed_s + delay_s <= self.total_timeout_s


def _header(headers: Mapping[str, str] | None, name: str) -> str | None:
    if not headers:
        return None
    value = headers.get(name)
    if value is not None:
        return value
    lname = name.lower()
    for key, val in headers.items():
        if key.lower() == lname:
            return val
    return None


def parse_retry_after(
    headers: Mapping[str, str] | None, *, now: Callable[[], float] = time.time, max_s: float = _MAX_RETRY_AFTER_S
) -> float | None:
    """Read a server back-off hint: ``retry-after-ms``, else ``retry-after`` (seconds or HTTP date).

    Returns seconds clamped to ``[0, max_s]``, or None when there is no usable hint.
    """
    ms = _header(headers, "retry-after-ms")
    if ms is not None:
        try:
            value = float(ms) / 1000.0
        except ValueError:
            value = math.nan
        if math.isfinite(value):
            return min(max(value, 0.0), max_s)
    raw = _header(headers, "retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    try:
        value = float(raw)
    except ValueError:
        when = parse_http_date(raw)
        if when is None:
            return None
        value = when.timestamp() - now()
    if not math.isfinite(value):
        return None
    return min(max(value, 0.0), max_s)


_RECONNECT_FIRST_S = 0.05  # a poll that lost its connection: 50 ms, doubling to 30 s
_BUSY_FIRST_S = 1.0  # a poll answered 429 without a hint: 1 s, doubling to 30 s
_POLL_BACKOFF_MAX_S = 30.0
_SERVER_ERROR_FIRST_S = 0.05  # a poll answered 5xx: 50 ms, doubling to 2 s
_SERVER_ERROR_MAX_S = 2.0


def poll_backoff_s(
    backoffs: int, *, status: int | None, headers: Mapping[str, str] | None = None,
    wall_clock: Callable[[], float] = time.time,
) -> float:
    """How long a poller waits after its ``backoffs``-th consecutive 429, 5xx or lost connection (0-based).

    A 429 with a usable Retry-After hint waits exactly that; a 429 without one waits 1, 2, 4 ... 30 s.
    A lost connection (``status`` None) is usually a dropped keep-alive connection or a proxy's reset,
    so it polls again after 50 ms, then 0.1, 0.2 ... up to 30 s while the errors go on (a poll that
    stalls stalls every call it serves). A 5xx: the official SDK polls again at once; 50 ms doubling
    to 2 s keeps a server answering 500 instantly from turning the poller into a hot loop.
    """
    first, cap = _BUSY_FIRST_S, _POLL_BACKOFF_MAX_S
    if status is None:
        first = _RECONNECT_FIRST_S
    elif status >= 500:
        first, cap = _SERVER_ERROR_FIRST_S, _SERVER_ERROR_MAX_S
    elif status == 429:
        hint = parse_retry_after(headers, now=wall_clock)
        if hint is not None and hint > 0:
            return hint
    return float(min(first * 2.0 ** min(backoffs, 16), cap))


def parse_http_date(value: str | None) -> _dt.datetime | None:
    """An HTTP date (RFC 9110 IMF-fixdate or an obsolete form) as an aware datetime (UTC if no zone), else None."""
    if not value:
        return None
    try:
        when = email.utils.parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=_dt.timezone.utc)
