"""CORE over real HTTP: Runtime + Transport + poller against tests/scripted_server.py on 127.0.0.1.

Every retry path is checked by the number of requests the server actually received.
"""

from __future__ import annotations

import email.utils
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import CancelledError, as_completed, wait

import attrs
import pytest

from tests.scripted_server import RecordedRequest, Reply, ScriptedServer
from tinker_sync._config import ClientConfig
from tinker_sync._exceptions import (
    APIConnectionError,
    APIResponseValidationError,
    APITimeoutError,
    BadRequestError,
    ClientClosedError,
    ConflictError,
    InternalServerError,
    RateLimitError,
    RequestFailedError,
)
from tinker_sync._executor import LanePoisonedError
from tinker_sync._retry import RetryPolicy
from tinker_sync._runtime import Runtime

KEY = "tml-http-secret-key-0123456789"
FAST = RetryPolicy(initial_delay_s=0.01, max_delay_s=0.05, max_attempts=5)
RF = "/api/v1/retrieve_future"
T = 10  # every .result() timeout


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer() as srv:
        yield srv


def make_runtime(srv: ScriptedServer, *, key: str = KEY, **kw: object) -> Runtime:
    kw.setdefault("retry", FAST)
    kw.setdefault("max_workers", 4)
    kw.setdefault("max_pollers", 2)
    kw.setdefault("max_sample_dispatchers", 2)
    # a unique path prefix per test keeps the shared rate-limit window of one test away from others
    cfg = ClientConfig(base_url=srv.url + "/", api_key=key, **kw)  # type: ignore[arg-type]
    return Runtime(cfg)


@pytest.fixture
def rt(server: ScriptedServer) -> Iterator[Runtime]:
    runtime = make_runtime(server)
    yield runtime
    runtime.close(cancel_pending=True)


def tinker_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("tinker-sync-") and t.is_alive()]


# ---------------------------------------------------------------------------------------------
# plain requests


def test_request_headers_and_keep_alive_reuse(server: ScriptedServer, rt: Runtime) -> None:
    server.default("/api/v1/healthz", Reply(200, {"status": "ok"}))
    for _ in range(20):
        assert rt.request("GET", "/api/v1/healthz") == {"status": "ok"}
    assert server.connections == 1  # one keep-alive connection for 20 sequential calls
    r = server.requests[0]
    assert r.header("X-API-Key") == KEY
    assert r.header("User-Agent", ).startswith("tinker_sync/")
    assert r.header("Accept") == "application/json"
    assert r.header("X-Idempotency-Key") is None  # GET
    server.default("/api/v1/echo", Reply(200, {}))
    rt.request("POST", "/api/v1/echo", body={"a": [1, 2]})
    post = server.requests_to("/api/v1/echo")[0]
    assert post.json() == {"a": [1, 2]} and post.header("Content-Type") == "application/json"
    assert post.header("X-Idempotency-Key")


def test_base_url_with_path_prefix(server: ScriptedServer) -> None:
    server.default("/prefix/api/v1/healthz", Reply(200, {"ok": True}))
    cfg = ClientConfig(base_url=server.url + "/prefix/", api_key=KEY)
    rt = Runtime(cfg)
    try:
        assert rt.request("GET", "/api/v1/healthz") == {"ok": True}
    finally:
        rt.close()


def test_typed_response_and_validation_error(server: ScriptedServer, rt: Runtime) -> None:
    from tinker_sync.types import GetServerCapabilitiesResponse

    server.script("/api/v1/get_server_capabilities",
                  Reply(200, {"supported_models": [{"model_name": "m"}], "extra": 1}),
                  Reply(200, {"supported_models": 5}))
    caps = rt.request("GET", "/api/v1/get_server_capabilities", response_type=GetServerCapabilitiesResponse)
    assert caps.supported_models[0].model_name == "m"
    with pytest.raises(APIResponseValidationError) as info:
        rt.request("GET", "/api/v1/get_server_capabilities", response_type=GetServerCapabilitiesResponse)
    assert "GetServerCapabilitiesResponse" in str(info.value)
    assert len(server.requests) == 2  # a malformed 2xx is not retried


