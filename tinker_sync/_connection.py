"""The connection class of the transport's urllib3 pool: urllib3's HTTPConnection, with a leaner exchange.

urllib3 keeps everything that makes a connection pool: connecting, TLS, proxies, the pool's queue and the
dropped-connection check. This subclass (set as the pool's ``ConnectionCls``, urllib3's documented
extension point) changes how one plain request is written and how its answer is read, which is where
http.client spends most of a small call's CPU:

* the request head is joined and checked once and written with one ``send`` (with the body when it is
  small), instead of a ``putheader`` call per field, each encoding and checking its field on its own;
* the answer is read with one ``recv``: a plain HTTP/1.1 answer with a Content-Length (the usual
  answer of an API call) is split by hand and its body read to its length; any other answer
  (1xx, chunked or close-delimited bodies, HTTP/1.0, folded or odd fields, a head longer than the first
  read) is read by http.client's own code from the same bytes;
* the urllib3 response is built from the body read in full, so urllib3 does not read it a second time
  through its own buffering (it still decodes a ``Content-Encoding``).

The lean way is taken only for what it covers byte for byte: an origin-form target of plain characters,
a ``bytes`` body or none, a known method and a ``Host`` field given by the caller. Everything else
(chunked uploads, streamed responses, absolute targets through a proxy) goes through urllib3's own code.
A response the quick split does not cover is parsed by http.client itself, so its fields come out as
urllib3 would give them.

``LeanPoolMixin.lean_urlopen`` (the transport's pool, without a proxy) makes the request the way
``urlopen`` would with the transport's fixed options (no retries, no redirects, the body preloaded),
minus the steps those options leave idle; failures come out as urlopen reports them (a test compares
both ways on the same broken answers).
"""

from __future__ import annotations

import errno
import http.client
import inspect
import io
import re
import ssl
from collections.abc import Mapping
from typing import Any

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import MaxRetryError, ProtocolError, SSLError
from urllib3.exceptions import TimeoutError as Urllib3TimeoutError
from urllib3.response import HTTPResponse

__all__ = [
    "LeanHTTPConnection", "LeanHTTPResponse", "LeanHTTPSConnection", "LeanPoolMixin", "LowerFields", "lean_supported",
    "plain_target",
]

_SMALL_BODY = 64 * 1024  # bodies up to this size go out in the head's send
_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})  # urllib3 sends Content-Length: 0 for these without a body
# An origin-form target needing no percent-encoding (urllib3 would leave it as it is).
_PLAIN_TARGET = re.compile(r"/[!#$%&'()*+,\-./0-9:;=?@A-Z\[\]_a-z~]*\Z").match
plain_target = _PLAIN_TARGET
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z").match  # a field name (RFC 9110 token)
# All field lines of a head (from the status line's line break on), each a token, ":" and a value without
# control characters other than tab.
_PLAIN_FIELDS = re.compile(r"(?:\r\n[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[^\x00-\x08\x0a-\x1f\x7f]*)+\Z").match
_PREALLOCATE_MAX = 64 * 1024 * 1024  # a body up to this long is read into one buffer of its length
_LARGE_READ = 4 * 1024 * 1024
_RECV_BYTES = 64 * 1024  # one read takes a usual answer whole; below malloc's mmap threshold
_known_names: set[str] = set()  # field names already checked (the API uses a few dozen)
_FRAMING = frozenset({"content-length", "transfer-encoding"})
_VERSION_STRING = "version_string" in inspect.signature(HTTPResponse.__init__).parameters


def lean_supported() -> bool:
    """Whether the installed urllib3 lets a connection build its own response (urllib3 2; 1.26 does not)."""
    return "preload_content" in inspect.signature(HTTPConnection.request).parameters


