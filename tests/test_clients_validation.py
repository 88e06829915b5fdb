"""Client-side validation over HTTP against the local server: input the server would refuse raises in the
caller's thread before a seq_id is used (nothing is sent, the client stays usable), and a request the server
refuses after consuming its seq_id leaves the TrainingClient usable."""

from __future__ import annotations

import math
from typing import Any

import attrs
import pytest

from tinker_sync import BadRequestError, types
from tinker_sync._checks import ModelLimits, ServerLimits, check_datum_limits, check_name, check_prompt_limits
from tinker_sync._exceptions import APIConnectionError, NotFoundError
from tinker_sync.service_client import ServiceClient

MODEL = "tinker-sync/tiny-byte"
T = 60.0
ADAM = types.AdamParams(learning_rate=1e-2)


def _datum(tokens: list[int], **inputs: Any) -> types.Datum:
    loss_inputs: dict[str, Any] = {"target_tokens": [t + 1 for t in tokens], "weights": [1.0] * len(tokens)}
    loss_inputs.update(inputs)
    return types.Datum(model_input=types.ModelInput.from_ints(tokens), loss_fn_inputs=loss_inputs)


def _posts(server: Any, path: str) -> int:
    return sum(1 for r in server.requests if r.method == "POST" and r.path.split("?")[0] == path)


def _max_context(service: ServiceClient) -> int:
    caps = service.get_server_capabilities()
    (limit,) = [m.max_context_length for m in caps.supported_models if m.model_name == MODEL]
    assert limit is not None
    return limit


def _still_trains(training: Any) -> None:
    """The next valid calls on the same client succeed (nothing poisoned, no seq_id gap)."""
    out = training.forward_backward([_datum([1, 2, 3])]).result(T)
    assert math.isfinite(out.metrics["loss:sum"])
    training.optim_step(ADAM).result(T)


# ---- refused in the caller's thread, nothing sent ------------------------------------------------


@pytest.mark.parametrize("name", ["has space", "na\u00efve", "x" * 201, "..", ".", "a\\b", "semi;colon"])
def test_bad_checkpoint_names_raise_at_once_and_send_nothing(local_server: Any, service: ServiceClient,
                                                             name: str) -> None:
    training = service.create_lora_training_client(MODEL, rank=4)
    before = {p: _posts(local_server, p) for p in ("/api/v1/save_weights", "/api/v1/save_weights_for_sampler",
                                                   "/api/v1/save_weights_external")}
    for call in (training.save_state, training.save_weights_for_sampler, training.save_weights_external):
        with pytest.raises(ValueError, match="checkpoint name .* is invalid; use 1-200 characters"):
            call(name)
    assert {p: _posts(local_server, p) for p in before} == before
    _still_trains(training)
    assert training.save_state("ok-name_1.2=v+x@y,z").result(T).path.endswith("/ok-name_1.2=v+x@y,z")


def test_a_200_character_name_is_accepted_by_both_sides(service: ServiceClient) -> None:
    training = service.create_lora_training_client(MODEL, rank=4)
    name = "n" * 200
    assert check_name(name, "t") == name
    assert training.save_state(name).result(T).path.endswith(name)


@pytest.mark.parametrize("bad", [
    pytest.param({"weights": [1.0, float("nan"), 1.0]}, id="nan-weights"),
    pytest.param({"weights": [float("inf"), 1.0, 1.0]}, id="inf-weights"),
])
def test_non_finite_loss_inputs_raise_at_once(local_server: Any, service: ServiceClient, bad: dict[str, Any]) -> None:
    training = service.create_lora_training_client(MODEL, rank=4)
    with pytest.raises(ValueError, match=r"loss_fn_inputs\['weights'\] holds (nan|inf) at flat position"):
        training.forward_backward([_datum([1, 2, 3], **bad)])
    assert _posts(local_server, "/api/v1/forward_backward") == 0
    _still_trains(training)


@pytest.mark.parametrize("key", ["advantages", "logprobs"])
def test_non_finite_rl_inputs_raise_at_once(local_server: Any, service: ServiceClient, key: str) -> None:
    training = service.create_lora_training_client(MODEL, rank=4)
    inputs = {"advantages": [0.5, 0.5], "logprobs": [-1.0, -1.0]}
    inputs[key] = [0.5, float("-inf") if key == "logprobs" else float("nan")]
    datum = types.Datum(model_input=types.ModelInput.from_ints([1, 2]),
                        loss_fn_inputs={"target_tokens": [2, 3], **inputs})
    with pytest.raises(ValueError, match=rf"data\[0\].loss_fn_inputs\['{key}'\] holds"):
        training.forward_backward([datum], "importance_sampling")
    assert _posts(local_server, "/api/v1/forward_backward") == 0
    _still_trains(training)


