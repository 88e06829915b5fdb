"""HTTP framing of the local Tinker server: routing, auth, body limits, faults, recording, lifecycle.

Stdlib only: ``ThreadingHTTPServer`` speaking HTTP/1.1 with keep-alive and exact Content-Length.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from .._executor import exit_signals_blocked
from ._api import Answer, Api, Call, HTTPError
from ._faults import FaultInjector, RecordedRequest
from ._persist import secret_file
from ._store import Store, owner_of_key

logger = logging.getLogger(__name__)

__all__ = ["LocalTinkerServer", "default_data_dir", "route_table"]

_PREFIX = "/api/v1/"
_SEG = r"([^/]+)"
_CKPT = r"training_runs/(?P<run>[^/]+)/checkpoints/(?P<kind>[^/]+)/(?P<name>[^/]+)"

# (method, path regex after /api/v1/, op name, Api method name, needs auth)
_ROUTES: list[tuple[str, str, str, str, bool]] = [
    ("POST", "client/config", "client/config", "client_config", True),
    ("POST", "client/dynamic_config", "client/dynamic_config", "dynamic_config", True),
    ("POST", "auth/token", "auth/token", "auth_token", True),
    ("GET", "healthz", "healthz", "healthz", False),
    ("GET", "get_server_capabilities", "get_server_capabilities", "capabilities", True),
    ("POST", "create_session", "create_session", "create_session", True),
    ("POST", "session_heartbeat", "session_heartbeat", "heartbeat", True),
    ("POST", "create_sampling_session", "create_sampling_session", "create_sampling_session", True),
    ("POST", "create_model", "create_model", "create_model", True),
    ("POST", "get_info", "get_info", "get_info", True),
    ("POST", "unload_model", "unload_model", "unload_model", True),
    ("POST", "forward", "forward", "forward", True),
    ("POST", "forward_backward", "forward_backward", "forward_backward", True),
    ("POST", "optim_step", "optim_step", "optim_step", True),
    ("POST", "save_weights", "save_weights", "save_weights", True),
    ("POST", "save_weights_for_sampler", "save_weights_for_sampler", "save_weights_for_sampler", True),
    ("POST", "load_weights", "load_weights", "load_weights", True),
    ("POST", "asample", "asample", "asample", True),
    ("POST", "retrieve_future", "retrieve_future", "retrieve_future", True),
    ("POST", "retrieve_futures", "retrieve_futures", "retrieve_futures", True),
    ("POST", "cancel_future", "cancel_future", "cancel_future", True),
    ("POST", "join_sampling_session", "join_sampling_session", "join_sampling_session", True),
    ("POST", "copy_weights", "copy_weights", "copy_weights", True),
    ("POST", "save_weights_external", "save_weights_external", "save_weights_external", True),
    ("POST", "weights_info", "weights_info", "weights_info", True),
    ("GET", "training_runs", "training_runs", "list_training_runs", True),
    ("GET", r"training_runs/(?P<run>[^/]+)", "get_training_run", "get_training_run", True),
    ("GET", r"training_runs/(?P<run>[^/]+)/checkpoints", "list_run_checkpoints", "list_run_checkpoints", True),
    ("DELETE", _CKPT, "delete_checkpoint", "delete_checkpoint", True),
    ("GET", _CKPT + "/archive", "checkpoint_archive", "archive", True),
    ("GET", _CKPT + "/external_weights_urls", "external_weights_urls", "external_weights_urls", True),
    ("POST", _CKPT + "/publish", "publish_checkpoint", "publish", True),
    ("DELETE", _CKPT + "/publish", "unpublish_checkpoint", "publish", True),
    ("PUT", _CKPT + "/ttl", "set_checkpoint_ttl", "set_ttl", True),
    ("GET", "checkpoints", "checkpoints", "list_user_checkpoints", True),
    ("GET", "sessions", "sessions", "list_sessions", True),
    ("POST", "sessions/search", "sessions/search", "search_sessions", True),
    ("GET", r"sessions/(?P<id>[^/]+)", "get_session", "get_session", True),
    ("PUT", r"sessions/(?P<id>[^/]+)/project", "set_session_project", "set_session_project", True),
    ("GET", r"sessions/(?P<id>[^/]+)/trace_export", "trace_export", "trace_export", True),
    ("POST", r"sessions/(?P<id>[^/]+)/finish", "finish_session", "finish_session", True),
    ("GET", r"samplers/(?P<id>[^/]+)", "get_sampler", "get_sampler", True),
    ("GET", "audit", "audit", "audit", True),
    ("GET", "billing/usage/events", "billing/usage/events", "billing", True),
    ("GET", "billing/usage/checkpoints/current", "billing/usage/checkpoints/current", "checkpoint_storage", True),
    ("POST", "telemetry", "telemetry", "telemetry", True),
    ("GET", r"_download/(?P<token>[A-Za-z0-9_\-.]+)(?:/[A-Za-z0-9_.\-]+)?", "download", "download", False),
]
_BUSY_DETAIL = b'{"detail":"the server has too many open connections; retry shortly"}'
_BUSY_ANSWER = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
                b"Connection: close\r\nContent-Length: " + str(len(_BUSY_DETAIL)).encode() + b"\r\n\r\n" + _BUSY_DETAIL)
_BIG_BODY_BYTES = 1024 * 1024  # bodies above this are handled at most _BIG_BODIES at a time (bounded memory)
_BIG_BODIES = 4
_LINGER_S = 2.0  # how long an unread request body is drained after an error answer
_LINGER_MAX_BYTES = 256 * 1024 * 1024
_COMPILED = [(m, re.compile(f"^{p}$"), op, fn, auth) for m, p, op, fn, auth in _ROUTES]


def route_table() -> list[tuple[str, str]]:
    """(HTTP method, path regex after ``/api/v1/``) of every endpoint (for fuzzers and docs)."""
    return [(m, p) for m, p, _, _, _ in _ROUTES]


def default_data_dir() -> Path:
    """``$XDG_CACHE_HOME/tinker_sync/local`` (or ``~/.cache/tinker_sync/local``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tinker_sync" / "local"


def _json_answer(status: int, body: Any, headers: Mapping[str, str] | None = None
                 ) -> tuple[int, bytes, str, Mapping[str, str]]:
    if isinstance(body, bytes):
        return status, body, "application/json", dict(headers or {})
    # NaN/Infinity are written as the JS literals Python's json (and the SDKs) read back, so a diverged
    # loss is reported instead of turning the poll into a 500.
    data = json.dumps(body, separators=(",", ":")).encode("utf-8")
    return status, data, "application/json", dict(headers or {})


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    owner: LocalTinkerServer

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        self._conn_lock = threading.Lock()
        self._conns: set[socket.socket] = set()

    def shutdown(self) -> None:
        """Stop serve_forever() now, not at its next poll tick: the loop checks its stop flag when the
        selector wakes, so once the flag is set an empty connection wakes it."""
        stopper = threading.Thread(target=super().shutdown, name="tinker-sync-local-stop", daemon=True)
        stopper.start()
        host, port = self.server_address[:2]
        while stopper.is_alive():
            try:
                socket.create_connection((str(host), int(port)), timeout=0.2).close()
            except OSError:
                pass
            stopper.join(0.01)

    def process_request(self, request: Any, client_address: Any) -> None:
        # One handler thread per connection, but never more than max_connections: beyond that the
        # connection gets an immediate 503 (retried by every client) from the accept thread itself.
        with self._conn_lock:
            full = len(self._conns) >= self.owner.max_connections
            if not full:
                self._conns.add(request)
        if full:
            self._refuse(request)
            return
        super().process_request(request, client_address)

    def _refuse(self, request: Any) -> None:
        try:
            request.setblocking(False)
            request.send(_BUSY_ANSWER)
        except OSError:
            pass
        self.shutdown_request(request)

    def active_connections(self) -> int:
        with self._conn_lock:
            return len(self._conns)

    def shutdown_request(self, request: Any) -> None:
        with self._conn_lock:
            self._conns.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Shut down every open client connection (idle keep-alive ones included)."""
        with self._conn_lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "tinker-sync-local"
    sys_version = ""
    timeout = 300  # idle keep-alive connections are closed after 5 minutes
    # Headers and body go out in separate send()s; without TCP_NODELAY, Nagle + the client's delayed ACK
    # stall every keep-alive response by ~40 ms.
    disable_nagle_algorithm = True
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s - " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")  # no route answers HEAD: 405 (headers only)

    def do_OPTIONS(self) -> None:
        self._dispatch("OPTIONS")

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Protocol-level errors (bad request line, unsupported method, ...) as JSON, then a lingering close.

        The request may have a body nobody read, so the connection cannot be reused.
        """
        try:
            phrase = HTTPStatus(code).phrase
        except ValueError:
            phrase = "error"
        detail = f"{message or phrase}" + (f": {explain}" if explain else "")
        self.log_error("code %d, message %s", code, detail)
        self.close_connection = True
        try:
            self._send(*_json_answer(code, {"detail": detail}))
        except OSError:
            return
        self._lingering_close()

    # ------------------------------------------------------------------------------------------
    def _read_body(self, limit: int) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            parts: list[bytes] = []
            total = 0
            while True:
                line = self.rfile.readline(65537)
                try:
                    size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                except ValueError:
                    raise HTTPError(400, "malformed chunked request body") from None
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                total += size
                if total > limit:
                    raise HTTPError(413, f"request body exceeds the server limit of {limit} bytes")
                parts.append(self.rfile.read(size))
                self.rfile.readline(65537)
        raw = self.headers.get("Content-Length")
        if not raw:
            return b""
        try:
            length = int(raw)
        except ValueError:
            raise HTTPError(400, f"invalid Content-Length header {raw!r}") from None
        if length < 0:
            raise HTTPError(400, f"invalid Content-Length header {raw!r}")
        if length > limit:
            raise HTTPError(413, f"request body of {length} bytes exceeds the server limit of {limit} bytes; "
                                 f"split the request (e.g. fewer datums per forward_backward)")
        return self.rfile.read(length)

    def _dispatch(self, method: str) -> None:
        try:
            declared = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            declared = 0
        if declared <= _BIG_BODY_BYTES and "chunked" not in (self.headers.get("Transfer-Encoding") or "").lower():
            self._dispatch_bounded(method)
            return
        with self.server.owner.big_bodies:
            self._dispatch_bounded(method)

    def _dispatch_bounded(self, method: str) -> None:
        owner = self.server.owner
        split = urlsplit(self.path)
        body = b""
        unread_body = False
        # (status, body, content type, headers) of the answer, None = drop the connection; decided completely
        # before anything is written
        answer: tuple[int, bytes, str, Mapping[str, str]] | None
        try:
            try:
                proto = "application/x-protobuf" in (self.headers.get("Content-Type") or "")
                body = self._read_body(owner.max_body_bytes if proto else min(owner.max_body_bytes,
                                                                               owner.max_json_body_bytes))
            except HTTPError:
                unread_body = True  # the rest of the body must not be parsed as the next request
                raise
            answer = self._answer(method, split.path, split.query, body)
        except Exception as exc:  # noqa: BLE001 - every failure becomes an answer (see _error_answer)
            answer = self._error_answer(exc, method, split.path)
        # Record before answering: a client that inspects ``requests`` right after its call returned sees it.
        recorded_headers = {k: v for k, v in self.headers.items() if k.lower() != "x-api-key"}
        owner._record(RecordedRequest(method, split.path, recorded_headers, body, 0 if answer is None else answer[0]))
        if answer is None:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        if unread_body:
            self.close_connection = True
        try:
            self._send(*answer)
        except OSError:  # the client went away (BrokenPipe, ConnectionReset, timeout)
            self.close_connection = True
            return
        if unread_body:
            self._lingering_close()

    def _answer(
        self, method: str, path: str, query: str, body: bytes
    ) -> tuple[int, bytes, str, Mapping[str, str]] | None:
        """Route, apply the scripted faults, authenticate and call the endpoint (None = drop the connection)."""
        owner = self.server.owner
        _, op, fn_name, needs_auth, params = self._route(method, path)
        delay = owner.faults.delay_for(op)
        if delay > 0:
            time.sleep(delay)
        if owner.faults.should_drop(op):
            return None
        scripted = owner.faults.scripted_response(op)
        if scripted is not None:
            return _json_answer(scripted.status, scripted.body, scripted.headers)
        api_key, who = self._authenticate() if needs_auth else ("", "")
        call = Call(method=method, op=op, params=params, query=dict(parse_qsl(query)), headers=self.headers,
                    body=body, owner=who, api_key=api_key)
        result = getattr(owner.api, fn_name)(call)
        if isinstance(result, Answer):
            return result.status, result.body, result.content_type, result.headers
        return _json_answer(200, result)

    @staticmethod
    def _error_answer(exc: Exception, method: str, path: str) -> tuple[int, bytes, str, Mapping[str, str]]:
        """The answer for a failure: its HTTPError, a 4xx for malformed input, a 500 only for a server bug."""
        if isinstance(exc, HTTPError):
            return _json_answer(exc.status, {"detail": exc.detail}, exc.headers)
        if isinstance(exc, RecursionError):
            return _json_answer(400, {"detail": f"{path}: the request is nested too deeply; flatten it"})
        if isinstance(exc, UnicodeEncodeError):
            return _json_answer(400, {"detail": f"{path}: a string holds a lone UTF-16 surrogate (\\ud800-\\udfff "
                                                f"without its pair); send valid Unicode text"})
        if isinstance(exc, MemoryError):
            return _json_answer(413, {"detail": f"{path}: the request needs more memory than this server allows; "
                                                f"send less data per request"})
        logger.error("unhandled error in %s %s", method, path, exc_info=exc)
        return _json_answer(500, {"detail": f"internal server error: {type(exc).__name__}: {exc}"})

    def _lingering_close(self) -> None:
        """Half-close, then read and discard what the client still sends before closing.

        Closing a socket with unread request bytes makes the kernel send a TCP RST, and a client that is
        still sending (or has not read the answer yet) then sees "connection reset" instead of the 4xx
        that explains what is wrong. Bounded in time and bytes.
        """
        sock = self.connection
        try:
            self.wfile.flush()
            sock.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + _LINGER_S
            drained = 0
            while drained < _LINGER_MAX_BYTES:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                sock.settimeout(min(left, 0.5))
                chunk = sock.recv(65536)
                if not chunk:
                    break
                drained += len(chunk)
        except OSError:
            pass

    def _route(self, method: str, path: str) -> tuple[str, str, str, bool, dict[str, str]]:
        if not path.startswith(_PREFIX):
            raise HTTPError(404, f"unknown endpoint {path!r}; the API lives under {_PREFIX}")
        rest = path[len(_PREFIX):].rstrip("/")
        allowed = []
        for m, rx, op, fn, auth in _COMPILED:
            match = rx.match(rest)
            if match is None:
                continue
            if m == method:
                return m, op, fn, auth, match.groupdict()
            allowed.append(m)
        if allowed:
            raise HTTPError(405, f"method {method} is not allowed on {path}; use {' or '.join(sorted(set(allowed)))}",
                            {"Allow": ", ".join(sorted(set(allowed)))})
        raise HTTPError(404, f"unknown endpoint {method} {path}")

    def _authenticate(self) -> tuple[str, str]:
        """(the credential, its owner id); a JWT minted by this server stands for the key it was exchanged for."""
        key = (self.headers.get("X-API-Key") or "").strip()
        allowed = self.server.owner.api_keys
        if not key:
            raise HTTPError(401, "missing API key: send it in the X-API-Key header (any key starting with 'tml-' "
                                 "works on the local server unless it was started with --api-key)")
        api = self.server.owner.api
        if key.startswith("eyJ") and api is not None:
            return key, api.authenticate_jwt(key)
        if allowed is not None:
            if key not in allowed:
                raise HTTPError(401, "invalid API key: this local server only accepts the keys given with --api-key")
        elif not key.startswith("tml-"):
            raise HTTPError(401, "invalid API key: it must start with 'tml-' (e.g. TINKER_API_KEY=tml-local)")
        return key, owner_of_key(key)

    def _send(self, status: int, body: bytes, content_type: str, headers: Mapping[str, str]) -> int:
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = ""
        self.send_response(status, phrase)
        if status != 204:
            self.send_header("Content-Type", content_type)
        else:
            body = b""
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)
        return status


