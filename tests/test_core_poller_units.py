"""Pure decisions of the 0.38 wire additions, without a server: decide_batch(), JWT refresh timing, 404 on
sequenced polls, zstd encoding choice, and the negotiated PollFeatures."""

from __future__ import annotations

import json
from typing import Any

import attrs
import pytest

from tests.scripted_server import make_jwt
from tinker_sync import _compress
from tinker_sync._auth import (
    JwtCredentials,
    StaticKey,
    TokenTimes,
    is_invalid_token,
    jwt_claims,
    plan_refresh,
    token_action,
)
from tinker_sync._batch_poller import (
    BatchGiveUp,
    BatchRetry,
    BatchState,
    Completed,
    Completion,
    PollFeatures,
    SessionTarget,
    decide_batch,
    decide_batch_connection_error,
)
from tinker_sync._exceptions import (
    APIResponseValidationError,
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    NotFoundError,
    PermissionDeniedError,
)
from tinker_sync._poller import Fail, PollState, Resubmit, decide


def _b(status: int, body: Any = None, state: BatchState | None = None, **kw: Any) -> Any:
    content = body if isinstance(body, bytes) else (b"" if body is None else json.dumps(body).encode())
    return decide_batch(status, {"content-type": "application/json"}, content, state or BatchState(), **kw)


# -- decide_batch ------------------------------------------------------------------------------------


def test_decide_batch_completions_move_the_cursor() -> None:
    d = _b(200, {"completions": [
        {"state": "finished", "request_id": "a", "response_payload_uncompressed_size": 12},
        {"state": "failed", "request_id": "b"},
        # integer ids: other servers
        {"state": "finished", "request_id": 17, "response_payload_uncompressed_size": None},
        {"state": "someday", "request_id": "c"},  # unknown state: the payload fetch tells
    ], "cursor": 9}, BatchState(cursor=5, backoffs=3, server_errors=2, bad_answers=1))
    assert isinstance(d, Completed)
    assert d.completions == (
        Completion("a", payload_size=12), Completion("b", failed=True), Completion("17"), Completion("c"),
    )
    assert d.state == BatchState(cursor=9)
    empty = _b(200, {"completions": [], "cursor": 9}, d.state)
    assert isinstance(empty, Completed) and empty.completions == () and empty.state.cursor == 9


def test_decide_batch_cursor_going_back_ends_batching() -> None:
    d = _b(200, {"completions": [], "cursor": 2}, BatchState(cursor=7))
    assert isinstance(d, BatchGiveUp) and "from 7 to 2" in str(d.exc) and not d.unsupported


def test_decide_batch_malformed_answers_retry_three_times() -> None:
    s = BatchState()
    for body in (b"not json", {"completions": "x", "cursor": 1}, {"completions": [], "cursor": True}):
        d = _b(200, body, s)
        assert isinstance(d, BatchRetry) and d.delay_s == 1.0
        s = d.state
    d = _b(200, {"completions": [{"request_id": None}], "cursor": 2}, s)
    assert isinstance(d, BatchGiveUp) and isinstance(d.exc, APIResponseValidationError) and not d.unsupported


def test_decide_batch_statuses() -> None:
    assert isinstance(_b(408), BatchRetry) and _b(408).delay_s == 0
    s = BatchState()
    delays = []
    for _ in range(3):
        d = _b(503, {}, s)
        assert isinstance(d, BatchRetry)
        delays.append(d.delay_s)
        s = d.state
    assert delays == sorted(delays) and 0 < delays[0] < delays[-1] <= 2.0
    s = BatchState()
    delays = []
    for _ in range(7):
        d = _b(429, {}, s)
        delays.append(d.delay_s)
        s = d.state
    assert delays == [1, 2, 4, 8, 16, 30, 30]
    hinted = decide_batch(429, {"retry-after-ms": "20"}, b"", BatchState(backoffs=4))
    assert isinstance(hinted, BatchRetry) and hinted.delay_s == 0.02 and hinted.state.backoffs == 5
    dated = decide_batch(429, {"retry-after": "Thu, 01 Jan 1970 00:00:07 GMT"}, b"", BatchState(),
                         wall_clock=lambda: 4.0)
    assert isinstance(dated, BatchRetry) and dated.delay_s == 3.0
    reconnects = []
    s = BatchState()
    for _ in range(12):
        d = decide_batch_connection_error(s)
        reconnects.append(d.delay_s)
        s = d.state
    assert reconnects == [0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 30, 30]  # a lost connection: 50 ms first
    for status in (404, 405, 501):
        d = _b(status, {"detail": "Not Found"})
        assert isinstance(d, BatchGiveUp) and d.unsupported
    d = _b(403, {"detail": "no"})
    assert isinstance(d, BatchGiveUp) and isinstance(d.exc, PermissionDeniedError) and not d.unsupported
    s = BatchState()
    for _ in range(3):
        d = _b(400, {"detail": "proxy?"}, s)
        assert isinstance(d, BatchRetry)
        s = d.state
    d = _b(400, {"detail": "proxy?"}, s)
    assert isinstance(d, BatchGiveUp) and isinstance(d.exc, BadRequestError)


