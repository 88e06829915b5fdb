"""Transport: one TCP connect per attempt, refused vs timed out, certificate errors fail at once.

Connect attempts are counted with a ``socket.connect`` audit hook (real sockets, nothing mocked) and
retry pauses with an injected sleep, so nothing here depends on timing.
"""

from __future__ import annotations

import json
import socket
import ssl
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tinker_sync._config import ClientConfig, InvalidConfigError
from tinker_sync._exceptions import APICertificateError, APIConnectionError, APITimeoutError
from tinker_sync._retry import RetryPolicy
from tinker_sync._runtime import Runtime

KEY = "tml-transport-secret-key-0123"

_watched_ports: set[int] = set()
_connects: list[int] = []


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event == "socket.connect" and _watched_ports:
        address = args[1]
        if isinstance(address, tuple) and len(address) >= 2 and address[1] in _watched_ports:
            _connects.append(address[1])


sys.addaudithook(_audit)  # audit hooks cannot be removed; this one only counts connects to watched ports


@pytest.fixture
def closed_port() -> Iterator[int]:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _watched_ports.add(port)
    _connects.clear()
    yield port
    _watched_ports.discard(port)


def _runtime(url: str, retry: RetryPolicy, sleeps: list[float], **kw: Any) -> Runtime:
    return Runtime(ClientConfig(base_url=url, api_key=KEY, retry=retry, **kw), sleep=sleeps.append)


def test_no_retries_against_a_refused_port_is_one_connect_and_no_sleep(closed_port: int) -> None:
    sleeps: list[float] = []
    rt = _runtime(f"http://127.0.0.1:{closed_port}", RetryPolicy.no_retries(), sleeps)
    with rt, pytest.raises(APIConnectionError) as info:
        rt.request("POST", "/api/v1/mutate", body={})
    err = info.value
    assert type(err) is APIConnectionError and not isinstance(err, APITimeoutError)  # refused is not a timeout
    assert err.request_sent is False
    assert _connects == [closed_port] and sleeps == []


def test_connect_retries_belong_to_the_retry_policy(closed_port: int) -> None:
    sleeps: list[float] = []
    policy = RetryPolicy(max_attempts=3, initial_delay_s=0.01, max_delay_s=0.01)
    rt = _runtime(f"http://127.0.0.1:{closed_port}", policy, sleeps)
    with rt, pytest.raises(APIConnectionError) as info:
        rt.request("GET", "/api/v1/healthz")
    assert info.value.request_sent is False
    assert len(_connects) == 3 and len(sleeps) == 2  # one TCP connect per attempt, every wait ours


# ---------------------------------------------------------------------------------------------
# TLS


@pytest.fixture
def https_server(self_signed: tuple[Path, Path]) -> Iterator[int]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            data = json.dumps({"ok": True}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def handle(self) -> None:
            try:
                super().handle()
            except (ssl.SSLError, OSError):
                pass  # the client refused our certificate

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*self_signed)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True, do_handshake_on_connect=False)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    port = httpd.server_address[1]
    _watched_ports.add(port)
    _connects.clear()
    try:
        yield port
    finally:
        _watched_ports.discard(port)
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def test_certificate_error_fails_at_once_naming_the_ca_settings(
    https_server: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE"):
        monkeypatch.delenv(var, raising=False)
    sleeps: list[float] = []
    policy = RetryPolicy(max_attempts=5, initial_delay_s=0.01)
    rt = _runtime(f"https://127.0.0.1:{https_server}", policy, sleeps)
    with rt, pytest.raises(APICertificateError) as info:
        rt.request("GET", "/api/v1/healthz")
    text = str(info.value)
    assert "ca_bundle" in text and "REQUESTS_CA_BUNDLE" in text and "SSL_CERT_FILE" in text
    assert info.value.request_sent is False and KEY not in text
    assert len(_connects) == 1 and sleeps == []  # not retried


def test_ca_bundle_setting_trusts_the_server(https_server: int, self_signed: tuple[Path, Path]) -> None:
    sleeps: list[float] = []
    with _runtime(f"https://127.0.0.1:{https_server}", RetryPolicy.no_retries(), sleeps,
                  ca_bundle=str(self_signed[0])) as rt:
        assert rt.request("GET", "/api/v1/healthz") == {"ok": True}


def test_ca_bundle_must_be_a_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidConfigError, match="ca_bundle"):
        ClientConfig(base_url="https://127.0.0.1:9", api_key=KEY, ca_bundle=str(tmp_path / "missing.pem"))


class _ForwardProxy:
    """A plain HTTP forward proxy on 127.0.0.1: it records each absolute-form target and forwards it."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str | None]] = []  # (target, the X-API-Key it carried)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                import http.client
                from urllib.parse import urlsplit

                proxy.seen.append((self.path, self.headers.get("X-API-Key")))
                up = urlsplit(self.path)
                conn = http.client.HTTPConnection(up.hostname or "", up.port or 80, timeout=10)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("proxy-connection", "connection")}
                conn.request("GET", up.path + (f"?{up.query}" if up.query else ""), headers=headers)
                resp = conn.getresponse()
                body = resp.read()
                conn.close()
                self.send_response(resp.status)
                self.send_header("Content-Type", resp.getheader("Content-Type") or "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02},
                                        daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> _ForwardProxy:  # noqa: PYI034 - typing.Self needs Python 3.11
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def test_the_environment_proxy_is_used_and_no_proxy_bypasses_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.scripted_server import Reply, ScriptedServer
    from tinker_sync._transport import Transport

    for var in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(var.upper(), raising=False)
    with ScriptedServer() as srv, _ForwardProxy() as proxy:
        srv.default("/api/v1/healthz", Reply(200, {"status": "ok"}))
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        transport = Transport(ClientConfig(base_url=srv.url, api_key=KEY))
        try:
            assert transport.send("GET", "/api/v1/healthz").json() == {"status": "ok"}
            # through a proxy urllib3 writes the head itself: a line break is still refused without an echo
            with pytest.raises(ValueError) as info:
                transport.send("GET", "/api/v1/healthz", headers={"X-Token": "secret-value\r\nX-Injected: 1"})
            assert "secret-value" not in str(info.value)
        finally:
            transport.close()
        assert proxy.seen == [(f"{srv.url}/api/v1/healthz", KEY)]  # absolute-form target via the proxy
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        transport = Transport(ClientConfig(base_url=srv.url, api_key=KEY))
        try:
            assert transport.send("GET", "/api/v1/healthz").status == 200
        finally:
            transport.close()
        assert len(proxy.seen) == 1 and len(srv.requests_to("/api/v1/healthz")) == 2  # the second went direct
