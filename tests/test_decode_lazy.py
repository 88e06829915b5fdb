"""Decoded sample responses build each sequence's fields on first read: a user must never see a difference from
eagerly built objects (equality, repr, pickling, copying, attrs helpers, JSON serialisation, numpy views, frozen
fields), and malformed bodies still fail in the decode call, naming the field."""

from __future__ import annotations

import copy
import math
import pickle
import struct
import threading
from typing import Any

import attrs
import pytest

import tinker_sync.types as T
from tinker_sync import _proto, _protowire, _serde
from tinker_sync._proto import ProtoDecodeError


def _seq(stop: str, n: int, *, logprobs: bool = True, start: int = 0) -> T.SampledSequence:
    tokens = [(start + 7 * i) % 50_000 for i in range(n)]
    return T.SampledSequence(stop_reason=stop, tokens=tokens,  # type: ignore[arg-type]
                             logprobs=[-(i % 13) / 8 for i in range(n)] if logprobs else None)


def _response(**kw: Any) -> T.SampleResponse:
    seqs = [_seq("length", 512), _seq("stop", 3, start=5), _seq("stop", 0, logprobs=False),
            _seq("length", 40, logprobs=False), _seq("stop", 5000, start=11)]  # 5,000 tokens: 3-byte lengths
    base: dict[str, Any] = {"sequences": seqs, "prompt_logprobs": [None, -0.5, -1.25], "prompt_cache_hit_tokens": 300}
    return T.SampleResponse(**{**base, **kw})


def _decoded(resp: T.SampleResponse) -> T.SampleResponse:
    body = _proto.encode_sample_response(resp)
    fast = _proto._fast_sample_response(memoryview(body))
    assert fast is not None  # the layout the servers write takes the one-pass reader
    return fast


@pytest.mark.parametrize("kw", [{}, {"prompt_logprobs": None, "prompt_cache_hit_tokens": 0},
                                {"sequences": [], "prompt_cache_hit_tokens": 5},
                                {"sequences": [_seq("stop", 0, logprobs=False)]}])
def test_decoded_response_equals_the_eager_one(kw: dict[str, Any]) -> None:
    resp = _response(**kw)
    back = _decoded(resp)
    assert back == resp and resp == back and not back != resp  # noqa: SIM202 - both operators
    assert _proto.decode_sample_response(_proto.encode_sample_response(resp)) == resp
    assert repr(back) == repr(resp)
    assert type(back.sequences) is list and all(type(s) is T.SampledSequence for s in back.sequences)
    assert [s.stop_reason for s in back.sequences] == [s.stop_reason for s in resp.sequences]


def test_each_field_reads_like_the_eager_one() -> None:
    resp = _response()
    for got, want in zip(_decoded(resp).sequences, resp.sequences):
        assert got.tokens == want.tokens and got.logprobs == want.logprobs
        assert got.sequence_id is None and got.topk_logprobs is None
        assert got.tokens is got.tokens  # built once, then kept
        assert type(got.tokens) is type(want.tokens)
        assert (got.logprobs is None) == (want.logprobs is None)
    seq = _decoded(resp).sequences[0]
    assert seq.logprobs == resp.sequences[0].logprobs and seq.tokens[:3] == [0, 7, 14]  # logprobs read first


def test_fresh_decoded_objects_pickle_copy_and_serialise_like_eager_ones() -> None:
    resp = _response()
    for clone in (pickle.loads(pickle.dumps(_decoded(resp))), copy.copy(_decoded(resp)),
                  copy.deepcopy(_decoded(resp))):
        assert clone == resp
    assert pickle.loads(pickle.dumps(_decoded(resp).sequences[1])) == resp.sequences[1]
    assert _serde.dumps(_decoded(resp)) == _serde.dumps(resp)
    assert _serde.loads(_serde.dumps(_decoded(resp)), T.SampleResponse) == resp
    assert attrs.asdict(_decoded(resp).sequences[1]) == attrs.asdict(resp.sequences[1])
    assert attrs.astuple(_decoded(resp).sequences[2]) == attrs.astuple(resp.sequences[2])
    evolved = attrs.evolve(_decoded(resp).sequences[1], sequence_id="s-1")
    assert evolved == attrs.evolve(resp.sequences[1], sequence_id="s-1") and evolved.tokens == [5, 12, 19]


def test_decoded_sequences_stay_frozen_and_unhashable() -> None:
    seq = _decoded(_response()).sequences[1]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        seq.tokens = [1]  # type: ignore[misc]  # before the first read, too
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        del seq.logprobs
    assert seq.tokens == [5, 12, 19]
    with pytest.raises(TypeError):
        hash(seq)
    with pytest.raises(TypeError):
        hash(_response().sequences[1])  # the eager one neither
    with pytest.raises(AttributeError, match="'SampledSequence' object has no attribute 'tokenz'"):
        seq.tokenz  # type: ignore[attr-defined]  # noqa: B018
    assert not hasattr(seq, "_cached") and getattr(seq, "nope", 3) == 3


def test_the_json_wire_gives_the_same_response() -> None:
    resp = _response()
    from_json = _serde.loads(_serde.dumps(resp), T.SampleResponse)
    assert from_json == _decoded(resp) == resp
    assert repr(from_json) == repr(_decoded(resp))


