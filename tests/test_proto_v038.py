"""The 0.38 protobuf fields: byte vectors from the official 0.38 descriptor, round trips, and the local server.

The hex vectors were produced by ``tests/gen_proto_v038_vectors.py`` with the official SDK's generated
``tinker_public_pb2`` (protobuf serialises fields in number order, as this codec does), so equal bytes
mean the same wire format; the tests themselves need no official SDK.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tinker_sync import TinkerError, _proto
from tinker_sync.local import LocalTinkerServer
from tinker_sync.types import (
    Datum,
    ForwardBackwardRequest,
    ModelInput,
    PromptAltTokens,
    PromptProvenanceSpan,
    SampledProvenanceSpan,
    SampledSequence,
    SampleResponse,
    TensorData,
)

from .test_local_server import Api, sample_body

SAMPLE_RESPONSE_FULL = bytes.fromhex(
    "0a580801120c0500000006000000070000001a0c000000bf000080bf0000c0bf22380a180500000009000000060000000000000007000000"
    "080000001218000000bf000000c0000080bf804fc3c70000c0bf000040c018022003120c0000c07f0000a0bf000020c020022a180a10000"
    "0a0bf00000000000020c0000080c0180122020202322c0a180a100b000000000000000c0000000000000018022202020112100a08000040"
    "bf000000be180122020201"
)
SAMPLE_RESPONSE_CSR = bytes.fromhex(
    "0a061204030000002a46123e0a080000c0bf000080be12200000000000000000010000000000000001000000000000000200000000000000"
    "1a1001000000000000000000000000000000180122020302"
)
FORWARD_BACKWARD_SPANS = bytes.fromhex(
    "0a026d3110041a88010a140a120a100100000002000000030000000400000012380a0d7461726765745f746f6b656e7312270a200200000"
    "00000000003000000000000000400000000000000050000000000000018022201041a0b0a090a057265712d3018021a0d120b0a05726571"
    "2d3010011802220d0a0b0a057265712d3010011801220b12090a057265712d301803220d63726f73735f656e74726f7079"
)

FULL = SampleResponse(
    sequences=[SampledSequence(stop_reason="length", tokens=[5, 6, 7], logprobs=[-0.5, -1.0, -1.5],
                               topk_logprobs=[[(5, -0.5), (9, -2.0)], [(6, -1.0)], [(7, -1.5), (8, -3.0)]])],
    prompt_logprobs=[None, -1.25, -2.5],
    prompt_cache_hit_tokens=2,
    target_prompt_logprobs=TensorData(data=[-1.25, 0.0, -2.5, -4.0], dtype="float32", shape=[2, 2]),
    prompt_alt_tokens=PromptAltTokens(tokens=TensorData(data=[11, 12], dtype="int64", shape=[2, 1]),
                                      logprobs=TensorData(data=[-0.75, -0.125], dtype="float32", shape=[2, 1])),
)
CSR = SampleResponse(
    sequences=[SampledSequence(stop_reason="stop", tokens=[3])],
    target_prompt_logprobs=TensorData(data=[-1.5, -0.25], dtype="float32", shape=[3, 2],
                                      sparse_crow_indices=[0, 1, 1, 2], sparse_col_indices=[1, 0]),
)
SPANS_REQUEST = ForwardBackwardRequest(
    model_id="m1", seq_id=4, loss_fn="cross_entropy",
    data=[Datum(model_input=ModelInput.from_ints([1, 2, 3, 4]),
                loss_fn_inputs={"target_tokens": TensorData(data=[2, 3, 4, 5], dtype="int64", shape=[4])},
                model_input_spans=[PromptProvenanceSpan(sequence_id="req-0", length=2),
                                   SampledProvenanceSpan(sequence_id="req-0", offset=1, length=2)],
                loss_fn_input_spans=[PromptProvenanceSpan(sequence_id="req-0", offset=1, length=1),
                                     SampledProvenanceSpan(sequence_id="req-0", length=3)])],
)


def test_sample_response_matches_the_official_bytes() -> None:
    assert _proto.encode_sample_response(FULL) == SAMPLE_RESPONSE_FULL
    assert _proto.encode_sample_response(CSR) == SAMPLE_RESPONSE_CSR


def test_official_sample_response_decodes_every_038_field() -> None:
    resp = _proto.decode_sample_response(SAMPLE_RESPONSE_FULL)
    assert resp == FULL
    seq = resp.sequences[0]
    assert seq.topk_logprobs == [[(5, -0.5), (9, -2.0)], [(6, -1.0)], [(7, -1.5), (8, -3.0)]]  # filler cell dropped
    assert resp.target_prompt_logprobs is not None and resp.target_prompt_logprobs.shape == [2, 2]
    assert resp.prompt_alt_tokens is not None and list(resp.prompt_alt_tokens.tokens.data) == [11, 12]
    assert resp.prompt_logprobs is not None and resp.prompt_logprobs[0] is None
    csr = _proto.decode_sample_response(SAMPLE_RESPONSE_CSR).target_prompt_logprobs
    assert csr is not None and csr.sparse_crow_indices == [0, 1, 1, 2] and csr.sparse_col_indices == [1, 0]
    assert list(csr.data) == [-1.5, -0.25] and csr.shape == [3, 2]


def test_provenance_spans_match_the_official_bytes() -> None:
    assert _proto.encode_forward_backward_request(SPANS_REQUEST) == FORWARD_BACKWARD_SPANS
    back = _proto.decode_forward_backward_request(FORWARD_BACKWARD_SPANS)
    assert back == SPANS_REQUEST
    assert back.data[0].model_input_spans is not None and back.data[0].model_input_spans[1].offset == 1


def test_spans_on_one_side_decode_with_an_empty_other_side() -> None:
    datum = SPANS_REQUEST.data[0]
    one_sided = Datum(model_input=datum.model_input, loss_fn_inputs=datum.loss_fn_inputs,
                      model_input_spans=[], loss_fn_input_spans=datum.loss_fn_input_spans)
    req = ForwardBackwardRequest(model_id="m1", loss_fn="cross_entropy", data=[one_sided])
    back = _proto.decode_forward_backward_request(_proto.encode_forward_backward_request(req)).data[0]
    assert back.model_input_spans == [] and back.loss_fn_input_spans == datum.loss_fn_input_spans


def _request_with_span(span: bytes) -> bytes:
    """A ForwardBackwardRequest whose one datum has ``span`` as its model_input_spans[0] (Datum field 3)."""
    datum = b"\x1a" + bytes([len(span)]) + span
    return b"\x1a" + bytes([len(datum)]) + datum


@pytest.mark.parametrize(("span", "words"), [
    (b"", "model_input_spans\\[0\\]: empty ProvenanceSpan"),
    (b"\x0a\x04\x08\x01\x10\x01", "model_input_spans\\[0\\].sequence_id: expected a length-delimited"),
    (b"\x12\x05\x0a\x01q\x12\x00", "offset: expected a varint"),
    (b"\x12\x02\x10\x01", "sequence_id must be non-empty"),  # the types' own check, under the span's name
])
def test_malformed_spans_name_the_field(span: bytes, words: str) -> None:
    with pytest.raises(_proto.ProtoDecodeError, match=words):
        _proto.decode_forward_backward_request(_request_with_span(span))


def test_proto_decode_error_is_a_tinker_error_and_a_value_error() -> None:
    assert issubclass(_proto.ProtoDecodeError, TinkerError) and issubclass(_proto.ProtoDecodeError, ValueError)
    truncated = SAMPLE_RESPONSE_FULL[:-3]
    with pytest.raises(TinkerError, match="SampleResponse"):
        _proto.decode_sample_response(truncated)
    with pytest.raises(_proto.ProtoDecodeError, match="prompt_alt_tokens: needs both"):
        _proto.decode_sample_response(bytes.fromhex("3200"))


def test_topk_cells_must_fill_length_by_k() -> None:
    # SampledSequence.topk_sampled_logprobs with k=2, length=2 but only two cells
    topk = bytes.fromhex("0a08010000000200000012080000803f0000803f18022002")
    seq = bytes([0x22, len(topk)]) + topk
    with pytest.raises(_proto.ProtoDecodeError, match="topk_sampled_logprobs: expected length x k"):
        _proto.decode_sample_response(bytes([0x0A, len(seq)]) + seq)


# --------------------------------------------------------------------------------------------------
# the local server returns them (protobuf polls, as every SDK makes)


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    with LocalTinkerServer(data_dir=tmp_path / "data", long_poll_s=0.5, sample_workers=1) as srv:
        yield Api(srv.url)


def _sample(api: Api, **extra: Any) -> SampleResponse:
    sid = api.ok("POST", "create_session", {"tags": [], "user_metadata": {}, "sdk_version": "0.38.0"})["session_id"]
    sampler = api.ok("POST", "create_sampling_session", {"session_id": sid, "sampling_session_seq_id": 0,
                                                          "base_model": "tinker-sync/tiny-byte"})["sampling_session_id"]
    handle = api.post("asample", sample_body(sampler, 0, n=1, max_tokens=4, **extra))
    assert handle.status_code == 200, handle.text
    r = api.poll(handle.json()["request_id"], accept=_proto.PROTO_CONTENT_TYPE)
    assert r.status_code == 200 and r.headers["Content-Type"] == _proto.PROTO_CONTENT_TYPE, r.text
    return _proto.decode_sample_response(r.content)


PROMPT = list(b"Q: hi\nA:")
ROWS = len(PROMPT) - 1


def test_server_returns_topk_sample_logprobs(api: Api) -> None:
    seq = _sample(api, topk_sample_logprobs=3).sequences[0]
    assert seq.topk_logprobs is not None and len(seq.topk_logprobs) == len(seq.tokens)
    assert seq.logprobs is not None
    for row, token, lp in zip(seq.topk_logprobs, seq.tokens, seq.logprobs, strict=True):
        assert row is not None and len(row) == 3 and [p for _, p in row] == sorted((p for _, p in row), reverse=True)
        assert token not in dict(row) or math.isclose(dict(row)[token], lp, abs_tol=1e-4)


def test_server_returns_dense_and_sparse_target_prompt_logprobs(api: Api) -> None:
    ids = [t for i in range(ROWS) for t in (PROMPT[i + 1], -1)]
    dense = _sample(api, prompt_logprobs=True,
                    target_prompt_logprobs={"data": ids, "dtype": "int64", "shape": [ROWS, 2]})
    target = dense.target_prompt_logprobs
    assert target is not None and target.shape == [ROWS, 2] and target.sparse_crow_indices is None
    assert dense.prompt_logprobs is not None
    for i in range(ROWS):  # column 0 asks for the prompt's own next token: its prompt logprob
        assert math.isclose(target.data[2 * i], dense.prompt_logprobs[i + 1], abs_tol=1e-4)
        assert target.data[2 * i + 1] == 0.0
    crow = [0, 1] + [1] * (ROWS - 2) + [2]
    sparse = _sample(api, target_prompt_logprobs={"data": [PROMPT[1], PROMPT[ROWS]], "dtype": "int64",
                                                  "shape": [ROWS, 2], "sparse_crow_indices": crow,
                                                  "sparse_col_indices": [1, 0]}).target_prompt_logprobs
    assert sparse is not None and sparse.sparse_crow_indices == crow and sparse.sparse_col_indices == [1, 0]
    assert math.isclose(sparse.data[0], target.data[0], abs_tol=1e-4)  # cell (0, 1) asks for prompt[1] too
    assert math.isclose(sparse.data[1], target.data[2 * (ROWS - 1)], abs_tol=1e-4)


def test_server_returns_prompt_alt_tokens(api: Api) -> None:
    alt = _sample(api, prompt_alt_tokens_k=2).prompt_alt_tokens
    assert alt is not None and alt.tokens.shape == [ROWS, 2] and alt.logprobs.shape == [ROWS, 2]
    assert alt.tokens.dtype == "int64" and all(0 <= t < 512 for t in alt.tokens.data)
    assert all(lp <= 0 for lp in alt.logprobs.data)


def test_server_refuses_a_float_target_matrix(api: Api) -> None:
    sid = api.ok("POST", "create_session", {"tags": [], "user_metadata": {}, "sdk_version": "0.38.0"})["session_id"]
    sampler = api.ok("POST", "create_sampling_session", {"session_id": sid, "sampling_session_seq_id": 0,
                                                          "base_model": "tinker-sync/tiny-byte"})["sampling_session_id"]
    r = api.post("asample", sample_body(sampler, 0, target_prompt_logprobs={"data": [1.0], "dtype": "float32",
                                                                             "shape": [1, 1]}))
    assert r.status_code == 400 and "target_prompt_logprobs" in r.json()["detail"]


def test_protobuf_spans_reach_the_server(api: Api) -> None:
    """Provenance spans in a protobuf forward_backward body fill stable_reinforce's sampling logprobs."""
    sid = api.ok("POST", "create_session", {"tags": [], "user_metadata": {}, "sdk_version": "0.38.0"})["session_id"]
    mid = api.model(sid)
    sampler = api.ok("POST", "create_sampling_session", {"session_id": sid, "sampling_session_seq_id": 0,
                                                          "base_model": "tinker-sync/tiny-byte"})["sampling_session_id"]
    handle = api.post("asample", sample_body(sampler, 0, n=1, max_tokens=4, record_stability_info=True))
    seq_id = handle.json()["sample_sequence_ids"][0]
    sampled = api.result(handle)["sequences"][0]
    tokens = PROMPT + sampled["tokens"]
    n, m = len(tokens) - 1, len(sampled["tokens"])
    datum = Datum(model_input=ModelInput.from_ints(tokens[:-1]),
                  loss_fn_inputs={"target_tokens": TensorData(data=tokens[1:], dtype="int64", shape=[n]),
                                  "advantages": TensorData(data=[1.0] * n, dtype="float32", shape=[n])})
    datum = datum.with_provenance(
        [PromptProvenanceSpan(sequence_id=seq_id, length=len(PROMPT)),
         SampledProvenanceSpan(sequence_id=seq_id, length=m - 1)],
        [PromptProvenanceSpan(sequence_id=seq_id, offset=1, length=len(PROMPT) - 1),
         SampledProvenanceSpan(sequence_id=seq_id, length=m)])
    body = _proto.encode_forward_backward_request(
        ForwardBackwardRequest(model_id=mid, seq_id=1, loss_fn="stable_reinforce", data=[datum]))
    r = api.s.post(f"{api.url}/api/v1/forward_backward", data=body, timeout=30,
                   headers={"Content-Type": _proto.PROTO_CONTENT_TYPE})
    out = api.result(r)
    assert math.isclose(out["loss_fn_outputs"][0]["logprobs"]["data"][-1], sampled["logprobs"][-1], abs_tol=1e-4)