def test_empty_inputs_raise_at_once(local_server: Any, service: ServiceClient) -> None:
    training = service.create_lora_training_client(MODEL, rank=4)
    empty = types.ModelInput.from_ints([])
    with pytest.raises(ValueError, match=r"data\[0\].model_input is empty"):
        training.forward_backward([types.Datum(model_input=empty, loss_fn_inputs={"target_tokens": [],
                                                                                 "weights": []})])
    sampler = service.create_sampling_client(base_model=MODEL).result(T)
    with pytest.raises(ValueError, match="prompt is empty"):
        sampler.sample(empty, 1, types.SamplingParams(max_tokens=2))
    with pytest.raises(ValueError, match="prompt is empty"):
        sampler.compute_logprobs(empty)
    assert _posts(local_server, "/api/v1/forward_backward") == 0
    assert _posts(local_server, "/api/v1/asample") == 0
    _still_trains(training)


def test_context_longer_than_the_model_raises_with_the_limit_named(local_server: Any,
                                                                   service: ServiceClient) -> None:
    limit = _max_context(service)
    training = service.create_lora_training_client(MODEL, rank=4)
    with pytest.raises(ValueError, match=rf"{limit + 1} tokens exceeds the maximum context of {MODEL} \({limit}"):
        training.forward_backward([_datum([1] * (limit + 1))])
    sampler = service.create_sampling_client(base_model=MODEL).result(T)
    prompt = types.ModelInput.from_ints([1] * (limit - 2))
    with pytest.raises(ValueError, match=rf"{limit - 2} tokens \+ max_tokens 3 exceeds .*\({limit} tokens"):
        sampler.sample(prompt, 1, types.SamplingParams(max_tokens=3))
    assert _posts(local_server, "/api/v1/forward_backward") == 0
    assert _posts(local_server, "/api/v1/asample") == 0
    assert len(sampler.sample(prompt, 1, types.SamplingParams(max_tokens=2)).result(T).sequences) == 1
    _still_trains(training)


def test_a_two_million_token_prompt_is_never_sent(local_server: Any, service: ServiceClient) -> None:
    """Even a sampler whose base model is not known client-side (a checkpoint path) refuses what no model takes."""
    training = service.create_lora_training_client(MODEL, rank=4)
    path = training.save_weights_for_sampler("huge").result(T).path
    sampler = service.create_sampling_client(model_path=path).result(T)
    huge = types.ModelInput.from_ints([7] * 2_000_000)
    with pytest.raises(ValueError, match=r"2000000 tokens \+ max_tokens 1 exceeds the maximum context of any model"):
        sampler.sample(huge, 1, types.SamplingParams(max_tokens=1))
    assert _posts(local_server, "/api/v1/asample") == 0
    small = types.ModelInput.from_ints([7, 8])
    assert len(sampler.sample(small, 1, types.SamplingParams(max_tokens=1)).result(T).sequences) == 1


def test_sparse_tensor_shape_must_match_the_input(local_server: Any, service: ServiceClient) -> None:
    training = service.create_lora_training_client(MODEL, rank=4)
    sparse = types.TensorData(data=[1.0], dtype="float32", shape=[3, 1], sparse_crow_indices=[0, 1, 1, 1],
                              sparse_col_indices=[0])
    with pytest.raises(ValueError, match=r"loss_fn_inputs\['weights'\] has 3 entries .* has 2 tokens"):
        training.forward_backward([_datum([1, 2], weights=sparse)])
    with pytest.raises(ValueError, match="sparse_crow_indices must have shape"):
        types.TensorData(data=[1.0], dtype="float32", shape=[2, 1], sparse_crow_indices=[0, 1],
                         sparse_col_indices=[0])
    assert _posts(local_server, "/api/v1/forward_backward") == 0
    _still_trains(training)


# ---- refused by the server, seq_id consumed: the client keeps going ------------------------------


def test_a_server_refusal_that_consumes_the_seq_id_leaves_the_client_usable(local_server: Any,
                                                                           service: ServiceClient) -> None:
    """Token id 300 is out of the local model's vocabulary (not published, so not checked client-side)."""
    training = service.create_lora_training_client(MODEL, rank=4)
    refused = training.forward_backward([_datum([1, 300])])
    after = training.optim_step(ADAM)  # queued behind the refused call, sent after its 400
    with pytest.raises(BadRequestError, match="token id 300") as info:
        refused.result(T)
    assert {k.lower() for k in info.value.headers} >= {"x-tinker-seq-id-consumed"}
    after.result(T)
    _still_trains(training)
    assert training.save_state("after-refusal").result(T).path


def test_image_chunk_refused_by_a_text_only_server_leaves_the_client_usable(service: ServiceClient) -> None:
    training = service.create_lora_training_client(MODEL, rank=4)
    image = types.ModelInput(chunks=[types.ImageChunk(data=b"\x89PNG", format="png", expected_tokens=2)])
    datum = types.Datum(model_input=image, loss_fn_inputs={"target_tokens": [1, 2], "weights": [1.0, 1.0]})
    with pytest.raises(BadRequestError, match="encoded_text"):
        training.forward_backward([datum]).result(T)
    _still_trains(training)


# ---- pure checks ------------------------------------------------------------------------------------


