"""Hypothesis strategies for every wire type (shared by the serde and proto tests).

Generic attrs classes are built field by field from their resolved annotations; classes whose
validators tie fields together get hand-written strategies below.
"""

from __future__ import annotations

import enum
import struct
import typing
from datetime import timedelta, timezone
from typing import Any, Union

import attrs
from hypothesis import strategies as st

import tinker_sync.types as T

ints = st.integers(min_value=0, max_value=2**31 - 1)
pos_ints = st.integers(min_value=1, max_value=2**31 - 1)  # generic ints: satisfies every ">= 0/1" field
floats = st.floats(allow_nan=False, allow_infinity=False, width=64)
texts = st.text(max_size=12)
f32 = st.floats(allow_nan=False, allow_infinity=False, width=32)


def float32_exact(x: float) -> float:
    return struct.unpack("<f", struct.pack("<f", x))[0]


def unit_interval_open_right() -> st.SearchStrategy[float]:
    return st.floats(min_value=0.0, max_value=1.0, exclude_max=True)


timezones = st.builds(lambda m: timezone(timedelta(minutes=m)), st.integers(-23 * 60, 23 * 60))
aware_datetimes = st.datetimes(timezones=timezones)
json_scalars = st.one_of(st.booleans(), ints, floats, texts)
json_dicts = st.dictionaries(texts, json_scalars, max_size=3)

token_lists = st.lists(ints, max_size=20)


@st.composite
def tensor_data(draw: Any) -> T.TensorData:
    dtype = draw(st.sampled_from(["int64", "float32"]))
    elem = st.integers(-(2**63), 2**63 - 1) if dtype == "int64" else f32
    kind = draw(st.sampled_from(["none", "1d", "2d", "csr"]))
    if kind == "csr":
        nrows = draw(st.integers(0, 4))
        ncols = draw(st.integers(1, 4))
        crow = [0]
        cols: list[int] = []
        for _ in range(nrows):
            row_cols = sorted(draw(st.sets(st.integers(0, ncols - 1), max_size=ncols)))
            cols.extend(row_cols)
            crow.append(len(cols))
        data = draw(st.lists(elem, min_size=len(cols), max_size=len(cols)))
        return T.TensorData(
            data=data, dtype=dtype, shape=[nrows, ncols], sparse_crow_indices=crow, sparse_col_indices=cols
        )
    if kind == "2d":
        rows, cols_n = draw(st.integers(0, 4)), draw(st.integers(1, 4))
        data = draw(st.lists(elem, min_size=rows * cols_n, max_size=rows * cols_n))
        return T.TensorData(data=data, dtype=dtype, shape=[rows, cols_n])
    data = draw(st.lists(elem, max_size=10))
    return T.TensorData(data=data, dtype=dtype, shape=[len(data)] if kind == "1d" else None)


@st.composite
def sampled_sequences(draw: Any) -> T.SampledSequence:
    tokens = draw(token_lists)
    logprobs = draw(st.none() | st.lists(floats, min_size=len(tokens), max_size=len(tokens)))
    return T.SampledSequence(stop_reason=draw(st.sampled_from(["stop", "length"])), tokens=tokens, logprobs=logprobs)


tinker_paths = st.builds(
    lambda run, kind, name: f"tinker://{run}/{kind}/{name}",
    st.from_regex(r"[a-z0-9:]{1,10}", fullmatch=True),
    st.sampled_from(["weights", "sampler_weights"]),
    st.from_regex(r"[a-z0-9_.-]{1,10}", fullmatch=True),
)


@st.composite
def load_weights_requests(draw: Any) -> T.LoadWeightsRequest:
    legacy = draw(st.booleans())
    opt_text = st.none() | texts
    return T.LoadWeightsRequest(
        path=draw(tinker_paths),
        optimizer=draw(st.booleans()),
        model_id=draw(texts) if legacy else draw(opt_text),
        seq_id=draw(st.none() | ints),
        session_id=None if legacy else draw(texts),
        model_seq_id=None if legacy else draw(ints),
        base_model=draw(opt_text),
        user_metadata=draw(st.none() | json_dicts),
        weights_access_token=draw(opt_text),
    )


