"""JWT exchange over real HTTP: a scripted server mints tokens (auth/token) and accepts only live ones.

The credential provider is installed on the runtime's transport, as the client does once the server's
client config says ``pjwt_auth_enabled``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from tests.scripted_server import Reply, ScriptedServer, TokenMinter
from tinker_sync._auth import JwtCredentials, token_exchange
from tinker_sync._config import ClientConfig
from tinker_sync._exceptions import AuthenticationError
from tinker_sync._runtime import Runtime
from tinker_sync.rest_client import whoami_from_jwt

KEY = "tml-poller-auth-0123456789"
THING = "/api/v1/thing"
T = 10.0


@pytest.fixture
def served() -> Iterator[tuple[ScriptedServer, TokenMinter, Runtime, JwtCredentials]]:
    minter = TokenMinter(KEY)
    with ScriptedServer() as srv:
        minter.install(srv)
        minter.protect(srv, THING, Reply(200, {"ok": True}))
        rt = Runtime(ClientConfig(base_url=srv.url, api_key=KEY))
        creds = JwtCredentials(token_exchange(rt.request, lambda: KEY))
        rt.transport.credentials = creds
        try:
            yield srv, minter, rt, creds
        finally:
            rt.close(cancel_pending=True, timeout_s=5.0)


def test_requests_carry_the_minted_jwt(served: tuple[ScriptedServer, TokenMinter, Runtime, JwtCredentials]) -> None:
    srv, minter, rt, _ = served
    assert rt.request("POST", THING, body={}) == {"ok": True}
    assert rt.request("POST", THING, body={}) == {"ok": True}
    (exchange,) = srv.requests_to("/api/v1/auth/token")
    assert exchange.header("X-API-Key") == KEY and exchange.json() == {}
    assert [r.header("X-API-Key") for r in srv.requests_to(THING)] == [minter.minted[0]] * 2


def test_a_rejected_token_is_replaced_once_and_the_request_replayed(
    served: tuple[ScriptedServer, TokenMinter, Runtime, JwtCredentials],
) -> None:
    srv, minter, rt, _ = served
    assert rt.request("POST", THING, body={}) == {"ok": True}
    minter.revoke_all()  # e.g. the server rotated its signing key
    assert rt.request("POST", THING, body={}) == {"ok": True}
    assert len(minter.minted) == 2
    sent = [r.header("X-API-Key") for r in srv.requests_to(THING)]
    assert sent == [minter.minted[0], minter.minted[0], minter.minted[1]]


def test_concurrent_first_requests_share_one_exchange(
    served: tuple[ScriptedServer, TokenMinter, Runtime, JwtCredentials],
) -> None:
    srv, minter, rt, _ = served
    futs = [rt.submit_request("POST", THING, body={}) for _ in range(12)]
    assert [f.result(timeout=T) for f in futs] == [{"ok": True}] * 12
    assert len(srv.requests_to("/api/v1/auth/token")) == 1
    minter.revoke_all()
    futs = [rt.submit_request("POST", THING, body={}) for _ in range(12)]
    assert [f.result(timeout=T) for f in futs] == [{"ok": True}] * 12
    # every request sent with the revoked token was refused and replayed; replacing it cost one exchange
    assert len(minter.minted) == 2


def test_a_refused_key_and_a_plain_401_surface(
    served: tuple[ScriptedServer, TokenMinter, Runtime, JwtCredentials],
) -> None:
    srv, minter, rt, creds = served
    minter.api_key = "tml-some-other-key"
    with pytest.raises(AuthenticationError, match="invalid API key"):
        rt.request("POST", THING, body={})
    assert srv.requests_to(THING) == []
    minter.api_key = KEY
    srv.default("/api/v1/plain", Reply(401, {"detail": "account disabled"}, {"WWW-Authenticate": "Bearer"}))
    with pytest.raises(AuthenticationError, match="account disabled"):
        rt.request("POST", "/api/v1/plain", body={})
    assert len(minter.minted) == 1 and creds.current() == minter.minted[0]


def test_whoami_claims_from_the_exchanged_token(
    served: tuple[ScriptedServer, TokenMinter, Runtime, JwtCredentials],
) -> None:
    _, minter, _, creds = served
    claims = creds.claims()
    assert claims["sub"] == "tml:user:u-1" and claims["org_id"] == "o-1" and claims["email"] == "u1@example.com"
    who = whoami_from_jwt(creds.token())
    assert (who.user_urn, who.email, who.org_urn) == ("tml:user:u-1", "u1@example.com", "tml:organization:o-1")
    assert len(minter.minted) == 1


def test_polls_use_the_jwt_too(served: tuple[ScriptedServer, TokenMinter, Runtime, JwtCredentials]) -> None:
    srv, minter, rt, _ = served
    released = threading.Event()
    minter.protect(srv, "/api/v1/forward", Reply(200, {"request_id": "f-1"}))

    def retrieve(_rec: object) -> Reply:
        released.wait(T)
        return Reply(200, {"done": True})

    minter.protect(srv, "/api/v1/retrieve_future", retrieve)
    fut = rt.submit_polled("/api/v1/forward", {"x": 1}, None, request_type="Forward")
    released.set()
    assert fut.result(timeout=T) == {"done": True}
    assert {r.header("X-API-Key") for r in srv.requests_to("/api/v1/retrieve_future")} == {minter.minted[0]}


def test_the_jwt_never_appears_in_an_error(served: tuple[ScriptedServer, TokenMinter, Runtime, JwtCredentials]) -> None:
    from tests.scripted_server import RecordedRequest
    from tinker_sync._exceptions import BadRequestError

    srv, minter, rt, _ = served

    def echo(rec: RecordedRequest) -> Reply:  # a proxy that echoes the request headers back
        return Reply(400, {"detail": f"bad request, headers were {rec.headers}"})

    minter.protect(srv, "/api/v1/echo", echo)
    with pytest.raises(BadRequestError) as info:
        rt.request("POST", "/api/v1/echo", body={})
    token = minter.minted[0]
    assert token not in str(info.value) and token not in repr(info.value.body)


def test_identity_token_for_whoami(served: tuple[ScriptedServer, TokenMinter, Runtime, JwtCredentials]) -> None:
    from tinker_sync._auth import StaticKey, identity_token

    _, minter, rt, creds = served
    assert identity_token(rt.transport.credentials, KEY) == creds.token() == minter.minted[0]
    assert identity_token(StaticKey(KEY), KEY) == KEY