def _lean_request(
    conn: HTTPConnection, method: str, url: str, body: Any, headers: Mapping[str, str] | None, chunked: bool,
    preload_content: bool, decode_content: bool, enforce_content_length: bool,
) -> bool:
    """Write the request the lean way; False (nothing written) where urllib3's own request() must do it."""
    if not (
        preload_content and not chunked and headers and (body is None or type(body) is bytes)
        and method in _METHODS and _PLAIN_TARGET(url) is not None
    ):
        return False
    head = _encode_head(method, url, headers, body)
    if head is None:
        return False
    if conn.sock is not None and conn.sock.gettimeout() != conn.timeout:  # settimeout is a system call
        conn.sock.settimeout(conn.timeout)
    conn.lean_pending = (method, url, decode_content, enforce_content_length)  # type: ignore[attr-defined]
    if body and len(body) <= _SMALL_BODY:
        conn.send(head + body)
    else:
        conn.send(head)
        if body:
            conn.send(body)
    return True


class LowerFields(dict[str, str]):
    """An answer's fields by lower-case name, repeated ones joined with ", " (what the transport keeps)."""

    __slots__ = ()


class LeanHTTPResponse(HTTPResponse):
    """urllib3's response, with ``lower_fields`` where the quick read already has them (else None)."""

    lower_fields: LowerFields | None = None


class _Quick:
    """A plain answer read in one go: status, reason, fields, where the body starts and how long it is."""

    __slots__ = ("fields", "length", "lower", "reason", "start", "status", "will_close")

    def __init__(self, status: int, reason: str, fields: list[tuple[str, str]], lower: LowerFields, start: int,
                 length: int, will_close: bool) -> None:
        self.status, self.reason, self.fields, self.lower = status, reason, fields, lower
        self.start, self.length, self.will_close = start, length, will_close


def _quick_answer(data: bytes, method: str) -> _Quick | None:
    """``data`` (the first bytes read) as a plain HTTP/1.1 answer with a Content-Length; None for anything else.

    Anything else (1xx, HTTP/1.0, chunked or close-delimited bodies, HEAD, 204/304, folded or odd fields,
    a head longer than one read) is read by http.client, from the same bytes.
    """
    end = data.find(b"\r\n\r\n")
    if end < 0 or method == "HEAD" or not data.startswith(b"HTTP/1.1 "):
        return None
    head = str(data[:end], "iso-8859-1")
    cut = head.find("\r\n")
    if cut < 0 or _PLAIN_FIELDS(head, cut) is None:  # every field line plain, checked in one pass
        return None
    status_text, _, reason = head[9:cut].partition(" ")
    if len(status_text) != 3 or not (status_text.isascii() and status_text.isdigit()):  # not '²'
        return None
    status = int(status_text)
    if status < 200 or status in (204, 304):
        return None
    fields = []
    lower = LowerFields()
    for line in head[cut + 2:].split("\r\n"):
        name, _, value = line.partition(":")
        value = value.lstrip(" \t")
        fields.append((name, value))
        key = name.lower()
        lower[key] = lower[key] + ", " + value if key in lower else value
    length = lower.get("content-length", "")
    if not (length.isascii() and length.isdigit()) or "transfer-encoding" in lower:
        return None  # none, repeated, not a plain number, or another framing: http.client decides
    will_close = "close" in lower.get("connection", "").lower()
    return _Quick(status, reason.strip(), fields, lower, end + 4, int(length), will_close)


class _Prefixed(io.RawIOBase):
    """The bytes already read from a socket, then the socket: what http.client reads a response from."""

    def __init__(self, sock: Any, prefix: bytes) -> None:
        self._sock = sock
        self._prefix = memoryview(prefix)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._prefix:
            n = min(len(buffer), len(self._prefix))
            buffer[:n] = self._prefix[:n]
            self._prefix = self._prefix[n:]
            return n
        return int(self._sock.recv_into(buffer))

    def makefile(self, mode: str) -> io.BufferedReader:  # what http.client.HTTPResponse asks its "socket" for
        return io.BufferedReader(self)