class LocalTinkerServer:
    """An embedded, offline, Tinker-compatible HTTP server backed by the numpy engine.

    Args:
        host, port: where to listen (port 0 picks a free one; see :attr:`url`).
        data_dir: SQLite metadata + checkpoint files. ``None`` = a fresh temporary directory removed on
            :meth:`stop`; the CLI passes :func:`default_data_dir`.
        api_keys: accepted keys; ``None`` accepts any key starting with ``tml-``.
        long_poll_s: how long ``retrieve_future`` holds a request before answering ``try_again``.
        max_body_bytes: larger request bodies are refused with 413.
        clock: wall clock (seconds since the epoch) for timestamps and checkpoint expiry (injectable).
        sample_workers: threads of the sampling pool (default min(4, CPUs)).
        client_config_overrides: merged into the ``/api/v1/client/config`` answer (e.g. a small
            ``fwdbwd_max_chunk_len`` to exercise client-side chunking).
        session_timeout_s: a session without any request (heartbeats included) for this long, measured with
            ``clock``, expires: work on it and its heartbeats then answer 410.
        max_json_body_bytes: JSON bodies (which expand most in memory) larger than this are refused with 413.
        max_connections: open connections beyond this get an immediate 503 (one handler thread each).
        jwt_auth: mint JWTs on ``POST /api/v1/auth/token`` and announce ``pjwt_auth_enabled`` (the signing
            secret is kept in ``data_dir``, so tokens survive a restart).

    Live training models and unsaved samplers are persisted in ``data_dir`` and survive a restart on the
    same ``data_dir`` (a client keeps training the same model_id with the next seq_id).

    When numpy is not imported yet, :meth:`start` sets ``OPENBLAS_NUM_THREADS``/``OMP_NUM_THREADS`` to 1
    unless already set: the engine's matrices are tiny and multi-threaded BLAS only adds contention.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        data_dir: str | Path | None = None,
        api_keys: Collection[str] | None = None,
        long_poll_s: float = 20.0,
        max_body_bytes: int = 64 * 1024 * 1024,
        clock: Callable[[], float] = time.time,
        sample_workers: int | None = None,
        client_config_overrides: Mapping[str, Any] | None = None,
        session_timeout_s: float = 600.0,
        max_json_body_bytes: int = 16 * 1024 * 1024,
        max_connections: int = 256,
        jwt_auth: bool = False,
        _engine_module: Any = None,
    ) -> None:
        if session_timeout_s <= 0:
            raise ValueError(f"session_timeout_s must be > 0, got {session_timeout_s}")
        self.session_timeout_s = session_timeout_s
        self.host = host
        self.port = port
        self._temp_dir = data_dir is None
        self.data_dir = Path(tempfile.mkdtemp(prefix="tinker-sync-local-")) if data_dir is None else Path(data_dir)
        self.api_keys = frozenset(api_keys) if api_keys else None
        self.long_poll_s = long_poll_s
        self.max_body_bytes = max_body_bytes
        self.max_json_body_bytes = max_json_body_bytes
        if max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {max_connections}")
        self.max_connections = max_connections
        self.big_bodies = threading.BoundedSemaphore(_BIG_BODIES)
        self.jwt_auth = jwt_auth
        self.clock = clock
        self.faults = FaultInjector()
        self.requests: list[RecordedRequest] = []
        self._requests_lock = threading.Lock()
        self._sample_workers = sample_workers
        self.client_config_overrides = dict(client_config_overrides or {})
        self._engine_module = _engine_module
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.store: Store | None = None
        self.api: Api | None = None

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:8000`` (valid after :meth:`start`)."""
        if self._httpd is None:
            raise RuntimeError("the server is not started; call start() first")
        host = self.host if self.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    def start(self) -> LocalTinkerServer:
        """Open the store, bind the socket and serve in a daemon thread."""
        if self._httpd is not None:
            return self
        if self._engine_module is None and importlib.util.find_spec("numpy") is None:
            # Fail here, with the fix, rather than as a 500 on the first create_model.
            raise RuntimeError(
                "the embedded Tinker server runs its model with numpy, which is not installed; "
                "install it with: pip install 'tinker_sync[local]'"
            )
        if "numpy" not in sys.modules:
            for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
                os.environ.setdefault(var, "1")
        with exit_signals_blocked():  # the server's threads leave Ctrl-C to the main thread (see _executor)
            self._start_serving()
        logger.info("local Tinker server listening on %s (data in %s)", self.url, self.data_dir)
        return self

    def _start_serving(self) -> None:
        self.store = Store(self.data_dir, clock=self.clock)
        self.api = Api(store=self.store, faults=self.faults, clock=self.clock, long_poll_s=self.long_poll_s,
                       base_url=lambda: self.url, engine_module=self._engine_module,
                       sample_workers=self._sample_workers, client_config=self.client_config_overrides,
                       session_timeout_s=self.session_timeout_s,
                       jwt_secret=secret_file(self.data_dir / "jwt_secret") if self.jwt_auth else None)
        httpd = _HTTPServer((self.host, self.port), _Handler)
        httpd.owner = self
        self.port = httpd.server_address[1]
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="tinker-sync-local-http", daemon=True)
        self._thread.start()

    def active_connections(self) -> int:
        """Open client connections right now (each holds one handler thread; see ``max_connections``)."""
        return 0 if self._httpd is None else self._httpd.active_connections()

    def serve_forever(self) -> None:
        """Block until :meth:`stop` is called (from another thread or a signal handler)."""
        if self._thread is None:
            self.start()
        assert self._thread is not None
        while self._thread.is_alive():
            self._thread.join(0.5)

    def stop(self) -> None:
        """Stop serving, fail pending work, close the store (and delete a temporary data dir)."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        # Keep-alive connections would otherwise stay served by their handler threads after stop().
        httpd.close_connections()
        if self._thread is not None:
            self._thread.join(5)
        if self.api is not None:
            self.api.close()
        if self.store is not None:
            self.store.close()
        if self._temp_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> LocalTinkerServer:  # noqa: PYI034 - typing.Self needs Python 3.11
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _record(self, req: RecordedRequest) -> None:
        with self._requests_lock:
            self.requests.append(req)
            if len(self.requests) > 10_000:
                del self.requests[:5_000]

    def clear_requests(self) -> None:
        """Forget the recorded requests."""
        with self._requests_lock:
            self.requests.clear()
