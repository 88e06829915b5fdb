"""Credential safety and per-call retry rules, over real HTTP against tests/scripted_server.py.

The API key must reach the configured API host only: redirects are never followed, signed URLs are
downloaded without it, and it appears in no repr, pickle, log line or error message.
"""

from __future__ import annotations

import datetime as _dt
import email.utils
import io
import logging
import os
import pickle
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.scripted_server import Reply, ScriptedServer
from tinker_sync._config import ClientConfig, InvalidConfigError
from tinker_sync._exceptions import (
    APIConnectionError,
    APIStatusError,
    ConflictError,
    InternalServerError,
    NotFoundError,
)
from tinker_sync._retry import RetryPolicy
from tinker_sync._runtime import Runtime
from tinker_sync.cli import main as cli_main
from tinker_sync.rest_client import RestClient

KEY = "tml-security-secret-key-0123456789"
CF_SECRET = "cf-secret-value-987654"
CF_HEADERS = {"CF-Access-Client-Secret": CF_SECRET}
FAST = RetryPolicy(initial_delay_s=0.01, max_delay_s=0.02, max_attempts=4)
T = 10
RUN, CKPT = "run-1", "weights/w1"
ARCHIVE = f"/api/v1/training_runs/{RUN}/checkpoints/{CKPT}/archive"


@pytest.fixture
def api() -> Iterator[ScriptedServer]:
    with ScriptedServer() as srv:
        yield srv


@pytest.fixture
def storage() -> Iterator[ScriptedServer]:
    """A second host (another port): stands in for the signed-URL storage."""
    with ScriptedServer() as srv:
        yield srv


@pytest.fixture
def rt(api: ScriptedServer) -> Iterator[Runtime]:
    cfg = ClientConfig(
        base_url=api.url, api_key=KEY, retry=FAST, max_workers=2, max_pollers=1,
        default_headers={"CF-Access-Client-Id": "cf-id", "CF-Access-Client-Secret": CF_SECRET},
    )
    runtime = Runtime(cfg)
    yield runtime
    runtime.close(cancel_pending=True)


def _no_credentials(srv: ScriptedServer) -> None:
    for rec in srv.requests:
        for name in ("X-API-Key", "Authorization", "CF-Access-Client-Id", "CF-Access-Client-Secret"):
            assert rec.header(name) is None, f"{name} reached {rec.path}"
        assert KEY not in str(rec.headers) and CF_SECRET not in str(rec.headers)


# ---------------------------------------------------------------------------------------------
# redirects


@pytest.mark.parametrize(("method", "status"), [("GET", 302), ("POST", 307), ("DELETE", 308), ("GET", 301)])
def test_redirect_to_another_host_is_not_followed(
    api: ScriptedServer, storage: ScriptedServer, rt: Runtime, method: str, status: int
) -> None:
    api.default("/api/v1/thing", Reply(status, b"", headers={"Location": storage.url + "/steal"}))
    storage.default("/steal", Reply(200, {"ok": True}))
    with pytest.raises(APIStatusError) as info:
        rt.request(method, "/api/v1/thing", body={"a": 1} if method == "POST" else None)
    assert info.value.status_code == status
    resp = rt.request(method, "/api/v1/thing", return_response=True)
    assert resp.status == status and resp.headers["location"] == storage.url + "/steal"
    assert storage.requests == []  # the other host never saw the request, hence never the key
    assert api.requests[0].header("X-API-Key") == KEY  # the API host itself does get it


# ---------------------------------------------------------------------------------------------
# checkpoint archive URL (docs/protocol.rst §8.3)


