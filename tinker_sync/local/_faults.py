"""Scriptable fault injection and request recording for the local server (all knobs off by default).

Operation names (``op``) are endpoint names: the path after ``/api/v1/`` for fixed paths
(``asample``, ``forward_backward``, ``retrieve_future``, ``create_session``, ``client/config``, ...),
and for parametrised REST paths: ``get_training_run``, ``list_run_checkpoints``, ``delete_checkpoint``,
``checkpoint_archive``, ``publish_checkpoint``, ``unpublish_checkpoint``, ``set_checkpoint_ttl``,
``get_session``, ``set_session_project``, ``trace_export``, ``finish_session``, ``get_sampler``,
``download``. ``"*"`` matches every operation. Future knobs (``try_again``, ``expire_next_future``)
take a request type (``ForwardBackward``, ``Forward``, ``OptimStep``, ``Sample``, ``CreateModel``,
``SaveWeights``, ``SaveWeightsForSampler``, ``LoadWeights``, ``UnloadModel``), the submitting endpoint
name (``asample``, ...) or ``"*"``.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import attrs

logger = logging.getLogger(__name__)

__all__ = ["FailResponse", "FaultInjector", "RecordedRequest"]


@attrs.frozen
class RecordedRequest:
    """One request as the server saw it (the X-API-Key header is never recorded)."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes
    status: int  # 0 = the connection was dropped without an answer


@attrs.frozen
class FailResponse:
    """A scripted HTTP answer chosen by the injector."""

    status: int
    body: Any
    headers: Mapping[str, str]


@attrs.define
class _Fail:
    op: str
    status: int
    count: int
    retry_after: str | None
    body: Any
    headers: dict[str, str]


def _matches(pattern: str, *names: str) -> bool:
    return pattern == "*" or pattern in names


class FaultInjector:
    """Thread-safe fault knobs consulted by the server on every request.

    Args:
        clock: monotonic clock used for the rate-limit window (injectable for tests).
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock  # public so tests can swap in a fake clock
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Turn every fault off."""
        with self._lock:
            self._fails: list[_Fail] = []
            self._drops: list[list[Any]] = []  # [op, remaining]
            self._try_again: list[list[Any]] = []  # [op_type, rounds]
            self._expire: list[list[Any]] = []  # [op_type, remaining]
            self._rate_limit: list[tuple[str, float]] = []  # (op, window end, monotonic)
            self._latency: dict[str, float] = {}

    # -- knobs ------------------------------------------------------------------------------------
    def fail_next(
        self,
        op: str,
        status: int,
        *,
        count: int = 1,
        retry_after: str | None = None,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Answer the next ``count`` requests of ``op`` with ``status`` (body: JSON-able or bytes)."""
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count}")
        if not 100 <= status <= 599:
            raise ValueError(f"status must be an HTTP status code, got {status}")
        with self._lock:
            self._fails.append(_Fail(op, status, count, retry_after, body, dict(headers or {})))

    def drop_next_connection(self, op: str, *, count: int = 1) -> None:
        """Close the socket of the next ``count`` requests of ``op`` without answering."""
        with self._lock:
            self._drops.append([op, count])

    def try_again(self, op_type: str, rounds: int) -> None:
        """The next future of ``op_type`` answers ``try_again`` ``rounds`` times before its result."""
        with self._lock:
            self._try_again.append([op_type, rounds])

    def expire_next_future(self, op_type: str, count: int = 1) -> None:
        """The next ``count`` futures of ``op_type`` answer 410 on their next poll (once each)."""
        with self._lock:
            self._expire.append([op_type, count])

    def rate_limit_window(self, seconds: float, *, op: str = "*") -> None:
        """Answer 429 with Retry-After to ``op`` until ``seconds`` from now."""
        with self._lock:
            self._rate_limit.append((op, self.clock() + seconds))

    def latency(self, op: str, seconds: float) -> None:
        """Delay every request of ``op`` by ``seconds`` (0 removes it)."""
        with self._lock:
            if seconds <= 0:
                self._latency.pop(op, None)
            else:
                self._latency[op] = seconds

    # -- server side -----------------------------------------------------------------------------
    def delay_for(self, op: str) -> float:
        """Injected latency for ``op`` in seconds."""
        with self._lock:
            return max([s for o, s in self._latency.items() if _matches(o, op)], default=0.0)

    def should_drop(self, op: str) -> bool:
        """True (and consumes one) when the connection of this ``op`` request is to be dropped."""
        with self._lock:
            for entry in self._drops:
                if _matches(entry[0], op) and entry[1] > 0:
                    entry[1] -= 1
                    self._drops = [e for e in self._drops if e[1] > 0]
                    return True
        return False

    def scripted_response(self, op: str) -> FailResponse | None:
        """The scripted failure (fail_next or rate-limit window) for this request, if any."""
        with self._lock:
            for fail in self._fails:
                if _matches(fail.op, op) and fail.count > 0:
                    fail.count -= 1
                    self._fails = [f for f in self._fails if f.count > 0]
                    headers = dict(fail.headers)
                    if fail.retry_after is not None:
                        headers["Retry-After"] = fail.retry_after
                    body = fail.body if fail.body is not None else {"detail": f"injected failure {fail.status}"}
                    return FailResponse(fail.status, body, headers)
            now = self.clock()
            self._rate_limit = [(o, end) for o, end in self._rate_limit if end > now]
            ends = [end for o, end in self._rate_limit if _matches(o, op)]
            if ends:
                remaining = max(ends) - now
                return FailResponse(
                    429,
                    {"detail": f"rate limited (injected); retry in {remaining:.1f} s"},
                    {"Retry-After": str(max(1, math.ceil(remaining)))},
                )
        return None

    def take_try_again_rounds(self, *names: str) -> int:
        """Rounds of try_again scheduled for a new future with these names (consumed)."""
        with self._lock:
            for i, entry in enumerate(self._try_again):
                if _matches(entry[0], *names):
                    del self._try_again[i]
                    return int(entry[1])
        return 0

    def take_expire(self, *names: str) -> bool:
        """Whether a new future with these names is to answer 410 once (consumed)."""
        with self._lock:
            for entry in self._expire:
                if _matches(entry[0], *names) and entry[1] > 0:
                    entry[1] -= 1
                    self._expire = [e for e in self._expire if e[1] > 0]
                    return True
        return False
