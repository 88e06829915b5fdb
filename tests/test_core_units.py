"""Pure unit tests of the CORE logic: RetryPolicy, parse_retry_after, RateLimiter (fake clock),
decide(), ClientConfig, and the Future plumbing (chain, gather, SequencedLane)."""

from __future__ import annotations

import email.utils
import logging
import pickle
import threading
from concurrent.futures import CancelledError, Future, as_completed, wait

import attrs
import pytest

from tinker_sync._config import _DEFAULT_BASE_URL, ClientConfig, InvalidConfigError
from tinker_sync._exceptions import (
    APIConnectionError,
    APIResponseValidationError,
    BadRequestError,
    ClientClosedError,
    NotFoundError,
    RateLimitError,
    RequestFailedError,
    TinkerError,
)
from tinker_sync._executor import (
    Executor,
    LanePoisonedError,
    SequencedLane,
    chain,
    gather,
)
from tinker_sync._poller import (
    Backoff,
    Done,
    Fail,
    FetchPayload,
    PollAgain,
    PollState,
    Resubmit,
    decide,
    decide_connection_error,
)
from tinker_sync._ratelimit import RateLimiter, get_shared_limiter
from tinker_sync._retry import RetryPolicy, parse_retry_after

KEY = "tml-unit-secret-key-abcdef"

# ---------------------------------------------------------------------------------------------
# RetryPolicy


def test_retry_policy_delays_follow_the_capped_exponential() -> None:
    p = RetryPolicy()
    assert [p.delay_for(k, rng=lambda: 0.0) for k in range(7)] == [0.5, 1, 2, 4, 8, 10, 10]
    # jitter removes up to 25 %
    assert p.delay_for(0, rng=lambda: 0.999) == pytest.approx(0.5 * (1 - 0.25 * 0.999))
    full = attrs.evolve(p, jitter=1.0)
    assert full.delay_for(3, rng=lambda: 0.5) == pytest.approx(2.0)
    assert full.delay_for(3, rng=lambda: 0.0) == pytest.approx(4.0)


def test_retry_policy_uses_retry_after_in_range_only() -> None:
    p = RetryPolicy()
    assert p.delay_for(0, retry_after_s=3.0, rng=lambda: 0.0) == 3.0
    assert p.delay_for(0, retry_after_s=0.0, rng=lambda: 0.0) == 0.5  # 0 is not a usable hint
    assert p.delay_for(0, retry_after_s=61.0, rng=lambda: 0.0) == 0.5


def test_retry_policy_statuses_and_should_retry_header() -> None:
    p = RetryPolicy()
    for status in (408, 409, 429, 500, 502, 503, 504, 599):
        assert p.is_retryable_status(status, {})
    for status in (400, 401, 403, 404, 410, 422):
        assert not p.is_retryable_status(status, {})
    assert not p.is_retryable_status(500, {"X-Should-Retry": "false"})
    assert p.is_retryable_status(400, {"x-should-retry": "true"})
    assert p.is_retryable_status(500, {"x-should-retry": "maybe"})


def test_retry_policy_budget_and_validation() -> None:
    p = RetryPolicy(max_attempts=3, total_timeout_s=10.0)
    assert p.should_retry(0, 0.0, 1.0)
    assert p.should_retry(1, 0.0, 1.0)
    assert not p.should_retry(2, 0.0, 1.0)  # 3 attempts made
    assert not p.should_retry(0, 9.5, 1.0)  # would exceed the total budget
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError, match="jitter"):
        RetryPolicy(jitter=2.0)
    assert attrs.evolve(p, max_attempts=5).max_attempts == 5
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        p.max_attempts = 4  # type: ignore[misc]


def test_may_resend_only_idempotent_posts() -> None:
    p = RetryPolicy()
    assert p.may_resend("GET", "/api/v1/anything")
    assert p.may_resend("POST", "/api/v1/forward_backward")
    assert p.may_resend("POST", "/api/v1/retrieve_future")
    assert not p.may_resend("POST", "/api/v1/some_new_mutation")


# ---------------------------------------------------------------------------------------------
# parse_retry_after


