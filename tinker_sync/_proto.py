"""Hand-written protobuf (proto3) wire codec for the ``tinker_public`` messages of docs/protocol.rst §15.

No protobuf dependency: varints, length-delimited fields, packed repeated ints, maps as repeated entry
messages, proto3 default elision and explicit presence for ``optional``. Numeric arrays travel as raw
little-endian bytes (stdlib ``array``; byte-swapped on big-endian hosts). Unknown fields are skipped.
"""

from __future__ import annotations

import logging
import math
import struct
import sys
from array import array
from collections.abc import Callable
from typing import Any

from .types import Datum as _Datum
from .types import (
    DmelChunk,
    EncodedTextChunk,
    ForwardBackwardOutput,
    ForwardBackwardRequest,
    ImageAssetPointerChunk,
    ImageChunk,
    ModelInput,
    SampledSequence,
    SampleResponse,
    TensorData,
)

__all__ = [
    "PROTO_CONTENT_TYPE",
    "PROTO_DECODERS",
    "ProtoDecodeError",
    "decode_forward_backward_output",
    "decode_forward_backward_request",
    "decode_sample_response",
    "encode_forward_backward_output",
    "encode_forward_backward_request",
    "encode_sample_response",
    "insert_forward_backward_seq_id",
]

logger = logging.getLogger(__name__)

PROTO_CONTENT_TYPE = "application/x-protobuf"

_BIG_ENDIAN = sys.byteorder == "big"
_U64 = (1 << 64) - 1
_U32 = (1 << 32) - 1

# Wire types.
_VARINT, _I64, _LEN, _SGROUP, _EGROUP, _I32 = 0, 1, 2, 3, 4, 5

# DType enum.
_DT_UNSPECIFIED, _DT_FLOAT32, _DT_INT64, _DT_INT32, _DT_BFLOAT16 = 0, 1, 2, 3, 4
_DTYPE_TO_ENUM = {"float32": _DT_FLOAT32, "int64": _DT_INT64}
_ENUM_TO_CODE = {_DT_FLOAT32: "f", _DT_INT64: "q", _DT_INT32: "i", _DT_BFLOAT16: "H"}

# StopReason enum.
_STOP_TO_ENUM = {"stop": 0, "length": 1}
_ENUM_TO_STOP = {0: "stop", 1: "length"}

# Top-k filler cell for missing entries: (token 0, logprob -99999.0).
_TOPK_FILLER_ID = 0
_TOPK_FILLER_LP = -99999.0


class ProtoDecodeError(ValueError):
    """A protobuf body is malformed or does not fit the expected message."""


# --------------------------------------------------------------------------------------------------
# little-endian arrays


def _le_bytes(code: str, values: Any) -> bytes:
    arr = array(code, values)
    if _BIG_ENDIAN:
        arr.byteswap()
    return arr.tobytes()


def _le_array(code: str, data: bytes | memoryview, where: str) -> array[Any]:
    arr = array(code)
    if len(data) % arr.itemsize:
        raise ProtoDecodeError(f"{where}: {len(data)} bytes is not a whole number of {arr.itemsize}-byte items")
    arr.frombytes(data)
    if _BIG_ENDIAN:
        arr.byteswap()
    return arr


def _bf16_to_float32(raw: array[Any]) -> list[float]:
    widened = array("I", (v << 16 for v in raw))
    out = array("f")
    out.frombytes(widened.tobytes())
    return out.tolist()


# --------------------------------------------------------------------------------------------------
# writer


def _varint(value: int) -> bytes:
    if value < 0:
        value &= _U64
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


