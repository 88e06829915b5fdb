"""Protobuf codecs of the ``tinker_public`` messages that ``_proto`` nests: Tensor, TopkLogprobs,
PromptAltTokens and ProvenanceSpan (docs/protocol.rst §15), and the typed-buffer helpers they share.

Numbers cross as raw little-endian bytes referenced from typed buffers (NumberArray), as in ``_proto``.
"""

from __future__ import annotations

import math
from typing import Any

from ._protowire import (
    LEN,
    VARINT,
    ProtoDecodeError,
    Writer,
    bf16_to_f32_bytes,
    expect,
    fields,
    flat_message,
    int32,
    int64,
    repeated_int64,
    string,
    uint32,
)
from .types import PromptAltTokens, PromptProvenanceSpan, SampledProvenanceSpan, TensorData
from .types._numbers import NumberArray, from_wire, to_numbers, wire_bytes
from .types._tensor import trusted_tensor

__all__ = [
    "DTYPE_TO_CODE",
    "DTYPE_TO_ENUM",
    "DT_BFLOAT16",
    "DT_FLOAT32",
    "DT_INT32",
    "DT_INT64",
    "DT_UNSPECIFIED",
    "ENUM_ITEMSIZE",
    "ENUM_TO_DTYPE",
    "decode_prompt_alt_tokens",
    "decode_span",
    "decode_tensor",
    "decode_topk",
    "encode_prompt_alt_tokens",
    "encode_spans",
    "encode_tensor",
    "encode_topk",
    "index_bytes",
    "numbers_of",
    "token_bytes",
    "wire_numbers",
]

_EMPTY = memoryview(b"")

DT_UNSPECIFIED, DT_FLOAT32, DT_INT64, DT_INT32, DT_BFLOAT16 = 0, 1, 2, 3, 4  # the DType enum
DTYPE_TO_ENUM = {"float32": DT_FLOAT32, "int64": DT_INT64}
DTYPE_TO_CODE = {"float32": "f", "int64": "q"}
ENUM_TO_DTYPE = {DT_FLOAT32: "float32", DT_INT64: "int64", DT_INT32: "int64", DT_BFLOAT16: "float32"}
ENUM_ITEMSIZE = {DT_FLOAT32: 4, DT_INT64: 8, DT_INT32: 4, DT_BFLOAT16: 2}
TOPK_FILLER_ID, TOPK_FILLER_LP = 0, -99999.0  # the top-k cell of a missing entry


# --------------------------------------------------------------------------------------------------
# typed buffers <-> wire bytes


def numbers_of(values: Any, code: str) -> NumberArray:
    return values if isinstance(values, NumberArray) else to_numbers(values, code, "value")


def token_bytes(tokens: Any, where: str) -> Any:
    """Token ids as int32 wire bytes; the ids are uint32 in the buffer, so check the top bit (C-level)."""
    raw = wire_bytes(numbers_of(tokens, "I"), "I")
    if not bytes(raw)[3::4].isascii():  # byte 3 of each little-endian item holds bit 31
        raise ValueError(f"{where}: token ids must be < 2**31 to fit the int32 wire format")
    return raw


def index_bytes(values: list[int]) -> Any:
    return wire_bytes(to_numbers(values, "q", "index"), "q")


def wire_numbers(dtype_enum: int, data: memoryview, where: str) -> NumberArray:
    """Trusted: wire bytes of ``dtype_enum`` -> NumberArray in the public dtype (int32/bf16 widened)."""
    try:
        if dtype_enum == DT_FLOAT32:
            return from_wire(data, "f")
        if dtype_enum == DT_INT64:
            return from_wire(data, "q")
        if dtype_enum == DT_INT32:
            return from_wire(data, "i").as_code("q")
        if dtype_enum == DT_BFLOAT16:
            return from_wire(bf16_to_f32_bytes(data), "f")
    except ValueError as exc:
        raise ProtoDecodeError(f"{where}: {exc}") from None
    raise ProtoDecodeError(f"{where}.dtype: unsupported dtype enum {dtype_enum}")


# --------------------------------------------------------------------------------------------------
# Tensor


