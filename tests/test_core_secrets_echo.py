"""No secret in any error text, even when a server or proxy echoes the request back.

The scripted server answers errors whose body (and headers) repeat the request's headers and body;
the API key, the Cloudflare secret, the base URL's password and a weights access token must not
survive in the error's str, repr, body, headers or pickle.
"""

from __future__ import annotations

import base64
import json
import os
import pickle
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.scripted_server import RecordedRequest, Reply, ScriptedServer
from tinker_sync._config import ClientConfig
from tinker_sync._exceptions import APIError, BadRequestError, InternalServerError, RequestFailedError, TinkerError
from tinker_sync._retry import RetryPolicy
from tinker_sync._runtime import Runtime

KEY = "tml-echo-secret-key-0123456789"
CF_SECRET = "cf-echo-secret-value-5551234"
URL_PASSWORD = "pw-echo-in-url-42"
TOKEN = "wat-echo-weights-token-777"
T = 10
SECRETS = (KEY, CF_SECRET, URL_PASSWORD, TOKEN, base64.b64encode(f"alice:{URL_PASSWORD}".encode()).decode())


def echo(status: int, *, text: bool = False) -> object:
    def reply(rec: RecordedRequest) -> Reply:
        seen = {"headers": dict(rec.headers), "body": rec.body.decode("utf-8", "replace")}
        body = json.dumps(seen) if text else seen
        return Reply(status, body, headers={"X-Echo-Auth": rec.header("Authorization") or "",
                                            "X-Echo-Key": rec.header("X-API-Key") or ""})
    return reply


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer() as srv:
        yield srv


@pytest.fixture
def rt(server: ScriptedServer) -> Iterator[Runtime]:
    url = server.url.replace("http://", f"http://alice:{URL_PASSWORD}@")
    cfg = ClientConfig(base_url=url, api_key=KEY, retry=RetryPolicy(max_attempts=2, initial_delay_s=0.01),
                       max_workers=2, max_pollers=1, default_headers={"CF-Access-Client-Secret": CF_SECRET})
    runtime = Runtime(cfg)
    yield runtime
    runtime.close(cancel_pending=True)


def assert_clean(err: BaseException) -> None:
    texts = [str(err), repr(err), repr(getattr(err, "body", None)), repr(getattr(err, "headers", None)),
             pickle.dumps(err).decode("latin-1"), str(pickle.loads(pickle.dumps(err)))]
    for text in texts:
        for secret in SECRETS:
            assert secret not in text, f"{secret!r} leaked into {text[:200]!r}"


@pytest.mark.parametrize("text", [False, True])
def test_echoed_request_headers_are_redacted_from_status_errors(
    server: ScriptedServer, rt: Runtime, text: bool
) -> None:
    server.default("/api/v1/echo", echo(400, text=text))
    with pytest.raises(BadRequestError) as info:
        rt.request("POST", "/api/v1/echo", body={"x": 1})
    rec = server.requests_to("/api/v1/echo")[0]
    assert rec.header("X-API-Key") == KEY and rec.header("CF-Access-Client-Secret") == CF_SECRET  # really sent
    assert "<redacted>" in str(info.value)
    assert_clean(info.value)


def test_weights_access_token_in_a_request_body_is_redacted(server: ScriptedServer, rt: Runtime) -> None:
    from tinker_sync.types import LoadWeightsRequest

    server.default("/api/v1/load_weights", echo(500))
    req = LoadWeightsRequest(path="tinker://run/weights/w", optimizer=False, model_id="m", seq_id=1,
                             weights_access_token=TOKEN)
    with pytest.raises(InternalServerError) as info:
        rt.request("POST", "/api/v1/load_weights", body=req)
    assert TOKEN.encode() in server.requests_to("/api/v1/load_weights")[0].body  # it was sent
    assert_clean(info.value)
    # a polled call: the token stays redacted while the call is pending, in the poll's errors too
    server.default("/api/v1/load_weights", Reply(200, {"request_id": "r1"}))
    server.default("/api/v1/retrieve_future", Reply(200, {"error": f"cannot use token {TOKEN}", "category": "user"}))
    fut = rt.submit_polled("/api/v1/load_weights", req, None, request_type="LoadWeights")
    with pytest.raises(RequestFailedError) as failed:
        fut.result(timeout=T)
    assert "<redacted>" in str(failed.value)
    assert_clean(failed.value)


def test_a_secret_cut_by_the_body_truncation_leaves_no_prefix(server: ScriptedServer, rt: Runtime) -> None:
    server.default("/api/v1/long", Reply(400, "x" * 495 + KEY + "y" * 100))
    with pytest.raises(APIError) as info:
        rt.request("POST", "/api/v1/long", body={})
    assert KEY[:8] not in str(info.value)


def test_secrets_are_forgotten_with_the_last_config_using_them() -> None:
    import gc

    from tinker_sync._exceptions import redact

    key = "tml-forgotten-key-31415926"
    cfg = ClientConfig(base_url="http://127.0.0.1:9", api_key=key)
    assert key not in redact(f"echo {key}")
    del cfg
    gc.collect()
    assert redact(f"echo {key}") == f"echo {key}"  # the registry holds no key nobody uses
    assert isinstance(TinkerError("x"), Exception)


# ---------------------------------------------------------------------------------------------
# the URL password in pickles


def test_url_password_is_not_in_the_config_pickle_and_comes_back_in_process() -> None:
    url = f"https://alice:{URL_PASSWORD}@api.example.test/prefix"
    cfg = ClientConfig(base_url=url, api_key=KEY)
    blob = pickle.dumps(cfg)
    assert URL_PASSWORD.encode() not in blob and KEY.encode() not in blob
    back = pickle.loads(blob)
    assert back == cfg and back.base_url == url


def test_url_password_comes_back_in_another_process_only_from_the_environment() -> None:
    url = f"https://alice:{URL_PASSWORD}@api.example.test"
    blob = pickle.dumps(ClientConfig(base_url=url, api_key=KEY))
    code = (
        "import pickle, sys\n"
        "try:\n"
        "    cfg = pickle.loads(sys.stdin.buffer.read())\n"
        "    print('OK', cfg.base_url)\n"
        "except Exception as exc:\n"
        "    print('ERR', type(exc).__name__)\n"
    )

    def child(env: dict[str, str]) -> str:
        full = {k: v for k, v in os.environ.items() if not k.startswith(("TINKER_", "CLOUDFLARE_"))}
        full.update(env)
        out = subprocess.run([sys.executable, "-c", code], input=blob, capture_output=True, env=full, timeout=60,
                             check=True)
        return out.stdout.decode()

    assert child({"TINKER_API_KEY": KEY, "TINKER_BASE_URL": url}).strip() == f"OK {url}"
    assert child({"TINKER_API_KEY": KEY}).startswith("ERR InvalidConfigError")
