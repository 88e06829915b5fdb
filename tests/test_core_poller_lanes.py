"""FuturePoller lanes over real HTTP: only the oldest unresolved call of a training lane is polled.

A small model simulator on the scripted server executes each model's requests strictly in seq order
(as the Tinker server does) and counts the retrieve_future requests in flight per model.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import CancelledError, Future
from typing import Any

import pytest

from tests.scripted_server import RecordedRequest, Reply, ScriptedServer, held_polls, wait_for
from tinker_sync._config import ClientConfig
from tinker_sync._exceptions import ClientClosedError, RequestFailedError
from tinker_sync._poller import FuturePoller, PolledCall
from tinker_sync._runtime import Runtime
from tinker_sync._transport import Transport

RF = "/api/v1/retrieve_future"
OP = "/api/v1/forward_backward"
T = 10.0
KEY = "tml-poller-lanes-0123456789"


class ModelSim:
    """Requests of one model finish in seq order, ``work_s`` apart; polls are held up to ``hold_s``.

    ``barrier``: groups whose requests finish only once every one of them has ``barrier_n`` polls in
    flight at the same time (proves concurrent polling without timing assertions).
    """

    def __init__(self, *, work_s: float = 0.01, hold_s: float = 1.0) -> None:
        self.work_s = work_s
        self.hold_s = hold_s
        self.cond = threading.Condition()
        self.submitted: dict[tuple[str, int], float] = {}  # (model, seq) -> submit time
        self.done_at: dict[tuple[str, int], float] = {}
        self.rids: dict[str, tuple[str, int]] = {}
        self.posts = 0
        self.inflight: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self.peak_total = 0
        self.fail: set[tuple[str, int]] = set()
        self.expire_once: set[tuple[str, int]] = set()
        self.barrier: dict[str, int] = {}  # model -> polls that must be in flight together
        self.barrier_open = threading.Event()
        self.polled_rids: list[str] = []

    def post(self, rec: RecordedRequest) -> Reply:
        body = rec.json()
        key = (str(body["model"]), int(body["seq"]))
        with self.cond:
            self.posts += 1
            rid = f"{key[0]}-{key[1]}-{self.posts}"
            self.rids[rid] = key
            if key not in self.submitted:  # a re-POST (410 resubmit) of the same seq is the same work
                self.submitted[key] = time.monotonic()
        return Reply(200, {"request_id": rid})

    def _finish_time(self, key: tuple[str, int]) -> float | None:
        model, seq = key
        if key in self.done_at:
            return self.done_at[key]
        if model in self.barrier and not self.barrier_open.is_set():
            return None
        prev = 0.0
        if seq > 0:
            p = self._finish_time((model, seq - 1))
            if p is None:
                return None
            prev = p
        sub = self.submitted.get(key)
        if sub is None:
            return None
        self.done_at[key] = max(sub, prev) + self.work_s
        return self.done_at[key]

    def retrieve(self, rec: RecordedRequest) -> Reply:
        rid = rec.json()["request_id"]
        key = self.rids[rid]
        model = key[0]
        with self.cond:
            self.polled_rids.append(rid)
            self.inflight[model] = self.inflight.get(model, 0) + 1
            self.peak[model] = max(self.peak.get(model, 0), self.inflight[model])
            self.peak_total = max(self.peak_total, sum(self.inflight.values()))
            if self.barrier and all(self.inflight.get(m, 0) >= n for m, n in self.barrier.items()):
                self.barrier_open.set()
            self.cond.notify_all()
            try:
                deadline = time.monotonic() + self.hold_s
                while True:
                    now = time.monotonic()
                    at = self._finish_time(key)
                    if at is not None and at <= now:
                        break
                    if now >= deadline:
                        return Reply(200, {"type": "try_again", "request_id": rid, "queue_state": "active"})
                    self.cond.wait(min(deadline - now, at - now if at is not None else 0.05, 0.05))
                if key in self.expire_once:
                    self.expire_once.discard(key)
                    return Reply(410, {"detail": "expired"})
                if key in self.fail:
                    return Reply(200, {"error": f"seq {key[1]} failed", "category": "user"})
                return Reply(200, {"model": model, "seq": key[1]})
            finally:  # counted out before the answer is written: the client cannot poll again sooner
                self.inflight[model] -= 1


@pytest.fixture
def sim() -> Iterator[tuple[ScriptedServer, ModelSim]]:
    model = ModelSim()
    with ScriptedServer() as srv:
        srv.default(OP, model.post)
        srv.default(RF, model.retrieve)
        yield srv, model


@pytest.fixture
def runtime(sim: tuple[ScriptedServer, ModelSim]) -> Iterator[Runtime]:
    srv, _ = sim
    rt = Runtime(ClientConfig(base_url=srv.url, api_key=KEY))
    try:
        yield rt
    finally:
        rt.close(cancel_pending=True, timeout_s=5.0)


def _submit(rt: Runtime, model: str, seq: int, lane: Any) -> Future[Any]:
    return rt.submit_polled(OP, {"model": model, "seq": seq}, None, request_type="ForwardBackward", lane=lane)


def test_pipelined_lane_polls_only_its_oldest_call(sim: tuple[ScriptedServer, ModelSim], runtime: Runtime) -> None:
    _, model = sim
    lane = runtime.new_lane("model m1")
    peak_threads = 0
    futs = [_submit(runtime, "m1", i, lane) for i in range(20)]
    order: list[int] = []
    lock = threading.Lock()

    def record(f: Future[Any]) -> None:
        with lock:
            order.append(f.result()["seq"])

    for f in futs:
        f.add_done_callback(record)
    deadline = time.monotonic() + T
    while not all(f.done() for f in futs) and time.monotonic() < deadline:
        peak_threads = max(peak_threads, runtime.poller.threads())
        time.sleep(0.005)
    assert [f.result(timeout=T) for f in futs] == [{"model": "m1", "seq": i} for i in range(20)]
    assert order == list(range(20))  # resolved in seq order
    assert model.peak["m1"] == 1  # never two polls of the lane in flight at once
    # each call was polled only once it was the oldest: no poll of seq k+1 before seq k's last poll
    seqs = [model.rids[r][1] for r in model.polled_rids]
    assert seqs == sorted(seqs)
    assert peak_threads <= 4


def test_two_models_poll_concurrently(sim: tuple[ScriptedServer, ModelSim], runtime: Runtime) -> None:
    _, model = sim
    model.barrier = {"a": 1, "b": 1}  # nothing finishes until both models have a poll in flight together
    lanes = {m: runtime.new_lane(f"model {m}") for m in "ab"}
    futs = {m: [_submit(runtime, m, i, lanes[m]) for i in range(5)] for m in "ab"}
    for m in "ab":
        assert [f.result(timeout=T) for f in futs[m]] == [{"model": m, "seq": i} for i in range(5)]
    assert model.peak == {"a": 1, "b": 1}
    assert model.peak_total == 2


def test_unlaned_calls_poll_concurrently_beside_a_lane(sim: tuple[ScriptedServer, ModelSim], runtime: Runtime) -> None:
    _, model = sim
    # Each "sample" is its own model here; all 6 must hold a poll at the same moment to finish.
    model.barrier = {f"s{i}": 1 for i in range(6)}
    lane = runtime.new_lane("model m1")
    train = [_submit(runtime, "m1", i, lane) for i in range(8)]
    samples = [_submit(runtime, f"s{i}", 0, None) for i in range(6)]
    assert [f.result(timeout=T) for f in samples] == [{"model": f"s{i}", "seq": 0} for i in range(6)]
    assert [f.result(timeout=T) for f in train] == [{"model": "m1", "seq": i} for i in range(8)]
    assert model.peak["m1"] == 1


def test_a_failed_head_releases_the_next(sim: tuple[ScriptedServer, ModelSim], runtime: Runtime) -> None:
    _, model = sim
    model.fail = {("m1", 0), ("m1", 3)}
    lane = runtime.new_lane("model m1")
    futs = [_submit(runtime, "m1", i, lane) for i in range(6)]
    for i, f in enumerate(futs):
        if i in (0, 3):
            with pytest.raises(RequestFailedError, match=f"seq {i} failed"):
                f.result(timeout=T)
        else:
            assert f.result(timeout=T) == {"model": "m1", "seq": i}
    assert model.peak["m1"] == 1


def test_a_410_on_the_head_resubmits_and_keeps_the_order(
    sim: tuple[ScriptedServer, ModelSim], runtime: Runtime
) -> None:
    srv, model = sim
    model.expire_once = {("m1", 1)}
    lane = runtime.new_lane("model m1")
    futs = [_submit(runtime, "m1", i, lane) for i in range(4)]
    assert [f.result(timeout=T) for f in futs] == [{"model": "m1", "seq": i} for i in range(4)]
    assert len(srv.requests_to(OP)) == 5  # seq 1 was re-sent once
    assert model.peak["m1"] == 1


# -- the poller alone, with a server that holds each poll until its request id is released ----------


@pytest.fixture
def held() -> Iterator[tuple[ScriptedServer, dict[str, threading.Event]]]:
    with held_polls(0.5) as server_and_events:
        yield server_and_events


def _event(events: dict[str, threading.Event], rid: str) -> threading.Event:
    return events.setdefault(rid, threading.Event())



def _polled(srv: ScriptedServer) -> set[str]:
    return {r.json()["request_id"] for r in srv.requests_to(RF)}


def _track(poller: FuturePoller, rid: str, lane: object | None) -> Future[Any]:
    fut: Future[Any] = Future()
    poller.track(PolledCall(request_id=rid, expected_type=None, request_type="ForwardBackward", future=fut, lane=lane))
    return fut


@pytest.fixture
def poller(held: tuple[ScriptedServer, dict[str, threading.Event]]) -> Iterator[FuturePoller]:
    srv, _ = held
    transport = Transport(ClientConfig(base_url=srv.url, api_key=KEY))
    p = FuturePoller(transport, max_pollers=16, idle_retire_s=0.1)
    try:
        yield p
    finally:
        p.close(cancel_pending=True, join_timeout_s=5.0)
        transport.close()


def test_cancelling_the_head_releases_the_next_at_once(
    held: tuple[ScriptedServer, dict[str, threading.Event]], poller: FuturePoller
) -> None:
    srv, events = held
    futs = [_track(poller, f"r{i}", "L") for i in range(3)]
    assert wait_for(lambda: "r0" in _polled(srv))
    assert _polled(srv) == {"r0"} and poller.tracked() == 3
    futs[0].cancel()  # its poll is still held by the server; r1 must not wait for it
    assert wait_for(lambda: "r1" in _polled(srv))
    assert "r2" not in _polled(srv)
    _event(events, "r1").set()
    assert futs[1].result(timeout=T) == {"rid": "r1"}
    _event(events, "r2").set()
    assert futs[2].result(timeout=T) == {"rid": "r2"}
    with pytest.raises(CancelledError):
        futs[0].result(timeout=T)
    assert wait_for(lambda: poller.tracked() == 0)


def test_a_cancelled_waiting_call_is_dropped_without_a_poll(
    held: tuple[ScriptedServer, dict[str, threading.Event]], poller: FuturePoller
) -> None:
    srv, events = held
    futs = [_track(poller, f"w{i}", "L") for i in range(3)]
    assert wait_for(lambda: "w0" in _polled(srv))
    futs[1].cancel()
    assert poller.tracked() == 2  # forgotten at once, not when its turn comes
    _event(events, "w0").set()
    _event(events, "w2").set()
    assert futs[0].result(timeout=T) == {"rid": "w0"}
    assert futs[2].result(timeout=T) == {"rid": "w2"}
    assert "w1" not in _polled(srv)
    assert wait_for(lambda: poller.tracked() == 0)


def test_close_fails_waiting_lane_calls(
    held: tuple[ScriptedServer, dict[str, threading.Event]], poller: FuturePoller
) -> None:
    srv, _ = held
    futs = [_track(poller, f"c{i}", "L") for i in range(4)]
    other = _track(poller, "x0", "M")
    assert wait_for(lambda: {"c0", "x0"} <= _polled(srv))
    poller.close(cancel_pending=True, join_timeout_s=5.0)
    for f in [*futs, other]:
        with pytest.raises(ClientClosedError):
            f.result(timeout=T)
    assert poller.tracked() == 0
    assert not {"c1", "c2", "c3"} & _polled(srv)


def test_clean_close_waits_for_every_lane_call(
    held: tuple[ScriptedServer, dict[str, threading.Event]], poller: FuturePoller
) -> None:
    _, events = held
    futs = [_track(poller, f"d{i}", "L") for i in range(3)]
    for i in range(3):
        _event(events, f"d{i}").set()
    poller.close(cancel_pending=False, join_timeout_s=5.0)
    assert [f.result(timeout=0) for f in futs] == [{"rid": f"d{i}"} for i in range(3)]


def test_a_training_loop_against_the_local_server(local_server: Any) -> None:
    """End to end: 10 pipelined forward_backward + optim_step pairs on one model, few poll threads."""
    from tests.conftest import TEST_API_KEY
    from tinker_sync import types
    from tinker_sync.service_client import ServiceClient

    with ServiceClient(api_key=TEST_API_KEY, base_url=local_server.url) as service:
        training = service.create_lora_training_client("tinker-sync/tiny-byte", rank=4, seed=0).result(60)
        inputs: dict[str, Any] = {"target_tokens": [2, 3, 4, 5], "weights": [1.0, 1.0, 1.0, 1.0]}  # lists coerced
        datum = types.Datum(model_input=types.ModelInput.from_ints([1, 2, 3, 4]), loss_fn_inputs=inputs)
        futs: list[Future[Any]] = []
        for _ in range(10):
            futs.append(training.forward_backward([datum], "cross_entropy"))
            futs.append(training.optim_step(types.AdamParams(learning_rate=1e-2)))
        runtime = training._runtime
        peak = 0
        deadline = time.monotonic() + 60
        while not all(f.done() for f in futs) and time.monotonic() < deadline:
            peak = max(peak, runtime.poller.threads())
            time.sleep(0.002)
        results = [f.result(timeout=60) for f in futs]
        losses = [r.metrics["loss:sum"] for r in results[::2]]
        assert losses[-1] < losses[0]  # the steps were applied in order
        assert all(isinstance(r, types.OptimStepResponse) for r in results[1::2])
        assert peak <= 4