def encode_tensor(td: TensorData) -> Writer:
    w = Writer()
    code = DTYPE_TO_CODE[td.dtype]
    data: Any = td.data
    if td.sparse_crow_indices is not None and td.sparse_col_indices is not None:
        csr = Writer()
        csr.blob(1, wire_bytes(data, code))
        csr.blob(2, index_bytes(td.sparse_crow_indices))
        csr.blob(3, index_bytes(td.sparse_col_indices))
        w.message(2, csr)
    else:
        w.blob(1, wire_bytes(data, code), always=True)  # oneof member: present even when empty
    w.varint(3, DTYPE_TO_ENUM[td.dtype])
    if td.shape is not None:
        w.packed_int64(4, td.shape)
    return w


def decode_tensor(data: memoryview, where: str) -> TensorData:
    dense: memoryview | None = None
    csr: memoryview | None = None
    dtype_enum = DT_UNSPECIFIED
    shape: list[int] = []
    for f, wt, v in fields(data, where):
        if f == 1:
            expect(wt, LEN, f"{where}.dense")
            dense, csr = v, None
        elif f == 2:
            expect(wt, LEN, f"{where}.sparse_csr")
            csr, dense = v, None
        elif f == 3:
            expect(wt, VARINT, f"{where}.dtype")
            dtype_enum = int32(v)
        elif f == 4:
            repeated_int64(wt, v, f"{where}.shape", shape)
    dtype = ENUM_TO_DTYPE.get(dtype_enum)
    if dtype is None:
        raise ProtoDecodeError(f"{where}.dtype: unsupported dtype enum {dtype_enum}")
    if csr is None:
        values = wire_numbers(dtype_enum, dense if dense is not None else _EMPTY, f"{where}.dense")
        if shape and math.prod(shape) != len(values):
            raise ProtoDecodeError(
                f"{where}: shape {shape} holds {math.prod(shape)} elements but data has {len(values)}"
            )
        return trusted_tensor(values, dtype, shape or None)  # type: ignore[arg-type]
    parts: dict[int, memoryview] = {}
    for f, wt, v in fields(csr, f"{where}.sparse_csr"):
        if f in (1, 2, 3):
            expect(wt, LEN, f"{where}.sparse_csr field {f}")
            parts[f] = v
    values = wire_numbers(dtype_enum, parts.get(1, _EMPTY), f"{where}.sparse_csr.values")
    index = [wire_numbers(DT_INT64, parts.get(f, _EMPTY), f"{where}.sparse_csr.{name}").tolist()
             for f, name in ((2, "crow_indices"), (3, "col_indices"))]
    try:  # CSR indices are cross-checked by the full constructor
        return TensorData(data=values, dtype=dtype, shape=shape, sparse_crow_indices=index[0],  # type: ignore[arg-type]
                          sparse_col_indices=index[1])
    except (TypeError, ValueError) as exc:
        raise ProtoDecodeError(f"{where}: {exc}") from exc


# --------------------------------------------------------------------------------------------------
# TopkLogprobs


def encode_topk(rows: list[list[tuple[int, float]] | None], where: str) -> Writer:
    """Top-k rows as a TopkLogprobs message: ``length x k`` row-major cells, short rows padded with the filler."""
    k = max((len(r) for r in rows if r), default=0)
    ids: list[int] = []
    lps: list[float] = []
    for row in rows:
        row = row or []
        ids.extend(t for t, _ in row)
        lps.extend(lp for _, lp in row)
        pad = k - len(row)
        ids.extend([TOPK_FILLER_ID] * pad)
        lps.extend([TOPK_FILLER_LP] * pad)
    t = Writer()
    t.blob(1, token_bytes(ids, where))
    t.blob(2, wire_bytes(to_numbers(lps, "f", "logprobs"), "f"))
    t.varint(3, k)
    t.varint(4, len(rows))
    return t


_TOPK_FIELDS = {1: ("token_ids", LEN), 2: ("logprobs", LEN), 3: ("k", VARINT), 4: ("length", VARINT)}


