"""Endpoint logic of the local Tinker server (everything except HTTP framing).

Each handler takes a :class:`Call` and returns a JSON-able answer or raises :class:`HTTPError`.
numpy and the engine are imported lazily, on the first request that needs a model.

Local choices: ``trace_export`` answers ``{"status": "failed", "error": ...}`` (no profiler here);
``retrieve_future`` ignores ``allow_metadata_only`` and always returns the payload; audit/billing are empty;
telemetry is accepted and dropped.

Restart: live training models (adapter, gradients, AdamW state, next seq_id, recent results) and the weights
of samplers made by unnamed ``save_weights_for_sampler`` are persisted under ``<data_dir>/live`` before each
result is published (see ``_persist``), and restored lazily on first use after a restart, so a client keeps
training the same model_id and a retried seq_id gets its first answer instead of being applied twice.

Session liveness: a session without any request for ``session_timeout_s`` (server clock) is marked
expired on its next access; work on it then answers 410, as do heartbeats to expired or finished sessions.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import re
import secrets
import shutil
import tarfile
import threading
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import attrs

from ._faults import FaultInjector
from ._jobs import FutureTable, JobError, ModelLane, ServerFuture, StepCallback, request_id_for
from ._persist import LiveStateStore
from ._store import CheckpointRow, RunRow, SessionRow, Store, owner_of_key

logger = logging.getLogger(__name__)

PROTO_CONTENT_TYPE = "application/x-protobuf"
_CHECKPOINT_KINDS = ("weights", "sampler_weights")
_NAME_RE = re.compile(r"^[A-Za-z0-9._\-=+@,]{1,200}$")
_MAX_SAMPLES_PER_REQUEST = 256
_MAX_PENDING_SAMPLES = 512
_ARCHIVE_URL_TTL_S = 900.0
_PERSISTED_RESULTS = 64  # results of the most recent seq_ids kept on disk per model (retry de-duplication)
# request types after which the adapter's tensors changed and are rewritten
_MUTATING = frozenset({"CreateModel", "ForwardBackward", "OptimStep", "LoadWeights"})
_DEFAULT_CONFIG: dict[str, Any] = {
    "pjwt_auth_enabled": False,
    "credential_default_source": "api_key",
    "sample_dispatch_bytes_semaphore_size": 10 * 1024 * 1024,
    "inflight_response_bytes_semaphore_size": 50 * 1024 * 1024,
    "parallel_fwdbwd_chunks": True,
    "proto_write_fwdbwd": False,
    "proto_compress_fwdbwd": False,
    "fwdbwd_max_chunk_len": 1024,
    "fwdbwd_max_chunk_bytes_count": 5_000_000,
    "fwdbwd_dispatch_bytes_semaphore_size": 50_000_000,
    "create_model_via_load_weights": False,
}


class HTTPError(Exception):
    """An HTTP error answer: ``{"detail": detail}`` with ``status``."""

    def __init__(self, status: int, detail: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = dict(headers or {})


@attrs.define
class Call:
    """One parsed request as the endpoint handlers see it."""

    method: str
    op: str
    params: dict[str, str]  # path parameters
    query: dict[str, str]
    headers: Any  # case-insensitive mapping (http.client.HTTPMessage)
    body: bytes
    owner: str  # owner id of the API key ("" for unauthenticated routes)
    api_key: str = attrs.field(repr=False, default="")

    def json(self) -> dict[str, Any]:
        if not self.body.strip():
            return {}
        try:
            value = json.loads(self.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise HTTPError(400, f"request body is not valid JSON: {exc}") from None
        if not isinstance(value, dict):
            raise HTTPError(400, f"request body must be a JSON object, got {type(value).__name__}")
        return value


@attrs.frozen
class Answer:
    """A non-JSON or non-200 answer."""

    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: Mapping[str, str] = attrs.Factory(dict)


# ----------------------------------------------------------------------------------- field helpers
def _typename(v: Any) -> str:
    return "null" if v is None else type(v).__name__


def _str(d: Mapping[str, Any], key: str, *, where: str, required: bool = True) -> str | None:
    v = d.get(key)
    if v is None:
        if required:
            raise HTTPError(400, f"{where}: field {key!r} is required (a string)")
        return None
    if not isinstance(v, str):
        raise HTTPError(400, f"{where}: field {key!r} must be a string, got {_typename(v)}")
    return v


def _int(d: Mapping[str, Any], key: str, *, where: str, required: bool = True, minimum: int | None = None,
         default: int | None = None) -> int | None:
    v = d.get(key)
    if v is None:
        if required:
            raise HTTPError(400, f"{where}: field {key!r} is required (an integer)")
        return default
    if isinstance(v, bool) or not isinstance(v, int):
        raise HTTPError(400, f"{where}: field {key!r} must be an integer, got {_typename(v)} {v!r}")
    if minimum is not None and v < minimum:
        raise HTTPError(400, f"{where}: field {key!r} must be >= {minimum}, got {v}")
    return v


def _float(d: Mapping[str, Any], key: str, *, where: str, default: float) -> float:
    v = d.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise HTTPError(400, f"{where}: field {key!r} must be a finite number, got {_typename(v)} {v!r}")
    return float(v)


def _bool(d: Mapping[str, Any], key: str, *, where: str, default: bool) -> bool:
    v = d.get(key)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise HTTPError(400, f"{where}: field {key!r} must be true or false, got {_typename(v)} {v!r}")
    return v


def _obj(d: Mapping[str, Any], key: str, *, where: str, required: bool = True) -> dict[str, Any] | None:
    v = d.get(key)
    if v is None:
        if required:
            raise HTTPError(400, f"{where}: field {key!r} is required (an object)")
        return None
    if not isinstance(v, dict):
        raise HTTPError(400, f"{where}: field {key!r} must be an object, got {_typename(v)}")
    return v


def _query_int(call: Call, key: str, default: int, *, minimum: int = 0, maximum: int = 100_000) -> int:
    raw = call.query.get(key)
    if raw is None or raw == "":
        return default
    try:
        v = int(raw)
    except ValueError:
        raise HTTPError(400, f"query parameter {key!r} must be an integer, got {raw!r}") from None
    if not minimum <= v <= maximum:
        raise HTTPError(400, f"query parameter {key!r} must be in [{minimum}, {maximum}], got {v}")
    return v


def _iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, timezone.utc).isoformat()


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def parse_tinker_path(path: Any) -> tuple[str, str]:
    """``tinker://RUN/KIND/NAME`` -> (run_id, "KIND/NAME"); HTTPError 400 otherwise."""
    if not isinstance(path, str) or not path.startswith("tinker://"):
        raise HTTPError(400, f"Invalid tinker path {path!r}: expected 'tinker://<run_id>/weights/<name>' "
                             f"or 'tinker://<run_id>/sampler_weights/<name>'")
    parts = path[len("tinker://"):].split("/")
    if len(parts) != 3 or parts[1] not in _CHECKPOINT_KINDS or not parts[0] or not parts[2]:
        raise HTTPError(400, f"Invalid tinker path {path!r}: expected exactly 'tinker://<run_id>/<kind>/<name>' "
                             f"with kind 'weights' or 'sampler_weights'")
    return parts[0], f"{parts[1]}/{parts[2]}"


def _check_name(name: str, where: str) -> str:
    if not _NAME_RE.match(name) or name in (".", ".."):
        raise HTTPError(400, f"{where}: checkpoint name {name!r} is invalid; use 1-200 characters from "
                             f"letters, digits and . _ - = + @ , (no '/')")
    return name


# ----------------------------------------------------------------------------------- tensors / inputs
def _tensor_to_numpy(td: Any, where: str) -> Any:
    """A JSON TensorData dict -> dense numpy array (CSR expanded)."""
    import numpy as np

    if not isinstance(td, dict):
        raise HTTPError(400, f"{where} must be a TensorData object {{data, dtype, shape?}}, got {_typename(td)}")
    data, dtype, shape = td.get("data"), td.get("dtype"), td.get("shape")
    if dtype not in ("int64", "float32"):
        raise HTTPError(400, f"{where}.dtype must be 'int64' or 'float32', got {dtype!r}")
    if not isinstance(data, list):
        raise HTTPError(400, f"{where}.data must be a list of numbers, got {_typename(data)}")
    np_dtype = np.int64 if dtype == "int64" else np.float32
    try:
        flat = np.asarray(data, dtype=np.float64 if dtype == "float32" else None)
        if flat.size and flat.dtype.kind not in "iuf":
            raise TypeError
        if dtype == "int64" and flat.size and flat.dtype.kind == "f":
            raise HTTPError(400, f"{where}.data must hold integers for dtype int64")
        flat = flat.astype(np_dtype).ravel()
    except (TypeError, ValueError, OverflowError):
        raise HTTPError(400, f"{where}.data must be a flat list of numbers") from None
    if shape is not None and (not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape)):
        raise HTTPError(400, f"{where}.shape must be a list of non-negative integers, got {shape!r}")
    crow, col = td.get("sparse_crow_indices"), td.get("sparse_col_indices")
    if crow is not None or col is not None:
        if not (isinstance(crow, list) and isinstance(col, list) and shape is not None and len(shape) == 2):
            raise HTTPError(400, f"{where}: sparse CSR tensors need sparse_crow_indices, sparse_col_indices and a 2-D shape")
        nrows, ncols = shape
        if len(crow) != nrows + 1 or len(col) != len(flat) or (crow and crow[-1] != len(flat)):
            raise HTTPError(400, f"{where}: inconsistent CSR indices for shape {shape}")
        dense = np.zeros((nrows, ncols), dtype=np_dtype)
        try:
            for r in range(nrows):
                for j in range(crow[r], crow[r + 1]):
                    dense[r, col[j]] = flat[j]
        except (IndexError, TypeError):
            raise HTTPError(400, f"{where}: CSR index out of range for shape {shape}") from None
        return dense
    if shape is None:
        return flat
    if math.prod(shape) != flat.size:
        raise HTTPError(400, f"{where}: shape {shape} needs {math.prod(shape)} values, got {flat.size}")
    return flat.reshape(shape)


