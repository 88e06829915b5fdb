"""TrainingClient over HTTP against a real LocalTinkerServer: atomic sequencing, custom-loss ordering,
caller-thread validation, lane poisoning, and the official-SDK compatible parameters."""

from __future__ import annotations

import json
import threading
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import TEST_API_KEY, sent_forward_backward
from tinker_sync import RequestFailedError, types
from tinker_sync._executor import Executor, LanePoisonedError, SequencedLane
from tinker_sync._proto import decode_forward_backward_request, encode_forward_backward_request
from tinker_sync.service_client import ServiceClient
from tinker_sync.training_client import TrainingClient

MODEL = "tinker-sync/tiny-byte"
T = 60.0
ADAM = types.AdamParams(learning_rate=5e-2)


@pytest.fixture
def chunked_server(tmp_path: Path) -> Iterator[Any]:
    """A server whose client config makes every datum its own forward_backward request."""
    from tinker_sync.local import LocalTinkerServer

    with LocalTinkerServer(data_dir=tmp_path / "chunked", long_poll_s=5.0,
                           client_config_overrides={"fwdbwd_max_chunk_len": 1}) as server:
        yield server


def _datum(tokens: list[int], targets: list[int] | None = None, **extra: Any) -> types.Datum:
    targets = targets if targets is not None else [t + 1 for t in tokens]
    inputs: dict[str, Any] = {"target_tokens": targets, "weights": [1.0] * len(targets)}
    inputs.update(extra)
    return types.Datum(model_input=types.ModelInput.from_ints(tokens), loss_fn_inputs=inputs)


def _sent(server: Any, path: str) -> list[Any]:
    return [r for r in server.requests if r.method == "POST" and r.path.split("?")[0] == path]


def _sequenced(server: Any, model_id: str) -> list[tuple[str, int]]:
    """(kind, seq_id) of every sequenced POST of ``model_id``, in arrival order."""
    out: list[tuple[str, int]] = []
    for r in server.requests:
        if r.method != "POST":
            continue
        path = r.path.split("?")[0]
        if path == "/api/v1/forward_backward":
            req = sent_forward_backward(r)
            if req.model_id == model_id:
                out.append(("forward" if req.forward_only else "forward_backward", req.seq_id or 0))
        elif path in ("/api/v1/optim_step", "/api/v1/save_weights", "/api/v1/load_weights",
                      "/api/v1/save_weights_for_sampler"):
            body = json.loads(r.body)
            if body.get("model_id") == model_id:
                out.append((path.rsplit("/", 1)[1], body["seq_id"]))
    return out


# ---- C1: a call is encoded completely before any seq_id is reserved or anything is sent ----------


@pytest.mark.parametrize("bad_chunk", ["asset_pointer", "int32_overflow"])
def test_unencodable_datum_in_a_later_chunk_sends_nothing_and_keeps_the_client_usable(
    chunked_server: Any, bad_chunk: str
) -> None:
    good = _datum([1, 2, 3])
    if bad_chunk == "asset_pointer":
        chunk: Any = types.ImageAssetPointerChunk(location="https://x/img.png", format="png", expected_tokens=2)
        bad = types.Datum(model_input=types.ModelInput(chunks=[types.EncodedTextChunk(tokens=[1]), chunk]),
                          loss_fn_inputs={"target_tokens": [2, 3, 4], "weights": [1.0] * 3})
        pattern = r"data\[1\].*ImageAssetPointerChunk"
    else:
        bad = _datum([1, 2**31], [2, 3])  # token ids travel as int32
        pattern = r"data\[1\].*int32"
    with ServiceClient(api_key=TEST_API_KEY, base_url=chunked_server.url) as service:
        training = service.create_lora_training_client(MODEL, rank=4, seed=0)
        chunked_server.clear_requests()
        with pytest.raises(ValueError, match=pattern):
            training.forward_backward([good, bad])
        assert _sent(chunked_server, "/api/v1/forward_backward") == []  # nothing half-applied
        # no seq_id was burnt: the next calls are 1, 2, 3 and complete
        fb = training.forward_backward([good, good])
        opt = training.optim_step(ADAM)
        assert fb.result(T).metrics["loss:sum"] > 0
        assert opt.result(T).metrics is not None
        assert _sequenced(chunked_server, training.model_id) == [
            ("forward_backward", 1), ("forward_backward", 2), ("optim_step", 3)]


