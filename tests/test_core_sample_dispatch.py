"""Sample dispatch has its own bounded pool (real HTTP against tests/scripted_server.py)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from tests.scripted_server import RecordedRequest, Reply, ScriptedServer
from tests.test_core_http import make_runtime
from tinker_sync._runtime import Runtime

RF = "/api/v1/retrieve_future"
T = 10


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer() as srv:
        yield srv


def test_busy_workers_do_not_starve_sampling(server: ScriptedServer) -> None:
    release = threading.Event()

    def slow(rec: RecordedRequest) -> Reply:
        release.wait(T)
        return Reply(200, {"ok": True})

    server.default("/api/v1/slow", slow)
    server.default("/api/v1/asample", Reply(200, {"request_id": "r1"}))
    server.default(RF, Reply(200, {"done": 1}))
    rt: Runtime = make_runtime(server, max_workers=1, max_sample_dispatchers=2)
    try:
        blocked = rt.submit_request("POST", "/api/v1/slow", body={})  # holds the only worker
        sample = rt.submit_polled("/api/v1/asample", {"i": 1}, None, request_type="Sample", sampling=True)
        assert sample.result(timeout=T) == {"done": 1}
        assert not blocked.done()  # the sample finished while every general worker was busy
        release.set()
        assert blocked.result(timeout=T) == {"ok": True}
    finally:
        release.set()
        rt.close(cancel_pending=True)


def test_concurrent_sample_dispatches_are_bounded_by_the_pool(server: ScriptedServer) -> None:
    lock = threading.Lock()
    now = [0]
    peak = [0]
    count = iter(range(1000))

    def dispatch(rec: RecordedRequest) -> Reply:
        with lock:
            now[0] += 1
            peak[0] = max(peak[0], now[0])
        threading.Event().wait(0.02)
        with lock:
            now[0] -= 1
        return Reply(200, {"request_id": f"r{next(count)}"})

    server.default("/api/v1/asample", dispatch)
    server.default(RF, Reply(200, {"done": 1}))
    rt = make_runtime(server, max_workers=4, max_sample_dispatchers=3)
    try:
        futs = [
            rt.submit_polled("/api/v1/asample", {"i": i}, None, request_type="Sample", sampling=True)
            for i in range(24)
        ]
        assert all(f.result(timeout=T) == {"done": 1} for f in futs)
    finally:
        rt.close(cancel_pending=True)
    assert 1 <= peak[0] <= 3
