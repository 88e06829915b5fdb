"""Batched polling (retrieve_futures) and sample cancels over real HTTP, negotiated with PollFeatures.

The scripted SessionSim keeps a sampling session's completion log the way a 0.38 server does.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import pytest

from tests.bench_poller import fan_out
from tests.scripted_server import ScriptedServer, SessionSim, wait_for
from tinker_sync._batch_poller import PollFeatures, SessionTarget
from tinker_sync._config import ClientConfig
from tinker_sync._exceptions import RequestFailedError
from tinker_sync._poller import FuturePoller, PolledCall
from tinker_sync._transport import Transport

RF = "/api/v1/retrieve_future"
RFS = "/api/v1/retrieve_futures"
CANCEL = "/api/v1/cancel_future"
T = 20.0
KEY = "tml-poller-batch-0123456789"
TARGET = SessionTarget("sess-1", 0)


@contextlib.contextmanager
def _serve(sim: SessionSim) -> Iterator[ScriptedServer]:
    with ScriptedServer() as srv:
        sim.install(srv)
        yield srv


@pytest.fixture
def sim() -> SessionSim:
    return SessionSim(hold_s=1.0)


@pytest.fixture
def srv(sim: SessionSim) -> Iterator[ScriptedServer]:
    with _serve(sim) as server:
        yield server


@contextlib.contextmanager
def _polling(srv: ScriptedServer, features: PollFeatures) -> Iterator[FuturePoller]:
    """A FuturePoller using ``features``, closed (pending calls failed) on exit."""
    transport = Transport(ClientConfig(base_url=srv.url, api_key=KEY))
    poller = FuturePoller(transport, max_pollers=16)
    poller.set_features(features)
    try:
        yield poller
    finally:
        poller.close(cancel_pending=True, join_timeout_s=5.0)
        transport.close()


def _track(poller: FuturePoller, sim: SessionSim, rid: str, target: SessionTarget | None = TARGET) -> Future[Any]:
    sim.add(rid)
    fut: Future[Any] = Future()
    poller.track(PolledCall(request_id=rid, expected_type=None, request_type="Sample", future=fut, batch=target))
    return fut


@pytest.mark.parametrize("n", [200, 2000])
def test_fan_out_costs_one_long_poll_per_session_not_per_future(n: int) -> None:
    counts = fan_out(n, batched=True, chunks=4, max_pollers=16)
    # every sample is fetched exactly once (the server answers at once: it is complete), never re-polled
    assert counts["retrieve_future"] == n
    # long polls and acks: a handful per completion group, however many samples are in flight
    assert counts["retrieve_futures"] <= 4 * 3 + 6
    assert counts["peak_concurrent_batch_polls"] == 1
    # threads: the fetch pool (max_pollers) + one batch thread, whatever the fan-out
    assert counts["peak_client_threads"] <= 16 + 1 and counts["batch_threads"] == 1
    assert counts["bad_targets"] == 0


def test_batched_body_and_failed_completions(sim: SessionSim, srv: ScriptedServer) -> None:
    with _polling(srv, PollFeatures(batched=True)) as poller:
        ok, bad = _track(poller, sim, "ok-1"), _track(poller, sim, "bad-1")
        assert wait_for(lambda: sim.batch_inflight == 1)
        sim.complete(["bad-1"], failed=True)
        sim.complete(["ok-1"])
        assert ok.result(timeout=T) == {"rid": "ok-1"}
        with pytest.raises(RequestFailedError, match="bad-1 failed"):
            bad.result(timeout=T)
        first = srv.requests_to(RFS)[0].json()
        assert first["target"] == {"type": "sampling_session", "sampling_session_id": "sess-1", "cloned_sampler_id": 0}
        assert first["prev_cursor"] == 0 and first["retrieved_request_ids"] == [] and "timeout" not in first
        # the acknowledgement carries the cursor and both fetched ids, as an ack-only poll
        assert wait_for(lambda: sim.retrieved == {"ok-1", "bad-1"}, T)
        ack = srv.requests_to(RFS)[-1].json()
        assert ack["timeout"] == 0 and ack["prev_cursor"] == 2


def test_server_without_retrieve_futures_falls_back_to_per_future_polls() -> None:
    sim = SessionSim(hold_s=2.0, batch=False)
    with _serve(sim) as srv, _polling(srv, PollFeatures(batched=True)) as poller:
        futs = [_track(poller, sim, f"f{i}") for i in range(3)]
        assert wait_for(lambda: len({r.json()["request_id"] for r in srv.requests_to(RF)}) == 3)
        sim.complete(["f0", "f1", "f2"])
        assert [f.result(timeout=T) for f in futs] == [{"rid": f"f{i}"} for i in range(3)]
        assert len(srv.requests_to(RFS)) == 1  # tried once, then per-future polling for good
        later = _track(poller, sim, "f3")
        sim.complete(["f3"])
        assert later.result(timeout=T) == {"rid": "f3"}
        assert len(srv.requests_to(RFS)) == 1


def test_a_restarted_server_fails_waiting_samples_instead_of_hanging(sim: SessionSim, srv: ScriptedServer) -> None:
    from tinker_sync._exceptions import NotFoundError

    with _polling(srv, PollFeatures(batched=True)) as poller:
        first, lost = _track(poller, sim, "a0"), _track(poller, sim, "a1")
        assert wait_for(lambda: sim.batch_inflight == 1)
        sim.complete(["a0"])
        assert first.result(timeout=T) == {"rid": "a0"}
        assert wait_for(lambda: sim.batch_inflight == 1)
        sim.restart()  # the completion log starts over: a1 will never be reported
        with pytest.raises(NotFoundError, match="a1"):
            lost.result(timeout=T)


def test_a_restart_before_any_completion_is_found_by_the_probe(
    sim: SessionSim, srv: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tinker_sync import _batch_poller
    from tinker_sync._exceptions import NotFoundError

    monkeypatch.setattr(_batch_poller, "_PROBE_EVERY_S", 0.2)  # a minute in production
    with _polling(srv, PollFeatures(batched=True)) as poller:
        futs = [_track(poller, sim, f"b{i}") for i in range(3)]
        assert wait_for(lambda: sim.batch_inflight == 1)
        sim.restart()  # nothing was ever reported: the cursor stays 0, only the probe can tell
        for i, fut in enumerate(futs):
            with pytest.raises(NotFoundError, match=f"b{i}"):
                fut.result(timeout=T)
        probes = [r for r in srv.requests_to(RF) if r.json().get("allow_metadata_only") is True]
        assert probes and probes[0].json()["request_id"] == "b0"


def test_without_the_flag_samples_are_polled_one_by_one(sim: SessionSim, srv: ScriptedServer) -> None:
    with _polling(srv, PollFeatures(batched=False)) as poller:
        fut = _track(poller, sim, "p0")
        assert wait_for(lambda: len(srv.requests_to(RF)) == 1)
        sim.complete(["p0"])
        assert fut.result(timeout=T) == {"rid": "p0"}
        assert srv.requests_to(RFS) == []


def test_a_completion_reported_before_its_call_registers_is_kept(sim: SessionSim, srv: ScriptedServer) -> None:
    with _polling(srv, PollFeatures(batched=True)) as poller:
        first = _track(poller, sim, "e0")
        assert wait_for(lambda: sim.batch_inflight == 1)
        sim.add("e1")
        sim.complete(["e1", "e0"])  # e1 finishes before the client has tracked it
        assert first.result(timeout=T) == {"rid": "e0"}
        late = _track(poller, sim, "e1")
        assert late.result(timeout=T) == {"rid": "e1"}


def test_cancel_tells_the_server_only_when_the_flag_is_on(sim: SessionSim, srv: ScriptedServer) -> None:
    with _polling(srv, PollFeatures(batched=True, cancel=False)) as poller:
        quiet = _track(poller, sim, "c-off")
        assert wait_for(lambda: sim.batch_inflight == 1)
        assert quiet.cancel()
        poller.set_features(PollFeatures(batched=True, cancel=True))  # the dynamic config changed
        loud = _track(poller, sim, "c-on")
        direct = _track(poller, sim, "c-direct", target=None)  # polled per future: cancelled too
        assert loud.cancel() and direct.cancel()
        # one sender thread sends in order: had c-off been sent, it would be there before these
        assert wait_for(lambda: sorted(sim.cancelled) == ["c-direct", "c-on"], T)
        # the server records a cancel before it answers; the client counts it once the answer is back
        assert wait_for(lambda: poller.batch_stats()["cancels_sent"] == 2, T)
        assert wait_for(lambda: poller.tracked() == 0)
        assert all(r.json() == {"request_id": r.json()["request_id"]} for r in srv.requests_to(CANCEL))


def test_a_training_call_is_never_batched(sim: SessionSim, srv: ScriptedServer) -> None:
    with _polling(srv, PollFeatures(batched=True, cancel=True)) as poller:
        sim.add("t0")
        fut: Future[Any] = Future()
        poller.track(PolledCall(request_id="t0", expected_type=None, request_type="ForwardBackward", future=fut,
                                batch=TARGET, lane="model-1"))
        assert wait_for(lambda: len(srv.requests_to(RF)) == 1)
        sim.complete(["t0"])
        assert fut.result(timeout=T) == {"rid": "t0"}
        assert srv.requests_to(RFS) == []


def test_close_fails_calls_waiting_on_the_batch(sim: SessionSim, srv: ScriptedServer) -> None:
    from tinker_sync._exceptions import ClientClosedError

    with _polling(srv, PollFeatures(batched=True)) as poller:
        futs = [_track(poller, sim, f"z{i}") for i in range(5)]
        assert wait_for(lambda: sim.batch_inflight == 1)
    for f in futs:
        with pytest.raises(ClientClosedError):
            f.result(timeout=T)
    assert not [t for t in threading.enumerate() if t.name.startswith("tinker-sync-poller") and t.is_alive()]


def test_sampling_client_samples_ride_the_session_poll() -> None:
    """End to end through Runtime.submit_polled: sample calls are tagged with their session and clone."""
    from tinker_sync import types
    from tinker_sync._runtime import Runtime
    from tinker_sync.sampling_client import SamplingClient

    def sample_result(rid: str) -> dict[str, Any]:
        seq = int(rid.split("-")[2])
        return {"type": "sample", "sequences": [{"tokens": [seq], "logprobs": [-0.5], "stop_reason": "length"}]}

    sim = SessionSim(hold_s=2.0, result=sample_result)
    with _serve(sim) as srv:
        rt = Runtime(ClientConfig(base_url=srv.url, api_key=KEY))
        rt.poller.set_features(PollFeatures(batched=True))
        client = SamplingClient(None, "sess-1", runtime=rt, seq_start=3_000_000_000)  # a clone: id 3
        try:
            params = types.SamplingParams(max_tokens=1)
            futs = [client.sample(types.ModelInput.from_ints([1, 2]), 1, params) for _ in range(40)]
            assert wait_for(lambda: len(sim.pending) == 40 and sim.batch_inflight == 1, T)
            sim.complete(sorted(sim.pending))
            tokens = sorted(f.result(timeout=T).sequences[0].tokens[0] for f in futs)
            assert tokens == [3_000_000_000 + i for i in range(40)]
            targets = {json.dumps(r.json()["target"], sort_keys=True) for r in srv.requests_to(RFS)}
            assert targets == {json.dumps({"type": "sampling_session", "sampling_session_id": "sess-1",
                                           "cloned_sampler_id": 3}, sort_keys=True)}
            assert len(srv.requests_to(RF)) == 40
        finally:
            client.close()


def test_gather_delay_follows_only_answers_that_brought_completions() -> None:
    from tinker_sync._batch_poller import _GATHER_S, BatchRetry, BatchState, Completed, Completion, gather_delay_s

    state = BatchState()
    done = Completion(request_id="r-1")
    assert gather_delay_s(Completed((done,), state), waiting=True) == _GATHER_S > 0
    assert gather_delay_s(Completed((done,), state), waiting=False) == 0.0  # nothing left to gather
    assert gather_delay_s(Completed((), state), waiting=True) == 0.0  # held to its end with nothing: poll again
    assert gather_delay_s(BatchRetry(1.5, state), waiting=True) == 0.0  # a back-off is the decision's own delay


def test_a_call_made_after_the_last_one_finished_is_polled_for_without_gathering(
    sim: SessionSim, srv: ScriptedServer, monkeypatch: pytest.MonkeyPatch,
) -> None:
    import time

    from tinker_sync import _batch_poller

    monkeypatch.setattr(_batch_poller, "_GATHER_S", 0.5)
    with _polling(srv, PollFeatures(batched=True)) as poller:
        first = _track(poller, sim, "s-1")
        assert wait_for(lambda: sim.batch_inflight == 1)
        sim.complete(["s-1"])
        assert first.result(timeout=T) == {"rid": "s-1"}  # nothing else waits: no gathering after this answer
        second = _track(poller, sim, "s-2")
        tracked_at = time.monotonic()
        assert wait_for(lambda: sim.batch_inflight == 1, T)
        polled = [r for r in srv.requests_to(RFS) if r.received_at >= tracked_at]
        assert polled and polled[0].received_at - tracked_at < 0.5
        sim.complete(["s-2"])
        assert second.result(timeout=T) == {"rid": "s-2"}


def test_the_next_batched_poll_waits_to_gather_but_announced_results_are_fetched_at_once(
    sim: SessionSim, srv: ScriptedServer, monkeypatch: pytest.MonkeyPatch,
) -> None:
    import time

    from tinker_sync import _batch_poller

    monkeypatch.setattr(_batch_poller, "_GATHER_S", 0.3)  # long enough to tell apart from any scheduling delay
    with _polling(srv, PollFeatures(batched=True)) as poller:
        first, second = _track(poller, sim, "g-1"), _track(poller, sim, "g-2")
        assert wait_for(lambda: sim.batch_inflight == 1)
        completed_at = time.monotonic()
        sim.complete(["g-1"])
        assert first.result(timeout=T) == {"rid": "g-1"}
        assert time.monotonic() - completed_at < 0.3  # the announced result did not wait for the gathering
        assert wait_for(lambda: len(srv.requests_to(RFS)) >= 2, T)
        assert srv.requests_to(RFS)[1].received_at - completed_at >= 0.3
        sim.complete(["g-2"])
        assert second.result(timeout=T) == {"rid": "g-2"}