class _Writer:
    __slots__ = ("buf",)

    def __init__(self) -> None:
        self.buf = bytearray()

    def key(self, field: int, wire_type: int) -> None:
        self.buf += _varint((field << 3) | wire_type)

    def varint(self, field: int, value: int, *, always: bool = False) -> None:
        if value or always:
            self.key(field, _VARINT)
            self.buf += _varint(value)

    def boolean(self, field: int, value: bool) -> None:
        if value:
            self.key(field, _VARINT)
            self.buf.append(1)

    def double(self, field: int, value: float, *, always: bool = False) -> None:
        if value or always:
            self.key(field, _I64)
            self.buf += struct.pack("<d", value)

    def blob(self, field: int, value: bytes | bytearray, *, always: bool = False) -> None:
        if value or always:
            self.key(field, _LEN)
            self.buf += _varint(len(value))
            self.buf += value

    def string(self, field: int, value: str, *, always: bool = False) -> None:
        self.blob(field, value.encode("utf-8"), always=always)

    def message(self, field: int, payload: bytes | bytearray) -> None:
        self.blob(field, payload, always=True)

    def packed_int64(self, field: int, values: list[int]) -> None:
        if values:
            payload = b"".join(_varint(v) for v in values)
            self.blob(field, payload, always=True)

    def map_double(self, field: int, mapping: dict[str, float] | None) -> None:
        for k, v in (mapping or {}).items():
            entry = _Writer()
            entry.string(1, k, always=True)
            entry.double(2, float(v), always=True)
            self.message(field, entry.buf)

    def map_message(self, field: int, mapping: dict[str, bytes]) -> None:
        for k, payload in mapping.items():
            entry = _Writer()
            entry.string(1, k, always=True)
            entry.message(2, payload)
            self.message(field, entry.buf)


# --------------------------------------------------------------------------------------------------
# reader


