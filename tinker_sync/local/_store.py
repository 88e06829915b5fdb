"""SQLite metadata store of the local server (sessions, training runs, checkpoints, samplers).

Weights live as files under ``<data_dir>/runs``; the database only indexes them. One connection,
serialised by a lock (the server's writes are tiny and rare compared with the numpy work).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

logger = logging.getLogger(__name__)

__all__ = ["CheckpointRow", "RunRow", "SamplerRow", "SessionRow", "Store", "owner_of_key"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    session_id TEXT PRIMARY KEY, owner TEXT NOT NULL, created_at REAL NOT NULL,
    last_heartbeat REAL NOT NULL, project_id TEXT, tags TEXT, user_metadata TEXT,
    finished_reason TEXT, finished_detail TEXT);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, session_id TEXT NOT NULL, owner TEXT NOT NULL, base_model TEXT NOT NULL,
    lora_config TEXT NOT NULL, user_metadata TEXT, created_at REAL NOT NULL, last_request_time REAL NOT NULL);
CREATE TABLE IF NOT EXISTS checkpoints (
    run_id TEXT NOT NULL, checkpoint_id TEXT NOT NULL, kind TEXT NOT NULL, owner TEXT NOT NULL,
    time REAL NOT NULL, size_bytes INTEGER, public INTEGER NOT NULL DEFAULT 0, expires_at REAL,
    directory TEXT NOT NULL, PRIMARY KEY (run_id, checkpoint_id));
CREATE TABLE IF NOT EXISTS samplers (
    sampler_id TEXT PRIMARY KEY, session_id TEXT NOT NULL, owner TEXT NOT NULL, base_model TEXT NOT NULL,
    model_path TEXT, created_at REAL NOT NULL, ephemeral INTEGER NOT NULL DEFAULT 0);
"""
# Columns added after the first release: (table, column, SQL type). Added to older databases on open.
_ADDED_COLUMNS = (
    ("sessions", "display_name", "TEXT"),
    ("runs", "project_id", "TEXT"),
    ("runs", "trainable", "INTEGER NOT NULL DEFAULT 1"),
    ("checkpoints", "user_metadata", "TEXT"),
    ("samplers", "clients", "INTEGER NOT NULL DEFAULT 0"),
    ("samplers", "inflight_of", "TEXT"),
)


def owner_of_key(api_key: str) -> str:
    """The stable, non-reversible owner id of an API key (the key itself is never stored)."""
    return "owner-" + hashlib.sha256(api_key.encode("utf-8")).hexdigest()[:16]


@attrs.frozen
class SessionRow:
    session_id: str
    owner: str
    created_at: float
    last_heartbeat: float
    project_id: str | None
    finished_reason: str | None
    display_name: str | None = None
    user_metadata: dict[str, Any] | None = None
    finished_detail: str | None = None


@attrs.frozen
class RunRow:
    run_id: str
    session_id: str
    owner: str
    base_model: str
    lora_config: dict[str, Any]
    user_metadata: dict[str, Any] | None
    created_at: float
    last_request_time: float
    project_id: str | None = None
    trainable: bool = True


@attrs.frozen
class CheckpointRow:
    run_id: str
    checkpoint_id: str  # "weights/NAME" or "sampler_weights/NAME"
    kind: str  # "weights" | "sampler_weights"
    owner: str
    time: float
    size_bytes: int | None
    public: bool
    expires_at: float | None
    directory: str
    user_metadata: dict[str, str] | None = None

    @property
    def tinker_path(self) -> str:
        return f"tinker://{self.run_id}/{self.checkpoint_id}"

    @property
    def checkpoint_type(self) -> str:
        return {"weights": "training", "sampler_weights": "sampler"}.get(self.kind, "external")


@attrs.frozen
class SamplerRow:
    sampler_id: str
    session_id: str
    owner: str
    base_model: str
    model_path: str | None
    created_at: float
    ephemeral: bool  # bound to in-memory weights (unnamed save_weights_for_sampler); lost on restart
    inflight_of: str | None = None  # the training model whose shared inflight weights it samples from


