"""HTTP transport: the one requests.Session of a runtime and the translation of its errors.

This is the only module that imports requests/urllib3. One ``send()`` = one HTTP attempt; urllib3
retries only connections that never carried the request, every other retry is decided above.
Redirects are never followed (a 3xx is returned as is): the API key and the Cloudflare Access headers
go to the configured host only.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import socket
import threading
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import attrs
import requests
import requests.adapters
import requests.utils
import urllib3
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, MaxRetryError, NewConnectionError
from urllib3.util.retry import Retry

from ._config import ClientConfig
from ._exceptions import APIConnectionError, APITimeoutError
from ._version import __version__

__all__ = ["HTTPResponse", "Transport", "redact_url"]

logger = logging.getLogger(__name__)

USER_AGENT = f"tinker_sync/{__version__} (Python {platform.python_version()})"


def _lower_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


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


def redact_url(url: str) -> str:
    """``url`` without a ``user:password@`` part (for reprs and messages)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc="<redacted>@" + parts.netloc.rpartition("@")[2]))


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


def _tracking_pool(base: type, inflight: set[Any], lock: threading.Lock) -> type:
    return type(f"Tracking{base.__name__}", (_TrackingMixin, base), {"_inflight": inflight, "_inflight_lock": lock})


class _Adapter(requests.adapters.HTTPAdapter):
    def __init__(self, inflight: set[Any], lock: threading.Lock, **kw: Any) -> None:
        self._inflight = inflight
        self._inflight_lock = lock
        super().__init__(**kw)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": _tracking_pool(HTTPConnectionPool, self._inflight, self._inflight_lock),
            "https": _tracking_pool(HTTPSConnectionPool, self._inflight, self._inflight_lock),
        }


class Transport:
    """One keep-alive connection pool to the API; thread-safe ``send()``."""

    def __init__(self, config: ClientConfig) -> None:
        self._config = config
        self._base_url = config.base_url
        self._inflight: set[Any] = set()
        self._inflight_lock = threading.Lock()
        session = requests.Session()
        # Environment settings (HTTPS_PROXY / NO_PROXY, REQUESTS_CA_BUNDLE) are resolved once here:
        # with trust_env=True requests rescans os.environ on every request (~0.3 ms each), and it
        # would also let a ~/.netrc entry add an Authorization header.
        session.trust_env = False
        session.proxies = dict(requests.utils.get_environ_proxies(config.base_url))
        ca_bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
        if ca_bundle:
            session.verify = ca_bundle
        # urllib3 retries only failures before the request left (connect errors): read=0, status=0
        # and other=0 leave every "maybe sent" failure and every status to the layers above.
        retries = Retry(
            total=None,
            connect=3,
            read=0,
            status=0,
            other=0,
            redirect=False,  # never follow: a redirect target must not receive the API key
            backoff_factor=0.5,
            respect_retry_after_header=False,
            raise_on_status=False,
        )
        adapter = _Adapter(
            self._inflight,
            self._inflight_lock,
            pool_connections=2,
            pool_maxsize=config.max_workers + config.max_pollers + 2,
            pool_block=False,
            max_retries=retries,
        )
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        self._session = session
        self._headers = {
            "User-Agent": USER_AGENT,
            "X-API-Key": config.api_key,
            "Accept-Encoding": "gzip, deflate",
            **dict(config.default_headers),
        }
        # Everything that must never appear in an error message or a log line.
        userinfo = urlsplit(config.base_url).netloc.rpartition("@")[0]
        secrets = [config.api_key, *config.default_headers.values(), userinfo]
        self._secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)
        self._closed = False

    def __repr__(self) -> str:
        return f"Transport(base_url={redact_url(self._base_url)!r})"

    def _redact(self, text: str) -> str:
        """Remove every credential (API key, secret header values, URL userinfo) from an error text."""
        for secret in self._secrets:
            text = text.replace(secret, "<redacted>")
        return text

    def url(self, path: str) -> str:
        return self._base_url + (path if path.startswith("/") else "/" + path)

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
        hdrs = dict(self._headers)
        hdrs["Accept"] = accept
        if content_type is not None and body is not None:
            hdrs["Content-Type"] = content_type
        if headers:
            hdrs.update(headers)
        timeout = (self._config.connect_timeout_s, timeout_s if timeout_s is not None else self._config.read_timeout_s)
        start = time.monotonic()
        try:
            resp = self._session.request(
                method, self.url(path), data=body, params=params, headers=hdrs, timeout=timeout, allow_redirects=False
            )
            content = resp.content
        except requests.exceptions.ConnectTimeout as exc:
            self._log(method, path, "connect-timeout", start)
            raise APITimeoutError("Request timed out (connecting).", request_sent=False) from exc
        except requests.exceptions.Timeout as exc:
            self._log(method, path, "read-timeout", start)
            raise APITimeoutError("Request timed out.", request_sent=True) from exc
        except requests.exceptions.RequestException as exc:
            sent = _request_may_have_been_sent(exc)
            self._log(method, path, "connection-error", start)
            raise APIConnectionError(f"Connection error: {self._redact(_describe(exc))}", request_sent=sent) from exc
        elapsed_ms = (time.monotonic() - start) * 1000.0
        out = HTTPResponse(resp.status_code, resp.headers, content, elapsed_ms)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("%s %s -> %d in %.1f ms (request_id=%s)", method, path, out.status, elapsed_ms, out.request_id)
        return out

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
            self._session.close()


def _request_may_have_been_sent(exc: BaseException) -> bool:
    """False only for failures that certainly happened before any byte of the request was written."""
    if isinstance(exc, (requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema, requests.exceptions.MissingSchema)):
        return False
    reason: Any = exc.args[0] if exc.args else None
    if isinstance(reason, MaxRetryError):
        reason = reason.reason
    if isinstance(reason, (NewConnectionError, ConnectTimeoutError)):
        return False
    # an SSLError means the TLS handshake failed, so the request was never written
    return not isinstance(exc, requests.exceptions.SSLError)


def _describe(exc: BaseException) -> str:
    reason: Any = exc.args[0] if exc.args else exc
    if isinstance(reason, MaxRetryError) and reason.reason is not None:
        reason = reason.reason
    text = f"{type(reason).__name__}: {reason}"
    return text if len(text) <= 300 else text[:300] + "..."


_ = urllib3  # imported for its exception/retry types (keeps the import explicit for mypy)
