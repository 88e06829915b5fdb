"""TrainingClient: one LoRA model on the server, its sequenced operations, chunking and metric merging."""

from __future__ import annotations

import importlib
import logging
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

import attrs

from . import types
from ._executor import chain, gather, set_exception, set_result

if TYPE_CHECKING:
    from .sampling_client import SamplingClient
    from .service_client import ServiceClient
    from .tokenizer import Tokenizer

__all__ = ["TrainingClient", "chunk_data", "combine_forward_backward_outputs", "estimate_datum_bytes", "reduce_metrics"]

logger = logging.getLogger(__name__)

LOSS_FNS: tuple[str, ...] = ("cross_entropy", "importance_sampling", "ppo", "cispo", "dro")
_DEFAULT_MAX_CHUNK_LEN = 1024
_DEFAULT_MAX_CHUNK_BYTES = 5_000_000
_DTYPE_BYTES = {"int64": 8, "float32": 4}
_U64 = (1 << 64) - 1

# --------------------------------------------------------------------------------------------
# Pure helpers: size estimate, chunking (PROTOCOL §6.3), metric reduction (§6.4)
# --------------------------------------------------------------------------------------------


def _chunk_bytes(chunk: Any) -> int:
    kind = getattr(chunk, "type", None)
    if kind == "encoded_text":
        return 4 * len(chunk.tokens)
    if kind == "image":
        return len(chunk.data)
    if kind == "image_asset_pointer":
        return len(chunk.location)
    if kind == "dmel":
        return len(chunk.dmel)
    raise TypeError(f"unknown model input chunk type {type(chunk).__name__}")


def _tensor_bytes(tensor: Any) -> int:
    size = len(tensor.data) * _DTYPE_BYTES.get(tensor.dtype, 4)
    for name in ("sparse_crow_indices", "sparse_col_indices"):
        index = getattr(tensor, name, None)
        if index is not None:
            size += 8 * len(index)
    return size


def estimate_datum_bytes(datum: Any) -> int:
    """Estimated wire size of one Datum, as the 0.25 SDK computes it for chunking.

    Text costs 4 bytes per token, images their byte length, tensors their size in the declared dtype
    plus 8 bytes per CSR index.
    """
    total = sum(_chunk_bytes(c) for c in datum.model_input.chunks)
    total += sum(_tensor_bytes(t) for t in datum.loss_fn_inputs.values())
    return total


def chunk_data(
    data: Sequence[Any],
    *,
    max_len: int = _DEFAULT_MAX_CHUNK_LEN,
    max_bytes: int = _DEFAULT_MAX_CHUNK_BYTES,
    size_of: Callable[[Any], int] = estimate_datum_bytes,
) -> list[list[Any]]:
    """Pack ``data`` greedily, in order, into chunks of at most ``max_len`` items and ``max_bytes`` bytes.

    A single datum larger than ``max_bytes`` still forms its own chunk.
    """
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    chunks: list[list[Any]] = []
    current: list[Any] = []
    current_bytes = 0
    for item in data:
        size = size_of(item)
        if current and (len(current) >= max_len or current_bytes + size > max_bytes):
            chunks.append(current)
            current, current_bytes = [], 0
        current.append(item)
        current_bytes += size
    if current:
        chunks.append(current)
    return chunks


def _weighted_mean(values: Sequence[float], weights: Sequence[float]) -> float:
    total = float(sum(weights))
    if total <= 0:  # e.g. chunks without outputs: fall back to the plain mean
        return sum(values) / len(values)
    return sum(v * w for v, w in zip(values, weights)) / total


def _hash_unordered(values: Sequence[float]) -> float:
    # Order-insensitive combination of integer-valued metrics: sum modulo 2**64 (the 0.38 `hash2` rule,
    # used for both names so the result does not depend on the chunk order).
    acc = 0
    for v in values:
        acc = (acc + (int(v) & _U64)) & _U64
    return float(acc)