def test_prepared_bodies_equal_the_plain_encoding_with_the_seq_id() -> None:
    """The seq_id spliced into a pre-encoded body gives exactly the bytes of a full encoding."""
    from tinker_sync._chunking import PreparedRequest

    data = [_datum([1, 2, 3]), _datum([4, 5])]
    for seq in (1, 127, 128, 300, 2**31 - 1):
        req = types.ForwardBackwardRequest(model_id="s:train:0", data=data, loss_fn="cross_entropy",
                                           loss_fn_config={"a": 1.0}, forward_only=True)
        prepared = PreparedRequest.protobuf(req, "forward")
        full = encode_forward_backward_request(
            types.ForwardBackwardRequest(model_id="s:train:0", seq_id=seq, data=data, loss_fn="cross_entropy",
                                         loss_fn_config={"a": 1.0}, forward_only=True))
        assert prepared.with_seq(seq) == full
        assert decode_forward_backward_request(prepared.with_seq(seq)).seq_id == seq
        opt = PreparedRequest.json("/api/v1/optim_step", "OptimStep", types.OptimStepResponse,
                             types.OptimStepRequest(adam_params=ADAM, model_id="m"), "optim_step")
        assert json.loads(opt.with_seq(seq)) == json.loads(
            json.dumps({**json.loads(opt.body), "seq_id": seq}))


def test_big_batches_from_several_threads_are_encoded_concurrently(service: ServiceClient) -> None:
    """Encoding happens outside the client lock (the lock only covers reserving and enqueueing)."""
    training = service.create_lora_training_client(MODEL, rank=4, seed=0)
    inside = threading.Event()
    release = threading.Event()
    original = TrainingClient._prepare_fwd

    def slow_prepare(self: TrainingClient, *args: Any, **kwargs: Any) -> Any:
        if threading.current_thread().name == "slow":
            inside.set()
            release.wait(60)
        return original(self, *args, **kwargs)

    second_done = threading.Event()

    def second() -> None:
        training.forward([_datum([3, 4])]).result(T)
        second_done.set()

    TrainingClient._prepare_fwd = slow_prepare  # type: ignore[method-assign]
    try:
        slow = threading.Thread(target=lambda: training.forward([_datum([1, 2])]).result(T), name="slow")
        slow.start()
        assert inside.wait(10)
        other = threading.Thread(target=second)
        other.start()
        # another thread's call goes through while the first one is still being encoded
        assert second_done.wait(20)
        assert not release.is_set()
        release.set()
        slow.join(T)
        other.join(T)
        assert not slow.is_alive()
    finally:
        TrainingClient._prepare_fwd = original  # type: ignore[method-assign]
        release.set()


# ---- C2: forward_backward_custom reserves its backward's seq_ids at call time --------------------


def _nll(data: list[types.Datum], lps: list[np.ndarray]) -> tuple[float, dict[str, float], list[np.ndarray]]:
    return float(-sum(lp.sum() for lp in lps)), {"custom:mean": 2.0}, [-np.ones_like(lp) for lp in lps]


