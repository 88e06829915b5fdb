"""ServiceClient: the entry point; builds the Runtime and the Session, and creates the other clients."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from types import TracebackType
from typing import TYPE_CHECKING, Any

import attrs

from . import types
from ._checks import check_tinker_path, check_ttl, check_user_metadata
from ._config import ClientConfig, redact_url
from ._custom_loss import LossHandle, make_loss_handle
from ._executor import chain, flatten
from ._retry import RetryPolicy
from ._runtime import Runtime
from ._session import CLOSE_STATUSES, CONSOLE_URL, Session
from .sampling_client import SamplingClient, SamplingClientFuture
from .training_client import TrainingClient, TrainingClientFuture

if TYPE_CHECKING:
    from .rest_client import RestClient

__all__ = ["ServiceClient"]

logger = logging.getLogger(__name__)

_HEARTBEAT_INTERVAL_S = 10.0
_DEFAULT_CLOSE_TIMEOUT_S = 300.0
_CONFIG_FIELDS = frozenset(
    a.name for a in attrs.fields(ClientConfig) if a.init and a.name not in ("api_key", "base_url")
)


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


def _config_overrides(
    overrides: dict[str, Any],
    timeout: Any,
    max_retries: int | None,
    default_headers_overrides: Mapping[str, str] | None,
) -> dict[str, Any]:
    """``overrides`` (ClientConfig fields) with the official SDK's knobs mapped onto them."""
    unknown = sorted(set(overrides) - _CONFIG_FIELDS)
    if unknown:
        raise TypeError(
            f"ServiceClient() got unknown keyword argument(s): {', '.join(unknown)}. Accepted besides the "
            f"named ones: the ClientConfig fields {', '.join(sorted(_CONFIG_FIELDS))}"
        )
    if default_headers_overrides is not None:
        overrides["default_headers"] = {
            **dict(overrides.get("default_headers") or {}), **dict(default_headers_overrides)
        }
    if timeout is not None:
        overrides.update(_timeouts_from(timeout))
    if max_retries is not None:
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be an int >= 0, got {max_retries!r}")
        base = overrides.get("retry") or RetryPolicy()
        overrides["retry"] = attrs.evolve(base, max_attempts=max_retries + 1)
    return overrides


def _check_session_args(user_metadata: Any, project_id: Any, display_name: Any, tags: Any) -> None:
    if isinstance(user_metadata, str):
        raise TypeError(
            "ServiceClient's first positional parameter is user_metadata (a dict), as in the official SDK; "
            "pass the API key by keyword: ServiceClient(api_key=...)"
        )
    check_user_metadata(user_metadata, "ServiceClient")
    if project_id is not None and not isinstance(project_id, str):
        raise TypeError(f"project_id must be a str, got {type(project_id).__name__}")
    if display_name is not None and not isinstance(display_name, str):
        raise TypeError(f"display_name must be a str, got {type(display_name).__name__}")
    if tags is not None and (isinstance(tags, str) or not all(isinstance(t, str) for t in tags)):
        raise TypeError("tags must be a list of str")