def _chunks_to_tokens(model_input: Any, where: str) -> list[int]:
    if not isinstance(model_input, dict) or not isinstance(model_input.get("chunks"), list):
        raise HTTPError(400, f"{where} must be a ModelInput object {{\"chunks\": [...]}}")
    tokens: list[int] = []
    for i, chunk in enumerate(model_input["chunks"]):
        if not isinstance(chunk, dict):
            raise HTTPError(400, f"{where}.chunks[{i}] must be an object, got {_typename(chunk)}")
        ctype = chunk.get("type", "encoded_text")
        if ctype != "encoded_text":
            raise HTTPError(400, f"{where}.chunks[{i}]: chunk type {ctype!r} is not supported by the local server's "
                                 f"text-only models; send encoded_text chunks")
        toks = chunk.get("tokens")
        if not isinstance(toks, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in toks):
            raise HTTPError(400, f"{where}.chunks[{i}].tokens must be a list of integers")
        tokens.extend(toks)
    return tokens


def _typed_datum_to_engine(datum: Any, where: str) -> tuple[list[int], dict[str, Any]]:
    """A tinker_sync.types.Datum (from the protobuf body) -> (tokens, numpy loss inputs)."""
    tokens: list[int] = []
    for i, chunk in enumerate(datum.model_input.chunks):
        if getattr(chunk, "type", None) != "encoded_text":
            raise HTTPError(400, f"{where}.model_input.chunks[{i}]: chunk type {getattr(chunk, 'type', '?')!r} is not "
                                 f"supported by the local server's text-only models; send encoded_text chunks")
        tokens.extend(chunk.tokens)
    inputs = {k: td.to_numpy() for k, td in datum.loss_fn_inputs.items()}
    return tokens, inputs


# ----------------------------------------------------------------------------------- results
@attrs.define
class FwdBwdResult:
    outputs: list[dict[str, Any]]  # numpy arrays
    metrics: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        outs = []
        for out in self.outputs:
            d = {}
            for k, arr in out.items():
                is_float = arr.dtype.kind == "f"
                values = [(_finite(float(x)) or 0.0) if is_float else int(x) for x in arr.ravel().tolist()]
                d[k] = {"data": values, "dtype": "float32" if is_float else "int64", "shape": list(arr.shape)}
            outs.append(d)
        return {"loss_fn_output_type": "ArrayRecord", "loss_fn_outputs": outs,
                "metrics": {k: float(v) for k, v in self.metrics.items()}}

    def to_proto(self) -> bytes:
        from .. import _proto
        from ..types import ForwardBackwardOutput, TensorData

        outs = [{k: TensorData.from_numpy(arr) for k, arr in out.items()} for out in self.outputs]
        return _proto.encode_forward_backward_output(ForwardBackwardOutput(
            loss_fn_output_type="ArrayRecord", loss_fn_outputs=outs, metrics=dict(self.metrics)))


@attrs.define
class SampleOut:
    result: Any  # engine SampleResult

    def to_json(self) -> dict[str, Any]:
        r = self.result
        seqs = [{"stop_reason": s.stop_reason, "tokens": [int(t) for t in s.tokens],
                 "logprobs": [(_finite(x) if _finite(x) is not None else -9999.0) for x in s.logprobs]}
                for s in r.sequences]
        out: dict[str, Any] = {"type": "sample", "sequences": seqs, "prompt_cache_hit_tokens": 0,
                               "prompt_logprobs": None, "topk_prompt_logprobs": None}
        if r.prompt_logprobs is not None:
            out["prompt_logprobs"] = [None if x is None else _finite(x) for x in r.prompt_logprobs]
        if r.topk_prompt_logprobs is not None:
            out["topk_prompt_logprobs"] = [
                None if row is None else [[int(t), _finite(lp) if _finite(lp) is not None else -99999.0]
                                          for t, lp in row]
                for row in r.topk_prompt_logprobs]
        return out

    def to_proto(self) -> bytes:
        from .. import _proto
        from ..types import SampledSequence, SampleResponse

        j = self.to_json()
        seqs = [SampledSequence(stop_reason=s["stop_reason"], tokens=s["tokens"], logprobs=s["logprobs"])
                for s in j["sequences"]]
        topk = j["topk_prompt_logprobs"]
        if topk is not None:
            topk = [None if row is None else [(t, lp) for t, lp in row] for row in topk]
        return _proto.encode_sample_response(SampleResponse(
            sequences=seqs, prompt_logprobs=j["prompt_logprobs"], topk_prompt_logprobs=topk))


# ----------------------------------------------------------------------------------- live state
class LiveModel:
    """A training model held in memory: engine, adapter and its seq-ordered lane."""

    def __init__(self, model_id: str, session_id: str, owner: str, base_model: str, *, first_seq: int,
                 on_step: Callable[[LiveModel, int | None, ServerFuture | None, Any, JobError | None], None]
                 | None = None) -> None:
        self.model_id = model_id
        self.session_id = session_id
        self.owner = owner
        self.base_model = base_model
        self.engine: Any = None
        self.adapter: Any = None
        self.optim_steps = 0
        self.unloaded = False
        self.gens = {"w": 0, "g": 0}  # generations of the persisted tensor groups (see LiveStateStore)
        self.result_keys: list[str] = []  # persisted results ("create" or str(seq_id)), oldest first
        step: StepCallback | None = None
        if on_step is not None:
            def step(seq: int | None, fut: ServerFuture | None, value: Any, error: JobError | None) -> None:
                on_step(self, seq, fut, value, error)
        self.lane = ModelLane(model_id.replace(":", "-"), first_seq=first_seq, on_step=step)


@attrs.define
class LiveSampler:
    sampler_id: str
    owner: str
    base_model: str
    model_path: str | None
    adapter: Any = None  # engine Adapter snapshot, None = base model
    loaded: bool = False
    lock: threading.Lock = attrs.Factory(threading.Lock)
    session_id: str | None = None
    persisted: bool = False  # unsaved weights kept under <data_dir>/live (see LiveStateStore)


def _adapter_tensors(adapter: Any, tables: str) -> dict[str, Any]:
    """Arrays of an engine Adapter by a stable name: ``tables`` picks p(arams), g(rads), m/v (AdamW moments).

    No copies: called on the model's lane thread, the only thread that mutates its adapter.
    """
    out: dict[str, Any] = {}
    for prefix, table in (("p", adapter.params), ("g", adapter.grads), ("m", adapter.exp_avg),
                          ("v", adapter.exp_avg_sq)):
        if prefix in tables:
            for module, (a, b) in table.items():
                out[f"{prefix}|{module}|0"] = a
                out[f"{prefix}|{module}|1"] = b
    return out


def _encode_result(fut: ServerFuture, value: Any, error: JobError | None) -> dict[str, Any]:
    entry: dict[str, Any] = {"request_type": fut.request_type, "endpoint": fut.endpoint}
    if error is not None:
        entry["error"] = {"message": error.message, "category": error.category}
    elif isinstance(value, FwdBwdResult):
        entry["fwdbwd"] = {
            "outputs": [{k: {"dtype": arr.dtype.str, "shape": list(arr.shape), "data": arr.ravel().tolist()}
                         for k, arr in out.items()} for out in value.outputs],
            "metrics": {k: float(v) for k, v in value.metrics.items()}}
    else:
        entry["value"] = value
    return entry


def _decode_result(entry: Mapping[str, Any]) -> tuple[Any, JobError | None]:
    import numpy as np

    if "error" in entry:
        return None, JobError(entry["error"]["message"], entry["error"]["category"])
    if "fwdbwd" in entry:
        fb = entry["fwdbwd"]
        outputs = [{k: np.asarray(t["data"], dtype=np.dtype(t["dtype"])).reshape(t["shape"]) for k, t in out.items()}
                   for out in fb["outputs"]]
        return FwdBwdResult(outputs, dict(fb["metrics"])), None
    return entry.get("value"), None


