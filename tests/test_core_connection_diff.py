"""The lean exchange (``_connection``) against urllib3's own, on the same bytes: same answers, same requests.

Two transports talk to the same scripted raw server on 127.0.0.1, one with the lean connection class and
one with urllib3's (TINKER_SYNC_LEAN_HTTP=0). Whatever the server sends, both must report the same status,
fields and body and use the same number of connections; and both must put the same fields on the wire.
"""

from __future__ import annotations

import gzip
import http.client
import re
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_core_connection import RawServer, ok
from tinker_sync._config import ClientConfig
from tinker_sync._connection import lean_supported
from tinker_sync._exceptions import APIConnectionError
from tinker_sync._transport import Transport

KEY = "tml-connection-diff-key-0123456789"
needs_lean = pytest.mark.skipif(not lean_supported(), reason="urllib3 1.x: urllib3's own exchange is always used")

REPLIES = [
    ok(b'{"a": 1}', "Content-Type: application/json", "Server: x "),
    ok(b"", "X-Empty:", "X-Spaces:   padded\t "),
    ok(b"two", "Set-Thing: a", "set-thing: b", "SET-THING: c"),
    ok(b"fold", "X-Folded: one", "  two", "\tthree"),
    ok(b"latin", "X-Latin: caf\xe9".encode("latin-1").decode("latin-1")),
    b"HTTP/1.1 100 Continue\r\nX-Interim: 1\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\nT: 1\r\n\r\n",
    ok(gzip.compress(b"zipped" * 100), "Content-Encoding: gzip"),
    ok(b"id", "Content-Encoding: identity"),
    b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\r\n{\"detail\":\"no\"}",
    b"HTTP/1.1 204 No Content\r\nX-A: b\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\nbody-until-close",
    b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nold",
    ok(bytes(range(256)) * 1200, "Content-Type: application/octet-stream"),  # 300 KiB: several reads
    ok(b"spaced", status="200  Fine  "),
    ok(b"cl", "Content-Length: 2"),  # the same length twice
    # a digit, but not an ASCII one
    "HTTP/1.1 200 OK\r\nContent-Length: \xb2\r\nConnection: close\r\n\r\n".encode("latin-1"),
    ok(b"last", "Connection: close"),
]


@pytest.fixture
def pair(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[RawServer, RawServer, Transport, Transport]]:
    closes = {i for i, r in enumerate(REPLIES) if b"until-close" in r or b"HTTP/1.0" in r or b"close" in r}
    servers = RawServer(list(REPLIES), close_after=closes), RawServer(list(REPLIES), close_after=closes)
    monkeypatch.setenv("TINKER_SYNC_LEAN_HTTP", "1")
    lean = Transport(ClientConfig(base_url=servers[0].url, api_key=KEY))
    monkeypatch.setenv("TINKER_SYNC_LEAN_HTTP", "0")
    stock = Transport(ClientConfig(base_url=servers[1].url, api_key=KEY))
    yield servers[0], servers[1], lean, stock
    for tr in (lean, stock):
        tr.close()
    for server in servers:
        server.close()


@pytest.fixture
def putheader_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the fields http.client's putheader() writes from now on (urllib3's own request() uses it)."""
    fields: list[str] = []
    real = http.client.HTTPConnection.putheader

    def counting(self: http.client.HTTPConnection, header: str, *values: str) -> None:
        fields.append(header)
        real(self, header, *values)

    monkeypatch.setattr(http.client.HTTPConnection, "putheader", counting)
    return fields


def _fields(request: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = request.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        fields[name.lower()] = value.strip()
    fields["host"] = fields["host"].rsplit(":", 1)[0]  # the two servers listen on different ports
    return lines[0], fields, body


def test_both_exchanges_read_every_reply_alike_and_send_the_same_requests(
    pair: tuple[RawServer, RawServer, Transport, Transport],
) -> None:
    lean_server, stock_server, lean, stock = pair
    calls = [("POST", "/api/v1/x", b'{"q": 1}'), ("GET", "/api/v1/y", None), ("POST", "/api/v1/z", None),
             ("DELETE", "/api/v1/d", None), ("PUT", "/api/v1/p", b"\x00\xff" * 40_000)]
    for i in range(len(REPLIES)):
        method, path, body = calls[i % len(calls)]
        kw = {"body": body, "content_type": "application/octet-stream", "headers": {"X-Call": str(i)}}
        a = lean.send(method, path, **kw)  # type: ignore[arg-type]
        b = stock.send(method, path, **kw)  # type: ignore[arg-type]
        assert (a.status, dict(a.headers), a.content) == (b.status, dict(b.headers), b.content), REPLIES[i][:60]
    assert lean_server.connections == stock_server.connections
    assert [_fields(r) for r in lean_server.requests] == [_fields(r) for r in stock_server.requests]


@needs_lean
def test_the_lean_exchange_writes_no_field_through_http_client(
    pair: tuple[RawServer, RawServer, Transport, Transport], putheader_calls: list[str],
) -> None:
    lean_server, _, lean, stock = pair
    fields = putheader_calls
    assert lean.send("POST", "/api/v1/x", body=b"{}", content_type="application/json").status == 200
    assert fields == []
    assert stock.send("POST", "/api/v1/x", body=b"{}", content_type="application/json").status == 200
    assert "X-API-Key" in fields
    fields.clear()
    # urlopen percent-encodes the target before the connection sees it: the lean exchange writes it so.
    assert lean.send("GET", "/api/v1/runs/a b").status == 200
    assert fields == [] and lean_server.requests[-1].startswith(b"GET /api/v1/runs/a%20b HTTP/1.1\r\n")
    # What the lean head does not cover (here a value that is not a str) goes through urllib3's request().
    assert lean.send("GET", "/api/v1/y", headers={"X-Number": 5}).status == 200  # type: ignore[dict-item]
    assert "X-Number" in fields and b"\r\nX-Number: 5\r\n" in lean_server.requests[-1]


@needs_lean
@pytest.mark.parametrize(("value", "lean"), [("1", True), ("", True), ("0", False), ("off", False), ("False", False)])
def test_tinker_sync_lean_http_turns_the_lean_exchange_off(
    monkeypatch: pytest.MonkeyPatch, putheader_calls: list[str], value: str, lean: bool,
) -> None:
    server = RawServer([ok(b"x")])
    fields = putheader_calls
    monkeypatch.setenv("TINKER_SYNC_LEAN_HTTP", value)
    tr = Transport(ClientConfig(base_url=server.url, api_key=KEY))
    try:
        assert tr.send("GET", "/v").content == b"x"
        assert (fields == []) is lean
    finally:
        tr.close()
        server.close()


def test_both_exchanges_agree_over_tls(monkeypatch: pytest.MonkeyPatch, self_signed: tuple[Path, Path]) -> None:
    # TLS hands data over in records of at most 16 KiB: bodies and heads come in many reads
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*self_signed)
    big = bytes(range(256)) * 4096
    replies = [
        ok(big, "Content-Type: application/octet-stream"),
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ok(gzip.compress(big), "Content-Encoding: gzip"),
        ok(b"two", "Set-Thing: a", "set-thing: b"),
        ok(b"{}", "Content-Type: application/json"),
    ]
    servers = RawServer(list(replies), tls=ctx), RawServer(list(replies), tls=ctx)
    transports = []
    for server, lean in zip(servers, ("1", "0")):
        monkeypatch.setenv("TINKER_SYNC_LEAN_HTTP", lean)
        transports.append(Transport(ClientConfig(base_url=server.url, api_key=KEY, ca_bundle=str(self_signed[0]))))
    try:
        for i in range(len(replies)):
            a, b = (tr.send("POST", "/api/v1/t", body=b"x" * (i * 30_000)) for tr in transports)
            assert (a.status, dict(a.headers), a.content) == (b.status, dict(b.headers), b.content)
        assert servers[0].connections == servers[1].connections == 1
        assert [_fields(r) for r in servers[0].requests] == [_fields(r) for r in servers[1].requests]
    finally:
        for tr in transports:
            tr.close()
        for server in servers:
            server.close()


def _failure(tr: Transport, **kw: object) -> tuple[str, str, bool]:
    with pytest.raises(APIConnectionError) as info:
        tr.send("POST", "/api/v1/f", body=b'{"x": 1}', **kw)  # type: ignore[arg-type]
    err = info.value
    # the ports differ, and urllib3 names the connection (class, or object address in 1.x) in some messages
    message = re.sub(r"port=\d+|:\d+| at 0x[0-9a-f]+", "", str(err)).replace("LeanHTTP", "HTTP")
    return type(err).__name__, message, err.request_sent


@pytest.mark.parametrize(
    ("reply", "kw"),
    [
        (None, {}),  # closed without a byte
        (b"garbage\r\n\r\n", {}),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", {}),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", {}),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\npart", {}),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\npart", {"timeout_s": 0.2}),  # the rest never comes
        (b"HTTP/1.1 200 OK\r\nContent-Le", {"timeout_s": 0.2}),  # nor the rest of the head
    ],
)
def test_both_exchanges_report_a_failure_alike(
    monkeypatch: pytest.MonkeyPatch, reply: bytes | None, kw: dict[str, object],
) -> None:
    # Same error class, message (ports aside) and request_sent; the broken connection is not reused.
    closes = set() if kw else {0}  # a timeout: the server keeps the connection open
    servers = [RawServer([reply, ok(b"next")], close_after=closes) for _ in range(2)]
    transports = []
    for server, lean in zip(servers, ("1", "0")):
        monkeypatch.setenv("TINKER_SYNC_LEAN_HTTP", lean)
        transports.append(Transport(ClientConfig(base_url=server.url, api_key=KEY)))
    try:
        lean_failure, stock_failure = (_failure(tr, **kw) for tr in transports)
        assert lean_failure == stock_failure
        assert lean_failure[2] is True and KEY not in lean_failure[1]
        assert [tr.send("GET", "/api/v1/n").content for tr in transports] == [b"next", b"next"]
        assert servers[0].connections == servers[1].connections == 2
        if kw:
            assert lean_failure[0] == "APITimeoutError"
    finally:
        for tr in transports:
            tr.close()
        for server in servers:
            server.close()


def test_both_exchanges_report_refused_connections_and_untrusted_certificates_alike(
    monkeypatch: pytest.MonkeyPatch, self_signed: tuple[Path, Path],
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free_port = probe.getsockname()[1]  # nothing listens here once the probe is closed
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*self_signed)
    tls_server = RawServer([ok(b"x"), ok(b"x")], tls=ctx)
    failures = {}
    try:
        for lean in ("1", "0"):
            monkeypatch.setenv("TINKER_SYNC_LEAN_HTTP", lean)
            refused = Transport(ClientConfig(base_url=f"http://127.0.0.1:{free_port}", api_key=KEY))
            untrusted = Transport(ClientConfig(base_url=tls_server.url, api_key=KEY))  # the CA is not given
            failures[lean] = [_failure(refused), _failure(untrusted)]
            refused.close()
            untrusted.close()
    finally:
        tls_server.close()
    assert failures["1"] == failures["0"]
    (refused_kind, _, refused_sent), (untrusted_kind, _, untrusted_sent) = failures["1"]
    assert (refused_kind, refused_sent) == ("APIConnectionError", False)
    assert (untrusted_kind, untrusted_sent) == ("APICertificateError", False)
