"""A tiny scriptable HTTP/1.1 server for the CORE tests (stdlib only, 127.0.0.1, daemon thread).

Tests script responses per path: a queue of ``Reply`` objects (consumed in order) and a default.
A reply may be a callable ``(RecordedRequest) -> Reply`` for dynamic answers. Every request is
recorded (method, path, headers, body) and TCP connections are counted.
"""

from __future__ import annotations

import collections
import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Union


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # bytes, str, or a JSON-able object
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0  # hold the answer this long (long-poll / timeout tests)
    drop: bool = False  # close the connection without answering

    def encoded(self) -> tuple[bytes, str]:
        if self.body is None:
            return b"", "application/json"
        if isinstance(self.body, bytes):
            return self.body, self.headers.get("Content-Type", "application/octet-stream")
        if isinstance(self.body, str):
            return self.body.encode(), "text/plain"
        return json.dumps(self.body).encode(), "application/json"


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    connection_id: int
    received_at: float = field(default_factory=time.monotonic)

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None

    def header(self, name: str) -> str | None:
        for k, v in self.headers.items():
            if k.lower() == name.lower():
                return v
        return None


Script = Union[Reply, Callable[[RecordedRequest], Reply]]  # noqa: UP007 - a runtime alias on 3.10


class ScriptedServer:
    """Usage: ``with ScriptedServer() as srv: srv.script("/api/v1/x", Reply(500), Reply(200, {...}))``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._scripts: dict[str, collections.deque[Script]] = collections.defaultdict(collections.deque)
        self._defaults: dict[str, Script] = {}
        self.requests: list[RecordedRequest] = []
        self.connections = 0
        self._stop = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body are two writes; avoid the 40 ms delayed-ACK stall

            def setup(self) -> None:
                super().setup()
                with server._lock:
                    server.connections += 1
                    self.connection_id = server.connections

            def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                rec = RecordedRequest(self.command, self.path, dict(self.headers.items()), body, self.connection_id)
                with server._lock:
                    server.requests.append(rec)
                reply = server._next_reply(rec)
                if reply.delay_s:
                    server._stop.wait(reply.delay_s)
                if reply.drop:
                    self.close_connection = True
                    try:
                        self.connection.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    return
                data, ctype = reply.encoded()
                try:
                    self.send_response(reply.status)
                    hdrs = {"Content-Type": ctype, **reply.headers}
                    for k, v in hdrs.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    self.close_connection = True

            do_GET = do_POST = do_PUT = do_DELETE = _handle

        class Server(ThreadingHTTPServer):
            request_queue_size = 128  # the default backlog of 5 drops SYNs when many pollers connect at once

        self._httpd = Server(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, name="scripted-server", daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> ScriptedServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)

    def __enter__(self) -> ScriptedServer:  # noqa: PYI034
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def script(self, path: str, *replies: Script) -> None:
        """Queue replies for ``path`` (consumed in order before the default)."""
        with self._lock:
            self._scripts[path].extend(replies)

    def default(self, path: str, reply: Script) -> None:
        """The reply for ``path`` once its queue is empty."""
        with self._lock:
            self._defaults[path] = reply

    def _next_reply(self, rec: RecordedRequest) -> Reply:
        path = rec.path.split("?", 1)[0]
        with self._lock:
            queue = self._scripts.get(path)
            item: Script | None = queue.popleft() if queue else self._defaults.get(path)
        if item is None:
            return Reply(404, {"detail": f"no script for {path}"})
        return item(rec) if callable(item) else item

    def requests_to(self, path: str) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.path.split("?", 1)[0] == path]


_RETRIEVE_FUTURE = "/api/v1/retrieve_future"


@contextlib.contextmanager
def held_polls(hold_s: float) -> Iterator[tuple[ScriptedServer, dict[str, threading.Event]]]:
    """A server that holds each retrieve_future poll until its request id's event is set (a long poll).

    A poll whose event is not set within ``hold_s`` answers ``try_again``; every event is set on exit.
    """
    events: dict[str, threading.Event] = {}
    lock = threading.Lock()

    def retrieve(rec: RecordedRequest) -> Reply:
        rid = rec.json()["request_id"]
        with lock:
            ev = events.setdefault(rid, threading.Event())
        if ev.wait(hold_s):
            return Reply(200, {"rid": rid})
        return Reply(200, {"type": "try_again", "request_id": rid})

    with ScriptedServer() as srv:
        srv.default(_RETRIEVE_FUTURE, retrieve)
        try:
            yield srv, events
        finally:
            for ev in list(events.values()):
                ev.set()


def wait_for(pred: Callable[[], object], timeout_s: float = 10.0) -> bool:
    """Poll ``pred`` every 10 ms until it is truthy (True) or ``timeout_s`` passes (False)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.01)
    return False


