"""TrainingClient: one LoRA model on the server, its sequenced operations, chunking and metric merging."""

from __future__ import annotations

import importlib
import logging
import math
import re
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import CancelledError, Future
from typing import TYPE_CHECKING, Any, cast

import attrs

from . import types
from ._exceptions import TinkerError
from ._executor import LaneSlot, chain, copy_outcome, gather, set_exception
from ._proto import _varint

if TYPE_CHECKING:
    from ._executor import SequencedLane
    from .sampling_client import SamplingClient
    from .service_client import ServiceClient
    from .tokenizer import TokenizerLike

__all__ = ["TrainingClient", "chunk_data", "combine_forward_backward_outputs", "estimate_datum_bytes", "reduce_metrics"]

logger = logging.getLogger(__name__)

# Loss names the wire accepts (the official SDK's LossFnType; 0.38 added gspo, stable_reinforce, custom).
# Inputs are checked client-side only for the ones in _REQUIRED_INPUTS; the others pass through.
LOSS_FNS: tuple[str, ...] = (
    "cross_entropy", "importance_sampling", "ppo", "cispo", "dro", "gspo", "stable_reinforce", "custom")
_DEFAULT_MAX_CHUNK_LEN = 1024
_DEFAULT_MAX_CHUNK_BYTES = 5_000_000
_DTYPE_BYTES = {"int64": 8, "float32": 4}
_U64 = (1 << 64) - 1