def test_custom_loss_then_pipelined_optim_step_applies_the_custom_gradient(
    chunked_server: Any
) -> None:
    data = [types.Datum(model_input=types.ModelInput.from_ints([10, 11, 12]),
                        loss_fn_inputs={"target_tokens": [11, 12, 13]}),
            types.Datum(model_input=types.ModelInput.from_ints([20, 21]),
                        loss_fn_inputs={"target_tokens": [21, 22]})]
    with ServiceClient(api_key=TEST_API_KEY, base_url=chunked_server.url) as service:
        pipelined, sequential, untouched = (service.create_lora_training_client(MODEL, rank=4, seed=5)
                                            for _ in range(3))
        # pipelined: optim_step submitted right after forward_backward_custom, without waiting
        fb = pipelined.forward_backward_custom(data, _nll, loss_type_input="logprobs", backend="numpy")
        opt = pipelined.optim_step(ADAM)
        scored = [types.Datum(model_input=d.model_input, loss_fn_inputs={
            "target_tokens": d.loss_fn_inputs["target_tokens"],
            "weights": [1.0] * d.model_input.length}) for d in data]
        after = pipelined.forward(scored)
        out, step, loss_after = fb.result(T), opt.result(T), after.result(T).metrics["loss:sum"]
        # sequential: each call waits for the one before
        seq_out = sequential.forward_backward_custom(data, _nll, backend="numpy").result(T)
        seq_step = sequential.optim_step(ADAM).result(T)
        seq_loss_after = sequential.forward(scored).result(T).metrics["loss:sum"]
        base_loss = untouched.forward(scored).result(T).metrics["loss:sum"]

        assert out.metrics["loss:sum"] == pytest.approx(seq_out.metrics["loss:sum"], rel=1e-6)
        assert out.metrics["custom:mean"] == 2.0
        assert step.metrics is not None and seq_step.metrics is not None
        assert step.metrics["grad_norm"] > 0  # the step saw the custom gradient
        assert step.metrics["grad_norm"] == pytest.approx(seq_step.metrics["grad_norm"], rel=1e-5)
        assert loss_after == pytest.approx(seq_loss_after, rel=1e-5)
        assert base_loss == pytest.approx(out.metrics["loss:sum"], rel=1e-5)
        assert loss_after < base_loss  # the NLL gradient lowered the loss
        # 2 forward chunks, then 2 backward chunks, then the step: one consecutive seq_id each
        assert _sequenced(chunked_server, pipelined.model_id) == [
            ("forward", 1), ("forward", 2), ("forward_backward", 3), ("forward_backward", 4),
            ("optim_step", 5), ("forward", 6), ("forward", 7)]


def test_failing_custom_loss_poisons_instead_of_leaving_a_gap(service: ServiceClient) -> None:
    training = service.create_lora_training_client(MODEL, rank=4, seed=1)
    data = [types.Datum(model_input=types.ModelInput.from_ints([1, 2]), loss_fn_inputs={"target_tokens": [2, 3]})]

    def broken(_data: list[types.Datum], _lps: list[np.ndarray]) -> Any:
        raise ZeroDivisionError("user bug")

    fb = training.forward_backward_custom(data, broken, backend="numpy")
    opt = training.optim_step(ADAM)
    with pytest.raises(ZeroDivisionError, match="user bug"):
        fb.result(T)
    # the step would have run without the custom gradient: it is refused, and does not hang
    with pytest.raises(LanePoisonedError) as info:
        opt.result(T)
    msg = str(info.value)
    assert "forward_backward_custom" in msg and "user bug" in msg and "create_training_client_from_state" in msg
    with pytest.raises(LanePoisonedError):
        training.save_state("x").result(T)


def test_custom_loss_whose_forward_fails_on_the_server_releases_its_slots(service: ServiceClient) -> None:
    training = service.create_lora_training_client(MODEL, rank=4, seed=1)
    data = [types.Datum(model_input=types.ModelInput.from_ints([1, 2]), loss_fn_inputs={"target_tokens": [2, 9999]})]
    fb = training.forward_backward_custom(data, _nll, backend="numpy")
    opt = training.optim_step(ADAM)
    with pytest.raises(RequestFailedError, match="9999"):
        fb.result(T)
    with pytest.raises(LanePoisonedError, match="9999"):
        opt.result(T)