class Store:
    """The metadata database plus the weights directory layout under ``data_dir``."""

    def __init__(self, data_dir: Path, *, clock: Callable[[], float]) -> None:
        self.data_dir = data_dir
        self._clock = clock
        data_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(data_dir / "tinker_local.sqlite3"), check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        with self._lock, self._db:
            self._db.executescript(_SCHEMA)
            for table, column, sql_type in _ADDED_COLUMNS:
                have = {r["name"] for r in self._db.execute(f"PRAGMA table_info({table})")}
                if column not in have:
                    self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {sql_type}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _exec(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock, self._db:
            return self._db.execute(sql, args).fetchall()

    # -- sessions --------------------------------------------------------------------------------
    def add_session(self, session_id: str, owner: str, *, project_id: str | None, tags: list[str],
                    user_metadata: Any, display_name: str | None = None) -> None:
        now = self._clock()
        self._exec(
            "INSERT INTO sessions (session_id, owner, created_at, last_heartbeat, project_id, tags, user_metadata, "
            "display_name) VALUES (?,?,?,?,?,?,?,?)",
            (session_id, owner, now, now, project_id, json.dumps(tags), json.dumps(user_metadata), display_name),
        )

    _SESSION_COLUMNS = ("session_id, owner, created_at, last_heartbeat, project_id, finished_reason, display_name, "
                        "user_metadata, finished_detail")

    @staticmethod
    def _session(row: sqlite3.Row) -> SessionRow:
        d = dict(row)
        meta = json.loads(d["user_metadata"]) if d["user_metadata"] else None
        d["user_metadata"] = meta if isinstance(meta, dict) else None
        return SessionRow(**d)

    def get_session(self, session_id: str) -> SessionRow | None:
        rows = self._exec(f"SELECT {self._SESSION_COLUMNS} FROM sessions WHERE session_id=?", (session_id,))
        return self._session(rows[0]) if rows else None

    def owner_sessions(self, owner: str) -> list[SessionRow]:
        """All sessions of ``owner``, newest first."""
        rows = self._exec(f"SELECT {self._SESSION_COLUMNS} FROM sessions WHERE owner=? "
                          f"ORDER BY created_at DESC, session_id DESC", (owner,))
        return [self._session(r) for r in rows]

    def session_checkpoint_stats(self, session_id: str) -> tuple[int, int]:
        """(number of checkpoints, total bytes) of the training runs made in a session."""
        row = self._exec("SELECT COUNT(*) AS n, COALESCE(SUM(c.size_bytes), 0) AS b FROM checkpoints c "
                         "JOIN runs r ON c.run_id = r.run_id WHERE r.session_id=?", (session_id,))[0]
        return int(row["n"]), int(row["b"])

    def storage_by_project(self, owner: str) -> list[tuple[str | None, int, int]]:
        """(project id, checkpoint count, bytes) of ``owner``'s current checkpoints."""
        rows = self._exec(
            "SELECT COALESCE(r.project_id, s.project_id) AS project, COUNT(*) AS n, "
            "COALESCE(SUM(c.size_bytes), 0) AS b FROM checkpoints c JOIN runs r ON c.run_id = r.run_id "
            "LEFT JOIN sessions s ON r.session_id = s.session_id WHERE c.owner=? GROUP BY project ORDER BY project",
            (owner,))
        return [(r["project"], int(r["n"]), int(r["b"])) for r in rows]

    def list_sessions(self, owner: str, *, limit: int, offset: int) -> list[str]:
        rows = self._exec(
            "SELECT session_id FROM sessions WHERE owner=? ORDER BY created_at DESC, session_id LIMIT ? OFFSET ?",
            (owner, limit, offset),
        )
        return [r["session_id"] for r in rows]

    def heartbeat(self, session_id: str) -> None:
        self._exec("UPDATE sessions SET last_heartbeat=? WHERE session_id=?", (self._clock(), session_id))

    def set_project(self, session_id: str, project_id: str) -> None:
        self._exec("UPDATE sessions SET project_id=? WHERE session_id=?", (project_id, session_id))

    def finish_session(self, session_id: str, reason: str, detail: str | None) -> None:
        self._exec(
            "UPDATE sessions SET finished_reason=?, finished_detail=? WHERE session_id=? AND finished_reason IS NULL",
            (reason, detail, session_id),
        )

    # -- runs ------------------------------------------------------------------------------------
    def add_run(self, run_id: str, session_id: str, owner: str, base_model: str, lora_config: dict[str, Any],
                user_metadata: Any, *, project_id: str | None = None, trainable: bool = True) -> None:
        now = self._clock()
        self._exec(
            "INSERT OR REPLACE INTO runs (run_id, session_id, owner, base_model, lora_config, user_metadata, "
            "created_at, last_request_time, project_id, trainable) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (run_id, session_id, owner, base_model, json.dumps(lora_config), json.dumps(user_metadata), now, now,
             project_id, int(trainable)),
        )

    def touch_run(self, run_id: str) -> None:
        self._exec("UPDATE runs SET last_request_time=? WHERE run_id=?", (self._clock(), run_id))

    @staticmethod
    def _run(row: sqlite3.Row) -> RunRow:
        d = dict(row)
        d["lora_config"] = json.loads(d["lora_config"])
        d["user_metadata"] = json.loads(d["user_metadata"]) if d["user_metadata"] else None
        d["trainable"] = bool(d["trainable"])
        return RunRow(**d)

    def get_run(self, run_id: str) -> RunRow | None:
        rows = self._exec("SELECT * FROM runs WHERE run_id=?", (run_id,))
        return self._run(rows[0]) if rows else None

    def list_runs(self, owner: str, *, accessible: bool, limit: int, offset: int) -> tuple[list[RunRow], int]:
        where = "owner=?"
        args: tuple[Any, ...] = (owner,)
        if accessible:
            where = "(owner=? OR run_id IN (SELECT run_id FROM checkpoints WHERE public=1))"
        total = self._exec(f"SELECT COUNT(*) AS n FROM runs WHERE {where}", args)[0]["n"]
        rows = self._exec(
            f"SELECT * FROM runs WHERE {where} ORDER BY created_at DESC, run_id LIMIT ? OFFSET ?",
            (*args, limit, offset),
        )
        return [self._run(r) for r in rows], int(total)

    def runs_of_session(self, session_id: str) -> list[str]:
        return [r["run_id"] for r in self._exec(
            "SELECT run_id FROM runs WHERE session_id=? ORDER BY created_at, run_id", (session_id,))]

    # -- checkpoints -----------------------------------------------------------------------------
    def checkpoint_dir(self, run_id: str, checkpoint_id: str) -> Path:
        safe_run = hashlib.sha256(run_id.encode()).hexdigest()[:12] + "-" + run_id.replace(":", "_")
        kind, name = checkpoint_id.split("/", 1)
        return self.data_dir / "runs" / safe_run / kind / name

    def add_checkpoint(self, run_id: str, checkpoint_id: str, owner: str, directory: Path,
                       ttl_seconds: int | None, *, user_metadata: dict[str, str] | None = None) -> CheckpointRow:
        now = self._clock()
        size = sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())
        kind = checkpoint_id.split("/", 1)[0]
        expires = now + ttl_seconds if ttl_seconds else None
        self._exec(
            "INSERT OR REPLACE INTO checkpoints (run_id, checkpoint_id, kind, owner, time, size_bytes, public, "
            "expires_at, directory, user_metadata) VALUES (?,?,?,?,?,?,0,?,?,?)",
            (run_id, checkpoint_id, kind, owner, now, size, expires, str(directory),
             json.dumps(user_metadata) if user_metadata else None),
        )
        self.touch_run(run_id)
        row = self.get_checkpoint(run_id, checkpoint_id)
        assert row is not None
        return row

    @staticmethod
    def _ckpt(row: sqlite3.Row) -> CheckpointRow:
        d = dict(row)
        d["public"] = bool(d["public"])
        d["user_metadata"] = json.loads(d["user_metadata"]) if d["user_metadata"] else None
        return CheckpointRow(**d)

    def _purge_expired(self) -> None:
        now = self._clock()
        expired = self._exec("SELECT * FROM checkpoints WHERE expires_at IS NOT NULL AND expires_at <= ?", (now,))
        for row in expired:
            logger.info("checkpoint tinker://%s/%s expired; deleting", row["run_id"], row["checkpoint_id"])
            self.delete_checkpoint(row["run_id"], row["checkpoint_id"])

    def get_checkpoint(self, run_id: str, checkpoint_id: str) -> CheckpointRow | None:
        self._purge_expired()
        rows = self._exec("SELECT * FROM checkpoints WHERE run_id=? AND checkpoint_id=?", (run_id, checkpoint_id))
        return self._ckpt(rows[0]) if rows else None

    def list_checkpoints(self, run_id: str) -> list[CheckpointRow]:
        self._purge_expired()
        rows = self._exec("SELECT * FROM checkpoints WHERE run_id=? ORDER BY time, checkpoint_id", (run_id,))
        return [self._ckpt(r) for r in rows]

    def list_user_checkpoints(self, owner: str, *, limit: int, offset: int) -> tuple[list[CheckpointRow], int]:
        self._purge_expired()
        total = self._exec("SELECT COUNT(*) AS n FROM checkpoints WHERE owner=?", (owner,))[0]["n"]
        rows = self._exec(
            "SELECT * FROM checkpoints WHERE owner=? ORDER BY time DESC, run_id, checkpoint_id LIMIT ? OFFSET ?",
            (owner, limit, offset),
        )
        return [self._ckpt(r) for r in rows], int(total)

    def set_public(self, run_id: str, checkpoint_id: str, public: bool) -> None:
        self._exec("UPDATE checkpoints SET public=? WHERE run_id=? AND checkpoint_id=?",
                   (int(public), run_id, checkpoint_id))

    def set_expiry(self, run_id: str, checkpoint_id: str, expires_at: float | None) -> None:
        self._exec("UPDATE checkpoints SET expires_at=? WHERE run_id=? AND checkpoint_id=?",
                   (expires_at, run_id, checkpoint_id))

    def delete_checkpoint(self, run_id: str, checkpoint_id: str) -> None:
        rows = self._exec("SELECT directory FROM checkpoints WHERE run_id=? AND checkpoint_id=?",
                          (run_id, checkpoint_id))
        self._exec("DELETE FROM checkpoints WHERE run_id=? AND checkpoint_id=?", (run_id, checkpoint_id))
        for r in rows:
            shutil.rmtree(r["directory"], ignore_errors=True)

    # -- samplers --------------------------------------------------------------------------------
    def add_sampler(self, sampler_id: str, session_id: str, owner: str, base_model: str,
                    model_path: str | None, *, ephemeral: bool = False, inflight_of: str | None = None) -> None:
        self._exec(
            "INSERT OR REPLACE INTO samplers (sampler_id, session_id, owner, base_model, model_path, created_at, "
            "ephemeral, inflight_of) VALUES (?,?,?,?,?,?,?,?)",
            (sampler_id, session_id, owner, base_model, model_path, self._clock(), int(ephemeral), inflight_of),
        )

    def get_sampler(self, sampler_id: str) -> SamplerRow | None:
        rows = self._exec("SELECT * FROM samplers WHERE sampler_id=?", (sampler_id,))
        if not rows:
            return None
        d = dict(rows[0])
        d.pop("clients", None)
        d["ephemeral"] = bool(d["ephemeral"])
        return SamplerRow(**d)

    def join_sampler(self, sampler_id: str) -> int:
        """The next clone number of a sampling session (1, 2, ...; the original client is 0)."""
        with self._lock, self._db:
            self._db.execute("UPDATE samplers SET clients = clients + 1 WHERE sampler_id=?", (sampler_id,))
            row = self._db.execute("SELECT clients FROM samplers WHERE sampler_id=?", (sampler_id,)).fetchone()
        return int(row["clients"]) if row else 0

    def samplers_of_session(self, session_id: str) -> list[str]:
        return [r["sampler_id"] for r in self._exec(
            "SELECT sampler_id FROM samplers WHERE session_id=? ORDER BY created_at, sampler_id", (session_id,))]