def _read_varint(buf: memoryview, pos: int, where: str) -> tuple[int, int]:
    result = 0
    shift = 0
    n = len(buf)
    while True:
        if pos >= n:
            raise ProtoDecodeError(f"{where}: truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise ProtoDecodeError(f"{where}: varint longer than 10 bytes")


def _fields(data: bytes | bytearray | memoryview, where: str) -> list[tuple[int, int, Any]]:
    """Split a message into (field number, wire type, value); value is int or a memoryview slice."""
    buf = memoryview(data) if not isinstance(data, memoryview) else data
    out: list[tuple[int, int, Any]] = []
    pos, n = 0, len(buf)
    value: Any
    while pos < n:
        key, pos = _read_varint(buf, pos, where)
        field, wt = key >> 3, key & 7
        if field == 0:
            raise ProtoDecodeError(f"{where}: invalid field number 0")
        if wt == _VARINT:
            value, pos = _read_varint(buf, pos, f"{where} field {field}")
        elif wt == _I64:
            if pos + 8 > n:
                raise ProtoDecodeError(f"{where} field {field}: truncated 64-bit value")
            value, pos = buf[pos : pos + 8], pos + 8
        elif wt == _I32:
            if pos + 4 > n:
                raise ProtoDecodeError(f"{where} field {field}: truncated 32-bit value")
            value, pos = buf[pos : pos + 4], pos + 4
        elif wt == _LEN:
            length, pos = _read_varint(buf, pos, f"{where} field {field}")
            if pos + length > n:
                raise ProtoDecodeError(
                    f"{where} field {field}: length {length} runs past the end of the message ({n - pos} bytes left)"
                )
            value, pos = buf[pos : pos + length], pos + length
        else:
            raise ProtoDecodeError(f"{where} field {field}: unsupported wire type {wt}")
        out.append((field, wt, value))
    return out


def _expect(wt: int, want: int, where: str) -> None:
    if wt != want:
        names = {0: "varint", 1: "64-bit", 2: "length-delimited", 5: "32-bit"}
        raise ProtoDecodeError(f"{where}: expected a {names[want]} field, got wire type {wt}")


def _int32(v: int) -> int:
    v &= _U32
    return v - (1 << 32) if v & 0x80000000 else v


def _int64(v: int) -> int:
    v &= _U64
    return v - (1 << 64) if v & (1 << 63) else v


def _string(value: memoryview, where: str) -> str:
    try:
        return bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        raise ProtoDecodeError(f"{where}: not valid UTF-8") from None


def _repeated_int64(wt: int, value: Any, where: str, out: list[int]) -> None:
    if wt == _VARINT:
        out.append(_int64(value))
    elif wt == _LEN:
        pos = 0
        while pos < len(value):
            v, pos = _read_varint(value, pos, where)
            out.append(_int64(v))
    else:
        raise ProtoDecodeError(f"{where}: expected packed or varint int64 values, got wire type {wt}")


def _map_entry(value: memoryview, where: str) -> tuple[str, int, Any]:
    key = ""
    val: tuple[int, Any] = (-1, None)
    for f, wt, v in _fields(value, where):
        if f == 1:
            _expect(wt, _LEN, f"{where}.key")
            key = _string(v, f"{where}.key")
        elif f == 2:
            val = (wt, v)
    return key, val[0], val[1]


def _double_map_entry(value: memoryview, where: str) -> tuple[str, float]:
    key, wt, v = _map_entry(value, where)
    if wt == -1:
        return key, 0.0
    _expect(wt, _I64, f"{where}[{key!r}]")
    return key, struct.unpack("<d", v)[0]


# --------------------------------------------------------------------------------------------------
# Tensor / TensorData


def _encode_tensor(td: TensorData, where: str) -> bytes:
    w = _Writer()
    code = "q" if td.dtype == "int64" else "f"
    if td.sparse_crow_indices is not None and td.sparse_col_indices is not None:
        csr = _Writer()
        csr.blob(1, _le_bytes(code, td.data))
        csr.blob(2, _le_bytes("q", td.sparse_crow_indices))
        csr.blob(3, _le_bytes("q", td.sparse_col_indices))
        w.message(2, csr.buf)
    else:
        w.blob(1, _le_bytes(code, td.data), always=True)  # oneof member: present even when empty
    w.varint(3, _DTYPE_TO_ENUM[td.dtype])
    if td.shape is not None:
        w.packed_int64(4, td.shape)
    return bytes(w.buf)


def _numbers(code: str, data: memoryview, where: str) -> tuple[list[Any], str]:
    raw = _le_array(code, data, where)
    if code == "H":
        return _bf16_to_float32(raw), "float32"
    if code == "f":
        return raw.tolist(), "float32"
    return raw.tolist(), "int64"  # int64, and int32 widened to int64


def _decode_tensor(data: memoryview, where: str) -> TensorData:
    dense: memoryview | None = None
    csr: memoryview | None = None
    dtype_enum = _DT_UNSPECIFIED
    shape: list[int] = []
    for f, wt, v in _fields(data, where):
        if f == 1:
            _expect(wt, _LEN, f"{where}.dense")
            dense, csr = v, None
        elif f == 2:
            _expect(wt, _LEN, f"{where}.sparse_csr")
            csr, dense = v, None
        elif f == 3:
            _expect(wt, _VARINT, f"{where}.dtype")
            dtype_enum = _int32(v)
        elif f == 4:
            _repeated_int64(wt, v, f"{where}.shape", shape)
    code = _ENUM_TO_CODE.get(dtype_enum)
    if code is None:
        raise ProtoDecodeError(f"{where}.dtype: unsupported dtype enum {dtype_enum}")
    try:
        if csr is not None:
            parts: dict[int, memoryview] = {}
            for f, wt, v in _fields(csr, f"{where}.sparse_csr"):
                if f in (1, 2, 3):
                    _expect(wt, _LEN, f"{where}.sparse_csr field {f}")
                    parts[f] = v
            empty = memoryview(b"")
            values, dtype = _numbers(code, parts.get(1, empty), f"{where}.sparse_csr.values")
            crow = _le_array("q", parts.get(2, empty), f"{where}.sparse_csr.crow_indices").tolist()
            col = _le_array("q", parts.get(3, empty), f"{where}.sparse_csr.col_indices").tolist()
            return TensorData(
                data=values, dtype=dtype, shape=shape, sparse_crow_indices=crow, sparse_col_indices=col  # type: ignore[arg-type]
            )
        values, dtype = _numbers(code, dense if dense is not None else memoryview(b""), f"{where}.dense")
        return TensorData(data=values, dtype=dtype, shape=shape or None)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ProtoDecodeError):
            raise
        raise ProtoDecodeError(f"{where}: {exc}") from exc


# --------------------------------------------------------------------------------------------------
# ForwardBackwardRequest


