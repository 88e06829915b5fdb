"""A style-rewriting HTTP proxy in front of a real LocalTinkerServer (stdlib only, 127.0.0.1, threads).

Other Tinker-compatible servers (built by others from the official pydantic models) answer in styles
the local server does not use. The proxy forwards every request to the local server and rewrites its
answers into such a style, keeping their meaning, so the client flows can be run against each style:

- ``type_null``: ``"type": null`` in the answers whose official model makes ``type`` optional: get_info
  and the save / load / unload results (the official SDK refuses a null tag elsewhere, e.g. on
  create_session, so servers built from its models never send one there).
- ``bare_ids``: checkpoint ids without their kind (``"s1"`` for ``"weights/s1"``) in listings; the
  checkpoint endpoints accept the bare id in their path (and the ``kind/name`` form the official SDK
  builds from a tinker path). Tinker paths keep their ``tinker://RUN/weights/NAME`` form.
- ``detail_400``: a failed future (poll answer ``{"error": ..., "category": ...}``) is an HTTP 400
  ``{"detail": "<error>"}`` (on every re-poll of it).
- ``accepted_202``: submit endpoints (those answering ``{"request_id": ...}``) answer 202.
- ``uuid_ids`` / ``int_ids``: request ids are UUID strings / JSON integers; the proxy maps them back in
  retrieve_future / retrieve_futures / cancel_future bodies.
- ``no_dynamic_config``: ``/api/v1/client/dynamic_config`` is a 404 (and, with ``empty_config``,
  ``/api/v1/client/config`` answers ``{}``).

Protobuf bodies pass through untouched.
"""

from __future__ import annotations

import http.client
import itertools
import json
import threading
import uuid
from collections.abc import Collection
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

STYLES = ("type_null", "bare_ids", "detail_400", "accepted_202", "uuid_ids", "int_ids", "no_dynamic_config",
          "empty_config")
_KINDS = ("weights", "sampler_weights", "external_weights")
# the answers whose official pydantic model declares ``type: Optional[Literal[...]] = None``
_NULLABLE_TAGS = {"get_info", "load_weights", "save_weights", "save_weights_for_sampler", "save_weights_external",
                  "unload_model"}
_POLL_PATHS = ("/api/v1/retrieve_future", "/api/v1/retrieve_futures", "/api/v1/cancel_future")
_HOP_HEADERS = {"host", "content-length", "connection", "accept-encoding", "transfer-encoding", "keep-alive"}
_SKIP_ANSWER_HEADERS = {"content-length", "connection", "transfer-encoding", "date", "server", "keep-alive"}
_CKPT_PREFIX = "/api/v1/training_runs/"


class _Answer:
    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def header(self, name: str) -> str:
        return next((v for k, v in self.headers if k.lower() == name), "")

    def json_body(self, data: Any, status: int | None = None) -> None:
        self.body = json.dumps(data).encode()
        self.headers = [(k, v) for k, v in self.headers if k.lower() != "content-type"]
        self.headers.append(("Content-Type", "application/json"))
        if status is not None:
            self.status = status


