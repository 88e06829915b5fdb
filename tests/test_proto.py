"""Protobuf codec (docs/protocol.rst §15): hand-checked byte vectors, round trips, decoding rules, bad input."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import tinker_sync.types as T
from tests.test_types_strategies import (
    f32,
    floats,
    ints,
    tensor_data,
    texts,
    token_lists,
)
from tinker_sync import _proto, _protowire
from tinker_sync._proto import ProtoDecodeError
from tinker_sync.types._training import LOSS_FNS


def h(text: str) -> bytes:
    """Hex with spaces/newlines -> bytes."""
    return bytes.fromhex("".join(text.split()))


# ---------------------------------------------------------------------------------------------------
# Byte vectors worked out by hand from the protobuf encoding spec (key = field << 3 | wire type).

# SampleResponse { sequences[0] { stop_reason = LENGTH(1); tokens = int32le[1, 300] }; prompt_cache_hit_tokens = 5 }
SAMPLE_VECTOR = h(
    "0a0c"  # field 1 (sequences), LEN, 12 bytes
    "0801"  #   field 1 (stop_reason) varint 1
    "1208"  #   field 2 (tokens) LEN 8
    "01000000"  #     1
    "2c010000"  #     300 = 0x12c
    "2005"  # field 4 (prompt_cache_hit_tokens) varint 5
)

# ForwardBackwardRequest { model_id "m"; seq_id 1; data[0] { model_input[0] { encoded_text { tokens int32le[5] } } };
#                          loss_fn "cross_entropy"; loss_fn_config {"a": 1.0}; forward_only false (elided) }
FWD_BWD_REQUEST_VECTOR = h(
    "0a01 6d"  # field 1 string "m"
    "1001"  # field 2 varint 1
    "1a0a"  # field 3 Datum, 10 bytes
    "0a08"  # Datum.model_input Chunk, 8 bytes
    "0a06"  # Chunk.encoded_text, 6 bytes
    "0a04 05000000"  # EncodedTextChunk.tokens, 4 bytes
    "220d" + b"cross_entropy".hex() +  # field 4 string
    "2a0c"  # field 5 map entry, 12 bytes
    "0a01 61"  # key "a"
    "11 000000000000f03f"  # value double 1.0 (fixed64)
)

# ForwardBackwardOutput { loss_fn_output_type "a:b:TorchLossReturn";
#   loss_fn_outputs[0] ArrayRecord { fields {"logprobs": BatchedTensor { data bf16le[1.0, -2.0];
#       offsets int64le[0, 4]; dtype BFLOAT16(4) }}; num_datums 1 };
#   metrics {"loss:sum": 0.5} }
FWD_BWD_OUTPUT_VECTOR = h(
    "0a13" + b"a:b:TorchLossReturn".hex()
    + "122a"  # ArrayRecord, 42 bytes
    + "1226"  # ArrayRecord.fields entry, 38 bytes
    + "0a08" + b"logprobs".hex()
    + "121a"  # BatchedTensor, 26 bytes
    + "0a04 803f 00c0"  # data: bf16 1.0 = 0x3f80, -2.0 = 0xc000
    + "1210 0000000000000000 0400000000000000"  # offsets (bytes) [0, 4]
    + "1804"  # dtype BFLOAT16
    + "1801"  # num_datums 1
    + "1a13"  # metrics entry, 19 bytes
    + "0a08" + b"loss:sum".hex()
    + "11 000000000000e03f"  # 0.5
)


def test_sample_response_vector_decode_and_encode() -> None:
    expected = T.SampleResponse(
        sequences=[T.SampledSequence(stop_reason="length", tokens=[1, 300], logprobs=None)],
        prompt_cache_hit_tokens=5,
    )
    assert _proto.decode_sample_response(SAMPLE_VECTOR) == expected
    assert _proto.encode_sample_response(expected) == SAMPLE_VECTOR


def test_forward_backward_request_vector() -> None:
    req = T.ForwardBackwardRequest(
        model_id="m",
        seq_id=1,
        data=[T.Datum(model_input=T.ModelInput.from_ints([5]), loss_fn_inputs={})],
        loss_fn="cross_entropy",
        loss_fn_config={"a": 1.0},
    )
    assert _proto.encode_forward_backward_request(req) == FWD_BWD_REQUEST_VECTOR
    assert _proto.decode_forward_backward_request(FWD_BWD_REQUEST_VECTOR) == req


def test_forward_backward_output_vector_bf16_and_type_suffix() -> None:
    out = _proto.decode_forward_backward_output(FWD_BWD_OUTPUT_VECTOR)
    assert out == T.ForwardBackwardOutput(
        loss_fn_output_type="TorchLossReturn",
        loss_fn_outputs=[{"logprobs": T.TensorData(data=[1.0, -2.0], dtype="float32", shape=[2])}],
        metrics={"loss:sum": 0.5},
    )


def test_tensor_vector_int32_widened_shape_and_dense() -> None:
    # Datum { model_input[0] { encoded_text { tokens [] } };
    #         loss_fn_inputs {"t": Tensor { dense int32le[7, -1]; dtype INT32(3); shape [2] (packed) }} }
    datum = h(
        "0a02 0a00"  # Chunk { encoded_text {} }
        "1214"  # map entry, 20 bytes
        "0a01 74"  # key "t"
        "120f"  # Tensor, 15 bytes
        "0a08 07000000 ffffffff"  # dense
        "1803"  # dtype INT32
        "2201 02"  # shape packed [2]
    )
    body = h("0a01 6d") + h("1a") + bytes([len(datum)]) + datum + h("2203") + b"ppo"
    req = _proto.decode_forward_backward_request(body)
    assert req.seq_id is None and req.loss_fn == "ppo" and req.forward_only is False
    assert req.data[0].loss_fn_inputs["t"] == T.TensorData(data=[7, -1], dtype="int64", shape=[2])
    assert req.data[0].model_input.to_ints() == []


def test_unknown_fields_are_skipped() -> None:
    unknown = h(
        "7801"  # field 15 varint 1
        "8101 0102030405060708"  # field 16 fixed64
        "8a01 02 aabb"  # field 17 LEN 2
        "9501 01020304"  # field 18 fixed32
    )
    assert _proto.decode_sample_response(SAMPLE_VECTOR + unknown) == _proto.decode_sample_response(SAMPLE_VECTOR)
    assert _proto.decode_forward_backward_request(unknown + FWD_BWD_REQUEST_VECTOR) == (
        _proto.decode_forward_backward_request(FWD_BWD_REQUEST_VECTOR)
    )
    assert _proto.decode_forward_backward_output(FWD_BWD_OUTPUT_VECTOR + unknown).metrics == {"loss:sum": 0.5}


def test_loss_fn_config_v2_numbers_are_read() -> None:
    # field 7 entry { key "beta"; value LossConfigValue { number 2.0 } } and { key "name"; value { text "x" } }
    v2 = h("3a11 0a04") + b"beta" + h("1209 09 0000000000000040")  # number = field 1, fixed64 -> key 0x09
    v2_text = h("3a0b 0a04") + b"name" + h("1203 1201") + b"x"
    req = _proto.decode_forward_backward_request(FWD_BWD_REQUEST_VECTOR + v2 + v2_text)
    assert req.loss_fn_config == {"a": 1.0, "beta": 2.0}


# ---------------------------------------------------------------------------------------------------
# SampleResponse decoding rules (§15.1)


def test_sample_rules_nan_filler_empty_logprobs() -> None:
    resp = T.SampleResponse(
        sequences=[T.SampledSequence(stop_reason="stop", tokens=[4], logprobs=[-0.5])],
        prompt_logprobs=[None, -1.0, -2.5],
        topk_prompt_logprobs=[None, [(3, -0.5), (9, -1.5)], [(7, -0.25)]],
    )
    data = _proto.encode_sample_response(resp)
    back = _proto.decode_sample_response(data)
    assert back == resp  # NaN -> None; first row all filler -> None; trailing filler trimmed


def test_sample_empty_logprobs_bytes_is_none() -> None:
    # sequences[0] { tokens [] ; logprobs present but empty }
    data = h("0a02 1a00")
    assert _proto.decode_sample_response(data).sequences[0].logprobs is None


def test_sample_unknown_stop_reason_is_error() -> None:
    with pytest.raises(ProtoDecodeError, match="stop_reason"):
        _proto.decode_sample_response(h("0a02 0807"))


def test_sample_topk_needs_k_and_length() -> None:
    # topk present with k = 0 -> None
    data = h("1a04 1800 2002")
    assert _proto.decode_sample_response(data).topk_prompt_logprobs is None


# ---------------------------------------------------------------------------------------------------
# ForwardBackwardOutput rules (§15.2)


def test_output_num_datums_fallback_and_trailing_shape() -> None:
    out = T.ForwardBackwardOutput(
        loss_fn_output_type="ArrayRecord",
        loss_fn_outputs=[
            {"x": T.TensorData(data=[1, 2, 3, 4], dtype="int64", shape=[2, 2])},
            {"x": T.TensorData(data=[5, 6], dtype="int64", shape=[1, 2])},
        ],
        metrics={},
    )
    data = _proto.encode_forward_backward_output(out)
    assert _proto.decode_forward_backward_output(data) == out
    # Rebuild each record without num_datums (field 3) to exercise the fallback to the offsets count.
    w = _protowire.Writer()
    for f, wt, v in _protowire.fields(data, "test"):
        assert wt == 2
        if f == 2:
            inner = _protowire.Writer()
            for g, gwt, gv in _protowire.fields(v, "test"):
                if g != 3:
                    assert gwt == 2
                    inner.blob(g, bytes(gv), always=True)
            w.message(2, inner)
        else:
            w.blob(f, bytes(v), always=True)
    stripped = w.getvalue()
    assert len(stripped) == len(data) - 2
    assert _proto.decode_forward_backward_output(stripped) == out


def test_output_empty_defaults_to_array_record() -> None:
    out = _proto.decode_forward_backward_output(b"")
    assert out.loss_fn_output_type == "ArrayRecord" and out.loss_fn_outputs == [] and out.metrics == {}


def test_output_bad_offsets_are_reported() -> None:
    bad = bytearray(FWD_BWD_OUTPUT_VECTOR)
    i = bytes(bad).index(h("0400000000000000"))
    bad[i] = 6  # end offset 6 != len(data) 4
    with pytest.raises(ProtoDecodeError, match="offsets"):
        _proto.decode_forward_backward_output(bytes(bad))


def test_output_ragged_trailing_shapes_split_records() -> None:
    out = T.ForwardBackwardOutput(
        loss_fn_output_type="ArrayRecord",
        loss_fn_outputs=[
            {"a": T.TensorData(data=[1.0, 2.0], dtype="float32", shape=[1, 2])},
            {"a": T.TensorData(data=[1.0, 2.0, 3.0], dtype="float32", shape=[1, 3])},
            {"b": T.TensorData(data=[], dtype="int64", shape=[0])},
        ],
        metrics={"loss:sum": 1.0},
    )
    assert _proto.decode_forward_backward_output(_proto.encode_forward_backward_output(out)) == out


# ---------------------------------------------------------------------------------------------------
# malformed input and unencodable values


@pytest.mark.parametrize(
    "data, match",
    [
        (h("0a"), "truncated"),
        (h("0a05 0801"), "runs past the end"),
        (h("0b"), "wire type 3"),
        (h("00"), "field number 0"),
        (h("0a02 ffff"), "truncated varint"),
        (h("ffffffffffffffffffff01"), "varint"),
        (h("0801"), "expected a length-delimited"),
        (h("0a03 1201 00"), "whole number"),
    ],
)
def test_malformed_sample_response(data: bytes, match: str) -> None:
    with pytest.raises(ProtoDecodeError, match=match) as info:
        _proto.decode_sample_response(data)
    assert "SampleResponse" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_malformed_request_names_field() -> None:
    with pytest.raises(ProtoDecodeError, match=r"ForwardBackwardRequest.*loss_fn"):
        _proto.decode_forward_backward_request(h("2203") + b"bad")
    with pytest.raises(ProtoDecodeError, match="dtype"):
        _proto.decode_forward_backward_request(h("1a0b 1209 0a01 74 1204 0a00 1809"))


def test_asset_pointer_and_large_tokens_refused() -> None:
    ptr = T.ImageAssetPointerChunk(location="s3://x.png", format="png", expected_tokens=3)
    req = T.ForwardBackwardRequest(
        model_id="m", data=[T.Datum(model_input=T.ModelInput(chunks=[ptr]), loss_fn_inputs={})], loss_fn="ppo"
    )
    with pytest.raises(ValueError, match="ImageAssetPointerChunk"):
        _proto.encode_forward_backward_request(req)
    big = T.ForwardBackwardRequest(
        model_id="m", data=[T.Datum(model_input=T.ModelInput.from_ints([2**31]), loss_fn_inputs={})], loss_fn="ppo"
    )
    with pytest.raises(ValueError, match="int32"):
        _proto.encode_forward_backward_request(big)


def test_decoders_table() -> None:
    assert _proto.PROTO_DECODERS[T.SampleResponse] is _proto.decode_sample_response
    assert _proto.PROTO_DECODERS[T.ForwardBackwardOutput] is _proto.decode_forward_backward_output


# ---------------------------------------------------------------------------------------------------
# round trips

proto_chunks = st.one_of(
    st.builds(T.EncodedTextChunk, tokens=token_lists),
    st.builds(T.ImageChunk, data=st.binary(max_size=16), format=st.sampled_from(["png", "jpeg"]),
              expected_tokens=st.none() | ints),
    st.builds(T.DmelChunk, dmel=st.binary(max_size=16)),
)
proto_datums = st.builds(
    T.Datum,
    model_input=st.builds(T.ModelInput, chunks=st.lists(proto_chunks, max_size=3)),
    loss_fn_inputs=st.dictionaries(texts, tensor_data(), max_size=3),
)
fb_requests = st.builds(
    T.ForwardBackwardRequest,
    model_id=texts,
    data=st.lists(proto_datums, max_size=3),
    loss_fn=st.sampled_from(LOSS_FNS),
    seq_id=st.none() | st.integers(1, 2**31 - 1),
    loss_fn_config=st.none() | st.dictionaries(texts, floats, min_size=1, max_size=3),
    forward_only=st.booleans(),
)


@given(fb_requests)
def test_forward_backward_request_round_trip(req: T.ForwardBackwardRequest) -> None:
    assert _proto.decode_forward_backward_request(_proto.encode_forward_backward_request(req)) == req


@st.composite
def output_tensors(draw: Any) -> T.TensorData:
    dtype = draw(st.sampled_from(["int64", "float32"]))
    elem = st.integers(-(2**63), 2**63 - 1) if dtype == "int64" else f32
    trailing = draw(st.lists(st.integers(1, 3), max_size=2))
    lead = draw(st.integers(0, 4))
    n = lead * math.prod(trailing)
    return T.TensorData(data=draw(st.lists(elem, min_size=n, max_size=n)), dtype=dtype, shape=[lead, *trailing])


fb_outputs = st.builds(
    T.ForwardBackwardOutput,
    loss_fn_output_type=st.from_regex(r"[A-Za-z]{1,12}", fullmatch=True),
    loss_fn_outputs=st.lists(st.dictionaries(texts, output_tensors(), max_size=3), max_size=5),
    metrics=st.dictionaries(texts, floats, max_size=3),
)


@given(fb_outputs)
def test_forward_backward_output_round_trip(out: T.ForwardBackwardOutput) -> None:
    assert _proto.decode_forward_backward_output(_proto.encode_forward_backward_output(out)) == out


@given(st.lists(tensor_data(), min_size=1, max_size=3))
def test_sparse_outputs_come_back_dense(tensors: list[T.TensorData]) -> None:
    out = T.ForwardBackwardOutput(loss_fn_output_type="ArrayRecord", loss_fn_outputs=[{"v": t} for t in tensors],
                                  metrics={})
    back = _proto.decode_forward_backward_output(_proto.encode_forward_backward_output(out))
    for t, b in zip(tensors, back.loss_fn_outputs):
        assert b["v"].tolist() == t.tolist()
        assert b["v"].shape == t.dense_shape()


lp32 = f32.filter(lambda x: x != -99999.0)


@st.composite
def sample_responses(draw: Any) -> T.SampleResponse:
    seqs = []
    for _ in range(draw(st.integers(0, 3))):
        tokens = draw(token_lists)
        logprobs = draw(st.lists(f32, min_size=len(tokens), max_size=len(tokens))) if tokens and draw(
            st.booleans()) else None
        seqs.append(T.SampledSequence(stop_reason=draw(st.sampled_from(["stop", "length"])), tokens=tokens,
                                      logprobs=logprobs))
    prompt_logprobs = draw(st.none() | st.lists(st.none() | f32, min_size=1, max_size=6))
    topk = None
    if draw(st.booleans()):
        rows = draw(st.lists(st.none() | st.lists(st.tuples(st.integers(1, 2**31 - 1), lp32), min_size=1,
                                                  max_size=4), min_size=1, max_size=5))
        if any(rows):
            topk = rows
    return T.SampleResponse(sequences=seqs, prompt_logprobs=prompt_logprobs, topk_prompt_logprobs=topk,
                            prompt_cache_hit_tokens=draw(ints))


@given(sample_responses())
def test_sample_response_round_trip(resp: T.SampleResponse) -> None:
    assert _proto.decode_sample_response(_proto.encode_sample_response(resp)) == resp


@given(st.binary(max_size=64))
def test_random_bytes_never_crash_unexpectedly(data: bytes) -> None:
    for decode in (_proto.decode_sample_response, _proto.decode_forward_backward_output,
                   _proto.decode_forward_backward_request):
        try:
            decode(data)
        except ProtoDecodeError:
            pass
