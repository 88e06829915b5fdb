"""Request plumbing shared by the local server's endpoint modules.

:class:`Call` turns a body into the package's wire types through ``tinker_sync._serde`` (JSON) so every
endpoint refuses malformed input with the same 400 messages; :class:`ApiBase` holds the state the
endpoints share (store, live models and samplers, futures, engines) and the lookups they all need.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any, TypeVar

import attrs

from .. import _serde
from ..types import ModelInput, OptimStepRequest
from ._faults import FaultInjector
from ._jobs import FutureTable, ServerFuture
from ._live import LiveModel, LiveSampler
from ._persist import LiveStateStore
from ._store import CheckpointRow, RunRow, SessionRow, Store, owner_of_key

logger = logging.getLogger(__name__)

T = TypeVar("T")

PROTO_CONTENT_TYPE = "application/x-protobuf"
CHECKPOINT_KINDS = ("weights", "sampler_weights", "external_weights")
_NAME_RE = re.compile(r"^[A-Za-z0-9._\-=+@,]{1,200}$")
# Checkpoint TTLs as documented for the hosted service: one hour to ten years.
TTL_MIN_S = 3600
TTL_MAX_S = 10 * 365 * 24 * 3600
_TRACE_EVENTS_PER_SESSION = 10_000
_STABILITY_RECORDS_PER_SESSION = 10_000
_LONG_NUMBER = re.compile(rb"\d{19}")  # an integer that may not fit in 64 bits
# A lone UTF-16 surrogate can only arrive as a \\uD800-\\uDFFF escape (raw UTF-8 cannot encode one).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


class HTTPError(Exception):
    """An HTTP error answer: ``{"detail": detail}`` with ``status``."""

    def __init__(self, status: int, detail: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = dict(headers or {})


@attrs.frozen
class Answer:
    """A non-JSON or non-200 answer."""

    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: Mapping[str, str] = attrs.Factory(dict)


# Wire names that differ from a request class's attribute names (the converter maps them).
_WIRE_ALIASES: dict[type, frozenset[str]] = {OptimStepRequest: frozenset({"adam_params", "optimizer_params"})}


def field_names(cls: type) -> frozenset[str]:
    """The wire field names of an attrs request class."""
    return frozenset(a.name for a in attrs.fields(cls)) | _WIRE_ALIASES.get(cls, frozenset())


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
    _json: dict[str, Any] | None = attrs.field(default=None, init=False, repr=False)
    _peeked: Any = attrs.field(default=None, init=False, repr=False)  # json.loads of the body, unchecked

    def json(self) -> dict[str, Any]:
        """The body as a JSON object (``{}`` when empty); 400 with the reason otherwise."""
        if self._json is not None:
            return dict(self._json)
        if not self.body.strip():
            return {}
        try:
            value = self._peeked if self._peeked is not None else json.loads(self.body)
        except RecursionError:
            raise HTTPError(400, f"{self.op}: the JSON body is nested too deeply; flatten it") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise HTTPError(400, f"{self.op}: request body is not valid JSON: {exc}") from None
        if not isinstance(value, dict):
            raise HTTPError(400, f"{self.op}: request body must be a JSON object, got {type(value).__name__}")
        if _SURROGATE_ESCAPE.search(self.body):
            _check_encodable(value, self.op)
        if _LONG_NUMBER.search(self.body):
            _check_int_range(value, self.op, "$")
        self._json = value
        return dict(value)

    def peek(self) -> dict[str, Any]:
        """The body as JSON without any check ({} when it is not a JSON object): for the ids a refusal needs."""
        if self._peeked is None:
            try:
                self._peeked = json.loads(self.body) if self.body.strip() else {}
            except (ValueError, UnicodeDecodeError, RecursionError):
                self._peeked = {}
        return self._peeked if isinstance(self._peeked, dict) else {}

    def parse(self, cls: type[T], *, extras: Collection[str] = ()) -> tuple[T, dict[str, Any]]:
        """The body as ``cls`` (unknown fields refused), plus the ``extras`` the endpoint handles itself.

        ``extras`` are fields newer SDKs send that the package type may not carry (yet): they are taken
        out before parsing and returned, so the endpoint honours or refuses each one explicitly.
        """
        return parse_body(self.json(), cls, self.op, extras=extras)


def parse_body(body: dict[str, Any], cls: type[T], where: str, *, extras: Collection[str] = ()
               ) -> tuple[T, dict[str, Any]]:
    """Parse a JSON object into ``cls`` (see :meth:`Call.parse`); 400 naming the problem otherwise."""
    taken = {k: body.pop(k) for k in extras if k in body}
    unknown = sorted(set(body) - field_names(cls))
    if unknown:
        raise HTTPError(400, f"{where}: unknown field(s) {', '.join(map(repr, unknown))}; this server does not "
                             f"support them, remove them (fields of {cls.__name__}: "
                             f"{', '.join(sorted(field_names(cls)))})")
    try:
        return _serde.parse_request(body, cls, strict=True), taken
    except ValueError as exc:
        raise HTTPError(400, f"{where}: {str(exc).removesuffix(' @ $')}") from None
    except RecursionError:
        raise HTTPError(400, f"{where}: the body is nested too deeply; flatten it") from None


def _check_int_range(value: Any, where: str, path: str) -> None:
    """No JSON integer of the protocol exceeds 64 bits; a bigger one (which would also overflow a float
    field) is refused with its path."""
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        if not -(2**63) <= value < 2**63:
            raise HTTPError(400, f"{where}: the number at {path} ({len(str(abs(value)))} digits) is out of range; "
                                 f"integers must fit in 64 bits and floats in a double")
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_int_range(v, where, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_int_range(v, where, f"{path}[{i}]")


def _check_encodable(value: Any, where: str) -> None:
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise HTTPError(400, f"{where}: a string holds a lone UTF-16 surrogate escape (\\ud800-\\udfff without "
                             f"its pair); send valid Unicode text") from None


def query_int(call: Call, key: str, default: int, *, minimum: int = 0, maximum: int = 100_000) -> int:
    """An integer query parameter in [minimum, maximum]."""
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


def iso(t: float | None) -> str | None:
    """Seconds since the epoch -> ISO 8601 (UTC); beyond year 9999 (a stored far-future expiry) it saturates."""
    if t is None:
        return None
    try:
        return datetime.fromtimestamp(t, timezone.utc).isoformat()
    except (OverflowError, ValueError, OSError):
        return datetime.max.replace(tzinfo=timezone.utc).isoformat() if t > 0 else None


def parse_tinker_path(path: Any, kinds: Collection[str] = CHECKPOINT_KINDS) -> tuple[str, str]:
    """``tinker://RUN/KIND/NAME`` -> (run_id, "KIND/NAME"); HTTPError 400 otherwise."""
    shape = "'tinker://<run_id>/<kind>/<name>' with kind " + " or ".join(repr(k) for k in kinds)
    if not isinstance(path, str) or not path.startswith("tinker://"):
        raise HTTPError(400, f"Invalid tinker path {path!r}: expected {shape}")
    parts = path[len("tinker://"):].split("/")
    if len(parts) != 3 or parts[1] not in kinds or not parts[0] or not parts[2]:
        raise HTTPError(400, f"Invalid tinker path {path!r}: expected exactly {shape}")
    return parts[0], f"{parts[1]}/{parts[2]}"


