"""HTTP transport: the one urllib3 connection pool of a runtime and the translation of its errors.

This is the only module that imports requests/urllib3. One ``send()`` = one HTTP attempt = at most
one TCP connect: urllib3 retries nothing, every retry (connect errors included) is decided above.
Redirects are never followed (a 3xx is returned as is): the API key and the Cloudflare Access headers
go to the configured host only.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import re
import socket
import ssl
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote, urlencode, urlsplit

import attrs
import certifi
import urllib3
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import (
    ConnectTimeoutError,
    LocationParseError,
    MaxRetryError,
    NewConnectionError,
    ReadTimeoutError,
)
from urllib3.util.retry import Retry

from ._auth import Credentials, StaticKey
from ._config import ClientConfig, redact_url
from ._connection import (
    LeanHTTPConnection,
    LeanHTTPSConnection,
    LeanPoolMixin,
    LowerFields,
    lean_supported,
    plain_target,
)
from ._exceptions import APICertificateError, APIConnectionError, APITimeoutError, redact
from ._version import __version__

__all__ = ["HTTPResponse", "Transport", "redact_url"]

logger = logging.getLogger(__name__)

USER_AGENT = f"tinker_sync/{__version__} (Python {platform.python_version()})"


def _lower_headers(headers: Mapping[str, str]) -> dict[str, str]:
    if type(headers) is LowerFields:  # the lean exchange's, already in this form
        return headers
    # urllib3's HTTPHeaderDict lists a repeated field once per value: merged, it is one "a, b" (RFC 9110 5.3).
    merged = getattr(headers, "itermerged", None)  # (urllib3 1.26 does not export the class at the top)
    items = merged() if merged is not None else headers.items()
    return {k.lower(): (_unfold(v) if "\n" in v else v) for k, v in items}


def _unfold(value: str) -> str:
    """A field value folded over lines (obsolete, RFC 9110 5.5) as one line: each fold becomes a space."""
    return re.sub(r"\r?\n[ \t]+", " ", value)


def _refuse_line_breaks(headers: Mapping[str, str]) -> None:
    """Refuse a request field that would split the head (without echoing it: a value may be a secret)."""
    for name, value in headers.items():
        for text in (name, value):
            if isinstance(text, str) and ("\r" in text or "\n" in text or "\x00" in text):
                raise ValueError(f"request header {name.splitlines()[0][:40]!r}: its name or value contains a "
                                 "line break or NUL")


@attrs.frozen
class HTTPResponse:
    """One HTTP response; ``headers`` keys are lower-case."""

    status: int
    headers: Mapping[str, str] = attrs.field(converter=_lower_headers)
    content: bytes = attrs.field(repr=lambda c: f"<{len(c)} bytes>")
    elapsed_ms: float = 0.0

    def json(self) -> Any:
        """The body parsed as JSON (``None`` for an empty body)."""
        if not self.content:
            return None
        return json.loads(self.content)

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")

    @property
    def request_id(self) -> str | None:
        return self.headers.get("x-request-id")


class _TrackingMixin:
    """Remembers the connections currently carrying a request so close() can abort long polls."""

    _inflight: set[Any]
    _inflight_lock: threading.Lock

    def _get_conn(self, timeout: float | None = None) -> Any:
        conn = super()._get_conn(timeout)  # type: ignore[misc]
        with self._inflight_lock:
            self._inflight.add(conn)
        return conn

    def _put_conn(self, conn: Any) -> None:
        with self._inflight_lock:
            self._inflight.discard(conn)
        super()._put_conn(conn)  # type: ignore[misc]


def _tracking_pool(base: type, inflight: set[Any], lock: threading.Lock, connection_cls: type | None) -> type:
    attrs_: dict[str, Any] = {"_inflight": inflight, "_inflight_lock": lock}
    if connection_cls is not None:
        attrs_["ConnectionCls"] = connection_cls
    return type(f"Tracking{base.__name__}", (_TrackingMixin, LeanPoolMixin, base), attrs_)


def _lean_wanted() -> bool:
    """The lean exchange (``_connection``) unless TINKER_SYNC_LEAN_HTTP=0 asks for urllib3's own, or urllib3 is 1.x."""
    return os.environ.get("TINKER_SYNC_LEAN_HTTP", "1").strip().lower() not in ("0", "false", "no", "off") and (
        lean_supported()
    )