def reduce_metrics(metrics: Sequence[Mapping[str, float]], weights: Sequence[float]) -> dict[str, float]:
    """Merge per-chunk metrics named ``"<name>:<reduction>"`` (PROTOCOL §6.4).

    Keys come from the first chunk; a key missing in any chunk is dropped, as is an unknown reduction.
    ``mean`` and ``slack`` are weighted by ``weights`` (each chunk's number of outputs).

    Raises:
        ValueError: a key without exactly one ``:``.
    """
    if not metrics:
        return {}
    if len(weights) != len(metrics):
        raise ValueError("reduce_metrics needs one weight per chunk")
    out: dict[str, float] = {}
    for key in metrics[0]:
        parts = key.split(":")
        if len(parts) != 2:
            raise ValueError(f"metric name {key!r} must have the form '<name>:<reduction>' (exactly one ':')")
        reduction = parts[1]
        if not all(key in m for m in metrics):
            continue
        values = [float(m[key]) for m in metrics]
        if reduction == "sum":
            out[key] = math.fsum(values)
        elif reduction == "min":
            out[key] = min(values)
        elif reduction == "max":
            out[key] = max(values)
        elif reduction == "mean":
            out[key] = _weighted_mean(values, weights)
        elif reduction == "slack":
            out[key] = max(values) - _weighted_mean(values, weights)
        elif reduction in ("hash_unordered", "hash2"):
            out[key] = _hash_unordered(values)
        elif reduction == "unique":
            out[key] = values[0]
            for i, v in enumerate(values[1:], start=2):
                out[f"{key}_{i}"] = v
        else:
            logger.debug("dropping metric %s: unknown reduction %r", key, reduction)
    return out


def combine_forward_backward_outputs(results: Sequence[types.ForwardBackwardOutput]) -> types.ForwardBackwardOutput:
    """Combine the per-chunk results of one forward_backward call (runs even for a single chunk)."""
    if not results:
        return types.ForwardBackwardOutput(loss_fn_output_type="", loss_fn_outputs=[], metrics={})
    outputs = [o for r in results for o in r.loss_fn_outputs]
    metrics = reduce_metrics([r.metrics for r in results], [len(r.loss_fn_outputs) for r in results])
    return types.ForwardBackwardOutput(
        loss_fn_output_type=results[0].loss_fn_output_type, loss_fn_outputs=outputs, metrics=metrics
    )


# --------------------------------------------------------------------------------------------
# Argument validation (caller's thread)
# --------------------------------------------------------------------------------------------


def _check_data(data: Any, where: str) -> list[types.Datum]:
    if isinstance(data, types.Datum):
        raise TypeError(f"{where}: data must be a list of Datum, got a single Datum (wrap it in a list)")
    if not isinstance(data, (list, tuple)):
        raise TypeError(f"{where}: data must be a list of Datum, got {type(data).__name__}")
    if not data:
        raise ValueError(f"{where}: No data provided (data is an empty list)")
    for i, d in enumerate(data):
        if not isinstance(d, types.Datum):
            raise TypeError(f"{where}: data[{i}] must be a tinker_sync.types.Datum, got {type(d).__name__}")
        if not d.model_input.chunks:
            raise ValueError(f"{where}: data[{i}].model_input is empty (give it at least one token)")
    return list(data)


def _check_loss_fn(loss_fn: Any, where: str) -> str:
    if not isinstance(loss_fn, str) or loss_fn not in LOSS_FNS:
        raise ValueError(f"{where}: unknown loss_fn {loss_fn!r}; use one of {', '.join(LOSS_FNS)}")
    return loss_fn


def _check_loss_fn_config(config: Any, where: str) -> dict[str, float] | None:
    if config is None:
        return None
    if not isinstance(config, Mapping):
        raise TypeError(f"{where}: loss_fn_config must be a dict of str -> float, got {type(config).__name__}")
    out: dict[str, float] = {}
    for k, v in config.items():
        if not isinstance(k, str):
            raise TypeError(f"{where}: loss_fn_config keys must be str, got {k!r}")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
            raise ValueError(f"{where}: loss_fn_config[{k!r}] must be a finite number, got {v!r}")
        out[k] = float(v)
    return out