def test_archive_url_from_302_with_and_without_expires(
    api: ScriptedServer, storage: ScriptedServer, rt: Runtime
) -> None:
    rest = RestClient(rt)
    expires = _dt.datetime(2031, 5, 6, 7, 8, 9, tzinfo=_dt.timezone.utc)
    signed = storage.url + "/bucket/ckpt.tar?sig=abc"
    api.script(
        ARCHIVE,
        Reply(302, b"", headers={"Location": signed, "Expires": email.utils.format_datetime(expires, usegmt=True)}),
        Reply(302, b"", headers={"Location": "/relative/ckpt.tar"}),
    )
    got = rest.get_checkpoint_archive_url(RUN, CKPT).result(T)
    assert got.url == signed and got.expires == expires
    before = _dt.datetime.now(_dt.timezone.utc)
    got = rest.get_checkpoint_archive_url_from_tinker_path(f"tinker://{RUN}/{CKPT}").result(T)
    assert got.url == api.url + "/relative/ckpt.tar"  # a relative Location resolves against the API URL
    assert _dt.timedelta(minutes=14) < got.expires - before < _dt.timedelta(minutes=16)
    assert len(api.requests_to(ARCHIVE)) == 2 and storage.requests == []


def test_archive_url_from_200_json(api: ScriptedServer, rt: Runtime) -> None:
    api.script(ARCHIVE, Reply(200, {"url": "https://storage.example/x.tar", "expires": "2031-01-02T03:04:05Z"}))
    got = RestClient(rt).get_checkpoint_archive_url(RUN, CKPT).result(T)
    assert got.url == "https://storage.example/x.tar"
    assert got.expires == _dt.datetime(2031, 1, 2, 3, 4, 5, tzinfo=_dt.timezone.utc)


def test_archive_503_still_building_is_asked_again(api: ScriptedServer, rt: Runtime) -> None:
    api.script(ARCHIVE, Reply(503, {"detail": "building"}), Reply(503, {"detail": "building"}),
               Reply(302, b"", headers={"Location": "https://storage.example/y.tar"}))
    got = RestClient(rt).get_checkpoint_archive_url(RUN, CKPT, building_retry_s=0.01).result(T)
    assert got.url == "https://storage.example/y.tar" and len(api.requests_to(ARCHIVE)) == 3
    # past building_attempts the ordinary policy (FAST: 4 attempts) takes over, then the 503 surfaces
    api.default(ARCHIVE, Reply(503, {"detail": "building"}))
    with pytest.raises(InternalServerError):
        RestClient(rt).get_checkpoint_archive_url(RUN, CKPT, building_retry_s=0.01, building_attempts=2).result(T)
    assert len(api.requests_to(ARCHIVE)) == 3 + 1 + FAST.max_attempts
    with pytest.raises(ValueError, match="building_attempts"):
        RestClient(rt).get_checkpoint_archive_url(RUN, CKPT, building_attempts=0)


def test_archive_redirect_without_location_is_an_error(api: ScriptedServer, rt: Runtime) -> None:
    api.script(ARCHIVE, Reply(302, b""))
    with pytest.raises(Exception, match="Location"):
        RestClient(rt).get_checkpoint_archive_url(RUN, CKPT).result(T)


