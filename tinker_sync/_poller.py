"""Result polling (``POST /api/v1/retrieve_future``): the FuturePoller threads.

``decide()`` (``_poll_decide``) maps one poll outcome to what happens next; FuturePoller runs a
small pool of daemon threads that poll the tracked calls round-robin and resolve their Futures. Where
the server offers it, sample calls wait on one batched poll per sampling session (``_batch_poller``).
"""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from . import _serde
from ._batch_poller import CancelSender, Completion, PollFeatures, SessionPoller, SessionTarget
from ._decide import new_idempotency_key
from ._exceptions import (
    APIConnectionError,
    ClientClosedError,
    from_response,
)
from ._executor import (
    Activity,
    CountedCondition,
    LanePoisonedError,
    OnDone,
    mark_internal_thread,
    set_exception,
    set_result,
    start_internal_thread,
)
from ._poll_decide import (
    PROTO_ACCEPT,
    RETRIEVE_PATH,
    Backoff,
    Decision,
    Done,
    Fail,
    FetchPayload,
    PollAgain,
    PollState,
    Resubmit,
    decide,
    decide_connection_error,
)

if TYPE_CHECKING:
    from ._transport import Transport

__all__ = [
    "Backoff", "Decision", "Done", "Fail", "FetchPayload", "FuturePoller", "PollAgain", "PollState", "PolledCall",
    "Resubmit", "SequenceGapError", "SessionTarget", "decide", "decide_connection_error",
]

logger = logging.getLogger(__name__)

_MAX_RESUBMITS = 3  # 410 (future expired) -> re-POST at most this many times per call
_PAUSE_WARN_EVERY_S = 60.0
_WARM_POLLERS = 4  # poller threads kept while calls are tracked; more start on demand ...
_IDLE_RETIRE_S = 2.0  # ... and retire after this long without a call to poll
_WARM_IDLE_EXIT_S = 5.0  # the warm ones exit once nothing was tracked for this long
_FRESH_BOOST_S = 0.5  # a first poll goes ahead of re-polls queued up to this long before it
_PAUSED_TEXT = {
    "paused_rate_limit": "concurrent training clients / sampler weights limit hit",
    "paused_capacity": "Tinker backend is running short on capacity, please wait",
}


class SequenceGapError(LanePoisonedError):
    """A training call cannot finish: the server lost an earlier call of the model (a seq_id gap it would
    wait on forever). The message names the lost step; the lost call's error is the ``__cause__``."""


# --------------------------------------------------------------------------------------------------
# FuturePoller


class PolledCall:
    """One submitted request whose result is being polled."""

    def __init__(
        self,
        *,
        request_id: str,
        expected_type: type | None,
        request_type: str,
        future: Future[Any],
        resubmit: Callable[[], str] | None = None,
        started_at: float | None = None,
        lane: object | None = None,
        batch: SessionTarget | None = None,
        label: str = "",
        on_queue_state: Callable[[str, str | None], None] | None = None,
    ) -> None:
        self.request_id = request_id
        self.expected_type = expected_type
        self.request_type = request_type
        self.future = future
        self.resubmit = resubmit
        self.state = PollState()
        self.resubmits = 0
        self.started_at = started_at if started_at is not None else time.monotonic()
        self.round_trip_s: float | None = None
        # Calls with the same (hashable) lane key finish in track() order on the server (one model's
        # seq_id order), so only the oldest unresolved one of a lane is polled.
        self.lane = lane
        self.polling_thread: threading.Thread | None = None  # set while a poller thread polls it
        # The sampling session whose batched poll (retrieve_futures) may report this call complete.
        self.batch = batch
        self.in_batch = False  # waiting on the batched poll (not in the poll queue)
        self.batched = False  # was reported complete by the batched poll: ack it once fetched
        self.label = label or request_type
        self.lost: BaseException | None = None  # the server lost it and it could not be re-sent
        # The caller's observer, as 0.38 calls it: each try_again naming a state, "active" once resolved; never raises.
        self.on_queue_state = on_queue_state

    @property
    def step(self) -> str:
        return f"{self.label} (request {self.request_id})"

    def __repr__(self) -> str:
        return f"PolledCall({self.request_type} request_id={self.request_id!r} iteration={self.state.iteration})"

    @property
    def accept(self) -> str:
        name = getattr(self.expected_type, "__name__", "")
        return PROTO_ACCEPT if name in ("SampleResponse", "ForwardBackwardOutput") else "application/json"


