"""JSON wire format: round trips for every wire type, golden fixtures, error reporting."""

from __future__ import annotations

import json
from datetime import datetime, timezone

UTC = timezone.utc
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tinker_sync.types as T
from tests.test_types_strategies import strategy_for, wire_classes
from tinker_sync import _serde
from tinker_sync._exceptions import APIResponseValidationError

GOLDEN_DIR = Path(__file__).parent / "data" / "golden"


def _check_wire_form(obj: Any, data: Any, path: str = "$") -> None:
    """None-valued optional fields are absent; every `type` tag is present; recurse into children."""
    if isinstance(obj, T.OptimStepRequest):  # optim_params travels as adam_params / optimizer_params
        key = "adam_params" if isinstance(obj.optim_params, T.AdamParams) else "optimizer_params"
        assert "optim_params" not in data and key in data, path
        data = {**data, "optim_params": data[key]}
    if attrs.has(type(obj)):
        assert isinstance(data, dict), path
        for a in attrs.fields(type(obj)):
            value = getattr(obj, a.name)
            if value is None and not a.metadata.get("serde_keep_none"):
                assert a.name not in data, f"{path}.{a.name} is None but was sent"
                continue
            if a.metadata.get("serde_omit_default") and value == a.default:
                assert a.name not in data, f"{path}.{a.name} is its default but was sent"
                continue
            assert a.name in data, f"{path}.{a.name} missing on the wire"
            if a.name == "type":
                assert data["type"] == value
            _check_wire_form(value, data[a.name], f"{path}.{a.name}")
    elif isinstance(obj, list):
        for i, (o, d) in enumerate(zip(obj, data)):
            _check_wire_form(o, d, f"{path}[{i}]")
    elif isinstance(obj, dict):
        for k, o in obj.items():
            _check_wire_form(o, data[k], f"{path}[{k!r}]")


CLASSES = wire_classes()


def test_every_wire_class_has_a_strategy() -> None:
    for cls in CLASSES:
        strategy_for(cls)  # raises NotImplementedError for an unhandled annotation


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_round_trip(cls: type) -> None:
    @given(strategy_for(cls))
    def check(obj: Any) -> None:
        wire = _serde.dumps(obj)
        assert isinstance(wire, bytes)
        data = json.loads(wire)
        _check_wire_form(obj, data)
        assert _serde.loads(wire, cls) == obj
        assert _serde.structure_strict(data, cls) == obj

    check()


@given(strategy_for(T.ModelInputChunk))
def test_union_round_trip(chunk: Any) -> None:
    data = _serde.unstructure(chunk)
    assert data["type"] == chunk.type
    assert _serde.loads(data, T.ModelInputChunk) == chunk


def _golden_cases() -> list[Path]:
    return sorted(GOLDEN_DIR.glob("*.json"))


@pytest.mark.parametrize("path", _golden_cases(), ids=lambda p: p.stem)
def test_golden(path: Path) -> None:
    cls = getattr(T, path.stem.split("__")[0])
    expected = json.loads(path.read_text())
    obj = _serde.structure_strict(expected, cls)
    assert json.loads(_serde.dumps(obj)) == expected


def test_golden_fixtures_exist() -> None:
    assert len(_golden_cases()) >= 20


def test_none_omitted_defaults_sent() -> None:
    req = T.SampleRequest(
        prompt=T.ModelInput.from_ints([1, 2]),
        sampling_params=T.SamplingParams(max_tokens=3, stop=["\n"]),
        sampling_session_id="s1",
        seq_id=0,
        prompt_logprobs=False,
    )
    data = json.loads(_serde.dumps(req))
    assert data == {
        "prompt": {"chunks": [{"tokens": [1, 2], "type": "encoded_text"}]},
        "sampling_params": {"max_tokens": 3, "stop": ["\n"], "temperature": 1.0, "top_k": -1, "top_p": 1.0},
        "num_samples": 1,
        "sampling_session_id": "s1",
        "seq_id": 0,
        "prompt_logprobs": False,
        "topk_prompt_logprobs": 0,
        "type": "sample",
    }


