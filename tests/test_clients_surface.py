"""The 0.38 client surface: client futures, blocking get_info, close(), new parameters on the wire.

Over HTTP: tests/scripted_server.py where the exact request body matters, LocalTinkerServer for flows.
Signatures are compared with the official SDK's where it is installed (TINKER_SDK_PYTHON is not needed:
the official parameter lists are written out here as facts).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import pickle
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, wait
from typing import Any

import pytest

from tests.scripted_server import (
    RecordedRequest,
    Reply,
    ScriptedServer,
    SessionSim,
    TokenMinter,
    answer_session,
    wait_for,
)
from tinker_sync import BadRequestError, SamplingClient, ServiceClient, TrainingClient, types
from tinker_sync._custom_loss import make_loss_handle
from tinker_sync._proto import decode_forward_backward_request
from tinker_sync._retry import RetryPolicy
from tinker_sync.sampling_client import SamplingClientFuture
from tinker_sync.training_client import TrainingClientFuture

MODEL = "tinker-sync/tiny-byte"
RF = "/api/v1/retrieve_future"
T = 30.0


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer() as srv:
        answer_session(srv)
        srv.default("/api/v1/asample", Reply(200, {"request_id": "smp"}))
        srv.default(RF, Reply(200, {"type": "sample", "sequences": [
            {"stop_reason": "length", "tokens": [1], "logprobs": [-0.5]}], "prompt_logprobs": [None, -1.0, -2.0]}))
        yield srv


def _sc(srv: ScriptedServer) -> ServiceClient:
    return ServiceClient(api_key=f"tml-{uuid.uuid4().hex}", base_url=srv.url, retry=RetryPolicy(max_attempts=1))


def _datum() -> types.Datum:
    return types.Datum(model_input=types.ModelInput.from_ints([104, 105, 32]),
                       loss_fn_inputs={"target_tokens": [105, 32, 116], "weights": [1.0, 1.0, 1.0]})


# ---- signatures: the official 0.38 parameter lists (names, order, defaults, kinds) -------------------

_OFFICIAL = {
    (ServiceClient, "__init__"): "(self, user_metadata=None, project_id=None, *, display_name=None, base_url=None, "
                                 "api_key=None, default_headers_overrides=None",
    (ServiceClient, "create_lora_training_client"): "(self, base_model, rank=32, seed=None, train_mlp=True, "
                                                    "train_attn=True, train_unembed=True, user_metadata=None, "
                                                    "optimizer=None)",
    (ServiceClient, "create_training_client_from_state"): "(self, path, base_model=None, user_metadata=None, "
                                                          "weights_access_token=None, optimizer=None)",
    (ServiceClient, "create_sampling_client"): "(self, model_path=None, base_model=None, retry_config=None, "
                                               "record_stability_info=False)",
    (ServiceClient, "copy_weights"): "(self, path, *, ttl_seconds=None, weights_access_token=None)",
    (ServiceClient, "create_custom_loss"): "(self, fn, input_ranks)",
    (ServiceClient, "close"): "(self, status='success', detail=None",
    (TrainingClient, "optim_step"): "(self, optim_params=None, *, adam_params=None)",
    (TrainingClient, "save_state"): "(self, name, ttl_seconds=None, overwrite=False, user_metadata=None)",
    (TrainingClient, "save_weights_for_sampler"): "(self, name, ttl_seconds=None, user_metadata=None)",
    (TrainingClient, "save_weights_external"): "(self, name, ttl_seconds=None, age_encryption_recipients=None)",
    (TrainingClient, "save_weights_and_get_sampling_client"): "(self, name=None, retry_config=None, "
                                                              "record_stability_info=False, kind='snapshot')",
    (TrainingClient, "create_sampling_client"): "(self, model_path, retry_config=None, record_stability_info=False)",
    (TrainingClient, "forward_backward_custom"): "(self, data, loss_fn, *, loss_type_input=None",
    (SamplingClient, "sample"): "(self, prompt, num_samples, sampling_params, include_prompt_logprobs=False, "
                                "topk_prompt_logprobs=0, topk_sample_logprobs=0, target_prompt_logprobs=None, "
                                "prompt_alt_tokens_k=0, prompt_logprobs_last_n=None)",
    (SamplingClient, "compute_logprobs"): "(self, prompt, prompt_logprobs_last_n=None)",
    (SamplingClient, "on_queue_state_change"): "(self, queue_state, queue_state_reason)",
    (SamplingClient, "from_sampler_handle"): "(handle, *, api_key=None)",
}


def _plain_signature(fn: Any) -> str:
    params = [p.replace(annotation=inspect.Parameter.empty) for p in inspect.signature(fn).parameters.values()]
    return str(inspect.Signature(params))


@pytest.mark.parametrize(("cls", "name"), list(_OFFICIAL))
def test_signature_starts_like_the_official_one(cls: type, name: str) -> None:
    assert _plain_signature(getattr(cls, name)).startswith(_OFFICIAL[(cls, name)])


# ---- creation methods: the client and a Future of it ----------------------------------------------


def test_training_client_future_is_a_future_and_a_client(service: ServiceClient) -> None:
    fut = service.create_lora_training_client(MODEL, rank=4)
    assert isinstance(fut, Future) and isinstance(fut, TrainingClient) and isinstance(fut, TrainingClientFuture)
    done, _ = wait([fut], timeout=T)
    assert done == {fut}
    client = fut.result(T)
    assert type(client) is TrainingClient
    assert fut.model_id == client.model_id  # instance attributes forward too
    assert "TrainingClient(model_id=" in repr(fut)
    # a method used on the future runs on the client: both share one seq_id order
    first = fut.forward_backward([_datum()], "cross_entropy")
    second = client.optim_step(types.AdamParams(learning_rate=1e-3))
    assert first.result(T).metrics and second.result(T) is not None


def test_future_twins_return_the_same_kind(service: ServiceClient) -> None:
    fut = service.create_lora_training_client_future(MODEL, rank=4)
    assert isinstance(fut, TrainingClientFuture)
    sampler = service.create_sampling_client_future(base_model=MODEL)
    assert isinstance(sampler, SamplingClientFuture) and isinstance(sampler.result(T), SamplingClient)


def test_a_failed_creation_fails_both_styles(service: ServiceClient) -> None:
    fut = service.create_sampling_client(model_path="tinker://nope:train:0/sampler_weights/x")
    with pytest.raises(Exception, match="nope"):
        fut.result(T)
    with pytest.raises(Exception, match="nope"):
        fut.sample(types.ModelInput.from_ints([1]), 1, types.SamplingParams(max_tokens=1))


def test_bad_creation_arguments_raise_in_the_callers_thread(service: ServiceClient) -> None:
    with pytest.raises(TypeError, match="optimizer"):
        service.create_lora_training_client(MODEL, optimizer="dimuon")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="base_model"):
        service.create_lora_training_client("")


def test_sampling_client_future_pickles_as_the_client(service: ServiceClient) -> None:
    fut = service.create_sampling_client(base_model=MODEL)
    clone = pickle.loads(pickle.dumps(fut))
    try:
        assert type(clone) is SamplingClient and clone.sampling_session_id == fut.result(T).sampling_session_id
    finally:
        clone.close()


# ---- blocking get_info, close() -------------------------------------------------------------------


def test_get_info_blocks_and_the_future_twin_does_not(service: ServiceClient) -> None:
    tc = service.create_lora_training_client(MODEL, rank=4).result(T)
    fut = tc.get_info_future()
    assert isinstance(fut, Future)
    info = tc.get_info()
    assert isinstance(info, types.GetInfoResponse) and info == fut.result(T)
    assert info.lora_rank == 4


def test_close_returns_a_done_future_and_is_idempotent(server: ScriptedServer) -> None:
    sc = _sc(server)
    sc.session_id  # noqa: B018
    first = sc.close("errored", "bad data")
    assert first.done() and first.result(0) is None
    assert sc.close().result(0) is None  # already closed: nothing more is sent
    (finish,) = server.requests_to("/api/v1/sessions/s1/finish")
    assert finish.json() == {"reason": {"type": "errored"}, "detail": "bad data"}


def test_close_refuses_an_unknown_status(server: ScriptedServer) -> None:
    sc = _sc(server)
    try:
        with pytest.raises(ValueError, match="status"):
            sc.close("done")
    finally:
        sc.close()


def test_context_manager_finishes_errored_with_the_exception(server: ScriptedServer) -> None:
    with pytest.raises(KeyError), _sc(server) as sc:
        sc.session_id  # noqa: B018
        raise KeyError("boom")
    (finish,) = server.requests_to("/api/v1/sessions/s1/finish")
    assert finish.json() == {"reason": {"type": "errored"}, "detail": "KeyError"}  # not the message: it may be data


# ---- optim_step(optim_params, *, adam_params) -------------------------------------------------------


def test_optim_step_argument_forms(service: ServiceClient, local_server: Any) -> None:
    tc = service.create_lora_training_client(MODEL, rank=4).result(T)
    adam = types.AdamParams(learning_rate=1e-3)
    for call in (lambda: tc.optim_step(adam), lambda: tc.optim_step(optim_params=adam),
                 lambda: tc.optim_step(adam_params=adam)):
        tc.forward_backward([_datum()], "cross_entropy").result(T)
        call().result(T)
    bodies = [json.loads(r.body) for r in local_server.requests if r.path == "/api/v1/optim_step"]
    assert [b["adam_params"]["learning_rate"] for b in bodies] == [1e-3] * 3
    with pytest.raises(ValueError, match="not both"):
        tc.optim_step(adam, adam_params=adam)
    with pytest.raises(TypeError, match="missing optim_params"):
        tc.optim_step()
    with pytest.raises(TypeError, match="AdamParams or types.DimuonParams"):
        tc.optim_step({"learning_rate": 1e-3})  # type: ignore[arg-type]


def test_dimuon_params_travel_as_optimizer_params(service: ServiceClient, local_server: Any) -> None:
    tc = service.create_lora_training_client(MODEL, rank=4, optimizer=types.DimuonOptimizerConfig()).result(T)
    (create,) = [json.loads(r.body) for r in local_server.requests if r.path == "/api/v1/create_model"]
    assert create["optimizer_config"] == {"type": "dimuon", "version": 1}
    fut = tc.optim_step(types.DimuonParams(learning_rate=1e-3))
    try:
        fut.result(T)
    except Exception:  # noqa: BLE001, S110 - whether the server can step Dimuon is the server's business
        pass
    (step,) = [json.loads(r.body) for r in local_server.requests if r.path == "/api/v1/optim_step"]
    assert step["optimizer_params"]["type"] == "dimuon" and "adam_params" not in step


# ---- new parameters reach the wire ------------------------------------------------------------------


def test_sample_sends_every_038_parameter(server: ScriptedServer) -> None:
    with _sc(server) as sc:
        sampler = sc.create_sampling_client(base_model="m", record_stability_info=True).result(T)
        target = types.TensorData(data=[5, 6], dtype="int64", shape=[2, 1])
        sampler.sample(types.ModelInput.from_ints([1, 2, 3]), 2, types.SamplingParams(max_tokens=1),
                       include_prompt_logprobs=True, topk_prompt_logprobs=1, topk_sample_logprobs=3,
                       target_prompt_logprobs=target, prompt_alt_tokens_k=2, prompt_logprobs_last_n=2).result(T)
        assert sampler.compute_logprobs(types.ModelInput.from_ints([1, 2, 3]), prompt_logprobs_last_n=2).result(T)
    full, logprobs = (r.json() for r in server.requests_to("/api/v1/asample"))
    assert full["topk_sample_logprobs"] == 3 and full["prompt_alt_tokens_k"] == 2
    assert full["prompt_logprobs_last_n"] == 2 and full["record_stability_info"] is True
    assert full["target_prompt_logprobs"]["data"] == [5, 6]
    assert logprobs["prompt_logprobs_last_n"] == 2 and logprobs["prompt_logprobs"] is True


def test_sample_without_new_parameters_keeps_the_025_body(server: ScriptedServer) -> None:
    with _sc(server) as sc:
        sc.create_sampling_client(base_model="m").result(T).sample(
            types.ModelInput.from_ints([1]), 1, types.SamplingParams(max_tokens=1)).result(T)
    (body,) = (r.json() for r in server.requests_to("/api/v1/asample"))
    assert not {"topk_sample_logprobs", "prompt_alt_tokens_k", "prompt_logprobs_last_n", "record_stability_info",
                "target_prompt_logprobs"} & set(body)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"topk_sample_logprobs": -1}, "topk_sample_logprobs"),
    ({"prompt_alt_tokens_k": 1.5}, "prompt_alt_tokens_k"),
    ({"prompt_logprobs_last_n": 2}, "include_prompt_logprobs"),
    ({"include_prompt_logprobs": True, "prompt_logprobs_last_n": 0}, "prompt_logprobs_last_n"),
    ({"target_prompt_logprobs": [[1]]}, "target_prompt_logprobs"),
])
def test_bad_sample_arguments_name_the_parameter(server: ScriptedServer, kwargs: dict[str, Any], message: str) -> None:
    with _sc(server) as sc:
        sampler = sc.create_sampling_client(base_model="m").result(T)
        with pytest.raises((TypeError, ValueError), match=message):
            sampler.sample(types.ModelInput.from_ints([1, 2]), 1, types.SamplingParams(max_tokens=1), **kwargs)
    assert not server.requests_to("/api/v1/asample")


def test_kind_and_metadata_reach_the_wire(service: ServiceClient, local_server: Any) -> None:
    inflight = service.create_lora_training_client(MODEL, rank=4).result(T)
    try:
        inflight.save_weights_and_get_sampling_client(kind="inflight").result(T)
    except BadRequestError as exc:  # a server without inflight samplers refuses it by name (and the lane stops)
        assert "kind" in str(exc)
    tc = service.create_lora_training_client(MODEL, rank=4).result(T)
    tc.save_weights_for_sampler("n", user_metadata={"a": "b"}).result(T)
    tc.save_state("w", 7200, False, {"c": "d"}).result(T)
    saves = [json.loads(r.body) for r in local_server.requests if r.path == "/api/v1/save_weights_for_sampler"]
    assert saves[0]["kind"] == "inflight" and saves[1]["user_metadata"] == {"a": "b"}
    (state,) = [json.loads(r.body) for r in local_server.requests if r.path == "/api/v1/save_weights"]
    assert state["user_metadata"] == {"c": "d"} and state["ttl_seconds"] == 7200
    with pytest.raises(ValueError, match="kind"):
        tc.save_weights_and_get_sampling_client(kind="live")  # refused before anything is sent


def test_save_weights_external_request(server: ScriptedServer) -> None:
    server.default("/api/v1/create_model", Reply(200, {"request_id": "create"}))
    server.default("/api/v1/save_weights_external", Reply(200, {"request_id": "ext"}))

    def poll(rec: RecordedRequest) -> Reply:
        if rec.json()["request_id"] == "create":
            return Reply(200, {"model_id": "s1:train:0"})
        return Reply(200, {"type": "save_weights_external", "path": "tinker://s1:train:0/external/x"})

    server.default(RF, poll)
    with _sc(server) as sc:
        tc = sc.create_lora_training_client("m").result(T)
        resp = tc.save_weights_external("x", 3600, ["age1abc"]).result(T)
    assert resp == types.SaveWeightsExternalResponse(path="tinker://s1:train:0/external/x")
    (req,) = server.requests_to("/api/v1/save_weights_external")
    assert req.json() == {"model_id": "s1:train:0", "path": "x", "seq_id": 1, "ttl_seconds": 3600,
                          "age_encryption_recipients": ["age1abc"], "type": "save_weights_external"}


def test_retry_config_is_accepted_with_a_warning(server: ScriptedServer, caplog: pytest.LogCaptureFixture) -> None:
    with _sc(server) as sc, caplog.at_level("WARNING", logger="tinker_sync._checks"):
        sc.create_sampling_client(base_model="m", retry_config=object()).result(T)
    assert any("retry_config is not applied" in r.getMessage() for r in caplog.records)


# ---- sampler handles, queue state, console URLs ------------------------------------------------------


def test_sampler_handle_carries_no_credential_and_rejects_garbage(server: ScriptedServer) -> None:
    with _sc(server) as sc:
        sampler = sc.create_sampling_client(base_model="m").result(T)
        sampler.sample(types.ModelInput.from_ints([1]), 1, types.SamplingParams(max_tokens=1)).result(T)
        handle = sampler.get_sampler_handle()
        assert sc.config.api_key not in handle
        other = SamplingClient.from_sampler_handle(handle, api_key=sc.config.api_key)
        try:
            other.sample(types.ModelInput.from_ints([1]), 1, types.SamplingParams(max_tokens=1)).result(T)
        finally:
            other.close()
    first, second = server.requests_to("/api/v1/asample")
    assert first.json()["sampling_session_id"] == second.json()["sampling_session_id"] == "s1:sample:0"
    assert first.json()["seq_id"] != second.json()["seq_id"]
    with pytest.raises(ValueError, match="get_sampler_handle"):
        SamplingClient.from_sampler_handle("not-a-handle", api_key=sc.config.api_key)


def test_on_queue_state_change_logs_pauses_once_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    sampler = SamplingClient(None, sampling_session_id="s1:sample:0", runtime=object(), clock=lambda: now[0])  # type: ignore[arg-type]
    with caplog.at_level("WARNING", logger="tinker_sync.sampling_client"):
        sampler.on_queue_state_change("active", None)
        sampler.on_queue_state_change("paused_capacity", None)
        now[0] = 30.0
        sampler.on_queue_state_change("paused_rate_limit", "busy")
        now[0] = 61.0
        sampler.on_queue_state_change("paused_rate_limit", "busy")
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2 and "short on capacity" in messages[0] and messages[1].endswith("busy")


def test_console_urls_follow_the_official_layout(server: ScriptedServer) -> None:
    with _sc(server) as sc:
        assert sc.get_console_url() == "https://tinker.thinkingmachines.ai/sessions"
        sc.session_id  # noqa: B018
        assert sc.get_console_url() == "https://tinker.thinkingmachines.ai/sessions/s1"


# ---- create_custom_loss ----------------------------------------------------------------------------


def test_create_custom_loss_checks_the_signature_in_the_callers_thread() -> None:
    pytest.importorskip("torch")

    def neg_ll(logprobs: Any, weights: Any) -> Any:
        loss = -(logprobs * weights).sum()
        return loss, {"custom/neg_ll:sum": loss}

    handle = make_loss_handle(neg_ll, {"logprobs": 1, "weights": 1}, "s1")
    assert handle.name == "neg_ll" and handle.input_names == ("weights",)
    with pytest.raises(ValueError, match="input_ranks"):
        make_loss_handle(neg_ll, {"logprobs": 1}, "s1")
    with pytest.raises(ValueError, match="logprobs first"):
        make_loss_handle(lambda weights: weights, {"weights": 1}, "s1")


def test_create_custom_loss_without_torch_names_torch(server: ScriptedServer) -> None:
    try:
        import torch  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("torch is installed")
    with _sc(server) as sc, pytest.raises(ImportError, match="torch"):
        sc.create_custom_loss(lambda logprobs: (logprobs.sum(), {}), {"logprobs": 1})


def test_forward_backward_custom_with_a_loss_handle(service: ServiceClient) -> None:
    torch = pytest.importorskip("torch")
    tc = service.create_lora_training_client(MODEL, rank=4).result(T)

    def neg_ll(logprobs: Any, weights: Any) -> Any:
        loss = -(logprobs * weights).sum()
        return loss, {"custom/neg_ll:sum": loss}

    handle = service.create_custom_loss(neg_ll, {"logprobs": 1, "weights": 1}).result(T)
    out = tc.forward_backward_custom([_datum()], handle).result(T)
    plain = tc.forward([_datum()], "cross_entropy").result(T)
    assert out.metrics["loss:sum"] == pytest.approx(plain.metrics["loss:sum"], rel=1e-4)
    assert out.metrics["custom/neg_ll:sum"] == pytest.approx(plain.metrics["loss:sum"], rel=1e-4)
    assert torch is not None


# ---- what the server's client config offers is used -------------------------------------------------


def test_jwt_auth_from_the_client_config(server: ScriptedServer) -> None:
    key = f"tml-{uuid.uuid4().hex}"
    minter = TokenMinter(key)
    minter.install(server)
    server.default("/api/v1/client/config", Reply(200, {"pjwt_auth_enabled": True}))
    with ServiceClient(api_key=key, base_url=server.url) as sc:
        sc.session_id  # noqa: B018
    (create,) = server.requests_to("/api/v1/create_session")
    assert minter.minted and create.header("X-API-Key") == minter.minted[-1]
    (config,) = server.requests_to("/api/v1/client/config")
    assert config.header("X-API-Key") == key  # the config itself is read with the key


@contextlib.contextmanager
def _batching_server(**dynamic: Any) -> Iterator[tuple[ScriptedServer, SessionSim]]:
    """A session whose client config offers batched polling (and ``dynamic`` as its dynamic config)."""
    sim = SessionSim(hold_s=2.0, session_id="s1:sample:0", result=lambda rid: {
        "type": "sample", "sequences": [{"tokens": [1], "logprobs": [-0.5], "stop_reason": "length"}]})
    with ScriptedServer() as srv:
        answer_session(srv)
        sim.install(srv)
        srv.default("/api/v1/client/config", Reply(200, {"sample_use_retrieve_futures": True}))
        if dynamic:
            srv.default("/api/v1/client/dynamic_config", Reply(200, dynamic))
        yield srv, sim


def test_batched_polling_and_cancels_from_the_configs() -> None:
    with _batching_server(sample_cancel_enabled=True) as (srv, sim):
        with _sc(srv) as sc:
            sampler = sc.create_sampling_client(base_model="m").result(T)
            futs = [sampler.sample(types.ModelInput.from_ints([1]), 1, types.SamplingParams(max_tokens=1))
                    for _ in range(11)]
            assert wait_for(lambda: len(sim.pending) == 11, T)
            futs[-1].cancel()  # the server is told (dynamic config: sample_cancel_enabled)
            assert wait_for(lambda: len(sim.cancelled) == 1, T)
            sim.complete(sorted(r for r in sim.pending if r not in sim.cancelled))
            assert all(f.result(T).sequences[0].tokens == [1] for f in futs[:-1])
        # waiting happened on the session's batched poll; each result was then fetched once
        assert srv.requests_to("/api/v1/retrieve_futures")
        assert len(srv.requests_to("/api/v1/retrieve_future")) == 10


def test_forward_backward_bodies_are_zstd_compressed_when_the_server_asks(server: ScriptedServer) -> None:
    zstandard = pytest.importorskip("zstandard")
    server.default("/api/v1/client/config", Reply(200, {"proto_compress_fwdbwd": True}))
    server.default("/api/v1/create_model", Reply(200, {"request_id": "create"}))
    server.default("/api/v1/forward_backward", Reply(200, {"request_id": "fb"}))
    server.default("/api/v1/optim_step", Reply(200, {"request_id": "opt"}))
    answers = {"create": {"model_id": "s1:train:0"}, "opt": {"type": "optim_step", "metrics": {}},
               "fb": {"loss_fn_output_type": "x", "loss_fn_outputs": [], "metrics": {"loss:sum": 1.0}}}
    server.default(RF, lambda rec: Reply(200, answers[rec.json()["request_id"]]))
    with _sc(server) as sc:
        tc = sc.create_lora_training_client("m").result(T)
        tc.forward_backward([_datum()], "cross_entropy").result(T)
        tc.optim_step(types.AdamParams()).result(T)
    (fb,) = server.requests_to("/api/v1/forward_backward")
    assert fb.header("Content-Encoding") == "zstd"
    request = decode_forward_backward_request(zstandard.ZstdDecompressor().decompress(fb.body))
    assert request.seq_id == 1 and request.model_id == "s1:train:0"
    (opt,) = server.requests_to("/api/v1/optim_step")
    assert opt.header("Content-Encoding") is None and opt.json()["seq_id"] == 2  # JSON bodies stay as they are


def test_a_pickled_copy_reads_the_client_config_and_rides_the_session_poll() -> None:
    with _batching_server() as (srv, sim):
        with _sc(srv) as sc:
            clone = pickle.loads(pickle.dumps(sc.create_sampling_client(base_model="m").result(T)))
            try:
                futs = [clone.sample(types.ModelInput.from_ints([1]), 1, types.SamplingParams(max_tokens=1))
                        for _ in range(3)]
                assert wait_for(lambda: len(sim.pending) == 3, T)
                sim.complete(sorted(sim.pending))
                assert all(f.result(T).sequences[0].tokens == [1] for f in futs)
            finally:
                clone.close()
        targets = [r.json()["target"] for r in srv.requests_to("/api/v1/retrieve_futures")]
        assert targets and all(t["sampling_session_id"] == "s1:sample:0" and t["cloned_sampler_id"] > 0
                               for t in targets)
