"""Hand-written protobuf (proto3) wire codec for the ``tinker_public`` messages (docs/protocol.rst §15).

No protobuf dependency: varints, length-delimited fields, packed repeated ints, maps as repeated entry
messages, proto3 default elision and explicit presence for ``optional``. Unknown fields are skipped.

Numeric arrays travel as raw little-endian bytes, and no number is touched one by one in Python:
encoding references each typed buffer (NumberArray) in the body and copies it once (byte-swapped only on
big-endian hosts); decoding builds the types through trusted constructors around zero-copy views of the
body, which become Python lists only when a user reads them. A sample response's sequences go further: the
decoder checks where each one's numbers are and the SampledSequence builds its fields on first read.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

from ._protomsg import (
    DT_INT64,
    DT_UNSPECIFIED,
    DTYPE_TO_CODE,
    DTYPE_TO_ENUM,
    ENUM_ITEMSIZE,
    ENUM_TO_DTYPE,
    decode_prompt_alt_tokens,
    decode_span,
    decode_tensor,
    decode_topk,
    encode_prompt_alt_tokens,
    encode_spans,
    encode_tensor,
    encode_topk,
    index_bytes,
    numbers_of,
    token_bytes,
    wire_numbers,
)
from ._protowire import (
    I64,
    LEN,
    VARINT,
    ProtoDecodeError,
    Writer,
    double,
    double_map_entry,
    expect,
    fields,
    int32,
    int64,
    map_entry,
    message_map_entry,
    read_varint,
    repeated_int64,
    string,
    varint,
)
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
from .types._numbers import BIG_ENDIAN, NumberArray, from_wire, trusted, trusted_builder, wire_bytes
from .types._sampling import WireSpan, decoded_sequences
from .types._tensor import trusted_tensor

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
_EMPTY = memoryview(b"")

_DTYPE_FIELD = {"float32": b"\x18\x01", "int64": b"\x18\x02"}  # Tensor.dtype (field 3, varint)

_STOP_TO_ENUM = {"stop": 0, "length": 1}  # the StopReason enum
_ENUM_TO_STOP = {0: "stop", 1: "length"}


# --------------------------------------------------------------------------------------------------
# Tensor / TensorData


def _tensor_entry(w: Writer, key: str, td: TensorData) -> None:
    """Datum.loss_fn_inputs[key] = td (map field 2). Dense tensors take a short path: three parts, the
    values referenced in place, the same bytes as ``w.map_message(2, key, encode_tensor(td))``."""
    if td.sparse_crow_indices is not None:
        w.map_message(2, key, encode_tensor(td))
        return
    data: Any = td.data
    raw = wire_bytes(data, DTYPE_TO_CODE[td.dtype])
    tail = _DTYPE_FIELD[td.dtype]
    if td.shape is not None and td.shape:
        shape = b"".join([varint(n) for n in td.shape])
        tail += b"\x22" + varint(len(shape)) + shape
    n = len(raw)
    tensor_size = 1 + len(varint(n)) + n + len(tail)
    kb = key.encode("utf-8")
    entry = b"\x0a" + varint(len(kb)) + kb + b"\x12" + varint(tensor_size)
    head = b"\x12" + varint(len(entry) + tensor_size) + entry + b"\x0a" + varint(n)
    w.parts += (head, raw, tail)
    w.size += len(head) + n + len(tail)


# --------------------------------------------------------------------------------------------------
# ForwardBackwardRequest


def _encode_chunk(chunk: Any, where: str) -> Writer:
    inner = Writer()
    outer = Writer()
    if isinstance(chunk, ImageChunk):
        inner.blob(1, chunk.data)
        inner.string(2, chunk.format)
        if chunk.expected_tokens is not None:
            inner.varint(3, chunk.expected_tokens, always=True)
        outer.message(2, inner)
    elif isinstance(chunk, DmelChunk):
        inner.blob(1, chunk.dmel)
        outer.message(3, inner)
    elif isinstance(chunk, ImageAssetPointerChunk):
        raise ValueError(  # noqa: TRY004 - a valid chunk type that this wire format cannot carry
            f"{where}: an ImageAssetPointerChunk cannot be sent in a forward_backward request; "
            "load the image and pass an ImageChunk with its bytes"
        )
    else:
        raise TypeError(f"{where}: unsupported chunk type {type(chunk).__name__}")
    return outer


def _text_chunk(w: Writer, chunk: EncodedTextChunk, where: str) -> None:
    """Datum.model_input += Chunk{encoded_text{tokens}}: one header part, then the tokens in place."""
    raw = token_bytes(chunk.tokens, where)
    n = len(raw)
    inner = (b"\x0a" + varint(n)) if n else b""
    text_size = len(inner) + n
    text = b"\x0a" + varint(text_size) + inner
    head = b"\x0a" + varint(len(text) + n) + text
    w.parts += (head, raw)
    w.size += len(head) + n


def _encode_datum(datum: _Datum, where: str) -> Writer:
    w = Writer()
    for i, chunk in enumerate(datum.model_input.chunks):
        if isinstance(chunk, EncodedTextChunk):
            _text_chunk(w, chunk, f"{where}.model_input.chunks[{i}]")
        else:
            w.message(1, _encode_chunk(chunk, f"{where}.model_input.chunks[{i}]"))
    for key, tensor in datum.loss_fn_inputs.items():
        _tensor_entry(w, key, tensor)
    encode_spans(w, 3, datum.model_input_spans)
    encode_spans(w, 4, datum.loss_fn_input_spans)
    return w


def encode_forward_backward_request(req: ForwardBackwardRequest) -> bytes:
    """Serialise a ForwardBackwardRequest (the 0.25 ``POST /forward_backward`` body).

    Each typed buffer is copied once, straight into the body.
    """
    w = Writer()
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
    return w.getvalue()


def _decode_text_chunk(body: list[tuple[int, int, Any]], where: str) -> EncodedTextChunk:
    tokens = _EMPTY
    for g, gwt, gv in body:
        if g == 1:
            expect(gwt, LEN, f"{where}.encoded_text.tokens")
            tokens = gv
    try:
        return trusted(EncodedTextChunk, tokens=from_wire(tokens, "I"))
    except ValueError as exc:
        raise ProtoDecodeError(f"{where}.encoded_text.tokens: {exc}") from None


def _decode_image_chunk(body: list[tuple[int, int, Any]], where: str) -> ImageChunk:
    img, fmt, expected = b"", "", None
    for g, gwt, gv in body:
        if g == 1:
            expect(gwt, LEN, f"{where}.image.data")
            img = bytes(gv)
        elif g == 2:
            expect(gwt, LEN, f"{where}.image.format")
            fmt = string(gv, f"{where}.image.format")
        elif g == 3:
            expect(gwt, VARINT, f"{where}.image.expected_tokens")
            expected = int32(gv)
    return ImageChunk(data=img, format=fmt, expected_tokens=expected)  # type: ignore[arg-type]


def insert_forward_backward_seq_id(body: bytes, model_id: str, seq_id: int) -> bytes:
    """``body`` (a ForwardBackwardRequest encoded without seq_id) with field 2 ``seq_id`` added.

    The field goes right after field 1 (model_id), which gives the bytes a full encoding would; cheap
    enough to run inside the client's seq_id critical section.
    """
    if not 0 < seq_id < 1 << 31:
        raise ValueError(f"ForwardBackwardRequest.seq_id must be in [1, 2**31), got {seq_id}")
    raw = model_id.encode("utf-8")
    split = 1 + len(varint(len(raw))) + len(raw) if raw else 0  # key 0x0a + length + bytes
    view = memoryview(body)  # the halves are joined through views: the body is copied once, not twice
    return b"".join((view[:split], b"\x10", varint(seq_id), view[split:]))


def _decode_chunk(data: memoryview, where: str) -> Any:
    chunk: Any = None
    for f, wt, v in fields(data, where):
        if f not in (1, 2, 3):
            continue
        expect(wt, LEN, f"{where} field {f}")
        body = fields(v, where)
        if f == 1:
            chunk = _decode_text_chunk(body, where)
        elif f == 2:
            chunk = _decode_image_chunk(body, where)
        else:
            dmel = b""
            for g, gwt, gv in body:
                if g == 1:
                    expect(gwt, LEN, f"{where}.dmel.dmel")
                    dmel = bytes(gv)
            chunk = DmelChunk(dmel=dmel)
    if chunk is None:
        raise ProtoDecodeError(f"{where}: empty Chunk (no encoded_text, image or dmel)")
    return chunk


def _decode_datum(data: memoryview, where: str) -> _Datum:
    chunks: list[Any] = []
    inputs: dict[str, TensorData] = {}
    spans: dict[int, list[Any]] = {}
    for f, wt, v in fields(data, where):
        if f == 1:
            expect(wt, LEN, f"{where}.model_input")
            chunks.append(_decode_chunk(v, f"{where}.model_input[{len(chunks)}]"))
        elif f == 2:
            expect(wt, LEN, f"{where}.loss_fn_inputs")
            key, vv = message_map_entry(v, f"{where}.loss_fn_inputs")
            inputs[key] = decode_tensor(vv, f"{where}.loss_fn_inputs[{key!r}]")
        elif f in (3, 4):
            name = "model_input_spans" if f == 3 else "loss_fn_input_spans"
            expect(wt, LEN, f"{where}.{name}")
            runs = spans.setdefault(f, [])
            runs.append(decode_span(v, f"{where}.{name}[{len(runs)}]"))
    if spans and len(spans) == 1:  # a datum with spans on one side only: the empty side was elided
        spans.setdefault(3, [])
        spans.setdefault(4, [])
    return _Datum(model_input=ModelInput(chunks=chunks), loss_fn_inputs=inputs,
                  model_input_spans=spans.get(3), loss_fn_input_spans=spans.get(4))


def _loss_config_v2_entry(v: memoryview, where: str) -> tuple[str, float | None]:
    """0.38 loss_fn_config_v2: map<string, {double number = 1; string text = 2}>; only numbers are read."""
    k, vwt, vv = map_entry(v, where)
    number = None
    if vwt == LEN:
        for g, gwt, gv in fields(vv, f"{where}[{k!r}]"):
            if g == 1 and gwt == I64:
                number = double(gv)
    return k, number


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
        for f, wt, v in fields(data, where):
            if f == 1:
                expect(wt, LEN, f"{where}.model_id")
                model_id = string(v, f"{where}.model_id")
            elif f == 2:
                expect(wt, VARINT, f"{where}.seq_id")
                seq_id = int32(v)
            elif f == 3:
                expect(wt, LEN, f"{where}.data")
                datums.append(_decode_datum(v, f"{where}.data[{len(datums)}]"))
            elif f == 4:
                expect(wt, LEN, f"{where}.loss_fn")
                loss_fn = string(v, f"{where}.loss_fn")
            elif f == 5:
                expect(wt, LEN, f"{where}.loss_fn_config")
                k, val = double_map_entry(v, f"{where}.loss_fn_config")
                config[k] = val
            elif f == 6:
                expect(wt, VARINT, f"{where}.forward_only")
                forward_only = bool(v)
            elif f == 7:
                expect(wt, LEN, f"{where}.loss_fn_config_v2")
                k, number = _loss_config_v2_entry(v, f"{where}.loss_fn_config_v2")
                if number is not None:
                    config_v2[k] = number
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


def _encode_record(outputs: list[dict[str, TensorData]], type_tag: str) -> Writer:
    w = Writer()
    w.string(1, type_tag)
    for key in sorted(outputs[0]):
        first = outputs[0][key]
        code = DTYPE_TO_CODE[first.dtype]
        parts = [wire_bytes(numbers_of(out[key].dense_data(), code), code) for out in outputs]
        offsets = [0]
        for part in parts:
            offsets.append(offsets[-1] + len(part))
        bt = Writer()
        bt.blob(1, b"".join(parts))
        bt.blob(2, index_bytes(offsets))
        bt.varint(3, DTYPE_TO_ENUM[first.dtype])
        bt.packed_int64(4, first.dense_shape()[1:])
        w.map_message(2, key, bt)
    w.varint(3, len(outputs))
    return w


def encode_forward_backward_output(out: ForwardBackwardOutput) -> bytes:
    """Serialise a ForwardBackwardOutput as ArrayRecords (docs/protocol.rst §15.2), for the local server.

    Consecutive datums with the same keys, dtypes and trailing shapes share one record.
    """
    w = Writer()
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
    return w.getvalue()


def _decode_batched(data: memoryview, where: str) -> tuple[memoryview, list[int], int, list[int]]:
    payload, offsets_raw = _EMPTY, _EMPTY
    dtype_enum = DT_UNSPECIFIED
    trailing: list[int] = []
    for f, wt, v in fields(data, where):
        if f == 1:
            expect(wt, LEN, f"{where}.data")
            payload = v
        elif f == 2:
            expect(wt, LEN, f"{where}.offsets")
            offsets_raw = v
        elif f == 3:
            expect(wt, VARINT, f"{where}.dtype")
            dtype_enum = int32(v)
        elif f == 4:
            repeated_int64(wt, v, f"{where}.trailing_shape", trailing)
    offsets = wire_numbers(DT_INT64, offsets_raw, f"{where}.offsets").tolist()
    return payload, offsets, dtype_enum, trailing


def _check_offsets(offsets: list[int], num_datums: int, nbytes: int, itemsize: int, where: str) -> None:
    if len(offsets) != num_datums + 1:
        raise ProtoDecodeError(f"{where}.offsets: expected {num_datums + 1} byte offsets, got {len(offsets)}")
    if num_datums and (offsets[0] != 0 or offsets[-1] != nbytes):
        raise ProtoDecodeError(
            f"{where}.offsets must start at 0 and end at len(data) = {nbytes}, got {offsets[0]}..{offsets[-1]}"
        )
    for i in range(num_datums):
        if offsets[i + 1] < offsets[i]:
            raise ProtoDecodeError(
                f"{where}.offsets must be non-decreasing (datum {i}: {offsets[i]} > {offsets[i + 1]})"
            )
        if (offsets[i + 1] - offsets[i]) % itemsize:
            raise ProtoDecodeError(f"{where} datum {i}: {offsets[i + 1] - offsets[i]} bytes is not a whole number "
                                   f"of {itemsize}-byte items")


def _decode_record(data: memoryview, where: str) -> list[dict[str, TensorData]]:
    num_datums = 0
    record: dict[str, tuple[memoryview, list[int], int, list[int]]] = {}
    for f, wt, v in fields(data, where):
        if f == 2:
            expect(wt, LEN, f"{where}.fields")
            key, vv = message_map_entry(v, f"{where}.fields")
            record[key] = _decode_batched(vv, f"{where}.fields[{key!r}]")
        elif f == 3:
            expect(wt, VARINT, f"{where}.num_datums")
            num_datums = int64(v)
    if num_datums < 0:
        raise ProtoDecodeError(f"{where}.num_datums must be >= 0, got {num_datums}")
    if num_datums == 0 and record:
        num_datums = max(len(next(iter(record.values()))[1]) - 1, 0)
    outputs: list[dict[str, TensorData]] = [{} for _ in range(num_datums)]
    for key, (payload, offsets, dtype_enum, trailing) in record.items():
        fw = f"{where}.fields[{key!r}]"
        dtype = ENUM_TO_DTYPE.get(dtype_enum)
        if dtype is None:
            raise ProtoDecodeError(f"{fw}.dtype: unsupported dtype enum {dtype_enum}")
        _check_offsets(offsets, num_datums, len(payload), ENUM_ITEMSIZE[dtype_enum], fw)
        if any(t <= 0 for t in trailing):
            raise ProtoDecodeError(f"{fw}.trailing_shape must be positive, got {trailing}")
        inner = math.prod(trailing)
        values = wire_numbers(dtype_enum, payload, fw)  # one view; per-datum slices below share it
        scale = ENUM_ITEMSIZE[dtype_enum]
        for i in range(num_datums):
            start, end = offsets[i] // scale, offsets[i + 1] // scale
            if (end - start) % inner:
                raise ProtoDecodeError(f"{fw} datum {i}: {end - start} elements do not fit trailing_shape {trailing}")
            outputs[i][key] = trusted_tensor(values.view(start, end), dtype, [(end - start) // inner, *trailing])  # type: ignore[arg-type]
    return outputs


def decode_forward_backward_output(data: bytes) -> ForwardBackwardOutput:
    """Parse a ForwardBackwardOutput (poll result of forward/forward_backward).

    Raises:
        ProtoDecodeError: malformed bytes (message names the message/field).
    """
    try:
        return _decode_forward_backward_output(data)
    except ProtoDecodeError:
        raise
    except (TypeError, ValueError) as exc:
        raise ProtoDecodeError(f"ForwardBackwardOutput: {exc}") from exc


def _decode_forward_backward_output(data: bytes) -> ForwardBackwardOutput:
    where = "ForwardBackwardOutput"
    output_type = ""
    outputs: list[dict[str, TensorData]] = []
    metrics: dict[str, float] = {}
    for f, wt, v in fields(data, where):
        if f == 1:
            expect(wt, LEN, f"{where}.loss_fn_output_type")
            output_type = string(v, f"{where}.loss_fn_output_type")
        elif f == 2:
            expect(wt, LEN, f"{where}.loss_fn_outputs")
            outputs.extend(_decode_record(v, f"{where}.loss_fn_outputs[record]"))
        elif f == 3:
            expect(wt, LEN, f"{where}.metrics")
            k, val = double_map_entry(v, f"{where}.metrics")
            metrics[k] = val
    output_type = output_type.rsplit(":", 1)[-1] or "ArrayRecord"
    return trusted(ForwardBackwardOutput, loss_fn_output_type=output_type, loss_fn_outputs=outputs, metrics=metrics)


# --------------------------------------------------------------------------------------------------
# SampleResponse


def _encode_sequence(seq: SampledSequence) -> Writer:
    w = Writer()
    w.varint(1, _STOP_TO_ENUM[seq.stop_reason])
    w.blob(2, token_bytes(seq.tokens, "SampledSequence.tokens"))
    if seq.logprobs is not None:
        w.blob(3, wire_bytes(numbers_of(seq.logprobs, "f"), "f"), always=True)
    if seq.topk_logprobs is not None:
        w.message(4, encode_topk(seq.topk_logprobs, "SampledSequence.topk_logprobs"))
    return w


def encode_sample_response(resp: SampleResponse) -> bytes:
    """Serialise a SampleResponse (docs/protocol.rst §15.1 conventions), for the local server."""
    w = Writer()
    for seq in resp.sequences:
        w.message(1, _encode_sequence(seq))
    if resp.prompt_logprobs is not None:  # None entries are NaN in the buffer already
        w.blob(2, wire_bytes(numbers_of(resp.prompt_logprobs, "f"), "f"), always=True)
    if resp.topk_prompt_logprobs is not None:
        w.message(3, encode_topk(resp.topk_prompt_logprobs, "SampleResponse.topk_prompt_logprobs"))
    w.varint(4, resp.prompt_cache_hit_tokens)
    if resp.target_prompt_logprobs is not None:
        w.message(5, encode_tensor(resp.target_prompt_logprobs))
    if resp.prompt_alt_tokens is not None:
        w.message(6, encode_prompt_alt_tokens(resp.prompt_alt_tokens))
    return w.getvalue()


_new_sequence = trusted_builder(SampledSequence)
_new_response = trusted_builder(SampleResponse)
_STOP_NAMES = ("stop", "length")


def _decode_sequence(data: memoryview, where: str) -> SampledSequence:
    stop_enum = 0
    tokens = logprobs = None
    topk = None
    for f, wt, v in fields(data, where):
        if f == 1:
            expect(wt, VARINT, f"{where}.stop_reason")
            stop_enum = int32(v)
        elif f == 2:
            expect(wt, LEN, f"{where}.tokens")
            tokens = v
        elif f == 3:
            expect(wt, LEN, f"{where}.logprobs")
            logprobs = v
        elif f == 4:
            expect(wt, LEN, f"{where}.topk_sampled_logprobs")
            topk = decode_topk(v, f"{where}.topk_sampled_logprobs")
    stop_reason = _ENUM_TO_STOP.get(stop_enum)
    if stop_reason is None:
        raise ProtoDecodeError(f"{where}.stop_reason: unknown StopReason enum value {stop_enum}")
    if logprobs and len(logprobs) != len(tokens or _EMPTY):
        raise ProtoDecodeError(f"{where}.logprobs: {len(logprobs)} bytes for {len(tokens or _EMPTY)} bytes of tokens "
                               "(one float32 per int32 token)")
    try:
        return _new_sequence(
            stop_reason=stop_reason,
            tokens=from_wire(tokens if tokens is not None else _EMPTY, "I"),
            logprobs=from_wire(logprobs, "f") if logprobs else None,
            topk_logprobs=topk,
        )
    except ValueError as exc:
        raise ProtoDecodeError(f"{where}: {exc}") from None


def _span_at(buf: memoryview, pos: int, limit: int) -> tuple[int, int]:
    """The length-delimited value whose length varint starts at ``pos`` -> (start, end); end -1 when the varint is
    malformed or the value runs past ``limit``. (The hot loops read 1- and 2-byte lengths inline.)"""
    try:
        length, start = read_varint(buf, pos, "")
    except ProtoDecodeError:
        return -1, -1
    return start, (start + length if start + length <= limit else -1)


def _sequence_span(buf: memoryview, p: int, end: int) -> WireSpan | None:
    """The ``sequences[]`` entry in ``buf[p:end]``, in the layout servers write (``[stop_reason] [tokens]
    [logprobs]``, each optional) -> its span; None for any other layout."""
    stop = 0
    if p < end and buf[p] == 0x08:
        stop = buf[p + 1]
        p += 2
    ts = te = p
    ls = le = -1
    for key in (0x12, 0x1A):  # tokens, then logprobs: the same layout; 1- and 2-byte lengths inlined
        if 0 <= p < end and buf[p] == key:
            b = buf[p + 1]
            if b < 0x80:
                start, p = p + 2, p + 2 + b
            elif buf[p + 2] < 0x80:
                start, p = p + 3, p + 3 + ((b & 0x7F) | (buf[p + 2] << 7))
            else:
                start, p = _span_at(buf, p + 1, end)
            if key == 0x12:
                ts, te = start, p
            else:
                ls, le = start, p
    if p != end or stop > 1 or (te - ts) & 3 or (le > ls and le - ls != te - ts):
        return None  # the general reader names the fault (logprobs need one entry per token)
    return _STOP_NAMES[stop], buf, ts, te, ls if le > ls else -1, le, end  # empty logprobs: not requested


def _fast_sample_response(buf: memoryview) -> SampleResponse | None:
    """The common layout (sequences of stop_reason/tokens/logprobs, then prompt logprobs and cache hits) in one
    pass that only finds and checks where the numbers are; the sequences build their lists on first read. None for
    anything else, which the general reader then handles with its checks."""
    n, pos = len(buf), 0
    spans: list[WireSpan] = []
    try:
        while pos < n and buf[pos] == 0x0A:  # sequences[]
            b = buf[pos + 1]
            if b < 0x80:  # 1- and 2-byte lengths (up to 16 KiB) inlined: a call costs more than the read
                start, end = pos + 2, pos + 2 + b
            elif buf[pos + 2] < 0x80:
                start, end = pos + 3, pos + 3 + ((b & 0x7F) | (buf[pos + 2] << 7))
            else:
                start, end = _span_at(buf, pos + 1, n)
            span = _sequence_span(buf, start, end) if 0 < end <= n else None
            if span is None:
                return None
            spans.append(span)
            pos = end
        prompt_logprobs, cache_hits = None, 0
        if pos < n and buf[pos] == 0x12:  # prompt_logprobs
            start, pos = _span_at(buf, pos + 1, n)
            if pos < 0 or (pos - start) % 4:
                return None
            if pos > start:
                prompt_logprobs = NumberArray(buf[start:pos].cast("f"), "f", nan_as_none=True)
        if pos < n and buf[pos] == 0x20:  # prompt_cache_hit_tokens
            cache_hits, pos = read_varint(buf, pos + 1, "")
            cache_hits = max(int32(cache_hits), 0)
    except (IndexError, ProtoDecodeError):  # truncated: the general reader says where
        return None
    if pos != n:
        return None
    return _new_response(sequences=decoded_sequences(spans), prompt_logprobs=prompt_logprobs,
                         prompt_cache_hit_tokens=cache_hits)


def decode_sample_response(data: bytes) -> SampleResponse:
    """Parse a SampleResponse (poll result of asample).

    Raises:
        ProtoDecodeError: malformed bytes or an unknown stop reason (message names the field).
    """
    if not BIG_ENDIAN:
        fast = _fast_sample_response(memoryview(data))
        if fast is not None:
            return fast
    try:
        return _decode_sample_response(data)
    except ProtoDecodeError:
        raise
    except (TypeError, ValueError) as exc:
        raise ProtoDecodeError(f"SampleResponse: {exc}") from exc


def _decode_sample_response(data: bytes) -> SampleResponse:
    where = "SampleResponse"
    sequences: list[SampledSequence] = []
    out: dict[str, Any] = {"prompt_logprobs": None, "topk_prompt_logprobs": None, "prompt_cache_hit_tokens": 0,
                           "target_prompt_logprobs": None, "prompt_alt_tokens": None}
    for f, wt, v in fields(data, where):
        if f == 1:
            expect(wt, LEN, f"{where}.sequences")
            sequences.append(_decode_sequence(v, f"{where}.sequences[{len(sequences)}]"))
        elif f == 2:
            expect(wt, LEN, f"{where}.prompt_logprobs")
            if v:
                out["prompt_logprobs"] = _prompt_logprobs(v, f"{where}.prompt_logprobs")
        elif f == 3:
            expect(wt, LEN, f"{where}.topk_prompt_logprobs")
            out["topk_prompt_logprobs"] = decode_topk(v, f"{where}.topk_prompt_logprobs")
        elif f == 4:
            expect(wt, VARINT, f"{where}.prompt_cache_hit_tokens")
            out["prompt_cache_hit_tokens"] = max(int32(v), 0)
        elif f == 5:
            expect(wt, LEN, f"{where}.target_prompt_logprobs")
            out["target_prompt_logprobs"] = decode_tensor(v, f"{where}.target_prompt_logprobs")
        elif f == 6:
            expect(wt, LEN, f"{where}.prompt_alt_tokens")
            out["prompt_alt_tokens"] = decode_prompt_alt_tokens(v, f"{where}.prompt_alt_tokens")
    return trusted(SampleResponse, sequences=sequences, **out)


def _prompt_logprobs(v: memoryview, where: str) -> NumberArray:
    try:
        return from_wire(v, "f", nan_as_none=True)  # NaN (no logprob) reads as None
    except ValueError as exc:
        raise ProtoDecodeError(f"{where}: {exc}") from None


PROTO_DECODERS: dict[type, Callable[[bytes], Any]] = {
    SampleResponse: decode_sample_response,
    ForwardBackwardOutput: decode_forward_backward_output,
}