class FuturePoller:
    """An elastic pool of daemon threads ``tinker-sync-poller-N`` long-polling tracked calls.

    Each thread takes the next due call, polls it once, applies ``decide()`` and re-queues it unless
    it finished. Cancelled Futures are dropped at their next turn.

    A poll occupies its thread for as long as the server holds it (up to ~20-45 s), so a pool smaller
    than the number of pending calls leaves finished results unfetched until a poll returns (head-of-
    line blocking). Threads are therefore started on demand, one per call waiting for a poll, up to
    ``max_pollers``; threads beyond ``warm_pollers`` retire after ``idle_retire_s`` without work, the
    warm ones once nothing is tracked for 5 s. A first poll is queued ahead of re-polls
    (``_FRESH_BOOST_S``): a re-polled call was just found unfinished, a new one may be done already.

    Calls tracked with the same ``PolledCall.lane`` (one training model: the server runs its requests
    strictly in seq_id order, and they are tracked in that order) cannot finish before the older
    ones, so only the oldest unresolved call of a lane is polled; the others wait in a per-lane queue
    (no thread, no request). When the head's Future resolves (result, error or cancel) the next one
    is queued for polling at once. A lane call the server lost (404 after a restart) is re-sent with
    the same seq_id and idempotency key; if that is impossible, the lane's later calls fail at once
    with SequenceGapError (and the lane is poisoned) instead of being polled forever.

    With ``PollFeatures.batched`` (the server's ``sample_use_retrieve_futures``) a call tracked with a
    ``batch`` target waits on that sampling session's single ``retrieve_futures`` long poll
    (SessionPoller: one thread per session); once reported complete it is fetched here like any other
    call (one retrieve_future that the server answers at once). With ``PollFeatures.cancel`` a
    cancelled sample Future sends ``cancel_future`` (CancelSender: one thread).
    """

    def __init__(
        self,
        transport: Transport,
        *,
        max_pollers: int = 16,
        poll_timeout_s: float = 45.0,
        billing_pause_s: float = 5.0,
        billing_max_pause_s: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
        activity: Activity | None = None,
        warm_pollers: int = _WARM_POLLERS,
        idle_retire_s: float = _IDLE_RETIRE_S,
    ) -> None:
        self._activity = activity or Activity()
        self._transport = transport
        self._max_pollers = max_pollers
        self._warm = min(warm_pollers, max_pollers)
        self._idle_retire_s = idle_retire_s
        self._thread_ids = itertools.count(1)
        self._poll_timeout_s = poll_timeout_s
        self._read_timeout_header = f"{poll_timeout_s:g}"
        self._billing = (billing_pause_s, billing_max_pause_s)
        self._clock = clock
        # Held with ``with self._lock`` (the RLock's own C-level enter/exit; a Condition's are Python calls).
        lock = self._lock = threading.RLock()
        self._cond = CountedCondition(lock)  # poller threads wait here for calls to poll
        # close() waits here for the tracked calls to drain. Apart from _cond so that a call leaving does not
        # wake every idle poller thread (at a 64-way fan-out that herd cost more CPU than the polls).
        self._drained = threading.Condition(lock)
        self._ready: list[tuple[float, int, PolledCall]] = []  # heap by due time (FIFO on ties)
        self._seq = itertools.count()
        self._tracked: set[PolledCall] = set()
        self._lanes: dict[object, collections.deque[PolledCall]] = {}  # lane -> unresolved calls, oldest first
        self._threads: list[threading.Thread] = []  # threads currently serving (retired ones leave)
        self._started: list[threading.Thread] = []  # every thread started and maybe not exited (close joins)
        self._busy = 0
        self._closing = False
        self._stop = threading.Event()  # interrupts back-off waits on close
        self._last_queue_state: str | None = None
        self._last_pause_warning = -float("inf")
        self.features = PollFeatures()
        self._sessions: dict[SessionTarget, SessionPoller] = {}
        self._gapped: dict[object, SequenceGapError] = {}  # lane -> why its calls cannot finish
        self._canceller = CancelSender(transport, stop=self._stop)

    def set_features(self, features: PollFeatures) -> None:
        """Use what the server offers (from its client config and dynamic config); may change any time."""
        self.features = features
        self._canceller.batch = features.cancel_batch

    # -- public --------------------------------------------------------------------------------
    def track(self, call: PolledCall) -> None:
        """Start polling ``call``; its Future resolves with the result or error."""
        with self._lock:
            if self._closing:
                set_exception(call.future, ClientClosedError("the client was closed; the result was not fetched"))
                return
            gap = self._gapped.get(call.lane) if call.lane is not None else None
            if gap is not None:  # an earlier call of this lane is lost: this one can never run
                set_exception(call.future, self._gap_error(call, gap))
                return
            self._tracked.add(call)
            if call.lane is not None:
                queue = self._lanes.setdefault(call.lane, collections.deque())
                queue.append(call)
                if len(queue) > 1:  # an older call of this lane is unresolved: wait behind it
                    waiting = True
                else:
                    waiting = False
                    self._push(call, -_FRESH_BOOST_S)
            else:
                waiting = self._session_for(call) is not None
                if not waiting:
                    self._push(call, -_FRESH_BOOST_S)
            if not waiting:
                self._ensure_threads()
                self._cond.notify()
        if waiting and call.lane is None:
            self._wait_batched(call)
        # Outside the lock: runs at once if the Future is already done (e.g. cancelled meanwhile).
        call.future.add_done_callback(OnDone(lambda _f: self._call_done(call)))

    def tracked(self) -> int:
        with self._lock:
            return len(self._tracked)

    def batch_stats(self) -> dict[str, int]:
        """Batched polling figures: sessions, retrieve_futures requests sent, their threads alive, cancels sent."""
        with self._lock:
            sessions = list(self._sessions.values())
        alive = [s.thread() for s in sessions]
        return {
            "sessions": len(sessions),
            "polls": sum(s.polls for s in sessions),
            "threads": sum(1 for t in alive if t is not None and t.is_alive()),
            "cancels_sent": self._canceller.sent,
        }

    def close(self, *, cancel_pending: bool, join_timeout_s: float = 10.0) -> None:
        """Stop the threads; with ``cancel_pending`` tracked Futures fail with ClientClosedError.

        Without it, waits until every tracked call has resolved first.
        """
        if not cancel_pending and threading.current_thread() not in self._threads:
            with self._lock:
                while self._tracked and not self._closing:
                    self._drained.wait(0.5)
        with self._lock:
            self._closing = True
            calls = list(self._tracked)
            self._tracked.clear()
            self._ready.clear()
            self._lanes.clear()
            sessions = list(self._sessions.values())
            self._cond.notify_all()
            self._drained.notify_all()
        self._stop.set()
        for session in sessions:
            session.close()
        for call in calls:
            set_exception(call.future, ClientClosedError("the client was closed while this result was pending"))
        if calls:
            self._transport.abort_inflight()  # unblock long polls held by the server
        with self._lock:
            maybe = [*self._started, *(s.thread() for s in sessions), self._canceller.thread()]
        started = [t for t in maybe if t is not None and t is not threading.current_thread()]
        deadline = time.monotonic() + join_timeout_s
        for t in started:
            while t.is_alive() and time.monotonic() < deadline:
                t.join(0.05)
                if calls and t.is_alive():
                    # A poll thread may have taken a connection (or started its request) just after
                    # the first abort; its socket is connected now, so shut it down too rather than
                    # wait out the server's long-poll hold.
                    self._transport.abort_inflight()

    # -- internals -----------------------------------------------------------------------------
    def _call_done(self, call: PolledCall) -> None:
        """A tracked call's Future resolved (result, error, cancel or close)."""
        if call.lane is not None:
            self._lane_call_done(call)
        elif call.in_batch:  # cancelled while waiting on the batched poll: nobody polls it any more
            with self._lock:
                session = self._sessions.get(call.batch) if call.batch is not None else None
                if call.in_batch:
                    call.in_batch = False
                    self._untrack(call)
            if session is not None:
                session.forget(call.request_id)
        if call.future.cancelled() and call.request_type == "Sample" and self.features.cancel and not self._closing:
            self._canceller.enqueue(call.request_id)  # stop the server's work on an abandoned sample

    def _lane_call_done(self, call: PolledCall) -> None:
        """A lane call's Future resolved: forget it and queue the lane's next unresolved call for polling."""
        stranded: list[PolledCall] = []
        with self._lock:
            queue = self._lanes.get(call.lane)
            if queue is None or self._closing:
                return
            if not queue or queue[0] is not call:
                # Not the head (cancelled while waiting): it was never queued for polling, drop it now.
                try:
                    queue.remove(call)
                except ValueError:
                    pass
                else:
                    self._untrack(call)
                return
            queue.popleft()
            if call.lost is not None:
                # The server lost this call for good: the later ones of the lane can never run.
                self._gapped[call.lane] = SequenceGapError(call.step)
                self._gapped[call.lane].__cause__ = call.lost
                stranded = list(queue)
                queue.clear()
                self._tracked.difference_update(stranded)
            while queue and queue[0].future.done():  # resolved while waiting (cancelled): never polled
                self._tracked.discard(queue.popleft())
            if not queue:
                del self._lanes[call.lane]
                self._untrack(None)
            else:
                self._push(queue[0], -_FRESH_BOOST_S)
                # The thread that resolved the head takes the next call itself once its poll is done;
                # otherwise (a cancel from another thread, the head's poll still held) start one if needed.
                if call.polling_thread is not threading.current_thread():
                    self._ensure_threads()
                self._cond.notify()
                self._untrack(None)
        if call.lost is not None:
            gap = self._gapped[call.lane]
            for later in stranded:
                set_exception(later.future, self._gap_error(later, gap))
            poison = getattr(call.lane, "fail_pending", None)  # a SequencedLane: calls not sent yet fail too
            if callable(poison):
                poison(self._gap_error(None, gap))

    @staticmethod
    def _gap_error(call: PolledCall | None, gap: SequenceGapError) -> SequenceGapError:
        what = f"{call.step} cannot finish" if call is not None else "no later call of this model can run"
        err = SequenceGapError(
            f"{what}: the server lost {gap.args[0]}, an earlier call of the same model, and it could not be "
            f"re-sent ({type(gap.__cause__).__name__}: {gap.__cause__}). The server runs a model's calls in "
            "seq_id order and would wait for the lost one forever, so this training client is unusable; "
            "create a new one, e.g. from your last saved state."
        )
        err.__cause__ = gap.__cause__
        return err

    def _session_for(self, call: PolledCall) -> SessionPoller | None:
        """The batched poll ``call`` should wait on, or None to poll it directly (called with the lock held)."""
        if not self.features.batched or call.batch is None or call.lane is not None:
            return None
        session = self._sessions.get(call.batch)
        if session is None:
            session = self._sessions[call.batch] = SessionPoller(
                call.batch, self._transport, on_complete=self._batch_complete, on_give_up=self._batch_give_up,
                poll_timeout_s=self._poll_timeout_s, billing=self._billing, clock=self._clock, stop=self._stop,
                name=f"tinker-sync-poller-batch-{len(self._sessions) + 1}",
            )
        return session if session.disabled is None else None

    def _wait_batched(self, call: PolledCall) -> None:
        with self._lock:
            session = self._session_for(call)
            call.in_batch = session is not None
        if session is None or not session.wait(call, call.request_id):
            self._batch_give_up([call], None)

    def _batch_complete(self, key: object, completion: Completion) -> None:
        """The batched poll reported ``key``'s request complete: fetch its payload with retrieve_future."""
        assert isinstance(key, PolledCall)
        with self._lock:
            key.in_batch = False
            key.batched = True
            if self._closing or key.future.done():
                self._untrack(key)
                return
            key.state = PollState()
            self._push(key, -_FRESH_BOOST_S)
            self._ensure_threads()
            self._cond.notify()

    def _batch_give_up(self, keys: list[object], exc: BaseException | None) -> None:
        """Batching ended for these calls (the server refused it): poll each of them directly."""
        with self._lock:
            for key in keys:
                assert isinstance(key, PolledCall)
                key.in_batch = False
                if self._closing or key.future.done():
                    self._untrack(key)
                else:
                    self._push(key, -_FRESH_BOOST_S)
            self._ensure_threads()
            self._cond.notify_all()

    def _untrack(self, call: PolledCall | None) -> None:
        """Forget ``call`` (with the lock held); wake close() once nothing is tracked."""
        if call is not None:
            self._tracked.discard(call)
        if not self._tracked:
            self._drained.notify_all()

    def _push(self, call: PolledCall, delay_s: float) -> None:
        heapq.heappush(self._ready, (self._clock() + delay_s, next(self._seq), call))

    def threads(self) -> int:
        """Poller threads alive now (for tests and monitoring)."""
        with self._lock:
            return len(self._threads)

    def _ensure_threads(self) -> None:
        # Called with the lock held whenever a call becomes ready: one more thread if none idle (<= max_pollers).
        if self._closing:
            return
        idle = len(self._threads) - self._busy
        if idle < len(self._ready) and len(self._threads) < self._max_pollers:
            t = threading.Thread(target=self._run, name=f"tinker-sync-poller-{next(self._thread_ids)}", daemon=True)
            self._threads.append(t)
            self._started = [x for x in self._started if x.is_alive()]
            self._started.append(t)
            start_internal_thread(t)

    def _retire(self) -> None:
        me = threading.current_thread()
        if me in self._threads:
            self._threads.remove(me)

    def _next(self) -> PolledCall | None:
        idle_since: float | None = None
        with self._lock:
            while True:
                if self._closing:
                    self._retire()
                    return None
                now = self._clock()
                timeout = 1.0
                if self._ready:
                    due, _, call = self._ready[0]
                    if due <= now:
                        heapq.heappop(self._ready)
                        if call.future.done():  # cancelled by the user: stop polling it
                            self._untrack(call)
                            continue
                        self._busy += 1
                        call.polling_thread = threading.current_thread()
                        if self._ready and self._ready[0][0] <= now:
                            self._ensure_threads()  # more calls are due than threads are free
                        return call
                    timeout = min(due - now, 1.0)
                # idle: retire surplus threads quickly, warm ones once nothing is tracked for a while
                if idle_since is None:
                    idle_since = now
                if len(self._threads) > self._warm:
                    limit: float | None = self._idle_retire_s
                else:
                    limit = _WARM_IDLE_EXIT_S if not self._tracked else None
                if limit is not None:
                    left = limit - (now - idle_since)
                    if left <= 0:
                        self._retire()
                        return None
                    timeout = min(timeout, left)
                self._cond.wait(timeout)

    def _run(self) -> None:
        mark_internal_thread()  # Future callbacks run here; their submits must not block this thread
        while True:
            call = self._next()
            if call is None:
                return
            try:
                with self._activity:  # resolving a Future runs callbacks that may submit more work
                    delay, finished = self._poll_once(call)
            except BaseException as exc:
                logger.exception("poller crashed while polling %r", call)
                set_exception(call.future, exc)
                delay, finished = 0.0, True
            ack: SessionPoller | None = None
            with self._lock:
                self._busy -= 1
                call.polling_thread = None
                if finished or call.future.done() or self._closing:
                    self._untrack(call)
                    if call.batched and call.batch is not None:
                        ack = self._sessions.get(call.batch)
                else:
                    self._push(call, delay)
                    self._cond.notify()
            if ack is not None:
                ack.retrieved(call.request_id)  # the server may drop the payload now

    def _poll_once(self, call: PolledCall) -> tuple[float, bool]:
        """Poll once; return (delay before the next poll, finished)."""
        state = call.state
        headers = {
            "X-Tinker-Request-Type": call.request_type,
            "X-Tinker-Request-Iteration": str(state.iteration),
            # As 0.25 on every non-GET: a fresh key per poll (each poll is its own call; one key for
            # all polls of a call would let an idempotency cache replay a stale try_again).
            "X-Idempotency-Key": new_idempotency_key(),
            # Lets the server end its long-poll hold before our read timeout fires.
            "X-Stainless-Read-Timeout": self._read_timeout_header,
        }
        if state.iteration == 0 and call.round_trip_s is not None:
            headers["X-Tinker-Create-Promise-Roundtrip-Time"] = f"{call.round_trip_s:.6f}"
        poll = {"request_id": call.request_id, "allow_metadata_only": state.allow_metadata_only}
        body = _serde.COMPACT_JSON.encode(poll).encode()
        try:
            resp = self._transport.send("POST", RETRIEVE_PATH, body=body, content_type="application/json",
                                        headers=headers, timeout_s=self._poll_timeout_s, accept=call.accept)
        except APIConnectionError as exc:
            if self._closing:
                return 0.0, True
            decision = decide_connection_error(exc, state)
            logger.debug("poll of %s got no response (%s); backing off", call.request_id, exc)
        else:
            decision = decide(resp.status, resp.headers, resp.content, call.expected_type, state,
                              request_id=call.request_id, now=self._clock(), billing_pause_s=self._billing[0],
                              billing_max_pause_s=self._billing[1], sequenced=call.lane is not None)
        call.state = decision.state
        hook = call.on_queue_state
        if hook is not None and isinstance(decision, PollAgain) and decision.queue_state is not None:
            hook(decision.queue_state, decision.reason)
        elif hook is not None and isinstance(decision, (Done, Fail)):
            hook("active", None)  # a pause ends with the call: try_again never says "active"
        if isinstance(decision, Done):
            set_result(call.future, decision.value)
            return 0.0, True
        if isinstance(decision, Fail):
            set_exception(call.future, decision.exc)
            return 0.0, True
        if isinstance(decision, PollAgain):
            self._note_queue_state(call, decision.queue_state, decision.reason)
            return decision.delay_s, False
        if isinstance(decision, Backoff):
            return decision.delay_s, False
        if isinstance(decision, FetchPayload):
            return 0.0, False
        if isinstance(decision, Resubmit):
            return self._resubmit(call, decision), call.future.done()
        raise AssertionError(f"unknown decision {decision!r}")  # pragma: no cover

    def _resubmit(self, call: PolledCall, decision: Resubmit) -> float:
        """Re-send a call whose result expired (410) or that the server lost (404, sequenced calls)."""
        lost = decision.exc or from_response(
            410, "the result expired before it was fetched", method="POST", path=RETRIEVE_PATH,
            request_id=call.request_id,
        )
        if call.resubmit is None or call.resubmits >= _MAX_RESUBMITS:
            call.lost = lost  # before set_exception: its callbacks decide whether the lane has a gap
            set_exception(call.future, lost)
            return 0.0
        call.resubmits += 1
        old = call.request_id
        try:
            call.request_id = call.resubmit()
        except BaseException as exc:  # noqa: BLE001
            exc.__context__ = exc.__context__ or lost
            call.lost = exc
            set_exception(call.future, exc)
            return 0.0
        call.state = PollState()
        call.batched = False
        why = "was lost by the server (404)" if decision.exc is not None else "expired on the server (410)"
        logger.info("%s %s; re-submitted as %s", call.step.replace(call.request_id, old), why, call.request_id)
        return 0.0

    def _note_queue_state(self, call: PolledCall, queue_state: str | None, reason: str | None) -> None:
        if queue_state is None or queue_state == self._last_queue_state:
            return
        self._last_queue_state = queue_state
        if queue_state.startswith("paused"):
            now = self._clock()
            text = reason or _PAUSED_TEXT.get(queue_state, queue_state)
            if now - self._last_pause_warning >= _PAUSE_WARN_EVERY_S:
                self._last_pause_warning = now
                logger.warning("Tinker queue %s for %s requests: %s", queue_state, call.request_type, text)
            else:
                logger.info("Tinker queue %s for %s requests: %s", queue_state, call.request_type, text)
        else:
            logger.info("Tinker queue state is now %s (%s requests)", queue_state, call.request_type)