def _read_body(sock: Any, have: bytes, length: int) -> bytes:
    """The ``length`` body bytes: ``have`` and the rest from ``sock``."""
    if len(have) >= length:
        return have[:length]
    if length > _PREALLOCATE_MAX:  # memory only for bytes that arrive, whatever length the server claims
        parts, got = [have], len(have)
        while got < length:
            part = sock.recv(min(length - got, _LARGE_READ))
            if not part:
                raise http.client.IncompleteRead(b"".join(parts), length - got)
            parts.append(part)
            got += len(part)
        return b"".join(parts)
    out = bytearray(length)
    view = memoryview(out)
    view[:len(have)] = have
    got = len(have)
    while got < length:
        n = sock.recv_into(view[got:])
        if not n:
            raise http.client.IncompleteRead(bytes(out[:got]), length - got)
        got += n
    return bytes(out)


class _Read:
    """An answer read off the socket: the body in full, fields as read (and lower-cased where the quick split did)."""

    __slots__ = ("data", "fields", "lower", "original", "reason", "status", "version")

    def __init__(self, status: int, version: int, reason: str, fields: Any, lower: LowerFields | None, data: bytes,
                 original: http.client.HTTPResponse | None) -> None:
        self.status, self.version, self.reason, self.fields = status, version, reason, fields
        self.lower, self.data, self.original = lower, data, original


def _body_error(exc: Exception) -> Exception:
    """A failed body read as urllib3's response reports it (its _error_catcher); a timeout stays one."""
    if isinstance(exc, (TimeoutError, ssl.SSLError)):
        return exc
    return ProtocolError(f"Connection broken: {exc!r}", exc)


def _read_answer(conn: HTTPConnection, method: str) -> _Read:
    """Read the answer to a lean request: a plain one in one go, any other through http.client's reader."""
    sock = conn.sock
    assert sock is not None
    if sock.gettimeout() != conn.timeout:
        sock.settimeout(conn.timeout)
    try:
        first = sock.recv(_RECV_BYTES)
        quick = _quick_answer(first, method)
        if quick is not None:
            try:
                data = _read_body(sock, first[quick.start:], quick.length)
            except (http.client.HTTPException, OSError) as exc:
                raise _body_error(exc) from exc
            read = _Read(quick.status, 11, quick.reason, quick.fields, quick.lower, data, None)
            # bytes past the body (a server that broke its own framing) would start the next answer: close
            will_close = quick.will_close or len(first) - quick.start > quick.length
        else:
            raw = http.client.HTTPResponse(_Prefixed(sock, first), method=method)  # type: ignore[arg-type]
            raw.begin()
            try:
                data = raw.read()
            except (http.client.HTTPException, OSError) as exc:
                raise _body_error(exc) from exc
            raw.close()
            read = _Read(raw.status, raw.version, raw.reason, raw.msg.items(), None, data, raw)
            will_close = raw.will_close
    except BaseException:
        conn.close()  # a half-read answer leaves the connection unusable
        raise
    if will_close:
        conn.close()
    return read


def _lean_getresponse(conn: HTTPConnection, pending: tuple[str, str, bool, bool]) -> HTTPResponse:
    method, url, decode_content, enforce_content_length = pending
    return _urllib3_response(_read_answer(conn, method), method, url, decode_content, enforce_content_length)


def _urllib3_response(
    read: _Read, method: str, url: str, decode_content: bool, enforce_content_length: bool
) -> HTTPResponse:
    """The answer read by ``_read_answer`` as urllib3's response (which decodes a Content-Encoding)."""
    headers = urllib3.HTTPHeaderDict()
    for name, value in read.fields:
        headers.add(name, value)
    encoded = decode_content and headers.get("content-encoding", "identity").lower() != "identity"
    extra: dict[str, Any] = {}
    if _VERSION_STRING:
        extra["version_string"] = "HTTP/1.0" if read.version == 10 else "HTTP/1.1"
    data = read.data
    response = LeanHTTPResponse(
        # urllib3 decodes what it reads itself; it keeps an empty bytes body as "no body" (None)
        body=data if data and not encoded else io.BytesIO(data),
        headers=headers, status=read.status, version=read.version, reason=read.reason,
        preload_content=True, decode_content=decode_content, original_response=read.original,
        enforce_content_length=enforce_content_length, request_method=method, request_url=url, **extra,
    )
    response.lower_fields = read.lower
    return response


