"""Runtime: config + transport + rate limiter + executor + poller, shared by all clients of a ServiceClient.

``request()`` is one logical call with retries (blocking); ``submit_request()``/``submit_polled()``
return real ``concurrent.futures.Future`` objects.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from concurrent.futures import wait as futures_wait
from typing import Any, TypeVar

import attrs

from ._config import ClientConfig, redact_url
from ._exceptions import (
    APIConnectionError,
    APIResponseValidationError,
    APIStatusError,
    ClientClosedError,
    RateLimitError,
    from_response,
)
from ._executor import Activity, Executor, SequencedLane, propagate_failure, set_exception
from ._poller import FuturePoller, PolledCall, SessionTarget
from ._ratelimit import RateLimiter, get_shared_limiter
from ._retry import parse_retry_after
from ._transport import HTTPResponse, Transport

__all__ = ["Runtime"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

_SAMPLE_PATH = "/api/v1/asample"
_LARGE_PROMPT_BYTES = 128 * 1024  # prompts above this back off 5 s instead of 1 s after a 429
_SAMPLE_INFLIGHT = 400  # concurrent sample dispatches at most (official SDK) ...
_SAMPLE_INFLIGHT_LIMITED = 10  # ... and while a rate-limit back-off is recent (PROTOCOL §7.4)


class _SampleGate:
    """Bounds concurrent asample dispatches; the bound tightens while the account was recently limited.

    Dispatches run on the runtime's own sampling pool (``ClientConfig.max_sample_dispatchers``
    threads), so normally the pool size is the bound; the gate adds the tighter bound of 10 after a 429
    and covers the re-submissions after a 410, which run on poller threads.
    """

    def __init__(self, limiter: RateLimiter, closed: threading.Event, limit: int = _SAMPLE_INFLIGHT) -> None:
        self._limiter = limiter
        self._closed = closed
        self._cond = threading.Condition()
        self._inflight = 0
        self.limit = max(1, min(limit, _SAMPLE_INFLIGHT))

    def __enter__(self) -> None:
        with self._cond:
            while self._inflight >= (_SAMPLE_INFLIGHT_LIMITED if self._limiter.recently_limited else self.limit):
                if self._closed.is_set():
                    raise ClientClosedError("the client was closed while waiting to dispatch a sample")
                self._cond.wait(0.25)
            self._inflight += 1

    def __exit__(self, *exc: object) -> None:
        with self._cond:
            self._inflight -= 1
            self._cond.notify()


class _SampleExecutor(Executor):
    """The sampling dispatch pool: threads ``tinker-sync-sampler-N``."""

    def _init_thread(self) -> None:
        super()._init_thread()
        me = threading.current_thread()
        me.name = me.name.replace("tinker-sync-worker-", "tinker-sync-sampler-")


def _encode_body(body: Any) -> tuple[bytes | None, str | None]:
    if body is None:
        return None, None
    if isinstance(body, (bytes, bytearray, memoryview)):
        return bytes(body), "application/json"
    if attrs.has(type(body)):
        from . import _serde  # lazy: written by the TYPES stream

        return _serde.dumps(body), "application/json"
    return json.dumps(body, separators=(",", ":")).encode("utf-8"), "application/json"


def _parse(resp: HTTPResponse, response_type: type[T] | None, method: str, path: str) -> Any:
    if response_type is None:
        if not resp.content:
            return None
        try:
            return resp.json()
        except ValueError as exc:
            raise APIResponseValidationError(
                f"{method} {path}: the response is not JSON", body=resp.content[:1000]
            ) from exc
    from . import _serde  # lazy: written by the TYPES stream

    return _serde.loads(resp.content, response_type)


def _error_body(resp: HTTPResponse) -> Any:
    try:
        return resp.json()
    except ValueError:
        return resp.content.decode("utf-8", "replace")


class Runtime:
    """The shared machinery of one ServiceClient; thread-safe.

    Args:
        config: connection settings.
        clock: monotonic clock (tests).
    """

    def __init__(self, config: ClientConfig, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self._clock = clock
        self.transport = Transport(config)
        self.limiter: RateLimiter = get_shared_limiter(config)
        self._activity = Activity()
        self.executor = Executor(config.max_workers, activity=self._activity)
        # Sample dispatch has its own bounded pool: a training lane or REST call stuck in a long retry
        # pause cannot starve sampling, and a burst of samples cannot delay training submissions.
        # Its threads start on demand (ThreadPoolExecutor), so an unused pool costs nothing.
        self.sample_executor: Executor = _SampleExecutor(config.max_sample_dispatchers, activity=self._activity)
        self.poller = FuturePoller(
            self.transport,
            max_pollers=config.max_pollers,
            poll_timeout_s=config.poll_timeout_s,
            billing_pause_s=config.billing_pause_s,
            billing_max_pause_s=config.billing_max_pause_s,
            activity=self._activity,
        )
        self._closed = threading.Event()  # set by close(cancel_pending=True): interrupts waits
        self._closing = False
        self._lock = threading.Lock()
        self._outstanding: set[Future[Any]] = set()
        self._lanes: list[SequencedLane] = []
        self._sample_gate = _SampleGate(self.limiter, self._closed, config.max_sample_dispatchers)

    def __repr__(self) -> str:
        return f"Runtime(base_url={redact_url(self.config.base_url)!r}, closed={self._closing})"

    @property
    def closed(self) -> bool:
        return self._closing

    def new_lane(self, name: str) -> SequencedLane:
        """A SequencedLane on this runtime's executor (one per training model)."""
        lane = SequencedLane(self.executor, name=name)
        with self._lock:
            self._lanes.append(lane)
        return lane

    # -- blocking call -------------------------------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, Any] | None = None,
        response_type: type[T] | None = None,
        timeout_s: float | None = None,
        retry: bool = True,
        sampling: bool = False,
        prompt_bytes_estimate: int = 0,
        content_type: str | None = None,
        headers: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
        accept: str = "application/json",
        retry_statuses: Iterable[int] | None = None,
        return_response: bool = False,
        success_on_resend: Iterable[int] = (),
        idempotent: bool | None = None,
        rate_limited: bool = True,
    ) -> Any:
        """Make one logical call in the calling thread, retrying per ``config.retry``.

        Returns the body structured as ``response_type`` (parsed JSON, or None if empty, without one).

        Args:
            retry_statuses: for this call, retry exactly these statuses (5xx only if listed, see
                ``_retry.SERVER_ERRORS``) instead of the policy's; connection errors are retried as usual.
                Use it to keep a final answer (e.g. 409 "already public") from being retried.
            return_response: return the raw ``HTTPResponse`` for any 2xx or 3xx status (redirects are
                never followed; the caller reads ``Location`` itself).
            success_on_resend: statuses that mean "already done" when they answer a RESEND after an
                attempt that may have been applied (its answer was lost: connection error after sending,
                408, 5xx). E.g. 404 on a retried DELETE. The call then returns None (or the response).
            idempotent: whether the request may be sent again after it may have reached the server;
                None = ``RetryPolicy.may_resend`` (GET/PUT/DELETE and the listed POST endpoints).
            rate_limited: False sends without waiting for the shared 429 window (heartbeats: they must
                keep the session alive while other calls wait out a long back-off). A 429 answer still
                extends the window for everyone else.

        Raises:
            APIStatusError subclass: a non-retryable status, or the last one once retries ran out.
            RateLimitError: the shared back-off window outlasted ``config.rate_limit_max_wait_s``.
            APIConnectionError / APITimeoutError: no response and no retry left.
            APIResponseValidationError: a 2xx body that does not fit ``response_type``.
            ClientClosedError: the runtime was closed.
        """
        method = method.upper()
        data, default_ct = _encode_body(body)
        ctype = content_type or default_ct
        hdrs = dict(headers or {})
        if method != "GET":
            hdrs["X-Idempotency-Key"] = idempotency_key or f"tinker-sync-{uuid.uuid4().hex}"
        if sampling:
            hdrs["X-Tinker-Sampling-Backpressure"] = "1"
        policy = self.config.retry if retry_statuses is None else self.config.retry.only_statuses(retry_statuses)
        start = self._clock()
        attempt = 0  # retries taken (429s handled by the window are not counted)
        maybe_applied = False  # an earlier attempt may have reached the server and been applied
        already_done = frozenset(success_on_resend)
        resendable_call = policy.may_resend(method, path) if idempotent is None else idempotent
        rate_deadline: float | None = None
        while True:
            if self._closed.is_set():
                raise ClientClosedError(f"the client was closed; {method} {path} was not sent")
            if rate_limited:
                self.limiter.wait(
                    deadline=rate_deadline, cancelled=self._closed, max_wait_s=self.config.rate_limit_max_wait_s
                )
            dispatched_at = self._clock()
            try:
                resp = self.transport.send(
                    method, path, body=data, content_type=ctype, params=params, headers=hdrs,
                    timeout_s=timeout_s, accept=accept,
                )
            except APIConnectionError as exc:
                resendable = not exc.request_sent or resendable_call
                delay = policy.delay_for(attempt)
                if not (retry and resendable and policy.should_retry(attempt, self._clock() - start, delay)):
                    if retry and attempt:
                        logger.warning("%s %s: giving up after %d attempts: %s", method, path, attempt + 1, exc)
                    raise
                logger.debug("%s %s: %s; retry %d in %.2f s", method, path, exc, attempt + 1, delay)
                maybe_applied = maybe_applied or exc.request_sent
                self.pause(delay)
                attempt += 1
                continue
            if 200 <= resp.status < 300 or (return_response and 300 <= resp.status < 400):
                if rate_limited:  # an unlimited call (heartbeat) proves nothing about the limited ones
                    self.limiter.on_success(dispatched_at=dispatched_at)
                return resp if return_response else _parse(resp, response_type, method, path)
            if maybe_applied and resp.status in already_done:
                logger.info(
                    "%s %s -> %d after a resend: an earlier attempt was applied (its answer was lost)",
                    method, path, resp.status,
                )
                return resp if return_response else None
            if resp.status == 400 and not resp.content and retry and resendable_call:
                # A bare 400 without a body comes from a proxy that killed the connection, not from
                # the API (PROTOCOL §4.4): treat it like a dropped connection.
                delay = policy.delay_for(attempt)
                if policy.should_retry(attempt, self._clock() - start, delay):
                    logger.debug("%s %s -> bare 400 (proxy?); retry %d in %.2f s", method, path, attempt + 1, delay)
                    maybe_applied = True
                    self.pause(delay)
                    attempt += 1
                    continue
            retry_after = parse_retry_after(resp.headers)
            if resp.status == 429:
                if retry_after is None or retry_after <= 0:
                    retry_after = 5.0 if (sampling and prompt_bytes_estimate > _LARGE_PROMPT_BYTES) else 1.0
                self.limiter.block_for(retry_after)  # every 429 extends the shared window
                if not (retry and policy.is_retryable_status(429, resp.headers)):
                    raise self._status_error(resp, method, path)
                if rate_deadline is None:
                    rate_deadline = self._clock() + self.config.rate_limit_max_wait_s
                logger.debug("%s %s -> 429; shared back-off %.2f s", method, path, retry_after)
                try:
                    self.limiter.wait(deadline=rate_deadline, cancelled=self._closed, max_wait_s=self.config.rate_limit_max_wait_s)
                except RateLimitError as exc:
                    raise self._status_error(resp, method, path) from exc
                continue
            if resp.status == 503 and retry_after:
                self.limiter.block_for(retry_after)
            if retry and policy.is_retryable_status(resp.status, resp.headers) and resp.status != 429:
                delay = policy.delay_for(attempt, retry_after_s=retry_after)
                if policy.should_retry(attempt, self._clock() - start, delay):
                    logger.debug("%s %s -> %d; retry %d in %.2f s", method, path, resp.status, attempt + 1, delay)
                    maybe_applied = maybe_applied or resp.status == 408 or resp.status >= 500
                    self.pause(delay)
                    attempt += 1
                    continue
                logger.warning("%s %s: giving up after %d attempts (last status %d)", method, path, attempt + 1, resp.status)
            raise self._status_error(resp, method, path)

    def _status_error(self, resp: HTTPResponse, method: str, path: str) -> APIStatusError:
        return from_response(
            resp.status, _error_body(resp), method=method, path=path, request_id=resp.request_id, headers=resp.headers
        )

    def pause(self, seconds: float) -> None:
        """Sleep ``seconds`` unless the runtime closes first (then raise ClientClosedError)."""
        if seconds >= 1.0:
            logger.info("pausing %.1f s before retrying", seconds)
        if self._closed.wait(seconds):
            raise ClientClosedError("the client was closed while waiting to retry")

    # -- futures -------------------------------------------------------------------------------
    def register(self, fut: Future[Any]) -> None:
        """Count ``fut`` as outstanding work: close() waits for (or cancels) it."""
        with self._lock:
            if self._closing:
                raise ClientClosedError("the client is closed; no new requests can be submitted")
            self._outstanding.add(fut)

        def forget(f: Future[Any]) -> None:
            with self._lock:
                self._outstanding.discard(f)

        fut.add_done_callback(forget)

    def submit_request(self, method: str, path: str, **kw: Any) -> Future[Any]:
        """``request()`` on a worker thread; the Future carries its result or error.

        Raises:
            ClientClosedError: immediately, if the runtime is closed.
        """
        with self._lock:
            if self._closing:
                raise ClientClosedError("the client is closed; no new requests can be submitted")
        fut = self.executor.submit(self.request, method, path, **kw)
        self.register(fut)
        return fut

    def submit_polled(
        self,
        path: str,
        request: Any,
        response_type: type[T] | None,
        *,
        request_type: str,
        lane: SequencedLane | None = None,
        sampling: bool = False,
        body: bytes | None = None,
        content_type: str = "application/json",
        prompt_bytes_estimate: int = 0,
        label: str = "",
        rebuild: Callable[[], Any] | None = None,
    ) -> Future[T]:
        """POST a future-returning request, then poll its result; returns ``Future[response_type]``.

        With ``lane`` the POST waits for every earlier POST of that lane (seq_id order) and is sent
        even if the Future is cancelled meanwhile; otherwise a cancelled Future is never sent.
        Cancelling stops polling; server-side work already submitted still runs. Errors (HTTP,
        RequestFailedError, ClientClosedError, LanePoisonedError) arrive through the Future.

        A 410 on a poll (the server dropped the result) re-submits the call. With ``rebuild`` the
        re-submission is a NEW call: ``rebuild()`` returns a fresh request (e.g. a sample with a new
        seq_id, PROTOCOL §5.4), encoded anew and sent with a new idempotency key. Without it the same
        body is re-sent under the same idempotency key: right for sequenced training ops, whose
        seq_id is their slot in the model's order (a new one would leave a gap the server waits for
        forever, and the server de-duplicates on (model_id, seq_id) if the first run did happen).

        Raises:
            ClientClosedError: immediately, if the runtime is closed.
        """
        def encode(req: Any) -> tuple[bytes, str]:
            data, ctype = _encode_body(req)
            return (b"{}" if data is None else data), (content_type if content_type != "application/json" else (ctype or content_type))

        if body is None:
            payload, ctype = encode(request)
        else:
            payload, ctype = body, content_type
        key = f"tinker-sync-{uuid.uuid4().hex}"
        # The lane runs start() one call at a time in seq_id order, so the poller sees a lane's calls in
        # the order the server finishes them and polls only the oldest unresolved one. A LaneSlot (a
        # place reserved in a lane) belongs to its lane.
        poll_lane: object | None = None if lane is None else getattr(lane, "_lane", lane)
        outer: Future[T] = Future()
        self.register(outer)
        started = self._clock()

        def post(data: bytes, ctype: str, key: str) -> str:
            if sampling:
                with self._sample_gate:
                    return self._post_future(path, data, ctype, key, sampling, prompt_bytes_estimate)
            return self._post_future(path, data, ctype, key, sampling, prompt_bytes_estimate)

        def resubmit() -> str:
            if rebuild is None:
                return post(payload, ctype, key)
            data, new_ctype = encode(rebuild())
            return post(data, new_ctype, f"tinker-sync-{uuid.uuid4().hex}")

        def start() -> None:
            if lane is None and outer.done():
                return  # cancelled before it was sent: nothing to do
            request_id = post(payload, ctype, key)
            call = PolledCall(
                request_id=request_id, expected_type=response_type, request_type=request_type,
                future=outer, resubmit=resubmit, started_at=started, lane=poll_lane,
                batch=SessionTarget.of_request(request) if sampling else None, label=label or request_type,
            )
            call.round_trip_s = self._clock() - started
            self.poller.track(call)

        try:
            if lane is not None:
                inner = lane.submit(start, label=label or request_type)
            else:
                inner = (self.sample_executor if sampling else self.executor).submit(start)
        except ClientClosedError as exc:
            set_exception(outer, exc)
            return outer
        # The POST's own outcome reaches the caller only when it fails; success hands over to the poller.
        inner.add_done_callback(lambda f: propagate_failure(f, outer))
        return outer

    def _post_future(
        self, path: str, payload: bytes, ctype: str, key: str, sampling: bool, prompt_bytes_estimate: int
    ) -> str:
        handle = self.request(
            "POST", path, body=payload, content_type=ctype, idempotency_key=key,
            sampling=sampling, prompt_bytes_estimate=prompt_bytes_estimate,
        )
        if not isinstance(handle, dict) or not isinstance(handle.get("request_id"), str):
            raise APIResponseValidationError(
                f"POST {path}: expected a future handle {{'request_id': ...}}, got {str(handle)[:200]}",
                body=handle,
                expected_type="UntypedAPIFuture",
            )
        request_id: str = handle["request_id"]
        return request_id

    # -- shutdown ------------------------------------------------------------------------------
    def wait_idle(self, timeout_s: float | None = None) -> bool:
        """Block until no submitted call is pending (including calls submitted meanwhile).

        Returns False if ``timeout_s`` ran out first. Must not be called from a tinker-sync thread.
        """
        deadline = None if timeout_s is None else self._clock() + timeout_s
        act = self._activity
        while True:
            with self._lock:
                outstanding = list(self._outstanding)
            if not outstanding:
                with act.cond:
                    if act.busy == 0:
                        with self._lock:
                            if not self._outstanding:
                                return True
                        continue
                    if deadline is not None and self._clock() >= deadline:
                        return False
                    act.cond.wait(0.05)  # a Future is being resolved; its callbacks may submit more
                continue
            left = None if deadline is None else deadline - self._clock()
            if left is not None and left <= 0:
                return False
            futures_wait(outstanding, timeout=left)

    def pending_count(self) -> int:
        """Calls submitted and not yet resolved."""
        with self._lock:
            return len(self._outstanding)

    def drain(self, timeout_s: float | None) -> int:
        """Wait at most ``timeout_s`` (None: no bound) for pending calls; fail the leftovers.

        Leftovers fail with ClientClosedError and one WARNING names how many. Returns their number.
        Must not be called from a tinker-sync thread.
        """
        if self.wait_idle(timeout_s):
            return 0
        with self._lock:
            outstanding = [f for f in self._outstanding if not f.done()]
            lanes = list(self._lanes)
        if not outstanding:
            return 0
        logger.warning(
            "closing: %d call(s) still pending after %.1f s; failing them with ClientClosedError "
            "(pass a larger timeout_s to close() to wait longer)",
            len(outstanding), timeout_s,
        )
        err = ClientClosedError(f"the client was closed; this call did not finish within close()'s {timeout_s:g} s timeout")
        for lane in lanes:
            lane.fail_pending(err)
        for fut in outstanding:
            set_exception(fut, err)
        return len(outstanding)

    def close(self, *, cancel_pending: bool = False, timeout_s: float | None = 300.0) -> None:
        """Shut down: by default wait (at most ``timeout_s``) for every pending call; with ``cancel_pending`` fail them.

        Calls still pending when the wait ends fail with ClientClosedError (logged as a WARNING with
        their number). No tinker-sync thread survives; the HTTP connections close last. Idempotent.
        """
        deadline = None if timeout_s is None else self._clock() + timeout_s
        # Drain before refusing new work: chained follow-up calls may still be submitted meanwhile. If
        # calls had to be failed, also interrupt their retries and polls (cancel_pending).
        if not cancel_pending and not self._closing and self.drain(timeout_s):
            cancel_pending = True
        with self._lock:
            already = self._closing
            self._closing = True
            outstanding = list(self._outstanding)
            lanes = list(self._lanes)
        if not cancel_pending and not already and outstanding:
            left = None if deadline is None else max(0.0, deadline - self._clock())
            if futures_wait(outstanding, timeout=left).not_done:
                cancel_pending = True
                logger.warning("closing: calls still pending after %.1f s; failing them with ClientClosedError", timeout_s)
        if cancel_pending:
            self._closed.set()
            err = ClientClosedError("the client was closed before this call finished")
            for lane in lanes:
                lane.fail_pending(err)
            for fut in outstanding:
                set_exception(fut, ClientClosedError("the client was closed before this call finished"))
            self.transport.abort_inflight()
        self.executor.close(cancel_pending=cancel_pending)
        self.sample_executor.close(cancel_pending=cancel_pending)
        self.poller.close(cancel_pending=True)
        self._closed.set()
        self.transport.close()

    def __enter__(self) -> Runtime:  # noqa: PYI034 - typing.Self needs Python 3.11
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self.close(cancel_pending=exc_type is not None)
