"""What one ``retrieve_future`` poll answer means: the pure ``decide()`` of the FuturePoller (``_poller``).

``decide()`` maps one poll outcome to what happens next (docs/protocol.rst §3.3-3.4): no I/O, no clock of
its own, no threads; the poller sends, waits and resolves Futures as told.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from . import _serde
from ._exceptions import (
    APIConnectionError,
    APIResponseValidationError,
    RequestFailedError,
    from_response,
    parse_error_body,
)
from ._retry import poll_backoff_s

__all__ = [
    "BILLING_RESET_S", "PROTO_ACCEPT", "RETRIEVE_PATH", "Backoff", "Decision", "Done", "Fail", "FetchPayload",
    "PollAgain", "PollState", "Resubmit", "decide", "decide_connection_error",
]

logger = logging.getLogger("tinker_sync._poller")  # the poller's logger: its records keep their name

RETRIEVE_PATH = "/api/v1/retrieve_future"
# What a 0.25 client sends for sample / forward_backward results (docs/protocol.rst §1.3, §3.2): protobuf only.
# The hosted service answers those in protobuf for a 0.25 client either way; listing JSON too (the 0.18.1-0.24
# form) would invite a server to pick JSON. decide() still accepts a JSON answer.
PROTO_ACCEPT = "application/x-protobuf"
_MAX_BAD_REQUESTS = 3  # a bare 400 may come from a proxy: retry 3 times before failing
BILLING_RESET_S = 300.0  # a 402 incident ends after 5 min without 402 (also for the batched poll)


@attrs.frozen
class PollState:
    """Per-call counters carried between polls (immutable; decide() returns the next one)."""

    iteration: int = 0
    bad_requests: int = 0
    backoffs: int = 0  # consecutive 429 / connection-error backoffs
    server_errors: int = 0  # consecutive 5xx
    allow_metadata_only: bool = False
    metadata_seen: bool = False
    billing_since: float | None = None  # monotonic time of the first 402 of the current incident
    billing_last: float | None = None


@attrs.frozen
class Done:
    value: Any
    state: PollState


@attrs.frozen
class Fail:
    exc: BaseException
    state: PollState


@attrs.frozen
class PollAgain:
    state: PollState
    queue_state: str | None = None
    reason: str | None = None
    delay_s: float = 0.0


@attrs.frozen
class Backoff:
    delay_s: float
    state: PollState


@attrs.frozen
class FetchPayload:
    state: PollState


@attrs.frozen
class Resubmit:
    """Send the call again: 410 (result expired) or 404 on a sequenced call (lost); else fail with ``exc``."""

    state: PollState
    exc: BaseException | None = None


Decision = Done | Fail | PollAgain | Backoff | FetchPayload | Resubmit


def _lower(headers: Mapping[str, str] | None) -> dict[str, str]:
    return {k.lower(): v for k, v in (headers or {}).items()}


def _reset(state: PollState, **changes: Any) -> PollState:
    """Any HTTP response resets the consecutive-backoff counter."""
    changes.setdefault("backoffs", 0)
    changes.setdefault("iteration", state.iteration + 1)
    return attrs.evolve(state, **changes)


def decide(
    status: int,
    headers: Mapping[str, str] | None,
    content: bytes,
    expected_type: type | None,
    state: PollState,
    *,
    request_id: str | None = None,
    now: float = 0.0,
    billing_pause_s: float = 5.0,
    billing_max_pause_s: float = 3600.0,
    sequenced: bool = False,
    wall_clock: Callable[[], float] = time.time,
) -> Decision:
    """Decide what one poll response means (pure, no I/O; ``wall_clock`` dates an HTTP-date Retry-After).

    Args:
        status, headers, content: the HTTP response.
        expected_type: the result type (an attrs class, or None/dict for raw JSON).
        state: counters from earlier polls of this call.
        now: monotonic time, used only for the 402 billing pause.
        sequenced: the call holds a seq_id slot of a model (training). A 404 then means the server
            lost the accepted request (e.g. it restarted): re-send it with the same seq_id instead of
            failing and leaving a gap the server would wait on forever.
    """
    if status == 404 and sequenced:
        lost = decide(status, headers, content, expected_type, state, request_id=request_id)
        assert isinstance(lost, Fail)
        return Resubmit(attrs.evolve(lost.state, metadata_seen=False), lost.exc)
    hdrs = _lower(headers)
    if status != 402 and state.billing_last is not None and now - state.billing_last > BILLING_RESET_S:
        state = attrs.evolve(state, billing_since=None, billing_last=None)
    if status == 200:
        return _decide_ok(hdrs, content, expected_type, state, request_id)
    if status == 408:
        body = parse_error_body(content)
        fields = body if isinstance(body, dict) else {}
        qs, reason = fields.get("queue_state"), fields.get("queue_state_reason")
        return PollAgain(_reset(state, bad_requests=0, server_errors=0), qs, reason)
    if status >= 500:
        n = state.server_errors
        return PollAgain(_reset(state, server_errors=n + 1), delay_s=poll_backoff_s(n, status=status))
    if status == 429:
        n = state.backoffs
        delay = poll_backoff_s(n, status=429, headers=hdrs, wall_clock=wall_clock)
        return Backoff(delay, attrs.evolve(state, backoffs=n + 1, iteration=state.iteration + 1))
    if status == 400 and state.bad_requests < _MAX_BAD_REQUESTS:
        return PollAgain(_reset(state, bad_requests=state.bad_requests + 1))
    if status == 410:
        return Resubmit(_reset(state, metadata_seen=False))
    if status == 402:
        since = state.billing_since if state.billing_since is not None else now
        if now - since < billing_max_pause_s:
            logger.info("billing blocks request %s; pausing %.0f s before polling again", request_id, billing_pause_s)
            return Backoff(billing_pause_s, _reset(state, billing_since=since, billing_last=now))
    exc = from_response(status, parse_error_body(content), method="POST", path=RETRIEVE_PATH, request_id=request_id,
                        headers=hdrs)
    return Fail(exc, _reset(state))


def decide_connection_error(exc: APIConnectionError, state: PollState) -> Decision:
    """A poll got no HTTP response: poll again after 50 ms, doubling to 30 s."""
    n = state.backoffs
    return Backoff(poll_backoff_s(n, status=None), attrs.evolve(state, backoffs=n + 1))


def _decide_ok(
    hdrs: Mapping[str, str], content: bytes, expected_type: type | None, state: PollState, request_id: str | None
) -> Decision:
    name = getattr(expected_type, "__name__", "dict")
    nxt = _reset(state, bad_requests=0, server_errors=0)
    if "application/x-protobuf" in hdrs.get("content-type", ""):
        from ._proto import PROTO_DECODERS

        decoder = PROTO_DECODERS.get(expected_type) if expected_type is not None else None
        if decoder is None:
            return Fail(
                APIResponseValidationError(
                    f"the server sent a protobuf result for request {request_id}, but {name} has no protobuf form",
                    body=content[:1000],
                    expected_type=name,
                ),
                nxt,
            )
        try:
            return Done(decoder(content), nxt)
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            err = APIResponseValidationError(
                f"could not decode the protobuf {name} of request {request_id}: {exc}", body=content[:1000],
                expected_type=name,
            )
            err.__cause__ = exc
            return Fail(err, nxt)
    try:
        body = json.loads(content) if content else None
    except ValueError as exc:
        err = APIResponseValidationError(
            f"the result of request {request_id} is not JSON (expected {name})", body=content[:1000], expected_type=name
        )
        err.__cause__ = exc
        return Fail(err, nxt)
    if isinstance(body, dict):
        if body.get("type") == "try_again":
            return PollAgain(nxt, body.get("queue_state"), body.get("queue_state_reason"))
        if body.get("status") == "complete_metadata":
            # Ask for the payload (allow_metadata_only false). A second complete_metadata breaks the
            # protocol; give up rather than loop forever.
            if state.metadata_seen:
                return Fail(
                    APIResponseValidationError(
                        f"the server answered complete_metadata twice for request {request_id}",
                        body=body,
                        expected_type=name,
                    ),
                    nxt,
                )
            return FetchPayload(attrs.evolve(nxt, allow_metadata_only=False, metadata_seen=True))
        if "error" in body:
            category = body.get("category")
            category = category.lower() if isinstance(category, str) else "unknown"
            return Fail(RequestFailedError(str(body["error"]), request_id=request_id, category=category), nxt)
    if expected_type is None or expected_type is dict or expected_type is Any:
        return Done(body, nxt)
    try:
        return Done(_serde.loads(body if body is not None else content, expected_type), nxt)
    except APIResponseValidationError as exc:
        return Fail(exc, nxt)
