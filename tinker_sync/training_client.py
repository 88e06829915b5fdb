"""TrainingClient: one LoRA model on the server and its sequenced operations."""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

from . import types
from ._checks import (
    check_data,
    check_datum_limits,
    check_loss_fn,
    check_loss_fn_config,
    check_name,
    check_retry_config,
    check_tinker_path,
    check_ttl,
    check_user_metadata,
)
from ._chunking import (
    PreparedRequest,
    chunk_data,
    combine_forward_backward_outputs,
    estimate_datum_bytes,
    shift_datum_index,
)
from ._client_future import ClientFuture, forward_client_methods
from ._custom_loss import (
    CustomLossCall,
    LossHandle,
    backward_bytes,
    custom_loss_data,
    handle_loss_fn,
    resolve_backend,
)
from ._executor import LaneSlot, chain, gather
from ._session import CONSOLE_URL, Session
from .sampling_client import SamplingClient, SamplingClientFuture
from .tokenizer import TokenizerLike

__all__ = ["TrainingClient", "TrainingClientFuture"]

logger = logging.getLogger(__name__)

_SAMPLING_CLIENT_KINDS = ("snapshot", "inflight")
_NAME_DEPRECATED = (
    "save_weights_and_get_sampling_client(name=...) is deprecated and has no effect (as in the official SDK): "
    "the weights are always saved ephemerally; use save_weights_for_sampler(name) for a named, persistent checkpoint"
)


def _check_optim_params(optim_params: Any, adam_params: Any) -> Any:
    if optim_params is not None and adam_params is not None:
        raise ValueError("optim_step: give optim_params or the legacy adam_params, not both")
    params = optim_params if optim_params is not None else adam_params
    if params is None:
        raise TypeError("optim_step: missing optim_params (e.g. types.AdamParams(learning_rate=1e-4))")
    if not isinstance(params, (types.AdamParams, types.DimuonParams)):
        raise TypeError(
            f"optim_step: optim_params must be types.AdamParams or types.DimuonParams, got {type(params).__name__}"
        )
    if adam_params is not None and not isinstance(adam_params, types.AdamParams):
        raise TypeError(f"optim_step: adam_params must be a types.AdamParams, got {type(adam_params).__name__}")
    return params


