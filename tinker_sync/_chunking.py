"""Splitting forward/backward calls into requests: size estimates, chunking, encoded requests, metric merging."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from . import _serde, types
from ._compress import encode_fwdbwd, explain_refusals
from ._proto import PROTO_CONTENT_TYPE, encode_forward_backward_request, insert_forward_backward_seq_id

if TYPE_CHECKING:
    from ._runtime import Runtime

__all__ = [
    "PreparedRequest",
    "chunk_data",
    "combine_forward_backward_outputs",
    "estimate_datum_bytes",
    "model_input_bytes",
    "reduce_metrics",
    "shift_datum_index",
    "tensor_bytes",
]

logger = logging.getLogger(__name__)

_DEFAULT_MAX_CHUNK_LEN = 1024
_DEFAULT_MAX_CHUNK_BYTES = 5_000_000
_DTYPE_BYTES = {"int64": 8, "float32": 4}
_U64 = (1 << 64) - 1

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


def tensor_bytes(tensor: Any) -> int:
    """Estimated wire size of one TensorData: its values in the declared dtype plus 8 bytes per CSR index."""
    size = len(tensor.data) * _DTYPE_BYTES.get(tensor.dtype, 4)
    for name in ("sparse_crow_indices", "sparse_col_indices"):
        index = getattr(tensor, name, None)
        if index is not None:
            size += 8 * len(index)
    return size


def model_input_bytes(model_input: types.ModelInput) -> int:
    """Estimated wire size of a ModelInput: 4 bytes per text token, the byte length of images and dmel."""
    return sum(_chunk_bytes(c) for c in model_input.chunks)


def estimate_datum_bytes(datum: Any) -> int:
    """Estimated wire size of one Datum, as the 0.25 SDK computes it for chunking.

    Text costs 4 bytes per token, images their byte length, tensors their size in the declared dtype
    plus 8 bytes per CSR index.
    """
    return model_input_bytes(datum.model_input) + sum(tensor_bytes(t) for t in datum.loss_fn_inputs.values())


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


def shift_datum_index(message: str, offset: int) -> str:
    """Rewrite a leading ``data[j]`` (index inside one request) as the index in the whole call."""
    match = re.match(r"data\[(\d+)\]", message)
    if match is None:
        return message
    return f"data[{offset + int(match.group(1))}]{message[match.end():]}"


class PreparedRequest:
    """One request of a call, fully encoded except for its seq_id (added in the critical section).

    Adding the seq_id cannot fail: protobuf bodies get it from the codec
    (``insert_forward_backward_seq_id``), JSON bodies get ``"seq_id"`` as their first key. With
    ``compress`` (the server's ``proto_compress_fwdbwd``) the body is sent zstd-compressed.
    """

    __slots__ = ("body", "compress", "content_type", "label", "model_id", "path", "request_type", "response_type")

    def __init__(
        self, path: str, request_type: str, response_type: type, body: bytes, content_type: str, label: str,
        model_id: str = "", compress: bool = False,
    ) -> None:
        self.path = path
        self.request_type = request_type
        self.response_type = response_type
        self.body = body
        self.content_type = content_type
        self.label = label
        self.model_id = model_id
        self.compress = compress

    @classmethod
    def protobuf(cls, req: types.ForwardBackwardRequest, label: str, *, compress: bool = False) -> PreparedRequest:
        """Encode a ForwardBackwardRequest given without seq_id.

        Raises:
            ValueError/TypeError: the request cannot be encoded (message from the encoder).
        """
        if req.seq_id:
            raise ValueError("PreparedRequest.protobuf expects a request without seq_id")
        return cls("/api/v1/forward_backward", "Forward" if req.forward_only else "ForwardBackward",
                   types.ForwardBackwardOutput, encode_forward_backward_request(req), PROTO_CONTENT_TYPE, label,
                   req.model_id, compress)

    @classmethod
    def json(cls, path: str, request_type: str, response_type: type, req: Any, label: str) -> PreparedRequest:
        """Encode a JSON request object given without seq_id (seq_id None is omitted on the wire)."""
        body = _serde.dumps(req)
        if not (body.startswith(b"{") and len(body) > 2):
            raise ValueError(f"{label}: expected a non-empty JSON object body")
        return cls(path, request_type, response_type, body, "application/json", label)

    def with_seq(self, seq_id: int) -> bytes:
        """The body carrying ``seq_id`` (cheap; never raises for 0 < seq_id < 2**31)."""
        if self.content_type == PROTO_CONTENT_TYPE:
            return insert_forward_backward_seq_id(self.body, self.model_id, seq_id)
        return b'{"seq_id":' + str(seq_id).encode("ascii") + b"," + self.body[1:]

    def submit(self, runtime: Runtime, seq_id: int, lane: Any) -> Future[Any]:
        """Send it as ``seq_id`` on ``lane`` (a SequencedLane or a LaneSlot) and poll its result.

        Raises:
            ClientClosedError: the runtime is closed.
        """
        body = self.with_seq(seq_id)
        headers: dict[str, str] = {}
        if self.compress:
            body, headers = encode_fwdbwd(body, server_asks=True)
        fut: Future[Any] = runtime.submit_polled(
            self.path, None, self.response_type, request_type=self.request_type, lane=lane, body=body,
            content_type=self.content_type, label=f"{self.label} seq_id={seq_id}", headers=headers or None,
        )
        # a body sent uncompressed (no zstandard) that the server refuses fails with an error naming the extra
        return explain_refusals(fut, headers_sent=headers, server_asks=True) if self.compress else fut