# What urlopen catches, closes the connection for and reports (urllib3 2, HTTPConnectionPool.urlopen).
_DISCARDING = (
    Urllib3TimeoutError, http.client.HTTPException, OSError, ProtocolError, ssl.SSLError, SSLError,
    ssl.CertificateError,
)


class LeanPoolMixin:
    """For a urllib3 pool of lean connections: ``lean_urlopen``, urlopen's exchange without its idle steps."""

    num_requests: int

    def lean_urlopen(
        self, method: str, url: str, body: bytes | None, headers: Mapping[str, str], connect_s: float, read_s: float,
    ) -> tuple[int, Mapping[str, str], bytes]:
        """One request on a connection of this pool, as ``urlopen`` makes it without retries or redirects and
        with the body preloaded, minus the steps those options leave idle.

        urlopen spends a third of a small call's CPU around the exchange: it percent-encodes the target
        character by character, clones its Timeout twice and wraps the answer in a response object that
        the transport reads three attributes of. Here the connection comes from and goes back to the pool
        (``_get_conn``/``_put_conn``, which the transport's pool overrides to track requests in flight),
        is checked and connected as urlopen has it (``_validate_conn``), and a failure is reported with
        urlopen's classes and messages: ``MaxRetryError`` whose ``reason`` is the NewConnectionError,
        ConnectTimeoutError, ReadTimeoutError (the pool's ``_raise_timeout``), SSLError or
        ``ProtocolError("Connection aborted.", cause)`` urlopen would give, the connection closed.

        Only for what it covers: no proxy, an origin-form ``url`` that ``plain_target`` accepts (urlopen
        would leave it as it is) and a read timeout above 0.

        Returns:
            (status, fields, body): fields lower-cased (``LowerFields``) where the quick split read them,
            else urllib3's HTTPHeaderDict; the body decoded from its Content-Encoding.
        """
        conn = self._get_conn()  # type: ignore[attr-defined]
        clean = False
        try:
            answer = self._lean_exchange(conn, method, url, body, headers, connect_s, read_s)
            clean = True
            return answer
        except _DISCARDING as exc:
            reason: Exception = exc
            if isinstance(exc, (ssl.SSLError, ssl.CertificateError)):  # ssl's errors are OSErrors: test them first
                reason = SSLError(exc)
            elif isinstance(exc, (OSError, http.client.HTTPException)):
                reason = ProtocolError("Connection aborted.", exc)
            raise MaxRetryError(self, url, reason) from exc  # type: ignore[arg-type]
        finally:
            if not clean:  # whatever went wrong, the connection is not reused (None goes back in its place)
                conn.close()
                conn = None
            self._put_conn(conn)  # type: ignore[attr-defined]

    def _lean_exchange(
        self, conn: Any, method: str, url: str, body: bytes | None, headers: Mapping[str, str], connect_s: float,
        read_s: float,
    ) -> tuple[int, Mapping[str, str], bytes]:
        # urllib3 2's HTTPConnectionPool._make_request, for this one set of options.
        self.num_requests += 1
        conn.timeout = connect_s
        try:
            # HTTPS connects here (handshake, certificate check), as urlopen has it; plain HTTP too, so that
            # the request is written under the read timeout (below) rather than the connect timeout.
            self._validate_conn(conn)  # type: ignore[attr-defined]
            if conn.sock is None:
                conn.connect()
        except TimeoutError as exc:
            self._raise_timeout(err=exc, url=url, timeout_value=conn.timeout)  # type: ignore[attr-defined]
            raise
        # Python's sendall() gives its timeout to the whole write, and urllib3 writes a request under the
        # connect timeout (5 s): a forward_backward chunk of up to 5 MB would fail below 1 MB/s of upload.
        # The official SDK writes under its 60 s timeout; the read timeout is that bound here.
        conn.timeout = read_s
        try:
            conn.request(method, url, body=body, headers=headers, chunked=False, preload_content=True,
                         decode_content=True, enforce_content_length=True)
        except BrokenPipeError:
            pass  # the server may have answered and closed already (a refused upload): read its answer
        except OSError as exc:
            if exc.errno not in (errno.EPROTOTYPE, errno.ECONNRESET):
                raise
        try:
            return conn.lean_answer()  # type: ignore[no-any-return]
        except (ssl.SSLError, OSError) as exc:
            # a timeout becomes ReadTimeoutError
            self._raise_timeout(err=exc, url=url, timeout_value=read_s)  # type: ignore[attr-defined]
            raise


