"""Worker threads and Future plumbing: a bounded Executor, chain(), gather() and SequencedLane.

Every Future handed to users is a plain ``concurrent.futures.Future`` that we create and leave PENDING
until it resolves, so ``cancel()``, ``wait()`` and ``as_completed()`` behave as documented.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import (
    CancelledError,
    Future,
    InvalidStateError,
    ThreadPoolExecutor,
)
from typing import Any, TypeVar

from ._exceptions import ClientClosedError, TinkerError

__all__ = [
    "Activity",
    "CountedCondition",
    "Executor",
    "LanePoisonedError",
    "LaneSlot",
    "SequencedLane",
    "chain",
    "gather",
    "mark_internal_thread",
    "set_exception",
    "set_result",
]

logger = logging.getLogger(__name__)

A = TypeVar("A")
B = TypeVar("B")
T = TypeVar("T")

# Queued + running calls per Executor before submit() blocks the caller (backpressure). Large
# enough that typical fan-outs (an RL step's 1000+ samples) never block, small enough that a runaway
# loop cannot pile up unbounded memory. Calls from a worker thread bypass it: a worker must never
# wait on its own pool.
_DEFAULT_MAX_QUEUED = 4096

_worker_local = threading.local()


def set_result(fut: Future[T], value: T) -> bool:
    """Resolve ``fut`` unless it is already done (e.g. cancelled by the user); True if set."""
    try:
        fut.set_result(value)
        return True
    except InvalidStateError:
        return False


def set_exception(fut: Future[Any], exc: BaseException) -> bool:
    """Fail ``fut`` unless it is already done; True if set."""
    try:
        fut.set_exception(exc)
        return True
    except InvalidStateError:
        return False


def in_worker_thread() -> bool:
    """Whether the current thread is one of ours (a worker or a poller): it must never block on submit."""
    return getattr(_worker_local, "is_worker", False)


# Ctrl-C (SIGINT) and SIGTERM stay out of every thread tinker_sync starts. The kernel hands a
# process-directed signal to any thread that does not block it; Python runs the handler
# (KeyboardInterrupt) only in the main thread, and a main thread blocked in ``Future.result()`` is not
# woken when another thread took the signal: the script would sit until its wait timed out. A thread
# inherits the signal mask of the thread that creates it, so ours are started with the mask set.
_EXIT_SIGNALS = (
    frozenset(getattr(signal, name) for name in ("SIGINT", "SIGTERM") if hasattr(signal, name))
    if hasattr(signal, "pthread_sigmask") else frozenset()
)


def block_exit_signals() -> None:
    """Keep exit signals away from the calling thread (for threads whose start we do not control)."""
    if _EXIT_SIGNALS:
        signal.pthread_sigmask(signal.SIG_BLOCK, _EXIT_SIGNALS)


@contextlib.contextmanager
def exit_signals_blocked() -> Iterator[None]:
    """Threads started inside this block keep exit signals away from them from their first instruction;
    the calling thread's own mask is restored after it."""
    if not _EXIT_SIGNALS:
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _EXIT_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def start_internal_thread(thread: threading.Thread) -> None:
    """Start one of tinker_sync's own threads with exit signals blocked in it (see ``_EXIT_SIGNALS``)."""
    with exit_signals_blocked():
        thread.start()


def mark_internal_thread() -> None:
    """Mark the current thread as internal (pollers run chain() callbacks that may submit work)."""
    _worker_local.is_worker = True


class CountedCondition(threading.Condition):
    """A Condition that counts the threads waiting on it: ``notify``/``notify_all`` with none waiting
    return at once, where a Condition's run its Python-level ownership and waiter checks. The hot paths
    (every call's executor, sample gate and pollers) notify on each call, and mostly nobody waits."""

    def __init__(self, lock: threading.Lock | threading.RLock | None = None) -> None:
        super().__init__(lock)
        self.waiting = 0

    def wait(self, timeout: float | None = None) -> bool:
        self.waiting += 1  # the lock is held: no race with notify()
        try:
            return super().wait(timeout)
        finally:
            self.waiting -= 1

    def notify(self, n: int = 1) -> None:
        if self.waiting:
            super().notify(n)

    def notify_all(self) -> None:
        if self.waiting:
            super().notify_all()