def _check_name(name: Any, where: str) -> str:
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where}: name must be a non-empty str, got {name!r}")
    if "/" in name:
        raise ValueError(f"{where}: name {name!r} must not contain '/' (tinker paths have exactly three segments)")
    return name


def _check_ttl(ttl_seconds: Any, where: str) -> int | None:
    if ttl_seconds is None:
        return None
    if isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, int) or ttl_seconds <= 0:
        raise ValueError(f"{where}: ttl_seconds must be a positive int or None (never expires), got {ttl_seconds!r}")
    return ttl_seconds


def _check_tinker_path(path: Any, where: str) -> str:
    if not isinstance(path, str) or not path.startswith("tinker://"):
        raise ValueError(f"{where}: path must be a tinker:// URI (e.g. tinker://RUN/weights/NAME), got {path!r}")
    return path


def _flatten(outer: Future[Future[Any]]) -> Future[Any]:
    """Future[Future[T]] -> Future[T] without blocking a thread."""
    result: Future[Any] = Future()

    def inner_done(inner: Future[Any]) -> None:
        if inner.cancelled():
            result.cancel()
            return
        exc = inner.exception()
        if exc is not None:
            set_exception(result, exc)
        else:
            set_result(result, inner.result())

    def outer_done(f: Future[Future[Any]]) -> None:
        if f.cancelled():
            result.cancel()
            return
        exc = f.exception()
        if exc is not None:
            set_exception(result, exc)
            return
        f.result().add_done_callback(inner_done)

    outer.add_done_callback(outer_done)
    return result


# --------------------------------------------------------------------------------------------
# TrainingClient
# --------------------------------------------------------------------------------------------