@pytest.mark.parametrize("status", [408, 409, 500, 502, 503])
def test_retryable_statuses_are_retried_with_the_same_idempotency_key(
    server: ScriptedServer, rt: Runtime, status: int
) -> None:
    server.script("/api/v1/create_session", Reply(status, {"detail": "x"}), Reply(status, {"detail": "x"}),
                  Reply(200, {"session_id": "s1"}))
    assert rt.request("POST", "/api/v1/create_session", body={}) == {"session_id": "s1"}
    reqs = server.requests_to("/api/v1/create_session")
    assert len(reqs) == 3
    assert len({r.header("X-Idempotency-Key") for r in reqs}) == 1


def test_retry_budget_exhausted_raises_typed_error(server: ScriptedServer, rt: Runtime) -> None:
    server.default("/api/v1/create_session", Reply(500, {"detail": "down"}, headers={"x-request-id": "rid-9"}))
    with pytest.raises(InternalServerError) as info:
        rt.request("POST", "/api/v1/create_session", body={})
    assert len(server.requests) == FAST.max_attempts
    err = info.value
    assert err.status_code == 500 and err.request_id == "rid-9"
    assert "500" in str(err) and "down" in str(err) and KEY not in str(err) and KEY not in repr(err)
    server.default("/api/v1/c", Reply(409, {"detail": "conflict"}))
    with pytest.raises(ConflictError):
        rt.request("POST", "/api/v1/c", body={}, retry=False)
    assert len(server.requests_to("/api/v1/c")) == 1


def test_non_retryable_status_and_should_retry_header(server: ScriptedServer, rt: Runtime) -> None:
    server.default("/api/v1/bad", Reply(400, {"detail": "max_tokens must be > 0"}))
    with pytest.raises(BadRequestError, match="max_tokens"):
        rt.request("POST", "/api/v1/bad", body={})
    assert len(server.requests_to("/api/v1/bad")) == 1
    server.default("/api/v1/nope", Reply(500, {"detail": "fatal"}, headers={"x-should-retry": "false"}))
    with pytest.raises(InternalServerError):
        rt.request("POST", "/api/v1/nope", body={})
    assert len(server.requests_to("/api/v1/nope")) == 1
    server.script("/api/v1/yes", Reply(400, {"d": 1}, headers={"x-should-retry": "true"}), Reply(200, {"ok": 1}))
    assert rt.request("POST", "/api/v1/yes", body={}) == {"ok": 1}
    assert len(server.requests_to("/api/v1/yes")) == 2


def test_dropped_connection_is_retried_for_idempotent_posts_only(server: ScriptedServer, rt: Runtime) -> None:
    server.script("/api/v1/optim_step", Reply(drop=True), Reply(200, {"request_id": "r1"}))
    assert rt.request("POST", "/api/v1/optim_step", body={}) == {"request_id": "r1"}
    reqs = server.requests_to("/api/v1/optim_step")
    assert len(reqs) == 2 and reqs[0].header("X-Idempotency-Key") == reqs[1].header("X-Idempotency-Key")
    # an unknown (maybe non-idempotent) POST is not resent once it may have reached the server
    server.script("/api/v1/mutate", Reply(drop=True), Reply(200, {}))
    with pytest.raises(APIConnectionError) as info:
        rt.request("POST", "/api/v1/mutate", body={})
    assert info.value.request_sent is True
    assert len(server.requests_to("/api/v1/mutate")) == 1


def test_connection_refused_is_retried_then_raises_not_sent() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    cfg = ClientConfig(base_url=f"http://127.0.0.1:{port}", api_key=KEY, retry=attrs.evolve(FAST, max_attempts=1))
    rt = Runtime(cfg)
    try:
        with pytest.raises(APIConnectionError) as info:
            rt.request("POST", "/api/v1/mutate", body={})
        assert info.value.request_sent is False
        assert isinstance(info.value.__cause__, Exception)
        assert KEY not in str(info.value)
    finally:
        rt.close()


def test_read_timeout_maps_to_api_timeout_error(server: ScriptedServer, rt: Runtime) -> None:
    server.default("/api/v1/slow", Reply(200, {}, delay_s=1.0))
    with pytest.raises(APITimeoutError) as info:
        rt.request("POST", "/api/v1/slow", body={}, timeout_s=0.1, retry=False)
    assert info.value.request_sent is True


# ---------------------------------------------------------------------------------------------
# 429 and the shared window