# --------------------------------------------------------------------------------------------
# Pure helpers: size estimate, chunking (docs/protocol.rst §6.3), metric reduction (§6.4)
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
    """Merge per-chunk metrics named ``"<name>:<reduction>"`` (docs/protocol.rst §6.4).

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


# loss_fn -> loss_fn_inputs keys the server needs (docs/protocol.rst §6.1 / the Tinker loss-function docs).
_REQUIRED_INPUTS: dict[str, tuple[str, ...]] = {
    "cross_entropy": ("target_tokens", "weights"),
    "importance_sampling": ("target_tokens", "logprobs", "advantages"),
    "ppo": ("target_tokens", "logprobs", "advantages"),
    "cispo": ("target_tokens", "logprobs", "advantages"),
    "dro": ("target_tokens", "logprobs", "advantages"),
}
# Per-token loss inputs: their first dimension is the model_input length.
_PER_TOKEN_INPUTS = ("target_tokens", "weights", "advantages", "logprobs")
_ENCODABLE_CHUNKS = (types.EncodedTextChunk, types.ImageChunk, types.DmelChunk)


def _input_length(datum: types.Datum) -> int | None:
    """model_input.length, or None when it cannot be known client-side (dmel, image without expected_tokens)."""
    try:
        return datum.model_input.length
    except ValueError:
        return None


def _check_data(data: Any, where: str, loss_fn: str | None = None) -> list[types.Datum]:
    """Type, encodability and (for ``loss_fn``) per-datum loss-input checks, in the caller's thread.

    Mirrors the server's rules without being stricter than the hosted service: required keys only for the
    loss functions listed in ``_REQUIRED_INPUTS``; extra keys are left for the server to judge.
    """
    if isinstance(data, types.Datum):
        raise TypeError(f"{where}: data must be a list of Datum, got a single Datum (wrap it in a list)")
    if not isinstance(data, (list, tuple)):
        raise TypeError(f"{where}: data must be a list of Datum, got {type(data).__name__}")
    if not data:
        raise ValueError(f"{where}: No data provided (data is an empty list)")
    required = _REQUIRED_INPUTS.get(loss_fn or "", ())
    for i, d in enumerate(data):
        if not isinstance(d, types.Datum):
            raise TypeError(f"{where}: data[{i}] must be a tinker_sync.types.Datum, got {type(d).__name__}")
        if not d.model_input.chunks:
            raise ValueError(f"{where}: data[{i}].model_input is empty (give it at least one token)")
        for j, chunk in enumerate(d.model_input.chunks):
            if isinstance(chunk, types.ImageAssetPointerChunk):
                raise ValueError(  # noqa: TRY004 - a valid chunk type that this request cannot carry
                    f"{where}: data[{i}].model_input.chunks[{j}] is an ImageAssetPointerChunk, which a "
                    "forward_backward request cannot carry; read the image and pass "
                    "types.ImageChunk(data=<bytes>, format=..., expected_tokens=...) instead"
                )
            if not isinstance(chunk, _ENCODABLE_CHUNKS):
                raise TypeError(f"{where}: data[{i}].model_input.chunks[{j}] has unsupported type {type(chunk).__name__}")
        if loss_fn is None:
            continue
        missing = [k for k in required if k not in d.loss_fn_inputs]
        if missing:
            raise ValueError(
                f"{where}: data[{i}].loss_fn_inputs is missing {', '.join(repr(k) for k in missing)}; loss_fn "
                f"{loss_fn!r} needs {list(required)} (one value per model_input token"
                + ("; use weights 1.0 to train on a token and 0.0 to skip it)" if "weights" in missing else ")")
            )
        n = _input_length(d)
        if n is None:
            continue
        for key in _PER_TOKEN_INPUTS:
            tensor = d.loss_fn_inputs.get(key)
            if tensor is None:
                continue
            shape = tensor.dense_shape()
            rows = shape[0] if shape else 0
            if rows != n:
                raise ValueError(
                    f"{where}: data[{i}].loss_fn_inputs[{key!r}] has {rows} entries along its first dimension "
                    f"(shape {shape}) but data[{i}].model_input has {n} tokens; they must match: entry t belongs "
                    "to the token predicted after model_input[:t+1] (for next-token training use "
                    "model_input = tokens[:-1] and target_tokens = tokens[1:])"
                )
    return list(data)


def _shift_datum_index(message: str, offset: int) -> str:
    """Rewrite a leading ``data[j]`` (index inside one request) as the index in the whole call."""
    match = re.match(r"data\[(\d+)\]", message)
    if match is None:
        return message
    return f"data[{offset + int(match.group(1))}]{message[match.end():]}"


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


# --------------------------------------------------------------------------------------------
# TrainingClient
# --------------------------------------------------------------------------------------------


class _Prepared:
    """One request of a call, fully encoded except for its seq_id (set in the critical section).

    The seq_id is spliced into the encoded body, which cannot fail: protobuf bodies get field 2 right
    after field 1 (model_id), giving the same bytes as a full encoding; JSON bodies get ``"seq_id"`` as
    their first key.
    """

    __slots__ = ("body", "content_type", "label", "path", "request_type", "response_type", "split")

    def __init__(
        self, path: str, request_type: str, response_type: type, body: bytes, content_type: str, label: str, split: int
    ) -> None:
        self.path = path
        self.request_type = request_type
        self.response_type = response_type
        self.body = body
        self.content_type = content_type
        self.label = label
        self.split = split

    @classmethod
    def protobuf(cls, req: types.ForwardBackwardRequest, label: str) -> _Prepared:
        """Encode a ForwardBackwardRequest given without seq_id.

        Raises:
            ValueError/TypeError: the request cannot be encoded (message from the encoder).
        """
        from ._proto import encode_forward_backward_request

        if req.seq_id:
            raise ValueError("_Prepared.protobuf expects a request without seq_id")
        body = encode_forward_backward_request(req)
        model_id = req.model_id.encode("utf-8")
        split = (len(_varint(len(model_id))) + 1 + len(model_id)) if model_id else 0  # key 0x0a + len + bytes
        return cls("/api/v1/forward_backward", "Forward" if req.forward_only else "ForwardBackward",
                   types.ForwardBackwardOutput, body, "application/x-protobuf", label, split)

    @classmethod
    def json(cls, path: str, request_type: str, response_type: type, req: Any, label: str) -> _Prepared:
        """Encode a JSON request object given without seq_id (seq_id None is omitted on the wire)."""
        from . import _serde

        body = _serde.dumps(req)
        if not (body.startswith(b"{") and len(body) > 2):
            raise ValueError(f"{label}: expected a non-empty JSON object body")
        return cls(path, request_type, response_type, body, "application/json", label, 1)

    def with_seq(self, seq_id: int) -> bytes:
        """The body carrying ``seq_id`` (cheap; never raises for 0 < seq_id < 2**31)."""
        if self.content_type == "application/x-protobuf":
            field = b"\x10" + _varint(seq_id)  # field 2 (seq_id), wire type 0 (varint)
            return self.body[: self.split] + field + self.body[self.split :]
        return b'{"seq_id":' + str(seq_id).encode("ascii") + b"," + self.body[1:]


class TrainingClient:
    """One trainable LoRA model. Every operation returns a ``concurrent.futures.Future``.

    Sequenced operations (forward/forward_backward chunks, optim_step, save/load) are built and encoded
    in the caller's thread first; then, in one short critical section that cannot fail, they reserve
    consecutive ``seq_id`` values and are queued on one SequencedLane, so the server sees them in the order the
    calls were made, even from several threads. Bad arguments raise ValueError/TypeError immediately and
    send nothing (no seq_id is used). Server-side failures come through the Future.

    If a sequenced request could not be handed to the server (e.g. it was rejected with a 4xx), the
    client is poisoned, as in the official SDK: later calls fail with LanePoisonedError, since the server
    would wait for the missing seq_id forever. Recreate the client from the last saved state
    (``service.create_training_client_from_state_with_optimizer(path)``).
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
    def _enqueue(self, prepared: Sequence[_Prepared], n_slots: int = 0) -> tuple[list[Future[Any]], list[tuple[int, LaneSlot]]]:
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
                    futures.append(
                        self._runtime.submit_polled(
                            p.path, None, p.response_type, request_type=p.request_type, lane=self._lane,
                            body=p.with_seq(seq), content_type=p.content_type, label=f"{p.label} seq_id={seq}",
                        )
                    )
                for j in range(n_slots):
                    seq = first + len(prepared) + j
                    slots.append((seq, self._lane.reserve(f"forward_backward_custom backward seq_id={seq}")))
            except BaseException as exc:  # only ClientClosedError (closing): leave no half-queued call behind
                self._lane.fail_pending(exc)
                raise
        return futures, slots

    def _simple(self, path: str, request_type: str, response_type: type, request: Any, label: str) -> Future[Any]:
        return self._enqueue([_Prepared.json(path, request_type, response_type, request, label)])[0][0]

    # ---- forward / backward -----------------------------------------------------------------
    def _chunk_limits(self) -> tuple[int, int]:
        limits = self._service._client_config()
        max_len = int(getattr(limits, "fwdbwd_max_chunk_len", _DEFAULT_MAX_CHUNK_LEN) or _DEFAULT_MAX_CHUNK_LEN)
        max_bytes = int(
            getattr(limits, "fwdbwd_max_chunk_bytes_count", _DEFAULT_MAX_CHUNK_BYTES) or _DEFAULT_MAX_CHUNK_BYTES
        )
        return max_len, max_bytes

    def _prepare_fwd(
        self, data: list[types.Datum], loss_fn: str, config: dict[str, float] | None, forward_only: bool, call: str,
        groups: list[list[int]] | None = None,
    ) -> list[_Prepared]:
        """Chunk ``data`` (or use the given index ``groups``) and encode every request, without seq_ids."""
        if groups is None:
            max_len, max_bytes = self._chunk_limits()
            groups = chunk_data(list(range(len(data))), max_len=max_len, max_bytes=max_bytes,
                                size_of=lambda i: estimate_datum_bytes(data[i]))
        out: list[_Prepared] = []
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
                out.append(_Prepared.protobuf(req, label))
            except (ValueError, TypeError, OverflowError) as exc:
                # the encoder names positions inside this request: data[j] is data[group[0] + j] of the call
                msg = _shift_datum_index(str(exc), group[0])
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

        Raises ValueError/TypeError at once (nothing sent) for input the server would refuse: missing loss
        inputs, per-token inputs whose first dimension differs from ``model_input.length``, non-finite
        ``loss_fn_config`` values, chunks that cannot be sent (ImageAssetPointerChunk).

        Returns:
            Future[ForwardBackwardOutput] (chunk results merged).
        """
        _check_loss_fn(loss_fn, "forward")
        config = _check_loss_fn_config(loss_fn_config, "forward")
        data = _check_data(data, "forward", loss_fn)
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
        _check_loss_fn(loss_fn, "forward_backward")
        config = _check_loss_fn_config(loss_fn_config, "forward_backward")
        data = _check_data(data, "forward_backward", loss_fn)
        return self._fwd(data, loss_fn, config, False, "forward_backward")

    def forward_backward_custom(
        self, data: list[types.Datum], loss_fn: Callable[..., Any], *, loss_type_input: str = "logprobs",
        backend: str = "auto",
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

        ``loss_fn`` contract (it runs on a client worker thread):

        * torch backend (``"torch"``, or ``"auto"`` when torch is importable):
          ``loss_fn(data, logprobs: list[torch.Tensor]) -> (loss: torch.Tensor, metrics: dict)``;
          the gradient comes from autograd.
        * numpy backend (``"numpy"``, or ``"auto"`` without torch):
          ``loss_fn(data, logprobs: list[numpy.ndarray]) -> (loss: float, metrics: dict, grads)``
          where ``grads[i]`` is ``dLoss/dlogprobs[i]`` (same shape as ``logprobs[i]``).

        ``loss_type_input`` is the official SDK's parameter; only ``"logprobs"`` exists.
        Each datum must carry ``target_tokens`` (and optionally ``weights``) only. Returns
        Future[ForwardBackwardOutput] whose metrics include the user's metrics and ``loss:sum`` replaced by
        the custom loss value (the surrogate is kept as ``surrogate_loss:sum``).
        """
        where = "forward_backward_custom"
        data = _check_data(data, where)
        if not callable(loss_fn):
            raise TypeError(f"{where}: loss_fn must be callable (data, logprobs) -> (loss, metrics[, grads])")
        if loss_type_input != "logprobs":
            raise ValueError(f"{where}: loss_type_input must be 'logprobs' (the only kind), got {loss_type_input!r}")
        if backend not in ("auto", "torch", "numpy"):
            raise ValueError(f"{where}: backend must be 'auto', 'torch' or 'numpy', got {backend!r}")
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
                raise ValueError(f"{where}: data[{i}] needs loss_fn_inputs['target_tokens']")
            extra = keys - {"target_tokens", "weights"}
            if extra:
                raise ValueError(
                    f"{where}: data[{i}] has unsupported loss_fn_inputs {sorted(extra)}; "
                    "only 'target_tokens' and 'weights' are allowed (pass other values through your loss_fn closure)"
                )
            if "weights" not in keys:
                target = d.loss_fn_inputs["target_tokens"]
                n = math.prod(target.dense_shape())
                inputs = dict(d.loss_fn_inputs)
                inputs["weights"] = types.TensorData(data=[0.0] * n, dtype="float32", shape=target.dense_shape())
                d = types.Datum(model_input=d.model_input, loss_fn_inputs=inputs)
            prepared.append(d)
        _check_data(prepared, where, "cross_entropy")

        # The backward's datums are the same but for dense float32 weights shaped like target_tokens:
        # chunk them now, so their number of requests (and seq_ids) is known at call time.
        max_len, max_bytes = self._chunk_limits()

        def backward_size(i: int) -> int:
            d = prepared[i]
            target = d.loss_fn_inputs["target_tokens"]
            return (sum(_chunk_bytes(c) for c in d.model_input.chunks) + _tensor_bytes(target)
                    + 4 * math.prod(target.dense_shape()))

        bwd_groups = chunk_data(list(range(len(prepared))), max_len=max_len, max_bytes=max_bytes, size_of=backward_size)
        fwd_requests = self._prepare_fwd(prepared, "cross_entropy", None, True, f"{where} forward")
        result: Future[types.ForwardBackwardOutput] = Future()
        # counted as outstanding work, so a clean close() waits for the backward too (ClientClosedError if closed)
        self._runtime.register(result)
        fwd_futures, slots = self._enqueue(fwd_requests, n_slots=len(bwd_groups))
        return _CustomCall(self, prepared, loss_fn, backend, bwd_groups, slots, result).start(gather(fwd_futures))

    # ---- optimizer and checkpoints ----------------------------------------------------------
    def optim_step(self, adam_params: types.AdamParams) -> Future[types.OptimStepResponse]:
        """Apply one Adam step to the accumulated gradients. Returns Future[OptimStepResponse]."""
        if not isinstance(adam_params, types.AdamParams):
            raise TypeError(f"optim_step: adam_params must be a types.AdamParams, got {type(adam_params).__name__}")
        return self._simple(
            "/api/v1/optim_step", "OptimStep", types.OptimStepResponse,
            types.OptimStepRequest(adam_params=adam_params, model_id=self.model_id), "optim_step",
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
            "/api/v1/save_weights", "SaveWeights", types.SaveWeightsResponse,
            types.SaveWeightsRequest(model_id=self.model_id, path=name, ttl_seconds=ttl, overwrite=overwrite),
            f"save_state({name!r})",
        )

    def _load(
        self, path: str, optimizer: bool, where: str, weights_access_token: str | None
    ) -> Future[types.LoadWeightsResponse]:
        _check_tinker_path(path, where)
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
        """Load weights and Adam state from a ``tinker://.../weights/NAME`` checkpoint (see ``load_state``)."""
        return self._load(path, True, "load_state_with_optimizer", weights_access_token)

    def save_weights_for_sampler(
        self, name: str, ttl_seconds: int | None = None
    ) -> Future[types.SaveWeightsForSamplerResponse]:
        """Save sampler weights as ``tinker://RUN/sampler_weights/NAME``. Returns Future[SaveWeightsForSamplerResponse]."""
        _check_name(name, "save_weights_for_sampler")
        ttl = _check_ttl(ttl_seconds, "save_weights_for_sampler")
        fut = self._simple(
            "/api/v1/save_weights_for_sampler", "SaveWeightsForSampler", types.SaveWeightsForSamplerResponseInternal,
            types.SaveWeightsForSamplerRequest(model_id=self.model_id, path=name, ttl_seconds=ttl),
            f"save_weights_for_sampler({name!r})",
        )

        def public(resp: types.SaveWeightsForSamplerResponseInternal) -> types.SaveWeightsForSamplerResponse:
            if not resp.path:
                raise ValueError("the server answered save_weights_for_sampler without a path")
            return types.SaveWeightsForSamplerResponse(path=resp.path)

        return chain(fut, public)

    def save_weights_and_get_sampling_client_future(
        self, name: str | None = None, retry_config: Any = None
    ) -> Future[SamplingClient]:
        """Like ``save_weights_and_get_sampling_client`` but returns Future[SamplingClient]."""
        from .sampling_client import SamplingClient

        if name is not None:
            warnings.warn(
                "save_weights_and_get_sampling_client(name=...) is deprecated and has no effect (as in the "
                "official SDK): the weights are always saved ephemerally; use save_weights_for_sampler(name) "
                "for a named, persistent checkpoint",
                DeprecationWarning,
                stacklevel=3,
            )
        sampling_seq = self._service._next_sampling_session_seq_id()
        unnamed: Future[types.SaveWeightsForSamplerResponseInternal] = self._simple(
            "/api/v1/save_weights_for_sampler", "SaveWeightsForSampler", types.SaveWeightsForSamplerResponseInternal,
            types.SaveWeightsForSamplerRequest(model_id=self.model_id, sampling_session_seq_id=sampling_seq),
            "save_weights_and_get_sampling_client",
        )

        def make(resp: types.SaveWeightsForSamplerResponseInternal) -> SamplingClient:
            if not resp.sampling_session_id:
                raise ValueError("unnamed save_weights_for_sampler returned no sampling_session_id")
            return SamplingClient(self._service, resp.sampling_session_id, base_model=self._base_model)

        return chain(unnamed, make)

    def save_weights_and_get_sampling_client(self, name: str | None = None, retry_config: Any = None) -> SamplingClient:
        """Save the current weights for sampling and return a SamplingClient on them (blocking).

        The weights are ephemeral: bound to a new sampling session, no checkpoint is written. As in the
        official SDK (0.25), ``name`` is deprecated and has no effect (DeprecationWarning); use
        ``save_weights_for_sampler(name)`` + ``create_sampling_client(path)`` for a persistent checkpoint.
        ``retry_config`` is accepted for compatibility and ignored: retries follow the ServiceClient's policy.
        """
        if name is not None:  # warn here so the warning points at the caller's line
            warnings.warn(
                "save_weights_and_get_sampling_client(name=...) is deprecated and has no effect (as in the "
                "official SDK): the weights are always saved ephemerally; use save_weights_for_sampler(name) "
                "for a named, persistent checkpoint",
                DeprecationWarning,
                stacklevel=2,
            )
        return self.save_weights_and_get_sampling_client_future(None, retry_config).result()

    # ---- info ---------------------------------------------------------------------------------
    def get_info(self) -> Future[types.GetInfoResponse]:
        """Model info (base model, LoRA rank, tokenizer id). Returns Future[GetInfoResponse].

        Differs from the official SDK, whose ``get_info()`` blocks and returns the GetInfoResponse: here,
        as for every TrainingClient method, you get a Future; call ``.result()`` on it
        (``tc.get_info().result().model_data``).
        """
        fut: Future[types.GetInfoResponse] = self._runtime.submit_request(
            "POST", "/api/v1/get_info", body=types.GetInfoRequest(model_id=self.model_id),
            response_type=types.GetInfoResponse,
        )

        def remember(info: types.GetInfoResponse) -> types.GetInfoResponse:
            self._info = info
            return info

        return chain(fut, remember)

    def get_tokenizer(self) -> TokenizerLike:
        """The tokenizer of the base model (blocking: get_info on first use, then cached).

        Names reported by the server resolve only to the packaged tokenizer or a hub id, never to a local path.
        """
        from .tokenizer import get_server_tokenizer

        info = self._info or self.get_info().result()
        data = info.model_data
        model_name = getattr(data, "model_name", None) or getattr(info, "model_name", None) or self._base_model
        if not model_name:
            raise ValueError(f"get_info for {self.model_id} returned no model name")
        tokenizer_id = getattr(data, "tokenizer_id", None)
        if tokenizer_id:
            tokenizer_id = tokenizer_id.split(":", 1)[0]
        return get_server_tokenizer(model_name, tokenizer_id)

    def create_sampling_client(self, model_path: str, retry_config: Any = None) -> SamplingClient:
        """A SamplingClient on saved sampler weights (blocking).

        ``retry_config`` is accepted for compatibility with the official SDK and ignored: retries follow
        the ServiceClient's policy (one per ServiceClient).
        """
        return self._service.create_sampling_client(model_path=model_path)