def test_explicit_null_is_absent() -> None:
    # Servers built from the official pydantic models send null for unset optional fields, type included.
    body = {"model_id": "m", "model_data": {"arch": None, "model_name": "b"}, "type": None, "is_lora": None,
            "lora_rank": None, "model_name": None, "optimizer_config": None}
    info = _serde.loads(body, T.GetInfoResponse)
    assert info.type == "get_info" and info.model_data.model_name == "b" and info.is_lora is None
    assert info.optimizer_config == T.AdamOptimizerConfig()
    saved = _serde.loads({"path": "tinker://r/weights/s1", "type": None}, T.SaveWeightsResponse)
    assert saved.path == "tinker://r/weights/s1" and saved.type == "save_weights"
    loaded = _serde.loads({"path": None, "type": None}, T.LoadWeightsResponse)
    assert loaded == T.LoadWeightsResponse()
    with pytest.raises(APIResponseValidationError, match="model_id"):
        _serde.loads({"model_id": None, "model_data": {}}, T.GetInfoResponse)  # required stays required


def test_optim_step_wire_names() -> None:
    adam = T.OptimStepRequest(adam_params=T.AdamParams(learning_rate=0.1), model_id="m", seq_id=2)
    assert adam.optim_params == adam.adam_params == T.AdamParams(learning_rate=0.1)
    data = json.loads(_serde.dumps(adam))
    assert set(data) == {"adam_params", "model_id", "seq_id", "type"}
    dimuon = T.OptimStepRequest(optim_params=T.DimuonParams(learning_rate=0.02), model_id="m")
    assert dimuon.adam_params is None
    data = json.loads(_serde.dumps(dimuon))
    assert data["optimizer_params"]["type"] == "dimuon" and "adam_params" not in data
    assert _serde.loads(data, T.OptimStepRequest) == dimuon
    with pytest.raises(TypeError, match="exactly one"):
        T.OptimStepRequest(model_id="m")


def test_forward_backward_request_official_constructor() -> None:
    fbi = T.ForwardBackwardInput(data=[T.Datum(model_input=T.ModelInput.from_ints([1, 2]),
                                                loss_fn_inputs={"target_tokens": [2, 3]})], loss_fn="cross_entropy")
    official = T.ForwardBackwardRequest(forward_backward_input=fbi, model_id="m", seq_id=1)
    parts = T.ForwardBackwardRequest(model_id="m", seq_id=1, data=fbi.data, loss_fn="cross_entropy")
    assert official == parts and official.data == fbi.data and official.loss_fn == "cross_entropy"
    with pytest.raises(TypeError, match="not both"):
        T.ForwardBackwardRequest(forward_backward_input=fbi, model_id="m", loss_fn="ppo")


def test_request_error_category_enum() -> None:
    failed = _serde.loads({"error": "bad", "category": "User"}, T.RequestFailedResponse)
    assert failed.category is T.RequestErrorCategory.User and failed.category == "user"
    assert str(failed.category) == "user" and f"{failed.category}" == "user"
    assert _serde.loads({"error": "x", "category": "weird"}, T.RequestFailedResponse).category == "unknown"
    assert json.loads(_serde.dumps(failed)) == {"error": "bad", "category": "user"}


def test_unknown_billing_kind_is_kept() -> None:
    event = {"bucket_start": "2026-01-01T00:00:00Z", "bucket_end": "2026-01-01T01:00:00Z",
             "event_info": {"type": "gpu_hours", "hours": 2}}
    parsed = _serde.loads({"data": [event]}, T.BillingUsageResponse)
    assert parsed.data[0].event_info == T.OtherBillingEvent(type="gpu_hours")


def test_ttl_null_is_sent() -> None:
    assert json.loads(_serde.dumps(T.SetCheckpointTtlRequest(ttl_seconds=None))) == {"ttl_seconds": None}


def test_bytes_are_base64() -> None:
    chunk = T.ImageChunk(data=b"\x89PNG\x00\xff", format="png")
    assert _serde.unstructure(chunk) == {"data": "iVBORwD/", "format": "png", "type": "image"}
    assert _serde.loads({"data": "iVBORwD/", "format": "png", "type": "image"}, T.ImageChunk) == chunk


def test_unknown_tag_names_tag_and_choices() -> None:
    with pytest.raises(APIResponseValidationError) as info:
        _serde.loads(b'{"chunks": [{"type": "video", "tokens": [1]}]}', T.ModelInput)
    msg = str(info.value)
    assert "'video'" in msg and "'encoded_text'" in msg and "'image'" in msg
    assert info.value.expected_type == "ModelInput"


def test_unknown_keys_tolerated_by_loads_refused_by_strict() -> None:
    data = {"request_id": "r1", "model_id": "m", "new_field": {"x": 1}}
    assert _serde.loads(data, T.UntypedAPIFuture) == T.UntypedAPIFuture(request_id="r1", model_id="m")
    with pytest.raises(ValueError, match="new_field"):
        _serde.structure_strict(data, T.UntypedAPIFuture)