def test_429_retry_after_seconds_date_and_ms(server: ScriptedServer, rt: Runtime) -> None:
    date = email.utils.formatdate(time.time() - 5, usegmt=True)  # in the past -> 0 s, then the 1 s default? no: 0
    server.script(
        "/api/v1/x",
        Reply(429, {"detail": "slow down"}, headers={"Retry-After": "0.05"}),
        Reply(429, {"detail": "slow down"}, headers={"retry-after-ms": "30"}),
        Reply(429, {"detail": "slow down"}, headers={"Retry-After": date, "retry-after-ms": "20"}),
        Reply(200, {"ok": True}),
    )
    start = time.monotonic()
    assert rt.request("POST", "/api/v1/x", body={}) == {"ok": True}
    assert len(server.requests_to("/api/v1/x")) == 4
    assert rt.limiter.limited_count >= 3
    assert time.monotonic() - start < 5  # the hints were honoured (not the 1 s default)


def test_429_http_date_hint(server: ScriptedServer, rt: Runtime) -> None:
    date = email.utils.formatdate(time.time() + 1, usegmt=True)
    server.script("/api/v1/x", Reply(429, {}, headers={"Retry-After": date}), Reply(200, {"ok": 2}))
    assert rt.request("POST", "/api/v1/x", body={}) == {"ok": 2}
    assert len(server.requests_to("/api/v1/x")) == 2


def test_429_budget_exhausted_raises_rate_limit_error(server: ScriptedServer) -> None:
    rt = make_runtime(server, key=KEY + "-budget", rate_limit_max_wait_s=0.5)
    try:
        server.default("/api/v1/x", Reply(429, {"detail": "quota"}, headers={"Retry-After": "30"}))
        with pytest.raises(RateLimitError) as info:
            rt.request("POST", "/api/v1/x", body={})
        assert info.value.status_code == 429 and "quota" in str(info.value)
        assert len(server.requests_to("/api/v1/x")) == 1
    finally:
        rt.close()


def test_shared_window_across_runtimes_with_the_same_key_only(server: ScriptedServer) -> None:
    a = make_runtime(server, key=KEY + "-shared")
    b = make_runtime(server, key=KEY + "-shared")
    c = make_runtime(server, key=KEY + "-other")
    try:
        assert a.limiter is b.limiter and a.limiter is not c.limiter
        server.script("/api/v1/a", Reply(429, {}, headers={"Retry-After": "0.6"}), Reply(200, {"a": 1}))
        server.default("/api/v1/b", Reply(200, {"b": 1}))
        fa = a.submit_request("POST", "/api/v1/a", body={})
        deadline = time.monotonic() + 5
        while not a.limiter.remaining() and time.monotonic() < deadline:
            time.sleep(0.005)
        assert b.limiter.remaining() > 0.2  # the window a saw is b's window too
        assert not c.limiter.recently_limited
        c_start = time.monotonic()
        assert c.request("POST", "/api/v1/b", body={}) == {"b": 1}  # another key: not blocked
        c_elapsed = time.monotonic() - c_start
        b_start = time.monotonic()
        assert b.request("POST", "/api/v1/b", body={}) == {"b": 1}
        b_elapsed = time.monotonic() - b_start
        assert fa.result(timeout=T) == {"a": 1}
        assert b_elapsed > c_elapsed  # b waited for the shared window, c did not
        assert b.limiter.recently_limited
    finally:
        for r in (a, b, c):
            r.close()


def test_sampling_request_headers_and_backpressure(server: ScriptedServer) -> None:
    rt = make_runtime(server, key=KEY + "-sampling")
    try:
        server.script("/api/v1/asample", Reply(429, {}), Reply(200, {"request_id": "s1"}))
        server.default(RF, Reply(200, {"sequences": []}))
        from tinker_sync.types import SampleResponse

        fut = rt.submit_polled("/api/v1/asample", {"prompt": 1}, SampleResponse, request_type="Sample", sampling=True)
        assert fut.result(timeout=T).sequences == []
        posts = server.requests_to("/api/v1/asample")
        assert len(posts) == 2
        assert all(p.header("X-Tinker-Sampling-Backpressure") == "1" for p in posts)
        assert posts[0].header("X-Idempotency-Key") == posts[1].header("X-Idempotency-Key")
        assert rt.limiter.recently_limited  # a 429 with no hint opened a 1 s window
        poll = server.requests_to(RF)[0]
        assert poll.header("Accept") == "application/x-protobuf"  # as 0.25; a JSON answer is still decoded
        assert poll.header("X-Tinker-Request-Type") == "Sample"
        assert poll.header("X-Stainless-Read-Timeout") == "45"
    finally:
        rt.close()