def decode_topk(data: memoryview, where: str) -> list[list[tuple[int, float]] | None] | None:
    got = flat_message(data, where, _TOPK_FIELDS)
    ids_raw, lps_raw = got.get("token_ids", _EMPTY), got.get("logprobs", _EMPTY)
    k, n = uint32(got.get("k", 0)), uint32(got.get("length", 0))
    if not (n > 0 and k > 0):
        return None
    ids = wire_numbers(DT_INT32, ids_raw, f"{where}.token_ids").tolist()
    lps = wire_numbers(DT_FLOAT32, lps_raw, f"{where}.logprobs").tolist()
    if len(ids) != n * k or len(lps) != n * k:
        raise ProtoDecodeError(
            f"{where}: expected length x k = {n} x {k} = {n * k} cells, got {len(ids)} ids and {len(lps)} logprobs"
        )
    rows: list[list[tuple[int, float]] | None] = []
    for r in range(n):
        base = r * k
        if ids[base] == TOPK_FILLER_ID and lps[base] == TOPK_FILLER_LP:
            rows.append(None)
            continue
        end = base + k
        while end > base and ids[end - 1] == TOPK_FILLER_ID and lps[end - 1] == TOPK_FILLER_LP:
            end -= 1
        rows.append(list(zip(ids[base:end], lps[base:end])))
    return rows


# --------------------------------------------------------------------------------------------------
# PromptAltTokens (SampleResponse field 6)


def encode_prompt_alt_tokens(alt: PromptAltTokens) -> Writer:
    w = Writer()
    w.message(1, encode_tensor(alt.tokens))
    w.message(2, encode_tensor(alt.logprobs))
    return w


def decode_prompt_alt_tokens(data: memoryview, where: str) -> PromptAltTokens:
    parts: dict[int, TensorData] = {}
    for f, wt, v in fields(data, where):
        if f in (1, 2):
            name = "tokens" if f == 1 else "logprobs"
            expect(wt, LEN, f"{where}.{name}")
            parts[f] = decode_tensor(v, f"{where}.{name}")
    if len(parts) != 2:
        raise ProtoDecodeError(f"{where}: needs both tokens (field 1) and logprobs (field 2)")
    return PromptAltTokens(tokens=parts[1], logprobs=parts[2])


# --------------------------------------------------------------------------------------------------
# ProvenanceSpan (Datum fields 3 and 4)

_SPAN_ARM = {"prompt_tokens": 1, "sampled_tokens": 2}
_SPAN_FIELDS = {1: ("sequence_id", LEN), 2: ("offset", VARINT), 3: ("length", VARINT)}


def encode_spans(w: Writer, field: int, spans: list[Any] | None) -> None:
    """``spans`` as repeated ProvenanceSpan field ``field``: oneof {1 prompt_tokens, 2 sampled_tokens}."""
    for span in spans or ():
        arm = Writer()
        arm.string(1, span.sequence_id)
        arm.varint(2, span.offset)
        arm.varint(3, span.length)
        outer = Writer()
        outer.message(_SPAN_ARM[span.type], arm)
        w.message(field, outer)


def decode_span(data: memoryview, where: str) -> PromptProvenanceSpan | SampledProvenanceSpan:
    kind = 0
    body = _EMPTY
    for f, wt, v in fields(data, where):
        if f in (1, 2):
            expect(wt, LEN, f"{where}.{'prompt_tokens' if f == 1 else 'sampled_tokens'}")
            kind, body = f, v
    if not kind:
        raise ProtoDecodeError(f"{where}: empty ProvenanceSpan (neither prompt_tokens nor sampled_tokens)")
    got = flat_message(body, where, _SPAN_FIELDS)
    sequence_id = string(got.get("sequence_id", _EMPTY), f"{where}.sequence_id")
    offset, length = int64(got.get("offset", 0)), int64(got.get("length", 0))
    try:
        cls = PromptProvenanceSpan if kind == 1 else SampledProvenanceSpan
        return cls(sequence_id=sequence_id, offset=offset, length=length)
    except (TypeError, ValueError) as exc:
        raise ProtoDecodeError(f"{where}: {exc}") from exc
