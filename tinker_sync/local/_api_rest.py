"""REST endpoints of the local server: runs, checkpoints, downloads, sessions, search, traces, billing, audit.

Download links are signed (HMAC over the target and its expiry with a secret kept in the data dir), so
they need no credentials, survive a restart and cannot be forged or extended.
"""

# Request classes use the types package's validating field factories (str_field(), ...), as tinker_sync.types does.
from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import logging
import tarfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..types import AssignSessionProjectRequest, SessionSearchRequest, SetCheckpointTtlRequest
from ._api_common import (
    CHECKPOINT_KINDS,
    Answer,
    ApiBase,
    Call,
    HTTPError,
    check_ttl,
    iso,
    parse_body,
    query_int,
)
from ._persist import secret_file
from ._store import CheckpointRow, RunRow, SessionRow

logger = logging.getLogger(__name__)

_URL_TTL_S = 900.0  # lifetime of archive / external weights links
_TRACE_URL_TTL_S = 3600.0
_CHECKPOINT_FILES = ("adapter_config.json", "adapter_model.safetensors", "checkpoint_complete")
_JSON_MEDIA = "application/json"


def _status(row: SessionRow) -> dict[str, Any]:
    if row.finished_reason is None:
        return {"type": "active"}
    if row.finished_reason == "expired":
        return {"type": "cancelled", "detail": row.finished_detail}
    return {"type": "client_finished", "reason": {"type": row.finished_reason}, "detail": row.finished_detail}


def _status_matches(row: SessionRow, queries: list[Any]) -> bool:
    status = _status(row)
    for q in queries:
        if q.type != status["type"]:
            continue
        reasons = getattr(q, "reasons", None)
        if status["type"] != "client_finished" or not reasons or status["reason"]["type"] in reasons:
            return True
    return False