def test_every_poll_carries_its_own_idempotency_key(server: ScriptedServer) -> None:
    rt = make_runtime(server, key=KEY + "-pollkeys")
    try:
        server.default("/api/v1/optim_step", Reply(200, {"request_id": "r"}))
        server.script(RF, *[Reply(200, {"type": "try_again", "request_id": "r"})] * 2)
        server.default(RF, Reply(200, {"ok": 1}))
        assert rt.submit_polled("/api/v1/optim_step", {}, None, request_type="OptimStep").result(timeout=T) == {"ok": 1}
        polls = server.requests_to(RF)
        keys = [p.header("X-Idempotency-Key") for p in polls]
        assert len(polls) == 3 and all(keys) and len(set(keys)) == 3
        assert polls[0].header("Accept") == "application/json"
    finally:
        rt.close()


# ---------------------------------------------------------------------------------------------
# polled futures


def test_try_again_rounds_then_result(server: ScriptedServer, rt: Runtime, caplog: pytest.LogCaptureFixture) -> None:
    from tinker_sync.types import OptimStepResponse

    server.default("/api/v1/optim_step", Reply(200, {"request_id": "req-7", "model_id": "m"}))
    server.script(
        RF,
        Reply(200, {"type": "try_again", "request_id": "req-7", "queue_state": "active"}),
        Reply(200, {"type": "try_again", "request_id": "req-7", "queue_state": "paused_capacity",
                    "queue_state_reason": "short on GPUs"}),
        Reply(200, {"type": "try_again", "request_id": "req-7", "queue_state": "paused_capacity"}),
        Reply(200, {"type": "try_again", "request_id": "req-7", "queue_state": "active"}),
    )
    server.default(RF, Reply(200, {"metrics": {"lr": 0.1}}))
    with caplog.at_level(logging.INFO, logger="tinker_sync"):
        fut = rt.submit_polled("/api/v1/optim_step", {"seq_id": 1}, OptimStepResponse, request_type="OptimStep")
        result = fut.result(timeout=T)
    assert result.metrics == {"lr": 0.1}
    polls = server.requests_to(RF)
    assert len(polls) == 5
    assert [p.header("X-Tinker-Request-Iteration") for p in polls] == ["0", "1", "2", "3", "4"]
    assert all(p.header("X-Tinker-Request-Type") == "OptimStep" for p in polls)
    assert all(p.json() == {"request_id": "req-7", "allow_metadata_only": False} for p in polls)
    assert polls[0].header("Accept") == "application/json"
    assert polls[0].header("X-Tinker-Create-Promise-Roundtrip-Time") is not None
    assert polls[1].header("X-Tinker-Create-Promise-Roundtrip-Time") is None
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "paused_capacity" in r.getMessage()]
    assert len(warnings) == 1 and "short on GPUs" in warnings[0].getMessage()


def test_poll_error_statuses_then_success(server: ScriptedServer, rt: Runtime) -> None:
    server.default("/api/v1/save_weights", Reply(200, {"request_id": "r2"}))
    server.script(RF, Reply(408, {"queue_state": "active"}), Reply(500, {}), Reply(502, {}), Reply(400, {}),
                  Reply(200, {"status": "complete_metadata", "response_payload_size": 12}),
                  Reply(200, {"path": "tinker://m/weights/1"}))
    assert rt.submit_polled("/api/v1/save_weights", {}, None, request_type="SaveWeights").result(timeout=T) == {
        "path": "tinker://m/weights/1"
    }
    assert len(server.requests_to(RF)) == 6


def test_poll_request_failed_and_fatal_status(server: ScriptedServer, rt: Runtime) -> None:
    server.default("/api/v1/forward_backward", Reply(200, {"request_id": "r3"}))
    server.script(RF, Reply(200, {"error": "target_tokens has 3 items but the input has 4 tokens", "category": "user"}))
    fut = rt.submit_polled("/api/v1/forward_backward", {}, None, request_type="ForwardBackward")
    with pytest.raises(RequestFailedError) as info:
        fut.result(timeout=T)
    assert info.value.category == "user" and info.value.request_id == "r3"
    assert "target_tokens" in str(info.value)
    server.script(RF, Reply(404, {"detail": "unknown request"}))
    fut = rt.submit_polled("/api/v1/forward_backward", {}, None, request_type="ForwardBackward")
    with pytest.raises(Exception, match="404") as info2:
        fut.result(timeout=T)
    assert "r3" in str(info2.value)