def answer_session(srv: ScriptedServer, session_id: str = "s1") -> ScriptedServer:
    """Default answers to a client session's bookkeeping: client config, create_session, heartbeats, finish,
    and create_sampling_session (``<session_id>:sample:0``)."""
    srv.default("/api/v1/client/config", Reply(200, {}))
    srv.default("/api/v1/create_session", Reply(200, {"session_id": session_id}))
    srv.default("/api/v1/session_heartbeat", Reply(200, {"type": "session_heartbeat"}))
    srv.default(f"/api/v1/sessions/{session_id}/finish", Reply(200, {}))
    srv.default("/api/v1/create_sampling_session", Reply(200, {"sampling_session_id": f"{session_id}:sample:0"}))
    return srv


# -- sampling sessions with batched polling (retrieve_futures) and cancels ------------------------

_RETRIEVE_FUTURES = "/api/v1/retrieve_futures"
_CANCEL_FUTURE = "/api/v1/cancel_future"


class SessionSim:
    """A sampling-session completion queue as a 0.38 server keeps it (docs/protocol.rst §14.1).

    ``add(rid)`` registers a pending request (or POST ``/api/v1/asample`` via ``post_sample``);
    ``complete(rids, failed=...)`` finishes requests, appending them to the session's completion log.
    ``retrieve_futures`` answers the completions after ``prev_cursor`` (holding up to ``hold_s`` while
    there are none, unless ``timeout`` is 0); ``retrieve_future`` answers a completed request at once
    and holds a pending one up to ``hold_s`` (then try_again). ``cancel_future`` records the id.
    ``batch=False`` makes retrieve_futures answer 404 (a server without it). ``result(rid)`` builds a
    finished request's payload (default ``{"rid": rid}``).
    """

    def __init__(
        self, *, hold_s: float = 2.0, batch: bool = True, session_id: str = "sess-1",
        result: Callable[[str], Any] | None = None,
    ) -> None:
        self.result = result or (lambda rid: {"rid": rid})
        self.hold_s = hold_s
        self.batch = batch
        self.session_id = session_id
        self.cond = threading.Condition()
        self.pending: set[str] = set()
        self.log: list[dict[str, Any]] = []  # completion events; the cursor is their count
        self.done: dict[str, bool] = {}  # request id -> failed?
        self.retrieved: set[str] = set()
        self.cancelled: list[str] = []
        self.batch_inflight = 0
        self.batch_peak = 0
        self.bad_targets = 0
        self._ids = 0

    def install(self, srv: ScriptedServer) -> None:
        srv.default("/api/v1/asample", self.post_sample)
        srv.default(_RETRIEVE_FUTURES, self.retrieve_futures)
        srv.default(_RETRIEVE_FUTURE, self.retrieve_future)
        srv.default(_CANCEL_FUTURE, self.cancel_future)

    def add(self, rid: str) -> None:
        with self.cond:
            self.pending.add(rid)

    def post_sample(self, rec: RecordedRequest) -> Reply:
        body = rec.json()
        with self.cond:
            self._ids += 1
            rid = f"{body.get('sampling_session_id')}-{body.get('seq_id')}-{self._ids}"
            self.pending.add(rid)
            self.cond.notify_all()
        return Reply(200, {"request_id": rid})

    def complete(self, rids: list[str], *, failed: bool = False) -> None:
        with self.cond:
            for rid in rids:
                self.pending.discard(rid)
                self.done[rid] = failed
                event: dict[str, Any] = {"state": "failed" if failed else "finished", "request_id": rid}
                if not failed:
                    event["response_payload_uncompressed_size"] = 16
                self.log.append(event)
            self.cond.notify_all()

    def restart(self) -> None:
        """Forget everything, as a server restarted without persisting its sampling work."""
        with self.cond:
            self.pending.clear()
            self.log.clear()
            self.done.clear()
            self.cond.notify_all()

    def retrieve_futures(self, rec: RecordedRequest) -> Reply:
        if not self.batch:
            return Reply(404, {"detail": "Not Found"})
        body = rec.json()
        target = body.get("target") or {}
        if target.get("type") != "sampling_session" or target.get("sampling_session_id") != self.session_id:
            with self.cond:
                self.bad_targets += 1
            return Reply(400, {"detail": f"unknown target {target!r}"})
        cursor = int(body.get("prev_cursor", 0))
        with self.cond:
            self.retrieved.update(body.get("retrieved_request_ids") or [])
            self.batch_inflight += 1
            self.batch_peak = max(self.batch_peak, self.batch_inflight)
            try:
                if body.get("timeout") != 0:
                    self.cond.wait_for(lambda: len(self.log) > cursor, self.hold_s)
                return Reply(200, {"completions": self.log[cursor:], "cursor": len(self.log)})
            finally:
                self.batch_inflight -= 1

    def retrieve_future(self, rec: RecordedRequest) -> Reply:
        rid = rec.json()["request_id"]
        with self.cond:
            if rid not in self.done and rid not in self.pending:
                return Reply(404, {"detail": f"no future {rid}"})
            self.cond.wait_for(lambda: rid in self.done, self.hold_s)
            if rid not in self.done:
                return Reply(200, {"type": "try_again", "request_id": rid, "queue_state": "active"})
            if self.done[rid]:
                return Reply(200, {"error": f"{rid} failed", "category": "user"})
            return Reply(200, self.result(rid))

    def cancel_future(self, rec: RecordedRequest) -> Reply:
        with self.cond:
            self.cancelled.append(rec.json()["request_id"])
            self.cond.notify_all()
        return Reply(200, {})