def text_tokens(model_input: ModelInput, where: str) -> list[int]:
    """The token ids of a model input; other chunk kinds are refused (the local models are text-only)."""
    tokens: list[int] = []
    for i, chunk in enumerate(model_input.chunks):
        if chunk.type != "encoded_text":
            raise HTTPError(400, f"{where}.chunks[{i}]: chunk type {chunk.type!r} is not supported by the local "
                                 f"server's text-only models; send encoded_text chunks")
        tokens.extend(chunk.tokens)
    return tokens


def check_name(name: str, where: str) -> str:
    """A checkpoint name the store can hold (no '/', no '..', printable ASCII)."""
    if not _NAME_RE.match(name) or name in (".", ".."):
        raise HTTPError(400, f"{where}: checkpoint name {name!r} is invalid; use 1-200 characters from "
                             f"letters, digits and . _ - = + @ , (no '/')")
    return name


def check_ttl(ttl: Any, where: str) -> int | None:
    """A checkpoint TTL in [1 hour, 10 years] seconds, or None (never expires)."""
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, int):
        raise HTTPError(400, f"{where}: ttl_seconds must be an integer number of seconds or null, got {ttl!r}")
    if not TTL_MIN_S <= ttl <= TTL_MAX_S:
        shown = ttl if abs(ttl) < 10**15 else f"{str(ttl)[:12]}... ({len(str(ttl))} digits)"
        raise HTTPError(400, f"{where}: ttl_seconds must be between {TTL_MIN_S} (1 hour) and {TTL_MAX_S} "
                             f"(10 years), or null for no expiry; got {shown}")
    return ttl


