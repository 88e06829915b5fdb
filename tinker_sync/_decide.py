"""What to do after one attempt of an ordinary request: the pure decision table of ``Runtime.call``.

``decide_attempt(outcome, state, policy, now)`` looks at one attempt's outcome (an HTTP response or
the connection error that replaced it) and returns Return / Raise / Sleep / WaitWindow. No I/O, no
sleeping, no clock of its own: the runtime's loop sends, sleeps and waits as told.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Union

import attrs

from ._exceptions import APICertificateError, APIConnectionError, APIStatusError, from_response, parse_error_body
from ._retry import RetryPolicy, parse_retry_after

if TYPE_CHECKING:
    from ._transport import HTTPResponse

__all__ = [
    "AttemptState",
    "CallOptions",
    "CallPolicy",
    "Decision",
    "Raise",
    "Return",
    "Sleep",
    "WaitWindow",
    "decide_attempt",
    "new_idempotency_key",
]

_LARGE_PROMPT_BYTES = 128 * 1024  # prompts above this back off 5 s instead of 1 s after a bare 429
_DEFAULT_429_S = 1.0
_DEFAULT_429_LARGE_PROMPT_S = 5.0


def new_idempotency_key() -> str:
    """A fresh ``X-Idempotency-Key`` value (every attempt of one call carries the same one)."""
    return f"tinker-sync-{os.urandom(16).hex()}"  # 128 random bits (uuid4: 122), no UUID object


def _optional_statuses(values: Iterable[int] | None) -> frozenset[int] | None:
    return None if values is None else frozenset(values)


def _frozen_mapping(values: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    return None if values is None else dict(values)


@attrs.frozen
class CallOptions:
    """The per-call knobs of ``Runtime.call`` (``Runtime.request`` takes the same names as keywords).

    Attributes:
        body: an attrs wire object, a JSON-able value, or bytes sent as is (with ``content_type``).
        params: query parameters (None values are dropped).
        response_type: structure a 2xx body as this type (None: parsed JSON, or None when empty).
        timeout_s: read timeout of each attempt (None: ``ClientConfig.read_timeout_s``).
        retry: False makes exactly one attempt (a 429 still extends the shared window).
        sampling: a sample dispatch (backpressure header; a bare 429 backs off longer for big prompts).
        prompt_bytes_estimate: size of the prompt of a sample dispatch.
        content_type: overrides the body's content type.
        headers: extra request headers.
        idempotency_key: the ``X-Idempotency-Key`` of every attempt (default: a new one per call).
        accept: the ``Accept`` header.
        retry_statuses: retry exactly these statuses (5xx only if listed) instead of the policy's;
            connection errors are retried as usual. Keeps a final answer (409 "already public") final.
        return_response: return the raw ``HTTPResponse`` for any 2xx or 3xx (redirects are never
            followed; the caller reads ``Location`` itself).
        success_on_resend: statuses that mean "already done" when they answer a RESEND after an
            attempt that may have been applied (e.g. 404 on a retried DELETE): the call returns None.
        idempotent: whether the request may be sent again after it may have reached the server;
            None = ``RetryPolicy.may_resend`` (GET/PUT/DELETE and the listed POST endpoints).
        rate_limited: False sends without waiting for the shared 429 window (heartbeats); a 429
            answer still extends the window for everyone else.
        secrets: extra values (e.g. a ``weights_access_token``) redacted from every error of this call.
    """

    body: Any = None
    params: Mapping[str, Any] | None = attrs.field(default=None, converter=_frozen_mapping)
    response_type: type | None = None
    timeout_s: float | None = None
    retry: bool = True
    sampling: bool = False
    prompt_bytes_estimate: int = 0
    content_type: str | None = None
    headers: Mapping[str, str] | None = attrs.field(default=None, converter=_frozen_mapping)
    idempotency_key: str | None = None
    accept: str = "application/json"
    retry_statuses: frozenset[int] | None = attrs.field(default=None, converter=_optional_statuses)
    return_response: bool = False
    success_on_resend: frozenset[int] = attrs.field(default=frozenset(), converter=frozenset)
    idempotent: bool | None = None
    rate_limited: bool = True
    secrets: tuple[str, ...] = attrs.field(default=(), converter=tuple, repr=False)


@attrs.frozen
class CallPolicy:
    """The retry rules of one call: the client's RetryPolicy narrowed by the call's options."""

    retry: RetryPolicy
    method: str
    path: str
    retry_enabled: bool = True
    resendable: bool = False  # may be sent again after an attempt that may have reached the server
    already_done: frozenset[int] = frozenset()
    return_response: bool = False
    rate_limited: bool = True
    default_429_s: float = _DEFAULT_429_S  # the shared back-off after a 429 without a usable hint
    rate_limit_max_wait_s: float = 300.0

    @classmethod
    def of(
        cls, method: str, path: str, options: CallOptions, retry: RetryPolicy, rate_limit_max_wait_s: float
    ) -> CallPolicy:
        """The policy of a call with ``options`` under the client's ``retry`` policy."""
        if options.retry_statuses is not None:
            retry = retry.only_statuses(options.retry_statuses)
        large = options.sampling and options.prompt_bytes_estimate > _LARGE_PROMPT_BYTES
        return cls(
            retry=retry,
            method=method,
            path=path,
            retry_enabled=options.retry,
            resendable=retry.may_resend(method, path) if options.idempotent is None else options.idempotent,
            already_done=options.success_on_resend,
            return_response=options.return_response,
            rate_limited=options.rate_limited,
            default_429_s=_DEFAULT_429_LARGE_PROMPT_S if large else _DEFAULT_429_S,
            rate_limit_max_wait_s=rate_limit_max_wait_s,
        )


