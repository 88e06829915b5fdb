"""A faulting HTTP/1.1 proxy (stdlib sockets and threads) for soak runs against a server on 127.0.0.1.

Per request it draws one fault: drop the connection before forwarding, forward and then drop the
answer (the server applied the request, the client never hears of it), answer 429/503/500 with a
Retry-After hint without forwarding, or delay, then forward.
"""

from __future__ import annotations

import http.client
import json
import logging
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import BinaryIO

import attrs

from tinker_sync._retry import IDEMPOTENT_POST_PATHS

logger = logging.getLogger(__name__)

__all__ = ["FaultPlan", "FaultProxy", "ProxiedRequest", "may_resend"]

_MAX_HEAD_BYTES = 64 * 1024
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length", "proxy-connection"})
FAULT_KINDS = ("drop_before", "drop_after", "status_429", "status_503", "status_500", "delay")


@attrs.frozen
class FaultPlan:
    """Probability of each fault per eligible request (the rest pass untouched)."""

    drop_before: float = 0.05
    drop_after: float = 0.07
    status_429: float = 0.03
    status_503: float = 0.03
    status_500: float = 0.03
    delay: float = 0.04
    max_delay_s: float = 0.05
    max_retry_after_ms: int = 30

    @property
    def total(self) -> float:
        """Probability that an eligible request meets some fault."""
        return sum(getattr(self, k) for k in FAULT_KINDS)

    def __attrs_post_init__(self) -> None:
        if not 0.0 <= self.total <= 1.0 or any(getattr(self, k) < 0 for k in FAULT_KINDS):
            raise ValueError(f"fault probabilities must be >= 0 and sum to at most 1, got {self}")

    def draw(self, rng: random.Random) -> str | None:
        """One fault kind (or None) drawn with these probabilities."""
        x = rng.random()
        for kind in FAULT_KINDS:
            x -= getattr(self, kind)
            if x < 0:
                return kind
        return None


@attrs.frozen
class ProxiedRequest:
    """One request as the proxy received it."""

    method: str
    path: str
    headers: tuple[tuple[str, str], ...]
    body: bytes


# Polls outside the retry policy's list: the poller sends them again itself (a batched poll only reads).
_POLL_PATHS = frozenset({"/api/v1/retrieve_futures"})


def may_resend(method: str, path: str) -> bool:
    """Whether the client may send this request again after it may have arrived (so it can be faulted)."""
    path = path.split("?", 1)[0]
    return method in ("GET", "HEAD", "PUT", "DELETE") or path in IDEMPOTENT_POST_PATHS or path in _POLL_PATHS


class _Closed(Exception):
    """The client closed its connection (or sent something that is not HTTP)."""


