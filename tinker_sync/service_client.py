"""ServiceClient: the entry point; owns the Runtime, the session, its heartbeat and the creation counters."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from types import TracebackType
from typing import TYPE_CHECKING, Any

import attrs

from . import types
from ._config import ClientConfig, redact_url
from ._exceptions import APIStatusError, ClientClosedError, NotFoundError
from ._executor import chain, flatten
from ._retry import RetryPolicy
from ._runtime import Runtime
from .training_client import TrainingClient, _check_tinker_path

if TYPE_CHECKING:
    from .rest_client import RestClient
    from .sampling_client import SamplingClient

__all__ = ["ServiceClient"]

logger = logging.getLogger(__name__)

_HEARTBEAT_INTERVAL_S = 10.0
_HEARTBEAT_TIMEOUT_S = 10.0
_HEARTBEAT_WARN_AFTER_S = 120.0


_CONFIG_FIELDS = frozenset(a.name for a in attrs.fields(ClientConfig) if a.init and a.name not in ("api_key", "base_url"))


def _timeouts_from(timeout: Any) -> dict[str, float]:
    """Map the official SDK's ``timeout=`` (seconds, or an httpx.Timeout-like object) onto our timeouts."""
    if isinstance(timeout, (int, float)) and not isinstance(timeout, bool):
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        return {"read_timeout_s": float(timeout), "connect_timeout_s": min(5.0, float(timeout))}
    read, connect = getattr(timeout, "read", None), getattr(timeout, "connect", None)
    if read is None and connect is None:
        raise TypeError(f"timeout must be a number of seconds or an httpx.Timeout, got {type(timeout).__name__}")
    out: dict[str, float] = {}
    if read is not None:
        out["read_timeout_s"] = float(read)
    if connect is not None:
        out["connect_timeout_s"] = float(connect)
    return out


def _tags_from_env() -> list[str]:
    raw = os.environ.get("TINKER_TAGS", "")
    return sorted({t.strip() for t in raw.split(",") if t.strip()})