@attrs.frozen
class AttemptState:
    """Where one call stands between attempts."""

    started_at: float  # monotonic time of the first attempt
    attempt: int = 0  # retries taken (429s handled by the shared window are not counted)
    maybe_applied: bool = False  # an earlier attempt may have reached the server and been applied
    rate_deadline: float | None = None  # monotonic end of this call's rate-limit wait budget


@attrs.frozen
class Return:
    """The call is over: hand back ``response`` (parsed unless ``parse`` is False, which returns None)."""

    response: HTTPResponse
    parse: bool = True
    note_success: bool = False  # tell the limiter a request sent after the last 429 went through
    already_done: bool = False  # "already done" answer to a resend (logged)


@attrs.frozen
class Raise:
    """The call failed with ``error``; ``gave_up`` when retries ran out (logged as a WARNING)."""

    error: Exception
    block_for_s: float | None = None
    gave_up: bool = False


@attrs.frozen
class Sleep:
    """Wait ``delay_s`` (interruptible by close), then make another attempt with ``state``."""

    delay_s: float
    state: AttemptState
    reason: str
    block_for_s: float | None = None


@attrs.frozen
class WaitWindow:
    """A 429: extend the shared window by ``block_for_s``, wait for it (until ``state.rate_deadline``),
    then try again; if the window outlasts the budget, raise ``error`` (from the RateLimitError)."""

    state: AttemptState
    block_for_s: float
    error: APIStatusError


Decision = Union[Return, Raise, Sleep, WaitWindow]  # noqa: UP007 - a runtime alias on 3.10
Outcome = Union["HTTPResponse", APIConnectionError]


def status_error(resp: HTTPResponse, method: str, path: str) -> APIStatusError:
    """The typed APIStatusError of an HTTP error answer."""
    return from_response(
        resp.status, parse_error_body(resp.content), method=method, path=path, request_id=resp.request_id,
        headers=resp.headers,
    )