def test_poll_410_resubmits_same_body_seq_and_key(server: ScriptedServer, rt: Runtime) -> None:
    server.script("/api/v1/forward_backward", Reply(200, {"request_id": "old"}), Reply(200, {"request_id": "new"}))

    def poll(rec: RecordedRequest) -> Reply:
        if rec.json()["request_id"] == "old":
            return Reply(410, {"detail": "expired"})
        return Reply(200, {"loss": 1.5})

    server.default(RF, poll)
    lane = rt.new_lane("model m")
    fut = rt.submit_polled("/api/v1/forward_backward", None, None, request_type="ForwardBackward", lane=lane,
                           body=b'{"seq_id":3,"model_id":"m"}', content_type="application/json")
    assert fut.result(timeout=T) == {"loss": 1.5}
    posts = server.requests_to("/api/v1/forward_backward")
    assert len(posts) == 2
    assert posts[0].body == posts[1].body and posts[1].json()["seq_id"] == 3
    assert posts[0].header("X-Idempotency-Key") == posts[1].header("X-Idempotency-Key")
    assert [p.json()["request_id"] for p in server.requests_to(RF)] == ["old", "new"]


def test_cancel_stops_polling(server: ScriptedServer, rt: Runtime) -> None:
    server.default("/api/v1/asample", Reply(200, {"request_id": "slow"}))
    server.default(RF, Reply(200, {"type": "try_again", "request_id": "slow"}, delay_s=0.05))
    fut = rt.submit_polled("/api/v1/asample", {}, None, request_type="Sample", sampling=True)
    deadline = time.monotonic() + 5
    while len(server.requests_to(RF)) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert fut.cancel()
    with pytest.raises(CancelledError):
        fut.result(timeout=T)
    time.sleep(0.2)
    n = len(server.requests_to(RF))
    time.sleep(0.3)
    assert len(server.requests_to(RF)) == n  # no more polls after the cancelled one finished
    assert rt.poller.tracked() == 0


def test_lane_orders_posts_and_poisons_after_failure(server: ScriptedServer, rt: Runtime) -> None:
    posted: list[int] = []

    def submit(rec: RecordedRequest) -> Reply:
        seq = rec.json()["seq_id"]
        posted.append(seq)
        if seq == 3:
            return Reply(422, {"detail": "bad input"})
        return Reply(200, {"request_id": f"r{seq}"}, delay_s=0.02 if seq == 1 else 0.0)

    server.default("/api/v1/forward_backward", submit)
    server.default(RF, lambda rec: Reply(200, {"ok": rec.json()["request_id"]}))
    lane = rt.new_lane("model m")
    futs = [rt.submit_polled("/api/v1/forward_backward", {"seq_id": i}, None, request_type="ForwardBackward",
                             lane=lane, label=f"forward_backward seq_id={i}") for i in range(1, 6)]
    assert futs[0].result(timeout=T) == {"ok": "r1"}
    assert futs[1].result(timeout=T) == {"ok": "r2"}
    with pytest.raises(Exception, match="422"):
        futs[2].result(timeout=T)
    for f in futs[3:]:
        with pytest.raises(LanePoisonedError, match="seq_id=3"):
            f.result(timeout=T)
    assert posted == [1, 2, 3]  # nothing after the failed seq_id left the client


def test_futures_work_with_wait_and_as_completed(server: ScriptedServer, rt: Runtime) -> None:
    server.default("/api/v1/asample", lambda rec: Reply(200, {"request_id": str(rec.json()["i"])}))
    server.default(RF, lambda rec: Reply(200, {"i": int(rec.json()["request_id"])}))
    futs = [
        rt.submit_polled("/api/v1/asample", {"i": i}, None, request_type="Sample", sampling=True) for i in range(30)
    ]
    got = sorted(f.result(timeout=T)["i"] for f in as_completed(futs, timeout=T))
    assert got == list(range(30))
    done, not_done = wait(futs, timeout=T)
    assert len(done) == 30 and not not_done
    assert server.connections <= 4 + 2 + 2 + 2  # bounded by the pools, not by the number of calls