class ServiceClient:
    """Entry point to Tinker: creates training, sampling and REST clients that share one runtime.

    Constructing it contacts nothing. The first session-bound call fetches the client config
    (``/client/config``), creates a session and starts a heartbeat thread. Use it as a context manager
    or call ``close()``.

    Porting note: the first two POSITIONAL parameters are ``api_key, base_url``; the official SDK's are
    ``user_metadata, project_id``. Pass those two by keyword (a dict given positionally is refused with
    a TypeError that says so).

    Args:
        api_key: overrides ``TINKER_API_KEY`` (must start with ``tml-``).
        base_url: overrides ``TINKER_BASE_URL`` (e.g. a LocalTinkerServer's ``url``).
        max_workers: submission threads (and HTTP connections) of the shared runtime.
        project_id: sent with ``create_session`` (default ``TINKER_PROJECT_ID``).
        user_metadata: sent with ``create_session``.
        tags: session tags (default: comma-separated ``TINKER_TAGS``).
        config: a ready ClientConfig (then api_key/base_url/overrides must not be given).
        timeout: official-SDK compatible: seconds (float) for ``read_timeout_s`` (and
            ``connect_timeout_s`` if smaller than 5 s), or an object with ``read``/``connect``
            attributes (an ``httpx.Timeout``).
        max_retries: official-SDK compatible: retries after the first attempt
            (``RetryPolicy.max_attempts = max_retries + 1``).
        default_headers: extra headers on every request (also ``default_headers_overrides``, 0.38).
        **config_overrides: other ClientConfig fields (``read_timeout_s``, ``retry``, ``max_pollers``...).

    Raises:
        TypeError: an unknown keyword argument (named in the message).
        InvalidConfigError: no usable API key, or a bad base URL / knob.
    """

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        max_workers: int | None = None,
        project_id: str | None = None,
        user_metadata: Mapping[str, Any] | None = None,
        tags: Sequence[str] | None = None,
        config: ClientConfig | None = None,
        heartbeat_interval_s: float = _HEARTBEAT_INTERVAL_S,
        timeout: Any = None,
        max_retries: int | None = None,
        default_headers_overrides: Mapping[str, str] | None = None,
        **config_overrides: Any,
    ) -> None:
        if isinstance(api_key, Mapping):
            raise TypeError(
                "ServiceClient's first positional parameter is api_key; the official SDK's is user_metadata. "
                "Pass user_metadata=... (and project_id=...) by keyword"
            )
        unknown = sorted(set(config_overrides) - _CONFIG_FIELDS)
        if unknown:
            raise TypeError(
                f"ServiceClient() got unknown keyword argument(s): {', '.join(unknown)}. Accepted besides the "
                f"named ones: the ClientConfig fields {', '.join(sorted(_CONFIG_FIELDS))}"
            )
        if default_headers_overrides is not None:
            config_overrides["default_headers"] = {
                **dict(config_overrides.get("default_headers") or {}), **dict(default_headers_overrides)
            }
        if timeout is not None:
            config_overrides.update(_timeouts_from(timeout))
        if max_retries is not None:
            if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
                raise ValueError(f"max_retries must be an int >= 0, got {max_retries!r}")
            base = config_overrides.get("retry") or RetryPolicy()
            config_overrides["retry"] = attrs.evolve(base, max_attempts=max_retries + 1)
        if config is not None:
            if api_key is not None or base_url is not None or config_overrides or max_workers is not None:
                raise ValueError("pass either config= or api_key/base_url/overrides, not both")
        else:
            if max_workers is not None:
                config_overrides["max_workers"] = max_workers
            config = ClientConfig.from_env(api_key=api_key, base_url=base_url, **config_overrides)
        if project_id is not None and not isinstance(project_id, str):
            raise TypeError(f"project_id must be a str, got {type(project_id).__name__}")
        if user_metadata is not None and not isinstance(user_metadata, Mapping):
            raise TypeError(f"user_metadata must be a dict, got {type(user_metadata).__name__}")
        if tags is not None and (isinstance(tags, str) or not all(isinstance(t, str) for t in tags)):
            raise TypeError("tags must be a list of str")
        if not heartbeat_interval_s > 0:
            raise ValueError(f"heartbeat_interval_s must be > 0, got {heartbeat_interval_s!r}")
        self._config = config
        self._runtime = Runtime(config)
        self._project_id = project_id if project_id is not None else (os.environ.get("TINKER_PROJECT_ID") or None)
        self._user_metadata = dict(user_metadata or {})
        self._tags = sorted(set(tags)) if tags is not None else _tags_from_env()
        self._heartbeat_interval_s = heartbeat_interval_s

        self._lock = threading.Lock()  # guards the counters and the closed flag
        self._boot_lock = threading.Lock()  # serialises bootstrap (network calls happen under it)
        self._client_cfg: types.ClientConfigResponse | None = None
        self._session_id: str | None = None
        self._model_seq = 0
        self._sampling_seq = 0
        self._closed = False
        self._stop = threading.Event()
        self._heartbeat_thread: threading.Thread | None = None
        self._clock: Callable[[], float] = time.monotonic  # injectable for tests
        self._last_heartbeat_ok = self._clock()

    def __repr__(self) -> str:
        return f"ServiceClient(base_url={redact_url(self._config.base_url)!r}, session_id={self._session_id!r})"

    # ---- bootstrap ------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise ClientClosedError("this ServiceClient is closed; create a new one")

    def _client_config(self) -> types.ClientConfigResponse:
        """The server's client config (chunk limits...), fetched once."""
        cfg = self._client_cfg
        if cfg is not None:
            return cfg
        with self._boot_lock:
            if self._client_cfg is None:
                self._check_open()
                self._client_cfg = self._runtime.request(
                    "POST",
                    "/api/v1/client/config",
                    body=types.ClientConfigRequest(sdk_version=self._config.sdk_version),
                    response_type=types.ClientConfigResponse,
                )
                if self._client_cfg.pjwt_auth_enabled:
                    logger.warning("the server asks for JWT exchange, which tinker_sync does not do; using the API key")
            return self._client_cfg

    @property
    def session_id(self) -> str:
        """The session id, created on first access (client config, create_session, heartbeat start)."""
        return self._ensure_session()

    def _ensure_session(self) -> str:
        sid = self._session_id
        if sid is not None:
            return sid
        self._client_config()
        with self._boot_lock:
            self._check_open()
            if self._session_id is None:
                resp = self._runtime.request(
                    "POST",
                    "/api/v1/create_session",
                    body=types.CreateSessionRequest(
                        sdk_version=self._config.sdk_version,
                        tags=list(self._tags),
                        user_metadata=dict(self._user_metadata),
                        project_id=self._project_id,
                    ),
                    response_type=types.CreateSessionResponse,
                )
                for level, msg in (
                    (logging.INFO, resp.info_message),
                    (logging.WARNING, resp.warning_message),
                    (logging.ERROR, resp.error_message),
                ):
                    if msg:
                        logger.log(level, "server: %s", msg)
                self._session_id = resp.session_id
                logger.info("created session %s", resp.session_id)
                self._last_heartbeat_ok = self._clock()
                self._heartbeat_thread = threading.Thread(
                    target=self._heartbeat_loop, name="tinker-sync-heartbeat", daemon=True
                )
                self._heartbeat_thread.start()
            return self._session_id

    def _heartbeat_loop(self) -> None:
        session_id = self._session_id
        assert session_id is not None
        while not self._stop.wait(self._heartbeat_interval_s):
            try:
                self._runtime.request(
                    "POST",
                    "/api/v1/session_heartbeat",
                    body=types.SessionHeartbeatRequest(session_id=session_id),
                    timeout_s=_HEARTBEAT_TIMEOUT_S,
                    retry=False,
                    rate_limited=False,  # keep the session alive while other calls wait out a 429 window
                )
            except APIStatusError as exc:
                if exc.status_code == 410:
                    logger.info("session %s is finished (heartbeat answered 410); stopping heartbeats", session_id)
                    return
                self._heartbeat_failed(exc)
            except ClientClosedError:
                return
            except Exception as exc:  # noqa: BLE001 - heartbeats never raise; they log
                self._heartbeat_failed(exc)
            else:
                self._last_heartbeat_ok = self._clock()

    def _heartbeat_failed(self, exc: BaseException) -> None:
        if self._stop.is_set():
            return
        silent_s = self._clock() - self._last_heartbeat_ok
        if silent_s > _HEARTBEAT_WARN_AFTER_S:
            logger.warning(
                "no successful heartbeat for %.0f s (last error: %s); the server may end session %s",
                silent_s, exc, self._session_id,
            )
        else:
            logger.debug("heartbeat failed: %s", exc)

    def _next_model_seq_id(self) -> int:
        with self._lock:
            seq = self._model_seq
            self._model_seq += 1
            return seq

    def _next_sampling_session_seq_id(self) -> int:
        with self._lock:
            seq = self._sampling_seq
            self._sampling_seq += 1
            return seq

    def _in_background(self, fn: Callable[[], Future[Any]]) -> Future[Any]:
        """Run ``fn`` (which may block on bootstrap, then returns a Future) on a worker; flatten."""
        return flatten(self._runtime.executor.submit(fn))

    # ---- server info ------------------------------------------------------------------------
    def get_server_capabilities(self) -> types.GetServerCapabilitiesResponse:
        """Supported models (blocking; no session needed)."""
        self._check_open()
        return self._runtime.request(  # type: ignore[no-any-return]
            "GET", "/api/v1/get_server_capabilities", response_type=types.GetServerCapabilitiesResponse
        )

    # ---- training clients ---------------------------------------------------------------
    def create_lora_training_client_future(
        self,
        base_model: str,
        rank: int = 32,
        seed: int | None = None,
        train_mlp: bool = True,
        train_attn: bool = True,
        train_unembed: bool = True,
        user_metadata: dict[str, Any] | None = None,
    ) -> Future[TrainingClient]:
        """Create a LoRA model on ``base_model``; returns Future[TrainingClient].

        Bad arguments raise ValueError/TypeError now; server errors come through the Future.
        """
        self._check_open()
        if not isinstance(base_model, str) or not base_model:
            raise ValueError(f"base_model must be a non-empty model name, got {base_model!r}")
        lora = types.LoraConfig(
            rank=rank, seed=seed, train_unembed=train_unembed, train_mlp=train_mlp, train_attn=train_attn
        )
        if user_metadata is not None and not isinstance(user_metadata, Mapping):
            raise TypeError(f"user_metadata must be a dict, got {type(user_metadata).__name__}")
        model_seq_id = self._next_model_seq_id()

        def start() -> Future[TrainingClient]:
            request = types.CreateModelRequest(
                session_id=self._ensure_session(),
                model_seq_id=model_seq_id,
                base_model=base_model,
                user_metadata=dict(user_metadata) if user_metadata is not None else None,
                lora_config=lora,
            )
            fut = self._runtime.submit_polled(
                "/api/v1/create_model", request, types.CreateModelResponse, request_type="CreateModel"
            )
            return chain(fut, lambda resp: TrainingClient(self, resp.model_id, base_model=base_model))

        return self._in_background(start)

    def create_lora_training_client(
        self,
        base_model: str,
        rank: int = 32,
        seed: int | None = None,
        train_mlp: bool = True,
        train_attn: bool = True,
        train_unembed: bool = True,
        user_metadata: dict[str, Any] | None = None,
    ) -> TrainingClient:
        """Create a LoRA model on ``base_model`` and return its TrainingClient (blocking)."""
        return self.create_lora_training_client_future(
            base_model, rank, seed, train_mlp, train_attn, train_unembed, user_metadata
        ).result()

    def _from_state_future(
        self,
        path: str,
        optimizer: bool,
        base_model: str | None,
        user_metadata: dict[str, Any] | None,
        weights_access_token: str | None,
    ) -> Future[TrainingClient]:
        self._check_open()
        where = "create_training_client_from_state" + ("_with_optimizer" if optimizer else "")
        _check_tinker_path(path, where)
        parsed = types.ParsedCheckpointTinkerPath.from_tinker_path(path)
        if parsed.checkpoint_type != "training":
            raise ValueError(f"{where} needs a training checkpoint (tinker://RUN/weights/NAME), got {path!r}")
        if base_model is not None and (not isinstance(base_model, str) or not base_model):
            raise ValueError(f"{where}: base_model must be a non-empty model name or None, got {base_model!r}")
        if user_metadata is not None and not isinstance(user_metadata, Mapping):
            raise TypeError(
                f"{where}: user_metadata must be a dict, got {type(user_metadata).__name__} "
                "(the second positional parameter is base_model, as in the official SDK)"
            )
        if weights_access_token is not None and (
            not isinstance(weights_access_token, str)
            or not weights_access_token.strip()
            or any(c in weights_access_token for c in "\r\n\0")
        ):
            raise ValueError(f"{where}: weights_access_token must be a non-empty single-line str or None")
        # A token for another account's checkpoint authenticates the weights_info lookup (as the
        # official SDK does with a client on that token) and travels in the LoadWeightsRequest.
        info_headers = {"X-API-Key": weights_access_token} if weights_access_token is not None else None

        def start() -> Future[TrainingClient]:
            info = self._runtime.request(
                "POST", "/api/v1/weights_info", body=types.WeightsInfoRequest(tinker_path=path),
                response_type=types.WeightsInfoResponse, headers=info_headers,
            )
            flags = {
                k: v
                for k, v in (
                    ("train_mlp", info.train_mlp), ("train_attn", info.train_attn), ("train_unembed", info.train_unembed)
                )
                if v is not None
            }
            created = self.create_lora_training_client_future(
                base_model or info.base_model, rank=info.lora_rank or 32, user_metadata=user_metadata, **flags
            )

            def load(client: TrainingClient) -> Future[TrainingClient]:
                if optimizer:
                    loaded = client.load_state_with_optimizer(path, weights_access_token=weights_access_token)
                else:
                    loaded = client.load_state(path, weights_access_token=weights_access_token)
                return chain(loaded, lambda _resp: client)

            return flatten(chain(created, load))

        return self._in_background(start)

    def create_training_client_from_state_future(
        self,
        path: str,
        base_model: str | None = None,
        user_metadata: dict[str, Any] | None = None,
        weights_access_token: str | None = None,
    ) -> Future[TrainingClient]:
        """Future twin of ``create_training_client_from_state``."""
        return self._from_state_future(path, False, base_model, user_metadata, weights_access_token)

    def create_training_client_from_state(
        self,
        path: str,
        base_model: str | None = None,
        user_metadata: dict[str, Any] | None = None,
        weights_access_token: str | None = None,
    ) -> TrainingClient:
        """A new TrainingClient with the weights (not the optimizer state) of ``tinker://RUN/weights/NAME``.

        Args:
            base_model: overrides the checkpoint's base model.
            user_metadata: attached to the new training run.
            weights_access_token: a credential for a checkpoint owned by another account; it
                authenticates the ``weights_info`` lookup and is sent in the LoadWeightsRequest.
        """
        return self._from_state_future(path, False, base_model, user_metadata, weights_access_token).result()

    def create_training_client_from_state_with_optimizer_future(
        self,
        path: str,
        base_model: str | None = None,
        user_metadata: dict[str, Any] | None = None,
        weights_access_token: str | None = None,
    ) -> Future[TrainingClient]:
        """Future twin of ``create_training_client_from_state_with_optimizer``."""
        return self._from_state_future(path, True, base_model, user_metadata, weights_access_token)

    def create_training_client_from_state_with_optimizer(
        self,
        path: str,
        base_model: str | None = None,
        user_metadata: dict[str, Any] | None = None,
        weights_access_token: str | None = None,
    ) -> TrainingClient:
        """Like ``create_training_client_from_state`` but also restores the Adam state."""
        return self._from_state_future(path, True, base_model, user_metadata, weights_access_token).result()

    # ---- sampling clients ---------------------------------------------------------------
    def create_sampling_client_future(
        self, model_path: str | None = None, base_model: str | None = None, retry_config: Any = None
    ) -> Future[SamplingClient]:
        """Future twin of ``create_sampling_client``."""
        from .sampling_client import SamplingClient

        self._check_open()
        del retry_config  # accepted for porting; see create_sampling_client
        if model_path is None and base_model is None:
            raise ValueError("create_sampling_client needs model_path (tinker://...) or base_model")
        if model_path is not None:
            _check_tinker_path(model_path, "create_sampling_client")
        if base_model is not None and (not isinstance(base_model, str) or not base_model):
            raise ValueError(f"base_model must be a non-empty model name, got {base_model!r}")
        seq = self._next_sampling_session_seq_id()

        def start() -> Future[SamplingClient]:
            resp = self._runtime.request(
                "POST",
                "/api/v1/create_sampling_session",
                body=types.CreateSamplingSessionRequest(
                    session_id=self._ensure_session(),
                    sampling_session_seq_id=seq,
                    base_model=base_model,
                    model_path=model_path,
                ),
                response_type=types.CreateSamplingSessionResponse,
            )
            done: Future[SamplingClient] = Future()
            # With a model_path the sampler's base model is the checkpoint's (asked lazily if needed).
            known_base = base_model if model_path is None else None
            done.set_result(SamplingClient(self, resp.sampling_session_id, base_model=known_base))
            return done

        return self._in_background(start)

    def create_sampling_client(
        self, model_path: str | None = None, base_model: str | None = None, retry_config: Any = None
    ) -> SamplingClient:
        """A SamplingClient on saved sampler weights (``model_path``) or a base model (blocking).

        Given both, ``model_path`` decides what is sampled (official semantics); ``base_model`` is still
        sent. ``retry_config`` (the official SDK's RetryConfig) is accepted and ignored: retries follow
        ``ClientConfig.retry`` and the runtime's sampling back-off.
        """
        return self.create_sampling_client_future(model_path=model_path, base_model=base_model).result()

    def create_rest_client(self) -> RestClient:
        """A RestClient for runs, checkpoints and sessions (no session is created)."""
        from .rest_client import RestClient

        self._check_open()
        return RestClient(self._runtime)

    # ---- lifecycle ------------------------------------------------------------------------
    def close(self, *, cancel_pending: bool = False, timeout_s: float | None = 300.0, reason: str = "success") -> None:
        """Finish the session and shut down (idempotent); bounded by ``timeout_s``.

        By default waits at most ``timeout_s`` seconds (None: no bound) for submitted work; calls still
        pending then fail with ClientClosedError and a WARNING names how many. With ``cancel_pending``
        pending calls fail at once. Heartbeats continue while close() waits, so the server keeps the
        session (and the work being waited for) alive; then the heartbeat stops, the session is marked
        finished (``sessions/{id}/finish`` with ``reason``) and the runtime closes.

        Args:
            reason: ``"success"``, ``"errored"`` or ``"interrupted"`` (sent to the server).
        """
        if timeout_s is not None and not timeout_s >= 0:
            raise ValueError(f"timeout_s must be >= 0 or None, got {timeout_s!r}")
        with self._lock:
            if self._closed:
                return
            self._closed = True
        start = self._clock()
        if not cancel_pending:
            # Heartbeats still run here: a long but legitimate wait (a queued save) must not let the
            # server expire the session whose work we are waiting for (docs/protocol.rst §5.1).
            self._runtime.drain(timeout_s)
        self._stop.set()
        thread = self._heartbeat_thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=_HEARTBEAT_TIMEOUT_S + 5)
        session_id = self._session_id
        if session_id is not None:
            try:
                self._runtime.request(
                    "POST",
                    f"/api/v1/sessions/{session_id}/finish",
                    body={"reason": {"type": reason}, "detail": None},
                    timeout_s=10.0,
                    retry=False,
                    rate_limited=False,
                )
            except NotFoundError:
                logger.debug("server has no sessions/finish endpoint; skipped")
            except Exception as exc:  # noqa: BLE001 - closing must not raise for a bookkeeping call
                logger.info("could not finish session %s: %s", session_id, exc)
        left = None if timeout_s is None else max(0.0, timeout_s - (self._clock() - start))
        self._runtime.close(cancel_pending=cancel_pending, timeout_s=left)

    def __enter__(self) -> ServiceClient:  # noqa: PYI034 - typing.Self needs 3.11
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            interrupted = issubclass(exc_type, KeyboardInterrupt)
            self.close(cancel_pending=True, reason="interrupted" if interrupted else "errored")