class TrainingClient:
    """One trainable LoRA model. Every operation returns a ``concurrent.futures.Future``.

    Sequenced operations (forward/forward_backward chunks, optim_step, save/load) are built and encoded
    in the caller's thread first; then, in one short critical section that cannot fail, they reserve
    consecutive ``seq_id`` values and are queued on one SequencedLane, so the server sees them in the order the
    calls were made, even from several threads. Bad arguments raise ValueError/TypeError immediately and
    send nothing (no seq_id is used). Server-side failures come through the Future.

    A request the server refuses at submission (4xx) fails its Future. When the server says it consumed the
    refused seq_id (the ``X-Tinker-Seq-Id-Consumed`` answer header, sent by the local server) the client
    stays usable (if one request of a forward_backward split into several was refused, the others still ran
    and accumulated their gradients: fix the data and call again, or load the last saved state, before the
    next ``optim_step``). Otherwise the client is poisoned, as in the official SDK: later calls fail with
    LanePoisonedError, since the server would wait for the missing seq_id forever. Recreate the client from
    the last saved state (``service.create_training_client_from_state_with_optimizer(path)``).
    """

    def __init__(self, holder: Session, model_seq_id: int, model_id: str, *, base_model: str | None = None) -> None:
        """Internal: made by the ServiceClient's creation methods (``holder`` is its Session)."""
        self._session = holder
        self._runtime = holder.runtime
        self.model_seq_id = model_seq_id
        self.model_id = model_id
        self._base_model = base_model
        self._lock = threading.Lock()
        self._seq = 0  # last used request seq_id; the first request after create_model is 1
        self._lane = self._runtime.new_lane(f"model {model_id}")
        self._info: types.GetInfoResponse | None = None

    def __repr__(self) -> str:
        return f"TrainingClient(model_id={self.model_id!r})"

    # ---- sequencing -------------------------------------------------------------------------
    def _enqueue(
        self, prepared: Sequence[PreparedRequest], n_slots: int = 0
    ) -> tuple[list[Future[Any]], list[tuple[int, LaneSlot]]]:
        """Reserve consecutive seq_ids for ``prepared`` (+ ``n_slots`` lane places filled later) and queue
        them, atomically. Everything that can fail (building, encoding) happened before."""
        futures: list[Future[Any]] = []
        slots: list[tuple[int, LaneSlot]] = []
        with self._lock:
            first = self._seq + 1
            self._seq += len(prepared) + n_slots
            try:
                for i, p in enumerate(prepared):
                    seq = first + i
                    futures.append(p.submit(self._runtime, seq, self._lane))
                for j in range(n_slots):
                    seq = first + len(prepared) + j
                    slots.append((seq, self._lane.reserve(f"forward_backward_custom backward seq_id={seq}")))
            except BaseException as exc:  # only ClientClosedError (closing): leave no half-queued call behind
                self._lane.fail_pending(exc)
                raise
        return futures, slots

    def _simple(self, path: str, request_type: str, response_type: type, request: Any, label: str) -> Future[Any]:
        return self._enqueue([PreparedRequest.json(path, request_type, response_type, request, label)])[0][0]

    # ---- forward / backward -----------------------------------------------------------------
    def _prepare_fwd(
        self, data: list[types.Datum], loss_fn: str, config: dict[str, float] | None, forward_only: bool, call: str,
        groups: list[list[int]] | None = None,
    ) -> list[PreparedRequest]:
        """Chunk ``data`` (or use the given index ``groups``) and encode every request, without seq_ids."""
        compress = self._session.client_config().proto_compress_fwdbwd
        if groups is None:
            max_len, max_bytes = self._session.chunk_limits()
            groups = chunk_data(list(range(len(data))), max_len=max_len, max_bytes=max_bytes,
                                size_of=lambda i: estimate_datum_bytes(data[i]))
        out: list[PreparedRequest] = []
        for k, group in enumerate(groups):
            req = types.ForwardBackwardRequest(
                model_id=self.model_id,
                data=[data[i] for i in group],
                loss_fn=loss_fn,  # type: ignore[arg-type]  # validated against LOSS_FNS
                loss_fn_config=config,
                forward_only=forward_only,
            )
            label = f"{call} request {k + 1}/{len(groups)}" if len(groups) > 1 else call
            try:
                out.append(PreparedRequest.protobuf(req, label, compress=compress))
            except (ValueError, TypeError, OverflowError) as exc:
                # the encoder names positions inside this request: data[j] is data[group[0] + j] of the call
                msg = shift_datum_index(str(exc), group[0])
                raise ValueError(f"{call}: {msg} (nothing was sent)") from exc
        return out

    def _fwd(
        self, data: list[types.Datum], loss_fn: str, config: dict[str, float] | None, forward_only: bool, call: str
    ) -> Future[types.ForwardBackwardOutput]:
        prepared = self._prepare_fwd(data, loss_fn, config, forward_only, call)  # no lock held
        futures, _ = self._enqueue(prepared)
        logger.debug("%s %s: %d datum(s) in %d request(s)", call, self.model_id, len(data), len(prepared))
        return chain(gather(futures), combine_forward_backward_outputs)

    def forward(
        self, data: list[types.Datum], loss_fn: str = "cross_entropy", loss_fn_config: dict[str, float] | None = None
    ) -> Future[types.ForwardBackwardOutput]:
        """Compute the loss and per-token logprobs without accumulating gradients.

        Raises ValueError/TypeError at once (nothing sent, no seq_id used) for input the server would refuse:
        an empty model input, missing loss inputs, per-token inputs whose first dimension differs from
        ``model_input.length``, NaN/inf in float loss inputs or ``loss_fn_config``, chunks that cannot be sent
        (ImageAssetPointerChunk), negative token ids, and (when the server's capabilities name them) token ids
        beyond the vocabulary or a model input longer than the model's context.

        Returns:
            Future[ForwardBackwardOutput] (chunk results merged).
        """
        check_loss_fn(loss_fn, "forward")
        config = check_loss_fn_config(loss_fn_config, "forward")
        data = check_data(data, "forward", loss_fn)
        check_datum_limits(data, self._session.limits.of(self._base_model), "forward")
        return self._fwd(data, loss_fn, config, True, "forward")

    def forward_backward(
        self, data: list[types.Datum], loss_fn: str = "cross_entropy", loss_fn_config: dict[str, float] | None = None
    ) -> Future[types.ForwardBackwardOutput]:
        """Compute the loss and accumulate its gradients (applied by the next ``optim_step``).

        Large batches are split into several requests (server limits) with consecutive seq_ids; the
        results are merged into one output. Every request is encoded before any is sent, so a call either
        sends all of its requests or (bad input: ValueError/TypeError, see ``forward``) none.
        Returns Future[ForwardBackwardOutput].
        """
        check_loss_fn(loss_fn, "forward_backward")
        config = check_loss_fn_config(loss_fn_config, "forward_backward")
        data = check_data(data, "forward_backward", loss_fn)
        check_datum_limits(data, self._session.limits.of(self._base_model), "forward_backward")
        return self._fwd(data, loss_fn, config, False, "forward_backward")

    def forward_backward_custom(
        self, data: list[types.Datum], loss_fn: Callable[..., Any] | LossHandle, *,
        loss_type_input: str | None = None, backend: str = "auto",
    ) -> Future[types.ForwardBackwardOutput]:
        """Train on a loss computed client-side from the model's logprobs (docs/protocol.rst §6.5).

        The client runs ``forward`` (cross_entropy), calls ``loss_fn`` on the logprobs, and sends a
        cross_entropy ``forward_backward`` whose weights are ``-dLoss/dlogprob``, so the server-side
        gradient equals the custom loss gradient. The server sees two ordinary requests.

        The seq_ids of both passes are reserved when this method is called (like the 0.38 SDK), so an
        ``optim_step`` submitted right after it, without waiting, applies the custom gradient. If the
        forward pass or ``loss_fn`` fails, the backward can never be sent: the returned Future fails with
        that error and the client is poisoned (later calls raise LanePoisonedError) rather than leave a
        gap in the seq_id order or step without the gradient. Cancelling the Future only stops waiting.

        ``loss_fn`` is a ``LossHandle`` from ``ServiceClient.create_custom_loss`` (torch; run client-side,
        per datum), or a callable with this contract (it runs on a client worker thread):

        * torch backend (``"torch"``, or ``"auto"`` when torch is importable):
          ``loss_fn(data, logprobs: list[torch.Tensor]) -> (loss: torch.Tensor, metrics: dict)``;
          the gradient comes from autograd.
        * numpy backend (``"numpy"``, or ``"auto"`` without torch):
          ``loss_fn(data, logprobs: list[numpy.ndarray]) -> (loss: float, metrics: dict, grads)``
          where ``grads[i]`` is ``dLoss/dlogprobs[i]`` (same shape as ``logprobs[i]``).

        ``loss_type_input`` is the official SDK's parameter: None (the 0.38 default) or ``"logprobs"``.
        Each datum must carry ``target_tokens`` (and optionally ``weights``) only. Returns
        Future[ForwardBackwardOutput] whose metrics include the user's metrics and ``loss:sum`` replaced by
        the custom loss value (the surrogate is kept as ``surrogate_loss:sum``).
        """
        where = "forward_backward_custom"
        data = check_data(data, where)
        if loss_type_input not in (None, "logprobs"):
            raise ValueError(f"{where}: loss_type_input must be None or 'logprobs', got {loss_type_input!r}")
        read_by_loss: tuple[str, ...] = ()
        if isinstance(loss_fn, LossHandle):
            if loss_fn.session_id != self._session.id_if_created:
                raise ValueError(f"{where}: loss {loss_fn.name!r} was created in session {loss_fn.session_id}; "
                                 "create it with this client's ServiceClient")
            read_by_loss = loss_fn.input_names
            loss_fn, backend = handle_loss_fn(loss_fn, data, where), resolve_backend("torch", where)
        elif not callable(loss_fn):
            raise TypeError(f"{where}: loss_fn must be callable (data, logprobs) -> (loss, metrics[, grads])")
        else:
            backend = resolve_backend(backend, where)
        prepared = custom_loss_data(data, where, read_by_loss)
        check_data(prepared, where, "cross_entropy")
        check_datum_limits(prepared, self._session.limits.of(self._base_model), where)

        # The backward's datums are the same but for dense float32 weights shaped like target_tokens:
        # chunk them now, so their number of requests (and seq_ids) is known at call time.
        max_len, max_bytes = self._session.chunk_limits()
        bwd_groups = chunk_data(list(range(len(prepared))), max_len=max_len, max_bytes=max_bytes,
                                size_of=lambda i: backward_bytes(prepared[i]))
        fwd_requests = self._prepare_fwd(prepared, "cross_entropy", None, True, f"{where} forward")

        def prepare_backward(new_data: list[types.Datum]) -> list[PreparedRequest]:
            return self._prepare_fwd(new_data, "cross_entropy", None, False, f"{where} backward", groups=bwd_groups)

        result: Future[types.ForwardBackwardOutput] = Future()
        # counted as outstanding work, so a clean close() waits for the backward too (ClientClosedError if closed)
        self._runtime.register(result)
        fwd_futures, slots = self._enqueue(fwd_requests, n_slots=len(bwd_groups))
        call = CustomLossCall(self._runtime, prepared, loss_fn, backend, prepare_backward, slots, result)
        return call.start(gather(fwd_futures))

    # ---- optimizer and checkpoints ----------------------------------------------------------
    def optim_step(
        self, optim_params: types.OptimParams | None = None, *, adam_params: types.AdamParams | None = None
    ) -> Future[types.OptimStepResponse]:
        """Apply one optimizer step to the accumulated gradients. Returns Future[OptimStepResponse].

        Args:
            optim_params: ``types.AdamParams`` or ``types.DimuonParams``, matching the optimizer the model
                was created with (``create_lora_training_client(optimizer=...)``); given positionally as in
                both official versions.
            adam_params: the 0.25 keyword; not together with ``optim_params``.
        """
        params = _check_optim_params(optim_params, adam_params)
        return self._simple(
            "/api/v1/optim_step", "OptimStep", types.OptimStepResponse,
            types.OptimStepRequest(optim_params=params, model_id=self.model_id), "optim_step",
        )

    def save_state(
        self, name: str, ttl_seconds: int | None = None, overwrite: bool = False,
        user_metadata: dict[str, str] | None = None,
    ) -> Future[types.SaveWeightsResponse]:
        """Save weights + optimizer state as ``tinker://RUN/weights/NAME``. Returns Future[SaveWeightsResponse].

        ``overwrite=True`` replaces an existing checkpoint of that name (otherwise the server refuses);
        ``user_metadata`` is attached to the checkpoint.
        """
        check_name(name, "save_state")
        ttl = check_ttl(ttl_seconds, "save_state")
        if not isinstance(overwrite, bool):
            raise TypeError(f"save_state: overwrite must be a bool, got {type(overwrite).__name__}")
        request = types.SaveWeightsRequest(
            model_id=self.model_id, path=name, ttl_seconds=ttl, overwrite=overwrite,
            user_metadata=check_user_metadata(user_metadata, "save_state"),
        )
        return self._simple(
            "/api/v1/save_weights", "SaveWeights", types.SaveWeightsResponse, request, f"save_state({name!r})"
        )

    def _load(
        self, path: str, optimizer: bool, where: str, weights_access_token: str | None
    ) -> Future[types.LoadWeightsResponse]:
        check_tinker_path(path, where)
        types.ParsedCheckpointTinkerPath.from_tinker_path(path)
        if weights_access_token is not None and (not isinstance(weights_access_token, str) or not weights_access_token):
            raise ValueError(f"{where}: weights_access_token must be a non-empty str or None")
        return self._simple(
            "/api/v1/load_weights", "LoadWeights", types.LoadWeightsResponse,
            types.LoadWeightsRequest(model_id=self.model_id, path=path, optimizer=optimizer,
                                     weights_access_token=weights_access_token),
            where,
        )

    def load_state(self, path: str, weights_access_token: str | None = None) -> Future[types.LoadWeightsResponse]:
        """Load weights (not the optimizer state) from a ``tinker://.../weights/NAME`` checkpoint.

        ``weights_access_token`` grants access to another owner's checkpoint (sent in the request; never logged).
        """
        return self._load(path, False, "load_state", weights_access_token)

    def load_state_with_optimizer(
        self, path: str, weights_access_token: str | None = None
    ) -> Future[types.LoadWeightsResponse]:
        """Load weights and optimizer state from a ``tinker://.../weights/NAME`` checkpoint (see ``load_state``)."""
        return self._load(path, True, "load_state_with_optimizer", weights_access_token)

    def _save_for_sampler(
        self, request: types.SaveWeightsForSamplerRequest, label: str
    ) -> Future[types.SaveWeightsForSamplerResponseInternal]:
        return self._simple(
            "/api/v1/save_weights_for_sampler", "SaveWeightsForSampler", types.SaveWeightsForSamplerResponseInternal,
            request, label,
        )

    def save_weights_for_sampler(
        self, name: str, ttl_seconds: int | None = None, user_metadata: dict[str, str] | None = None
    ) -> Future[types.SaveWeightsForSamplerResponse]:
        """Save sampler weights as ``tinker://RUN/sampler_weights/NAME``.

        Returns Future[SaveWeightsForSamplerResponse].
        """
        check_name(name, "save_weights_for_sampler")
        request = types.SaveWeightsForSamplerRequest(
            model_id=self.model_id, path=name, ttl_seconds=check_ttl(ttl_seconds, "save_weights_for_sampler"),
            user_metadata=check_user_metadata(user_metadata, "save_weights_for_sampler"),
        )

        def public(resp: types.SaveWeightsForSamplerResponseInternal) -> types.SaveWeightsForSamplerResponse:
            if not resp.path:
                raise ValueError("the server answered save_weights_for_sampler without a path")
            return types.SaveWeightsForSamplerResponse(path=resp.path)

        return chain(self._save_for_sampler(request, f"save_weights_for_sampler({name!r})"), public)

    def save_weights_external(
        self, name: str, ttl_seconds: int | None = None, age_encryption_recipients: list[str] | None = None
    ) -> Future[types.SaveWeightsExternalResponse]:
        """Export the weights to the external-weights store as ``NAME``. Returns Future[SaveWeightsExternalResponse].

        ``age_encryption_recipients`` (age ``age1...`` keys or SSH public keys) encrypt every exported file.
        """
        where = "save_weights_external"
        check_name(name, where)
        ttl = check_ttl(ttl_seconds, where)
        if age_encryption_recipients is not None and (
            isinstance(age_encryption_recipients, str)
            or not all(isinstance(r, str) and r for r in age_encryption_recipients)
        ):
            raise TypeError(f"{where}: age_encryption_recipients must be a list of non-empty str or None")
        request = types.SaveWeightsExternalRequest(
            model_id=self.model_id, path=name, ttl_seconds=ttl,
            age_encryption_recipients=(
                list(age_encryption_recipients) if age_encryption_recipients is not None else None
            ),
        )
        fut = self._simple(
            "/api/v1/save_weights_external", "SaveWeightsExternal", types.SaveWeightsExternalResponseInternal,
            request, f"{where}({name!r})",
        )

        def public(resp: types.SaveWeightsExternalResponseInternal) -> types.SaveWeightsExternalResponse:
            if not resp.path:
                raise ValueError("the server answered save_weights_external without a path")
            return types.SaveWeightsExternalResponse(path=resp.path)

        return chain(fut, public)

    def save_weights_and_get_sampling_client_future(
        self, name: str | None = None, retry_config: Any = None, record_stability_info: bool = False,
        kind: str = "snapshot",
    ) -> SamplingClientFuture:
        """Future twin of ``save_weights_and_get_sampling_client`` (the same object)."""

        where = "save_weights_and_get_sampling_client"
        if name is not None:
            warnings.warn(_NAME_DEPRECATED, DeprecationWarning, stacklevel=3)
        check_retry_config(retry_config, where)
        if kind not in _SAMPLING_CLIENT_KINDS:
            raise ValueError(f"{where}: kind must be 'snapshot' or 'inflight', got {kind!r}")
        if not isinstance(record_stability_info, bool):
            raise TypeError(f"{where}: record_stability_info must be a bool")
        request = types.SaveWeightsForSamplerRequest(
            model_id=self.model_id, sampling_session_seq_id=self._session.next_sampling_session_seq_id(),
            kind=kind,  # type: ignore[arg-type]  # checked above
        )

        def make(resp: types.SaveWeightsForSamplerResponseInternal) -> SamplingClient:
            if not resp.sampling_session_id:
                raise ValueError("unnamed save_weights_for_sampler returned no sampling_session_id")
            return SamplingClient(self._session, sampling_session_id=resp.sampling_session_id,
                                  base_model=self._base_model, record_stability_info=record_stability_info)

        return SamplingClientFuture.following(chain(self._save_for_sampler(request, where), make))

    def save_weights_and_get_sampling_client(
        self, name: str | None = None, retry_config: Any = None, record_stability_info: bool = False,
        kind: str = "snapshot",
    ) -> SamplingClientFuture:
        """Save the current weights for sampling; returns the SamplingClient on them, also a Future of it.

        The weights are ephemeral: bound to a new sampling session, no checkpoint is written. As in the
        official SDK, ``name`` is deprecated and has no effect (DeprecationWarning); use
        ``save_weights_for_sampler(name)`` + ``create_sampling_client(path)`` for a persistent checkpoint.

        Args:
            record_stability_info: every sample of the new client asks the server to record stability
                information (StableReinforce training).
            kind: ``"snapshot"`` (fixed weights) or ``"inflight"`` (weights shared by this model's inflight
                sampling clients, updated by later inflight saves); sent to the server.
            retry_config: accepted for porting, not applied (a WARNING says so): retries follow the
                ServiceClient's policy.
        """
        if name is not None:  # warn here so the warning points at the caller's line
            warnings.warn(_NAME_DEPRECATED, DeprecationWarning, stacklevel=2)
        return self.save_weights_and_get_sampling_client_future(None, retry_config, record_stability_info, kind)

    # ---- info ---------------------------------------------------------------------------------
    def get_info_future(self) -> Future[types.GetInfoResponse]:
        """Model info (base model, LoRA rank, tokenizer id). Returns Future[GetInfoResponse]."""
        fut: Future[types.GetInfoResponse] = self._runtime.submit_request(
            "POST", "/api/v1/get_info", body=types.GetInfoRequest(model_id=self.model_id),
            response_type=types.GetInfoResponse,
        )

        def remember(info: types.GetInfoResponse) -> types.GetInfoResponse:
            self._info = info
            return info

        return chain(fut, remember)

    def get_info(self) -> types.GetInfoResponse:
        """Model info (base model, LoRA rank, tokenizer id), blocking as in the official SDK; cached."""
        return self._info or self.get_info_future().result()

    def get_tokenizer(self) -> TokenizerLike:
        """The tokenizer of the base model (blocking: get_info on first use, then cached).

        Names reported by the server resolve only to the packaged tokenizer or a hub id, never to a local path.
        """
        from .tokenizer import get_server_tokenizer

        info = self.get_info()
        data = info.model_data
        model_name = getattr(data, "model_name", None) or getattr(info, "model_name", None) or self._base_model
        if not model_name:
            raise ValueError(f"get_info for {self.model_id} returned no model name")
        tokenizer_id = getattr(data, "tokenizer_id", None)
        if tokenizer_id:
            tokenizer_id = tokenizer_id.split(":", 1)[0]
        return get_server_tokenizer(model_name, tokenizer_id)

    def create_sampling_client(
        self, model_path: str, retry_config: Any = None, record_stability_info: bool = False
    ) -> SamplingClientFuture:
        """A SamplingClient on saved sampler weights; also a Future of it (``.result()``)."""

        return SamplingClient.create(
            self._session, model_path=model_path, retry_config=retry_config,
            record_stability_info=record_stability_info,
        )

    def get_console_url(self) -> str:
        """The Tinker Console page of this training run (the hosted console, as in the official SDK)."""
        return f"{CONSOLE_URL}/training_runs/{self.model_id}"

    def get_telemetry(self) -> object | None:
        """Always None: tinker_sync collects no client telemetry (the official SDK's value with telemetry off)."""
        return None


class TrainingClientFuture(ClientFuture[TrainingClient], TrainingClient):
    """What the creation methods return: a Future of the TrainingClient that is also usable as the client.

    ``tc.result()`` (0.38 style) gives the TrainingClient; ``tc.forward_backward(...)`` (0.25 style) waits
    for the client, then calls it. ``isinstance(tc, TrainingClient)`` and ``isinstance(tc, Future)`` hold.
    """


forward_client_methods(TrainingClientFuture, TrainingClient)