# -- JWT minting (auth/token) --------------------------------------------------------------------


def make_jwt(claims: dict[str, Any]) -> str:
    """An unsigned-looking JWT with these claims (the client never verifies signatures)."""
    import base64

    def part(obj: Any) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


class TokenMinter:
    """``POST /api/v1/auth/token`` mints a JWT for ``api_key``; ``protect(path)`` makes a path take only live JWTs.

    A protected path answers 401 ``WWW-Authenticate: Bearer error="invalid_token"`` to a JWT that was
    not minted or was revoked (``revoke_all()``), and 401 without that error to anything else.
    """

    def __init__(self, api_key: str, *, lifetime_s: int = 3600, claims: dict[str, Any] | None = None) -> None:
        self.api_key = api_key
        self.lifetime_s = lifetime_s
        self.claims = claims or {"sub": "tml:user:u-1", "email": "u1@example.com", "org_id": "o-1"}
        self.lock = threading.Lock()
        self.live: set[str] = set()
        self.minted: list[str] = []

    def install(self, srv: ScriptedServer) -> None:
        srv.default("/api/v1/auth/token", self.mint)

    def mint(self, rec: RecordedRequest) -> Reply:
        if rec.header("X-API-Key") != self.api_key:
            return Reply(401, {"detail": "invalid API key"})
        with self.lock:
            iat = int(time.time())
            token = make_jwt({**self.claims, "iat": iat, "exp": iat + self.lifetime_s, "n": len(self.minted)})
            self.live.add(token)
            self.minted.append(token)
        return Reply(200, {"jwt": token})

    def revoke_all(self) -> None:
        with self.lock:
            self.live.clear()

    def protect(self, srv: ScriptedServer, path: str, ok: Script) -> None:
        def handler(rec: RecordedRequest) -> Reply:
            key = rec.header("X-API-Key") or ""
            with self.lock:
                live = key in self.live
            if live:
                return ok(rec) if callable(ok) else ok
            if key.startswith("eyJ"):
                return Reply(401, {"detail": "token expired"}, {"WWW-Authenticate": 'Bearer error="invalid_token"'})
            return Reply(401, {"detail": "a JWT is required"})

        srv.default(path, handler)