class ForeignStyleProxy:
    """Forward to ``upstream_url`` and answer in the given ``styles`` (a subset of :data:`STYLES`)."""

    def __init__(self, upstream_url: str, styles: Collection[str]) -> None:
        unknown = set(styles) - set(STYLES)
        if unknown or {"uuid_ids", "int_ids"} <= set(styles):
            raise ValueError(f"bad styles {sorted(styles)} (known: {STYLES}; uuid_ids and int_ids exclude each other)")
        up = urlsplit(upstream_url)
        self._upstream = (up.hostname or "127.0.0.1", up.port or 80)
        self.styles = frozenset(styles)
        self._lock = threading.Lock()
        self._to_foreign: dict[str, Any] = {}  # local request id -> foreign id
        self._to_local: dict[str, str] = {}  # str(foreign id) -> local request id
        self._counter = itertools.count(1001)
        self._failed: dict[str, bytes] = {}  # local request id -> the 400 body of its failed future
        self.answered: list[tuple[str, str, int]] = []  # (method, path, status) of every answer
        self.json_answers: list[tuple[str, int, Any]] = []  # (path without query, status, body) of JSON answers
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body are two writes; avoid the 40 ms delayed-ACK stall

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                answer = proxy.handle(self.command, self.path, dict(self.headers.items()), body)
                with proxy._lock:
                    proxy.answered.append((self.command, self.path, answer.status))
                self.send_response(answer.status)
                for k, v in answer.headers:
                    if k.lower() not in _SKIP_ANSWER_HEADERS:
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                self.wfile.write(answer.body)

            do_GET = do_POST = do_PUT = do_DELETE = _any

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, name="foreign-proxy", daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> ForeignStyleProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)

    # -- request ids -------------------------------------------------------------------------------
    def foreign_id(self, local: str) -> Any:
        if not ({"uuid_ids", "int_ids"} & self.styles):
            return local
        with self._lock:
            fid = self._to_foreign.get(local)
            if fid is None:
                fid = next(self._counter) if "int_ids" in self.styles else str(uuid.uuid4())
                self._to_foreign[local] = fid
                self._to_local[str(fid)] = local
            return fid

    def issued_ids(self) -> list[Any]:
        """The foreign request ids handed out so far."""
        with self._lock:
            return list(self._to_foreign.values())

    def local_id(self, foreign: Any) -> Any:
        if not ({"uuid_ids", "int_ids"} & self.styles) or isinstance(foreign, bool):
            return foreign
        with self._lock:
            return self._to_local.get(str(foreign), f"unknown-foreign-id-{foreign}")

    # -- one exchange ------------------------------------------------------------------------------
    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> _Answer:
        bare = path.split("?")[0]
        if bare == "/api/v1/client/dynamic_config" and "no_dynamic_config" in self.styles:
            return _json(404, {"detail": "Not Found"})
        if bare == "/api/v1/client/config" and "empty_config" in self.styles:
            return _json(200, {})
        fwd = {k: v for k, v in headers.items() if k.lower() not in _HOP_HEADERS}
        if "bare_ids" in self.styles and bare.startswith(_CKPT_PREFIX):
            path, err = self._full_checkpoint_path(path, fwd)
            if err is not None:
                return err
        body_json = _maybe_json(body, headers)
        if bare in _POLL_PATHS and isinstance(body_json, dict):
            body_json = self._ids_to_local(body_json)
            if bare == "/api/v1/retrieve_future":
                with self._lock:
                    failed = self._failed.get(str(body_json.get("request_id")))
                if failed is not None:
                    return _Answer(400, [("Content-Type", "application/json")], failed)
            body = json.dumps(body_json).encode()
        answer = self._forward(method, path, fwd, body)
        if "json" not in answer.header("content-type") or answer.header("content-encoding"):
            return answer
        try:
            data = json.loads(answer.body)
        except ValueError:
            return answer
        self._restyle(bare, body_json, answer, data)
        return answer

    def _restyle(self, bare: str, request: Any, answer: _Answer, data: Any) -> None:
        data = self._ids_to_foreign(data)
        status = answer.status
        if isinstance(data, dict):
            if "bare_ids" in self.styles:
                data = _bare_checkpoint_ids(data)
            if "type_null" in self.styles and status < 300 and (data.get("type") in _NULLABLE_TAGS
                                                                 or bare == "/api/v1/get_info"):
                data["type"] = None
            if ("detail_400" in self.styles and bare == "/api/v1/retrieve_future" and status == 200
                    and "error" in data and "category" in data):
                detail = json.dumps({"detail": str(data["error"])}).encode()
                with self._lock:
                    self._failed[str(request.get("request_id"))] = detail
                answer.status, data = 400, {"detail": str(data["error"])}
            if "accepted_202" in self.styles and status == 200 and bare not in _POLL_PATHS and "request_id" in data:
                answer.status = 202
        answer.json_body(data)
        with self._lock:
            self.json_answers.append((bare, answer.status, data))

    def _ids_to_foreign(self, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: (self.foreign_id(v) if k == "request_id" and isinstance(v, str) else self._ids_to_foreign(v))
                    for k, v in data.items()}
        if isinstance(data, list):
            return [self._ids_to_foreign(v) for v in data]
        return data

    def _ids_to_local(self, body: dict[str, Any]) -> dict[str, Any]:
        out = dict(body)
        if "request_id" in out:
            out["request_id"] = self.local_id(out["request_id"])
        if isinstance(out.get("retrieved_request_ids"), list):
            out["retrieved_request_ids"] = [self.local_id(r) for r in out["retrieved_request_ids"]]
        return out

    def _forward(self, method: str, path: str, headers: dict[str, str], body: bytes) -> _Answer:
        conn = http.client.HTTPConnection(*self._upstream, timeout=120)
        try:
            conn.request(method, path, body=body if body or method in ("POST", "PUT") else None, headers=headers)
            resp = conn.getresponse()
            return _Answer(resp.status, resp.getheaders(), resp.read())
        finally:
            conn.close()

    def _full_checkpoint_path(self, path: str, headers: dict[str, str]) -> tuple[str, _Answer | None]:
        """``/training_runs/RUN/checkpoints/ID[/suffix]`` with a bare ID -> the local ``KIND/NAME`` path."""
        rest = path[len(_CKPT_PREFIX):].split("/")
        if len(rest) < 3 or rest[1] != "checkpoints" or rest[2] in _KINDS:
            return path, None
        run, bare_id = rest[0], rest[2]
        listing = self._forward("GET", f"{_CKPT_PREFIX}{run}/checkpoints", headers, b"")
        if listing.status != 200:
            return path, listing
        full = [c["checkpoint_id"] for c in json.loads(listing.body).get("checkpoints", [])
                if c["checkpoint_id"].split("/", 1)[-1] == bare_id]
        if len(full) != 1:
            status, what = (404, "not found") if not full else (409, f"ambiguous ({full})")
            return path, _json(status, {"detail": f"checkpoint {bare_id!r} of run {run!r}: {what}"})
        return "/".join([_CKPT_PREFIX.rstrip("/"), run, "checkpoints", full[0], *rest[3:]]), None


def _bare_checkpoint_ids(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: (v.split("/", 1)[1] if k == "checkpoint_id" and isinstance(v, str) and v.split("/", 1)[0] in _KINDS
                    else _bare_checkpoint_ids(v)) for k, v in data.items()}
    if isinstance(data, list):
        return [_bare_checkpoint_ids(v) for v in data]
    return data


def _maybe_json(body: bytes, headers: dict[str, str]) -> Any:
    ctype = next((v for k, v in headers.items() if k.lower() == "content-type"), "")
    if not body or "json" not in ctype:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return None


def _json(status: int, data: Any) -> _Answer:
    return _Answer(status, [("Content-Type", "application/json")], json.dumps(data).encode())