def test_parse_retry_after_forms() -> None:
    assert parse_retry_after({"retry-after-ms": "1500"}) == 1.5
    assert parse_retry_after({"Retry-After-Ms": "1500", "retry-after": "9"}) == 1.5  # ms wins
    assert parse_retry_after({"Retry-After": "2"}) == 2.0
    assert parse_retry_after({"retry-after": "0.25"}) == 0.25
    assert parse_retry_after({"retry-after": "-3"}) == 0.0
    assert parse_retry_after({"retry-after": "3600"}) == 60.0  # clamped
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({"retry-after-ms": "x"}) is None
    assert parse_retry_after({}) is None
    assert parse_retry_after(None) is None
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 7, usegmt=True)
    assert parse_retry_after({"retry-after": date}, now=lambda: now) == pytest.approx(7.0)
    past = email.utils.formatdate(now - 100, usegmt=True)
    assert parse_retry_after({"retry-after": past}, now=lambda: now) == 0.0


# ---------------------------------------------------------------------------------------------
# RateLimiter on a fake clock


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.t

    def sleep(self, seconds: float, _cancelled: threading.Event | None) -> None:
        self.sleeps.append(seconds)
        self.t += seconds


def test_rate_limiter_window_never_shrinks_and_wait_sleeps_until_open() -> None:
    clock = FakeClock()
    lim = RateLimiter(clock=clock, max_wait_s=100.0, sleep=clock.sleep)
    assert lim.wait() == 0.0
    assert not lim.recently_limited
    lim.block_for(5.0)
    lim.block_for(2.0)  # shorter: ignored
    assert lim.remaining() == 5.0
    assert lim.recently_limited
    waited = lim.wait()
    assert waited == pytest.approx(5.0)
    assert all(s <= 1.0 for s in clock.sleeps)  # re-checks at least every second
    assert lim.remaining() == 0.0
    assert lim.recently_limited  # still within 10 s after the window
    clock.t += 10.1
    assert not lim.recently_limited


def test_rate_limiter_budget_raises_rate_limit_error() -> None:
    clock = FakeClock()
    lim = RateLimiter(clock=clock, max_wait_s=3.0, sleep=clock.sleep)
    lim.block_for(10.0)
    with pytest.raises(RateLimitError) as info:
        lim.wait()
    assert info.value.status_code == 429
    assert "rate_limit_max_wait_s" in str(info.value)
    assert clock.sleeps == []  # fails fast instead of sleeping into a hopeless wait
    with pytest.raises(RateLimitError):
        lim.wait(deadline=clock.t + 5.0, max_wait_s=100.0)
    assert lim.wait(max_wait_s=100.0) == pytest.approx(10.0)


def test_rate_limiter_success_closes_only_for_requests_sent_after_the_limit() -> None:
    clock = FakeClock()
    lim = RateLimiter(clock=clock, sleep=clock.sleep)
    sent_before = clock.t
    clock.t += 0.1
    lim.block_for(5.0)
    lim.on_success(dispatched_at=sent_before)  # was already in flight: proves nothing
    assert lim.remaining() == pytest.approx(5.0)
    clock.t += 0.5
    lim.on_success(dispatched_at=clock.t)
    assert lim.remaining() == 0.0


def test_rate_limiter_cancel_event_interrupts() -> None:
    lim = RateLimiter(max_wait_s=100.0)
    lim.block_for(30.0)
    ev = threading.Event()
    ev.set()
    with pytest.raises(ClientClosedError):
        lim.wait(cancelled=ev)


def test_shared_limiter_registry_keys_on_url_and_key() -> None:
    a = ClientConfig(base_url="http://h:1", api_key=KEY)
    b = ClientConfig(base_url="http://h:1/", api_key=KEY, max_workers=3)
    c = ClientConfig(base_url="http://h:1", api_key=KEY + "x")
    assert get_shared_limiter(a) is get_shared_limiter(b)
    assert get_shared_limiter(a) is not get_shared_limiter(c)
    assert KEY not in repr(a.rate_limit_key)


# ---------------------------------------------------------------------------------------------
# decide()