def test_numpy_views_share_the_body() -> None:
    np = pytest.importorskip("numpy")
    resp = _response()
    body = _proto.encode_sample_response(resp)
    back = _proto.decode_sample_response(body)
    wire = np.frombuffer(body, dtype=np.uint8)
    seq = back.sequences[0]
    assert seq.tokens_np.dtype == np.int32 and seq.logprobs_np is not None and seq.logprobs_np.dtype == np.float32
    assert np.shares_memory(seq.tokens_np, wire) and np.shares_memory(seq.logprobs_np, wire)
    assert not seq.tokens_np.flags.writeable
    assert seq.tokens_np.tolist() == resp.sequences[0].tokens
    assert np.array_equal(seq.logprobs_np, np.asarray(resp.sequences[0].logprobs_np))
    assert back.sequences[2].logprobs_np is None and back.sequences[2].tokens_np.shape == (0,)
    assert back.prompt_logprobs_np is not None and math.isnan(back.prompt_logprobs_np[0])


def _read_after(barrier: threading.Barrier, seq: T.SampledSequence, seen: list[Any]) -> None:
    barrier.wait(timeout=10)
    seen.append((seq.tokens, seq.logprobs))


def test_threads_reading_one_fresh_sequence_see_the_same_values() -> None:
    for _ in range(20):
        seq = _decoded(_response()).sequences[4]
        seen: list[Any] = []
        barrier = threading.Barrier(6)

        threads = [threading.Thread(target=_read_after, args=(barrier, seq, seen)) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=10)
        assert len(seen) == 6 and all(s == seen[0] for s in seen)
        assert seen[0][0] == _seq("stop", 5000, start=11).tokens


def _entry(stop: int | None, tokens: bytes | None, logprobs: bytes | None = None, extra: bytes = b"") -> bytes:
    body = b"" if stop is None else b"\x08" + bytes([stop])
    for key, value in ((b"\x12", tokens), (b"\x1a", logprobs)):
        if value is not None:
            body += key + _protowire.varint(len(value)) + value
    body += extra
    return b"\x0a" + _protowire.varint(len(body)) + body


def _ints(*v: int) -> bytes:
    return struct.pack(f"<{len(v)}i", *v)


def _floats(*v: float) -> bytes:
    return struct.pack(f"<{len(v)}f", *v)


@pytest.mark.parametrize("body, match", [
    (_entry(1, _ints(1, 2), _floats(-1.0)), "logprobs: 4 bytes for 8 bytes of tokens"),
    (_entry(1, _ints(1, 2)) + _entry(0, _ints(3), _floats(-1.0, -2.0)), r"sequences\[1\].logprobs"),
    (_entry(1, _ints(1) + b"\x00"), "whole number"),
    (_entry(7, _ints(1)), "unknown StopReason enum value 7"),
    (_entry(1, _ints(1, 2))[:-3], "runs past the end"),
    (_entry(1, _ints(1, 2)) + b"\x12\x05" + _floats(-1.0) + b"\x00", "prompt_logprobs.*whole number"),
    (_entry(1, _ints(1, 2)) + b"\x20", "truncated varint"),
    (_entry(1, _ints(*range(40)), _floats(*range(40)))[:-1], "runs past the end"),
])
def test_malformed_bodies_fail_in_the_decode_call(body: bytes, match: str) -> None:
    assert _proto._fast_sample_response(memoryview(body)) is None  # the one-pass reader leaves them to the checks
    with pytest.raises(ProtoDecodeError, match=match):
        _proto.decode_sample_response(body)


def test_other_layouts_decode_through_the_general_reader() -> None:
    reordered = _entry(None, None, _floats(-0.5, -1.5), extra=b"\x12\x08" + _ints(4, 9) + b"\x08\x01")
    unknown = _entry(1, _ints(4, 9), _floats(-0.5, -1.5), extra=b"\x78\x01")  # field 15, varint
    want = T.SampleResponse(sequences=[T.SampledSequence(stop_reason="length", tokens=[4, 9], logprobs=[-0.5, -1.5])])
    for body in (reordered, unknown):
        assert _proto._fast_sample_response(memoryview(body)) is None
        assert _proto.decode_sample_response(body) == want
    empty_last = _entry(None, None, None)  # an empty "stop" sequence written as two bytes at the very end
    assert _proto.decode_sample_response(empty_last) == T.SampleResponse(sequences=[_seq("stop", 0, logprobs=False)])
    assert _proto._fast_sample_response(memoryview(empty_last)) is not None


def test_numpy_properties_of_built_responses_have_the_official_dtypes() -> None:
    np = pytest.importorskip("numpy")
    from tinker_sync.types._numbers import numpy_of

    resp = _response()
    seq = resp.sequences[1]
    assert seq.tokens_np.dtype == np.int32 and seq.tokens_np.tolist() == [5, 12, 19]
    assert np.shares_memory(seq.tokens_np, seq.tokens_np)  # a view of the token buffer
    assert seq.logprobs_np is not None and seq.logprobs_np.dtype == np.float32  # float64 buffer: a float32 copy
    assert seq.logprobs_np.tolist() == [-0.0, -0.125, -0.25]
    prompt = resp.prompt_logprobs_np
    assert prompt is not None and prompt.dtype == np.float32 and math.isnan(prompt[0]) and prompt[2] == -1.25
    assert numpy_of([3, 4], "I").dtype == np.int32 and numpy_of((0.5,), "f").tolist() == [0.5]


def test_prompt_logprobs_with_none_keep_their_checks() -> None:
    resp = T.SampleResponse(sequences=[], prompt_logprobs=[None, -1, -0.5])
    assert resp.prompt_logprobs == [None, -1.0, -0.5] and type(resp.prompt_logprobs[1]) is float
    for bad, item in (([None, True], "item 1 is True"), ([None, -1.0, b"x"], "item 2 is b'x'")):
        with pytest.raises(TypeError, match=f"prompt_logprobs must be a list of float or None; {item}"):
            T.SampleResponse(sequences=[], prompt_logprobs=bad)
    np = pytest.importorskip("numpy")
    assert T.SampleResponse(sequences=[], prompt_logprobs=[None, np.float64(-2.0)]).prompt_logprobs == [None, -2.0]