def _encode_head(method: str, target: str, headers: Mapping[str, str], body: bytes | None) -> bytes | None:
    """The request line and fields as urllib3 would write them; None where urllib3's own way must decide.

    Raises:
        ValueError: a field value holds a line break or NUL (the value is not echoed: it may be a secret).
    """
    host = None
    fields = []
    for name, value in headers.items():
        if name not in _known_names:
            if type(name) is not str or _TOKEN(name) is None or name.lower() in _FRAMING:
                return None
            if len(_known_names) < 256:
                _known_names.add(name)
        if type(value) is not str:
            return None
        if name == "Host":
            host = value
        else:
            fields.append(f"{name}: {value}")
    if host is None:
        return None
    if body is not None:
        fields.insert(0, f"Content-Length: {len(body)}")
    elif method in _BODY_METHODS:
        fields.insert(0, "Content-Length: 0")
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", *fields]
    text = "\r\n".join(lines)
    breaks = len(lines) - 1
    if text.count("\r") != breaks or text.count("\n") != breaks or "\x00" in text:
        raise ValueError("a request header value contains a line break or NUL")
    try:
        return (text + "\r\n\r\n").encode("latin-1")
    except UnicodeEncodeError:
        return None  # http.client refuses it with its own error


class LeanHTTPConnection(HTTPConnection):
    """urllib3's HTTPConnection with the lean exchange."""

    lean_pending: tuple[str, str, bool, bool] | None = None  # method, target, decode_content, enforce_content_length

    def request(  # type: ignore[override]
        self, method: str, url: str, body: Any = None, headers: Mapping[str, str] | None = None, *,
        chunked: bool = False, preload_content: bool = True, decode_content: bool = True,
        enforce_content_length: bool = True,
    ) -> None:
        self.lean_pending = None
        if not _lean_request(self, method, url, body, headers, chunked, preload_content, decode_content,
                             enforce_content_length):
            super().request(method, url, body=body, headers=headers, chunked=chunked, preload_content=preload_content,
                            decode_content=decode_content, enforce_content_length=enforce_content_length)

    def getresponse(self) -> HTTPResponse:  # type: ignore[override]
        pending, self.lean_pending = self.lean_pending, None
        return super().getresponse() if pending is None else _lean_getresponse(self, pending)

    def lean_answer(self) -> tuple[int, Mapping[str, str], bytes]:
        """The answer to the request just written, as (status, fields, body) (``lean_exchange``)."""
        pending, self.lean_pending = self.lean_pending, None
        if pending is None:  # urllib3's own request() wrote it
            response = super().getresponse()
            return response.status, response.headers, response.data
        read = _read_answer(self, pending[0])
        lower = read.lower
        if lower is not None and (not pending[2] or "content-encoding" not in lower):
            return read.status, lower, read.data
        response = _urllib3_response(read, *pending)  # urllib3 decodes the body
        return response.status, lower if lower is not None else response.headers, response.data


class LeanHTTPSConnection(LeanHTTPConnection, HTTPSConnection):
    """urllib3's HTTPSConnection with the lean exchange (TLS, verification and proxies stay urllib3's)."""