def _tar_bytes() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in (("adapter_config.json", b"{}"), ("checkpoint_complete", b"")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_cli_download_sends_no_key_to_the_signed_url(
    api: ScriptedServer, storage: ScriptedServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TINKER_API_KEY", KEY)
    monkeypatch.setenv("TINKER_BASE_URL", api.url)
    monkeypatch.setenv("CLOUDFLARE_ACCESS_CLIENT_ID", "cf-id")
    monkeypatch.setenv("CLOUDFLARE_ACCESS_CLIENT_SECRET", CF_SECRET)
    api.default(ARCHIVE, Reply(302, b"", headers={"Location": storage.url + "/bucket/ckpt.tar?sig=1"}))
    storage.default("/bucket/ckpt.tar", Reply(200, _tar_bytes(), headers={"Content-Type": "application/x-tar"}))
    out, err = io.StringIO(), io.StringIO()
    code = cli_main(["checkpoint", "download", f"tinker://{RUN}/{CKPT}", "-o", str(tmp_path)], stdout=out, stderr=err)
    assert code == 0, err.getvalue()
    extracted = tmp_path / f"{RUN}_weights_w1"
    assert (extracted / "adapter_config.json").read_bytes() == b"{}"
    assert len(storage.requests) == 1
    _no_credentials(storage)
    assert api.requests_to(ARCHIVE)[0].header("X-API-Key") == KEY


# ---------------------------------------------------------------------------------------------
# the key in reprs, pickles, logs and error messages


def test_config_pickle_carries_no_secret_and_restores_in_process() -> None:
    cfg = ClientConfig(base_url="http://127.0.0.1:9", api_key=KEY, default_headers=CF_HEADERS)
    blob = pickle.dumps(cfg)
    assert KEY.encode() not in blob and CF_SECRET.encode() not in blob
    assert pickle.loads(blob) == cfg  # this process built it, so it knows the credentials


def _unpickle_in_child(blob: bytes, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    code = (
        "import pickle, sys\n"
        "try:\n"
        "    cfg = pickle.loads(sys.stdin.buffer.read())\n"
        "    print('OK', cfg.api_key == " + repr(KEY) + ", dict(cfg.default_headers))\n"
        "except Exception as exc:\n"
        "    print('ERR', type(exc).__name__, exc)\n"
    )
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("TINKER_", "CLOUDFLARE_"))}
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "-c", code], input=blob.decode("latin-1"), capture_output=True, text=True,
        encoding="latin-1", env=full_env, timeout=60, check=True,
    )


def test_config_unpickled_in_another_process_takes_the_key_from_the_environment() -> None:
    cfg = ClientConfig(base_url="http://127.0.0.1:9", api_key=KEY, default_headers=CF_HEADERS)
    blob = pickle.dumps(cfg)
    ok = _unpickle_in_child(blob, {"TINKER_API_KEY": KEY, "CLOUDFLARE_ACCESS_CLIENT_SECRET": CF_SECRET})
    assert ok.stdout.startswith("OK True") and CF_SECRET in ok.stdout, ok.stdout + ok.stderr
    missing = _unpickle_in_child(blob, {})
    assert missing.stdout.startswith("ERR InvalidConfigError") and "TINKER_API_KEY" in missing.stdout
    wrong = _unpickle_in_child(
        blob, {"TINKER_API_KEY": "tml-another-key", "CLOUDFLARE_ACCESS_CLIENT_SECRET": CF_SECRET}
    )
    assert wrong.stdout.startswith("ERR InvalidConfigError") and "tml-another-key" not in wrong.stdout


def test_no_key_in_reprs_logs_or_errors(
    api: ScriptedServer, rt: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="tinker_sync")
    api.script("/api/v1/x", Reply(500, {"detail": "boom"}), Reply(200, {"ok": 1}))
    api.default("/api/v1/y", Reply(404, {"detail": "nope"}))
    assert rt.request("POST", "/api/v1/x", body={}) == {"ok": 1}
    with pytest.raises(NotFoundError) as info:
        rt.request("GET", "/api/v1/y")
    texts = [r.getMessage() for r in caplog.records] + [repr(rt), repr(rt.transport), repr(rt.config), str(info.value)]
    assert caplog.records  # DEBUG lines were produced ...
    for text in texts:  # ... and none of them, nor any repr or error, holds a secret
        assert KEY not in text and CF_SECRET not in text


def test_url_credentials_are_redacted_from_connection_errors() -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = ClientConfig(base_url=f"http://user:pw-in-url-secret@127.0.0.1:{port}", api_key=KEY,
                       retry=RetryPolicy.no_retries(), connect_timeout_s=1.0)
    with Runtime(cfg) as runtime:
        with pytest.raises(APIConnectionError) as info:
            runtime.request("GET", "/api/v1/healthz")
        assert "pw-in-url-secret" not in str(info.value) and "pw-in-url-secret" not in repr(runtime.transport)


def test_header_values_that_requests_would_quote_are_refused_without_echo() -> None:
    with pytest.raises(InvalidConfigError) as info:
        ClientConfig(
            base_url="http://127.0.0.1:9", api_key=KEY, default_headers={"CF-Access-Client-Secret": " s3cret\n"}
        )
    assert "s3cret" not in str(info.value) and "CF-Access-Client-Secret" in str(info.value)