def _d(status: int, body: object = None, headers: dict[str, str] | None = None, state: PollState | None = None,
       expected: type | None = None, **kw: object):
    import json as _json

    content = body if isinstance(body, bytes) else (b"" if body is None else _json.dumps(body).encode())
    return decide(status, headers or {"Content-Type": "application/json"}, content, expected, state or PollState(),
                  request_id="req-1", **kw)  # type: ignore[arg-type]


def test_decide_success_try_again_and_error_payloads() -> None:
    d = _d(200, {"a": 1})
    assert isinstance(d, Done) and d.value == {"a": 1} and d.state.iteration == 1
    d = _d(
        200, {"type": "try_again", "request_id": "r", "queue_state": "paused_capacity", "queue_state_reason": "busy"}
    )
    assert isinstance(d, PollAgain) and d.queue_state == "paused_capacity" and d.reason == "busy" and d.delay_s == 0
    d = _d(200, {"error": "bad tokens", "category": "User"})
    assert isinstance(d, Fail) and isinstance(d.exc, RequestFailedError)
    assert d.exc.category == "user" and d.exc.request_id == "req-1" and "bad tokens" in str(d.exc)
    d = _d(200, {"error": "x", "category": "weird"})
    assert isinstance(d, Fail) and d.exc.category == "unknown"  # type: ignore[union-attr]
    d = _d(200, b"not json")
    assert isinstance(d, Fail) and isinstance(d.exc, APIResponseValidationError)


def test_decide_complete_metadata_fetches_payload_once() -> None:
    d = _d(200, {"status": "complete_metadata", "response_payload_size": 10}, state=PollState(allow_metadata_only=True))
    assert isinstance(d, FetchPayload) and d.state.allow_metadata_only is False and d.state.metadata_seen
    d2 = _d(200, {"status": "complete_metadata", "response_payload_size": 10}, state=d.state)
    assert isinstance(d2, Fail)


def test_decide_error_statuses() -> None:
    d = _d(408, {"queue_state": "active"})
    assert isinstance(d, PollAgain) and d.queue_state == "active"
    s = PollState()
    delays = []
    for _ in range(3):
        d = _d(500, {"detail": "boom"}, state=s)
        assert isinstance(d, PollAgain)
        delays.append(d.delay_s)
        s = d.state
    assert delays == sorted(delays) and 0 < delays[0] <= delays[-1] <= 2.0
    s = PollState()
    delays = []
    for _ in range(7):
        d = _d(429, {}, state=s)
        assert isinstance(d, Backoff)
        delays.append(d.delay_s)
        s = d.state
    assert delays == [1, 2, 4, 8, 16, 30, 30]
    # a Retry-After hint is honoured as given, whatever the count
    hinted = _d(429, {}, state=PollState(backoffs=5), headers={"Retry-After": "3"})
    assert isinstance(hinted, Backoff) and hinted.delay_s == 3 and hinted.state.backoffs == 6
    # any HTTP response resets the backoff counter
    assert _d(408, {}, state=s).state.backoffs == 0
    # a lost connection polls again after 50 ms, doubling to 30 s
    reconnects, s = [], PollState()
    for _ in range(12):
        ce = decide_connection_error(APIConnectionError(), s)
        assert isinstance(ce, Backoff)
        reconnects.append(ce.delay_s)
        s = ce.state
    assert reconnects == [0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 30, 30]
    # 400: three immediate retries, then an error
    s = PollState()
    for _ in range(3):
        d = _d(400, {"detail": "proxy?"}, state=s)
        assert isinstance(d, PollAgain)
        s = d.state
    d = _d(400, {"detail": "proxy?"}, state=s)
    assert isinstance(d, Fail) and isinstance(d.exc, BadRequestError)
    assert isinstance(_d(410, {}), Resubmit)
    d = _d(404, {"detail": "no such future"})
    assert isinstance(d, Fail) and isinstance(d.exc, NotFoundError) and "req-1" in str(d.exc)


def test_decide_billing_pause_window() -> None:
    d = _d(402, {}, now=100.0)
    assert isinstance(d, Backoff) and d.delay_s == 5.0 and d.state.billing_since == 100.0
    d2 = _d(402, {}, state=d.state, now=100.0 + 3599)
    assert isinstance(d2, Backoff)
    d3 = _d(402, {}, state=d2.state, now=100.0 + 3601)
    assert isinstance(d3, Fail) and d3.exc.status_code == 402  # type: ignore[union-attr]