@st.composite
def create_sampling_session_requests(draw: Any) -> T.CreateSamplingSessionRequest:
    base_model = draw(st.none() | texts)
    model_path = draw(tinker_paths) if base_model is None else draw(st.none() | tinker_paths)
    return T.CreateSamplingSessionRequest(
        session_id=draw(texts), sampling_session_seq_id=draw(ints), base_model=base_model, model_path=model_path
    )


lora_configs = st.builds(
    T.LoraConfig,
    rank=st.integers(1, 512),
    seed=st.none() | st.integers(-(2**63), 2**63 - 1),
    train_unembed=st.booleans(),
    train_mlp=st.booleans(),
    train_attn=st.just(True),
)

adam_params = st.builds(
    T.AdamParams,
    learning_rate=st.floats(0, 10),
    beta1=unit_interval_open_right(),
    beta2=unit_interval_open_right(),
    eps=st.floats(1e-30, 1.0),
    weight_decay=st.floats(0, 1),
    grad_clip_norm=st.floats(0, 100),
)

sampling_params = st.builds(
    T.SamplingParams,
    max_tokens=st.none() | ints,
    seed=st.none() | st.integers(-(2**63), 2**63 - 1),
    stop=st.none() | texts | st.lists(texts, min_size=1, max_size=3) | st.lists(ints, min_size=1, max_size=3),
    temperature=st.floats(0, 5),
    top_k=st.just(-1) | st.integers(1, 100),
    top_p=st.floats(0, 1, exclude_min=True),
)

chunks = st.one_of(
    st.builds(T.EncodedTextChunk, tokens=token_lists),
    st.builds(T.ImageChunk, data=st.binary(max_size=20), format=st.sampled_from(["png", "jpeg"]),
              expected_tokens=st.none() | ints),
    st.builds(T.ImageAssetPointerChunk, location=texts, format=st.sampled_from(["png", "jpeg"]),
              expected_tokens=st.none() | ints),
    st.builds(T.DmelChunk, dmel=st.binary(max_size=20)),
)
model_inputs = st.builds(T.ModelInput, chunks=st.lists(chunks, max_size=4))
datums = st.builds(
    T.Datum, model_input=model_inputs, loss_fn_inputs=st.dictionaries(texts, tensor_data(), max_size=3)
)

SPECIAL: dict[type, st.SearchStrategy[Any]] = {
    T.TensorData: tensor_data(),
    T.SampledSequence: sampled_sequences(),
    T.LoadWeightsRequest: load_weights_requests(),
    T.CreateSamplingSessionRequest: create_sampling_session_requests(),
    T.LoraConfig: lora_configs,
    T.AdamParams: adam_params,
    T.SamplingParams: sampling_params,
    T.ModelInput: model_inputs,
    T.Datum: datums,
    T.ParsedCheckpointTinkerPath: tinker_paths.map(T.ParsedCheckpointTinkerPath.from_tinker_path),
    T.SetCheckpointTtlRequest: st.builds(T.SetCheckpointTtlRequest, ttl_seconds=st.none() | st.integers(1, 10**9)),
    T.SaveWeightsRequest: st.builds(
        T.SaveWeightsRequest, model_id=texts, path=st.none() | texts, seq_id=st.none() | ints,
        ttl_seconds=st.none() | st.integers(1, 10**9), overwrite=st.booleans(),
    ),
    T.SaveWeightsForSamplerRequest: st.builds(
        T.SaveWeightsForSamplerRequest, model_id=texts, path=st.none() | texts,
        sampling_session_seq_id=st.none() | ints, seq_id=st.none() | ints,
        ttl_seconds=st.none() | st.integers(1, 10**9), kind=st.sampled_from(["snapshot", "inflight"]),
        user_metadata=st.none() | st.dictionaries(texts, texts, max_size=2),
    ),
    T.DimuonParams: st.builds(
        T.DimuonParams, learning_rate=st.floats(0, 10), grad_clip_norm=floats, beta1=unit_interval_open_right()
    ),
    T.OptimStepRequest: st.builds(
        T.OptimStepRequest,
        optim_params=adam_params | st.builds(T.DimuonParams, learning_rate=st.floats(0, 10)),
        model_id=texts,
        seq_id=st.none() | ints,
    ),
    T.PromptProvenanceSpan: st.builds(
        T.PromptProvenanceSpan, sequence_id=texts.filter(bool), offset=ints, length=ints
    ),
    T.SampledProvenanceSpan: st.builds(
        T.SampledProvenanceSpan, sequence_id=texts.filter(bool), offset=ints, length=ints
    ),
    T.UserSearchOwner: st.builds(T.UserSearchOwner, owner_urns=st.lists(texts, min_size=1, max_size=10)),
    T.ClientFinishedSessionStatusQuery: st.builds(
        T.ClientFinishedSessionStatusQuery,
        reasons=st.none() | st.lists(st.sampled_from(["success", "errored", "interrupted"]), min_size=1, max_size=3),
    ),
    T.FuturesRetrieveRequest: st.builds(
        T.FuturesRetrieveRequest,
        target=st.builds(T.SamplingSessionFuturesTarget, sampling_session_id=texts, cloned_sampler_id=ints),
        prev_cursor=ints, timeout=st.none() | st.floats(0, 3600), retrieved_request_ids=st.lists(texts, max_size=3),
    ),
    T.ClientConfigResponse: st.builds(
        T.ClientConfigResponse, fwdbwd_max_chunk_len=st.integers(1, 4096),
        fwdbwd_max_chunk_bytes_count=st.integers(1, 10**9), sample_max_concurrent_requests=st.integers(1, 10**4),
    ),
    T.ClientDynamicConfigResponse: st.builds(
        T.ClientDynamicConfigResponse, sample_cancel_max_batch_size=st.integers(1, 1000)
    ),
}


