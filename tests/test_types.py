"""Wire types: construction-time validation, convenience API, coercion, package hygiene."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timezone

UTC = timezone.utc

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tinker_sync.types as T


def test_all_is_sorted_and_complete() -> None:
    assert T.__all__ == sorted(T.__all__)
    for name in T.__all__:
        assert hasattr(T, name), name
    official = {
        "AdamParams", "Checkpoint", "CheckpointArchiveUrlResponse", "CheckpointType", "CheckpointsListResponse",
        "CreateModelRequest", "CreateModelResponse", "CreateSamplingSessionRequest",
        "CreateSamplingSessionResponse", "CreateSessionRequest", "CreateSessionResponse", "Cursor", "Datum",
        "EncodedTextChunk", "ForwardBackwardInput", "ForwardBackwardOutput", "ForwardBackwardRequest",
        "ForwardRequest", "FutureRetrieveRequest", "GetInfoRequest", "GetInfoResponse",
        "GetServerCapabilitiesResponse", "HealthResponse", "ImageAssetPointerChunk", "ImageChunk",
        "LoadWeightsRequest", "LoadWeightsResponse", "LoraConfig", "LossFnInputs", "LossFnOutput", "LossFnType",
        "ModelData", "ModelInput", "ModelInputChunk", "OptimStepRequest", "OptimStepResponse",
        "ParsedCheckpointTinkerPath", "RequestErrorCategory", "RequestFailedResponse", "SampleRequest",
        "SampleResponse", "SampledSequence", "SamplingParams", "SaveWeightsForSamplerRequest",
        "SaveWeightsForSamplerResponse", "SaveWeightsForSamplerResponseInternal", "SaveWeightsRequest",
        "SaveWeightsResponse", "SessionHeartbeatRequest", "SessionHeartbeatResponse", "StopReason",
        "SupportedModel", "TensorData", "TensorDtype", "TrainingRun", "TrainingRunsResponse", "TryAgainResponse",
        "UnloadModelRequest", "UnloadModelResponse", "UntypedAPIFuture", "WeightsInfoResponse",
    }
    assert official <= set(T.__all__), official - set(T.__all__)


def test_import_does_not_load_numpy() -> None:
    code = "import sys, tinker_sync.types, tinker_sync._serde, tinker_sync._proto; print('numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "False"


def test_frozen() -> None:
    chunk = T.EncodedTextChunk(tokens=[1])
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        chunk.tokens = [2]  # type: ignore[misc]


# --- validation messages ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, exc, message",
    [
        (lambda: T.AdamParams(learning_rate=-1), ValueError, "AdamParams.learning_rate must be >= 0, got -1"),
        (lambda: T.AdamParams(beta1=1.0), ValueError, "AdamParams.beta1 must be < 1, got 1"),
        (lambda: T.AdamParams(eps=0), ValueError, "AdamParams.eps must be > 0, got 0"),
        (lambda: T.AdamParams(learning_rate="x"), TypeError, "AdamParams.learning_rate must be a number"),
        (lambda: T.AdamParams(learning_rate=float("nan")), ValueError, "must be a finite number"),
        (lambda: T.EncodedTextChunk(tokens=[1, 2, 3, "a"]), TypeError,
         "EncodedTextChunk.tokens must be a list of non-negative ints; item 3 is 'a'"),
        (lambda: T.EncodedTextChunk(tokens=[1, -5]), ValueError, "item 1 is -5"),
        (lambda: T.EncodedTextChunk(tokens=[1.5]), TypeError, "item 0 is 1.5"),
        (lambda: T.EncodedTextChunk(tokens="abc"), TypeError, "got str"),
        (lambda: T.LoraConfig(rank=0), ValueError, "LoraConfig.rank must be >= 1, got 0"),
        (lambda: T.LoraConfig(train_attn=False, train_mlp=False, train_unembed=False), ValueError,
         "at least one of train_unembed, train_mlp, train_attn"),
        (lambda: T.SamplingParams(top_k=0), ValueError, "top_k must be -1 (no limit) or >= 1"),
        (lambda: T.SamplingParams(top_p=0), ValueError, "SamplingParams.top_p must be > 0"),
        (lambda: T.SamplingParams(temperature=-0.1), ValueError, "SamplingParams.temperature must be >= 0"),
        (lambda: T.SamplingParams(stop=["a", 1]), TypeError, "SamplingParams.stop"),
        (lambda: T.SamplingParams(stop=[1, "a"]), TypeError, "not mixed"),
        (lambda: T.ImageChunk(data="not-bytes", format="png"), TypeError, "ImageChunk.data must be bytes"),
        (lambda: T.ImageChunk(data=b"x", format="gif"), ValueError, "ImageChunk.format must be one of 'png', 'jpeg'"),
        (lambda: T.ModelInput(chunks=[1, 2]), TypeError, "ModelInput.from_ints"),
        (lambda: T.TensorData(data=[1, 2], dtype="int32"), ValueError, "TensorData.dtype must be one of"),
        (lambda: T.TensorData(data=[1.5], dtype="int64"), TypeError, "item 0 is 1.5"),
        (lambda: T.TensorData(data=[1, 2, 3], dtype="int64", shape=[2, 2]), ValueError, "holds 4 elements"),
        (lambda: T.TensorData(data=[1.0], dtype="float32", shape=[1, 2], sparse_crow_indices=[0, 1]), ValueError,
         "given together"),
        (lambda: T.SampledSequence(stop_reason="eos", tokens=[]), ValueError, "SampledSequence.stop_reason"),
        (lambda: T.SampledSequence(stop_reason="stop", tokens=[1], logprobs=[]), ValueError, "one entry per token"),
        (lambda: T.ForwardBackwardInput(data=[], loss_fn="mse"), ValueError, "ForwardBackwardInput.loss_fn"),
        (lambda: T.SaveWeightsRequest(model_id="m", ttl_seconds=0), ValueError, "ttl_seconds must be >= 1"),
        (lambda: T.SetCheckpointTtlRequest(ttl_seconds=-3), ValueError, "or None to remove the expiry"),
        (lambda: T.CreateSamplingSessionRequest(session_id="s", sampling_session_seq_id=0, model_path="s3://x"),
         ValueError, "must start with 'tinker://'"),
        (lambda: T.OptimStepRequest(adam_params={"learning_rate": 1}, model_id="m"), TypeError,
         "OptimStepRequest.adam_params must be AdamParams"),
        (lambda: T.Checkpoint(checkpoint_id="c", checkpoint_type="training", time="yesterday", tinker_path="p"),
         ValueError, "Checkpoint.time must be an ISO-8601"),
    ],
)
def test_validation_messages(make, exc, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(exc) as info:
        make()
    assert message in str(info.value)


# --- ModelInput ---------------------------------------------------------------------------------------


def test_model_input_convenience() -> None:
    mi = T.ModelInput.from_ints([1, 2, 3])
    assert mi.length == 3 and mi.to_ints() == [1, 2, 3]
    mi2 = mi.append_int(4)
    assert mi2.to_ints() == [1, 2, 3, 4] and mi.to_ints() == [1, 2, 3]
    assert len(mi2.chunks) == 1
    img = T.ImageChunk(data=b"\x89PNG", format="png", expected_tokens=5)
    mi3 = mi2.append(img)
    assert mi3.length == 9
    with pytest.raises(ValueError, match="chunk 1 is a ImageChunk"):
        mi3.to_ints()
    mi4 = mi3.append_int(7)
    assert len(mi4.chunks) == 3 and mi4.chunks[-1] == T.EncodedTextChunk(tokens=[7])
    assert T.ModelInput.empty().length == 0 and T.ModelInput.empty().to_ints() == []
    assert T.EncodedTextChunk(tokens=[1, 2]).length == 2
    with pytest.raises(ValueError, match="expected_tokens"):
        _ = T.ModelInput(chunks=[T.ImageChunk(data=b"", format="png")]).length


def test_tokens_are_normalised_to_plain_ints() -> None:
    chunk = T.EncodedTextChunk(tokens=(1, 2, True))
    assert chunk.tokens == [1, 2, 1] and all(type(t) is int for t in chunk.tokens)


@given(st.lists(st.integers(0, 2**32 - 1)))
def test_from_ints_to_ints(tokens: list[int]) -> None:
    assert T.ModelInput.from_ints(tokens).to_ints() == tokens


# --- TensorData & Datum ----------------------------------------------------------------------------------


def test_tensor_float32_rounding_and_tolist() -> None:
    td = T.TensorData(data=[0.1, 1, 2], dtype="float32", shape=[3])
    assert td.data[0] == pytest.approx(0.1) and td.data[0] != 0.1  # rounded to float32
    assert all(isinstance(x, float) for x in td.data)
    m = T.TensorData(data=[1, 2, 3, 4, 5, 6], dtype="int64", shape=[2, 3])
    assert m.tolist() == [[1, 2, 3], [4, 5, 6]]
    csr = T.TensorData(data=[5, 7], dtype="int64", shape=[2, 3], sparse_crow_indices=[0, 1, 2],
                       sparse_col_indices=[2, 0])
    assert csr.tolist() == [[0, 0, 5], [7, 0, 0]]


def test_tensor_numpy_round_trip() -> None:
    np = pytest.importorskip("numpy")
    arr = np.arange(6, dtype=np.float64).reshape(2, 3) / 4
    td = T.TensorData.from_numpy(arr)
    assert td.dtype == "float32" and td.shape == [2, 3]
    back = td.to_numpy()
    assert back.dtype == np.float32 and back.shape == (2, 3) and np.allclose(back, arr)
    ti = T.TensorData.from_numpy(np.array([1, 2, 3], dtype=np.int32))
    assert ti.dtype == "int64" and ti.data == [1, 2, 3]
    csr = T.TensorData(data=[5.0], dtype="float32", shape=[2, 2], sparse_crow_indices=[0, 0, 1],
                       sparse_col_indices=[1])
    assert csr.to_numpy().tolist() == [[0.0, 0.0], [0.0, 5.0]]


def test_tensor_torch_round_trip() -> None:
    torch = pytest.importorskip("torch")
    t = torch.tensor([[1.5, 2.0]], dtype=torch.float64)
    td = T.TensorData.from_torch(t)
    assert td.dtype == "float32" and td.shape == [1, 2]
    assert td.to_torch().tolist() == [[1.5, 2.0]]


def test_datum_coerces_lists_by_key() -> None:
    d = T.Datum(
        model_input=T.ModelInput.from_ints([1, 2, 3]),
        loss_fn_inputs={"target_tokens": [2, 3, 4], "weights": [0, 1, 1], "advantages": [[0.5, 1], [2, 3]]},
    )
    assert d.loss_fn_inputs["target_tokens"] == T.TensorData(data=[2, 3, 4], dtype="int64", shape=[3])
    assert d.loss_fn_inputs["weights"] == T.TensorData(data=[0.0, 1.0, 1.0], dtype="float32", shape=[3])
    assert d.loss_fn_inputs["advantages"].shape == [2, 2]
    with pytest.raises(ValueError, match=r"loss_fn_inputs\['mask'\].*pass a TensorData"):
        T.Datum(model_input=T.ModelInput.from_ints([1]), loss_fn_inputs={"mask": [1]})
    with pytest.raises(ValueError, match="rectangular"):
        T.Datum(model_input=T.ModelInput.from_ints([1]), loss_fn_inputs={"weights": [[1, 2], [3]]})
    with pytest.raises(TypeError, match="target_tokens"):
        T.Datum(model_input=T.ModelInput.from_ints([1]), loss_fn_inputs={"target_tokens": [1.5]})
    with pytest.raises(TypeError, match="Datum.model_input must be a ModelInput"):
        T.Datum(model_input=[1, 2], loss_fn_inputs={})


def test_datum_coerces_numpy() -> None:
    np = pytest.importorskip("numpy")
    d = T.Datum(model_input=T.ModelInput.from_ints([1, 2]),
                loss_fn_inputs={"target_tokens": np.array([3, 4]), "mask": np.ones(2, dtype=np.float32)})
    assert d.loss_fn_inputs["target_tokens"].dtype == "int64"
    assert d.loss_fn_inputs["mask"] == T.TensorData(data=[1.0, 1.0], dtype="float32", shape=[2])


# --- tinker paths --------------------------------------------------------------------------------------


def test_parsed_tinker_path() -> None:
    p = T.ParsedCheckpointTinkerPath.from_tinker_path("tinker://abc:train:0/weights/step-10")
    assert (p.training_run_id, p.checkpoint_type, p.checkpoint_id) == ("abc:train:0", "training", "weights/step-10")
    assert p.tinker_path == "tinker://abc:train:0/weights/step-10"
    s = T.ParsedCheckpointTinkerPath.from_tinker_path("tinker://r/sampler_weights/final")
    assert s.checkpoint_type == "sampler" and s.checkpoint_id == "sampler_weights/final"
    empty = T.ParsedCheckpointTinkerPath.from_tinker_path("tinker:///weights/")
    assert empty.training_run_id == "" and empty.checkpoint_id == "weights/"


@pytest.mark.parametrize(
    "path",
    ["http://r/weights/x", "tinker://r/weights", "tinker://r/weights/x/y", "tinker://r/checkpoints/x", "r/weights/x"],
)
def test_parsed_tinker_path_invalid(path: str) -> None:
    with pytest.raises(ValueError, match="Invalid tinker path"):
        T.ParsedCheckpointTinkerPath.from_tinker_path(path)


# --- misc ----------------------------------------------------------------------------------------------


def test_datetimes_are_aware() -> None:
    cp = T.Checkpoint(checkpoint_id="weights/a", checkpoint_type="training", time=datetime(2025, 1, 1),
                      tinker_path="tinker://r/weights/a")
    assert cp.time.tzinfo is UTC


def test_secrets_not_in_repr() -> None:
    req = T.LoadWeightsRequest(path="tinker://r/weights/a", optimizer=False, model_id="m",
                               weights_access_token="secret-token")
    assert "secret-token" not in repr(req)


def test_forward_backward_request_from_input() -> None:
    fbi = T.ForwardBackwardInput(
        data=[T.Datum(model_input=T.ModelInput.from_ints([1]), loss_fn_inputs={"target_tokens": [2]})],
        loss_fn="cross_entropy",
    )
    req = T.ForwardBackwardRequest.from_input(fbi, model_id="m", seq_id=3, forward_only=True)
    assert req.forward_backward_input == fbi and req.forward_only and req.seq_id == 3