# ---- M1: bad input is refused in the caller's thread, per datum ----------------------------------


def test_per_datum_validation_says_what_to_fix(local_server: Any, service: ServiceClient) -> None:
    training = service.create_lora_training_client(MODEL, rank=4).result(T)
    good = _datum([1, 2, 3])
    local_server.clear_requests()
    n = list(range(1, 20))
    cases: list[tuple[str, Any]] = [
        (r"data\[1\].*target_tokens.*4.*19", lambda: training.forward_backward(
            [good, _datum(n, [2, 3, 4, 5])])),
        (r"data\[0\].*weights.*2.*3", lambda: training.forward_backward(
            [types.Datum(model_input=types.ModelInput.from_ints([1, 2, 3]),
                         loss_fn_inputs={"target_tokens": [2, 3, 4], "weights": [1.0, 1.0]})])),
        (r"data\[0\].*missing.*'weights'.*cross_entropy", lambda: training.forward(
            [types.Datum(model_input=types.ModelInput.from_ints([1, 2]), loss_fn_inputs={"target_tokens": [2, 3]})])),
        (r"data\[1\].*missing.*'advantages'.*ppo", lambda: training.forward_backward(
            [_datum([1, 2], logprobs=[0.0, 0.0], advantages=[1.0, 1.0]),
             _datum([1, 2], logprobs=[0.0, 0.0])], "ppo")),
        (r"data\[0\].*advantages.*1.*2", lambda: training.forward_backward(
            [_datum([1, 2], logprobs=[0.0, 0.0], advantages=[1.0])], "importance_sampling")),
        (r"loss_fn_config\['clip_low_threshold'\].*finite", lambda: training.forward_backward(
            [_datum([1, 2], logprobs=[0.0, 0.0], advantages=[1.0, 1.0])], "ppo", {"clip_low_threshold": float("nan")})),
        (r"data\[0\].*ImageAssetPointerChunk", lambda: training.forward([types.Datum(
            model_input=types.ModelInput(chunks=[types.ImageAssetPointerChunk(location="a.png", format="png",
                                                                               expected_tokens=1)]),
            loss_fn_inputs={"target_tokens": [1], "weights": [1.0]})])),
    ]
    for pattern, call in cases:
        with pytest.raises(ValueError, match=pattern):
            call()
    assert local_server.requests == []
    # a 2-D target (N x K) for cross_entropy is fine: only the first dimension must match
    two_d = types.Datum(model_input=types.ModelInput.from_ints([1, 2]),
                        loss_fn_inputs={"target_tokens": types.TensorData(data=[2, 5, 3, 6], dtype="int64",
                                                                          shape=[2, 2]),
                                        "weights": types.TensorData(data=[1.0, 0.0, 1.0, 0.0], dtype="float32",
                                                                    shape=[2, 2])})
    assert training.forward([two_d]).result(T).metrics["loss:sum"] > 0


def test_rejected_post_poisons_with_a_message_that_says_how_to_recover(local_server: Any,
                                                                        service: ServiceClient) -> None:
    training = service.create_lora_training_client(MODEL, rank=4)
    local_server.faults.fail_next("forward_backward", 400, body={"detail": "refused for the test"})
    failed = training.forward_backward([_datum([1, 2])])
    later = training.optim_step(ADAM)
    with pytest.raises(Exception, match="refused for the test"):
        failed.result(T)
    with pytest.raises(LanePoisonedError) as info:
        later.result(T)
    msg = str(info.value)
    assert "forward_backward" in msg and "seq_id=1" in msg and "optim_step" in msg
    assert "BadRequestError" in msg and "refused for the test" in msg
    assert "create_training_client_from_state" in msg
    with pytest.raises(LanePoisonedError):
        training.forward([_datum([1, 2])]).result(T)