def _encode_chunk(chunk: Any, where: str) -> bytes:
    inner = _Writer()
    outer = _Writer()
    if isinstance(chunk, EncodedTextChunk):
        try:
            inner.blob(1, _le_bytes("i", chunk.tokens))
        except OverflowError:
            raise ValueError(f"{where}: token ids must be < 2**31 to fit the int32 wire format") from None
        outer.message(1, inner.buf)
    elif isinstance(chunk, ImageChunk):
        inner.blob(1, chunk.data)
        inner.string(2, chunk.format)
        if chunk.expected_tokens is not None:
            inner.varint(3, chunk.expected_tokens, always=True)
        outer.message(2, inner.buf)
    elif isinstance(chunk, DmelChunk):
        inner.blob(1, chunk.dmel)
        outer.message(3, inner.buf)
    elif isinstance(chunk, ImageAssetPointerChunk):
        raise ValueError(  # noqa: TRY004 - a valid chunk type that this wire format cannot carry
            f"{where}: an ImageAssetPointerChunk cannot be sent in a forward_backward request; "
            "load the image and pass an ImageChunk with its bytes"
        )
    else:
        raise TypeError(f"{where}: unsupported chunk type {type(chunk).__name__}")
    return bytes(outer.buf)


def _encode_datum(datum: _Datum, where: str) -> bytes:
    w = _Writer()
    for i, chunk in enumerate(datum.model_input.chunks):
        w.message(1, _encode_chunk(chunk, f"{where}.model_input.chunks[{i}]"))
    w.map_message(2, {k: _encode_tensor(v, f"{where}.loss_fn_inputs[{k!r}]") for k, v in datum.loss_fn_inputs.items()})
    return bytes(w.buf)


def encode_forward_backward_request(req: ForwardBackwardRequest) -> bytes:
    """Serialise a ForwardBackwardRequest (the 0.25 ``POST /forward_backward`` body)."""
    w = _Writer()
    w.string(1, req.model_id)
    if req.seq_id:
        if req.seq_id >= 1 << 31:
            raise ValueError(f"ForwardBackwardRequest.seq_id must fit in int32, got {req.seq_id}")
        w.varint(2, req.seq_id)
    for i, datum in enumerate(req.data):
        w.message(3, _encode_datum(datum, f"data[{i}]"))
    w.string(4, req.loss_fn)
    w.map_double(5, req.loss_fn_config)
    w.boolean(6, req.forward_only)
    return bytes(w.buf)


def insert_forward_backward_seq_id(body: bytes, model_id: str, seq_id: int) -> bytes:
    """``body`` (a ForwardBackwardRequest encoded without seq_id) with field 2 ``seq_id`` added.

    The field goes right after field 1 (model_id), which gives the bytes a full encoding would; cheap
    enough to run inside the client's seq_id critical section.
    """
    if not 0 < seq_id < 1 << 31:
        raise ValueError(f"ForwardBackwardRequest.seq_id must be in [1, 2**31), got {seq_id}")
    raw = model_id.encode("utf-8")
    split = 1 + len(_varint(len(raw))) + len(raw) if raw else 0  # key 0x0a + length + bytes
    return body[:split] + b"\x10" + _varint(seq_id) + body[split:]


def _decode_chunk(data: memoryview, where: str) -> Any:
    chunk: Any = None
    for f, wt, v in _fields(data, where):
        if f not in (1, 2, 3):
            continue
        _expect(wt, _LEN, f"{where} field {f}")
        body = _fields(v, where)
        if f == 1:
            tokens = memoryview(b"")
            for g, gwt, gv in body:
                if g == 1:
                    _expect(gwt, _LEN, f"{where}.encoded_text.tokens")
                    tokens = gv
            ints = _le_array("i", tokens, f"{where}.encoded_text.tokens").tolist()
            chunk = EncodedTextChunk(tokens=ints)
        elif f == 2:
            img, fmt, expected = b"", "", None
            for g, gwt, gv in body:
                if g == 1:
                    _expect(gwt, _LEN, f"{where}.image.data")
                    img = bytes(gv)
                elif g == 2:
                    _expect(gwt, _LEN, f"{where}.image.format")
                    fmt = _string(gv, f"{where}.image.format")
                elif g == 3:
                    _expect(gwt, _VARINT, f"{where}.image.expected_tokens")
                    expected = _int32(gv)
            chunk = ImageChunk(data=img, format=fmt, expected_tokens=expected)  # type: ignore[arg-type]
        else:
            dmel = b""
            for g, gwt, gv in body:
                if g == 1:
                    _expect(gwt, _LEN, f"{where}.dmel.dmel")
                    dmel = bytes(gv)
            chunk = DmelChunk(dmel=dmel)
    if chunk is None:
        raise ProtoDecodeError(f"{where}: empty Chunk (no encoded_text, image or dmel)")
    return chunk