def test_missing_required_key_is_validation_error() -> None:
    with pytest.raises(APIResponseValidationError, match="session_id"):
        _serde.loads(b'{"type": "create_session"}', T.CreateSessionResponse)


def test_invalid_value_message_has_path() -> None:
    body = b'{"sequences": [{"stop_reason": "stop", "tokens": [1, "x"]}]}'
    with pytest.raises(APIResponseValidationError) as info:
        _serde.loads(body, T.SampleResponse)
    msg = str(info.value)
    assert "SampledSequence.tokens" in msg and "item 1" in msg and "$.sequences[0]" in msg
    assert info.value.body == body


def test_not_json_is_validation_error() -> None:
    with pytest.raises(APIResponseValidationError):
        _serde.loads(b"<html>oops</html>", T.HealthResponse)


def test_parse_request_raises_value_error() -> None:
    with pytest.raises(ValueError, match="AdamParams.learning_rate must be >= 0"):
        _serde.parse_request(b'{"adam_params": {"learning_rate": -1}, "model_id": "m"}', T.OptimStepRequest)


def test_datetime_forms() -> None:
    cp = _serde.loads(
        {"checkpoint_id": "weights/a", "checkpoint_type": "training", "time": "2025-03-04T05:06:07.5Z",
         "tinker_path": "tinker://r/weights/a"},
        T.Checkpoint,
    )
    assert cp.time == datetime(2025, 3, 4, 5, 6, 7, 500000, tzinfo=UTC)
    naive = _serde.loads(
        {"checkpoint_id": "weights/a", "checkpoint_type": "training", "time": "2025-03-04T05:06:07",
         "tinker_path": "tinker://r/weights/a"},
        T.Checkpoint,
    )
    assert naive.time.tzinfo is not None
    assert _serde.unstructure(cp)["time"] == "2025-03-04T05:06:07.500000+00:00"


def test_request_failed_unknown_category_becomes_unknown() -> None:
    assert _serde.loads({"error": "boom", "category": "weird"}, T.RequestFailedResponse).category == "unknown"
    assert _serde.loads({"error": "boom"}, T.RequestFailedResponse).category == "unknown"


def test_dumps_big_datum_gives_json_plain_lists() -> None:
    # The hot path hands json one plain list per typed buffer (one C-level tolist(), no per-element hook).
    tokens = list(range(100_000))
    datum = T.Datum(model_input=T.ModelInput.from_ints(tokens), loss_fn_inputs={"target_tokens": tokens})
    data = _serde.unstructure(datum)
    assert type(data["model_input"]["chunks"][0]["tokens"]) is list
    assert data["model_input"]["chunks"][0]["tokens"] == tokens
    assert type(data["loss_fn_inputs"]["target_tokens"]["data"]) is list
    back = _serde.loads(_serde.dumps(datum), T.Datum)
    assert back == datum


@given(st.lists(st.integers(0, 2**31 - 1), max_size=50))
def test_model_input_json_round_trip(tokens: list[int]) -> None:
    mi = T.ModelInput.from_ints(tokens)
    assert _serde.loads(_serde.dumps(mi), T.ModelInput).to_ints() == tokens


@pytest.mark.parametrize(
    "body, cls, fragment",
    [
        (b'{"supported_models": "nope"}', T.GetServerCapabilitiesResponse, "expected a JSON array, got a string"),
        (b'{"supported_models": ["x"]}', T.GetServerCapabilitiesResponse, "expected a JSON object, got a string"),
        (b"[1, 2]", T.HealthResponse, "expected a JSON object, got an array"),
        (b'{"metrics": [1]}', T.OptimStepResponse, "expected a JSON object, got an array @ $.metrics"),
        (b'{"sequences": [{"stop_reason": "stop", "tokens": "ab"}]}', T.SampleResponse, "$.sequences[0].tokens"),
        (b'{"request_id": 5}', T.UntypedAPIFuture, "UntypedAPIFuture.request_id must be a str"),
        (b'{"offset": "1", "limit": 1, "total_count": 1}', T.Cursor, "Cursor.offset must be an int"),
        (b'{"offset": 1.5, "limit": 1, "total_count": 1}', T.Cursor, "Cursor.offset must be an int"),
    ],
)
def test_json_shape_mismatches_are_refused(body: bytes, cls: type, fragment: str) -> None:
    with pytest.raises(APIResponseValidationError) as info:
        _serde.loads(body, cls)
    assert fragment in str(info.value)
