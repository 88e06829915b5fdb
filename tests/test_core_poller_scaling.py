"""FuturePoller thread scaling over real HTTP: no head-of-line blocking, bounded threads, idle retirement."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future

import pytest

from tests.scripted_server import ScriptedServer, held_polls, wait_for
from tinker_sync._config import ClientConfig
from tinker_sync._poller import FuturePoller, PolledCall
from tinker_sync._transport import Transport

RF = "/api/v1/retrieve_future"
T = 10


@pytest.fixture
def held() -> Iterator[tuple[ScriptedServer, dict[str, threading.Event]]]:
    """A server that holds every poll until its request id is released (like a long poll)."""
    with held_polls(8.0) as server_and_events:
        yield server_and_events


def _event(events: dict[str, threading.Event], rid: str) -> threading.Event:
    return events.setdefault(rid, threading.Event())



def _poller(srv: ScriptedServer, **kw: object) -> tuple[FuturePoller, Transport]:
    transport = Transport(ClientConfig(base_url=srv.url, api_key="tml-poller-scaling", max_pollers=16))
    return FuturePoller(transport, **kw), transport  # type: ignore[arg-type]


def _track(poller: FuturePoller, rid: str) -> Future[object]:
    fut: Future[object] = Future()
    poller.track(PolledCall(request_id=rid, expected_type=None, request_type="Forward", future=fut))
    return fut


def test_a_finished_result_is_not_stuck_behind_held_polls(
    held: tuple[ScriptedServer, dict[str, threading.Event]],
) -> None:
    srv, events = held
    poller, transport = _poller(srv, max_pollers=8, warm_pollers=1, idle_retire_s=0.1)
    try:
        futs = [_track(poller, f"r{i}") for i in range(8)]
        assert wait_for(lambda: len(srv.requests_to(RF)) == 8)  # every call holds its own poll
        _event(events, "r7").set()  # the LAST submitted finishes first
        assert futs[7].result(timeout=T) == {"rid": "r7"}
        assert not any(f.done() for f in futs[:7])
        for i in range(7):
            _event(events, f"r{i}").set()
        assert [f.result(timeout=T) for f in futs[:7]] == [{"rid": f"r{i}"} for i in range(7)]
        # surplus threads retire when idle, down to the warm one (which exits once nothing is tracked)
        assert wait_for(lambda: poller.threads() <= 1)
    finally:
        poller.close(cancel_pending=True)
        transport.close()


def test_poll_threads_never_exceed_max_pollers(held: tuple[ScriptedServer, dict[str, threading.Event]]) -> None:
    srv, events = held
    poller, transport = _poller(srv, max_pollers=3, warm_pollers=1, idle_retire_s=0.1)
    try:
        futs = [_track(poller, f"q{i}") for i in range(10)]
        assert wait_for(lambda: len(srv.requests_to(RF)) == 3)
        time.sleep(0.1)  # would show a 4th poll if the bound were broken
        assert len(srv.requests_to(RF)) == 3 and poller.threads() == 3
        for i in range(10):
            _event(events, f"q{i}").set()
        assert [f.result(timeout=T) for f in futs] == [{"rid": f"q{i}"} for i in range(10)]
        peak = max(int(r.header("X-Tinker-Request-Iteration") or 0) for r in srv.requests_to(RF))
        assert peak == 0  # each call needed exactly one poll
        started = list(poller._started)
    finally:
        poller.close(cancel_pending=True)
        transport.close()
    assert not [t for t in started if t.is_alive()]  # close() joined every thread it started