# ---- M4: official SDK parameters -----------------------------------------------------------------


def test_load_state_sends_the_weights_access_token(local_server: Any, service: ServiceClient) -> None:
    training = service.create_lora_training_client(MODEL, rank=4, seed=3)
    path = training.save_state("tok").result(T).path
    training.load_state(path, weights_access_token="wat-123").result(T)
    training.load_state_with_optimizer(path).result(T)
    loads = [json.loads(r.body) for r in _sent(local_server, "/api/v1/load_weights")]
    assert [(b.get("weights_access_token"), b["optimizer"]) for b in loads] == [("wat-123", False), (None, True)]
    assert "wat-123" not in repr(training)


def test_save_weights_and_get_sampling_client_name_is_deprecated_and_ephemeral(
    local_server: Any, service: ServiceClient
) -> None:
    training = service.create_lora_training_client(MODEL, rank=4, seed=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sampler = training.save_weights_and_get_sampling_client(name="keep-me", retry_config=None).result(T)
    assert any(issubclass(w.category, DeprecationWarning) and "name" in str(w.message) for w in caught)
    saves = [json.loads(r.body) for r in _sent(local_server, "/api/v1/save_weights_for_sampler")]
    assert len(saves) == 1 and "path" not in saves[0] and saves[0]["sampling_session_seq_id"] >= 0
    lps = sampler.compute_logprobs(types.ModelInput.from_ints([1, 2, 3])).result(T)
    assert len(lps) == 3
    ckpts = service.create_rest_client().list_checkpoints(training.model_id).result(T).checkpoints
    assert not [c for c in ckpts if "keep-me" in c.checkpoint_id]
    # create_sampling_client accepts (and ignores) retry_config too
    named = training.save_weights_for_sampler("s1").result(T).path
    assert training.create_sampling_client(named, retry_config=None).get_base_model() == MODEL
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fut = training.save_weights_and_get_sampling_client_future()
    assert fut.result(T).compute_logprobs(types.ModelInput.from_ints([1, 2])).result(T)[0] is None


def test_get_info_blocks_and_get_info_future_returns_a_future(service: ServiceClient) -> None:
    training = service.create_lora_training_client(MODEL, rank=4)
    fut = training.get_info_future()
    assert type(fut) is Future
    assert fut.result(T).model_id == training.model_id
    assert training.get_info() == fut.result(T)


# ---- lane slots (pure logic) ---------------------------------------------------------------------


def test_lane_waits_at_a_reserved_slot_without_holding_a_thread() -> None:
    ex = Executor(1)  # a single worker: a parked lane must not occupy it
    lane = SequencedLane(ex, name="model m")
    order: list[str] = []
    try:
        first = lane.submit(lambda: order.append("a"), label="a")
        slot = lane.reserve("slot")
        after = lane.submit(lambda: order.append("c"), label="c")
        first.result(5)
        other = ex.submit(lambda: "free")  # the worker is free while the lane waits at the slot
        assert other.result(5) == "free"
        time.sleep(0.05)
        assert order == ["a"] and not after.done()
        filled = slot.submit(lambda: order.append("b"), label="b")
        filled.result(5)
        after.result(5)
        assert order == ["a", "b", "c"]
        with pytest.raises(RuntimeError, match="already filled"):
            slot.submit(lambda: None)

        failed_slot = lane.reserve("backward seq_id=9")
        queued = lane.submit(lambda: order.append("never"), label="optim_step seq_id=10")
        failed_slot.fail(ValueError("no gradient"))
        with pytest.raises(LanePoisonedError, match=r"optim_step seq_id=10.*backward seq_id=9.*no gradient"):
            queued.result(5)
        assert "never" not in order
        # a slot reserved on a poisoned lane is refused at once
        late = lane.reserve("late")
        late.fail(ValueError("ignored"))
    finally:
        ex.close()
