"""Runtime.spawn: background tasks are registered, so close() sees, interrupts and bounds them."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from tests.scripted_server import Reply, ScriptedServer
from tinker_sync._config import ClientConfig
from tinker_sync._exceptions import ClientClosedError
from tinker_sync._retry import RetryPolicy
from tinker_sync._runtime import Runtime

KEY = "tml-spawn-secret-key-0123456"
T = 30  # hang guard for every wait


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer() as srv:
        srv.default("/api/v1/status", Reply(200, {"status": "building"}))
        yield srv


def make_runtime(srv: ScriptedServer) -> Runtime:
    return Runtime(ClientConfig(base_url=srv.url, api_key=KEY, max_workers=2, retry=RetryPolicy(initial_delay_s=0.01)))


def tinker_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("tinker-sync-") and t.is_alive()]


def close_in_thread(rt: Runtime, **kw: object) -> threading.Thread:
    closer = threading.Thread(target=rt.close, kwargs=kw, name="test-closer")
    closer.start()
    closer.join(T)
    assert not closer.is_alive(), "close() did not return"
    return closer


def test_clean_close_waits_for_a_task_that_ends(server: ScriptedServer) -> None:
    rt = make_runtime(server)

    def poll_three_times() -> int:
        for _ in range(3):
            rt.request("GET", "/api/v1/status")
            rt.pause(0.01)
        return 3

    fut = rt.spawn(poll_three_times, name="status poll")
    assert rt.pending_count() == 1
    close_in_thread(rt, timeout_s=T)
    assert fut.result(timeout=0) == 3
    assert len(server.requests_to("/api/v1/status")) == 3


def test_close_timeout_interrupts_a_polling_loop(server: ScriptedServer) -> None:
    rt = make_runtime(server)

    def poll_forever() -> None:
        while True:
            rt.request("GET", "/api/v1/status")
            rt.pause(0.05)

    fut = rt.spawn(poll_forever, name="archive wait")
    close_in_thread(rt, timeout_s=0.2)
    with pytest.raises(ClientClosedError):
        fut.result(timeout=0)
    assert tinker_threads() == []
    with pytest.raises(ClientClosedError, match="archive wait"):
        rt.spawn(poll_forever, name="archive wait")


def test_close_is_bounded_even_by_a_task_that_ignores_it(server: ScriptedServer) -> None:
    rt = make_runtime(server)
    release = threading.Event()
    fut = rt.spawn(lambda: release.wait(T), name="stubborn")  # waits without pause(): close cannot interrupt it
    try:
        close_in_thread(rt, timeout_s=0.1)
        assert not release.is_set() and fut.done()  # close returned while the task still ran; its Future failed
        with pytest.raises(ClientClosedError):
            fut.result(timeout=0)
    finally:
        release.set()