def _host_field(url: str) -> str | None:
    """The Host field http.client would send for ``url`` (None where it would need IDNA: it then writes it)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if not host or not host.isascii():
        return None
    if ":" in host:
        host = f"[{host}]"
    port = parts.port
    default = 443 if parts.scheme == "https" else 80
    return host if port is None or port == default else f"{host}:{port}"


class Transport:
    """One keep-alive connection pool to the API; thread-safe ``send()``.

    Requests go straight to a urllib3 PoolManager (ProxyManager behind HTTP(S)_PROXY): the requests
    Session layer (request preparation, cookie jar, hooks, per-call settings merge) cost about as much
    CPU as the HTTP exchange itself and added nothing this client uses. Proxy and CA environment
    settings are resolved once, here; ~/.netrc is never consulted.
    """

    def __init__(self, config: ClientConfig) -> None:
        self._config = config
        self._base_url = config.base_url
        self._inflight: set[Any] = set()
        self._inflight_lock = threading.Lock()
        ca_bundle = _ca_bundle(config)
        self._ca_bundle = ca_bundle
        pool_kw: dict[str, Any] = {
            "num_pools": 2,
            "maxsize": config.max_workers + config.max_sample_dispatchers + config.max_pollers + 2,
            "block": False,
            "ca_certs": ca_bundle,
        }
        proxies = _environ_proxies(config.base_url)
        proxy = proxies.get(urlsplit(config.base_url).scheme) or proxies.get("all")
        manager: urllib3.PoolManager
        if proxy:
            proxy_auth = urllib3.util.parse_url(proxy).auth
            proxy_headers = urllib3.make_headers(proxy_basic_auth=unquote(proxy_auth)) if proxy_auth else None
            manager = urllib3.ProxyManager(proxy, proxy_headers=proxy_headers, **pool_kw)
        else:
            manager = urllib3.PoolManager(**pool_kw)
        lean = _lean_wanted()
        manager.pool_classes_by_scheme = {
            "http": _tracking_pool(
                HTTPConnectionPool, self._inflight, self._inflight_lock, LeanHTTPConnection if lean else None
            ),
            "https": _tracking_pool(
                HTTPSConnectionPool, self._inflight, self._inflight_lock, LeanHTTPSConnection if lean else None
            ),
        }
        self._manager = manager
        # Without a proxy every request goes to the one pool of the base URL: take it once, and hand it
        # the path, instead of letting the manager parse the absolute URL and look the pool up per call.
        base = urlsplit(config.base_url)
        self._base_path = base.path.rstrip("/")
        self._pool: Any = None if proxy else manager.connection_from_url(config.base_url)
        # urllib3 retries nothing (one TCP connect per attempt): every retry and every wait belongs to
        # RetryPolicy, where it is visible, injectable and bounded.
        self._retries = Retry(
            total=0, connect=0, read=0, status=0, other=0,
            redirect=False,  # never follow: a redirect target must not receive the API key
            respect_retry_after_header=False, raise_on_status=False,
        )
        self._timeouts: dict[float, urllib3.Timeout] = {}
        # X-API-Key is set from this provider on each request: the key, or a server-minted JWT once the
        # client config enables the exchange (see _auth).
        self.credentials: Credentials = StaticKey(config.api_key)
        headers = {
            "User-Agent": USER_AGENT,
            "X-API-Key": config.api_key,
            "Accept-Encoding": "gzip, deflate",
            **dict(config.default_headers),
        }
        userinfo = urlsplit(config.base_url).netloc.rpartition("@")[0]
        if userinfo:  # credentials in the base URL become HTTP basic auth, as with requests
            headers.update(urllib3.make_headers(basic_auth=unquote(userinfo)))
        host = None if proxy or not lean else _host_field(config.base_url)
        if host is not None and not any(k.lower() == "host" for k in headers):
            # The field http.client would write; given here, the lean exchange can write the whole head.
            headers = {"Host": host, **headers}
        self._headers = headers
        self._closed = False
        # Where the lean exchange writes the head (no proxy), it refuses a line break in a field itself.
        self._lean_head = host is not None

    def __repr__(self) -> str:
        return f"Transport(base_url={redact_url(self._base_url)!r})"

    def url(self, path: str) -> str:
        return self._base_url + (path if path.startswith("/") else "/" + path)

    def _set_credential(self, hdrs: dict[str, str], headers: Mapping[str, str] | None) -> str | None:
        """Put the provider's X-API-Key into ``hdrs``, unless the caller names one (the JWT exchange does)."""
        if headers:
            for k in headers:
                if k.lower() == "x-api-key":
                    return None
        hdrs["X-API-Key"] = value = self.credentials.header_value()
        return value

    def _timeout(self, read_s: float) -> urllib3.Timeout:
        timeout = self._timeouts.get(read_s)
        if timeout is None:
            timeout = self._timeouts[read_s] = urllib3.Timeout(connect=self._config.connect_timeout_s, read=read_s)
        return timeout

    def _replaced(self, resp: HTTPResponse, key: str | None) -> bool:
        """A 401 to the provider's ``key`` that the provider answered with a new one: send again."""
        return key is not None and resp.status == 401 and self.credentials.on_unauthorized(resp.headers, key)

    def send(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        content_type: str | None = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
        accept: str = "application/json",
    ) -> HTTPResponse:
        """Make one HTTP attempt and return the response, whatever its status.

        Raises:
            APITimeoutError: connect or read timeout (``request_sent`` False for connect timeouts).
            APIConnectionError: no HTTP response; ``request_sent`` is False only when the request
                certainly never reached the server.
        """
        hdrs = self._headers.copy()
        key = self._set_credential(hdrs, headers)
        hdrs["Accept"] = accept
        if content_type is not None and body is not None:
            hdrs["Content-Type"] = content_type
        if headers:
            if not self._lean_head:  # http.client would refuse it too, but with the value in its message
                _refuse_line_breaks(headers)
            hdrs.update(headers)
        read_s = timeout_s if timeout_s is not None else self._config.read_timeout_s
        target = path if path.startswith("/") else "/" + path
        if params:
            query = urlencode([(k, v) for k, v in params.items() if v is not None], doseq=True)
            if query:
                target += ("&" if "?" in target else "?") + query
        pool = self._pool
        start = time.monotonic()
        fields: Mapping[str, str]
        try:
            if pool is not None and not self._closed:
                full = self._base_path + target
                if self._lean_head and read_s and plain_target(full) is not None:
                    # The lean exchange, no proxy: the pool's connection without urlopen's idle steps.
                    status, fields, data = pool.lean_urlopen(
                        method, full, body, hdrs, self._config.connect_timeout_s, read_s
                    )
                else:
                    resp = pool.urlopen(
                        method, full, body=body, headers=hdrs, retries=self._retries, timeout=self._timeout(read_s),
                        redirect=False, assert_same_host=False, preload_content=True, decode_content=True,
                    )
                    status, fields, data = resp.status, getattr(resp, "lower_fields", None) or resp.headers, resp.data
            else:
                resp = self._manager.urlopen(
                    method, self._base_url + target, body=body, headers=hdrs, retries=self._retries,
                    timeout=self._timeout(read_s), redirect=False, preload_content=True, decode_content=True,
                )
                status, fields, data = resp.status, resp.headers, resp.data
        except urllib3.exceptions.HTTPError as exc:
            reason: BaseException = exc.reason if isinstance(exc, MaxRetryError) and exc.reason is not None else exc
            error = self._translate(reason)
            self._log(method, path, type(error).__name__, start)
            raise error from exc
        elapsed_ms = (time.monotonic() - start) * 1000.0
        out = HTTPResponse(status, fields, data, elapsed_ms)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("%s %s -> %d in %.1f ms (request_id=%s)", method, path, out.status, elapsed_ms, out.request_id)
        if self._replaced(out, key):  # the server rejected the token itself and the provider replaced it
            replay = {**(headers or {}), "X-API-Key": self.credentials.header_value()}  # once: it names the key
            return self.send(method, path, body=body, content_type=content_type, params=params, headers=replay,
                             timeout_s=timeout_s, accept=accept)
        return out

    def _translate(self, reason: BaseException) -> APIConnectionError:
        """The APIConnectionError for a urllib3 failure, classified by what happened."""
        # NewConnectionError (refused, DNS) subclasses ConnectTimeoutError: check it first.
        if isinstance(reason, NewConnectionError):
            return APIConnectionError(f"Connection error: {_describe(reason)}", request_sent=False)
        if isinstance(reason, ConnectTimeoutError):
            return APITimeoutError("Request timed out (connecting).", request_sent=False)
        if isinstance(reason, (ReadTimeoutError, urllib3.exceptions.TimeoutError)):
            return APITimeoutError("Request timed out.", request_sent=True)
        if _is_certificate_error(reason):
            return APICertificateError(
                f"TLS certificate verification failed for {redact_url(self._base_url)}: {_describe(reason)}. "
                f"The trusted CAs come from ClientConfig.ca_bundle, else the REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE or "
                f"SSL_CERT_FILE environment variable, else certifi (in use now: {self._ca_bundle}); point one of them "
                "at the CA file that signed the server's certificate (e.g. your company's TLS proxy CA)."
            )
        return APIConnectionError(
            f"Connection error: {_describe(reason)}", request_sent=_request_may_have_been_sent(reason)
        )

    def _log(self, method: str, path: str, what: str, start: float) -> None:
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("%s %s -> %s after %.1f ms", method, path, what, (time.monotonic() - start) * 1000.0)

    def abort_inflight(self) -> int:
        """Shut down the sockets of requests in flight (used by close(cancel_pending=True))."""
        with self._inflight_lock:
            conns = list(self._inflight)
        n = 0
        for conn in conns:
            sock = getattr(conn, "sock", None)
            if sock is None:
                continue
            try:
                sock.shutdown(socket.SHUT_RDWR)
                n += 1
            except OSError:
                pass
        return n

    def close(self) -> None:
        """Close every pooled connection."""
        if not self._closed:
            self._closed = True
            self._manager.clear()


