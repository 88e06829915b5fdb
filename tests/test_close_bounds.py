"""close(timeout_s) bounds every background task, RestClient loops included (issue: a trace export
poll kept close(timeout_s=2) waiting 6.5 s)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.scripted_server import Reply, ScriptedServer
from tinker_sync import ClientClosedError
from tinker_sync.rest_client import RestClient

KEY = "tml-close-bounds"
HANG_GUARD_S = 20.0  # not a performance bound: only catches a close() that waits for the 600 s export


@pytest.fixture
def api() -> Iterator[ScriptedServer]:
    with ScriptedServer() as srv:
        srv.default("/api/v1/sessions/s1/trace_export", Reply(200, {"status": "pending"}))
        yield srv


def test_clean_close_gives_a_polling_trace_export_at_most_timeout_s(api: ScriptedServer) -> None:
    rest = RestClient(base_url=api.url, api_key=KEY)
    fut = rest.export_session_trace("s1", poll_interval_s=0.2, timeout_s=600)
    while not api.requests_to("/api/v1/sessions/s1/trace_export"):
        time.sleep(0.01)
    started = time.monotonic()
    rest.close(timeout_s=0.5)
    assert time.monotonic() - started < HANG_GUARD_S
    with pytest.raises(ClientClosedError):
        fut.result(timeout=5)
    polls = len(api.requests_to("/api/v1/sessions/s1/trace_export"))
    time.sleep(0.5)
    assert len(api.requests_to("/api/v1/sessions/s1/trace_export")) == polls  # the loop stopped


def test_cancelling_close_stops_the_loop_at_once(api: ScriptedServer) -> None:
    rest = RestClient(base_url=api.url, api_key=KEY)
    fut = rest.export_session_trace("s1", poll_interval_s=0.2, timeout_s=600)
    rest.close(cancel_pending=True)
    with pytest.raises(ClientClosedError):
        fut.result(timeout=5)
    with pytest.raises(ClientClosedError):
        rest.export_session_trace("s1")