def _read_request(rfile: BinaryIO) -> ProxiedRequest:
    readline, read = rfile.readline, rfile.read
    line = readline(_MAX_HEAD_BYTES)
    if not line or not line.strip():
        raise _Closed
    parts = line.decode("latin-1").split()
    if len(parts) != 3:
        raise _Closed
    method, path, _ = parts
    headers: list[tuple[str, str]] = []
    while True:
        h = readline(_MAX_HEAD_BYTES)
        if not h:
            raise _Closed
        if h in (b"\r\n", b"\n"):
            break
        name, _, value = h.decode("latin-1").partition(":")
        headers.append((name.strip(), value.strip()))
    hmap = {k.lower(): v for k, v in headers}
    if "chunked" in hmap.get("transfer-encoding", "").lower():
        chunks = []
        while True:
            size = int(readline(_MAX_HEAD_BYTES).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while readline(_MAX_HEAD_BYTES) not in (b"\r\n", b"\n", b""):
                    pass
                break
            chunks.append(read(size))
            readline(_MAX_HEAD_BYTES)
        body = b"".join(chunks)
    else:
        body = read(int(hmap.get("content-length", "0") or 0))
    kept = tuple((k, v) for k, v in headers if k.lower() not in _HOP_BY_HOP)
    return ProxiedRequest(method, path, kept, body)


def _response_bytes(status: int, reason: str, headers: list[tuple[str, str]], body: bytes) -> bytes:
    lines = [f"HTTP/1.1 {status} {reason}"]
    lines += [f"{k}: {v}" for k, v in headers if k.lower() not in _HOP_BY_HOP]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class FaultProxy:
    """Listens on 127.0.0.1 and forwards to ``upstream_port`` on 127.0.0.1, injecting faults.

    Args:
        plan: fault probabilities; applied only to requests the client may resend (``eligible``).
        seed: seed of the fault draws.
        record: keep every received request in :attr:`recorded` (for the fuzzer's templates).
        upstream_timeout_s: read timeout towards the server (above its long-poll time).
    """

    def __init__(self, upstream_port: int, *, plan: FaultPlan | None = None, seed: int = 0, record: bool = False,
                 eligible: Callable[[str, str], bool] = may_resend, upstream_timeout_s: float = 120.0) -> None:
        self.upstream_port = upstream_port
        self.plan = plan or FaultPlan(0, 0, 0, 0, 0, 0)
        self.eligible = eligible
        self.upstream_timeout_s = upstream_timeout_s
        self.record = record
        self.recorded: list[ProxiedRequest] = []
        self.counts: Counter[str] = Counter()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._conns: set[socket.socket] = set()
        self._thread = threading.Thread(target=self._accept_loop, name="soak-proxy-accept", daemon=True)

    @property
    def url(self) -> str:
        """Base URL a client should use."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FaultProxy:
        """Serve in daemon threads."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting and close every client connection."""
        self._stop.set()
        try:
            self._sock.close()
        except OSError:
            pass
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            _shutdown(conn)
        self._thread.join(5)

    def __enter__(self) -> FaultProxy:  # noqa: PYI034 - typing.Self needs Python 3.11
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def fault_rate(self) -> float:
        """Faulted requests / all requests seen so far."""
        with self._lock:
            faults = sum(self.counts[k] for k in FAULT_KINDS)
            return faults / max(1, self.counts["requests"])

    # -- internals --------------------------------------------------------------------------------
    def _accept_loop(self) -> None:
        self._sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._conns.add(conn)
            threading.Thread(target=self._serve, args=(conn,), name="soak-proxy-conn", daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        upstream: http.client.HTTPConnection | None = None
        rfile = conn.makefile("rb")
        try:
            while not self._stop.is_set():
                try:
                    req = _read_request(rfile)
                except (_Closed, OSError, ValueError):
                    return
                kind, delay_s = self._draw_one(req)
                if delay_s > 0:
                    time.sleep(delay_s)
                if kind == "drop_before":
                    return
                if kind is not None and kind.startswith("status_"):
                    conn.sendall(self._injected_status(int(kind[-3:])))
                    continue
                upstream = upstream or http.client.HTTPConnection("127.0.0.1", self.upstream_port,
                                                                  timeout=self.upstream_timeout_s)
                try:
                    upstream.request(req.method, req.path, body=req.body, headers=dict(req.headers))
                    resp = upstream.getresponse()
                    data = resp.read()
                except (OSError, http.client.HTTPException):
                    with self._lock:
                        self.counts["upstream_error"] += 1
                    return  # the server is down or hung up: the client sees a dropped connection
                if resp.will_close:
                    upstream.close()
                    upstream = None
                if kind == "drop_after":
                    return
                conn.sendall(_response_bytes(resp.status, resp.reason, resp.getheaders(), data))
        except OSError:
            return
        finally:
            if upstream is not None:
                upstream.close()
            rfile.close()
            _shutdown(conn)
            with self._lock:
                self._conns.discard(conn)

    def _draw_one(self, req: ProxiedRequest) -> tuple[str | None, float]:
        with self._lock:
            self.counts["requests"] += 1
            if self.record:
                self.recorded.append(req)
            if not self.eligible(req.method, req.path):
                self.counts["ineligible"] += 1
                return None, 0.0
            kind = self.plan.draw(self._rng)
            if kind is not None:
                self.counts[kind] += 1
            delay = self._rng.uniform(0, self.plan.max_delay_s) if kind == "delay" else 0.0
        return kind, delay

    def _injected_status(self, status: int) -> bytes:
        with self._lock:
            retry_ms = self._rng.randint(0, self.plan.max_retry_after_ms)
        body = json.dumps({"detail": f"injected {status} by the soak proxy"}).encode()
        headers = [("Content-Type", "application/json"), ("Retry-After", "0"), ("retry-after-ms", str(retry_ms))]
        reason = {429: "Too Many Requests", 503: "Service Unavailable", 500: "Internal Server Error"}[status]
        return _response_bytes(status, reason, headers, body)


def _shutdown(conn: socket.socket) -> None:
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        conn.close()
    except OSError:
        pass
