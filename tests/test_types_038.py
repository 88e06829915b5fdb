"""The 0.38 wire types: validation, unions by tag, defaults kept off the wire for older servers."""

from __future__ import annotations

import json
from typing import Any

import pytest

import tinker_sync.types as T
from tinker_sync import _serde


def _wire(obj: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(_serde.dumps(obj))
    return data


def test_new_optional_keys_stay_off_the_wire_until_used() -> None:
    create = T.CreateModelRequest(session_id="s", model_seq_id=0, base_model="b")
    assert create.optimizer_config == T.AdamOptimizerConfig() and "optimizer_config" not in _wire(create)
    dimuon = T.CreateModelRequest(session_id="s", model_seq_id=0, base_model="b",
                                  optimizer_config=T.DimuonOptimizerConfig())
    assert _wire(dimuon)["optimizer_config"] == {"version": 1, "type": "dimuon"}
    save = T.SaveWeightsForSamplerRequest(model_id="m", sampling_session_seq_id=1)
    assert save.kind == "snapshot" and "kind" not in _wire(save)
    assert _wire(T.SaveWeightsForSamplerRequest(model_id="m", kind="inflight"))["kind"] == "inflight"
    sample = T.SampleRequest(prompt=T.ModelInput.from_ints([1]), sampling_params=T.SamplingParams())
    assert not {"topk_sample_logprobs", "prompt_alt_tokens_k"} & set(_wire(sample))


def test_provenance_spans_and_datum() -> None:
    datum = T.Datum(model_input=T.ModelInput.from_ints([1, 2, 3]), loss_fn_inputs={"target_tokens": [2, 3, 4]})
    spans = [T.PromptProvenanceSpan(sequence_id="q", length=2), T.SampledProvenanceSpan(sequence_id="a", length=1)]
    tagged = datum.with_provenance(model_input=spans, loss_fn_inputs=spans)
    assert tagged.model_input_spans == spans and tagged.loss_fn_input_spans == spans
    assert _serde.loads(_serde.dumps(tagged), T.Datum) == tagged
    with pytest.raises(ValueError, match="cover 2 positions"):
        datum.with_provenance(model_input=spans[:1], loss_fn_inputs=spans)
    with pytest.raises(ValueError, match="pair"):
        T.Datum(model_input=T.ModelInput.from_ints([1]), loss_fn_inputs={}, model_input_spans=spans)
    with pytest.raises(ValueError, match="non-empty"):
        T.PromptProvenanceSpan(sequence_id="", length=1)
    with pytest.raises(TypeError):
        T.PromptProvenanceSpan("q", 0, 1)  # type: ignore[misc]  # keyword-only, as officially


def test_optimizer_params_validation() -> None:
    with pytest.raises(TypeError):
        T.DimuonParams()  # type: ignore[call-arg]  # learning_rate is required, as officially
    with pytest.raises(ValueError, match="beta1"):
        T.DimuonParams(learning_rate=0.1, beta1=1.0)
    with pytest.raises(TypeError, match="AdamParams or DimuonParams"):
        T.OptimStepRequest(optim_params={"learning_rate": 1.0}, model_id="m")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="optimizer_config"):
        T.CreateModelRequest(session_id="s", model_seq_id=0, base_model="b", optimizer_config="dimuon")


def test_session_search_validation() -> None:
    with pytest.raises(ValueError, match="between 1 and 200"):
        T.SessionSearchRequest(limit=201)
    with pytest.raises(ValueError, match="1 to 10"):
        T.UserSearchOwner(owner_urns=[])
    with pytest.raises(ValueError, match="at least 1 item"):
        T.SessionSearchRequest(statuses=[])
    with pytest.raises(ValueError, match="non-empty"):
        T.SessionSearchRequest(display_name="")
    with pytest.raises(TypeError, match="owner"):
        T.SessionSearchRequest(owner="own")  # type: ignore[arg-type]


def test_unions_structure_by_their_tag() -> None:
    got = _serde.loads(
        {"completions": [{"state": "failed", "request_id": "r"}], "cursor": 2}, T.FuturesRetrieveResponse
    )
    assert got.completions == [T.FutureFailed(request_id="r")]
    event = {"event": "GENERIC_EVENT", "event_id": "e", "event_name": "n", "event_session_index": 0,
             "severity": "INFO", "timestamp": "2031-01-01T00:00:00Z"}
    batch = _serde.loads({"events": [event], "platform": "linux", "sdk_version": "x", "session_id": "s",
                          "process_uuid": "p"}, T.TelemetrySendRequest)
    assert isinstance(batch.events[0], T.GenericEvent) and batch.events[0].event_data == {}
    summary = {"session_id": "s", "created_at": "2031-01-01T00:00:00Z", "owner": "o", "project_id": "p",
               "checkpoints_count": 0, "status": None}
    assert _serde.loads(summary, T.SessionSummary).status is None
    with pytest.raises(Exception, match="unknown SessionStatus type 'paused'"):
        _serde.loads({**summary, "status": {"type": "paused"}}, T.SessionSummary)


def test_numpy_conveniences() -> None:
    np = pytest.importorskip("numpy")
    seq = T.SampledSequence(stop_reason="stop", tokens=[5, 6], logprobs=[-0.5, -1.5],
                            topk_logprobs=[[(5, -0.5), (7, -2.0)], None], sequence_id="seq-1")
    assert seq.tokens_np.dtype == np.int32 and seq.tokens_np.tolist() == [5, 6]
    assert seq.logprobs_np is not None and seq.logprobs_np.tolist() == [-0.5, -1.5]
    topk = seq.topk_logprobs_np
    assert topk is not None and topk.token_ids.tolist() == [[5, 7], [0, 0]]
    resp = T.SampleResponse(sequences=[seq], prompt_logprobs=[None, -1.0])
    assert np.isnan(resp.prompt_logprobs_np[0]) and resp.prompt_logprobs_np[1] == -1.0
    assert resp.topk_prompt_logprobs_np is None