# ---------------------------------------------------------------------------------------------
# close()


def test_close_clean_waits_for_pending(server: ScriptedServer) -> None:
    rt = make_runtime(server)
    server.default("/api/v1/optim_step", Reply(200, {"request_id": "r"}))
    server.script(RF, Reply(200, {"type": "try_again", "request_id": "r"}, delay_s=0.1))
    server.default(RF, Reply(200, {"done": True}))
    fut = rt.submit_polled("/api/v1/optim_step", {}, None, request_type="OptimStep")
    rt.close()
    assert fut.done() and fut.result(timeout=0) == {"done": True}
    with pytest.raises(ClientClosedError):
        rt.submit_request("GET", "/api/v1/healthz")
    deadline = time.monotonic() + 5
    while tinker_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert tinker_threads() == []


def test_close_cancel_fails_pending_and_leaves_no_threads(server: ScriptedServer) -> None:
    rt = make_runtime(server)
    server.default("/api/v1/asample", Reply(200, {"request_id": "r"}))
    server.default(RF, Reply(200, {"type": "try_again", "request_id": "r"}, delay_s=3.0))  # a held long poll
    futs = [rt.submit_polled("/api/v1/asample", {}, None, request_type="Sample") for _ in range(3)]
    deadline = time.monotonic() + 5
    while not server.requests_to(RF) and time.monotonic() < deadline:
        time.sleep(0.01)
    start = time.monotonic()
    rt.close(cancel_pending=True)
    assert time.monotonic() - start < 2.5  # the held long poll was aborted, not waited out
    for f in futs:
        with pytest.raises(ClientClosedError):
            f.result(timeout=T)
    deadline = time.monotonic() + 5
    while tinker_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert tinker_threads() == []
    rt.close()  # idempotent


# ---------------------------------------------------------------------------------------------
# the key never leaks


def test_api_key_absent_from_logs_reprs_and_errors(server: ScriptedServer, caplog: pytest.LogCaptureFixture) -> None:
    server.script("/api/v1/x", Reply(500, {"detail": "boom"}), Reply(200, {}))
    server.default("/api/v1/y", Reply(401, {"detail": "invalid api key"}))
    server.default("/api/v1/asample", Reply(200, {"request_id": "r"}))
    server.default(RF, Reply(200, {"error": "nope", "category": "server"}))
    with caplog.at_level(logging.DEBUG):
        rt = make_runtime(server)
        rt.request("POST", "/api/v1/x", body={})
        errors = []
        try:
            rt.request("POST", "/api/v1/y", body={})
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)
        try:
            rt.submit_polled("/api/v1/asample", {}, None, request_type="Sample").result(timeout=T)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)
        rt.close()
    assert len(errors) == 2
    assert caplog.records  # DEBUG logging happened (including urllib3's)
    text = caplog.text + repr(rt) + repr(rt.config) + str(rt.config) + repr(rt.transport)
    text += "".join(str(e) + repr(e) for e in errors)
    assert KEY not in text
    assert any("POST /api/v1/x -> 500" in r.getMessage() for r in caplog.records)


def test_error_strings(server: ScriptedServer, rt: Runtime) -> None:
    server.default("/api/v1/z", Reply(422, {"detail": [{"loc": ["body", "seq_id"], "msg": "field required"}]},
                                      headers={"x-request-id": "abc"}))
    with pytest.raises(Exception) as info:
        rt.request("POST", "/api/v1/z", body={})
    s = str(info.value)
    assert "422" in s and "seq_id" in s and "abc" in s and "/api/v1/z" in s
    assert json.dumps(info.value.body)  # type: ignore[attr-defined]