def check_user_metadata(value: Any, where: str) -> dict[str, str] | None:
    """Checkpoint/session user metadata: a flat object of strings (or null)."""
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise HTTPError(400, f"{where}: user_metadata must be an object mapping strings to strings")
    if len(json.dumps(value)) > 64 * 1024:
        raise HTTPError(400, f"{where}: user_metadata is larger than 64 KiB; keep it small")
    return value


class ApiBase:
    """State shared by every endpoint module, plus the lookups they have in common."""

    def __init__(self, *, store: Store, faults: FaultInjector, clock: Callable[[], float], long_poll_s: float,
                 base_url: Callable[[], str], engine_module: Any = None, sample_workers: int | None = None,
                 client_config: Mapping[str, Any] | None = None, session_timeout_s: float = 600.0,
                 jwt_secret: bytes | None = None) -> None:
        self.store = store
        self.live = LiveStateStore(store.data_dir)
        self.faults = faults
        self.clock = clock
        self.long_poll_s = long_poll_s
        self.base_url = base_url
        self.session_timeout_s = session_timeout_s
        self.started_at = clock()
        self.jwt_secret = jwt_secret
        self.client_config_overrides = dict(client_config or {})
        self.session_seen: dict[str, float] = {}  # session id -> last request time (server clock)
        self.lock = threading.RLock()
        self.futures = FutureTable()
        self.models: dict[str, LiveModel] = {}
        self.samplers: dict[str, LiveSampler] = {}
        self.stopped = threading.Event()
        self.copies: dict[tuple[str, str], str] = {}  # (owner, idempotency key) -> tinker path of a copy_weights
        self.trace_events: dict[str, deque[dict[str, Any]]] = {}  # session id -> finished requests (trace export)
        # session id -> sequence id -> engine StabilityRecord (record_stability_info), oldest first
        self.stability: dict[str, OrderedDict[str, Any]] = {}
        self._engine_module = engine_module
        self._engines: dict[str, Any] = {}
        self._engine_lock = threading.Lock()
        workers = sample_workers or max(1, min(4, os.cpu_count() or 1))
        self.sample_pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tinker-sync-local-sampler")

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

    def check_base_model(self, name: Any, where: str) -> str:
        names = list(self.engine_module.MODEL_NAMES)
        if not isinstance(name, str) or name not in names:
            raise HTTPError(400, f"{where}: unknown base_model {name!r}; this server supports: {', '.join(names)}")
        return name

    def spec(self, name: str) -> Any:
        return self.engine_module.SPECS[name]

    def check_tokens(self, tokens: list[int], base_model: str, where: str, extra: int = 0) -> None:
        spec = self.spec(base_model)
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

    # -- sessions ---------------------------------------------------------------------------------
    def session(self, call: Call, session_id: Any, where: str) -> SessionRow:
        if not isinstance(session_id, str):
            raise HTTPError(400, f"{where}: field 'session_id' must be a string, got {type(session_id).__name__}")
        row = self.store.get_session(session_id)
        if row is None or row.owner != call.owner:
            raise HTTPError(404, f"session {session_id!r} not found (create one with POST /api/v1/create_session)")
        return row

    def session_expired(self, row: SessionRow) -> bool:
        """Whether ``row`` is expired now (marks it in the store on the first detection)."""
        if row.finished_reason == "expired":
            return True
        if row.finished_reason is not None:
            return False
        now = self.clock()
        with self.lock:
            # after a restart the downtime does not count: the client could not reach the server meanwhile
            seen = self.session_seen.get(row.session_id, max(row.last_heartbeat, self.started_at))
        idle = now - seen
        if idle < self.session_timeout_s:
            return False
        logger.info("session %s expired: no request for %.0f s", row.session_id, idle)
        self.store.finish_session(row.session_id, "expired",
                                  f"no heartbeat or request for {idle:.0f} s (timeout {self.session_timeout_s:g} s)")
        return True

    def expired_error(self, session_id: str, where: str) -> HTTPError:
        return HTTPError(410, f"{where}: session {session_id} expired: the server received no heartbeat or request "
                              f"for it for {self.session_timeout_s:g} s; create a new session (a new ServiceClient) "
                              f"and resume from a saved checkpoint")

    def use_session(self, row: SessionRow, where: str) -> None:
        """Work on session ``row``: 410 when it expired, else record the activity."""
        if self.session_expired(row):
            raise self.expired_error(row.session_id, where)
        with self.lock:
            self.session_seen[row.session_id] = self.clock()

    def use_session_id(self, session_id: str | None, where: str) -> None:
        if session_id is None:
            return
        now = self.clock()
        with self.lock:
            seen = self.session_seen.get(session_id)
            if seen is not None and now - seen < self.session_timeout_s:  # fast path: no database read
                self.session_seen[session_id] = max(now, seen)
                return
        row = self.store.get_session(session_id)
        if row is not None:
            self.use_session(row, where)

    # -- checkpoints ------------------------------------------------------------------------------
    def visible_checkpoint(self, call: Call, run_id: str, ckpt_id: str, *, need_owner: bool = False,
                           access_token: str | None = None) -> CheckpointRow:
        """The checkpoint if this caller may read it: its owner, anyone when public, or a holder of the
        owner's credential passed as ``weights_access_token`` (this server's stand-in for the hosted
        service's cross-account access tokens)."""
        row = self.store.get_checkpoint(run_id, ckpt_id)
        granted = bool(access_token) and row is not None and owner_of_key(str(access_token)) == row.owner
        if row is None or (row.owner != call.owner and (need_owner or not (row.public or granted))):
            raise HTTPError(404, f"checkpoint tinker://{run_id}/{ckpt_id} not found")
        return row

    def checkpoint_by_path(self, call: Call, path: Any, *, access_token: str | None = None,
                           kinds: Collection[str] = ("weights", "sampler_weights")) -> tuple[CheckpointRow, RunRow]:
        run_id, ckpt_id = parse_tinker_path(path, kinds)
        row = self.visible_checkpoint(call, run_id, ckpt_id, access_token=access_token)
        run = self.store.get_run(run_id)
        if run is None:
            raise HTTPError(404, f"training run {run_id!r} of checkpoint {path} not found")
        return row, run

    # -- traces -----------------------------------------------------------------------------------
    def record_trace(self, session_id: str | None, name: str, request_id: str, start: float, end: float,
                     lane: str) -> None:
        """Remember one finished request of ``session_id`` for its trace export (bounded per session)."""
        if not session_id:
            return
        event = {"name": name, "ph": "X", "ts": int(start * 1e6), "dur": max(1, int((end - start) * 1e6)),
                 "pid": 1, "tid": lane, "args": {"request_id": request_id}}
        with self.lock:
            self.trace_events.setdefault(session_id, deque(maxlen=_TRACE_EVENTS_PER_SESSION)).append(event)

    # -- stability records (record_stability_info -> stable_reinforce) ----------------------------
    def keep_stability(self, session_id: str | None, records: dict[str, Any]) -> None:
        """Remember the stability records of a session's samples (bounded, oldest dropped first)."""
        with self.lock:
            kept = self.stability.setdefault(session_id or "", OrderedDict())
            kept.update(records)
            while len(kept) > _STABILITY_RECORDS_PER_SESSION:
                kept.popitem(last=False)

    def stability_records(self, session_id: str) -> dict[str, Any]:
        with self.lock:
            return dict(self.stability.get(session_id, {}))

    # -- futures ----------------------------------------------------------------------------------
    @staticmethod
    def handle(fut: ServerFuture) -> dict[str, Any]:
        """The submission answer of ``fut``: ``{"request_id", "model_id"?, ...}``."""
        out: dict[str, Any] = {"request_id": fut.request_id}
        if fut.model_id is not None:
            out["model_id"] = fut.model_id
        out.update(fut.extra)
        return out

    def add_future(self, fut: ServerFuture) -> tuple[ServerFuture, bool]:
        """Register a new future (or find its twin); a new one takes the pending try_again / expire knobs."""
        fut, created = self.futures.get_or_add(fut)
        if created:
            names = (fut.request_type, fut.endpoint)
            fut.try_again_rounds = self.faults.take_try_again_rounds(*names)
            fut.expire_once = self.faults.take_expire(*names)
        return fut, created