class Activity:
    """Counts threads busy completing work, so wait_idle() cannot observe the gap between a Future
    resolving and the follow-up call its done-callbacks submit.

    Entered around every call a worker or poller runs: a plain lock and a counter.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.cond = CountedCondition(self.lock)  # notified when ``busy`` drops to 0
        self.busy = 0

    def __enter__(self) -> None:
        with self.lock:
            self.busy += 1

    def __exit__(self, *exc: object) -> None:
        with self.lock:
            self.busy -= 1
            if not self.busy:
                self.cond.notify_all()


class _Dispatch:
    """A call queued by ``Executor.dispatch``: no Future of its own, only where to report a failure."""

    __slots__ = ("_fail", "_failed")

    def __init__(self, fail: Callable[[BaseException], object]) -> None:
        self._fail = fail
        self._failed = False

    def done(self) -> bool:
        return self._failed

    def set_exception(self, exc: BaseException) -> None:
        if not self._failed:
            self._failed = True
            self._fail(exc)


class Executor:
    """A bounded pool of daemon-like worker threads ``tinker-sync-worker-N``.

    ``submit()`` returns a fresh pending Future; the pool's own futures never escape.
    """

    def __init__(
        self, max_workers: int, *, max_queued: int = _DEFAULT_MAX_QUEUED, activity: Activity | None = None
    ) -> None:
        self.activity = activity or Activity()
        self._numbers = itertools.count(1)
        self._pool = ThreadPoolExecutor(max_workers=max_workers, initializer=self._init_thread)
        self._max_queued = max(max_queued, max_workers)
        self._queued = 0  # calls from outside the pool's threads, queued or running
        self._lock = threading.Lock()
        self._room = CountedCondition(self._lock)  # a submitter waits here while _max_queued are queued
        self._idle = CountedCondition(self._lock)  # close() waits here for _pending to empty
        self._pending: set[Future[Any] | _Dispatch] = set()
        self._closed = False
        self.max_workers = max_workers

    def _init_thread(self) -> None:
        threading.current_thread().name = f"tinker-sync-worker-{next(self._numbers)}"
        mark_internal_thread()
        block_exit_signals()  # ThreadPoolExecutor starts its workers itself, in whichever thread submits

    def submit(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> Future[T]:
        """Run ``fn(*args, **kwargs)`` on a worker; the Future carries its result or exception.

        Blocks the caller while ``max_queued`` calls are already queued (never inside a worker).

        Raises:
            ClientClosedError: immediately, if the executor was closed.
        """
        outer: Future[T] = Future()

        def job() -> None:
            try:
                value = fn(*args, **kwargs)
            except BaseException as exc:  # noqa: BLE001 - everything goes to the Future
                set_exception(outer, exc)
            else:
                set_result(outer, value)

        self._queue(outer, job)
        return outer

    def dispatch(self, fn: Callable[[], object], fail: Callable[[BaseException], object]) -> None:
        """Run ``fn()`` on a worker without a Future: ``fail(exc)`` gets what it raises, or the
        ClientClosedError of a ``close(cancel_pending=True)`` that came first. Its return value is dropped.

        For calls whose outcome already has a home (``Runtime.submit_polled``: the caller's Future); the
        same bound and close() handling as ``submit``.

        Raises:
            ClientClosedError: immediately, if the executor was closed.
        """
        call = _Dispatch(fail)

        def job() -> None:
            try:
                fn()
            except BaseException as exc:  # noqa: BLE001 - everything goes to fail()
                call.set_exception(exc)

        self._queue(call, job)

    def _queue(self, item: Future[Any] | _Dispatch, job: Callable[[], None]) -> None:
        bounded = not in_worker_thread()
        with self._lock:
            if bounded:
                while self._queued >= self._max_queued and not self._closed:
                    self._room.wait()
            if self._closed:
                raise ClientClosedError("the client is closed; no new requests can be submitted")
            if bounded:
                self._queued += 1
            self._pending.add(item)

        def run() -> None:
            try:
                if item.done():  # cancelled by the user (or failed by close) before it started
                    return
                with self.activity:
                    job()
            finally:
                self._release(item, bounded)

        try:
            self._pool.submit(run)
        except RuntimeError as exc:  # pool shut down between our check and submit
            self._release(item, bounded)
            raise ClientClosedError("the client is closed; no new requests can be submitted") from exc

    def _release(self, item: Future[Any] | _Dispatch, bounded: bool) -> None:
        with self._lock:
            self._pending.discard(item)
            if bounded:
                self._queued -= 1
                self._room.notify()
            self._idle.notify_all()

    def pending(self) -> list[Future[Any]]:
        with self._lock:
            return [item for item in self._pending if isinstance(item, Future)]

    def close(self, *, cancel_pending: bool = False, timeout_s: float | None = None) -> bool:
        """Stop accepting work; with ``cancel_pending`` queued calls fail with ClientClosedError.

        Waits at most ``timeout_s`` (None: no bound) for calls already running, then joins the
        threads if they all finished. Returns False when calls were still running at the deadline
        (their threads end when those calls return; a WARNING names how many).
        """
        with self._lock:
            self._closed = True
            pending = list(self._pending)
            self._room.notify_all()  # submitters waiting for room: the executor is closed
        if cancel_pending:
            for item in pending:
                error = ClientClosedError("the client was closed before this call ran")
                if isinstance(item, Future):
                    set_exception(item, error)
                else:
                    item.set_exception(error)
        finished = True
        if not in_worker_thread():  # a worker closing its own pool must not wait for itself
            with self._lock:
                finished = self._idle.wait_for(lambda: not self._pending, timeout_s)
                left = len(self._pending)
            if not finished:
                logger.warning("closing: %d call(s) still running after %.1f s; not waiting for them", left, timeout_s)
        self._pool.shutdown(wait=finished and not in_worker_thread(), cancel_futures=cancel_pending)
        return finished


class OnDone:
    """A done-callback that forgets its function once it has run.

    A Future keeps its callback list after it resolves, so a callback that refers (through its closure)
    back to the Future would keep that Future, the callback and all they hold alive as a reference cycle
    until the garbage collector finds it: some 50 objects per sample call, and collections that then
    have to walk them. Run once, an OnDone holds nothing, so refcounting frees the call's objects at once.
    A Future runs each callback exactly once (when it resolves, or at once if it already has).
    """

    __slots__ = ("_fn",)

    def __init__(self, fn: Callable[[Future[Any]], object]) -> None:
        self._fn: Callable[[Future[Any]], object] | None = fn

    def __call__(self, fut: Future[Any]) -> None:
        fn, self._fn = self._fn, None
        if fn is not None:
            fn(fut)


def propagate_failure(src: Future[Any], dst: Future[Any]) -> bool:
    """If the finished ``src`` was cancelled or failed, cancel or fail ``dst`` the same way; True if so."""
    if src.cancelled():
        dst.cancel()
        return True
    exc = src.exception()
    if exc is not None:
        set_exception(dst, exc)
        return True
    return False


def copy_outcome(src: Future[T], dst: Future[T]) -> None:
    """Give ``dst`` the outcome of the finished ``src``: its result, its exception or its cancellation."""
    if not propagate_failure(src, dst):
        set_result(dst, src.result())


def flatten(outer: Future[Future[T]]) -> Future[T]:
    """Future[Future[T]] -> Future[T] without blocking a thread."""
    result: Future[T] = Future()

    def outer_done(f: Future[Future[T]]) -> None:
        if not propagate_failure(f, result):
            f.result().add_done_callback(OnDone(lambda inner: copy_outcome(inner, result)))

    outer.add_done_callback(OnDone(outer_done))
    return result


def chain(fut: Future[A], fn: Callable[[A], B]) -> Future[B]:
    """A Future of ``fn(fut.result())``; no thread blocks, exceptions and cancellation propagate.

    ``fn`` runs in the thread that completes ``fut``; cancelling the returned Future cancels ``fut``.
    """
    outer: Future[B] = Future()

    def done(f: Future[A]) -> None:
        if propagate_failure(f, outer):
            return
        try:
            value = fn(f.result())
        except BaseException as err:  # noqa: BLE001
            set_exception(outer, err)
        else:
            set_result(outer, value)

    def on_outer(o: Future[B]) -> None:
        if o.cancelled():
            fut.cancel()

    outer.add_done_callback(OnDone(on_outer))
    fut.add_done_callback(OnDone(done))
    return outer


def gather(futs: Sequence[Future[A]]) -> Future[list[A]]:
    """A Future of all results in order; the first exception (or cancellation) fails it."""
    outer: Future[list[A]] = Future()
    futs = list(futs)
    if not futs:
        outer.set_result([])
        return outer
    results: list[Any] = [None] * len(futs)
    remaining = [len(futs)]
    lock = threading.Lock()

    def make_cb(i: int) -> Callable[[Future[A]], None]:
        def cb(f: Future[A]) -> None:
            if f.cancelled():
                set_exception(outer, CancelledError(f"gathered future #{i} was cancelled"))
                return
            exc = f.exception()
            if exc is not None:
                set_exception(outer, exc)
                return
            with lock:
                results[i] = f.result()
                remaining[0] -= 1
                last = remaining[0] == 0
            if last:
                set_result(outer, list(results))

        return cb

    def on_outer(o: Future[list[A]]) -> None:
        if o.cancelled():
            for f in futs:
                f.cancel()

    outer.add_done_callback(OnDone(on_outer))
    for i, f in enumerate(futs):
        f.add_done_callback(OnDone(make_cb(i)))
    return outer


class LanePoisonedError(TinkerError):
    """An earlier call of this ordered lane failed, so this one was not sent.

    Sending it would leave a gap in the model's seq_id order that the server would wait on forever.
    The original failure is the ``__cause__``.
    """


class _LaneEntry:
    """One place in a lane's queue: a call, or a reserved slot whose call is supplied later."""

    __slots__ = ("error", "fn", "label", "outer", "removed")

    def __init__(self, fn: Callable[[], Any] | None, label: str) -> None:
        self.fn = fn
        self.label = label
        self.outer: Future[Any] = Future()
        self.error: BaseException | None = None  # a reserved slot given up with this error
        self.removed = False

    @property
    def ready(self) -> bool:
        return self.fn is not None or self.error is not None


class LaneSlot:
    """A place reserved in a SequencedLane whose call is supplied later (e.g. once its body is known).

    The lane runs the calls queued before the slot, then waits (holding no thread) until the slot is
    filled with ``submit()`` or given up with ``fail()``; calls queued after it run only after that.
    ``submit`` has the same signature as ``SequencedLane.submit``, so a slot can stand in for a lane.
    """

    def __init__(self, lane: SequencedLane, entry: _LaneEntry) -> None:
        self._lane = lane
        self._entry = entry

    def __repr__(self) -> str:
        return f"LaneSlot({self._entry.label!r}, filled={self._entry.ready})"

    @property
    def lane(self) -> SequencedLane:
        """The lane this slot belongs to."""
        return self._lane

    @property
    def filled(self) -> bool:
        """True once ``submit()`` or ``fail()`` was called."""
        return self._entry.ready

    def submit(self, fn: Callable[[], T], *, label: str = "") -> Future[T]:
        """Fill the slot with ``fn``; it runs after every earlier call of the lane finished.

        Raises:
            RuntimeError: the slot was already filled or failed.
            ClientClosedError: the executor is closed (the lane's queued calls are failed with it).
        """
        return self._lane._fill(self._entry, fn, None, label)

    def fail(self, exc: BaseException) -> None:
        """Give up the slot: when the lane reaches it, it is poisoned with ``exc`` (later calls fail fast
        with LanePoisonedError) instead of waiting forever for a call that will never come."""
        self._lane._fill(self._entry, None, exc, "")


class SequencedLane:
    """FIFO submission for one training model: calls run one at a time, in ``submit()`` order.

    A call runs even if its Future was cancelled (skipping it would leave a seq_id gap); cancelling
    only stops waiting for the result. After a call raises, the lane is poisoned: queued and later
    calls fail fast with LanePoisonedError naming the failed call. ``reserve()`` queues a place whose
    call is supplied later (LaneSlot); the lane waits at it without holding a thread.
    """

    def __init__(self, executor: Executor, *, name: str = "lane") -> None:
        self._executor = executor
        self._name = name
        self._lock = threading.Lock()
        self._queue: collections.deque[_LaneEntry] = collections.deque()
        self._running = False
        self.poisoned: BaseException | None = None
        self._poisoned_label = ""

    def __repr__(self) -> str:
        return f"SequencedLane({self._name!r}, queued={len(self._queue)}, poisoned={self.poisoned is not None})"

    def _poison_error(self, label: str) -> LanePoisonedError:
        cause = self.poisoned
        what = f"{type(cause).__name__}: {cause}" if cause is not None else "an error"
        err = LanePoisonedError(
            f"{label or 'request'} was not sent: an earlier request on {self._name} "
            f"({self._poisoned_label or 'request'}) failed with {what}. The server keeps requests of a model "
            "in seq_id order, so nothing more can be sent after a request that may not have been queued; "
            "this training client is unusable. Create a new one, e.g. from your last saved state with "
            "service.create_training_client_from_state_with_optimizer(path) (or create_training_client_from_state)."
        )
        err.__cause__ = cause
        return err

    def submit(self, fn: Callable[[], T], *, label: str = "") -> Future[T]:
        """Queue ``fn``; it runs after every earlier call of this lane finished.

        Raises:
            ClientClosedError: immediately, if the executor is closed.
        """
        entry = _LaneEntry(fn, label)
        with self._lock:
            if self.poisoned is not None:
                set_exception(entry.outer, self._poison_error(label))
                return entry.outer
            self._queue.append(entry)
            start = not self._running and self._queue[0] is entry
            if start:
                self._running = True
        if start:
            self._start_drain()
        return entry.outer

    def reserve(self, label: str = "") -> LaneSlot:
        """Queue a place for a call supplied later with ``LaneSlot.submit`` (or given up with ``fail``).

        Never raises and starts nothing: calls queued after the slot wait until it is filled.
        """
        entry = _LaneEntry(None, label)
        with self._lock:
            if self.poisoned is not None:
                entry.removed = True
                set_exception(entry.outer, self._poison_error(label))
            else:
                self._queue.append(entry)
        return LaneSlot(self, entry)

    def _fill(
        self, entry: _LaneEntry, fn: Callable[[], Any] | None, error: BaseException | None, label: str
    ) -> Future[Any]:
        with self._lock:
            if entry.ready:
                raise RuntimeError(f"lane slot {entry.label!r} was already filled")
            entry.fn, entry.error = fn, error
            if label:
                entry.label = label
            if entry.removed:  # the lane was failed/poisoned while the slot waited
                if not entry.outer.done():
                    set_exception(entry.outer, self._poison_error(entry.label))
                return entry.outer
            start = not self._running and bool(self._queue) and self._queue[0] is entry
            if start:
                self._running = True
        if start:
            self._start_drain()
        return entry.outer

    def _start_drain(self) -> None:
        try:
            self._executor.submit(self._drain)
        except ClientClosedError as exc:
            with self._lock:
                self._running = False
            self.fail_pending(exc)
            raise

    def _drain(self) -> None:
        while True:
            with self._lock:
                if not self._queue or not self._queue[0].ready:
                    self._running = False  # empty, or parked at a reserved slot until it is filled
                    return
                entry = self._queue.popleft()
                entry.removed = True
                if entry.error is not None and self.poisoned is None:
                    self.poisoned = entry.error
                    self._poisoned_label = entry.label
                    set_exception(entry.outer, entry.error)
                    continue
                poisoned = self.poisoned
            if poisoned is not None:
                set_exception(entry.outer, self._poison_error(entry.label))
                continue
            assert entry.fn is not None
            try:
                value = entry.fn()
            except BaseException as exc:  # noqa: BLE001
                with self._lock:
                    if self.poisoned is None:
                        self.poisoned = exc
                        self._poisoned_label = entry.label
                set_exception(entry.outer, exc)
            else:
                set_result(entry.outer, value)

    def fail_pending(self, exc: BaseException) -> None:
        """Fail every queued call and reserved slot, and poison the lane (used by close(cancel_pending=True))."""
        with self._lock:
            items = list(self._queue)
            self._queue.clear()
            if self.poisoned is None:
                self.poisoned = exc
                self._poisoned_label = "close"
            for entry in items:
                entry.removed = True
        for entry in items:
            set_exception(entry.outer, exc)