def test_clean_close_waits_for_chained_follow_up_calls(server: ScriptedServer) -> None:
    from tinker_sync._executor import chain

    rt = make_runtime(server)
    server.default("/api/v1/forward", Reply(200, {"request_id": "f"}))
    server.default("/api/v1/forward_backward", Reply(200, {"request_id": "b"}))
    server.script(RF, Reply(200, {"type": "try_again", "request_id": "f"}, delay_s=0.05))
    server.default(RF, lambda rec: Reply(200, {"phase": rec.json()["request_id"]}))
    lane = rt.new_lane("model m")
    first = rt.submit_polled("/api/v1/forward", {}, None, request_type="Forward", lane=lane)
    # the second call is only submitted from a poller thread once the first finished
    second_holder: list[object] = []

    def follow_up(_out: object) -> object:
        fut = rt.submit_polled("/api/v1/forward_backward", {}, None, request_type="ForwardBackward", lane=lane)
        second_holder.append(fut)
        return fut

    chained = chain(first, follow_up)
    rt.close()
    second = chained.result(timeout=T)
    assert second.result(timeout=T) == {"phase": "b"}  # type: ignore[attr-defined]
    assert len(server.requests_to("/api/v1/forward_backward")) == 1


def test_runtime_context_manager_cancels_on_error(server: ScriptedServer) -> None:
    server.default("/api/v1/asample", Reply(200, {"request_id": "r"}))
    server.default(RF, Reply(200, {"type": "try_again", "request_id": "r"}, delay_s=0.05))
    with pytest.raises(KeyError), make_runtime(server) as rt:
        fut = rt.submit_polled("/api/v1/asample", {}, None, request_type="Sample")
        raise KeyError("user bug")
    with pytest.raises(ClientClosedError):
        fut.result(timeout=T)


def test_close_from_a_callback_thread_does_not_deadlock(server: ScriptedServer) -> None:
    rt = make_runtime(server)
    closer = rt.executor.submit(lambda: rt.close(cancel_pending=True))
    done, _ = wait([closer], timeout=T)
    assert done  # no self-join deadlock (its own Future fails with ClientClosedError, like any pending call)
    assert rt.closed
    deadline = time.monotonic() + 5
    while tinker_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert tinker_threads() == []


def test_poll_billing_pause_and_dropped_connection_back_off(server: ScriptedServer) -> None:
    rt = make_runtime(server, billing_pause_s=0.01, billing_max_pause_s=60.0)
    try:
        server.default("/api/v1/optim_step", Reply(200, {"request_id": "r"}))
        server.script(RF, Reply(402, {"detail": "billing"}), Reply(402, {"detail": "billing"}), Reply(drop=True))
        server.default(RF, Reply(200, {"ok": True}))
        fut = rt.submit_polled("/api/v1/optim_step", {}, None, request_type="OptimStep")
        assert fut.result(timeout=T) == {"ok": True}
        assert len(server.requests_to(RF)) == 4
        # a fatal poll status surfaces as the typed error
        server.script(RF, Reply(403, {"detail": "not your model"}))
        from tinker_sync._exceptions import PermissionDeniedError

        with pytest.raises(PermissionDeniedError, match="not your model"):
            rt.submit_polled("/api/v1/optim_step", {}, None, request_type="OptimStep").result(timeout=T)
    finally:
        rt.close()


def test_bare_400_is_treated_as_a_dropped_connection(server: ScriptedServer, rt: Runtime) -> None:
    server.script("/api/v1/forward_backward", Reply(400, None), Reply(200, {"request_id": "r"}))
    assert rt.request("POST", "/api/v1/forward_backward", body={}) == {"request_id": "r"}
    assert len(server.requests_to("/api/v1/forward_backward")) == 2
    server.script("/api/v1/mutate", Reply(400, None), Reply(200, {}))
    with pytest.raises(BadRequestError):
        rt.request("POST", "/api/v1/mutate", body={})  # not known to be idempotent: not resent
    assert len(server.requests_to("/api/v1/mutate")) == 1


def test_call_takes_a_call_options_value(server: ScriptedServer, rt: Runtime) -> None:
    from tinker_sync._decide import CallOptions

    server.script("/api/v1/thing", Reply(409, {"detail": "busy"}), Reply(200, {"ok": 1}))
    opts = CallOptions(body={"a": 1}, headers={"X-Extra": "1"}, idempotency_key="tinker-sync-fixed-key")
    assert rt.call("POST", "/api/v1/thing", opts) == {"ok": 1}
    reqs = server.requests_to("/api/v1/thing")
    assert [r.header("X-Idempotency-Key") for r in reqs] == ["tinker-sync-fixed-key"] * 2
    assert all(r.header("X-Extra") == "1" and r.json() == {"a": 1} for r in reqs)
    with pytest.raises(TypeError):
        rt.submit_request("GET", "/api/v1/thing", no_such_option=True)  # refused in the caller's thread