def _decode_datum(data: memoryview, where: str) -> _Datum:
    chunks: list[Any] = []
    inputs: dict[str, TensorData] = {}
    for f, wt, v in _fields(data, where):
        if f == 1:
            _expect(wt, _LEN, f"{where}.model_input")
            chunks.append(_decode_chunk(v, f"{where}.model_input[{len(chunks)}]"))
        elif f == 2:
            _expect(wt, _LEN, f"{where}.loss_fn_inputs")
            key, vwt, vv = _map_entry(v, f"{where}.loss_fn_inputs")
            if vwt == -1:
                vv, vwt = memoryview(b""), _LEN
            _expect(vwt, _LEN, f"{where}.loss_fn_inputs[{key!r}]")
            inputs[key] = _decode_tensor(vv, f"{where}.loss_fn_inputs[{key!r}]")
    return _Datum(model_input=ModelInput(chunks=chunks), loss_fn_inputs=inputs)


def decode_forward_backward_request(data: bytes) -> ForwardBackwardRequest:
    """Parse a ForwardBackwardRequest body (for the local server); seq_id 0 (unset) becomes None.

    Raises:
        ProtoDecodeError: malformed bytes, or contents the types refuse (message names the field).
    """
    where = "ForwardBackwardRequest"
    model_id, seq_id, loss_fn, forward_only = "", 0, "", False
    datums: list[_Datum] = []
    config: dict[str, float] = {}
    config_v2: dict[str, float] = {}
    try:
        for f, wt, v in _fields(data, where):
            if f == 1:
                _expect(wt, _LEN, f"{where}.model_id")
                model_id = _string(v, f"{where}.model_id")
            elif f == 2:
                _expect(wt, _VARINT, f"{where}.seq_id")
                seq_id = _int32(v)
            elif f == 3:
                _expect(wt, _LEN, f"{where}.data")
                datums.append(_decode_datum(v, f"{where}.data[{len(datums)}]"))
            elif f == 4:
                _expect(wt, _LEN, f"{where}.loss_fn")
                loss_fn = _string(v, f"{where}.loss_fn")
            elif f == 5:
                _expect(wt, _LEN, f"{where}.loss_fn_config")
                k, val = _double_map_entry(v, f"{where}.loss_fn_config")
                config[k] = val
            elif f == 6:
                _expect(wt, _VARINT, f"{where}.forward_only")
                forward_only = bool(v)
            elif f == 7:  # 0.38 loss_fn_config_v2: map<string, {double number = 1; string text = 2}>
                _expect(wt, _LEN, f"{where}.loss_fn_config_v2")
                k, vwt, vv = _map_entry(v, f"{where}.loss_fn_config_v2")
                if vwt == _LEN:
                    for g, gwt, gv in _fields(vv, f"{where}.loss_fn_config_v2[{k!r}]"):
                        if g == 1 and gwt == _I64:
                            config_v2[k] = struct.unpack("<d", gv)[0]
        for k, val in config_v2.items():
            config.setdefault(k, val)
        if seq_id < 0:
            raise ProtoDecodeError(f"{where}.seq_id must be >= 0, got {seq_id}")
        return ForwardBackwardRequest(
            model_id=model_id,
            data=datums,
            loss_fn=loss_fn,  # type: ignore[arg-type]
            seq_id=seq_id or None,
            loss_fn_config=config or None,
            forward_only=forward_only,
        )
    except ProtoDecodeError:
        raise
    except (TypeError, ValueError) as exc:
        raise ProtoDecodeError(f"{where}: {exc}") from exc


# --------------------------------------------------------------------------------------------------
# ForwardBackwardOutput


def _record_signature(out: dict[str, TensorData]) -> tuple[Any, ...]:
    return tuple((k, td.dtype, tuple(td.dense_shape()[1:])) for k, td in sorted(out.items()))


