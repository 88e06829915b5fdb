"""decide_attempt as a decision table: one attempt's outcome + the call's state and rules -> what follows.

Pure: no server, no threads, no sleeping; the clock is a number and the jitter source is fixed.
"""

from __future__ import annotations

import email.utils
from typing import Any

import attrs
import pytest

from tinker_sync._decide import (
    AttemptState,
    CallOptions,
    CallPolicy,
    Raise,
    Return,
    Sleep,
    WaitWindow,
    decide_attempt,
    new_idempotency_key,
)
from tinker_sync._exceptions import (
    APICertificateError,
    APIConnectionError,
    APITimeoutError,
    BadRequestError,
    ConflictError,
    InternalServerError,
    NotFoundError,
    RateLimitError,
)
from tinker_sync._retry import RetryPolicy
from tinker_sync._transport import HTTPResponse

RETRY = RetryPolicy(initial_delay_s=1.0, max_delay_s=8.0, max_attempts=4, total_timeout_s=100.0)
T0 = 1000.0


def policy(method: str = "POST", path: str = "/api/v1/forward_backward", **options: Any) -> CallPolicy:
    return CallPolicy.of(method, path, CallOptions(**options), RETRY, rate_limit_max_wait_s=60.0)


def resp(status: int, body: bytes = b'{"detail": "x"}', **headers: str) -> HTTPResponse:
    return HTTPResponse(status, {k.replace("_", "-"): v for k, v in headers.items()}, body)


def decide(outcome: Any, state: AttemptState | None = None, pol: CallPolicy | None = None, now: float = T0) -> Any:
    return decide_attempt(outcome, state or AttemptState(started_at=T0), pol or policy(), now, rng=lambda: 0.0,
                          wall_clock=lambda: 1_700_000_000.0)


FIRST = AttemptState(started_at=T0)
RESENT = AttemptState(started_at=T0, attempt=1, maybe_applied=True)


# ---------------------------------------------------------------------------------------------
# answers


@pytest.mark.parametrize("status", [200, 201, 204])
def test_2xx_returns_parsed_and_notes_success(status: int) -> None:
    d = decide(resp(status))
    assert isinstance(d, Return) and d.parse and d.note_success and not d.already_done


def test_unlimited_call_success_does_not_reopen_the_window() -> None:
    d = decide(resp(200), pol=policy(rate_limited=False))
    assert isinstance(d, Return) and not d.note_success


@pytest.mark.parametrize(("return_response", "kind"), [(True, Return), (False, Raise)])
def test_3xx_is_returned_only_with_return_response(return_response: bool, kind: type) -> None:
    assert isinstance(decide(resp(302, b""), pol=policy("GET", "/x", return_response=return_response)), kind)


# (status, state, options) -> expected decision class, error class, next attempt, maybe_applied
TABLE = [
    # retryable statuses back off, 408 and 5xx may have been applied
    (408, FIRST, {}, Sleep, None, 1, True),
    (409, FIRST, {}, Sleep, None, 1, False),
    (500, FIRST, {}, Sleep, None, 1, True),
    (503, FIRST, {}, Sleep, None, 1, True),
    # final statuses
    (400, FIRST, {}, Raise, BadRequestError, None, None),
    (404, FIRST, {}, Raise, NotFoundError, None, None),
    # retry=False: one attempt
    (500, FIRST, {"retry": False}, Raise, InternalServerError, None, None),
    # per-call retry_statuses: 409 final, 5xx not listed -> final
    (409, FIRST, {"retry_statuses": [500]}, Raise, ConflictError, None, None),
    (502, FIRST, {"retry_statuses": [409]}, Raise, InternalServerError, None, None),
    # "already done" answers only count after a resend that may have been applied
    (404, FIRST, {"success_on_resend": [404]}, Raise, NotFoundError, None, None),
    (404, RESENT, {"success_on_resend": [404]}, Return, None, None, None),
    (409, RESENT, {"success_on_resend": [404]}, Sleep, None, 2, True),
]


@pytest.mark.parametrize(("status", "state", "options", "kind", "error", "attempt", "applied"), TABLE)
def test_status_table(
    status: int, state: AttemptState, options: dict[str, Any], kind: type, error: type | None,
    attempt: int | None, applied: bool | None,
) -> None:
    d = decide(resp(status), state, policy(**options))
    assert type(d) is kind
    if error is not None:
        assert type(d.error) is error and d.error.status_code == status and not d.gave_up
    if attempt is not None:
        assert d.state.attempt == attempt and d.state.maybe_applied is applied
    if isinstance(d, Return):
        assert d.already_done and not d.parse


def test_retry_delays_follow_the_policy_and_the_retry_after_hint() -> None:
    assert decide(resp(500), AttemptState(started_at=T0, attempt=2)).delay_s == 4.0
    assert decide(resp(500, retry_after="3")).delay_s == 3.0
    assert decide(resp(500, retry_after_ms="250")).delay_s == 0.25
    d = decide(resp(503, retry_after="2"))
    assert isinstance(d, Sleep) and d.delay_s == 2.0 and d.block_for_s == 2.0  # 503 hint: shared window too
    assert decide(resp(500, retry_after="2")).block_for_s is None


def test_should_retry_header_overrides_the_status() -> None:
    assert isinstance(decide(resp(400, x_should_retry="true")), Sleep)
    d = decide(resp(500, x_should_retry="false"))
    assert isinstance(d, Raise) and not d.gave_up


