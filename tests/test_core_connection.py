"""The transport's connection class (``_connection``, the lean exchange) against a raw socket server on 127.0.0.1.

The server answers each request with scripted bytes, so every framing the exchange must read (chunked,
close-delimited, gzip/deflate, 1xx interim answers, folded and repeated fields, HTTP/1.0) and every
broken answer is exercised byte for byte. It records the raw requests and counts connections, so
keep-alive reuse and the request head itself are checked too. Every test runs twice: with the lean
exchange and with urllib3's own (TINKER_SYNC_LEAN_HTTP=0), which must give the same answers; a last
group compares the two directly on the same bytes.
"""

from __future__ import annotations

import gzip
import socket
import ssl
import threading
import time
import zlib
from collections.abc import Iterator
from typing import Any

import pytest

from tinker_sync._config import ClientConfig
from tinker_sync._connection import lean_supported
from tinker_sync._exceptions import APIConnectionError, APITimeoutError
from tinker_sync._transport import Transport

KEY = "tml-connection-secret-key-0123456789"


@pytest.fixture(params=["lean", "stock"], autouse=True)
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("TINKER_SYNC_LEAN_HTTP", "1" if request.param == "lean" else "0")
    return str(request.param)


class RawServer:
    """Answers the n-th request with ``replies[n]`` (bytes; ``None`` = close without answering)."""

    def __init__(
        self, replies: list[Any], *, close_after: set[int] | None = None, tls: ssl.SSLContext | None = None,
        slow_reads: set[int] | None = None,
    ) -> None:
        self.replies = replies
        self.tls = tls  # answer over TLS with this server context
        self.close_after = close_after or set()
        self.slow_reads = slow_reads or set()  # requests the server starts reading only after a second
        self.requests: list[bytes] = []
        self.connections = 0
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.05)
        self.port = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self.handler_done = threading.Event()  # set each time the server closes a connection
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            self.connections += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _read_request(self, conn: socket.socket, buf: bytes) -> tuple[bytes | None, bytes]:
        while b"\r\n\r\n" not in buf:
            chunk = conn.recv(65536)
            if not chunk:
                return None, b""
            buf += chunk
        head, _, rest = buf.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        body = bytearray(rest)  # (bytes += would copy the whole body on every read)
        while len(body) < length:
            chunk = conn.recv(1 << 20)
            if not chunk:
                return None, b""
            body += chunk
        return head + b"\r\n\r\n" + bytes(body[:length]), bytes(body[length:])

    def _handle(self, conn: socket.socket) -> None:
        try:
            if self.tls is not None:
                conn.settimeout(10)
                try:
                    conn = self.tls.wrap_socket(conn, server_side=True)
                except (ssl.SSLError, OSError):
                    conn.close()
                    return
            self._answer(conn)
        finally:
            self.handler_done.set()

    def _answer(self, conn: socket.socket) -> None:
        buf = b""
        with conn:
            while True:
                if len(self.requests) in self.slow_reads:
                    time.sleep(1.0)
                try:
                    request, buf = self._read_request(conn, buf)
                except OSError:
                    return
                if request is None:
                    return
                n = len(self.requests)
                self.requests.append(request)
                reply = self.replies[n] if n < len(self.replies) else None
                if reply is None:
                    return
                if isinstance(reply, tuple):  # parts that arrive apart (a head split over two reads)
                    for part in reply:
                        conn.sendall(part)
                        time.sleep(0.05)
                else:
                    conn.sendall(reply)
                if n in self.close_after:
                    return

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()


@pytest.fixture
def make_server() -> Iterator[list[RawServer]]:
    servers: list[RawServer] = []
    yield servers
    for server in servers:
        server.close()


def _serve(servers: list[RawServer], *replies: Any, close_after: set[int] | None = None) -> RawServer:
    server = RawServer(list(replies), close_after=close_after)
    servers.append(server)
    return server


def _transport(server: RawServer, **kw: object) -> Transport:
    return Transport(ClientConfig(base_url=server.url, api_key=KEY, **kw))  # type: ignore[arg-type]