def test_decide_batch_billing_pause() -> None:
    d = _b(402, {}, now=10.0)
    assert isinstance(d, BatchRetry) and d.delay_s == 5.0 and d.state.billing_since == 10.0
    assert isinstance(_b(402, {}, d.state, now=10.0 + 3599), BatchRetry)
    assert isinstance(_b(402, {}, d.state, now=10.0 + 3601), BatchGiveUp)


def test_session_target_and_features() -> None:
    @attrs.frozen
    class Req:
        sampling_session_id: Any
        seq_id: Any

    assert SessionTarget.of_request(Req("s", 3)) == SessionTarget("s", 0)
    assert SessionTarget.of_request(Req("s", 7_000_000_005)) == SessionTarget("s", 7)
    for bad in (Req("", 1), Req("s", None), Req("s", True), Req(None, 1), object()):
        assert SessionTarget.of_request(bad) is None

    @attrs.frozen
    class Cfg:
        sample_use_retrieve_futures: Any = False

    @attrs.frozen
    class Dyn:
        sample_cancel_enabled: Any = False
        sample_cancel_max_batch_size: Any = 64

    assert PollFeatures.from_config(None, None) == PollFeatures()
    assert PollFeatures.from_config(Cfg(True), Dyn(True, 8)) == PollFeatures(batched=True, cancel=True, cancel_batch=8)
    assert PollFeatures.from_config(Cfg("yes"), Dyn(1, 0)) == PollFeatures()  # only real booleans count


# -- decide(): 404 on a sequenced call ---------------------------------------------------------------------


def test_decide_404_resubmits_only_sequenced_calls() -> None:
    body = json.dumps({"detail": "gone"}).encode()
    d = decide(404, {}, body, None, PollState(), request_id="r-9", sequenced=True)
    assert isinstance(d, Resubmit) and isinstance(d.exc, NotFoundError) and "r-9" in str(d.exc)
    d = decide(404, {}, body, None, PollState(), request_id="r-9")
    assert isinstance(d, Fail) and isinstance(d.exc, NotFoundError)
    d = decide(410, {}, b"", None, PollState(), sequenced=True)
    assert isinstance(d, Resubmit) and d.exc is None


# -- JWT timing -----------------------------------------------------------------------------------------


def test_plan_refresh_uses_half_the_server_lifetime() -> None:
    times = plan_refresh({"iat": 1_000, "exp": 1_000 + 3600}, received_at=50.0, jitter=0.5)
    assert times == TokenTimes(refresh_at=50.0 + 1800, expires_at=50.0 + 3600)
    lo = plan_refresh({"iat": 0, "exp": 100}, 0.0, 0.45)
    hi = plan_refresh({"iat": 0, "exp": 100}, 0.0, 0.55)
    assert (lo.refresh_at, hi.refresh_at) == pytest.approx((45.0, 55.0))
    # without a usable lifetime: refresh in 60 s, required in 120 s
    assert plan_refresh({"exp": 500}, 10.0, 0.5) == TokenTimes(70.0, 130.0)
    assert plan_refresh({"iat": 9, "exp": 9}, 10.0, 0.5).refresh_at == 70.0