def decide_attempt(
    outcome: Outcome,
    state: AttemptState,
    policy: CallPolicy,
    now: float,
    *,
    rng: Callable[[], float] = random.random,
    wall_clock: Callable[[], float] = time.time,
) -> Decision:
    """Decide what follows one attempt.

    Args:
        outcome: the HTTP response, or the APIConnectionError raised instead of one.
        state: the call's state before this attempt's outcome.
        policy: the call's rules.
        now: the monotonic time now (the retry budget counts from ``state.started_at``).
        rng: jitter source for the retry delays.
        wall_clock: epoch time, for a ``Retry-After`` given as an HTTP date.
    """
    if isinstance(outcome, APIConnectionError):
        return _decide_no_answer(outcome, state, policy, now, rng)
    resp = outcome
    status = resp.status
    early = _decide_done_or_dropped(resp, state, policy, now, rng)
    if early is not None:
        return early
    retry_after = parse_retry_after(resp.headers, now=wall_clock)
    if status == 429:
        return _decide_429(resp, state, policy, now, retry_after)
    block = retry_after if status == 503 and retry_after else None
    error = status_error(resp, policy.method, policy.path)
    if not (policy.retry_enabled and policy.retry.is_retryable_status(status, resp.headers)):
        return Raise(error, block_for_s=block)
    delay = policy.retry.delay_for(state.attempt, retry_after_s=retry_after, rng=rng)
    if not policy.retry.should_retry(state.attempt, now - state.started_at, delay):
        return Raise(error, block_for_s=block, gave_up=True)
    applied = state.maybe_applied or status == 408 or status >= 500
    return Sleep(delay, _next(state, maybe_applied=applied), f"-> {status}", block_for_s=block)


def _decide_done_or_dropped(
    resp: HTTPResponse, state: AttemptState, policy: CallPolicy, now: float, rng: Callable[[], float]
) -> Decision | None:
    """A success, an "already done" answer to a resend, or a proxy's bare 400; None for anything else."""
    status = resp.status
    if 200 <= status < 300 or (policy.return_response and 300 <= status < 400):
        return Return(resp, note_success=policy.rate_limited)
    if state.maybe_applied and status in policy.already_done:
        return Return(resp, parse=False, already_done=True)
    if status == 400 and not resp.content and policy.retry_enabled and policy.resendable:
        # A bare 400 without a body comes from a proxy that killed the connection, not from the API
        # (docs/protocol.rst §4.4): treat it like a dropped connection after sending.
        delay = policy.retry.delay_for(state.attempt, rng=rng)
        if policy.retry.should_retry(state.attempt, now - state.started_at, delay):
            return Sleep(delay, _next(state, maybe_applied=True), "bare 400 (proxy?)")
    return None


def _next(state: AttemptState, *, maybe_applied: bool) -> AttemptState:
    return attrs.evolve(state, attempt=state.attempt + 1, maybe_applied=maybe_applied)


def _decide_no_answer(
    exc: APIConnectionError, state: AttemptState, policy: CallPolicy, now: float, rng: Callable[[], float]
) -> Decision:
    if isinstance(exc, APICertificateError):
        return Raise(exc)  # the same certificate fails the same way every time
    resendable = not exc.request_sent or policy.resendable
    delay = policy.retry.delay_for(state.attempt, rng=rng)
    fits = policy.retry.should_retry(state.attempt, now - state.started_at, delay)
    if not (policy.retry_enabled and resendable and fits):
        return Raise(exc, gave_up=policy.retry_enabled and state.attempt > 0)
    return Sleep(delay, _next(state, maybe_applied=state.maybe_applied or exc.request_sent), str(exc))


def _decide_429(
    resp: HTTPResponse, state: AttemptState, policy: CallPolicy, now: float, retry_after: float | None
) -> Decision:
    block = retry_after if retry_after is not None and retry_after > 0 else policy.default_429_s
    error = status_error(resp, policy.method, policy.path)
    if not (policy.retry_enabled and policy.retry.is_retryable_status(429, resp.headers)):
        return Raise(error, block_for_s=block)  # every 429 extends the shared window
    deadline = state.rate_deadline if state.rate_deadline is not None else now + policy.rate_limit_max_wait_s
    return WaitWindow(attrs.evolve(state, rate_deadline=deadline), block, error)