def test_limits_checks_without_a_server() -> None:
    limits = ModelLimits(max_context=4, vocab_size=10, model="m")
    check_datum_limits([_datum([1, 2, 3, 4])], limits, "fb")
    with pytest.raises(ValueError, match=r"token id 10 at position 1 is out of range for m \(vocabulary size 10"):
        check_datum_limits([_datum([1, 10])], limits, "fb")
    with pytest.raises(ValueError, match=r"target_tokens'\]: token id 10"):
        check_datum_limits([_datum([1, 9])], limits, "fb")  # targets are tokens + 1
    with pytest.raises(ValueError, match="5 tokens exceeds the maximum context of m"):
        check_datum_limits([_datum([1] * 5)], limits, "fb")
    check_datum_limits([_datum([1] * 50)], ModelLimits(), "fb")  # unknown limits: skipped
    with pytest.raises(ValueError, match=r"target_tokens'\]: token id -1 at position 1 is negative"):
        check_datum_limits([_datum([1, 2], target_tokens=[2, -1])], ModelLimits(), "fb")
    two_chunks = types.ModelInput(
        chunks=[types.EncodedTextChunk(tokens=[1, 2]), types.EncodedTextChunk(tokens=[3, 12])]
    )
    with pytest.raises(ValueError, match=r"prompt: token id 12 at position 3 is out"):
        check_prompt_limits(two_chunks, 0, ModelLimits(max_context=None, vocab_size=10), "sample")
    check_prompt_limits(types.ModelInput.from_ints([1, 2]), 2, limits, "sample")
    with pytest.raises(ValueError, match=r"2 tokens \+ max_tokens 3 exceeds"):
        check_prompt_limits(types.ModelInput.from_ints([1, 2]), 3, limits, "sample")


def test_server_limits_pick_the_model_or_the_largest_and_survive_a_missing_endpoint() -> None:
    caps = types.GetServerCapabilitiesResponse(supported_models=[
        types.SupportedModel(model_name="a", max_context_length=8),
        types.SupportedModel(model_name="b", max_context_length=32),
    ])
    calls: list[int] = []

    def fetch() -> types.GetServerCapabilitiesResponse:
        calls.append(1)
        return caps

    limits = ServerLimits(fetch)
    assert limits.of("a") == ModelLimits(8, None, "a")
    assert limits.of(None) == ModelLimits(32, None, "any model of this server")
    assert limits.of("unknown") == ModelLimits(32, None, "any model of this server")
    assert len(calls) == 1

    def missing() -> types.GetServerCapabilitiesResponse:
        raise NotFoundError("no such endpoint", status_code=404)

    assert ServerLimits(missing).of("a") == ModelLimits()

    answers: list[Any] = [APIConnectionError("refused", request_sent=False), caps]

    def flaky() -> types.GetServerCapabilitiesResponse:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    flaky_limits = ServerLimits(flaky)
    assert flaky_limits.of("a") == ModelLimits()  # unreachable: skipped this time ...
    assert flaky_limits.of("a") == ModelLimits(8, None, "a")  # ... and asked again


# ---- dynamic config refresh ---------------------------------------------------------------------------


def test_dynamic_config_schedule_on_an_injected_clock() -> None:
    from tinker_sync._session import DynamicConfigSchedule

    now = [100.0]
    schedule = DynamicConfigSchedule(types.ClientDynamicConfigResponse(refresh_interval_sec=300), clock=lambda: now[0])
    assert not schedule.due()
    now[0] = 399.0
    assert not schedule.due()
    now[0] = 400.0
    assert schedule.due()
    schedule.read(types.ClientDynamicConfigResponse(refresh_interval_sec=60))  # the server changed the interval
    assert not schedule.due()
    now[0] = 459.0
    assert not schedule.due()
    now[0] = 460.0
    assert schedule.due()
    schedule.failed()  # a failed read: one more interval
    assert not schedule.due()
    schedule.read(None)  # no dynamic config on this server: never again
    now[0] = 1e9
    assert not schedule.due()
    assert not DynamicConfigSchedule(types.ClientDynamicConfigResponse(refresh_interval_sec=0)).due()


def test_session_rereads_the_dynamic_config_when_due_and_applies_it(local_server: Any) -> None:
    from tinker_sync._config import ClientConfig
    from tinker_sync._runtime import Runtime
    from tinker_sync._session import Session

    now = [0.0]
    runtime = Runtime(ClientConfig(base_url=local_server.url, api_key="tml-test-key-0123456789"))
    session = Session(runtime, clock=lambda: now[0])
    try:
        session.client_config()
        assert _posts(local_server, "/api/v1/client/dynamic_config") == 1
        assert runtime.poller.features.cancel  # the local server enables sample_cancel
        session.refresh_dynamic_config()
        assert _posts(local_server, "/api/v1/client/dynamic_config") == 1  # not due yet
        now[0] = 300.0  # the local server's refresh_interval_sec
        runtime.poller.set_features(attrs.evolve(runtime.poller.features, cancel=False))
        session.refresh_dynamic_config()
        assert _posts(local_server, "/api/v1/client/dynamic_config") == 2
        assert runtime.poller.features.cancel  # re-applied from the new read
        session.refresh_dynamic_config()
        assert _posts(local_server, "/api/v1/client/dynamic_config") == 2
    finally:
        session.close("success", None, cancel_pending=True, timeout_s=5.0)