def test_token_action_table() -> None:
    times = TokenTimes(refresh_at=100.0, expires_at=200.0)
    assert token_action(0.0, None) == "must_refresh"
    assert token_action(99.9, times) == "use"
    assert token_action(100.0, times) == "refresh"
    assert token_action(139.9, times) == "refresh"
    assert token_action(140.0, times) == "must_refresh"  # within 60 s of expiry
    assert token_action(500.0, times) == "must_refresh"


def test_jwt_claims_and_invalid_token() -> None:
    token = make_jwt({"sub": "u", "exp": 5})
    assert jwt_claims(token) == {"sub": "u", "exp": 5}
    for bad in ("tml-abc", "a.b", "eyJ.!!!.x", "x." + make_jwt([1]).split(".")[1] + ".y"):
        with pytest.raises(ValueError) as info:
            jwt_claims(bad)
        assert bad not in str(info.value)
    assert is_invalid_token(401, {"WWW-Authenticate": 'Bearer error="invalid_token", error_description="expired"'})
    assert not is_invalid_token(401, {"www-authenticate": "Bearer"})
    assert not is_invalid_token(403, {"WWW-Authenticate": 'Bearer error="invalid_token"'})
    assert not StaticKey("tml-k").on_unauthorized({"WWW-Authenticate": 'error="invalid_token"'}, "tml-k")
    assert "tml-k" not in repr(StaticKey("tml-k"))


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_jwt_credentials_refresh_on_an_injected_clock() -> None:
    clock = FakeClock()
    issued: list[str] = []
    fail = [False]

    def exchange() -> str:
        if fail[0]:
            raise APIStatusError("boom", status_code=503)
        token = make_jwt({"sub": "u", "iat": 0, "exp": 600, "n": len(issued)})
        issued.append(token)
        return token

    creds = JwtCredentials(exchange, clock=clock, jitter=lambda: 0.5)
    first = creds.header_value()
    assert issued == [first] and creds.header_value() == first
    clock.now += 299
    assert creds.header_value() == first and len(issued) == 1
    clock.now += 1  # half the lifetime: refreshed by the next request
    second = creds.header_value()
    assert second != first and len(issued) == 2
    clock.now += 300
    fail[0] = True  # a failed soft refresh keeps the token and backs off 60 s
    assert creds.header_value() == second
    assert creds.header_value() == second and len(issued) == 2
    clock.now += 200  # within 60 s of expiry: every caller must get a fresh one; failing, it still works
    assert creds.header_value() == second
    clock.now += 100  # expired and the exchange fails: the error surfaces
    with pytest.raises(APIStatusError, match="boom"):
        creds.header_value()
    fail[0] = False
    assert creds.header_value() == issued[-1] and len(issued) == 3


def test_jwt_credentials_replace_a_rejected_token_once() -> None:
    tokens = iter(make_jwt({"sub": "u", "iat": 0, "exp": 3600, "n": n}) for n in range(10))
    calls = []

    def exchange() -> str:
        calls.append(1)
        return next(tokens)

    creds = JwtCredentials(exchange, clock=FakeClock(), jitter=lambda: 0.5)
    old = creds.header_value()
    rejected = {"WWW-Authenticate": 'Bearer error="invalid_token"'}
    assert not creds.on_unauthorized({"WWW-Authenticate": "Bearer"}, old)  # not about the token: no replay
    assert creds.on_unauthorized(rejected, old) and len(calls) == 2
    new = creds.header_value()
    assert new != old
    assert creds.on_unauthorized(rejected, old) and len(calls) == 2  # already replaced: no second exchange
    assert creds.claims()["n"] == 1 and creds.current() == new


def test_jwt_credentials_report_a_refused_credential() -> None:
    def exchange() -> str:
        raise AuthenticationError("invalid API key", status_code=401)

    creds = JwtCredentials(exchange, clock=FakeClock())
    with pytest.raises(AuthenticationError):
        creds.header_value()
    assert not creds.on_unauthorized({"WWW-Authenticate": 'error="invalid_token"'}, "x")


# -- zstd ---------------------------------------------------------------------------------------------------