def _encode_record(outputs: list[dict[str, TensorData]], type_tag: str) -> bytes:
    w = _Writer()
    w.string(1, type_tag)
    fields: dict[str, bytes] = {}
    for key in sorted(outputs[0]):
        first = outputs[0][key]
        code = "q" if first.dtype == "int64" else "f"
        itemsize = 8 if code == "q" else 4
        data = bytearray()
        offsets = [0]
        for out in outputs:
            values = out[key].dense_data()
            data += _le_bytes(code, values)
            offsets.append(offsets[-1] + len(values) * itemsize)
        bt = _Writer()
        bt.blob(1, data)
        bt.blob(2, _le_bytes("q", offsets))
        bt.varint(3, _DTYPE_TO_ENUM[first.dtype])
        bt.packed_int64(4, first.dense_shape()[1:])
        fields[key] = bytes(bt.buf)
    w.map_message(2, fields)
    w.varint(3, len(outputs))
    return bytes(w.buf)


def encode_forward_backward_output(out: ForwardBackwardOutput) -> bytes:
    """Serialise a ForwardBackwardOutput as ArrayRecords (docs/protocol.rst §15.2), for the local server.

    Consecutive datums with the same keys, dtypes and trailing shapes share one record.
    """
    w = _Writer()
    w.string(1, out.loss_fn_output_type)
    group: list[dict[str, TensorData]] = []
    signature: tuple[Any, ...] | None = None
    for item in out.loss_fn_outputs:
        sig = _record_signature(item)
        if group and sig != signature:
            w.message(2, _encode_record(group, "ArrayRecord"))
            group = []
        group.append(item)
        signature = sig
    if group:
        w.message(2, _encode_record(group, "ArrayRecord"))
    w.map_double(3, out.metrics)
    return bytes(w.buf)


def _decode_batched(data: memoryview, where: str) -> tuple[memoryview, list[int], int, list[int]]:
    payload, offsets_raw = memoryview(b""), memoryview(b"")
    dtype_enum = _DT_UNSPECIFIED
    trailing: list[int] = []
    for f, wt, v in _fields(data, where):
        if f == 1:
            _expect(wt, _LEN, f"{where}.data")
            payload = v
        elif f == 2:
            _expect(wt, _LEN, f"{where}.offsets")
            offsets_raw = v
        elif f == 3:
            _expect(wt, _VARINT, f"{where}.dtype")
            dtype_enum = _int32(v)
        elif f == 4:
            _repeated_int64(wt, v, f"{where}.trailing_shape", trailing)
    offsets = _le_array("q", offsets_raw, f"{where}.offsets").tolist()
    return payload, offsets, dtype_enum, trailing


