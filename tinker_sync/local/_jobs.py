"""Futures and per-model execution lanes of the local server.

A :class:`ServerFuture` is what ``retrieve_future`` polls. A :class:`ModelLane` runs one model's
sequenced requests strictly in ``seq_id`` order on its own thread, waiting for gaps, so different models
train concurrently while one model never applies a step twice or out of order.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["FutureTable", "JobError", "ModelLane", "ServerFuture", "StepCallback", "request_id_for"]


def request_id_for(*parts: object) -> str:
    """A deterministic request id for a logical request (retries map to the same id)."""
    digest = hashlib.sha256("\x00".join(str(p) for p in parts).encode("utf-8")).hexdigest()[:24]
    return f"req-{digest}"


class JobError(Exception):
    """A job failed; ``category`` is "user" (bad input) or "server"."""

    def __init__(self, message: str, category: str = "user") -> None:
        super().__init__(message)
        self.message = message
        self.category = category


class ServerFuture:
    """The server side of one future: completes once with a result or an error."""

    def __init__(self, request_id: str, request_type: str, endpoint: str, owner: str,
                 model_id: str | None = None) -> None:
        self.request_id = request_id
        self.request_type = request_type  # X-Tinker-Request-Type name, e.g. "ForwardBackward"
        self.endpoint = endpoint
        self.owner = owner
        self.model_id = model_id
        self.extra: dict[str, Any] = {}  # extra keys for the submission handle
        self.created_at = time.time()  # wall clock, for the session trace export
        self._done = threading.Event()
        self.result: Any = None
        self.error: JobError | None = None
        self.try_again_rounds = 0  # injected try_again answers still to give
        self.expire_once = False  # injected: the next poll answers 410

    def set_result(self, value: Any) -> None:
        if not self._done.is_set():
            self.result = value
            self._done.set()

    def set_error(self, error: JobError) -> None:
        if not self._done.is_set():
            self.error = error
            self._done.set()

    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout_s: float) -> bool:
        return self._done.wait(timeout_s)

    def execute(self, fn: Callable[[], Any]) -> tuple[Any, JobError | None]:
        """Run ``fn`` without completing: (value, None) or (None, error); ValueError/JobError are user errors."""
        try:
            return fn(), None
        except JobError as exc:
            return None, exc
        except (ValueError, KeyError, TypeError) as exc:
            logger.info("request %s (%s) failed: %s", self.request_id, self.request_type, exc)
            return None, JobError(str(exc).strip("'\"") or type(exc).__name__, "user")
        except Exception as exc:
            logger.exception("request %s (%s) crashed", self.request_id, self.request_type)
            return None, JobError(f"internal error: {type(exc).__name__}: {exc}", "server")

    def complete(self, value: Any, error: JobError | None) -> None:
        if error is not None:
            self.set_error(error)
        else:
            self.set_result(value)

    def run(self, fn: Callable[[], Any]) -> None:
        """Run ``fn`` and complete with its value (see :meth:`execute`)."""
        self.complete(*self.execute(fn))


class FutureTable:
    """All futures by request id (bounded: completed ones beyond ``max_done`` are forgotten, oldest first)."""

    def __init__(self, *, max_done: int = 20_000) -> None:
        self._lock = threading.Lock()
        self._futures: dict[str, ServerFuture] = {}
        self._max_done = max_done

    def get(self, request_id: str) -> ServerFuture | None:
        with self._lock:
            return self._futures.get(request_id)

    def get_or_add(self, fut: ServerFuture) -> tuple[ServerFuture, bool]:
        """Register ``fut`` unless its request id exists; returns (the registered future, created)."""
        with self._lock:
            existing = self._futures.get(fut.request_id)
            if existing is not None:
                return existing, False
            self._futures[fut.request_id] = fut
            if len(self._futures) > self._max_done * 2:
                done = [k for k, f in self._futures.items() if f.done()]
                for k in done[: len(done) - self._max_done]:
                    del self._futures[k]
            return fut, True

    def remove(self, request_id: str) -> None:
        with self._lock:
            self._futures.pop(request_id, None)

    def pending(self) -> list[ServerFuture]:
        with self._lock:
            return [f for f in self._futures.values() if not f.done()]


StepCallback = Callable[[int | None, "ServerFuture | None", Any, "JobError | None"], None]


class ModelLane:
    """Runs one model's jobs in seq_id order on a dedicated thread.

    ``submit(seq_id, future, fn)`` queues a job; the worker runs seq ``next_seq``, then ``next_seq + 1``,
    ... waiting while a seq_id is missing. Unsequenced jobs (seq_id None) run when no sequenced job is
    ready. ``skip(seq_id)`` marks a seq as consumed without work (a request refused at submission).

    ``on_step(seq_id, future, value, error)`` (optional) runs on the lane thread after each job and each
    skipped seq (future None), BEFORE the future completes: a client that sees a result can rely on
    whatever ``on_step`` recorded (e.g. the persisted model state). Its exceptions are logged.
    """

    def __init__(self, name: str, *, first_seq: int, on_step: StepCallback | None = None) -> None:
        self.name = name
        self._on_step = on_step
        self._cond = threading.Condition()
        self._next_seq = first_seq
        self._queued: dict[int, tuple[ServerFuture, Callable[[], Any]] | None] = {}
        self._unsequenced: list[tuple[ServerFuture, Callable[[], Any]]] = []
        self._closed: str | None = None
        self._thread = threading.Thread(target=self._loop, name=f"tinker-sync-local-{name}", daemon=True)
        self._thread.start()

    @property
    def next_seq(self) -> int:
        with self._cond:
            return self._next_seq

    def accepts(self, seq_id: int) -> str | None:
        """None if ``seq_id`` can still be queued, else why not."""
        with self._cond:
            if self._closed is not None:
                return self._closed
            if seq_id < self._next_seq:
                return f"seq_id {seq_id} was already executed (this model is at seq_id {self._next_seq})"
            if seq_id in self._queued:
                return f"seq_id {seq_id} is already queued"
        return None

    def submit(self, seq_id: int | None, fut: ServerFuture, fn: Callable[[], Any]) -> None:
        with self._cond:
            if self._closed is not None:
                fut.set_error(JobError(self._closed, "user"))
                return
            if seq_id is None:
                self._unsequenced.append((fut, fn))
            elif seq_id < self._next_seq:  # lost a race with a refused duplicate that consumed the seq
                fut.set_error(JobError(f"seq_id {seq_id} was already consumed; use the next seq_id", "user"))
                return
            else:
                self._queued[seq_id] = (fut, fn)
            self._cond.notify_all()

    def skip(self, seq_id: int) -> None:
        with self._cond:
            if seq_id >= self._next_seq and seq_id not in self._queued:
                self._queued[seq_id] = None
                self._cond.notify_all()

    def close(self, reason: str, *, fail_queued: bool = True) -> None:
        """Stop the worker; queued jobs fail with ``reason`` (or stay pending: ``fail_queued=False``, used at
        shutdown, where journaled work resumes after a restart instead)."""
        with self._cond:
            if self._closed is None:
                self._closed = reason
            jobs = [j for j in self._queued.values() if j is not None] + self._unsequenced
            self._queued.clear()
            self._unsequenced.clear()
            self._cond.notify_all()
        if fail_queued:
            for fut, _ in jobs:
                fut.set_error(JobError(reason, "user"))

    def _loop(self) -> None:
        while True:
            seq: int | None = None
            with self._cond:
                while True:
                    if self._closed is not None:
                        return
                    if self._next_seq in self._queued:
                        seq = self._next_seq
                        job = self._queued.pop(seq)
                        self._next_seq += 1
                        break
                    if self._unsequenced:
                        job = self._unsequenced.pop(0)
                        break
                    self._cond.wait()
            if job is None:  # a skipped seq
                self._step(seq, None, None, None)
                continue
            fut, fn = job
            value, error = fut.execute(fn)
            self._step(seq, fut, value, error)
            fut.complete(value, error)

    def _step(self, seq_id: int | None, fut: ServerFuture | None, value: Any, error: JobError | None) -> None:
        if self._on_step is None:
            return
        try:
            self._on_step(seq_id, fut, value, error)
        except Exception:
            logger.exception("lane %s: recording the state after seq_id %s failed", self.name, seq_id)

    def join(self, timeout_s: float) -> None:
        """Wait (bounded) for the worker to finish its current job after :meth:`close`."""
        if self._thread is not threading.current_thread():
            self._thread.join(timeout_s)