def _environ_proxies(url: str) -> Mapping[str, str]:
    """The proxies requests would use for ``url`` (``*_proxy`` / ``no_proxy``, and the system settings on
    Windows and macOS). Elsewhere those come only from the environment: with no proxy variable set
    there are none, and requests (a tenth of a second to import) is not loaded."""
    if sys.platform not in ("win32", "darwin") and not any(
        value and key.lower().endswith("_proxy") and key.lower() != "no_proxy" for key, value in os.environ.items()
    ):
        return {}
    import requests.utils

    return dict(requests.utils.get_environ_proxies(url))


def _request_may_have_been_sent(reason: BaseException) -> bool:
    """False only for failures that certainly happened before any byte of the request was written."""
    # connection refused / DNS failure / connect timeout, a bad URL, or a failed TLS handshake
    return not isinstance(
        reason, (NewConnectionError, ConnectTimeoutError, LocationParseError, urllib3.exceptions.SSLError)
    )


def _ca_bundle(config: ClientConfig) -> str:
    """The CA file to trust: the config's, else the environment's (as requests and OpenSSL read it), else certifi's."""
    env = (os.environ.get(name) for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE"))
    for value in (config.ca_bundle, *env):
        if value:
            return value
    return certifi.where()


def _is_certificate_error(reason: BaseException) -> bool:
    """Whether a failure (or an error it wraps) is a refused TLS certificate."""
    seen: set[int] = set()
    todo: list[BaseException] = [reason]
    while todo:
        err = todo.pop()
        if id(err) in seen:
            continue
        seen.add(id(err))
        if isinstance(err, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(err):
            return True
        todo.extend(e for e in (err.__cause__, err.__context__, *err.args) if isinstance(e, BaseException))
    return False


def _describe(reason: BaseException) -> str:
    text = str(redact(f"{type(reason).__name__}: {reason}"))  # before truncating, which could cut a secret
    return text if len(text) <= 300 else text[:300] + "..."
