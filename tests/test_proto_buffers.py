"""Typed buffers (NumberArray) behind tokens, tensors and logprobs: list behaviour, validation, zero-copy
numpy views, trusted decoding and byte-order-safe encoding."""

from __future__ import annotations

import copy
import json
import math
import pickle
import struct
from typing import Any

import pytest

import tinker_sync.types as T
from tinker_sync import _proto, _serde
from tinker_sync.types import _numbers
from tinker_sync.types._numbers import NumberArray, from_wire, to_numbers, wire_bytes

np = pytest.importorskip("numpy")


def _request(tokens: Any, targets: Any, weights: Any) -> T.ForwardBackwardRequest:
    datum = T.Datum(model_input=T.ModelInput.from_ints(tokens),
                    loss_fn_inputs={"target_tokens": T.TensorData(data=targets, dtype="int64", shape=[len(targets)]),
                                    "weights": T.TensorData(data=weights, dtype="float32", shape=[len(weights)])})
    return T.ForwardBackwardRequest(model_id="m", data=[datum], loss_fn="cross_entropy", seq_id=3)


# --- list behaviour ---------------------------------------------------------------------------------


def test_tokens_read_like_the_list() -> None:
    tokens = T.EncodedTextChunk(tokens=[5, 7, 9, 11]).tokens
    assert isinstance(tokens, NumberArray)
    assert tokens == [5, 7, 9, 11] and [5, 7, 9, 11] == tokens and tokens != [5, 7, 9] and tokens != (5, 7, 9, 11)
    assert len(tokens) == 4 and tokens[0] == 5 and tokens[-1] == 11 and type(tokens[1]) is int
    assert tokens[1:3] == [7, 9] and type(tokens[1:3]) is list and tokens[::-1] == [11, 9, 7, 5]
    assert list(tokens) == [5, 7, 9, 11] and sorted(tokens, reverse=True) == [11, 9, 7, 5]
    assert 9 in tokens and 10 not in tokens and tokens.index(9) == 2 and tokens.count(7) == 1
    assert tokens + [1] == [5, 7, 9, 11, 1] and [1] + tokens == [1, 5, 7, 9, 11]
    assert repr(tokens) == "[5, 7, 9, 11]" and str(T.EncodedTextChunk(tokens=[1])) == (
        "EncodedTextChunk(tokens=[1], type='encoded_text')")
    assert not T.EncodedTextChunk(tokens=[]).tokens and tokens
    with pytest.raises(IndexError):
        tokens[4]
    with pytest.raises(TypeError):
        hash(tokens)
    with pytest.raises(AttributeError):
        tokens.append(3)  # type: ignore[attr-defined]  # read-only: the buffer was validated once


def test_float32_data_reads_as_rounded_python_floats() -> None:
    td = T.TensorData(data=[0.1, 1, -2.5], dtype="float32")
    assert td.data == [struct.unpack("f", struct.pack("f", 0.1))[0], 1.0, -2.5]
    assert all(type(x) is float for x in td.data) and td.tolist() == list(td.data)
    assert T.TensorData(data=[1, 2, 3, 4], dtype="int64", shape=[2, 2]).tolist() == [[1, 2], [3, 4]]


def test_json_pickle_copy_and_equality_of_the_types() -> None:
    req = _request([1, 2, 3], [2, 3, 0], [1.0, 0.5, 0.0])
    data = _serde.unstructure(req)
    datum = data["forward_backward_input"]["data"][0]
    chunk = datum["model_input"]["chunks"][0]
    assert chunk == {"tokens": [1, 2, 3], "type": "encoded_text"} and type(chunk["tokens"]) is list
    assert type(datum["loss_fn_inputs"]["weights"]["data"]) is list
    wire = json.loads(_serde.dumps(req))["forward_backward_input"]["data"][0]
    assert wire["loss_fn_inputs"]["weights"]["data"] == [1.0, 0.5, 0.0]
    assert _serde.loads(_serde.dumps(req), T.ForwardBackwardRequest) == req
    assert pickle.loads(pickle.dumps(req)) == req and copy.deepcopy(req) == req and copy.copy(req) == req
    assert req.data[0].loss_fn_inputs["target_tokens"] != T.TensorData(data=[2, 3, 1], dtype="int64", shape=[3])


