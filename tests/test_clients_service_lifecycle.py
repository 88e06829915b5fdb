"""ServiceClient lifecycle over real HTTP (tests/scripted_server.py): bounded close(), heartbeats
during close and during a 429 window, 410 re-submission of samples with a fresh seq_id."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from tests.scripted_server import RecordedRequest, Reply, ScriptedServer, answer_session
from tinker_sync import ServiceClient, types
from tinker_sync._exceptions import ClientClosedError
from tinker_sync._retry import RetryPolicy

FAST = RetryPolicy(initial_delay_s=0.01, max_delay_s=0.05, max_attempts=5)
RF = "/api/v1/retrieve_future"
T = 10


def _key() -> str:
    # a key per test: the 429 window is shared per (base_url, key)
    return f"tml-{uuid.uuid4().hex}"


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer() as srv:
        yield answer_session(srv)


def _service(srv: ScriptedServer, **kw: object) -> ServiceClient:
    kw.setdefault("heartbeat_interval_s", 0.05)
    return ServiceClient(api_key=_key(), base_url=srv.url, retry=FAST, max_workers=4, max_pollers=4, **kw)  # type: ignore[arg-type]


def _sample_response(rec: RecordedRequest) -> Reply:
    return Reply(200, {"type": "sample", "sequences": [{"stop_reason": "length", "tokens": [1], "logprobs": [-0.5]}]})


PROMPT = types.ModelInput.from_ints([1, 2, 3])
PARAMS = types.SamplingParams(max_tokens=1)


def test_close_is_bounded_fails_leftovers_and_keeps_heartbeats_while_waiting(
    server: ScriptedServer, caplog: pytest.LogCaptureFixture
) -> None:
    server.default("/api/v1/asample", Reply(200, {"request_id": "never-done"}))
    server.default(RF, Reply(200, {"type": "try_again", "request_id": "never-done"}, delay_s=0.05))
    sc = _service(server)
    sampler = sc.create_sampling_client(base_model="m")
    fut = sampler.sample(PROMPT, 1, PARAMS)
    deadline = time.monotonic() + T
    while not server.requests_to(RF) and time.monotonic() < deadline:
        time.sleep(0.01)
    closing = threading.Thread(target=lambda: sc.close(timeout_s=0.6), daemon=True)
    close_started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="tinker_sync"):
        closing.start()
        closing.join(T)
    assert not closing.is_alive(), "close(timeout_s=0.6) did not return"
    with pytest.raises(ClientClosedError, match="timeout"):
        fut.result(timeout=T)
    assert any("1 call(s) still pending" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    finish = server.requests_to("/api/v1/sessions/s1/finish")
    assert len(finish) == 1
    beats = [r.received_at for r in server.requests_to("/api/v1/session_heartbeat")]
    during_wait = [t for t in beats if close_started < t < finish[0].received_at]
    assert during_wait, "no heartbeat was sent while close() waited for pending work"
    assert max(beats) < finish[0].received_at  # stopped before the session was finished
    assert not [t for t in threading.enumerate() if t.name.startswith("tinker-sync-") and t.is_alive()]


def test_exception_inside_with_cancels_pending_work(server: ScriptedServer) -> None:
    server.default("/api/v1/asample", Reply(200, {"request_id": "never-done"}))
    server.default(RF, Reply(200, {"type": "try_again", "request_id": "never-done"}, delay_s=0.05))
    started = time.monotonic()
    with pytest.raises(KeyError), _service(server) as sc:
        fut = sc.create_sampling_client(base_model="m").sample(PROMPT, 1, PARAMS)
        raise KeyError("boom")
    assert time.monotonic() - started < T
    with pytest.raises(ClientClosedError):
        fut.result(timeout=T)
    finish = server.requests_to("/api/v1/sessions/s1/finish")
    assert [r.json()["reason"]["type"] for r in finish] == ["errored"]


def test_clean_close_waits_for_pending_work(server: ScriptedServer) -> None:
    server.default("/api/v1/asample", Reply(200, {"request_id": "r1"}))
    server.script(RF, Reply(200, {"type": "try_again", "request_id": "r1"}, delay_s=0.2))
    server.default(RF, _sample_response)
    sc = _service(server)
    fut = sc.create_sampling_client(base_model="m").sample(PROMPT, 1, PARAMS)
    sc.close(timeout_s=T)
    assert fut.result(timeout=0).sequences[0].tokens == [1]


def test_heartbeats_do_not_wait_behind_the_429_window(server: ScriptedServer) -> None:
    sc = _service(server)
    try:
        assert sc.session_id == "s1"
        sc._runtime.limiter.block_for(60.0)  # a long shared back-off after a 429 of some other call
        marker = time.monotonic()
        deadline = marker + T
        while time.monotonic() < deadline:
            if [r for r in server.requests_to("/api/v1/session_heartbeat") if r.received_at > marker]:
                break
            time.sleep(0.02)
        assert [r for r in server.requests_to("/api/v1/session_heartbeat") if r.received_at > marker]
        assert sc._runtime.limiter.remaining() > 30  # a heartbeat success does not close the window
    finally:
        sc.close(cancel_pending=True)


def test_410_on_a_sample_poll_resubmits_with_a_fresh_seq_id_and_key(server: ScriptedServer) -> None:
    ids = iter(["r1", "r2", "r3"])
    server.default("/api/v1/asample", lambda rec: Reply(200, {"request_id": next(ids)}))

    def poll(rec: RecordedRequest) -> Reply:
        if rec.json()["request_id"] == "r1":
            return Reply(410, {"detail": "promise expired"})
        return _sample_response(rec)

    server.default(RF, poll)
    with _service(server) as sc:
        sampler = sc.create_sampling_client(base_model="m")
        assert sampler.sample(PROMPT, 1, PARAMS).result(timeout=T).sequences[0].tokens == [1]
        assert sampler.sample(PROMPT, 1, PARAMS).result(timeout=T).sequences[0].tokens == [1]
    posts = server.requests_to("/api/v1/asample")
    assert [p.json()["seq_id"] for p in posts] == [0, 1, 2]  # the re-run took the next seq_id
    keys = [p.header("X-Idempotency-Key") for p in posts]
    assert len(set(keys)) == 3
    assert posts[1].json()["prompt"] == posts[0].json()["prompt"]