class ServiceClient:
    """Entry point to Tinker: creates training, sampling and REST clients that share one session.

    Constructing it contacts nothing. The first session-bound call fetches the client config
    (``/client/config``), creates a session and starts a heartbeat thread. Use it as a context manager
    or call ``close()``.

    Args:
        user_metadata: sent with ``create_session`` (first positional parameter, as officially).
        project_id: sent with ``create_session`` (default ``TINKER_PROJECT_ID``).
        display_name: the session's display name (sent with ``create_session``).
        base_url: overrides ``TINKER_BASE_URL`` (e.g. a LocalTinkerServer's ``url``).
        api_key: overrides ``TINKER_API_KEY`` (must start with ``tml-``).
        default_headers_overrides: extra headers on every request.
        max_workers: submission threads (and HTTP connections) of the shared runtime.
        tags: session tags (default: comma-separated ``TINKER_TAGS``).
        config: a ready ClientConfig (then api_key/base_url/overrides must not be given).
        timeout: official-SDK compatible: seconds (float) for ``read_timeout_s`` (and
            ``connect_timeout_s`` if smaller than 5 s), or an object with ``read``/``connect``
            attributes (an ``httpx.Timeout``).
        max_retries: official-SDK compatible: retries after the first attempt
            (``RetryPolicy.max_attempts = max_retries + 1``).
        **kwargs: other ClientConfig fields (``read_timeout_s``, ``retry``, ``max_pollers``...).

    Raises:
        TypeError: an unknown keyword argument (named in the message), or an API key given positionally.
        InvalidConfigError: no usable API key, or a bad base URL / knob.
    """

    def __init__(
        self,
        user_metadata: dict[str, str] | None = None,
        project_id: str | None = None,
        *,
        display_name: str | None = None,
        base_url: str | None = None,
        api_key: str | None = None,
        default_headers_overrides: Mapping[str, str] | None = None,
        max_workers: int | None = None,
        tags: Sequence[str] | None = None,
        config: ClientConfig | None = None,
        heartbeat_interval_s: float = _HEARTBEAT_INTERVAL_S,
        timeout: Any = None,
        max_retries: int | None = None,
        **kwargs: Any,
    ) -> None:
        _check_session_args(user_metadata, project_id, display_name, tags)
        overrides = _config_overrides(kwargs, timeout, max_retries, default_headers_overrides)
        if config is not None:
            if api_key is not None or base_url is not None or overrides or max_workers is not None:
                raise ValueError("pass either config= or api_key/base_url/overrides, not both")
        else:
            if max_workers is not None:
                overrides["max_workers"] = max_workers
            config = ClientConfig.from_env(api_key=api_key, base_url=base_url, **overrides)
        if not heartbeat_interval_s > 0:
            raise ValueError(f"heartbeat_interval_s must be > 0, got {heartbeat_interval_s!r}")
        self._config = config
        self._runtime = Runtime(config)
        self._project_id = project_id if project_id is not None else (os.environ.get("TINKER_PROJECT_ID") or None)
        self._session = Session(
            self._runtime,
            project_id=self._project_id,
            user_metadata=user_metadata,
            tags=list(tags) if tags is not None else _tags_from_env(),
            display_name=display_name,
            heartbeat_interval_s=heartbeat_interval_s,
        )

    def __repr__(self) -> str:
        return (f"ServiceClient(base_url={redact_url(self._config.base_url)!r}, "
                f"session_id={self._session.id_if_created!r})")

    @property
    def config(self) -> ClientConfig:
        """The connection settings (read-only)."""
        return self._config

    @property
    def session_id(self) -> str:
        """The session id, created on first access (client config, create_session, heartbeat start)."""
        return self._session.ensure_id()

    # ---- server info ------------------------------------------------------------------------
    def get_server_capabilities(self) -> types.GetServerCapabilitiesResponse:
        """Supported models (blocking; no session needed)."""
        self._session.check_open()
        return self._runtime.request(  # type: ignore[no-any-return]
            "GET", "/api/v1/get_server_capabilities", response_type=types.GetServerCapabilitiesResponse
        )

    def get_console_url(self) -> str:
        """The Tinker Console page of this session (of all sessions before one exists); never contacts the server."""
        sid = self._session.id_if_created
        return f"{CONSOLE_URL}/sessions" if sid is None else f"{CONSOLE_URL}/sessions/{sid}"

    def get_telemetry(self) -> object | None:
        """Always None: tinker_sync collects no client telemetry (the official SDK's value with telemetry off)."""
        return None

    # ---- training clients ---------------------------------------------------------------
    def create_lora_training_client_future(
        self,
        base_model: str,
        rank: int = 32,
        seed: int | None = None,
        train_mlp: bool = True,
        train_attn: bool = True,
        train_unembed: bool = True,
        user_metadata: dict[str, str] | None = None,
        optimizer: types.OptimizerConfig | None = None,
    ) -> TrainingClientFuture:
        """Future twin of ``create_lora_training_client`` (the same object)."""
        self._session.check_open()
        if not isinstance(base_model, str) or not base_model:
            raise ValueError(f"base_model must be a non-empty model name, got {base_model!r}")
        lora = types.LoraConfig(
            rank=rank, seed=seed, train_unembed=train_unembed, train_mlp=train_mlp, train_attn=train_attn
        )
        metadata = check_user_metadata(user_metadata, "create_lora_training_client")
        if optimizer is not None and not isinstance(
            optimizer, (types.AdamOptimizerConfig, types.DimuonOptimizerConfig)
        ):
            raise TypeError(
                "create_lora_training_client: optimizer must be types.AdamOptimizerConfig() or "
                f"types.DimuonOptimizerConfig(), got {type(optimizer).__name__}"
            )
        model_seq_id = self._session.next_model_seq_id()
        session = self._session

        def start() -> Future[TrainingClient]:
            request = types.CreateModelRequest(
                session_id=session.ensure_id(), model_seq_id=model_seq_id, base_model=base_model,
                user_metadata=metadata, lora_config=lora,
                optimizer_config=optimizer or types.AdamOptimizerConfig(),
            )
            fut = self._runtime.submit_polled(
                "/api/v1/create_model", request, types.CreateModelResponse, request_type="CreateModel"
            )
            return chain(fut, lambda resp: TrainingClient(session, model_seq_id, resp.model_id, base_model=base_model))

        return TrainingClientFuture.following(session.in_background(start))

    def create_lora_training_client(
        self,
        base_model: str,
        rank: int = 32,
        seed: int | None = None,
        train_mlp: bool = True,
        train_attn: bool = True,
        train_unembed: bool = True,
        user_metadata: dict[str, str] | None = None,
        optimizer: types.OptimizerConfig | None = None,
    ) -> TrainingClientFuture:
        """Create a LoRA model on ``base_model``; returns its TrainingClient, which is also a Future of it.

        Use the result as the client (0.25 style: each call waits for the model first) or call
        ``.result()`` (0.38 style). ``optimizer`` (``types.AdamOptimizerConfig()``, the default, or
        ``types.DimuonOptimizerConfig()``) is fixed for the model's lifetime. Bad arguments raise
        ValueError/TypeError now; server errors come through ``.result()`` (or the first call).
        """
        return self.create_lora_training_client_future(
            base_model, rank, seed, train_mlp, train_attn, train_unembed, user_metadata, optimizer
        )

    def _from_state(
        self,
        path: str,
        with_optimizer: bool,
        base_model: str | None,
        user_metadata: dict[str, str] | None,
        weights_access_token: str | None,
        optimizer: types.OptimizerConfig | None,
    ) -> TrainingClientFuture:
        self._session.check_open()
        where = "create_training_client_from_state" + ("_with_optimizer" if with_optimizer else "")
        check_tinker_path(path, where)
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
                    ("train_mlp", info.train_mlp),
                    ("train_attn", info.train_attn),
                    ("train_unembed", info.train_unembed),
                )
                if v is not None
            }
            # Restoring the optimizer state needs the checkpoint's optimizer family.
            chosen = info.optimizer_config if with_optimizer else optimizer
            created = self.create_lora_training_client_future(
                base_model or info.base_model, rank=info.lora_rank or 32, user_metadata=user_metadata,
                optimizer=chosen, **flags,
            )

            def load(client: TrainingClient) -> Future[TrainingClient]:
                if with_optimizer:
                    loaded = client.load_state_with_optimizer(path, weights_access_token=weights_access_token)
                else:
                    loaded = client.load_state(path, weights_access_token=weights_access_token)
                return chain(loaded, lambda _resp: client)

            return flatten(chain(created, load))

        return TrainingClientFuture.following(self._session.in_background(start))

    def create_training_client_from_state_future(
        self,
        path: str,
        base_model: str | None = None,
        user_metadata: dict[str, str] | None = None,
        weights_access_token: str | None = None,
        optimizer: types.OptimizerConfig | None = None,
    ) -> TrainingClientFuture:
        """Future twin of ``create_training_client_from_state`` (the same object)."""
        return self._from_state(path, False, base_model, user_metadata, weights_access_token, optimizer)

    def create_training_client_from_state(
        self,
        path: str,
        base_model: str | None = None,
        user_metadata: dict[str, str] | None = None,
        weights_access_token: str | None = None,
        optimizer: types.OptimizerConfig | None = None,
    ) -> TrainingClientFuture:
        """A new TrainingClient (also a Future of it) with the weights of ``tinker://RUN/weights/NAME``.

        The optimizer state is not restored (see ``..._with_optimizer``).

        Args:
            base_model: overrides the checkpoint's base model.
            user_metadata: attached to the new training run.
            weights_access_token: a credential for a checkpoint owned by another account; it
                authenticates the ``weights_info`` lookup and is sent in the LoadWeightsRequest.
            optimizer: the new model's optimizer (default Adam).
        """
        return self._from_state(path, False, base_model, user_metadata, weights_access_token, optimizer)

    def create_training_client_from_state_with_optimizer_future(
        self,
        path: str,
        base_model: str | None = None,
        user_metadata: dict[str, str] | None = None,
        weights_access_token: str | None = None,
    ) -> TrainingClientFuture:
        """Future twin of ``create_training_client_from_state_with_optimizer`` (the same object)."""
        return self._from_state(path, True, base_model, user_metadata, weights_access_token, None)

    def create_training_client_from_state_with_optimizer(
        self,
        path: str,
        base_model: str | None = None,
        user_metadata: dict[str, str] | None = None,
        weights_access_token: str | None = None,
    ) -> TrainingClientFuture:
        """Like ``create_training_client_from_state`` but also restores the optimizer state (and family)."""
        return self._from_state(path, True, base_model, user_metadata, weights_access_token, None)

    # ---- sampling clients ---------------------------------------------------------------
    def create_sampling_client_future(
        self, model_path: str | None = None, base_model: str | None = None, retry_config: Any = None,
        record_stability_info: bool = False,
    ) -> SamplingClientFuture:
        """Future twin of ``create_sampling_client`` (the same object)."""
        return SamplingClient.create(self._session, model_path=model_path, base_model=base_model,
                                     retry_config=retry_config, record_stability_info=record_stability_info)

    def create_sampling_client(
        self, model_path: str | None = None, base_model: str | None = None, retry_config: Any = None,
        record_stability_info: bool = False,
    ) -> SamplingClientFuture:
        """A SamplingClient on saved sampler weights (``model_path``) or a base model; also a Future of it.

        Given both, ``model_path`` decides what is sampled (official semantics); ``base_model`` is still
        sent. ``record_stability_info`` makes every sample record stability information (StableReinforce).
        ``retry_config`` (the official SDK's RetryConfig) is accepted but not applied (a WARNING says so):
        retries follow ``ClientConfig.retry`` and the runtime's sampling back-off.
        """
        return self.create_sampling_client_future(model_path, base_model, retry_config, record_stability_info)

    def create_rest_client(self) -> RestClient:
        """A RestClient for runs, checkpoints and sessions (no session is created)."""
        from .rest_client import RestClient

        self._session.check_open()
        return RestClient(self._runtime)

    def copy_weights(
        self, path: str, *, ttl_seconds: int | None = None, weights_access_token: str | None = None
    ) -> Future[str]:
        """Copy weights (either kind) into this client's project, held by a new training run.

        Returns Future[str]: the tinker path of the copy. Storage is shared with the source.
        """
        check_tinker_path(path, "copy_weights")
        check_ttl(ttl_seconds, "copy_weights")
        return self.create_rest_client().copy_weights(
            path, destination_project_id=self._project_id, ttl_seconds=ttl_seconds,
            weights_access_token=weights_access_token,
        )

    def create_custom_loss(self, fn: Callable[..., Any], input_ranks: Mapping[str, int]) -> Future[LossHandle]:
        """A LossHandle for ``TrainingClient.forward_backward_custom``; returns Future[LossHandle].

        ``fn(logprobs, *inputs) -> (loss, metrics)`` runs once per datum on torch tensors (``logprobs``, then
        one parameter per ``loss_fn_inputs`` key it reads) and the losses are summed; ``input_ranks`` gives
        each parameter's rank (0 scalar, 1 ``[T]``, 2 ``[T, K]``). Unlike the official SDK the loss is not
        traced and uploaded: it always runs client-side, eagerly, under autograd.

        Raises:
            ImportError: torch is not installed (immediately).
            TypeError/ValueError: ``fn``'s parameters do not match ``input_ranks`` (immediately).
        """
        self._session.check_open()
        handle = make_loss_handle(fn, input_ranks, "")
        session = self._session

        def start() -> Future[LossHandle]:
            done: Future[LossHandle] = Future()
            done.set_result(attrs.evolve(handle, session_id=session.ensure_id()))
            return done

        return session.in_background(start)

    # ---- lifecycle ------------------------------------------------------------------------
    def close(
        self, status: str = "success", detail: str | None = None, *, cancel_pending: bool = False,
        timeout_s: float | None = _DEFAULT_CLOSE_TIMEOUT_S,
    ) -> Future[None]:
        """Finish the session and shut down (idempotent); bounded by ``timeout_s``. Returns a completed Future.

        By default waits at most ``timeout_s`` seconds (None: no bound) for submitted work; calls still
        pending then fail with ClientClosedError and a WARNING names how many. With ``cancel_pending``
        pending calls fail at once. Heartbeats continue while close() waits, so the server keeps the
        session (and the work being waited for) alive; then the heartbeat stops, the session is marked
        finished (``sessions/{id}/finish`` with ``status`` and ``detail``) and the runtime closes.

        Args:
            status: ``"success"``, ``"errored"`` or ``"interrupted"`` (sent to the server).
            detail: a human-readable explanation (sent to the server).
        """
        if status not in CLOSE_STATUSES:
            raise ValueError(f"close: status must be one of {', '.join(CLOSE_STATUSES)}, got {status!r}")
        if detail is not None and not isinstance(detail, str):
            raise TypeError(f"close: detail must be a str or None, got {type(detail).__name__}")
        if timeout_s is not None and not timeout_s >= 0:
            raise ValueError(f"timeout_s must be >= 0 or None, got {timeout_s!r}")
        self._session.close(status, detail, cancel_pending=cancel_pending, timeout_s=timeout_s)
        done: Future[None] = Future()
        done.set_result(None)
        return done

    def __enter__(self) -> ServiceClient:  # noqa: PYI034 - typing.Self needs 3.11
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc_value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            # As officially: an Exception is "errored", anything else (KeyboardInterrupt, SystemExit) "interrupted".
            # The detail names the exception's type only: its message may carry data the server should not get.
            status = "errored" if issubclass(exc_type, Exception) else "interrupted"
            self.close(status, exc_type.__name__, cancel_pending=True)