def test_fwdbwd_encoding_choice() -> None:
    assert _compress.fwdbwd_encoding(True, True) == "zstd"
    assert _compress.fwdbwd_encoding(True, False) == "identity"
    assert _compress.fwdbwd_encoding(False, True) == "identity"
    body = b"\x0a\x10" + bytes(range(200)) * 50
    assert _compress.encode_fwdbwd(body, server_asks=False) == (body, {})
    if _compress.zstd_available():
        import zstandard

        data, headers = _compress.encode_fwdbwd(body, server_asks=True)
        assert headers == {"Content-Encoding": "zstd"} and len(data) < len(body)
        assert zstandard.ZstdDecompressor().decompress(data) == body


def test_missing_zstandard_sends_uncompressed_and_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_compress, "_zstd", lambda: None)
    assert not _compress.zstd_available()
    assert _compress.encode_fwdbwd(b"abc", server_asks=True) == (b"abc", {})
    refused = APIStatusError("unsupported media type", status_code=415)
    err = _compress.explain_refusal(refused, headers_sent={}, server_asks=True)
    assert isinstance(err, _compress.CompressionUnavailableError) and err.__cause__ is refused
    assert "pip install 'tinker_sync[zstd]'" in str(err) and "proto_compress_fwdbwd" in str(err)
    named = BadRequestError("body must be zstd compressed", status_code=400)
    refusal = _compress.explain_refusal(named, headers_sent={}, server_asks=True)
    assert isinstance(refusal, _compress.CompressionUnavailableError)
    other = BadRequestError("token id out of range", status_code=400)
    assert _compress.explain_refusal(other, headers_sent={}, server_asks=True) is other
    assert _compress.explain_refusal(refused, headers_sent={"Content-Encoding": "zstd"}, server_asks=True) is refused
    assert _compress.explain_refusal(refused, headers_sent={}, server_asks=False) is refused


def test_exchange_credential_sources() -> None:
    import sys

    from tinker_sync._auth import exchange_credential
    from tinker_sync._config import InvalidConfigError
    from tinker_sync._exceptions import TinkerError

    assert exchange_credential("tml-k", "api_key", {})() == "tml-k"
    jwt = make_jwt({"sub": "u"})
    assert exchange_credential(jwt, "credential_cmd", {})() == jwt  # a JWT key is used as is
    with pytest.raises(InvalidConfigError, match="TINKER_CREDENTIAL_CMD"):
        exchange_credential("tml-k", "credential_cmd", {})
    cmd = f"{sys.executable} -c \"print('  dyn-credential-1  ')\""
    assert exchange_credential("tml-k", "credential_cmd", {"TINKER_CREDENTIAL_CMD": cmd})() == "dyn-credential-1"
    silent = exchange_credential("tml-k", "credential_cmd", {"TINKER_CREDENTIAL_CMD": f"{sys.executable} -c pass"})
    with pytest.raises(TinkerError, match="printed no credential"):
        silent()


def test_decide_probe_table() -> None:
    from tinker_sync._batch_poller import decide_probe

    assert decide_probe(None, b"") == "pending"  # held past the short timeout
    assert decide_probe(200, b'{"type": "try_again", "request_id": "r"}') == "pending"
    assert decide_probe(503, b"") == "pending" and decide_probe(429, b"") == "pending"
    assert decide_probe(404, b'{"detail": "gone"}') == "lost" and decide_probe(410, b"") == "lost"
    assert decide_probe(200, b'{"status": "complete_metadata", "response_payload_size": 3}') == "reported-late"


def test_poll_features_from_the_wire_types() -> None:
    from tinker_sync import _serde, types

    cfg = _serde.loads(b'{"sample_use_retrieve_futures": true, "pjwt_auth_enabled": false}', types.ClientConfigResponse)
    dyn = _serde.loads(b'{"sample_cancel_enabled": true, "sample_cancel_max_batch_size": 16}',
                       types.ClientDynamicConfigResponse)
    assert PollFeatures.from_config(cfg, dyn) == PollFeatures(batched=True, cancel=True, cancel_batch=16)
    assert PollFeatures.from_config(types.ClientConfigResponse(), None) == PollFeatures()