def ok(body: bytes, *extra: str, status: str = "200 OK", version: str = "HTTP/1.1") -> bytes:
    head = [f"{version} {status}", f"Content-Length: {len(body)}", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def test_keep_alive_reuses_one_connection_and_the_request_head_is_complete(make_server: list[RawServer]) -> None:
    server = _serve(make_server, ok(b'{"a":1}', "Content-Type: application/json"), ok(b"{}"), ok(b""))
    tr = _transport(server)
    resp = tr.send("POST", "/api/v1/x", body=b'{"q":2}', content_type="application/json", headers={"X-Extra": "v"})
    assert (resp.status, resp.json(), resp.content_type) == (200, {"a": 1}, "application/json")
    assert tr.send("GET", "/api/v1/y", params={"a": "b c", "n": None}).status == 200
    assert tr.send("POST", "/api/v1/z").status == 200
    assert server.connections == 1
    first, second, third = server.requests
    head, _, body = first.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    fields = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    assert lines[0] == "POST /api/v1/x HTTP/1.1" and body == b'{"q":2}'
    assert fields["host"] == f"127.0.0.1:{server.port}" and fields["content-length"] == "7"
    assert fields["x-api-key"] == KEY and fields["x-extra"] == "v" and fields["content-type"] == "application/json"
    assert fields["accept-encoding"] == "gzip, deflate" and fields["user-agent"].startswith("tinker_sync/")
    assert second.startswith(b"GET /api/v1/y?a=b+c HTTP/1.1\r\n") and b"content-length" not in second.lower()
    assert b"\r\nContent-Length: 0\r\n" in third  # a bodiless POST says so, as urllib3 does
    tr.close()


@pytest.mark.parametrize(
    ("encoding", "encode"),
    [("gzip", gzip.compress), ("deflate", zlib.compress),
     ("deflate", lambda b: zlib.compress(b)[2:-4])],  # raw deflate, as some servers send it
)
def test_compressed_bodies_are_decoded(make_server: list[RawServer], encoding: str, encode: object) -> None:
    payload = b'{"text": "' + b"x" * 5000 + b'"}'
    server = _serve(make_server, ok(encode(payload), f"Content-Encoding: {encoding}"))  # type: ignore[operator]
    resp = _transport(server).send("GET", "/p")
    assert resp.content == payload


def test_chunked_body_with_trailer_and_interim_100(make_server: list[RawServer]) -> None:
    reply = (b"HTTP/1.1 100 Continue\r\n\r\n"
             b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Multi: a\r\nx-multi: b\r\n"
             b"X-Folded: one\r\n two\r\n\r\n"
             b"4;ext=1\r\nabcd\r\n3\r\nefg\r\n0\r\nTrailer: t\r\n\r\n")
    server = _serve(make_server, reply, ok(b"again"))
    tr = _transport(server)
    resp = tr.send("GET", "/c")
    assert resp.content == b"abcdefg"
    assert resp.headers["x-multi"] == "a, b" and resp.headers["x-folded"] == "one two"
    assert tr.send("GET", "/c").content == b"again" and server.connections == 1  # the chunked framing ended cleanly


def test_close_delimited_http10_and_connection_close_answers_open_a_new_connection(
    make_server: list[RawServer],
) -> None:
    server = _serve(
        make_server,
        b"HTTP/1.0 200 OK\r\n\r\nuntil-close",
        ok(b"one", "Connection: close"),
        ok(b"ten", version="HTTP/1.0"),
        ok(b"kept", "Connection: keep-alive", version="HTTP/1.0"),
        ok(b"same"),
        close_after={0, 1, 2},
    )
    tr = _transport(server)
    assert [tr.send("GET", "/r").content for _ in range(5)] == [b"until-close", b"one", b"ten", b"kept", b"same"]
    assert server.connections == 4  # the keep-alive HTTP/1.0 answer kept its connection for the last request


def test_no_body_for_head_204_and_304(make_server: list[RawServer]) -> None:
    server = _serve(
        make_server,
        b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n",  # HEAD: the length describes a body not sent
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n",
        ok(b"last"),
    )
    tr = _transport(server)
    assert [tr.send(m, "/h").content for m in ("HEAD", "DELETE", "GET", "GET")] == [b"", b"", b"", b"last"]
    assert server.connections == 1


def test_an_idle_connection_the_server_closed_is_replaced(make_server: list[RawServer]) -> None:
    server = _serve(make_server, ok(b"first"), ok(b"second"), close_after={0})  # closes without Connection: close
    tr = _transport(server)
    assert tr.send("GET", "/a").content == b"first"
    assert server.handler_done.wait(5)  # the server has closed the idle connection
    assert tr.send("GET", "/a").content == b"second"
    assert server.connections == 2


@pytest.mark.parametrize(
    "reply",
    [
        b"garbage\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
        b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 3\r\n\r\nbad",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        None,  # closed without a byte
    ],
)
def test_broken_answers_are_connection_errors_after_sending(make_server: list[RawServer], reply: bytes | None) -> None:
    server = _serve(make_server, reply, ok(b"fine"), close_after={0})
    tr = _transport(server)
    with pytest.raises(APIConnectionError) as info:
        tr.send("POST", "/b", body=b"{}")
    assert info.value.request_sent is True and not isinstance(info.value, APITimeoutError)
    assert KEY not in str(info.value)
    assert tr.send("GET", "/b").content == b"fine"  # the broken connection was not reused


@pytest.mark.parametrize(
    "reply", [b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"]
)
def test_answers_http_client_tolerates_are_read_to_the_close(make_server: list[RawServer], reply: bytes) -> None:
    # http.client reads a head with a field it cannot split, or a Content-Length that is no number, as a
    # body that ends when the server closes: both exchanges do so, and the next call gets a new connection.
    server = _serve(make_server, reply, ok(b"fine"), close_after={0})
    tr = _transport(server)
    resp = tr.send("GET", "/t")
    assert (resp.status, resp.content) == (200, b"")
    assert tr.send("GET", "/t").content == b"fine" and server.connections == 2


def test_answers_split_over_reads_long_bodies_and_bytes_past_the_body(make_server: list[RawServer]) -> None:
    big = bytes(range(256)) * 4096  # 1 MiB: far more than one read
    server = _serve(
        make_server,
        (b"HTTP/1.1 200 OK\r\nContent-Le", b"ngth: 5\r\nX-Part: 2\r\n\r\nhel", b"lo"),  # head and body in pieces
        ok(big, "Content-Type: application/octet-stream"),
        ok(b"ab") + b"cd",  # two bytes more than its Content-Length says (sent with the answer, in one write)
        ok(b"after"),
    )
    tr = _transport(server)
    first = tr.send("GET", "/s")
    assert (first.content, first.headers["x-part"]) == (b"hello", "2")
    assert tr.send("GET", "/s").content == big
    assert tr.send("GET", "/s").content == b"ab"
    assert tr.send("GET", "/s").content == b"after"  # the stray bytes were not read as this answer


def test_a_huge_claimed_length_that_never_comes_is_a_broken_answer(make_server: list[RawServer], mode: str) -> None:
    if mode == "stock" or not lean_supported():
        pytest.skip("http.client asks for the claimed length at once: MemoryError (the lean exchange reads what comes)")
    server = _serve(make_server, b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999\r\n\r\nsome", ok(b"next"),
                    close_after={0})
    tr = _transport(server)
    with pytest.raises(APIConnectionError) as info:
        tr.send("GET", "/huge")
    assert info.value.request_sent is True
    assert tr.send("GET", "/huge").content == b"next"


def test_read_timeout(make_server: list[RawServer]) -> None:
    server = _serve(make_server, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\npart")  # the rest never comes
    tr = _transport(server)
    with pytest.raises(APITimeoutError) as info:
        tr.send("GET", "/slow", timeout_s=0.2)
    assert info.value.request_sent is True


def test_line_breaks_in_header_values_are_refused_without_echo(make_server: list[RawServer]) -> None:
    server = _serve(make_server, ok(b""))
    tr = _transport(server)
    with pytest.raises(ValueError) as info:
        tr.send("GET", "/x", headers={"X-Thing": "secret-value\r\nInjected: 1"})
    assert "secret-value" not in str(info.value)
    assert server.requests == []


def test_targets_needing_percent_encoding_go_through_urlopen(make_server: list[RawServer]) -> None:
    server = _serve(make_server, ok(b"a"), ok(b"b"))
    tr = _transport(server)
    assert tr.send("GET", "/api/v1/runs/a b/é").content == b"a"
    assert server.requests[0].startswith(b"GET /api/v1/runs/a%20b/%C3%A9 HTTP/1.1\r\n")
    assert tr.send("GET", "/plain").content == b"b"


@pytest.mark.parametrize("reused", [True, False])
def test_a_large_upload_to_a_slow_reader_is_bounded_by_the_read_timeout(
    make_server: list[RawServer], mode: str, reused: bool,
) -> None:
    # Python's sendall() gives its timeout to the whole write: 32 MB that the server starts reading after
    # 1 s must not fail on the 0.3 s connect timeout, as they would not with the official SDK (60 s).
    if mode == "stock" or not lean_supported():
        pytest.skip("urllib3's own exchange writes a request under the connect timeout")
    server = RawServer([ok(b"first"), ok(b"second")], slow_reads={1 if reused else 0})
    make_server.append(server)
    tr = _transport(server, connect_timeout_s=0.3, read_timeout_s=10.0)
    if reused:
        assert tr.send("GET", "/a").content == b"first"
    big = tr.send("POST", "/big", body=b"x" * (32 << 20))
    assert big.content == (b"second" if reused else b"first")
    assert server.connections == 1 and len(server.requests[-1]) > 32 << 20


def test_a_write_that_stalls_past_the_read_timeout_times_out(make_server: list[RawServer], mode: str) -> None:
    if mode == "stock" or not lean_supported():
        pytest.skip("urllib3's own exchange writes a request under the connect timeout")
    server = RawServer([ok(b"never")], slow_reads={0})  # reads only after 1 s
    make_server.append(server)
    tr = _transport(server, connect_timeout_s=5.0, read_timeout_s=0.3)
    with pytest.raises(APIConnectionError) as info:
        tr.send("POST", "/big", body=b"x" * (32 << 20))
    assert info.value.request_sent is True