def test_attempt_and_time_budgets_end_with_gave_up() -> None:
    d = decide(resp(500), AttemptState(started_at=T0, attempt=3))  # the 4th attempt was the last
    assert isinstance(d, Raise) and d.gave_up and isinstance(d.error, InternalServerError)
    d = decide(resp(500), FIRST, now=T0 + 99.5)  # 99.5 s spent + a 1 s delay > 100 s budget
    assert isinstance(d, Raise) and d.gave_up


# ---------------------------------------------------------------------------------------------
# bare 400 from a proxy


def test_bare_400_is_a_dropped_connection_for_resendable_calls_only() -> None:
    d = decide(resp(400, b""))
    assert isinstance(d, Sleep) and d.state.maybe_applied and d.state.attempt == 1
    assert isinstance(decide(resp(400, b""), pol=policy(path="/api/v1/mutate")).error, BadRequestError)
    assert isinstance(decide(resp(400, b""), pol=policy(retry=False)), Raise)
    assert isinstance(decide(resp(400, b""), pol=policy(path="/api/v1/mutate", idempotent=True)), Sleep)
    assert isinstance(decide(resp(400, b""), AttemptState(started_at=T0, attempt=3)), Raise)


# ---------------------------------------------------------------------------------------------
# 429 and the shared window


def test_429_waits_for_the_shared_window_without_counting_an_attempt() -> None:
    d = decide(resp(429, retry_after="7"))
    assert isinstance(d, WaitWindow) and d.block_for_s == 7.0
    assert d.state.attempt == 0 and d.state.rate_deadline == T0 + 60.0
    assert isinstance(d.error, RateLimitError) and d.error.status_code == 429
    # the budget is per call: a later 429 keeps the first deadline
    again = decide(resp(429, retry_after="7"), d.state, now=T0 + 30)
    assert again.state.rate_deadline == T0 + 60.0


def test_429_back_off_hints_and_defaults() -> None:
    date = email.utils.formatdate(1_700_000_000.0 + 4, usegmt=True)
    assert decide(resp(429, retry_after=date)).block_for_s == pytest.approx(4.0)
    assert decide(resp(429, retry_after_ms="1500")).block_for_s == 1.5
    assert decide(resp(429)).block_for_s == 1.0
    assert decide(resp(429, retry_after="0")).block_for_s == 1.0
    big = policy(path="/api/v1/asample", sampling=True, prompt_bytes_estimate=200_000)
    assert decide(resp(429), pol=big).block_for_s == 5.0


def test_429_without_retry_still_extends_the_window() -> None:
    d = decide(resp(429, retry_after="2"), pol=policy(retry=False))
    assert isinstance(d, Raise) and d.block_for_s == 2.0 and isinstance(d.error, RateLimitError)
    d = decide(resp(429, retry_after="2", x_should_retry="false"))
    assert isinstance(d, Raise) and d.block_for_s == 2.0


# ---------------------------------------------------------------------------------------------
# no answer


def test_connection_error_before_sending_is_always_retried() -> None:
    d = decide(APIConnectionError("refused", request_sent=False), pol=policy(path="/api/v1/mutate"))
    assert isinstance(d, Sleep) and d.delay_s == 1.0 and not d.state.maybe_applied


def test_connection_error_after_sending_is_retried_only_when_resendable() -> None:
    lost = APITimeoutError("read timeout", request_sent=True)
    d = decide(lost)
    assert isinstance(d, Sleep) and d.state.maybe_applied
    d = decide(lost, pol=policy(path="/api/v1/mutate"))
    assert isinstance(d, Raise) and d.error is lost and not d.gave_up
    assert isinstance(decide(lost, pol=policy("DELETE", "/api/v1/x")), Sleep)


def test_connection_error_budget_and_certificate_errors() -> None:
    refused = APIConnectionError("refused", request_sent=False)
    d = decide(refused, AttemptState(started_at=T0, attempt=3))
    assert isinstance(d, Raise) and d.error is refused and d.gave_up
    single = CallPolicy.of("GET", "/x", CallOptions(), RetryPolicy.no_retries(), 60.0)
    d = decide(refused, pol=single)
    assert isinstance(d, Raise) and not d.gave_up
    cert = APICertificateError("certificate verify failed")
    d = decide(cert)
    assert isinstance(d, Raise) and d.error is cert  # never retried


# ---------------------------------------------------------------------------------------------
# the values


def test_call_options_are_frozen_values() -> None:
    opts = CallOptions(retry_statuses=[409, 409], success_on_resend=[404], headers={"a": "b"})
    assert opts.retry_statuses == frozenset({409}) and opts.success_on_resend == frozenset({404})
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        opts.retry = False  # type: ignore[misc]
    with pytest.raises(TypeError):
        CallOptions(bogus=1)  # type: ignore[call-arg]
    assert CallOptions(secrets=["tml-xyz-secret"]).secrets == ("tml-xyz-secret",)
    assert "tml-xyz-secret" not in repr(CallOptions(secrets=["tml-xyz-secret"]))


def test_idempotency_keys_are_fresh() -> None:
    a, b = new_idempotency_key(), new_idempotency_key()
    assert a != b and a.startswith("tinker-sync-") and len(a) == len("tinker-sync-") + 32