class RestApi(ApiBase):
    """Runs, checkpoints, download links, sessions, traces and the admin endpoints."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._url_secret = secret_file(self.store.data_dir / "url_secret")

    # -- JSON views -------------------------------------------------------------------------------
    @staticmethod
    def checkpoint_json(row: CheckpointRow) -> dict[str, Any]:
        out: dict[str, Any] = {"checkpoint_id": row.checkpoint_id, "checkpoint_type": row.checkpoint_type,
               "time": iso(row.time),
               "tinker_path": row.tinker_path, "size_bytes": row.size_bytes, "public": row.public,
               "expires_at": iso(row.expires_at)}
        if row.user_metadata:
            out["user_metadata"] = row.user_metadata
        return out

    def _run_json(self, run: RunRow, ckpts: list[CheckpointRow]) -> dict[str, Any]:
        weights = [c for c in ckpts if c.kind == "weights"]
        samplers = [c for c in ckpts if c.kind == "sampler_weights"]
        meta = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in run.user_metadata.items()} \
            if run.user_metadata else None
        return {"training_run_id": run.run_id, "base_model": run.base_model, "model_owner": run.owner,
                "is_lora": True, "corrupted": False, "lora_rank": run.lora_config.get("rank"),
                "last_request_time": iso(run.last_request_time),
                "last_checkpoint": self.checkpoint_json(weights[-1]) if weights else None,
                "last_sampler_checkpoint": self.checkpoint_json(samplers[-1]) if samplers else None,
                "user_metadata": meta}

    @staticmethod
    def _access_scope(call: Call) -> bool:
        scope = call.query.get("access_scope", "owned")
        if scope not in ("owned", "accessible"):
            raise HTTPError(400, f"query parameter 'access_scope' must be 'owned' or 'accessible', got {scope!r}")
        return scope == "accessible"

    def _visible_run(self, call: Call, run_id: str) -> tuple[RunRow, list[CheckpointRow]]:
        run = self.store.get_run(run_id)
        if run is None:
            raise HTTPError(404, f"training run {run_id!r} not found")
        ckpts = self.store.list_checkpoints(run_id)
        if run.owner != call.owner:
            ckpts = [c for c in ckpts if c.public]
            if not ckpts:
                raise HTTPError(404, f"training run {run_id!r} not found")
        return run, ckpts

    # -- runs and checkpoints ---------------------------------------------------------------------
    def list_training_runs(self, call: Call) -> Any:
        limit = query_int(call, "limit", 20, maximum=10_000)
        offset = query_int(call, "offset", 0, maximum=10**9)
        runs, total = self.store.list_runs(call.owner, accessible=self._access_scope(call), limit=limit, offset=offset)
        out = []
        for r in runs:
            ck = self.store.list_checkpoints(r.run_id)
            out.append(self._run_json(r, ck if r.owner == call.owner else [c for c in ck if c.public]))
        return {"training_runs": out, "cursor": {"offset": offset, "limit": limit, "total_count": total}}

    def get_training_run(self, call: Call) -> Any:
        self._access_scope(call)
        run, ckpts = self._visible_run(call, call.params["run"])
        return self._run_json(run, ckpts)

    def list_run_checkpoints(self, call: Call) -> Any:
        _, ckpts = self._visible_run(call, call.params["run"])
        return {"checkpoints": [self.checkpoint_json(c) for c in ckpts], "cursor": None}

    def list_user_checkpoints(self, call: Call) -> Any:
        limit = query_int(call, "limit", 100, maximum=10_000)
        offset = query_int(call, "offset", 0, maximum=10**9)
        rows, total = self.store.list_user_checkpoints(call.owner, limit=limit, offset=offset)
        return {"checkpoints": [self.checkpoint_json(c) for c in rows],
                "cursor": {"offset": offset, "limit": limit, "total_count": total}}

    @staticmethod
    def _ckpt_param(call: Call) -> tuple[str, str]:
        kind, name = call.params["kind"], call.params["name"]
        if kind not in CHECKPOINT_KINDS:
            raise HTTPError(400, f"invalid checkpoint id {kind}/{name!s}: the kind must be one of "
                                 f"{', '.join(CHECKPOINT_KINDS)}")
        return call.params["run"], f"{kind}/{name}"

    def delete_checkpoint(self, call: Call) -> Any:
        run_id, ckpt_id = self._ckpt_param(call)
        self.visible_checkpoint(call, run_id, ckpt_id, need_owner=True)
        self.store.delete_checkpoint(run_id, ckpt_id)
        return Answer(204)

    def publish(self, call: Call) -> Any:
        run_id, ckpt_id = self._ckpt_param(call)
        row = self.visible_checkpoint(call, run_id, ckpt_id, need_owner=True)
        want = call.method == "POST"
        if row.public == want:
            raise HTTPError(409, f"checkpoint {row.tinker_path} is already {'public' if want else 'private'}")
        self.store.set_public(run_id, ckpt_id, want)
        return Answer(204)

    def set_ttl(self, call: Call) -> Any:
        run_id, ckpt_id = self._ckpt_param(call)
        body = call.json()
        self.visible_checkpoint(call, run_id, ckpt_id, need_owner=True)
        if "ttl_seconds" not in body:
            raise HTTPError(400, "ttl: body must be {\"ttl_seconds\": <seconds, 3600 .. 10 years> or null}")
        ttl = check_ttl(body["ttl_seconds"], "ttl")
        parse_body(body, SetCheckpointTtlRequest, "ttl")
        self.store.set_expiry(run_id, ckpt_id, None if ttl is None else self.clock() + ttl)
        return Answer(204)

    # -- signed download links --------------------------------------------------------------------
    def _sign(self, target: dict[str, Any], ttl_s: float) -> tuple[str, float]:
        expires = self.clock() + ttl_s
        payload = base64.urlsafe_b64encode(json.dumps({**target, "e": expires}).encode()).rstrip(b"=")
        sig = base64.urlsafe_b64encode(hmac.new(self._url_secret, payload, hashlib.sha256).digest()[:18])
        return f"{payload.decode()}.{sig.decode()}", expires

    def _verify(self, token: str) -> dict[str, Any]:
        payload, _, sig = token.partition(".")
        want = base64.urlsafe_b64encode(hmac.new(self._url_secret, payload.encode(), hashlib.sha256).digest()[:18])
        if not hmac.compare_digest(want, sig.encode()):
            raise HTTPError(404, "download link unknown or tampered with; request a new one")
        target: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        if float(target["e"]) <= self.clock():
            raise HTTPError(404, "download link expired; request a new one")
        return target

    def archive(self, call: Call) -> Any:
        run_id, ckpt_id = self._ckpt_param(call)
        self.visible_checkpoint(call, run_id, ckpt_id)
        token, expires = self._sign({"k": "archive", "r": run_id, "c": ckpt_id}, _URL_TTL_S)
        url = f"{self.base_url()}/api/v1/_download/{token}/{ckpt_id.replace('/', '_')}.tar"
        if self._wants_json(call):
            return {"url": url, "expires": iso(expires)}
        from email.utils import formatdate

        return Answer(302, b"", _JSON_MEDIA, {"Location": url, "Expires": formatdate(expires, usegmt=True)})

    @staticmethod
    def _wants_json(call: Call) -> bool:
        """JSON for clients that accept it; the 302 for the others and for 0.18-era SDKs, which only follow it."""
        if _JSON_MEDIA not in (call.headers.get("Accept") or ""):
            return False
        version = (call.headers.get("X-Stainless-Package-Version") or "").split(".")
        try:
            return not (int(version[0]) == 0 and int(version[1]) <= 18)
        except (IndexError, ValueError):
            return True

    def external_weights_urls(self, call: Call) -> Any:
        run_id, ckpt_id = self._ckpt_param(call)
        row = self.visible_checkpoint(call, run_id, ckpt_id)
        urls = {}
        expires = self.clock() + _URL_TTL_S
        for path in sorted(Path(row.directory).iterdir()):
            if path.is_file() and path.name != "checkpoint_complete" and not path.name.startswith("."):
                token, expires = self._sign({"k": "file", "r": run_id, "c": ckpt_id, "f": path.name}, _URL_TTL_S)
                urls[path.name] = f"{self.base_url()}/api/v1/_download/{token}/{path.name}"
        return {"urls": urls, "expires": iso(expires)}

    def download(self, call: Call) -> Any:
        target = self._verify(call.params["token"])
        if target["k"] == "trace":
            return Answer(200, self._trace_bytes(str(target["s"])), _JSON_MEDIA)
        row = self.store.get_checkpoint(str(target["r"]), str(target["c"]))
        if row is None:
            raise HTTPError(404, "the checkpoint of this download link no longer exists")
        directory = Path(row.directory)
        if target["k"] == "file":
            path = directory / str(target["f"])
            if not path.is_file():
                raise HTTPError(404, f"file {target['f']} of {row.tinker_path} no longer exists")
            return Answer(200, path.read_bytes(), "application/octet-stream")
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for fname in _CHECKPOINT_FILES:
                p = directory / fname
                data = p.read_bytes() if p.exists() else b""
                info = tarfile.TarInfo(fname)
                info.size = len(data)
                info.mtime = int(row.time)
                tar.addfile(info, io.BytesIO(data))
        return Answer(200, buf.getvalue(), "application/x-tar")

    # -- sessions ---------------------------------------------------------------------------------
    def list_sessions(self, call: Call) -> Any:
        self._access_scope(call)
        limit = query_int(call, "limit", 20, maximum=10_000)
        offset = query_int(call, "offset", 0, maximum=10**9)
        return {"sessions": self.store.list_sessions(call.owner, limit=limit, offset=offset)}

    def get_session(self, call: Call) -> Any:
        self._access_scope(call)
        row = self.session(call, call.params["id"], "sessions")
        out: dict[str, Any] = {"training_run_ids": self.store.runs_of_session(row.session_id),
                               "sampler_ids": self.store.samplers_of_session(row.session_id)}
        if row.user_metadata:
            out["user_metadata"] = {str(k): v if isinstance(v, str) else json.dumps(v)
                                    for k, v in row.user_metadata.items()}
        if row.display_name:
            out["display_name"] = row.display_name
        return out

    def set_session_project(self, call: Call) -> Any:
        req, _ = call.parse(AssignSessionProjectRequest)
        if not req.project_id:
            raise HTTPError(400, "sessions/project: body must be {\"project_id\": \"<non-empty string>\"}")
        row = self.session(call, call.params["id"], "sessions/project")
        self.store.set_project(row.session_id, req.project_id)
        return Answer(204)

    def search_sessions(self, call: Call) -> Any:
        req, _ = call.parse(SessionSearchRequest)
        if req.owner.type not in ("own", "accessible"):
            raise HTTPError(400, f"sessions/search: owner {req.owner.type!r} is not supported here; the local server "
                                 f"searches your own sessions ({{\"type\": \"own\"}})")
        rows = self.store.owner_sessions(call.owner)
        if req.cursor is not None:
            # compare as datetimes: the cursor carries microseconds, the store a float
            after = (req.cursor.last_created_at, req.cursor.last_session_id)
            rows = [r for r in rows if (datetime.fromtimestamp(r.created_at, timezone.utc), r.session_id) < after]
        rows = [r for r in rows if self._search_match(r, req)]
        page = rows[:req.limit]
        out = [self._summary(r) for r in page]
        nxt = None
        if len(rows) > req.limit:
            nxt = {"last_created_at": iso(page[-1].created_at), "last_session_id": page[-1].session_id}
        return {"sessions": out, "next_cursor": nxt}

    @staticmethod
    def _search_match(row: SessionRow, req: SessionSearchRequest) -> bool:
        meta = row.user_metadata or {}
        words = (req.display_name or "").lower().split()
        return ((req.session_id is None or row.session_id == req.session_id)
                and (req.project_ids is None or row.project_id in req.project_ids)
                and all(meta.get(k) == v for k, v in req.user_metadata.items())
                and all(w in (row.display_name or "").lower() for w in words)
                and (req.statuses is None or _status_matches(row, req.statuses)))

    def _summary(self, row: SessionRow) -> dict[str, Any]:
        count, size = self.store.session_checkpoint_stats(row.session_id)
        meta = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in (row.user_metadata or {}).items()}
        return {"session_id": row.session_id, "created_at": iso(row.created_at), "owner": row.owner,
                "project_id": row.project_id or "", "status": _status(row), "checkpoints_count": count,
                "display_name": row.display_name, "user_metadata": meta or None, "checkpoint_storage_bytes": size}

    # -- traces -----------------------------------------------------------------------------------
    def _trace_bytes(self, session_id: str) -> bytes:
        with self.lock:
            events = list(self.trace_events.get(session_id, ()))
        return json.dumps({"traceEvents": events, "displayTimeUnit": "ms",
                           "otherData": {"session_id": session_id, "source": "tinker-sync local server"}}).encode()

    def trace_export(self, call: Call) -> Any:
        row = self.session(call, call.params["id"], "trace_export")
        token, _ = self._sign({"k": "trace", "s": row.session_id}, _TRACE_URL_TTL_S)
        return {"status": "ready", "url": f"{self.base_url()}/api/v1/_download/{token}/{row.session_id}.json"}

    # -- admin ------------------------------------------------------------------------------------
    def audit(self, call: Call) -> Any:
        et = call.query.get("event_type", "all")
        if et not in ("all", "checkpoints"):
            raise HTTPError(400, f"query parameter 'event_type' must be 'all' or 'checkpoints', got {et!r}")
        return {"entries": []}

    def billing(self, call: Call) -> Any:
        return {"data": [], "sessions": {}}

    def checkpoint_storage(self, call: Call) -> Any:
        project = call.query.get("project_id") or None
        data = []
        for proj, count, size in self.store.storage_by_project(call.owner):
            if project is not None and proj != project:
                continue
            data.append({"project_id": proj, "org_user_urn": f"tml:user:{call.owner}", "checkpoint_count": count,
                         "size_bytes": size, "size_gigabytes": size / 1e9, "estimated_monthly_cost_usd": None})
        return {"effective_rate_usd_per_gigabyte_month": None, "data": data}