def test_decide_protobuf_and_typed_json() -> None:
    from tinker_sync import _proto
    from tinker_sync.types import SampledSequence, SampleResponse

    seq = SampledSequence(stop_reason="length", tokens=[1, 2, 3], logprobs=[-0.5, -0.25, -1.0])
    resp = SampleResponse(sequences=[seq])
    data = _proto.encode_sample_response(resp)
    d = decide(200, {"content-type": "application/x-protobuf"}, data, SampleResponse, PollState())
    assert isinstance(d, Done) and d.value.sequences[0].tokens == [1, 2, 3]
    d = decide(200, {"content-type": "application/x-protobuf"}, b"\xff\xff\xff", SampleResponse, PollState())
    assert isinstance(d, Fail) and isinstance(d.exc, APIResponseValidationError)
    from tinker_sync import _serde

    d = decide(200, {"content-type": "application/json"}, _serde.dumps(resp), SampleResponse, PollState())
    assert isinstance(d, Done) and d.value == resp
    d = decide(200, {"content-type": "application/json"}, b'{"sequences": 5}', SampleResponse, PollState())
    assert isinstance(d, Fail) and isinstance(d.exc, APIResponseValidationError)


# ---------------------------------------------------------------------------------------------
# ClientConfig


def test_config_from_env_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TINKER_API_KEY", raising=False)
    monkeypatch.delenv("TINKER_BASE_URL", raising=False)
    with pytest.raises(InvalidConfigError, match="api_key=.*TINKER_API_KEY") as info:
        ClientConfig.from_env()
    assert isinstance(info.value, TinkerError) and isinstance(info.value, ValueError)
    with pytest.raises(InvalidConfigError, match="tml-") as info:
        ClientConfig.from_env(api_key="sk-secret-value-123")
    assert "sk-secret" not in str(info.value)
    monkeypatch.setenv("TINKER_API_KEY", KEY)
    monkeypatch.setenv("TINKER_BASE_URL", "")
    cfg = ClientConfig.from_env()
    assert cfg.base_url == _DEFAULT_BASE_URL and cfg.api_key == KEY
    monkeypatch.setenv("TINKER_BASE_URL", "http://127.0.0.1:9/prefix/")
    assert ClientConfig.from_env().base_url == "http://127.0.0.1:9/prefix"
    assert ClientConfig.from_env(base_url="https://x.example").base_url == "https://x.example"
    assert ClientConfig.from_env(api_key="eyJhbGciOi.x.y").api_key.startswith("eyJ")
    with pytest.raises(InvalidConfigError, match="base_url"):
        ClientConfig.from_env(base_url="ftp://nope")
    monkeypatch.setenv("CLOUDFLARE_ACCESS_CLIENT_ID", "cf-id")
    monkeypatch.setenv("CLOUDFLARE_ACCESS_CLIENT_SECRET", "cf-secret-zzz")
    cfg = ClientConfig.from_env(max_workers=4)
    assert cfg.default_headers["CF-Access-Client-Id"] == "cf-id" and cfg.max_workers == 4
    text = repr(cfg) + str(cfg)
    assert KEY not in text and "cf-secret-zzz" not in text
    cfg2 = pickle.loads(pickle.dumps(cfg))
    assert cfg2 == cfg


# ---------------------------------------------------------------------------------------------
# Executor / chain / gather / SequencedLane