def _session_search_requests() -> st.SearchStrategy[Any]:
    return st.builds(
        T.SessionSearchRequest,
        session_id=st.none() | texts,
        project_ids=st.none() | st.lists(texts, max_size=2),
        user_metadata=st.dictionaries(texts, texts, max_size=2),
        display_name=st.none() | texts.filter(bool),
        owner=st.one_of(strategy_for(T.OwnSearchOwner), strategy_for(T.AccessibleSearchOwner),
                        strategy_for(T.UserSearchOwner)),
        statuses=st.none() | st.lists(strategy_for(T.SessionStatusQuery), min_size=1, max_size=3),
        limit=st.integers(1, 200),
        cursor=st.none() | strategy_for(T.SessionSearchCursor),
    )


def strategy_for(tp: Any) -> st.SearchStrategy[Any]:
    """A strategy of valid values for an (already resolved) annotation."""
    if isinstance(tp, type) and tp in SPECIAL:
        return SPECIAL[tp]
    if tp is T.SessionSearchRequest:
        return _session_search_requests()
    if tp is T.ModelInputChunk or tp == T.ModelInputChunk:
        return chunks
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Literal:
        return st.sampled_from(args)
    if origin is Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        return st.one_of([strategy_for(a) for a in args])
    if tp is type(None):
        return st.none()
    if origin is list:
        return st.lists(strategy_for(args[0]), max_size=4)
    if origin is dict:
        return st.dictionaries(texts, strategy_for(args[1]), max_size=3)
    if origin is tuple:
        return st.tuples(*[strategy_for(a) for a in args])
    if tp is Any:
        return json_scalars
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return st.sampled_from(list(tp))
    if tp is bool:
        return st.booleans()
    if tp is int:
        return pos_ints
    if tp is float:
        return floats
    if tp is str:
        return texts
    if tp is bytes:
        return st.binary(max_size=20)
    if getattr(tp, "__name__", None) == "datetime":
        return aware_datetimes
    if attrs.has(tp):
        attrs.resolve_types(tp)
        kwargs = {a.name: strategy_for(a.type) for a in attrs.fields(tp) if a.name != "type"}
        return st.builds(tp, **kwargs)
    raise NotImplementedError(f"no strategy for {tp!r}")


def wire_classes() -> list[type]:
    """Every attrs class exported by tinker_sync.types."""
    return [getattr(T, n) for n in T.__all__ if isinstance(getattr(T, n), type) and attrs.has(getattr(T, n))]