def _decode_record(data: memoryview, where: str) -> list[dict[str, TensorData]]:
    num_datums = 0
    fields: dict[str, tuple[memoryview, list[int], int, list[int]]] = {}
    for f, wt, v in _fields(data, where):
        if f == 2:
            _expect(wt, _LEN, f"{where}.fields")
            key, vwt, vv = _map_entry(v, f"{where}.fields")
            if vwt == -1:
                vv, vwt = memoryview(b""), _LEN
            _expect(vwt, _LEN, f"{where}.fields[{key!r}]")
            fields[key] = _decode_batched(vv, f"{where}.fields[{key!r}]")
        elif f == 3:
            _expect(wt, _VARINT, f"{where}.num_datums")
            num_datums = _int64(v)
    if num_datums < 0:
        raise ProtoDecodeError(f"{where}.num_datums must be >= 0, got {num_datums}")
    if num_datums == 0 and fields:
        num_datums = max(len(next(iter(fields.values()))[1]) - 1, 0)
    outputs: list[dict[str, TensorData]] = [{} for _ in range(num_datums)]
    for key, (payload, offsets, dtype_enum, trailing) in fields.items():
        fw = f"{where}.fields[{key!r}]"
        code = _ENUM_TO_CODE.get(dtype_enum)
        if code is None:
            raise ProtoDecodeError(f"{fw}.dtype: unsupported dtype enum {dtype_enum}")
        if len(offsets) != num_datums + 1:
            raise ProtoDecodeError(f"{fw}.offsets: expected {num_datums + 1} byte offsets, got {len(offsets)}")
        if num_datums and (offsets[0] != 0 or offsets[-1] != len(payload)):
            raise ProtoDecodeError(
                f"{fw}.offsets must start at 0 and end at len(data) = {len(payload)}, got {offsets[0]}..{offsets[-1]}"
            )
        if any(t <= 0 for t in trailing):
            raise ProtoDecodeError(f"{fw}.trailing_shape must be positive, got {trailing}")
        inner = math.prod(trailing)
        for i in range(num_datums):
            start, end = offsets[i], offsets[i + 1]
            if end < start:
                raise ProtoDecodeError(f"{fw}.offsets must be non-decreasing (datum {i}: {start} > {end})")
            values, dtype = _numbers(code, payload[start:end], f"{fw} datum {i}")
            if len(values) % inner:
                raise ProtoDecodeError(
                    f"{fw} datum {i}: {len(values)} elements do not fit trailing_shape {trailing}"
                )
            outputs[i][key] = TensorData(data=values, dtype=dtype, shape=[len(values) // inner, *trailing])  # type: ignore[arg-type]
    return outputs


def decode_forward_backward_output(data: bytes) -> ForwardBackwardOutput:
    """Parse a ForwardBackwardOutput (poll result of forward/forward_backward).

    Raises:
        ProtoDecodeError: malformed bytes (message names the message/field).
    """
    where = "ForwardBackwardOutput"
    output_type = ""
    outputs: list[dict[str, TensorData]] = []
    metrics: dict[str, float] = {}
    try:
        for f, wt, v in _fields(data, where):
            if f == 1:
                _expect(wt, _LEN, f"{where}.loss_fn_output_type")
                output_type = _string(v, f"{where}.loss_fn_output_type")
            elif f == 2:
                _expect(wt, _LEN, f"{where}.loss_fn_outputs")
                outputs.extend(_decode_record(v, f"{where}.loss_fn_outputs[record]"))
            elif f == 3:
                _expect(wt, _LEN, f"{where}.metrics")
                k, val = _double_map_entry(v, f"{where}.metrics")
                metrics[k] = val
        output_type = output_type.rsplit(":", 1)[-1] or "ArrayRecord"
        return ForwardBackwardOutput(loss_fn_output_type=output_type, loss_fn_outputs=outputs, metrics=metrics)
    except ProtoDecodeError:
        raise
    except (TypeError, ValueError) as exc:
        raise ProtoDecodeError(f"{where}: {exc}") from exc


# --------------------------------------------------------------------------------------------------
# SampleResponse


def _encode_sequence(seq: SampledSequence) -> bytes:
    w = _Writer()
    w.varint(1, _STOP_TO_ENUM[seq.stop_reason])
    w.blob(2, _le_bytes("i", seq.tokens))
    if seq.logprobs is not None:
        w.blob(3, _le_bytes("f", seq.logprobs), always=True)
    return bytes(w.buf)


def encode_sample_response(resp: SampleResponse) -> bytes:
    """Serialise a SampleResponse (docs/protocol.rst §15.1 conventions), for the local server."""
    w = _Writer()
    for seq in resp.sequences:
        w.message(1, _encode_sequence(seq))
    if resp.prompt_logprobs is not None:
        nan = float("nan")
        w.blob(2, _le_bytes("f", [nan if x is None else x for x in resp.prompt_logprobs]), always=True)
    if resp.topk_prompt_logprobs is not None:
        rows = resp.topk_prompt_logprobs
        k = max((len(r) for r in rows if r), default=0)
        ids: list[int] = []
        lps: list[float] = []
        for row in rows:
            row = row or []
            ids.extend(t for t, _ in row)
            lps.extend(lp for _, lp in row)
            pad = k - len(row)
            ids.extend([_TOPK_FILLER_ID] * pad)
            lps.extend([_TOPK_FILLER_LP] * pad)
        t = _Writer()
        t.blob(1, _le_bytes("i", ids))
        t.blob(2, _le_bytes("f", lps))
        t.varint(3, k)
        t.varint(4, len(rows))
        w.message(3, t.buf)
    w.varint(4, resp.prompt_cache_hit_tokens)
    return bytes(w.buf)


def _decode_sequence(data: memoryview, where: str) -> SampledSequence:
    stop_enum = 0
    tokens: list[int] = []
    logprobs: list[float] | None = None
    for f, wt, v in _fields(data, where):
        if f == 1:
            _expect(wt, _VARINT, f"{where}.stop_reason")
            stop_enum = _int32(v)
        elif f == 2:
            _expect(wt, _LEN, f"{where}.tokens")
            tokens = _le_array("i", v, f"{where}.tokens").tolist()
        elif f == 3:
            _expect(wt, _LEN, f"{where}.logprobs")
            logprobs = _le_array("f", v, f"{where}.logprobs").tolist() or None
    stop_reason = _ENUM_TO_STOP.get(stop_enum)
    if stop_reason is None:
        raise ProtoDecodeError(f"{where}.stop_reason: unknown StopReason enum value {stop_enum}")
    return SampledSequence(stop_reason=stop_reason, tokens=tokens, logprobs=logprobs)  # type: ignore[arg-type]


def _decode_topk(data: memoryview, where: str) -> list[list[tuple[int, float]] | None] | None:
    ids_raw, lps_raw = memoryview(b""), memoryview(b"")
    k = n = 0
    for f, wt, v in _fields(data, where):
        if f == 1:
            _expect(wt, _LEN, f"{where}.token_ids")
            ids_raw = v
        elif f == 2:
            _expect(wt, _LEN, f"{where}.logprobs")
            lps_raw = v
        elif f == 3:
            _expect(wt, _VARINT, f"{where}.k")
            k = v & _U32
        elif f == 4:
            _expect(wt, _VARINT, f"{where}.prompt_length")
            n = v & _U32
    if not (n > 0 and k > 0):
        return None
    ids = _le_array("i", ids_raw, f"{where}.token_ids").tolist()
    lps = _le_array("f", lps_raw, f"{where}.logprobs").tolist()
    if len(ids) != n * k or len(lps) != n * k:
        raise ProtoDecodeError(
            f"{where}: expected prompt_length x k = {n} x {k} = {n * k} cells, got {len(ids)} ids and {len(lps)} logprobs"
        )
    rows: list[list[tuple[int, float]] | None] = []
    for r in range(n):
        base = r * k
        if ids[base] == _TOPK_FILLER_ID and lps[base] == _TOPK_FILLER_LP:
            rows.append(None)
            continue
        end = base + k
        while end > base and ids[end - 1] == _TOPK_FILLER_ID and lps[end - 1] == _TOPK_FILLER_LP:
            end -= 1
        rows.append(list(zip(ids[base:end], lps[base:end])))
    return rows


def decode_sample_response(data: bytes) -> SampleResponse:
    """Parse a SampleResponse (poll result of asample).

    Raises:
        ProtoDecodeError: malformed bytes or an unknown stop reason (message names the field).
    """
    where = "SampleResponse"
    sequences: list[SampledSequence] = []
    prompt_logprobs: list[float | None] | None = None
    topk: list[list[tuple[int, float]] | None] | None = None
    cache_hits = 0
    try:
        for f, wt, v in _fields(data, where):
            if f == 1:
                _expect(wt, _LEN, f"{where}.sequences")
                sequences.append(_decode_sequence(v, f"{where}.sequences[{len(sequences)}]"))
            elif f == 2:
                _expect(wt, _LEN, f"{where}.prompt_logprobs")
                values = _le_array("f", v, f"{where}.prompt_logprobs").tolist()
                prompt_logprobs = [None if math.isnan(x) else x for x in values] if values else None
            elif f == 3:
                _expect(wt, _LEN, f"{where}.topk_prompt_logprobs")
                topk = _decode_topk(v, f"{where}.topk_prompt_logprobs")
            elif f == 4:
                _expect(wt, _VARINT, f"{where}.prompt_cache_hit_tokens")
                cache_hits = _int32(v)
        return SampleResponse(
            sequences=sequences,
            prompt_logprobs=prompt_logprobs,
            topk_prompt_logprobs=topk,
            prompt_cache_hit_tokens=max(cache_hits, 0),
        )
    except ProtoDecodeError:
        raise
    except (TypeError, ValueError) as exc:
        raise ProtoDecodeError(f"{where}: {exc}") from exc


PROTO_DECODERS: dict[type, Callable[[bytes], Any]] = {
    SampleResponse: decode_sample_response,
    ForwardBackwardOutput: decode_forward_backward_output,
}
