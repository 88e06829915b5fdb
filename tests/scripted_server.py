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
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="scripted-server", daemon=True
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
