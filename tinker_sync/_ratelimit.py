"""One shared rate-limit back-off window per (base_url, api_key).

A 429 (or 503) seen by any thread extends the window; every dispatch waits for it first, so a
rate-limited account backs off as a whole instead of each thread hammering the server on its own.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._exceptions import ClientClosedError, RateLimitError

if TYPE_CHECKING:
    from ._config import ClientConfig

__all__ = ["RateLimiter", "get_shared_limiter"]

logger = logging.getLogger(__name__)

_RECENT_S = 10.0  # "recently limited" = up to 10 s after the window ended (docs/protocol.rst §7.4)
_MAX_SLICE_S = 1.0  # re-check the window at least this often while waiting


class RateLimiter:
    """A monotonic back-off window shared by all threads (and runtimes) using one account.

    Args:
        clock: monotonic time source (injectable for tests).
        max_wait_s: default budget for one ``wait()``.
        sleep: ``sleep(seconds, cancelled_event)``; the default waits on an Event so ``close()`` can
            interrupt it. Tests inject one that advances a fake clock.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_wait_s: float = 300.0,
        sleep: Callable[[float, threading.Event | None], None] | None = None,
    ) -> None:
        self._clock = clock
        self.max_wait_s = max_wait_s
        self._lock = threading.Lock()
        self._until = -float("inf")  # monotonic end of the window
        self._extended_at = -float("inf")  # when the window was last extended
        self._idle = threading.Event()  # default sleeper when no cancel event is given
        self._sleep = sleep or self._event_sleep
        self.limited_count = 0  # number of block_for() calls (for tests / diagnostics)

    @staticmethod
    def _event_sleep(seconds: float, cancelled: threading.Event | None) -> None:
        (cancelled or threading.Event()).wait(seconds)

    def block_for(self, seconds: float) -> None:
        """Extend the shared window to at least ``seconds`` from now (it never shrinks)."""
        seconds = max(0.0, float(seconds))
        with self._lock:
            now = self._clock()
            self.limited_count += 1
            self._extended_at = now
            self._until = max(self._until, now + seconds)
        if seconds >= 1.0:
            logger.info("rate limited by the server: pausing all requests of this account for %.1f s", seconds)

    def remaining(self) -> float:
        """Seconds until the window ends (0 when open)."""
        with self._lock:
            return max(0.0, self._until - self._clock())

    def wait(
        self,
        *,
        deadline: float | None = None,
        cancelled: threading.Event | None = None,
        max_wait_s: float | None = None,
    ) -> float:
        """Block until the window is open; return the seconds waited.

        Raises:
            RateLimitError: the window ends after ``deadline`` (monotonic) or more than
                ``max_wait_s`` from now.
            ClientClosedError: ``cancelled`` was set while waiting.
        """
        start = self._clock()
        if self._until <= start and (cancelled is None or not cancelled.is_set()):
            return 0.0  # the window is open (the usual case): no lock (a float is read whole)
        budget = self.max_wait_s if max_wait_s is None else max_wait_s
        limit = start + budget
        if deadline is not None:
            limit = min(limit, deadline)
        while True:
            if cancelled is not None and cancelled.is_set():
                raise ClientClosedError("the client was closed while waiting for the rate-limit window")
            with self._lock:
                now = self._clock()
                until = self._until
            if until <= now:
                return now - start
            if until > limit:
                raise RateLimitError(
                    f"Error code: 429 - rate limited: the server asked to back off for {until - now:.1f} s more, "
                    f"beyond the rate-limit wait budget ({budget:.0f} s, ClientConfig.rate_limit_max_wait_s)",
                    status_code=429,
                )
            self._sleep(min(until - now, _MAX_SLICE_S), cancelled)

    def on_success(self, *, dispatched_at: float | None = None) -> None:
        """Record a success; a request sent after the last extension proves the limit is over."""
        if dispatched_at is None:
            return
        with self._lock:
            if dispatched_at >= self._extended_at and self._until > dispatched_at:
                self._until = dispatched_at

    @property
    def recently_limited(self) -> bool:
        """True while the window is open and for 10 s after it ended (the sampling gate tightens)."""
        with self._lock:
            return self._clock() < self._until + _RECENT_S


_registry: weakref.WeakValueDictionary[Any, RateLimiter] = weakref.WeakValueDictionary()
_registry_lock = threading.Lock()


def get_shared_limiter(config: ClientConfig) -> RateLimiter:
    """The RateLimiter shared by every runtime with the same base URL and API key."""
    key = config.rate_limit_key
    with _registry_lock:
        limiter = _registry.get(key)
        if limiter is None:
            limiter = RateLimiter(max_wait_s=config.rate_limit_max_wait_s)
            _registry[key] = limiter
        return limiter