class _CustomCall:
    """The second half of forward_backward_custom: its backward fills lane slots reserved at call time.

    Runs without blocking any thread: the forward's completion (a poller thread) hands the user's loss
    to a worker; the worker encodes the backward and fills the reserved slots. Every path either fills
    every slot or fails the unfilled ones (which poisons the lane with a message naming the cause).
    """

    def __init__(
        self, client: TrainingClient, data: list[types.Datum], loss_fn: Callable[..., Any], backend: str,
        groups: list[list[int]], slots: list[tuple[int, LaneSlot]], result: Future[types.ForwardBackwardOutput],
    ) -> None:
        self.client = client
        self.data = data
        self.loss_fn = loss_fn
        self.backend = backend
        self.groups = groups
        self.slots = slots
        self.result = result

    def start(self, forward: Future[list[types.ForwardBackwardOutput]]) -> Future[types.ForwardBackwardOutput]:
        forward.add_done_callback(self._after_forward)
        return self.result

    def _give_up(self, exc: BaseException, stage: str) -> None:
        seqs = [s for s, _ in self.slots]
        reason = TinkerError(
            f"forward_backward_custom could not send its backward pass (seq_ids {seqs[0]}..{seqs[-1]}, reserved "
            f"when it was called) because {stage} failed with {type(exc).__name__}: {exc}"
        )
        reason.__cause__ = exc
        for _seq, slot in self.slots:
            if not slot.filled:
                slot.fail(reason)
        set_exception(self.result, exc)

    def _after_forward(self, fwd: Future[list[types.ForwardBackwardOutput]]) -> None:
        if fwd.cancelled():
            self._give_up(CancelledError("the forward pass was cancelled"), "its forward pass")
            return
        exc = fwd.exception()
        if exc is not None:
            self._give_up(exc, "its forward pass")
            return
        try:
            self.client._runtime.executor.submit(self._backward, fwd.result())
        except BaseException as err:  # noqa: BLE001 - e.g. ClientClosedError
            self._give_up(err, "scheduling the loss function")

    def _backward(self, parts: list[types.ForwardBackwardOutput]) -> None:
        client = self.client
        try:
            out = combine_forward_backward_outputs(parts)
            new_data, loss_value, user_metrics = _custom_gradients(self.data, out, self.loss_fn, self.backend)
            requests = client._prepare_fwd(new_data, "cross_entropy", None, False,
                                           "forward_backward_custom backward", groups=self.groups)
        except BaseException as exc:  # noqa: BLE001 - the user's loss_fn may raise anything
            self._give_up(exc, "the loss function (or turning its gradient into a request)")
            return
        futures: list[Future[Any]] = []
        try:
            for (seq, slot), p in zip(self.slots, requests):
                futures.append(
                    client._runtime.submit_polled(
                        p.path, None, p.response_type, request_type=p.request_type,
                        lane=cast("SequencedLane", slot),  # a LaneSlot has the lane's submit(fn, label=)
                        body=p.with_seq(seq), content_type=p.content_type, label=f"{p.label} seq_id={seq}",
                    )
                )
        except BaseException as exc:  # noqa: BLE001 - ClientClosedError while closing
            self._give_up(exc, "sending it")
            return

        def merge(results: list[types.ForwardBackwardOutput]) -> types.ForwardBackwardOutput:
            merged = combine_forward_backward_outputs(results)
            metrics = dict(merged.metrics)
            if "loss:sum" in metrics:
                metrics["surrogate_loss:sum"] = metrics["loss:sum"]
            metrics["loss:sum"] = loss_value
            metrics.update(user_metrics)
            return attrs.evolve(merged, metrics=metrics)

        chain(gather(futures), merge).add_done_callback(lambda f: copy_outcome(f, self.result))


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
