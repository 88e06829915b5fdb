"""Runtime: config + transport + rate limiter + executor + poller, shared by all clients of a ServiceClient.

``call()`` (``request()`` with keywords) is one logical call with retries, decided by ``_decide``
(blocking); ``submit_request()``/``submit_polled()`` return real ``concurrent.futures.Future`` objects;
``spawn()`` is the one way to start background work that close() sees, interrupts and bounds.
"""

from __future__ import annotations

import atexit
import functools
import logging
import sys
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from concurrent.futures import wait as futures_wait
from typing import Any, TypeVar

import attrs

from . import _serde
from ._config import ClientConfig, redact_url
from ._decide import (
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
from ._exceptions import (
    APIConnectionError,
    APIResponseValidationError,
    APIStatusError,
    ClientClosedError,
    RateLimitError,
    redact,
    register_secret,
    unregister_secret,
)
from ._executor import Activity, CountedCondition, Executor, LaneSlot, SequencedLane, propagate_failure, set_exception
from ._poller import FuturePoller, PolledCall, SessionTarget
from ._ratelimit import RateLimiter, get_shared_limiter
from ._transport import HTTPResponse, Transport

__all__ = ["Runtime"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

_SAMPLE_PATH = "/api/v1/asample"
_SAMPLE_INFLIGHT = 400  # concurrent sample dispatches at most (official SDK) ...
_SAMPLE_INFLIGHT_LIMITED = 10  # ... and while a rate-limit back-off is recent (docs/protocol.rst §7.4)


_EXIT_WAIT_S = 5.0  # at a clean interpreter exit, pending calls of an unclosed client get this long
_STOP_GRACE_S = 2.0  # after close() cancelled them, running calls get this long to notice and return


class _SampleGate:
    """Bounds concurrent asample dispatches; the bound tightens while the account was recently limited.

    Dispatches run on the runtime's own sampling pool (``ClientConfig.max_sample_dispatchers``
    threads), so normally the pool size is the bound; the gate adds the tighter bound of 10 after a 429
    and covers the re-submissions after a 410, which run on poller threads.
    """

    def __init__(self, limiter: RateLimiter, closed: threading.Event, limit: int = _SAMPLE_INFLIGHT) -> None:
        self._limiter = limiter
        self._closed = closed
        self._lock = threading.Lock()
        self._cond = CountedCondition(self._lock)
        self._inflight = 0
        self.limit = max(1, min(limit, _SAMPLE_INFLIGHT))

    def __enter__(self) -> None:
        with self._lock:
            while self._inflight >= (_SAMPLE_INFLIGHT_LIMITED if self._limiter.recently_limited else self.limit):
                if self._closed.is_set():
                    raise ClientClosedError("the client was closed while waiting to dispatch a sample")
                self._cond.wait(0.25)
            self._inflight += 1

    def __exit__(self, *exc: object) -> None:
        with self._lock:
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
        return _serde.dumps(body), "application/json"
    return _serde.COMPACT_JSON.encode(body).encode("utf-8"), "application/json"


def _parse(resp: HTTPResponse, response_type: type[T] | None, method: str, path: str) -> Any:
    if response_type is None:
        if not resp.content:
            return None
        try:
            return resp.json()
        except ValueError as exc:
            raise APIResponseValidationError(
                f"{method} {path}: the response is not JSON", body=redact(resp.content)[:1000]
            ) from exc
    return _serde.loads(resp.content, response_type)


# A sequenced POST refused with this answer header had its seq_id consumed by the server (the local server
# sends it): the model's later requests still run, so the refusal fails only its own call.
SEQ_ID_CONSUMED_HEADER = "x-tinker-seq-id-consumed"


def seq_id_consumed(exc: APIStatusError) -> bool:
    """Whether a 4xx refusal of a sequenced request says that the server consumed its seq_id."""
    return 400 <= exc.status_code < 500 and any(k.lower() == SEQ_ID_CONSUMED_HEADER for k in exc.headers)


_NO_OPTIONS = CallOptions()
_SECRET_FIELDS = ("weights_access_token",)  # request fields that are credentials


def _body_secrets(body: Any) -> tuple[str, ...]:
    """Credentials carried in a request body (redacted from every error of the call)."""
    if attrs.has(type(body)):
        found = [getattr(body, name, None) for name in _SECRET_FIELDS]
    elif isinstance(body, dict):
        found = [body.get(name) for name in _SECRET_FIELDS]
    else:
        return ()
    return tuple(v for v in found if isinstance(v, str) and v)


class Runtime:
    """The shared machinery of one ServiceClient; thread-safe.

    Args:
        config: connection settings.
        clock: monotonic clock (tests).
        sleep: ``sleep(seconds)`` between retries (tests); the default waits on the close event, so
            close() interrupts it. ``pause()`` raises ClientClosedError after either once closed.
    """

    def __init__(
        self,
        config: ClientConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] | None = None,
    ) -> None:
        self.config = config
        self._clock = clock
        self._sleep = sleep
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
        _live_runtimes.add(self)

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
    def request(self, method: str, path: str, **options: Any) -> Any:
        """``call(method, path, CallOptions(**options))``: the keyword form used by the clients.

        The keywords are the fields of ``CallOptions`` (body, params, response_type, timeout_s, retry,
        sampling, content_type, headers, idempotency_key, accept, retry_statuses, return_response,
        success_on_resend, idempotent, rate_limited, ...).
        """
        return self.call(method, path, CallOptions(**options))

    def call(self, method: str, path: str, options: CallOptions = _NO_OPTIONS) -> Any:
        """Make one logical call in the calling thread, retrying per ``config.retry``.

        Each attempt's outcome goes to the pure ``decide_attempt``; this loop only sends, sleeps
        (``sleep``, interrupted by close) and waits for the shared rate-limit window.

        Returns the body structured as ``options.response_type`` (parsed JSON, or None if empty,
        without one), the raw ``HTTPResponse`` with ``return_response``, or None for an "already done"
        answer to a resend (``success_on_resend``).

        Raises:
            APIStatusError subclass: a non-retryable status, or the last one once retries ran out.
            RateLimitError: the shared back-off window outlasted ``config.rate_limit_max_wait_s``.
            APIConnectionError / APITimeoutError: no response and no retry left.
            APICertificateError: the server's TLS certificate was refused (never retried).
            APIResponseValidationError: a 2xx body that does not fit ``response_type``.
            ClientClosedError: the runtime was closed.
        """
        method = method.upper()
        secrets = (*options.secrets, *_body_secrets(options.body))
        for secret in secrets:
            register_secret(secret)
        try:
            return self._call(method, path, options)
        finally:
            for secret in secrets:
                unregister_secret(secret)

    def _call(self, method: str, path: str, options: CallOptions) -> Any:
        data, default_ct = _encode_body(options.body)
        send = functools.partial(
            self.transport.send, method, path, body=data, content_type=options.content_type or default_ct,
            params=options.params, headers=self._call_headers(method, options), timeout_s=options.timeout_s,
            accept=options.accept,
        )
        policy = CallPolicy.of(method, path, options, self.config.retry, self.config.rate_limit_max_wait_s)
        state = AttemptState(started_at=self._clock())
        while True:
            if self._closed.is_set():
                raise ClientClosedError(f"the client was closed; {method} {path} was not sent")
            if policy.rate_limited:
                self._wait_window(state.rate_deadline)
            dispatched_at = self._clock()
            outcome: HTTPResponse | APIConnectionError
            try:
                outcome = send()
            except APIConnectionError as exc:
                outcome = exc
            decision = decide_attempt(outcome, state, policy, self._clock())
            if isinstance(decision, Return):
                return self._finish(decision, options, method, path, dispatched_at)
            state = self._apply(decision, method, path)

    def _call_headers(self, method: str, options: CallOptions) -> dict[str, str]:
        hdrs = dict(options.headers or {})
        if method != "GET":
            hdrs["X-Idempotency-Key"] = options.idempotency_key or new_idempotency_key()
        if options.sampling:
            hdrs["X-Tinker-Sampling-Backpressure"] = "1"
        return hdrs

    def _wait_window(self, deadline: float | None) -> None:
        self.limiter.wait(deadline=deadline, cancelled=self._closed, max_wait_s=self.config.rate_limit_max_wait_s)

    def _finish(self, decision: Return, options: CallOptions, method: str, path: str, dispatched_at: float) -> Any:
        resp = decision.response
        if decision.note_success:  # an unlimited call (heartbeat) proves nothing about the limited ones
            self.limiter.on_success(dispatched_at=dispatched_at)
        if decision.already_done:
            logger.info(
                "%s %s -> %d after a resend: an earlier attempt was applied (its answer was lost)",
                method, path, resp.status,
            )
        if options.return_response:
            return resp
        return _parse(resp, options.response_type, method, path) if decision.parse else None

    def _apply(self, decision: Raise | Sleep | WaitWindow, method: str, path: str) -> AttemptState:
        """Carry out a non-final decision; return the state of the next attempt (or raise)."""
        if decision.block_for_s is not None:
            self.limiter.block_for(decision.block_for_s)
        if isinstance(decision, Raise):
            if decision.gave_up:
                logger.warning("%s %s: giving up after retries: %s", method, path, decision.error)
            raise decision.error
        if isinstance(decision, Sleep):
            logger.debug("%s %s: %s; retry %d in %.2f s", method, path, decision.reason, decision.state.attempt,
                         decision.delay_s)
            self.pause(decision.delay_s)
            return decision.state
        logger.debug("%s %s -> 429; shared back-off %.2f s", method, path, decision.block_for_s)
        try:
            self._wait_window(decision.state.rate_deadline)
        except RateLimitError as exc:
            raise decision.error from exc
        return decision.state

    def pause(self, seconds: float) -> None:
        """Sleep ``seconds`` unless the runtime closes first (then raise ClientClosedError)."""
        if seconds >= 1.0:
            logger.info("pausing %.1f s before retrying", seconds)
        if self._sleep is None:
            closed = self._closed.wait(seconds)
        else:
            self._sleep(seconds)
            closed = self._closed.is_set()
        if closed:
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

    def spawn(self, fn: Callable[[], T], *, name: str) -> Future[T]:
        """Run the background task ``fn`` on a worker thread; the one entry point for background work.

        The task is registered: a clean close() waits for it (at most ``timeout_s``), a cancelling
        close() (or that timeout running out) fails its Future with ClientClosedError and interrupts
        it. ``fn`` must therefore wait only through ``pause()`` and make requests only through
        ``request()``/``call()``, which raise ClientClosedError once the runtime closes. ``name``
        labels the task in log lines.

        Raises:
            ClientClosedError: immediately, if the runtime is closed.
        """
        with self._lock:
            if self._closing:
                raise ClientClosedError(f"the client is closed; {name} was not started")

        def run() -> T:
            logger.debug("background task %s started", name)
            return fn()

        fut = self.executor.submit(run)
        self.register(fut)
        return fut

    def submit_request(self, method: str, path: str, **kw: Any) -> Future[Any]:
        """``request()`` on a worker thread; the Future carries its result or error.

        Raises:
            ClientClosedError: immediately, if the runtime is closed.
        """
        options = CallOptions(**kw)
        return self.spawn(lambda: self.call(method, path, options), name=f"{method} {path}")

    def submit_polled(
        self,
        path: str,
        request: Any,
        response_type: type[T] | None,
        *,
        request_type: str,
        lane: SequencedLane | LaneSlot | None = None,
        sampling: bool = False,
        body: bytes | None = None,
        content_type: str = "application/json",
        prompt_bytes_estimate: int = 0,
        label: str = "",
        rebuild: Callable[[], Any] | None = None,
        headers: Mapping[str, str] | None = None,
        on_queue_state: Callable[[str, str | None], None] | None = None,
    ) -> Future[T]:
        """POST a future-returning request, then poll its result; returns ``Future[response_type]``.

        With ``lane`` the POST waits for every earlier POST of that lane (seq_id order) and is sent
        even if the Future is cancelled meanwhile; otherwise a cancelled Future is never sent.
        Cancelling stops polling; server-side work already submitted still runs. Errors (HTTP,
        RequestFailedError, ClientClosedError, LanePoisonedError) arrive through the Future.

        A 410 on a poll (the server dropped the result) re-submits the call. With ``rebuild`` the
        re-submission is a NEW call: ``rebuild()`` returns a fresh request (e.g. a sample with a new
        seq_id, docs/protocol.rst §5.4), encoded anew and sent with a new idempotency key. Without it the same
        body is re-sent under the same idempotency key: right for sequenced training ops, whose
        seq_id is their slot in the model's order (a new one would leave a gap the server waits for
        forever, and the server de-duplicates on (model_id, seq_id) if the first run did happen).
        ``headers`` go with the POST (and its re-sends), e.g. ``Content-Encoding: zstd`` for a body
        compressed by ``_compress.encode_fwdbwd``. ``on_queue_state(state, reason)`` (must not raise) is called
        from the poller on every try_again naming a queue state, then with ``"active"`` once the call resolved.

        Raises:
            ClientClosedError: immediately, if the runtime is closed.
        """
        def encode(req: Any) -> tuple[bytes, str]:
            data, ctype = _encode_body(req)
            if content_type == "application/json":
                content_type_of_body = ctype or content_type
            else:
                content_type_of_body = content_type
            return (b"{}" if data is None else data), content_type_of_body

        if body is None:
            payload, ctype = encode(request)
        else:
            payload, ctype = body, content_type
        key = new_idempotency_key()
        # The lane runs start() one call at a time in seq_id order, so the poller sees a lane's calls in
        # the order the server finishes them and polls only the oldest unresolved one. A LaneSlot (a
        # place reserved in a lane) belongs to its lane.
        poll_lane: SequencedLane | None = lane.lane if isinstance(lane, LaneSlot) else lane
        outer: Future[T] = Future()
        self.register(outer)
        self._hold_secrets(_body_secrets(request), outer)
        started = self._clock()

        def post(data: bytes, ctype: str, key: str) -> str:
            if sampling:
                with self._sample_gate:
                    return self._post_future(path, data, ctype, key, sampling, prompt_bytes_estimate, headers)
            return self._post_future(path, data, ctype, key, sampling, prompt_bytes_estimate, headers)

        def resubmit() -> str:
            if rebuild is None:
                return post(payload, ctype, key)
            data, new_ctype = encode(rebuild())
            return post(data, new_ctype, new_idempotency_key())

        def start() -> None:
            if lane is None and outer.done():
                return  # cancelled before it was sent: nothing to do
            try:
                request_id = post(payload, ctype, key)
            except APIStatusError as exc:
                if lane is None or not seq_id_consumed(exc):
                    raise  # a lane call: the lane is poisoned (the server may wait for this seq_id forever)
                set_exception(outer, exc)  # refused, but the server moved past its seq_id: the lane goes on
                return
            call = PolledCall(
                request_id=request_id, expected_type=response_type, request_type=request_type,
                future=outer, resubmit=resubmit, started_at=started, lane=poll_lane,
                batch=SessionTarget.of_request(request) if sampling else None, label=label or request_type,
                on_queue_state=on_queue_state,
            )
            call.round_trip_s = self._clock() - started
            self.poller.track(call)

        # The POST's own outcome reaches the caller only when it fails; success hands over to the poller.
        try:
            if lane is not None:
                inner = lane.submit(start, label=label or request_type)
                inner.add_done_callback(lambda f: propagate_failure(f, outer))
            else:
                (self.sample_executor if sampling else self.executor).dispatch(
                    start, lambda exc: set_exception(outer, exc)
                )
        except ClientClosedError as exc:
            set_exception(outer, exc)
        return outer

    @staticmethod
    def _hold_secrets(secrets: tuple[str, ...], fut: Future[Any]) -> None:
        """Redact ``secrets`` from every error built until ``fut`` resolves (its POST, polls, resends)."""
        if not secrets:
            return
        for secret in secrets:
            register_secret(secret)

        def release(_f: Future[Any]) -> None:
            for secret in secrets:
                unregister_secret(secret)

        fut.add_done_callback(release)

    def _post_future(
        self, path: str, payload: bytes, ctype: str, key: str, sampling: bool, prompt_bytes_estimate: int,
        headers: Mapping[str, str] | None = None,
    ) -> str:
        handle = self.request(
            "POST", path, body=payload, content_type=ctype, idempotency_key=key,
            sampling=sampling, prompt_bytes_estimate=prompt_bytes_estimate, headers=headers,
        )
        rid = handle.get("request_id") if isinstance(handle, dict) else None
        if isinstance(rid, bool) or not isinstance(rid, (str, int)):
            raise APIResponseValidationError(
                f"POST {path}: expected a future handle {{'request_id': ...}}, got {str(handle)[:200]}",
                body=handle,
                expected_type="UntypedAPIFuture",
            )
        return str(rid)  # some servers number their requests: the id goes back as a string

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
        err = ClientClosedError(
            f"the client was closed; this call did not finish within close()'s {timeout_s:g} s timeout"
        )
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
                logger.warning(
                    "closing: calls still pending after %.1f s; failing them with ClientClosedError", timeout_s
                )
        if cancel_pending:
            self._closed.set()
            err = ClientClosedError("the client was closed before this call finished")
            for lane in lanes:
                lane.fail_pending(err)
            for fut in outstanding:
                set_exception(fut, ClientClosedError("the client was closed before this call finished"))
            self.transport.abort_inflight()
        # Interrupted calls end within a moment (their sockets are shut, their pauses raise); a call
        # that does not is left to finish on its own rather than stretching close() past its bound.
        if deadline is None and not cancel_pending:
            stop_s: float | None = None
        else:
            stop_s = _STOP_GRACE_S + (0.0 if deadline is None else max(0.0, deadline - self._clock()))
        self.executor.close(cancel_pending=cancel_pending, timeout_s=stop_s)
        self.sample_executor.close(cancel_pending=cancel_pending, timeout_s=stop_s)
        self.poller.close(cancel_pending=True)
        self._closed.set()
        self.transport.close()

    def __enter__(self) -> Runtime:  # noqa: PYI034 - typing.Self needs Python 3.11
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self.close(cancel_pending=exc_type is not None)


# -- interpreter exit ------------------------------------------------------------------------------
_live_runtimes: weakref.WeakSet[Runtime] = weakref.WeakSet()


def _close_live_runtimes() -> None:
    """Close every runtime its script did not close, before the interpreter joins the worker threads.

    After an uncaught exception (Ctrl-C's KeyboardInterrupt included) pending calls are cancelled at
    once; after a clean exit they get ``_EXIT_WAIT_S``. Either way nothing already sent is taken back:
    the server keeps what it accepted, only calls that were still queued here are dropped.
    """
    interrupted = getattr(sys, "last_value", None) is not None
    for runtime in list(_live_runtimes):
        if runtime.closed:
            continue
        try:
            runtime.close(cancel_pending=interrupted, timeout_s=0.0 if interrupted else _EXIT_WAIT_S)
        except Exception:
            logger.exception("closing a tinker_sync client at interpreter exit failed")


# Worker threads are joined by concurrent.futures' own exit hook, which runs at interpreter exit BEFORE
# atexit functions; threading's (private, but the one concurrent.futures itself uses) hook list runs in
# reverse order of registration, so registering after concurrent.futures was imported puts this first.
_register_exit_hook = getattr(threading, "_register_atexit", atexit.register)
_register_exit_hook(_close_live_runtimes)