class Api:
    """All endpoint handlers plus the live state they share."""

    def __init__(self, *, store: Store, faults: FaultInjector, clock: Callable[[], float], long_poll_s: float,
                 base_url: Callable[[], str], engine_module: Any = None, sample_workers: int | None = None,
                 client_config: Mapping[str, Any] | None = None, session_timeout_s: float = 600.0) -> None:
        self._client_config = {**_DEFAULT_CONFIG, **(client_config or {})}
        self.store = store
        self.live = LiveStateStore(store.data_dir)
        self.session_timeout_s = session_timeout_s
        self._started_at = clock()
        self._session_seen: dict[str, float] = {}  # session id -> last request time (server clock)
        self._persisted_rids: dict[str, str] | None = None  # request id -> model id of pre-restart results
        self.faults = faults
        self.clock = clock
        self.long_poll_s = long_poll_s
        self._base_url = base_url
        self._engine_module = engine_module
        self._engines: dict[str, Any] = {}
        self._engine_lock = threading.Lock()
        self.futures = FutureTable()
        self.models: dict[str, LiveModel] = {}
        self.samplers: dict[str, LiveSampler] = {}
        self._lock = threading.RLock()
        self._downloads: dict[str, tuple[str, str, float]] = {}  # token -> (run, ckpt, expires)
        workers = sample_workers or max(1, min(4, os.cpu_count() or 1))
        self._sample_pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tinker-sync-local-sampler")
        self._pending_samples = 0
        self._stopped = threading.Event()

    def close(self) -> None:
        self._stopped.set()
        with self._lock:
            models = list(self.models.values())
        for m in models:
            m.lane.close("the server is shutting down")
        for m in models:  # let a running job finish persisting, so a restarted server sees its final state
            m.lane.join(10.0)
        self._sample_pool.shutdown(wait=False, cancel_futures=True)

    # -- engine -----------------------------------------------------------------------------------
    @property
    def engine_module(self) -> Any:
        if self._engine_module is None:
            from . import _engine  # lazy: numpy is only imported when a model is needed

            self._engine_module = _engine
        return self._engine_module

    def engine(self, name: str) -> Any:
        with self._engine_lock:
            eng = self._engines.get(name)
            if eng is None:
                logger.info("loading base model %s", name)
                eng = self.engine_module.Engine(name)
                self._engines[name] = eng
            return eng

    def _check_base_model(self, name: Any, where: str) -> str:
        names = list(self.engine_module.MODEL_NAMES)
        if not isinstance(name, str) or name not in names:
            raise HTTPError(400, f"{where}: unknown base_model {name!r}; this server supports: {', '.join(names)}")
        return name

    def _spec(self, name: str) -> Any:
        return self.engine_module.SPECS[name]

    def _check_tokens(self, tokens: list[int], base_model: str, where: str, extra: int = 0) -> None:
        spec = self._spec(base_model)
        if not tokens:
            raise HTTPError(400, f"{where}: the model input is empty; give at least one token")
        for i, t in enumerate(tokens):
            if not 0 <= t < spec.vocab_size:
                raise HTTPError(400, f"{where}: token id {t} at position {i} is out of range for {base_model} "
                                     f"(vocabulary size {spec.vocab_size}: ids 0..{spec.vocab_size - 1})")
        if len(tokens) + extra > spec.max_context:
            more = f" + max_tokens {extra}" if extra else ""
            raise HTTPError(400, f"{where}: context too long: {len(tokens)} tokens{more} exceeds the maximum context "
                                 f"of {base_model} ({spec.max_context} tokens); shorten the input")

    # -- ownership helpers ------------------------------------------------------------------------
    def _session(self, call: Call, session_id: Any, where: str) -> SessionRow:
        if not isinstance(session_id, str):
            raise HTTPError(400, f"{where}: field 'session_id' must be a string, got {_typename(session_id)}")
        row = self.store.get_session(session_id)
        if row is None or row.owner != call.owner:
            raise HTTPError(404, f"session {session_id!r} not found (create one with POST /api/v1/create_session)")
        return row

    # -- session liveness -------------------------------------------------------------------------
    def _session_expired(self, row: SessionRow) -> bool:
        """Whether ``row`` is expired now (marks it in the store on the first detection)."""
        if row.finished_reason == "expired":
            return True
        if row.finished_reason is not None:
            return False
        now = self.clock()
        with self._lock:
            # after a restart the downtime does not count: the client could not reach the server meanwhile
            seen = self._session_seen.get(row.session_id, max(row.last_heartbeat, self._started_at))
        idle = now - seen
        if idle < self.session_timeout_s:
            return False
        logger.info("session %s expired: no request for %.0f s", row.session_id, idle)
        self.store.finish_session(row.session_id, "expired",
                                  f"no heartbeat or request for {idle:.0f} s (timeout {self.session_timeout_s:g} s)")
        return True

    def _expired_error(self, session_id: str, where: str) -> HTTPError:
        return HTTPError(410, f"{where}: session {session_id} expired: the server received no heartbeat or request "
                              f"for it for {self.session_timeout_s:g} s; create a new session (a new ServiceClient) "
                              f"and resume from a saved checkpoint")

    def _use_session(self, row: SessionRow, where: str) -> None:
        """Work on session ``row``: 410 when it expired, else record the activity."""
        if self._session_expired(row):
            raise self._expired_error(row.session_id, where)
        with self._lock:
            self._session_seen[row.session_id] = self.clock()

    def _use_session_id(self, session_id: str | None, where: str) -> None:
        if session_id is None:
            return
        with self._lock:
            seen = self._session_seen.get(session_id)
        now = self.clock()
        if seen is not None and now - seen < self.session_timeout_s:
            with self._lock:  # fast path: active recently, no database read
                self._session_seen[session_id] = max(now, self._session_seen.get(session_id, now))
            return
        row = self.store.get_session(session_id)
        if row is not None:
            self._use_session(row, where)

    # -- live models ------------------------------------------------------------------------------
    def _model(self, call: Call, model_id: Any, where: str) -> LiveModel:
        model = self._find_model(call, model_id, where)
        self._use_session_id(model.session_id, where)
        return model

    def _find_model(self, call: Call, model_id: Any, where: str) -> LiveModel:
        if not isinstance(model_id, str):
            raise HTTPError(400, f"{where}: field 'model_id' must be a string, got {_typename(model_id)}")
        with self._lock:
            model = self.models.get(model_id)
        if model is None:
            model = self._restore_model(model_id, call.owner)
        if model is not None and model.owner == call.owner:
            return model
        with self._lock:
            mine = sorted(m.model_id for m in self.models.values() if m.owner == call.owner)
        run = self.store.get_run(model_id)
        if run is not None and run.owner == call.owner:
            raise HTTPError(404, f"model {model_id!r} is not loaded on this server (it was unloaded, or its state was "
                                 f"lost); create a new training client, e.g. from a saved checkpoint")
        loaded = ", ".join(mine) if mine else "none"
        raise HTTPError(404, f"unknown model_id {model_id!r}; your loaded models: {loaded}")

    def _restore_model(self, model_id: str, owner: str) -> LiveModel | None:
        """Bring back a model persisted before a restart (None when there is none for this owner)."""
        with self._lock:
            model = self.models.get(model_id)
            if model is not None:
                return model
            meta = self.live.load_model_meta(model_id)
            if meta is None or meta.get("owner") != owner:
                return None
            try:
                engine = self.engine(meta["base_model"])
                tensors = self.live.load_model_tensors(model_id, meta["gens"])
                adapter = self._adapter_from_tensors(meta, tensors)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                logger.warning("cannot restore model %s from %s: %s", model_id, self.live.models_dir, exc)
                return None
            model = LiveModel(model_id, meta["session_id"], owner, meta["base_model"],
                              first_seq=int(meta["next_seq"]), on_step=self._after_step)
            model.engine, model.adapter = engine, adapter
            model.optim_steps = int(meta.get("optim_steps", 0))
            model.gens = {k: int(v) for k, v in meta["gens"].items()}
            model.result_keys = [str(k) for k in meta.get("results") or []]
            for key, entry in self.live.load_model_results(model_id, model.result_keys).items():
                rid = request_id_for(model_id, "create") if key == "create" else request_id_for(model_id, int(key))
                fut = ServerFuture(rid, entry["request_type"], entry["endpoint"], owner, model_id=model_id)
                fut.complete(*_decode_result(entry))
                self.futures.get_or_add(fut)
            self.models[model_id] = model
        logger.info("restored model %s at seq_id %s", model_id, meta["next_seq"])
        return model

    def _adapter_from_tensors(self, meta: Mapping[str, Any], tensors: Mapping[str, Any]) -> Any:
        lora = meta["lora"]
        params: dict[str, tuple[Any, Any]] = {}
        tables: dict[str, dict[str, tuple[Any, Any]]] = {"p": params, "g": {}, "m": {}, "v": {}}
        for name, arr in tensors.items():
            prefix, module, idx = name.split("|")
            pair = tables[prefix].setdefault(module, (None, None))
            tables[prefix][module] = (arr, pair[1]) if idx == "0" else (pair[0], arr)
        adapter = self.engine_module.Adapter(
            model_name=meta["base_model"], rank=int(lora["rank"]), seed=int(lora["seed"]),
            train_attn=bool(lora["train_attn"]), train_mlp=bool(lora["train_mlp"]),
            train_unembed=bool(lora["train_unembed"]), params=params)
        if tables["g"]:  # missing groups are all zeros, as the constructor makes them
            adapter.grads = tables["g"]
        if tables["m"]:
            adapter.exp_avg, adapter.exp_avg_sq = tables["m"], tables["v"]
        adapter.step = int(meta.get("adam_step", 0))
        adapter.pending_grad_calls = int(meta.get("pending_grad_calls", 0))
        return adapter

    def _after_step(self, model: LiveModel, seq: int | None, fut: ServerFuture | None, value: Any,
                    error: JobError | None) -> None:
        """Persist ``model`` after one lane step (runs on its lane thread before the result is published)."""
        if model.unloaded or model.adapter is None:
            return
        result: tuple[str, dict[str, Any]] | None = None
        dropped: list[str] = []
        if fut is not None:
            key = None
            if fut.request_id == request_id_for(model.model_id, "create"):
                key = "create"
            elif seq is not None:
                key = str(seq)
            if key is not None:
                result = (key, _encode_result(fut, value, error))
                if key not in model.result_keys:
                    model.result_keys.append(key)
                seq_keys = [k for k in model.result_keys if k != "create"]
                dropped = seq_keys[:-_PERSISTED_RESULTS]
                model.result_keys = [k for k in model.result_keys if k not in dropped]
        adapter = model.adapter
        groups: dict[str, dict[str, Any]] = {}
        if fut is not None and error is None and fut.request_type in _MUTATING:
            if fut.request_type != "ForwardBackward":  # weights (+ AdamW moments once it has stepped)
                model.gens["w"] += 1
                groups["w"] = _adapter_tensors(adapter, "pmv" if adapter.step > 0 else "p")
            if adapter.pending_grad_calls == 0:  # no gradients accumulated: they are all zero
                model.gens["g"] = 0
            elif fut.request_type == "ForwardBackward" or model.gens["g"] == 0:
                model.gens["g"] = max(model.gens.values()) + 1
                groups["g"] = _adapter_tensors(adapter, "g")
        meta = {"version": 1, "model_id": model.model_id, "session_id": model.session_id, "owner": model.owner,
                "base_model": model.base_model, "lora": self._adapter_cfg(adapter), "next_seq": model.lane.next_seq,
                "optim_steps": model.optim_steps, "adam_step": int(adapter.step),
                "pending_grad_calls": int(adapter.pending_grad_calls), "gens": dict(model.gens),
                "results": model.result_keys}
        self.live.save_model(model.model_id, meta, groups, result=result, dropped=dropped)

    def _find_persisted_future(self, call: Call, rid: str) -> ServerFuture | None:
        """A future of a request answered before a restart: restores its model (once) and returns it."""
        with self._lock:
            if self._persisted_rids is None:
                index: dict[str, str] = {}
                for meta in self.live.all_model_metas():
                    mid = meta.get("model_id")
                    if not isinstance(mid, str):
                        continue
                    for key in meta.get("results") or {}:
                        index[request_id_for(mid, "create") if key == "create" else request_id_for(mid, int(key))] = mid
                self._persisted_rids = index
            mid = self._persisted_rids.get(rid)
        if mid is None or self._restore_model(mid, call.owner) is None:
            return None
        return self.futures.get(rid)

    def _visible_checkpoint(self, call: Call, run_id: str, ckpt_id: str, *, need_owner: bool = False,
                            access_token: str | None = None) -> CheckpointRow:
        """The checkpoint if this caller may read it: its owner, anyone when public, or a holder of the
        owner's credential passed as ``weights_access_token`` (this server's stand-in for the hosted
        service's cross-account access tokens)."""
        row = self.store.get_checkpoint(run_id, ckpt_id)
        granted = bool(access_token) and row is not None and owner_of_key(str(access_token)) == row.owner
        if row is None or (row.owner != call.owner and (need_owner or not (row.public or granted))):
            raise HTTPError(404, f"checkpoint tinker://{run_id}/{ckpt_id} not found")
        return row

    def _checkpoint_by_path(self, call: Call, path: Any, *, access_token: str | None = None,
                            ) -> tuple[CheckpointRow, RunRow]:
        run_id, ckpt_id = parse_tinker_path(path)
        row = self._visible_checkpoint(call, run_id, ckpt_id, access_token=access_token)
        run = self.store.get_run(run_id)
        if run is None:
            raise HTTPError(404, f"training run {run_id!r} of checkpoint {path} not found")
        return row, run

    # -- futures ----------------------------------------------------------------------------------
    def _handle(self, fut: ServerFuture) -> dict[str, Any]:
        out: dict[str, Any] = {"request_id": fut.request_id}
        if fut.model_id is not None:
            out["model_id"] = fut.model_id
        out.update(fut.extra)
        return out

    def _add_future(self, fut: ServerFuture) -> tuple[ServerFuture, bool]:
        """Register a new future (or find its twin); a new one takes the pending try_again / expire knobs."""
        fut, created = self.futures.get_or_add(fut)
        if created:
            names = (fut.request_type, fut.endpoint)
            fut.try_again_rounds = self.faults.take_try_again_rounds(*names)
            fut.expire_once = self.faults.take_expire(*names)
        return fut, created

    def _submit_sequenced(self, call: Call, body: dict[str, Any], *, request_type: str, where: str,
                          prepare: Callable[[LiveModel], Callable[[], Any]]) -> dict[str, Any]:
        model = self._model(call, body.get("model_id"), where)
        seq_id = _int(body, "seq_id", where=where, required=False, minimum=0)
        if seq_id is not None:
            rid = request_id_for(model.model_id, seq_id)

            def duplicate() -> dict[str, Any] | None:
                existing = self.futures.get(rid)
                if existing is None:
                    return None
                if existing.request_type != request_type:
                    raise HTTPError(409, f"{where}: seq_id {seq_id} of model {model.model_id} was already used by a "
                                         f"{existing.request_type} request; use the next seq_id")
                return self._handle(existing)  # a retry: same request id, first result, applied once

            dup = duplicate()
            if dup is not None:
                return dup
            why = model.lane.accepts(seq_id)
            if why is not None:
                dup = duplicate()  # a concurrent duplicate may have registered (and even run) it meanwhile
                if dup is not None:
                    return dup
                raise HTTPError(400, f"{where}: cannot queue seq_id {seq_id} for model {model.model_id}: {why}")
        else:
            rid = request_id_for(model.model_id, "unsequenced", uuid.uuid4().hex)
        try:
            fn = prepare(model)
        except HTTPError:
            if seq_id is not None:
                model.lane.skip(seq_id)  # refused input consumes its seq so later requests are not stuck
            raise
        fut, created = self._add_future(
            ServerFuture(rid, request_type, call.op, call.owner, model_id=model.model_id))
        if not created and fut.request_type != request_type:
            raise HTTPError(409, f"{where}: seq_id {seq_id} of model {model.model_id} was already used by a "
                                 f"{fut.request_type} request; use the next seq_id")
        if created:
            self.store.touch_run(model.model_id)
            model.lane.submit(seq_id, fut, fn)
        return self._handle(fut)

    # ================================================================================= endpoints
    def client_config(self, call: Call) -> Any:
        return dict(self._client_config)

    def dynamic_config(self, call: Call) -> Any:
        return {"refresh_interval_sec": 300, "sample_cancel_enabled": False}

    def auth_token(self, call: Call) -> Any:
        # JWT exchange is disabled (pjwt_auth_enabled false); echo the key so a client that asks anyway works.
        return {"jwt": call.api_key}

    def healthz(self, call: Call) -> Any:
        return {"status": "ok"}

    def capabilities(self, call: Call) -> Any:
        mod = self.engine_module
        return {"supported_models": [
            {"model_name": n, "max_context_length": mod.SPECS[n].max_context, "trainable": True, "sampleable": True}
            for n in mod.MODEL_NAMES]}

    def create_session(self, call: Call) -> Any:
        body = call.json()
        w = "create_session"
        tags = body.get("tags") or []
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise HTTPError(400, f"{w}: field 'tags' must be a list of strings")
        project_id = _str(body, "project_id", where=w, required=False)
        meta = body.get("user_metadata")
        if meta is not None and not isinstance(meta, dict):
            raise HTTPError(400, f"{w}: field 'user_metadata' must be an object or null")
        session_id = uuid.uuid4().hex[:20]
        self.store.add_session(session_id, call.owner, project_id=project_id, tags=tags, user_metadata=meta)
        return {"session_id": session_id, "type": "create_session"}

    def heartbeat(self, call: Call) -> Any:
        body = call.json()
        row = self._session(call, body.get("session_id"), "session_heartbeat")
        if self._session_expired(row):
            raise self._expired_error(row.session_id, "session_heartbeat")
        if row.finished_reason is not None:
            raise HTTPError(410, f"session_heartbeat: session {row.session_id} is finished ({row.finished_reason}); "
                                 f"stop sending heartbeats for it")
        self._use_session(row, "session_heartbeat")
        self.store.heartbeat(row.session_id)
        return {"type": "session_heartbeat"}

    def finish_session(self, call: Call) -> Any:
        body = call.json()
        row = self._session(call, call.params["id"], "sessions/finish")
        reason = body.get("reason") or {}
        rtype = reason.get("type") if isinstance(reason, dict) else None
        if rtype not in ("success", "errored", "interrupted"):
            raise HTTPError(400, "sessions/finish: 'reason' must be {\"type\": \"success\"|\"errored\"|\"interrupted\"}")
        detail = body.get("detail")
        self.store.finish_session(row.session_id, rtype, detail if isinstance(detail, str) else None)
        return {}

    # -- models -----------------------------------------------------------------------------------
    def _lora_config(self, body: dict[str, Any], where: str) -> dict[str, Any]:
        lc = _obj(body, "lora_config", where=where, required=False) or {}
        w = f"{where}.lora_config"
        cfg = {
            "rank": _int(lc, "rank", where=w, required=False, minimum=1, default=32),
            "seed": _int(lc, "seed", where=w, required=False, minimum=0),
            "train_unembed": _bool(lc, "train_unembed", where=w, default=True),
            "train_mlp": _bool(lc, "train_mlp", where=w, default=True),
            "train_attn": _bool(lc, "train_attn", where=w, default=True),
        }
        if cfg["rank"] > 256:  # type: ignore[operator]
            raise HTTPError(400, f"{w}: rank {cfg['rank']} is too large for the local models (max 256)")
        if not (cfg["train_unembed"] or cfg["train_mlp"] or cfg["train_attn"]):
            raise HTTPError(400, f"{w}: at least one of train_unembed, train_mlp, train_attn must be true")
        return cfg

    def _new_model(self, call: Call, session_id: str, model_seq_id: int, base_model: str,
                   request_type: str, make: Callable[[LiveModel], Callable[[], Any]]) -> dict[str, Any]:
        model_id = f"{session_id}:train:{model_seq_id}"
        rid = request_id_for(model_id, "create")
        with self._lock:
            existing = self.futures.get(rid)
            if existing is None and self._restore_model(model_id, call.owner) is not None:
                existing = self.futures.get(rid)  # created before a restart: its first answer
            if existing is not None:
                return self._handle(existing)
            if self.models.get(model_id) is not None or self.store.get_run(model_id) is not None:
                raise HTTPError(409, f"model {model_id} already exists (model_seq_id {model_seq_id} was used); "
                                     f"use the next model_seq_id")
            model = LiveModel(model_id, session_id, call.owner, base_model, first_seq=0, on_step=self._after_step)
            fn = make(model)
            fut, _ = self._add_future(ServerFuture(rid, request_type, call.op, call.owner, model_id=model_id))
            self.models[model_id] = model
        model.lane.submit(0, fut, fn)
        return self._handle(fut)

    def create_model(self, call: Call) -> Any:
        body = call.json()
        w = "create_model"
        sess = self._session(call, body.get("session_id"), w)
        self._use_session(sess, w)
        seq = _int(body, "model_seq_id", where=w, minimum=0)
        base = self._check_base_model(body.get("base_model"), w)
        cfg = self._lora_config(body, w)
        meta = body.get("user_metadata")

        def make(model: LiveModel) -> Callable[[], Any]:
            def job() -> Any:
                model.engine = self.engine(base)
                model.adapter = model.engine.new_adapter(
                    rank=cfg["rank"], seed=cfg["seed"], train_attn=cfg["train_attn"], train_mlp=cfg["train_mlp"],
                    train_unembed=cfg["train_unembed"])
                self.store.add_run(model.model_id, sess.session_id, call.owner, base, self._adapter_cfg(model.adapter),
                                   meta if isinstance(meta, dict) else None)
                return {"model_id": model.model_id, "type": "create_model"}
            return job

        return self._new_model(call, sess.session_id, seq, base, "CreateModel", make)  # type: ignore[arg-type]

    @staticmethod
    def _adapter_cfg(adapter: Any) -> dict[str, Any]:
        return {"rank": int(adapter.rank), "seed": int(adapter.seed), "train_attn": bool(adapter.train_attn),
                "train_mlp": bool(adapter.train_mlp), "train_unembed": bool(adapter.train_unembed)}

    def _ready(self, model: LiveModel) -> Any:
        if model.adapter is None:
            raise JobError(f"model {model.model_id} failed to initialise; create a new one", "user")
        return model.adapter

    def get_info(self, call: Call) -> Any:
        body = call.json()
        model = self._model(call, body.get("model_id"), "get_info")
        run = self.store.get_run(model.model_id)
        rank = run.lora_config.get("rank") if run else None
        return {"type": "get_info", "model_id": model.model_id,
                "model_data": {"arch": "tinker-sync-byte-transformer", "model_name": model.base_model,
                               "tokenizer_id": model.base_model},
                "is_lora": True, "lora_rank": rank, "model_name": model.base_model}

    def unload_model(self, call: Call) -> Any:
        body = call.json()
        model = self._model(call, body.get("model_id"), "unload_model")
        rid = request_id_for(model.model_id, "unload")
        fut, created = self._add_future(
            ServerFuture(rid, "UnloadModel", call.op, call.owner, model_id=model.model_id))
        if created:
            # Unsequenced: runs after the requests already queued, then retires the lane.
            def job() -> Any:
                model.unloaded = True
                with self._lock:
                    self.models.pop(model.model_id, None)
                self.live.delete_model(model.model_id)
                threading.Thread(target=model.lane.close, args=(f"model {model.model_id} was unloaded",),
                                 daemon=True).start()
                return {"model_id": model.model_id, "type": "unload_model"}
            model.lane.submit(None, fut, job)
        return self._handle(fut)

    # -- training ---------------------------------------------------------------------------------
    def forward_backward(self, call: Call) -> Any:
        ctype = call.headers.get("Content-Type", "") or ""
        if (call.headers.get("Content-Encoding") or "").strip().lower() not in ("", "identity"):
            raise HTTPError(415, "Content-Encoding is not supported by the local server (proto_compress_fwdbwd is "
                                 "off); send the body uncompressed")
        if PROTO_CONTENT_TYPE in ctype:
            body, parse = self._parse_fwdbwd_proto(call)
        else:
            body = call.json()
            parse = lambda: self._parse_fwdbwd_json(body)
        forward_only = body.get("forward_only") is True
        return self._submit_fwdbwd(call, body, parse, "Forward" if forward_only else "ForwardBackward")

    def forward(self, call: Call) -> Any:
        body = call.json()

        def parse() -> Any:
            fin = _obj(body, "forward_input", where="forward")
            return (*self._parse_fb_input(fin, "forward.forward_input"), True)  # type: ignore[arg-type]

        return self._submit_fwdbwd(call, body, parse, "Forward")

    def _parse_fwdbwd_proto(self, call: Call) -> Any:
        from .. import _proto

        try:
            req = _proto.decode_forward_backward_request(call.body)
        except (ValueError, TypeError) as exc:
            raise HTTPError(400, f"forward_backward: could not decode the protobuf body: {exc}") from None
        body = {"model_id": req.model_id, "seq_id": req.seq_id, "forward_only": bool(req.forward_only)}

        def parse() -> Any:
            data = [_typed_datum_to_engine(d, f"forward_backward.data[{i}]") for i, d in enumerate(req.data)]
            return data, req.loss_fn, dict(req.loss_fn_config or {}), bool(req.forward_only)

        return body, parse

    def _parse_fwdbwd_json(self, body: dict[str, Any]) -> Any:
        w = "forward_backward"
        if "forward_backward_input" in body:
            fin = _obj(body, "forward_backward_input", where=w)
            forward_only = _bool(body, "forward_only", where=w, default=False)
            data, loss_fn, cfg = self._parse_fb_input(fin, f"{w}.forward_backward_input")  # type: ignore[arg-type]
        elif "data" in body:  # flat form mirroring the protobuf message
            forward_only = _bool(body, "forward_only", where=w, default=False)
            data, loss_fn, cfg = self._parse_fb_input(body, w)
        else:
            raise HTTPError(400, f"{w}: expected a protobuf body (Content-Type: {PROTO_CONTENT_TYPE}) or JSON "
                                 f"{{\"forward_backward_input\": {{\"data\", \"loss_fn\"}}, \"model_id\", \"seq_id\"}}")
        return data, loss_fn, cfg, forward_only

    def _parse_fb_input(self, fin: dict[str, Any], where: str) -> tuple[list[tuple[list[int], dict[str, Any]]], str, dict[str, float]]:
        data = fin.get("data")
        if not isinstance(data, list):
            raise HTTPError(400, f"{where}: field 'data' must be a list of Datum objects")
        loss_fn = _str(fin, "loss_fn", where=where)
        cfg_raw = fin.get("loss_fn_config") or {}
        if not isinstance(cfg_raw, dict) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in cfg_raw.values()):
            raise HTTPError(400, f"{where}: 'loss_fn_config' must map names to numbers")
        out = []
        for i, d in enumerate(data):
            wd = f"{where}.data[{i}]"
            if not isinstance(d, dict):
                raise HTTPError(400, f"{wd} must be a Datum object, got {_typename(d)}")
            tokens = _chunks_to_tokens(d.get("model_input"), f"{wd}.model_input")
            lfi = d.get("loss_fn_inputs")
            if not isinstance(lfi, dict):
                raise HTTPError(400, f"{wd}.loss_fn_inputs must be an object of TensorData")
            out.append((tokens, {k: _tensor_to_numpy(v, f"{wd}.loss_fn_inputs[{k!r}]") for k, v in lfi.items()}))
        return out, loss_fn, {k: float(v) for k, v in cfg_raw.items()}  # type: ignore[return-value]

    def _submit_fwdbwd(self, call: Call, body: dict[str, Any], parse: Callable[[], Any], rtype: str) -> Any:
        where = call.op

        def prepare(model: LiveModel) -> Callable[[], Any]:
            data, loss_fn, cfg, forward_only = parse()
            if not data:
                raise HTTPError(400, f"{where}: 'data' is empty; give at least one Datum")
            known = self.engine_module.LOSS_FUNCTIONS
            if loss_fn not in known:
                raise HTTPError(400, f"{where}: unknown loss_fn {loss_fn!r}; the local server supports: "
                                     f"{', '.join(known)}")
            required = known[loss_fn][0]
            for i, (tokens, inputs) in enumerate(data):
                self._check_tokens(tokens, model.base_model, f"{where}.data[{i}]")
                for key in required:
                    if key not in inputs:
                        raise HTTPError(400, f"{where}.data[{i}]: loss_fn {loss_fn!r} needs loss_fn_inputs "
                                             f"{list(required)}; {key!r} is missing")
                for key, arr in inputs.items():
                    if arr.ndim == 0 or arr.shape[0] != len(tokens):
                        raise HTTPError(400, f"{where}.data[{i}].loss_fn_inputs[{key!r}] has shape {list(arr.shape)} "
                                             f"but the model input has {len(tokens)} tokens; the first dimension "
                                             f"must equal the number of tokens")
            mod = self.engine_module
            edata = [mod.EngineDatum(tokens=t, loss_fn_inputs=inp) for t, inp in data]

            def job() -> Any:
                adapter = self._ready(model)
                outputs, metrics = model.engine.forward_backward(adapter, edata, loss_fn, cfg or None,
                                                                 forward_only=forward_only)
                return FwdBwdResult(outputs, metrics)
            return job

        return self._submit_sequenced(call, body, request_type=rtype, where=where, prepare=prepare)

    def optim_step(self, call: Call) -> Any:
        body = call.json()
        w = "optim_step"

        def prepare(model: LiveModel) -> Callable[[], Any]:
            params = self._adam_params(body, w)

            def job() -> Any:
                metrics = model.engine.optim_step(self._ready(model), **params)
                model.optim_steps += 1
                return {"type": "optim_step", "metrics": {k: float(v) for k, v in metrics.items()}}
            return job

        return self._submit_sequenced(call, body, request_type="OptimStep", where=w, prepare=prepare)

    def _adam_params(self, body: dict[str, Any], w: str) -> dict[str, float]:
        ap = _obj(body, "adam_params", where=w, required=False) or {}
        wa = f"{w}.adam_params"
        params = {
            "learning_rate": _float(ap, "learning_rate", where=wa, default=1e-4),
            "beta1": _float(ap, "beta1", where=wa, default=0.9),
            "beta2": _float(ap, "beta2", where=wa, default=0.95),
            "eps": _float(ap, "eps", where=wa, default=1e-12),
            "weight_decay": _float(ap, "weight_decay", where=wa, default=0.0),
            "grad_clip_norm": _float(ap, "grad_clip_norm", where=wa, default=0.0),
        }
        for name, ok, rule in (("learning_rate", params["learning_rate"] >= 0, ">= 0"),
                               ("beta1", 0 <= params["beta1"] < 1, "in [0, 1)"),
                               ("beta2", 0 <= params["beta2"] < 1, "in [0, 1)"),
                               ("eps", params["eps"] > 0, "> 0"),
                               ("weight_decay", params["weight_decay"] >= 0, ">= 0"),
                               ("grad_clip_norm", params["grad_clip_norm"] >= 0, ">= 0")):
            if not ok:
                raise HTTPError(400, f"{wa}.{name} must be {rule}, got {params[name]}")
        return params

    def _ttl(self, body: dict[str, Any], where: str) -> int | None:
        ttl = _int(body, "ttl_seconds", where=where, required=False)
        if ttl is not None and ttl <= 0:
            raise HTTPError(400, f"{where}: ttl_seconds must be a positive number of seconds (or null for no expiry)")
        return ttl

    def _save(self, model: LiveModel, kind: str, name: str, *, with_optimizer: bool, ttl: int | None,
              overwrite: bool) -> CheckpointRow:
        ckpt_id = f"{kind}/{name}"
        if not overwrite and self.store.get_checkpoint(model.model_id, ckpt_id) is not None:
            raise JobError(f"checkpoint tinker://{model.model_id}/{ckpt_id} already exists; choose another name or "
                           f"pass overwrite=True", "user")
        final = self.store.checkpoint_dir(model.model_id, ckpt_id)
        tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._ready(model).save(tmp, with_optimizer=with_optimizer)
            (tmp / "checkpoint_complete").write_bytes(b"")
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return self.store.add_checkpoint(model.model_id, ckpt_id, model.owner, final, ttl)

    def save_weights(self, call: Call) -> Any:
        body = call.json()
        w = "save_weights"

        def prepare(model: LiveModel) -> Callable[[], Any]:
            name = _str(body, "path", where=w, required=False)
            if name is not None:
                _check_name(name, w)
            ttl = self._ttl(body, w)
            overwrite = _bool(body, "overwrite", where=w, default=False)

            def job() -> Any:
                nm = name or f"step-{model.optim_steps:06d}-{uuid.uuid4().hex[:6]}"
                row = self._save(model, "weights", nm, with_optimizer=True, ttl=ttl, overwrite=overwrite)
                return {"type": "save_weights", "path": row.tinker_path}
            return job

        return self._submit_sequenced(call, body, request_type="SaveWeights", where=w, prepare=prepare)

    def save_weights_for_sampler(self, call: Call) -> Any:
        body = call.json()
        w = "save_weights_for_sampler"

        def prepare(model: LiveModel) -> Callable[[], Any]:
            name = _str(body, "path", where=w, required=False)
            if name is not None:
                _check_name(name, w)
            sseq = _int(body, "sampling_session_seq_id", where=w, required=False, minimum=0)
            if name is None and sseq is None:
                raise HTTPError(400, f"{w}: give either 'path' (a checkpoint name) or 'sampling_session_seq_id'")
            ttl = self._ttl(body, w)

            def job() -> Any:
                out: dict[str, Any] = {"type": "save_weights_for_sampler"}
                path = None
                if name is not None:
                    row = self._save(model, "sampler_weights", name, with_optimizer=False, ttl=ttl, overwrite=True)
                    path = out["path"] = row.tinker_path
                if sseq is not None:
                    sid = f"{model.session_id}:sample:{sseq}"
                    snap = self._ready(model).snapshot()
                    if path is None:  # unsaved weights: keep a copy so the sampler survives a restart
                        self.live.save_sampler(sid, {f"p|{m}|{i}": t for m, pair in snap.params.items()
                                                     for i, t in enumerate(pair)},
                                               {"base_model": model.base_model, "lora": self._adapter_cfg(snap)})
                    with self._lock:
                        self.samplers[sid] = LiveSampler(sid, model.owner, model.base_model, path, snap, loaded=True,
                                                         session_id=model.session_id)
                    self.store.add_sampler(sid, model.session_id, model.owner, model.base_model, path, ephemeral=True)
                    out["sampling_session_id"] = sid
                return out
            return job

        return self._submit_sequenced(call, body, request_type="SaveWeightsForSampler", where=w, prepare=prepare)

    def load_weights(self, call: Call) -> Any:
        body = call.json()
        w = "load_weights"

        def resolve() -> tuple[str, bool, RunRow, Path]:
            path = _str(body, "path", where=w)
            with_opt = _bool(body, "optimizer", where=w, default=False)
            token = body.get("weights_access_token")
            if token is not None and not isinstance(token, str):
                raise HTTPError(400, f"{w}: weights_access_token must be a string")
            ckpt, run = self._checkpoint_by_path(call, path, access_token=token)
            if with_opt and ckpt.kind != "weights":
                raise HTTPError(400, f"{w}: {path} is a sampler checkpoint without optimizer state; load a "
                                     f"tinker://.../weights/... checkpoint or pass optimizer=false")
            return path, with_opt, run, Path(ckpt.directory)  # type: ignore[return-value]

        def load_into(model: LiveModel, path: str, with_opt: bool, directory: Path) -> None:
            if not directory.exists():
                raise JobError(f"checkpoint {path} no longer exists", "user")
            engine = model.engine or self.engine(model.base_model)
            adapter = self.engine_module.Adapter.load(engine, directory, with_optimizer=with_opt)
            model.engine, model.adapter = engine, adapter

        if body.get("session_id") is not None:  # create-via-load: this request creates the model (seq 0)
            sess = self._session(call, body.get("session_id"), w)
            self._use_session(sess, w)
            seq = _int(body, "model_seq_id", where=w, minimum=0)
            existing = self.futures.get(request_id_for(f"{sess.session_id}:train:{seq}", "create"))
            if existing is not None:
                return self._handle(existing)  # a retry
            path, with_opt, run, directory = resolve()
            base = body.get("base_model") or run.base_model
            if base != run.base_model:
                raise HTTPError(400, f"{w}: base_model {base!r} does not match the checkpoint's base model "
                                     f"{run.base_model!r}")
            meta = body.get("user_metadata")

            def make(model: LiveModel) -> Callable[[], Any]:
                def job() -> Any:
                    load_into(model, path, with_opt, directory)
                    self.store.add_run(model.model_id, sess.session_id, call.owner, run.base_model,
                                       self._adapter_cfg(model.adapter), meta if isinstance(meta, dict) else None)
                    return {"type": "load_weights", "path": path, "model_id": model.model_id}
                return job

            return self._new_model(call, sess.session_id, seq, run.base_model, "LoadWeights", make)  # type: ignore[arg-type]

        def prepare(model: LiveModel) -> Callable[[], Any]:
            path, with_opt, run, directory = resolve()
            if model.base_model != run.base_model:
                raise HTTPError(400, f"{w}: checkpoint {path} was trained on {run.base_model!r}, but model "
                                     f"{model.model_id} uses {model.base_model!r}")

            def job() -> Any:
                load_into(model, path, with_opt, directory)
                return {"type": "load_weights", "path": path, "model_id": model.model_id}
            return job

        return self._submit_sequenced(call, body, request_type="LoadWeights", where=w, prepare=prepare)

    def weights_info(self, call: Call) -> Any:
        body = call.json()
        _, run = self._checkpoint_by_path(call, body.get("tinker_path"))
        cfg = run.lora_config
        return {"base_model": run.base_model, "is_lora": True, "lora_rank": cfg.get("rank"),
                "train_unembed": cfg.get("train_unembed", True), "train_mlp": cfg.get("train_mlp", True),
                "train_attn": cfg.get("train_attn", True)}

    # -- sampling ---------------------------------------------------------------------------------
    def create_sampling_session(self, call: Call) -> Any:
        body = call.json()
        w = "create_sampling_session"
        sess = self._session(call, body.get("session_id"), w)
        self._use_session(sess, w)
        seq = _int(body, "sampling_session_seq_id", where=w, minimum=0)
        sid = f"{sess.session_id}:sample:{seq}"
        existing = self.store.get_sampler(sid)
        if existing is not None:
            return {"type": "create_sampling_session", "sampling_session_id": sid}
        model_path = _str(body, "model_path", where=w, required=False)
        base = body.get("base_model")
        if model_path is not None:
            _, run = self._checkpoint_by_path(call, model_path)
            if base is not None and base != run.base_model:
                raise HTTPError(400, f"{w}: base_model {base!r} does not match the checkpoint's {run.base_model!r}")
            base = run.base_model
        elif base is None:
            raise HTTPError(400, f"{w}: give 'base_model' or 'model_path' (a tinker:// sampler checkpoint)")
        base = self._check_base_model(base, w)
        self.store.add_sampler(sid, sess.session_id, call.owner, base, model_path)
        return {"type": "create_sampling_session", "sampling_session_id": sid}

    def get_sampler(self, call: Call) -> Any:
        row = self.store.get_sampler(call.params["id"])
        if row is None or row.owner != call.owner:
            raise HTTPError(404, f"sampler {call.params['id']!r} not found")
        out = {"sampler_id": row.sampler_id, "base_model": row.base_model}
        if row.model_path:
            out["model_path"] = row.model_path
        return out

    def _live_sampler(self, call: Call, sid: str) -> LiveSampler:
        with self._lock:
            s = self.samplers.get(sid)
        if s is not None and s.owner == call.owner:
            self._use_session_id(s.session_id, "asample")
            return s
        row = self.store.get_sampler(sid)
        if row is None or row.owner != call.owner:
            raise HTTPError(404, f"sampling session {sid!r} not found (create it with create_sampling_session)")
        persisted = False
        if row.ephemeral and row.model_path is None:
            persisted = self.live.has_sampler(sid)
            if not persisted:
                raise HTTPError(404, f"sampling session {sid!r} held unsaved weights that were lost; save named "
                                     f"sampler weights (a path) to keep them")
        self._use_session_id(row.session_id, "asample")
        with self._lock:
            s = self.samplers.setdefault(sid, LiveSampler(sid, row.owner, row.base_model, row.model_path,
                                                          session_id=row.session_id, persisted=persisted))
        return s

    def _sampler_adapter(self, call: Call, s: LiveSampler) -> Any:
        with s.lock:
            if not s.loaded:
                if s.model_path is not None:
                    run_id, ckpt_id = parse_tinker_path(s.model_path)
                    row = self.store.get_checkpoint(run_id, ckpt_id)
                    if row is None:
                        raise JobError(f"checkpoint {s.model_path} of sampling session {s.sampler_id} no longer "
                                       f"exists", "user")
                    engine = self.engine(s.base_model)
                    s.adapter = self.engine_module.Adapter.load(engine, Path(row.directory), with_optimizer=False)
                elif s.persisted:
                    loaded = self.live.load_sampler(s.sampler_id)
                    if loaded is None:
                        raise JobError(f"the weights of sampling session {s.sampler_id} were deleted", "server")
                    tensors, meta = loaded
                    s.adapter = self._adapter_from_tensors(meta, tensors).snapshot()
                s.loaded = True
            return s.adapter

    def asample(self, call: Call) -> Any:
        body = call.json()
        w = "asample"
        sid = _str(body, "sampling_session_id", where=w, required=False)
        seq_id = _int(body, "seq_id", where=w, required=False, minimum=0)
        if sid is not None:
            sampler = self._live_sampler(call, sid)
        else:  # legacy direct addressing
            mp = _str(body, "model_path", where=w, required=False)
            base = body.get("base_model")
            if mp is not None:
                _, run = self._checkpoint_by_path(call, mp)
                base = run.base_model
            elif base is None:
                raise HTTPError(400, f"{w}: give 'sampling_session_id' (or legacy 'base_model' / 'model_path')")
            base = self._check_base_model(base, w)
            key = f"direct:{call.owner}:{mp or base}"
            with self._lock:
                sampler = self.samplers.setdefault(key, LiveSampler(key, call.owner, base, mp))
        if seq_id is not None:
            rid = request_id_for(sampler.sampler_id, seq_id)
            existing = self.futures.get(rid)
            if existing is not None:
                return self._handle(existing)
        else:
            rid = request_id_for(sampler.sampler_id, "unsequenced", uuid.uuid4().hex)
        num = _int(body, "num_samples", where=w, required=False, minimum=1, default=1)
        if num > _MAX_SAMPLES_PER_REQUEST:  # type: ignore[operator]
            raise HTTPError(400, f"{w}: num_samples {num} is too large (max {_MAX_SAMPLES_PER_REQUEST} per request)")
        prompt = _chunks_to_tokens(body.get("prompt"), f"{w}.prompt")
        sp = _obj(body, "sampling_params", where=w, required=False) or {}
        wsp = f"{w}.sampling_params"
        max_tokens = _int(sp, "max_tokens", where=wsp, required=False, minimum=0)
        seed = _int(sp, "seed", where=wsp, required=False)
        temperature = _float(sp, "temperature", where=wsp, default=1.0)
        top_k = _int(sp, "top_k", where=wsp, required=False, default=-1)
        top_p = _float(sp, "top_p", where=wsp, default=1.0)
        stop = sp.get("stop")
        if temperature < 0:
            raise HTTPError(400, f"{wsp}.temperature must be >= 0, got {temperature}")
        if not 0 < top_p <= 1:
            raise HTTPError(400, f"{wsp}.top_p must be in (0, 1], got {top_p}")
        if top_k == 0 or top_k < -1:  # type: ignore[operator]
            raise HTTPError(400, f"{wsp}.top_k must be -1 (no limit) or >= 1, got {top_k}")
        if not (stop is None or isinstance(stop, str) or (isinstance(stop, list) and (
                all(isinstance(x, str) for x in stop)
                or all(isinstance(x, int) and not isinstance(x, bool) for x in stop)))):
            raise HTTPError(400, f"{wsp}.stop must be a string, a list of strings, a list of token ids or null")
        want_plp = _bool(body, "prompt_logprobs", where=w, default=False)
        topk = _int(body, "topk_prompt_logprobs", where=w, required=False, minimum=0, default=0)
        self._check_tokens(prompt, sampler.base_model, f"{w}.prompt", extra=max_tokens or 0)
        with self._lock:
            if self._pending_samples >= _MAX_PENDING_SAMPLES:
                raise HTTPError(429, f"{w}: too many sample requests in flight ({self._pending_samples}); retry shortly",
                                {"Retry-After": "1"})
        fut, created = self._add_future(ServerFuture(rid, "Sample", call.op, call.owner))
        if created:
            fut.extra["sample_sequence_ids"] = [f"{rid}-{i}" for i in range(num)]  # type: ignore[arg-type]

            def job() -> Any:
                try:
                    adapter = self._sampler_adapter(call, sampler)
                    engine = self.engine(sampler.base_model)
                    return SampleOut(engine.sample(
                        adapter, prompt, num_samples=num, max_tokens=max_tokens, temperature=temperature, top_k=top_k,
                        top_p=top_p, stop=stop, seed=seed, prompt_logprobs=want_plp or bool(topk),
                        topk_prompt_logprobs=topk))
                finally:
                    with self._lock:
                        self._pending_samples -= 1

            with self._lock:
                self._pending_samples += 1
            try:
                self._sample_pool.submit(fut.run, job)
            except RuntimeError:
                with self._lock:
                    self._pending_samples -= 1
                fut.set_error(JobError("the server is shutting down", "server"))
        return self._handle(fut)

    # -- retrieve_future --------------------------------------------------------------------------
    def retrieve_future(self, call: Call) -> Any:
        body = call.json()
        rid = _str(body, "request_id", where="retrieve_future")
        fut = self.futures.get(rid)  # type: ignore[arg-type]
        if fut is None:
            fut = self._find_persisted_future(call, rid)  # type: ignore[arg-type]
        if fut is None or fut.owner != call.owner:
            raise HTTPError(404, f"retrieve_future: unknown request_id {rid!r}")
        if fut.model_id is not None:  # a poll is activity of the model's session (no database access)
            with self._lock:
                model = self.models.get(fut.model_id)
                if model is not None and model.session_id in self._session_seen:
                    self._session_seen[model.session_id] = max(self.clock(), self._session_seen[model.session_id])
        if fut.expire_once:
            fut.expire_once = False
            raise HTTPError(410, f"future {rid} expired (injected); submit the request again")
        if fut.try_again_rounds > 0:
            fut.try_again_rounds -= 1
            return {"type": "try_again", "request_id": rid, "queue_state": "active"}
        hold = self.long_poll_s
        hinted = call.headers.get("X-Stainless-Read-Timeout")
        if hinted:
            try:
                hold = min(hold, max(0.0, float(hinted) - 2.0))
            except ValueError:
                pass
        if not fut.wait(hold):
            return {"type": "try_again", "request_id": rid, "queue_state": "active"}
        if fut.error is not None:
            return {"error": fut.error.message, "category": fut.error.category}
        result = fut.result
        if isinstance(result, (FwdBwdResult, SampleOut)):
            if PROTO_CONTENT_TYPE in (call.headers.get("Accept") or ""):
                return Answer(200, result.to_proto(), PROTO_CONTENT_TYPE)
            return result.to_json()
        return result

    # -- REST: runs and checkpoints ---------------------------------------------------------------
    def _checkpoint_json(self, row: CheckpointRow) -> dict[str, Any]:
        return {"checkpoint_id": row.checkpoint_id, "checkpoint_type": row.checkpoint_type, "time": _iso(row.time),
                "tinker_path": row.tinker_path, "size_bytes": row.size_bytes, "public": row.public,
                "expires_at": _iso(row.expires_at)}

    def _run_json(self, run: RunRow, ckpts: list[CheckpointRow]) -> dict[str, Any]:
        weights = [c for c in ckpts if c.kind == "weights"]
        samplers = [c for c in ckpts if c.kind == "sampler_weights"]
        meta = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in run.user_metadata.items()} \
            if run.user_metadata else None
        return {"training_run_id": run.run_id, "base_model": run.base_model, "model_owner": run.owner,
                "is_lora": True, "corrupted": False, "lora_rank": run.lora_config.get("rank"),
                "last_request_time": _iso(run.last_request_time),
                "last_checkpoint": self._checkpoint_json(weights[-1]) if weights else None,
                "last_sampler_checkpoint": self._checkpoint_json(samplers[-1]) if samplers else None,
                "user_metadata": meta}

    def _access_scope(self, call: Call) -> bool:
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

    def list_training_runs(self, call: Call) -> Any:
        limit = _query_int(call, "limit", 20, maximum=10_000)
        offset = _query_int(call, "offset", 0, maximum=10**9)
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
        return {"checkpoints": [self._checkpoint_json(c) for c in ckpts], "cursor": None}

    def list_user_checkpoints(self, call: Call) -> Any:
        limit = _query_int(call, "limit", 100, maximum=10_000)
        offset = _query_int(call, "offset", 0, maximum=10**9)
        rows, total = self.store.list_user_checkpoints(call.owner, limit=limit, offset=offset)
        return {"checkpoints": [self._checkpoint_json(c) for c in rows],
                "cursor": {"offset": offset, "limit": limit, "total_count": total}}

    def _ckpt_param(self, call: Call) -> tuple[str, str]:
        kind, name = call.params["kind"], call.params["name"]
        if kind not in _CHECKPOINT_KINDS:
            raise HTTPError(400, f"invalid checkpoint id {kind}/{name!s}: the kind must be 'weights' or "
                                 f"'sampler_weights'")
        return call.params["run"], f"{kind}/{name}"

    def delete_checkpoint(self, call: Call) -> Any:
        run_id, ckpt_id = self._ckpt_param(call)
        self._visible_checkpoint(call, run_id, ckpt_id, need_owner=True)
        self.store.delete_checkpoint(run_id, ckpt_id)
        return Answer(204)

    def publish(self, call: Call) -> Any:
        run_id, ckpt_id = self._ckpt_param(call)
        row = self._visible_checkpoint(call, run_id, ckpt_id, need_owner=True)
        want = call.method == "POST"
        if row.public == want:
            raise HTTPError(409, f"checkpoint {row.tinker_path} is already {'public' if want else 'private'}")
        self.store.set_public(run_id, ckpt_id, want)
        return Answer(204)

    def set_ttl(self, call: Call) -> Any:
        run_id, ckpt_id = self._ckpt_param(call)
        body = call.json()
        self._visible_checkpoint(call, run_id, ckpt_id, need_owner=True)
        if "ttl_seconds" not in body:
            raise HTTPError(400, "ttl: body must be {\"ttl_seconds\": <positive int> or null}")
        ttl = self._ttl(body, "ttl")
        self.store.set_expiry(run_id, ckpt_id, None if ttl is None else self.clock() + ttl)
        return Answer(204)

    def archive(self, call: Call) -> Any:
        run_id, ckpt_id = self._ckpt_param(call)
        self._visible_checkpoint(call, run_id, ckpt_id)
        token = secrets.token_urlsafe(24)
        expires = self.clock() + _ARCHIVE_URL_TTL_S
        with self._lock:
            now = self.clock()
            self._downloads = {k: v for k, v in self._downloads.items() if v[2] > now}
            self._downloads[token] = (run_id, ckpt_id, expires)
        return {"url": f"{self._base_url()}/api/v1/_download/{token}", "expires": _iso(expires)}

    def download(self, call: Call) -> Any:
        with self._lock:
            entry = self._downloads.get(call.params["token"])
        if entry is None or entry[2] <= self.clock():
            raise HTTPError(404, "download link unknown or expired; request a new archive URL")
        row = self.store.get_checkpoint(entry[0], entry[1])
        if row is None:
            raise HTTPError(404, "the checkpoint of this download link no longer exists")
        buf = io.BytesIO()
        directory = Path(row.directory)
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for fname in ("adapter_config.json", "adapter_model.safetensors", "checkpoint_complete"):
                p = directory / fname
                data = p.read_bytes() if p.exists() else b""
                info = tarfile.TarInfo(fname)
                info.size = len(data)
                info.mtime = int(row.time)
                tar.addfile(info, io.BytesIO(data))
        return Answer(200, buf.getvalue(), "application/x-tar")

    # -- REST: sessions and misc ------------------------------------------------------------------
    def list_sessions(self, call: Call) -> Any:
        self._access_scope(call)
        limit = _query_int(call, "limit", 20, maximum=10_000)
        offset = _query_int(call, "offset", 0, maximum=10**9)
        return {"sessions": self.store.list_sessions(call.owner, limit=limit, offset=offset)}

    def get_session(self, call: Call) -> Any:
        self._access_scope(call)
        row = self._session(call, call.params["id"], "sessions")
        return {"training_run_ids": self.store.runs_of_session(row.session_id),
                "sampler_ids": self.store.samplers_of_session(row.session_id)}

    def set_session_project(self, call: Call) -> Any:
        body = call.json()
        project = body.get("project_id")
        if not isinstance(project, str) or not project:
            raise HTTPError(400, "sessions/project: body must be {\"project_id\": \"<non-empty string>\"}")
        row = self._session(call, call.params["id"], "sessions/project")
        self.store.set_project(row.session_id, project)
        return Answer(204)

    def trace_export(self, call: Call) -> Any:
        self._session(call, call.params["id"], "trace_export")
        return {"status": "failed", "error": "trace export is not supported by the local tinker_sync server"}

    def audit(self, call: Call) -> Any:
        et = call.query.get("event_type", "all")
        if et not in ("all", "checkpoints"):
            raise HTTPError(400, f"query parameter 'event_type' must be 'all' or 'checkpoints', got {et!r}")
        return {"entries": []}

    def billing(self, call: Call) -> Any:
        return {"data": [], "sessions": {}}

    def telemetry(self, call: Call) -> Any:
        call.json()  # must be valid JSON; the events are dropped
        return {"status": "accepted"}