def test_prompt_logprobs_keep_none_entries() -> None:
    resp = T.SampleResponse(sequences=[], prompt_logprobs=[None, -1.5, -0.25])
    plp = resp.prompt_logprobs
    assert plp == [None, -1.5, -0.25] and plp[0] is None and plp[1] == -1.5 and list(plp) == [None, -1.5, -0.25]
    assert plp[:2] == [None, -1.5] and repr(plp) == "[None, -1.5, -0.25]"
    assert math.isnan(np.asarray(plp)[0])  # numpy sees the NaN the wire carries
    back = _proto.decode_sample_response(_proto.encode_sample_response(resp))
    assert back.prompt_logprobs == [None, -1.5, -0.25]
    assert json.loads(_serde.dumps(back))["prompt_logprobs"] == [None, -1.5, -0.25]
    with pytest.raises(TypeError, match=r"prompt_logprobs must be a list of float or None; item 1 is 'x'"):
        T.SampleResponse(sequences=[], prompt_logprobs=[None, "x"])


# --- validation at construction ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "build, error, match",
    [
        (lambda: T.EncodedTextChunk(tokens=[1, "a"]), TypeError, "non-negative ints; item 1 is 'a'"),
        (lambda: T.EncodedTextChunk(tokens=[1, -1]), ValueError, "item 1 is -1"),
        (lambda: T.EncodedTextChunk(tokens=[2**32]), ValueError, "out of range"),
        (lambda: T.EncodedTextChunk(tokens=[0.5]), TypeError, "item 0 is 0.5"),
        (lambda: T.EncodedTextChunk(tokens=b"\x01\x02"), TypeError, "got bytes"),
        (lambda: T.TensorData(data=[1, 2.5], dtype="int64"), TypeError, "item 1 is 2.5"),
        (lambda: T.TensorData(data=[2**63], dtype="int64"), ValueError, "out of range"),
        (lambda: T.TensorData(data=[1.0, "x"], dtype="float32"), TypeError, "numbers; item 1 is 'x'"),
        (lambda: T.TensorData(data=[1.0, None], dtype="float32"), TypeError, "item 1 is None"),
        (lambda: T.TensorData(data=np.array([1.5]), dtype="int64"), TypeError, "numpy array of float64"),
        (lambda: T.TensorData(data=np.array(["a"]), dtype="float32"), TypeError, "numpy array of <U1"),
        (lambda: T.EncodedTextChunk(tokens=np.array([3, -1])), ValueError, "values range -1..3"),
        (lambda: T.SampledSequence(stop_reason="stop", tokens=[1], logprobs=["a"]), TypeError, "item 0 is 'a'"),
    ],
)
def test_bad_values_are_refused_naming_the_item(build: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        build()


def test_ints_tuples_generators_bools_and_numpy_scalars_are_accepted() -> None:
    assert T.EncodedTextChunk(tokens=(1, True, np.int64(3))).tokens == [1, 1, 3]
    assert T.TensorData(data=(x for x in [-(2**63), 2**63 - 1]), dtype="int64").data == [-(2**63), 2**63 - 1]
    assert T.TensorData(data=[np.float64(0.5), 2], dtype="float32").data == [0.5, 2.0]
    same = T.TensorData(data=[1, 2], dtype="int64")
    assert T.TensorData(data=same.data, dtype="float32").data == [1.0, 2.0]  # from another buffer, converted


# --- numpy / torch without copies -------------------------------------------------------------------


def test_numpy_input_of_the_right_dtype_is_shared_not_copied() -> None:
    weights = np.linspace(0, 1, 6, dtype=np.float32).reshape(2, 3)
    td = T.TensorData.from_numpy(weights)
    assert td.shape == [2, 3] and np.shares_memory(td.to_numpy(), weights)
    assert td.to_numpy().shape == (2, 3) and td.data == weights.ravel().tolist()
    targets = np.arange(5, dtype=np.int64)
    direct = T.TensorData(data=targets, dtype="int64")
    assert np.shares_memory(direct.to_numpy(), targets) and direct.shape is None
    assert T.TensorData(data=np.ones((2, 2), dtype=np.float32), dtype="float32").shape == [2, 2]  # inferred
    converted = T.TensorData.from_numpy(np.arange(4, dtype=np.float64)[::2])  # strided float64: one copy
    assert converted.dtype == "float32" and converted.data == [0.0, 2.0]
    ids = np.array([7, 8, 9], dtype=np.uint32)
    chunk = T.EncodedTextChunk(tokens=ids)
    assert np.shares_memory(chunk.tokens_np, ids) and chunk.tokens_np.dtype == np.int32
    assert chunk.tokens == [7, 8, 9] and np.shares_memory(chunk.tokens_np, chunk.tokens_np)


def test_lists_become_one_buffer_that_numpy_views() -> None:
    td = T.TensorData(data=[1.0, 2.0, 3.0], dtype="float32", shape=[3])
    a, b = td.to_numpy(), td.to_numpy()
    assert np.shares_memory(a, b) and a.dtype == np.float32 and a.flags.writeable
    assert np.asarray(td.data).dtype == np.float32 and np.asarray(td.data, dtype=np.float64).dtype == np.float64
    assert td.data.nbytes == 12 and td.nbytes == 12 and T.EncodedTextChunk(tokens=[1, 2]).nbytes == 8
    csr = T.TensorData(data=[5], dtype="int64", shape=[2, 2], sparse_crow_indices=[0, 1, 1], sparse_col_indices=[1])
    assert csr.nbytes == 8 + 8 * 4 and csr.to_numpy().tolist() == [[0, 5], [0, 0]]


def test_torch_tensors_are_shared() -> None:
    torch = pytest.importorskip("torch")
    t = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    td = T.TensorData.from_torch(t)
    assert td.shape == [2, 3] and np.shares_memory(td.to_numpy(), t.numpy())
    assert td.to_torch().data_ptr() == t.data_ptr()
    assert T.TensorData.from_torch(torch.tensor([1, 2], dtype=torch.int32)).data == [1, 2]


# --- decoding: trusted views of the body ------------------------------------------------------------


def test_decoded_arrays_are_views_of_the_response_body() -> None:
    out = T.ForwardBackwardOutput(loss_fn_output_type="ArrayRecord", metrics={"loss:sum": 1.0}, loss_fn_outputs=[
        {"logprobs": T.TensorData(data=[-0.5, -1.0], dtype="float32", shape=[2])},
        {"logprobs": T.TensorData(data=[-2.0], dtype="float32", shape=[1])},
    ])
    body = _proto.encode_forward_backward_output(out)
    back = _proto.decode_forward_backward_output(body)
    assert back == out
    wire = np.frombuffer(body, dtype=np.uint8)
    views = [o["logprobs"].to_numpy() for o in back.loss_fn_outputs]
    assert all(np.shares_memory(v, wire) and not v.flags.writeable for v in views)

    resp = T.SampleResponse(sequences=[T.SampledSequence(stop_reason="length", tokens=[3, 4], logprobs=[-1.0, -2.0])])
    body = _proto.encode_sample_response(resp)
    seq = _proto.decode_sample_response(body).sequences[0]
    assert seq.tokens == [3, 4] and seq.logprobs == [-1.0, -2.0]
    assert np.shares_memory(np.asarray(seq.tokens), np.frombuffer(body, dtype=np.uint8))


def test_fast_and_general_sample_readers_agree() -> None:
    resp = T.SampleResponse(
        sequences=[T.SampledSequence(stop_reason="length", tokens=list(range(300)), logprobs=[-0.5] * 300),
                   T.SampledSequence(stop_reason="stop", tokens=[], logprobs=None)],
        prompt_logprobs=[None] + [-1.0] * 40, prompt_cache_hit_tokens=7)
    body = _proto.encode_sample_response(resp)
    fast = _proto._fast_sample_response(memoryview(body))
    assert fast is not None and fast == _proto._decode_sample_response(body) == resp
    with_topk = T.SampleResponse(sequences=[], topk_prompt_logprobs=[None, [(1, -0.5)]])
    assert _proto._fast_sample_response(memoryview(_proto.encode_sample_response(with_topk))) is None  # general
    assert _proto.decode_sample_response(_proto.encode_sample_response(with_topk)) == with_topk


# --- byte order ---------------------------------------------------------------------------------------


def test_wire_bytes_are_little_endian_without_swapping_the_callers_buffer(monkeypatch: pytest.MonkeyPatch) -> None:
    values = [1, -2, 2**40]
    numbers = to_numbers(values, "q", "x")
    assert bytes(wire_bytes(numbers, "q")) == struct.pack("<3q", *values)
    assert bytes(wire_bytes(to_numbers([1.5, -2.0], "d", "x"), "f")) == struct.pack("<2f", 1.5, -2.0)
    # Simulate a big-endian host on this little-endian one: the codec must swap a copy, never the buffer.
    monkeypatch.setattr(_numbers, "BIG_ENDIAN", True)
    swapped = wire_bytes(numbers, "q")
    assert bytes(swapped) == struct.pack(">3q", *values) and numbers == values
    assert from_wire(swapped, "q") == values  # and decoding swaps back


def test_request_round_trip_on_a_simulated_big_endian_host(monkeypatch: pytest.MonkeyPatch) -> None:
    req = _request([1, 2, 300], [2, 300, 0], [1.0, 0.25, 0.0])
    little = _proto.encode_forward_backward_request(req)
    monkeypatch.setattr(_numbers, "BIG_ENDIAN", True)
    monkeypatch.setattr(_proto, "BIG_ENDIAN", True)
    big = _proto.encode_forward_backward_request(req)
    assert big != little and len(big) == len(little)  # every multi-byte item swapped
    assert _proto.decode_forward_backward_request(big) == req  # the same values after decoding back
    assert req.data[0].model_input.to_ints() == [1, 2, 300]  # the caller's buffers are untouched
    resp = T.SampleResponse(sequences=[T.SampledSequence(stop_reason="stop", tokens=[9, 10], logprobs=[-1.0, -3.0])],
                            prompt_logprobs=[None, -2.0])
    assert _proto.decode_sample_response(_proto.encode_sample_response(resp)) == resp


def test_token_ids_beyond_int32_are_refused_at_encode() -> None:
    with pytest.raises(ValueError, match="int32"):
        _proto.encode_forward_backward_request(_request([2**31], [1], [1.0]))
    assert _proto.decode_forward_backward_request(
        _proto.encode_forward_backward_request(_request([2**31 - 1], [1], [1.0]))).data[0].model_input.to_ints() == [
        2**31 - 1]


def test_sampled_buffers_feed_the_next_training_datum() -> None:
    # The RL loop: a decoded sequence's tokens/logprobs go straight into a Datum (buffers shared or converted
    # in C, never walked in Python).
    resp = T.SampleResponse(sequences=[T.SampledSequence(stop_reason="stop", tokens=[3, 4], logprobs=[-1.0, -2.0])])
    seq = _proto.decode_sample_response(_proto.encode_sample_response(resp)).sequences[0]
    datum = T.Datum(model_input=T.ModelInput.from_ints(seq.tokens),
                    loss_fn_inputs={"target_tokens": seq.tokens, "logprobs": seq.logprobs, "advantages": [1.0, 0.5]})
    assert datum.model_input.chunks[0].tokens is seq.tokens  # same uint32 buffer: shared, not copied
    assert datum.loss_fn_inputs["target_tokens"] == T.TensorData(data=[3, 4], dtype="int64", shape=[2])
    assert datum.loss_fn_inputs["logprobs"].data == [-1.0, -2.0]