class TrainingClient:
    """One trainable LoRA model. Every operation returns a ``concurrent.futures.Future``.

    Sequenced operations (forward/forward_backward chunks, optim_step, save/load) reserve consecutive
    ``seq_id``s under a lock and leave through one SequencedLane, so the server sees them in the order the
    calls were made, even from several threads. Bad arguments raise ValueError/TypeError immediately and
    send nothing; server-side failures come through the Future.
    """

    def __init__(self, service: ServiceClient, model_id: str, *, base_model: str | None = None) -> None:
        self._service = service
        self._runtime = service._runtime
        self.model_id = model_id
        self._base_model = base_model
        self._lock = threading.Lock()
        self._seq = 0  # last used request seq_id; the first request after create_model is 1
        self._lane = self._runtime.new_lane(f"model {model_id}")
        self._info: types.GetInfoResponse | None = None

    def __repr__(self) -> str:
        return f"TrainingClient(model_id={self.model_id!r})"

    # ---- sequencing -------------------------------------------------------------------------
    def _submit_sequenced(
        self, builders: Sequence[Callable[[int], tuple[str, Any, type, str, bytes | None, str]]]
    ) -> list[Future[Any]]:
        """Reserve one seq_id per builder and enqueue the POSTs on the lane, atomically."""
        futures: list[Future[Any]] = []
        with self._lock:
            for build in builders:
                self._seq += 1
                path, request, response_type, request_type, body, content_type = build(self._seq)
                futures.append(
                    self._runtime.submit_polled(
                        path,
                        request,
                        response_type,
                        request_type=request_type,
                        lane=self._lane,
                        body=body,
                        content_type=content_type,
                        label=f"{request_type} seq_id={self._seq}",
                    )
                )
        return futures

    def _simple(self, path: str, request_type: str, response_type: type, make: Callable[[int], Any]) -> Future[Any]:
        def build(seq_id: int) -> tuple[str, Any, type, str, bytes | None, str]:
            return path, make(seq_id), response_type, request_type, None, "application/json"

        return self._submit_sequenced([build])[0]

    # ---- forward / backward -----------------------------------------------------------------
    def _fwd(self, data: list[types.Datum], loss_fn: str, config: dict[str, float] | None, forward_only: bool) -> Future[types.ForwardBackwardOutput]:
        from ._proto import encode_forward_backward_request

        limits = self._service._client_config()
        max_len = int(getattr(limits, "fwdbwd_max_chunk_len", _DEFAULT_MAX_CHUNK_LEN) or _DEFAULT_MAX_CHUNK_LEN)
        max_bytes = int(
            getattr(limits, "fwdbwd_max_chunk_bytes_count", _DEFAULT_MAX_CHUNK_BYTES) or _DEFAULT_MAX_CHUNK_BYTES
        )
        chunks = chunk_data(data, max_len=max_len, max_bytes=max_bytes)
        request_type = "Forward" if forward_only else "ForwardBackward"

        def builder(chunk: list[types.Datum]) -> Callable[[int], tuple[str, Any, type, str, bytes | None, str]]:
            def build(seq_id: int) -> tuple[str, Any, type, str, bytes | None, str]:
                req = types.ForwardBackwardRequest(
                    model_id=self.model_id,
                    seq_id=seq_id,
                    data=chunk,
                    loss_fn=loss_fn,  # type: ignore[arg-type]  # validated against LOSS_FNS
                    loss_fn_config=config,
                    forward_only=forward_only,
                )
                body = encode_forward_backward_request(req)
                return ("/api/v1/forward_backward", req, types.ForwardBackwardOutput, request_type, body,
                        "application/x-protobuf")

            return build

        futures = self._submit_sequenced([builder(c) for c in chunks])
        logger.debug("%s %s: %d datum(s) in %d chunk(s)", request_type, self.model_id, len(data), len(chunks))
        return chain(gather(futures), combine_forward_backward_outputs)

    def forward(
        self, data: list[types.Datum], loss_fn: str = "cross_entropy", loss_fn_config: dict[str, float] | None = None
    ) -> Future[types.ForwardBackwardOutput]:
        """Compute the loss and per-token logprobs without accumulating gradients.

        Returns:
            Future[ForwardBackwardOutput] (chunk results merged).
        """
        data = _check_data(data, "forward")
        _check_loss_fn(loss_fn, "forward")
        config = _check_loss_fn_config(loss_fn_config, "forward")
        return self._fwd(data, loss_fn, config, True)

    def forward_backward(
        self, data: list[types.Datum], loss_fn: str = "cross_entropy", loss_fn_config: dict[str, float] | None = None
    ) -> Future[types.ForwardBackwardOutput]:
        """Compute the loss and accumulate its gradients (applied by the next ``optim_step``).

        Large batches are split into several requests (server limits) with consecutive seq_ids; the
        results are merged into one output. Returns Future[ForwardBackwardOutput].
        """
        data = _check_data(data, "forward_backward")
        _check_loss_fn(loss_fn, "forward_backward")
        config = _check_loss_fn_config(loss_fn_config, "forward_backward")
        return self._fwd(data, loss_fn, config, False)

    def forward_backward_custom(
        self, data: list[types.Datum], loss_fn: Callable[..., Any], *, backend: str = "auto"
    ) -> Future[types.ForwardBackwardOutput]:
        """Train on a loss computed client-side from the model's logprobs (PROTOCOL §6.5).

        The client runs ``forward`` (cross_entropy), calls ``loss_fn`` on the logprobs, and sends a
        cross_entropy ``forward_backward`` whose weights are ``-dLoss/dlogprob``, so the server-side
        gradient equals the custom loss gradient. The server sees two ordinary requests.

        ``loss_fn`` contract:
          * torch backend (``"torch"``, or ``"auto"`` when torch is importable):
            ``loss_fn(data, logprobs: list[torch.Tensor]) -> (loss: torch.Tensor, metrics: dict)``;
            the gradient comes from autograd.
          * numpy backend (``"numpy"``, or ``"auto"`` without torch):
            ``loss_fn(data, logprobs: list[numpy.ndarray]) -> (loss: float, metrics: dict, grads)``
            where ``grads[i]`` is ``dLoss/dlogprobs[i]`` (same shape as ``logprobs[i]``).

        Each datum must carry ``target_tokens`` (and optionally ``weights``) only. Returns
        Future[ForwardBackwardOutput] whose metrics include the user's metrics and ``loss:sum`` replaced by
        the custom loss value (the surrogate is kept as ``surrogate_loss:sum``).
        """
        data = _check_data(data, "forward_backward_custom")
        if not callable(loss_fn):
            raise TypeError("forward_backward_custom: loss_fn must be callable (data, logprobs) -> (loss, metrics[, grads])")
        if backend not in ("auto", "torch", "numpy"):
            raise ValueError(f"forward_backward_custom: backend must be 'auto', 'torch' or 'numpy', got {backend!r}")
        try:
            import numpy  # noqa: F401
        except ImportError as exc:  # pragma: no cover - numpy is a test/extra dependency
            raise ImportError("forward_backward_custom needs numpy: pip install 'tinker_sync[numpy]'") from exc
        if backend == "auto":
            try:
                importlib.import_module("torch")
                backend = "torch"
            except ImportError:
                backend = "numpy"
        elif backend == "torch":
            importlib.import_module("torch")  # ImportError now, in the caller's thread

        prepared: list[types.Datum] = []
        for i, d in enumerate(data):
            keys = set(d.loss_fn_inputs)
            if "target_tokens" not in keys:
                raise ValueError(f"forward_backward_custom: data[{i}] needs loss_fn_inputs['target_tokens']")
            extra = keys - {"target_tokens", "weights"}
            if extra:
                raise ValueError(
                    f"forward_backward_custom: data[{i}] has unsupported loss_fn_inputs {sorted(extra)}; "
                    "only 'target_tokens' and 'weights' are allowed (pass other values through your loss_fn closure)"
                )
            if "weights" not in keys:
                n = len(d.loss_fn_inputs["target_tokens"].data)
                inputs = dict(d.loss_fn_inputs)
                inputs["weights"] = types.TensorData(data=[0.0] * n, dtype="float32", shape=d.loss_fn_inputs["target_tokens"].shape)
                d = types.Datum(model_input=d.model_input, loss_fn_inputs=inputs)
            prepared.append(d)

        fwd = self._fwd(prepared, "cross_entropy", None, True)

        def compute(out: types.ForwardBackwardOutput) -> tuple[list[types.Datum], float, dict[str, float]]:
            return _custom_gradients(prepared, out, loss_fn, backend)

        def submit_backward(res: tuple[list[types.Datum], float, dict[str, float]]) -> Future[types.ForwardBackwardOutput]:
            new_data, loss_value, user_metrics = res
            fut = self._fwd(new_data, "cross_entropy", None, False)

            def merge(out: types.ForwardBackwardOutput) -> types.ForwardBackwardOutput:
                metrics = dict(out.metrics)
                if "loss:sum" in metrics:
                    metrics["surrogate_loss:sum"] = metrics["loss:sum"]
                metrics["loss:sum"] = loss_value
                metrics.update(user_metrics)
                return attrs.evolve(out, metrics=metrics)

            return chain(fut, merge)

        # The user's loss runs on a worker thread (never on a poller thread); it blocks on nothing.
        grads = _flatten(chain(fwd, lambda out: self._runtime.executor.submit(compute, out)))
        return _flatten(chain(grads, submit_backward))

    # ---- optimizer and checkpoints ----------------------------------------------------------
    def optim_step(self, adam_params: types.AdamParams) -> Future[types.OptimStepResponse]:
        """Apply one Adam step to the accumulated gradients. Returns Future[OptimStepResponse]."""
        if not isinstance(adam_params, types.AdamParams):
            raise TypeError(f"optim_step: adam_params must be a types.AdamParams, got {type(adam_params).__name__}")
        return self._simple(
            "/api/v1/optim_step",
            "OptimStep",
            types.OptimStepResponse,
            lambda seq: types.OptimStepRequest(adam_params=adam_params, model_id=self.model_id, seq_id=seq),
        )

    def save_state(
        self, name: str, ttl_seconds: int | None = None, overwrite: bool = False
    ) -> Future[types.SaveWeightsResponse]:
        """Save weights + optimizer state as ``tinker://RUN/weights/NAME``. Returns Future[SaveWeightsResponse].

        ``overwrite=True`` replaces an existing checkpoint of that name (otherwise the server refuses).
        """
        _check_name(name, "save_state")
        ttl = _check_ttl(ttl_seconds, "save_state")
        if not isinstance(overwrite, bool):
            raise TypeError(f"save_state: overwrite must be a bool, got {type(overwrite).__name__}")
        return self._simple(
            "/api/v1/save_weights",
            "SaveWeights",
            types.SaveWeightsResponse,
            lambda seq: types.SaveWeightsRequest(
                model_id=self.model_id, path=name, seq_id=seq, ttl_seconds=ttl, overwrite=overwrite
            ),
        )

    def _load(self, path: str, optimizer: bool, where: str) -> Future[types.LoadWeightsResponse]:
        _check_tinker_path(path, where)
        types.ParsedCheckpointTinkerPath.from_tinker_path(path)
        return self._simple(
            "/api/v1/load_weights",
            "LoadWeights",
            types.LoadWeightsResponse,
            lambda seq: types.LoadWeightsRequest(model_id=self.model_id, path=path, seq_id=seq, optimizer=optimizer),
        )

    def load_state(self, path: str) -> Future[types.LoadWeightsResponse]:
        """Load weights (not the optimizer state) from a ``tinker://.../weights/NAME`` checkpoint."""
        return self._load(path, False, "load_state")

    def load_state_with_optimizer(self, path: str) -> Future[types.LoadWeightsResponse]:
        """Load weights and Adam state from a ``tinker://.../weights/NAME`` checkpoint."""
        return self._load(path, True, "load_state_with_optimizer")

    def save_weights_for_sampler(
        self, name: str, ttl_seconds: int | None = None
    ) -> Future[types.SaveWeightsForSamplerResponse]:
        """Save sampler weights as ``tinker://RUN/sampler_weights/NAME``. Returns Future[SaveWeightsForSamplerResponse]."""
        _check_name(name, "save_weights_for_sampler")
        ttl = _check_ttl(ttl_seconds, "save_weights_for_sampler")
        fut = self._simple(
            "/api/v1/save_weights_for_sampler",
            "SaveWeightsForSampler",
            types.SaveWeightsForSamplerResponseInternal,
            lambda seq: types.SaveWeightsForSamplerRequest(
                model_id=self.model_id, path=name, seq_id=seq, ttl_seconds=ttl
            ),
        )

        def public(resp: types.SaveWeightsForSamplerResponseInternal) -> types.SaveWeightsForSamplerResponse:
            if not resp.path:
                raise ValueError("the server answered save_weights_for_sampler without a path")
            return types.SaveWeightsForSamplerResponse(path=resp.path)

        return chain(fut, public)

    def save_weights_and_get_sampling_client_future(self, name: str | None = None) -> Future[SamplingClient]:
        """Like ``save_weights_and_get_sampling_client`` but returns Future[SamplingClient]."""
        from .sampling_client import SamplingClient

        if name is not None:
            fut = self.save_weights_for_sampler(name)

            def from_path(resp: types.SaveWeightsForSamplerResponse) -> Future[SamplingClient]:
                if not resp.path:
                    raise ValueError("save_weights_for_sampler returned no path")
                return self._service.create_sampling_client_future(model_path=resp.path)

            return _flatten(chain(fut, from_path))
        sampling_seq = self._service._next_sampling_session_seq_id()
        unnamed: Future[types.SaveWeightsForSamplerResponseInternal] = self._simple(
            "/api/v1/save_weights_for_sampler",
            "SaveWeightsForSampler",
            types.SaveWeightsForSamplerResponseInternal,
            lambda seq: types.SaveWeightsForSamplerRequest(
                model_id=self.model_id, seq_id=seq, sampling_session_seq_id=sampling_seq
            ),
        )

        def make(resp: types.SaveWeightsForSamplerResponseInternal) -> SamplingClient:
            if not resp.sampling_session_id:
                raise ValueError("unnamed save_weights_for_sampler returned no sampling_session_id")
            return SamplingClient(self._service, resp.sampling_session_id, base_model=self._base_model)

        return chain(unnamed, make)

    def save_weights_and_get_sampling_client(self, name: str | None = None) -> SamplingClient:
        """Save the current weights for sampling and return a SamplingClient on them (blocking).

        Without ``name`` the weights are ephemeral (bound to a new sampling session, no checkpoint).
        """
        return self.save_weights_and_get_sampling_client_future(name).result()

    # ---- info ---------------------------------------------------------------------------------
    def get_info(self) -> Future[types.GetInfoResponse]:
        """Model info (base model, LoRA rank, tokenizer id). Returns Future[GetInfoResponse]."""
        fut: Future[types.GetInfoResponse] = self._runtime.submit_request(
            "POST", "/api/v1/get_info", body=types.GetInfoRequest(model_id=self.model_id),
            response_type=types.GetInfoResponse,
        )

        def remember(info: types.GetInfoResponse) -> types.GetInfoResponse:
            self._info = info
            return info

        return chain(fut, remember)

    def get_tokenizer(self) -> Tokenizer:
        """The tokenizer of the base model (blocking: get_info on first use, then cached)."""
        from .tokenizer import get_tokenizer

        info = self._info or self.get_info().result()
        data = info.model_data
        model_name = getattr(data, "model_name", None) or getattr(info, "model_name", None) or self._base_model
        if not model_name:
            raise ValueError(f"get_info for {self.model_id} returned no model name")
        tokenizer_id = getattr(data, "tokenizer_id", None)
        if tokenizer_id:
            tokenizer_id = tokenizer_id.split(":", 1)[0]
        return get_tokenizer(model_name, tokenizer_id=tokenizer_id)

    def create_sampling_client(self, model_path: str) -> SamplingClient:
        """A SamplingClient on saved sampler weights (blocking)."""
        return self._service.create_sampling_client(model_path=model_path)