def test_executor_futures_are_real_and_cancellable() -> None:
    ex = Executor(2)
    try:
        gate = threading.Event()
        blockers = [ex.submit(gate.wait, 5) for _ in range(2)]
        queued = ex.submit(lambda: "never")
        assert queued.cancel()  # still pending: user cancel works
        gate.set()
        assert [f.result(timeout=5) for f in blockers] == [True, True]
        futs = [ex.submit(lambda i=i: i * i) for i in range(10)]
        assert sorted(f.result(timeout=5) for f in as_completed(futs, timeout=5)) == [i * i for i in range(10)]
        done, _ = wait(futs, timeout=5)
        assert len(done) == 10
        boom = ex.submit(lambda: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            boom.result(timeout=5)
        names = ex.submit(lambda: threading.current_thread().name).result(timeout=5)
        assert names.startswith("tinker-sync-worker-")
    finally:
        ex.close()
    with pytest.raises(ClientClosedError):
        ex.submit(lambda: 1)


def test_executor_bounds_queued_calls_and_close_wakes_a_waiting_submitter() -> None:
    ex = Executor(1, max_queued=2)
    gate = threading.Event()
    try:
        first = ex.submit(gate.wait, 5)
        second = ex.submit(lambda: "second")  # queued behind the first: the bound of 2 is reached
        third: list[Future[str]] = []
        submitter = threading.Thread(target=lambda: third.append(ex.submit(lambda: "third")))
        submitter.start()
        submitter.join(0.3)
        assert submitter.is_alive() and not third  # blocked until a call finishes
        gate.set()
        submitter.join(5)
        assert [first.result(5), second.result(5), third[0].result(5)] == [True, "second", "third"]
        # a worker's own submissions never wait on its pool (its one worker would wait for itself)
        inner = ex.submit(lambda: [ex.submit(lambda i=i: i) for i in range(5)]).result(5)
        assert [f.result(5) for f in inner] == [0, 1, 2, 3, 4]
        gate.clear()
        blockers = [ex.submit(gate.wait, 5), ex.submit(lambda: None)]
        errors: list[BaseException] = []

        def submit_more() -> None:
            try:
                ex.submit(lambda: None)
            except ClientClosedError as exc:
                errors.append(exc)

        waiting = threading.Thread(target=submit_more)
        waiting.start()
        waiting.join(0.2)
        assert waiting.is_alive()
        closer = threading.Thread(target=lambda: ex.close(cancel_pending=True, timeout_s=5))
        closer.start()
        waiting.join(5)  # close() woke it: the executor is closed
        assert not waiting.is_alive() and len(errors) == 1
        gate.set()
        closer.join(5)
        assert isinstance(blockers[1].exception(5), ClientClosedError)
    finally:
        gate.set()
        ex.close()


def test_counted_condition_counts_its_waiters_and_wakes_them() -> None:
    from tinker_sync._executor import CountedCondition

    cond = CountedCondition(threading.Lock())
    with cond:
        cond.notify()  # nobody waits: nothing to do
        assert cond.wait(0.01) is False and cond.waiting == 0  # timed out, no longer counted
    woke: list[bool] = []
    waiter = threading.Thread(target=lambda: woke.append(_wait(cond)))
    waiter.start()
    for _ in range(500):
        with cond:
            if cond.waiting == 1:
                cond.notify_all()
                break
        threading.Event().wait(0.01)
    waiter.join(5)
    assert woke == [True] and cond.waiting == 0


def _wait(cond: threading.Condition) -> bool:
    with cond:
        return bool(cond.wait(5))


def test_executor_dispatch_reports_only_failures() -> None:
    ex = Executor(1)
    failures: list[BaseException] = []
    ran = threading.Event()
    gate = threading.Event()
    try:
        ex.dispatch(lambda: ran.set() or "dropped", failures.append)
        assert ran.wait(5)
        ex.dispatch(lambda: 1 / 0, failures.append)
        ex.submit(lambda: None).result(5)  # one worker: the failing call has run
        assert len(failures) == 1 and isinstance(failures[0], ZeroDivisionError)
        ex.submit(gate.wait, 5)
        never = threading.Event()
        ex.dispatch(never.set, failures.append)  # queued behind the blocker
    finally:
        closing = threading.Thread(target=lambda: ex.close(cancel_pending=True, timeout_s=5))
        closing.start()
        gate.set()
        closing.join(5)
    assert isinstance(failures[1], ClientClosedError) and not never.is_set()
    with pytest.raises(ClientClosedError):
        ex.dispatch(lambda: None, failures.append)


def test_chain_and_gather() -> None:
    src: Future[int] = Future()
    out = chain(src, lambda v: v + 1)
    src.set_result(41)
    assert out.result(timeout=1) == 42
    src2: Future[int] = Future()
    out2 = chain(src2, lambda v: v)
    src2.set_exception(KeyError("k"))
    with pytest.raises(KeyError):
        out2.result(timeout=1)
    src3: Future[int] = Future()
    out3 = chain(src3, lambda v: v)
    assert out3.cancel() and src3.cancelled()
    a: Future[int] = Future()
    b: Future[int] = Future()
    g = gather([a, b])
    b.set_result(2)
    assert not g.done()
    a.set_result(1)
    assert g.result(timeout=1) == [1, 2]
    c: Future[int] = Future()
    d: Future[int] = Future()
    g2 = gather([c, d])
    d.set_exception(ValueError("first"))
    with pytest.raises(ValueError, match="first"):
        g2.result(timeout=1)
    e: Future[int] = Future()
    g3 = gather([e])
    e.cancel()
    with pytest.raises(CancelledError):
        g3.result(timeout=1)
    assert gather([]).result(timeout=1) == []


def test_sequenced_lane_is_fifo_and_poisons() -> None:
    ex = Executor(4)
    lane = SequencedLane(ex, name="model m1")
    order: list[int] = []
    gate = threading.Event()
    try:
        first = lane.submit(lambda: (gate.wait(5), order.append(1))[1], label="seq_id=1")
        rest = [lane.submit(lambda i=i: order.append(i), label=f"seq_id={i}") for i in range(2, 6)]
        cancelled = lane.submit(lambda: order.append(6), label="seq_id=6")
        assert cancelled.cancel()
        gate.set()
        for f in [first, *rest]:
            f.result(timeout=5)
        last = lane.submit(lambda: order.append(7))
        last.result(timeout=5)
        assert order == [1, 2, 3, 4, 5, 6, 7]  # the cancelled call still ran: no seq gap

        def fail() -> None:
            raise APIConnectionError("gone")

        bad = lane.submit(fail, label="optim_step seq_id=8")
        with pytest.raises(APIConnectionError):
            bad.result(timeout=5)
        later = lane.submit(lambda: order.append(9), label="forward_backward seq_id=9")
        with pytest.raises(LanePoisonedError) as info:
            later.result(timeout=5)
        msg = str(info.value)
        assert "seq_id=8" in msg and "seq_id=9" in msg and "gone" in msg
        assert isinstance(info.value.__cause__, APIConnectionError)
        assert 9 not in order
    finally:
        ex.close()


def test_logging_names() -> None:
    # every core module logs under the package logger
    import tinker_sync._poller as poller
    import tinker_sync._runtime as runtime
    import tinker_sync._transport as transport

    for mod in (poller, runtime, transport):
        assert mod.logger.name.startswith("tinker_sync.")
    assert logging.getLogger("tinker_sync").handlers


def test_sample_gate_tightens_to_10_while_recently_limited() -> None:
    from tinker_sync._runtime import _SampleGate

    lim = RateLimiter()
    gate = _SampleGate(lim, threading.Event())
    for _ in range(12):  # not limited: far below 400
        gate.__enter__()
    for _ in range(12):
        gate.__exit__(None, None, None)
    lim.block_for(0.0)  # a zero-length window still counts as "recently limited" for 10 s
    assert lim.recently_limited
    for _ in range(10):
        gate.__enter__()
    entered = threading.Event()

    def eleventh() -> None:
        with gate:
            entered.set()

    t = threading.Thread(target=eleventh)
    t.start()
    assert not entered.wait(0.1)
    gate.__exit__(None, None, None)
    assert entered.wait(5)
    t.join(5)


def test_parse_http_date_is_aware_and_lenient() -> None:
    import datetime as dt

    from tinker_sync._retry import parse_http_date

    when = parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT")
    assert when == dt.datetime(1994, 11, 6, 8, 49, 37, tzinfo=dt.timezone.utc)
    naive_zone = parse_http_date("Sun, 06 Nov 1994 08:49:37 -0000")  # "-0000": no zone given, read as UTC
    assert naive_zone is not None and naive_zone.utcoffset() == dt.timedelta(0)
    assert parse_http_date(None) is None and parse_http_date("") is None and parse_http_date("soon") is None
    # parse_retry_after reads the same date form
    assert parse_retry_after({"Retry-After": "Sun, 06 Nov 1994 08:49:47 GMT"}, now=lambda: when.timestamp()) == 10.0