# ---------------------------------------------------------------------------------------------
# per-call retry rules of RestClient


PUBLISH = f"/api/v1/training_runs/{RUN}/checkpoints/{CKPT}/publish"
TTL = f"/api/v1/training_runs/{RUN}/checkpoints/{CKPT}/ttl"
DELETE = f"/api/v1/training_runs/{RUN}/checkpoints/{CKPT}"
TP = f"tinker://{RUN}/{CKPT}"


def test_publish_409_is_final_but_5xx_is_retried(api: ScriptedServer, rt: Runtime) -> None:
    rest = RestClient(rt)
    api.script(PUBLISH, Reply(409, {"detail": "already public"}))
    with pytest.raises(ConflictError):
        rest.publish_checkpoint_from_tinker_path(TP).result(T)
    assert len(api.requests_to(PUBLISH)) == 1
    api.script(PUBLISH, Reply(502, {"detail": "bad gateway"}), Reply(200, {}))
    assert rest.publish_checkpoint_from_tinker_path(TP).result(T) is None
    assert len(api.requests_to(PUBLISH)) == 3


def test_publish_409_after_a_lost_answer_counts_as_done(api: ScriptedServer, rt: Runtime) -> None:
    rest = RestClient(rt)
    api.script(PUBLISH, Reply(drop=True), Reply(409, {"detail": "already public"}))  # 1st applied, answer lost
    assert rest.publish_checkpoint_from_tinker_path(TP).result(T) is None
    api.script(PUBLISH, Reply(503, {"detail": "x"}), Reply(409, {"detail": "already private"}))
    assert rest.unpublish_checkpoint_from_tinker_path(TP).result(T) is None
    assert [r.method for r in api.requests_to(PUBLISH)] == ["POST", "POST", "DELETE", "DELETE"]


def test_delete_404_on_resend_is_success_but_not_on_first_attempt(api: ScriptedServer, rt: Runtime) -> None:
    rest = RestClient(rt)
    api.script(DELETE, Reply(404, {"detail": "no such checkpoint"}))
    with pytest.raises(NotFoundError):
        rest.delete_checkpoint(RUN, CKPT).result(T)
    api.script(DELETE, Reply(500, {"detail": "x"}), Reply(404, {"detail": "no such checkpoint"}))
    assert rest.delete_checkpoint_from_tinker_path(TP).result(T) is None
    api.script(DELETE, Reply(409, {"detail": "in use"}))
    with pytest.raises(ConflictError):
        rest.delete_checkpoint(RUN, CKPT).result(T)
    assert len(api.requests_to(DELETE)) == 4


def test_ttl_409_is_not_retried(api: ScriptedServer, rt: Runtime) -> None:
    api.script(TTL, Reply(409, {"detail": "conflict"}))
    with pytest.raises(ConflictError):
        RestClient(rt).set_checkpoint_ttl_from_tinker_path(TP, 60).result(T)
    assert len(api.requests_to(TTL)) == 1


def test_default_policy_still_retries_409(api: ScriptedServer, rt: Runtime) -> None:
    api.script("/api/v1/z", Reply(409, {"detail": "busy"}), Reply(200, {"ok": 1}))
    assert rt.request("POST", "/api/v1/z", body={}) == {"ok": 1}
    api.script("/api/v1/z", Reply(409, {"detail": "busy"}), Reply(200, {"ok": 2}))
    with pytest.raises(ConflictError):
        rt.request("POST", "/api/v1/z", body={}, retry_statuses=())
    assert len(api.requests_to("/api/v1/z")) == 3


def test_retry_statuses_override_is_exact() -> None:
    policy = RetryPolicy().only_statuses({429})
    assert policy.is_retryable_status(429) and not policy.is_retryable_status(503)
    assert not policy.is_retryable_status(409)
    assert policy.is_retryable_status(409, {"x-should-retry": "true"})  # the server's hint still wins
    assert RetryPolicy().is_retryable_status(503) and RetryPolicy().is_retryable_status(409)