def _custom_gradients(
    data: list[types.Datum], out: types.ForwardBackwardOutput, loss_fn: Callable[..., Any], backend: str
) -> tuple[list[types.Datum], float, dict[str, float]]:
    import numpy as np

    if len(out.loss_fn_outputs) != len(data):
        raise ValueError(f"forward returned {len(out.loss_fn_outputs)} outputs for {len(data)} datums")
    arrays = [np.asarray(o["logprobs"].to_numpy(), dtype=np.float32) for o in out.loss_fn_outputs]
    if backend == "torch":
        torch: Any = importlib.import_module("torch")

        leaves = [torch.tensor(a, requires_grad=True) for a in arrays]
        result = loss_fn(data, leaves)
        if not isinstance(result, tuple) or len(result) != 2:
            raise TypeError("forward_backward_custom: loss_fn must return (loss_tensor, metrics)")
        loss, metrics = result
        loss.backward()
        grads = [
            (leaf.grad.detach().cpu().numpy() if leaf.grad is not None else np.zeros_like(a))
            for leaf, a in zip(leaves, arrays)
        ]
        loss_value = float(loss.detach().cpu().item())
    else:
        result = loss_fn(data, arrays)
        if not isinstance(result, tuple) or len(result) != 3:
            raise TypeError(
                "forward_backward_custom (numpy backend): loss_fn must return (loss, metrics, grads) where "
                "grads[i] = dLoss/dlogprobs[i]"
            )
        loss, metrics, grads = result
        loss_value = float(loss)
        if len(grads) != len(arrays):
            raise ValueError(f"forward_backward_custom: loss_fn returned {len(grads)} grads for {len(arrays)} datums")
    new_data: list[types.Datum] = []
    for i, (d, g, a) in enumerate(zip(data, grads, arrays)):
        g = np.asarray(g, dtype=np.float32)
        if g.shape != a.shape:
            raise ValueError(f"forward_backward_custom: grads[{i}] has shape {g.shape}, expected {a.shape}")
        target = d.loss_fn_inputs["target_tokens"]
        weights = types.TensorData(data=[float(x) for x in (-g).reshape(-1)], dtype="float32", shape=list(g.shape))
        new_data.append(
            types.Datum(model_input=d.model_input, loss_fn_inputs={"target_tokens": target, "weights": weights})
        )
    return new_data, loss_value, {str(k): float(v) for k, v in dict(metrics or {}).items()}
