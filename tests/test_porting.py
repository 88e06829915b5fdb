"""Official-SDK idioms (0.25 and 0.38 style) run unchanged through ``import tinker_sync as tinker``.

Each test is one idiom as a user of the official SDK writes it, against a real LocalTinkerServer over
HTTP. Idioms whose server side (the 0.38 wire) the local server does not serve yet are marked
``xfail(strict=True, reason="server: ...")``: they flip to failures (XPASS) once the server lands, so the
marker must then go.
"""

from __future__ import annotations

import concurrent.futures
import json
import pickle
from collections.abc import Iterator
from typing import Any

import pytest

import tinker_sync as tinker
from tests.conftest import TEST_API_KEY
from tinker_sync import types

MODEL = "tinker-sync/tiny-byte"
T = 60.0
TEXT = "the quick brown fox jumps over the lazy dog"


@pytest.fixture
def sc(local_server: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[tinker.ServiceClient]:
    # the official way: credentials and URL from the environment, ServiceClient() without arguments
    monkeypatch.setenv("TINKER_API_KEY", TEST_API_KEY)
    monkeypatch.setenv("TINKER_BASE_URL", local_server.url)
    client = tinker.ServiceClient()
    try:
        yield client
    finally:
        client.close(cancel_pending=True)


@pytest.fixture
def tc(sc: tinker.ServiceClient) -> tinker.TrainingClient:
    return sc.create_lora_training_client(base_model=MODEL, rank=8).result(T)


def _data(tokenizer: Any, texts: tuple[str, ...] = (TEXT, "hello world, hello tinker")) -> list[types.Datum]:
    out = []
    for text in texts:
        ids = tokenizer.encode(text, add_special_tokens=False)
        out.append(types.Datum(
            model_input=types.ModelInput.from_ints(ids[:-1]),
            loss_fn_inputs={"target_tokens": ids[1:], "weights": [1.0] * (len(ids) - 1)},
        ))
    return out


def _prompt(tokenizer: Any, text: str = "the ") -> types.ModelInput:
    return types.ModelInput.from_ints(tokenizer.encode(text, add_special_tokens=False))


def _loss(tc: tinker.TrainingClient) -> float:
    return float(tc.forward(_data(tc.get_tokenizer()), "cross_entropy").result(T).metrics["loss:sum"])


def _posted(server: Any, path: str) -> list[dict[str, Any]]:
    return [json.loads(r.body) for r in server.requests if r.method == "POST" and r.path == path]


# ---- 0.25 style: the creation methods' results used directly as clients -----------------------------


def test_025_training_client_used_directly(sc: tinker.ServiceClient) -> None:
    tc = sc.create_lora_training_client(base_model=MODEL, rank=8)
    out = tc.forward_backward(_data(tc.get_tokenizer()), "cross_entropy").result(T)
    assert out.metrics["loss:sum"] > 0 and len(out.loss_fn_outputs) == 2
    assert tc.model_id.startswith(sc.session_id)


def test_025_optim_step_with_adam_params_keyword(tc: tinker.TrainingClient) -> None:
    before = _loss(tc)
    tc.forward_backward(_data(tc.get_tokenizer()), "cross_entropy").result(T)
    tc.optim_step(adam_params=tinker.types.AdamParams(learning_rate=1e-2)).result(T)
    assert _loss(tc) < before


def test_025_training_loop_pipelined(tc: tinker.TrainingClient) -> None:
    data = _data(tc.get_tokenizer())
    before = _loss(tc)
    for _ in range(3):  # the official pattern: submit both, then wait
        fb = tc.forward_backward(data, "cross_entropy")
        opt = tc.optim_step(tinker.AdamParams(learning_rate=1e-2))
        fb.result(T)
        opt.result(T)
    assert _loss(tc) < before


def test_025_forward_gives_logprobs(tc: tinker.TrainingClient) -> None:
    data = _data(tc.get_tokenizer())
    out = tc.forward(data, "cross_entropy").result(T)
    logprobs = out.loss_fn_outputs[0]["logprobs"].tolist()
    assert len(logprobs) == data[0].model_input.length and all(lp <= 0 for lp in logprobs)


def test_025_save_state_and_load_state(tc: tinker.TrainingClient) -> None:
    path = tc.save_state("ckpt").result(T).path
    assert path.startswith("tinker://") and "/weights/ckpt" in path
    assert tc.load_state(path).result(T).path == path
    assert tc.load_state_with_optimizer(path).result(T).path == path


def test_025_save_weights_for_sampler_then_create_sampling_client(
    sc: tinker.ServiceClient, tc: tinker.TrainingClient
) -> None:
    path = tc.save_weights_for_sampler("final").result(T).path
    sampler = sc.create_sampling_client(model_path=path)
    resp = sampler.sample(prompt=_prompt(tc.get_tokenizer()), num_samples=2,
                          sampling_params=tinker.types.SamplingParams(max_tokens=4, temperature=0.7)).result(T)
    assert len(resp.sequences) == 2 and all(1 <= len(s.tokens) <= 4 for s in resp.sequences)


def test_025_save_weights_and_get_sampling_client_used_directly(tc: tinker.TrainingClient) -> None:
    sampler = tc.save_weights_and_get_sampling_client()
    resp = sampler.sample(_prompt(tc.get_tokenizer()), 1, types.SamplingParams(max_tokens=3)).result(T)
    assert len(resp.sequences[0].tokens) <= 3
    assert sampler.get_base_model() == MODEL


def test_025_deprecated_name_argument_warns(tc: tinker.TrainingClient) -> None:
    with pytest.warns(DeprecationWarning, match="name"):
        sampler = tc.save_weights_and_get_sampling_client(name="ignored")
    assert sampler.result(T).sampling_session_id


def test_025_compute_logprobs(sc: tinker.ServiceClient) -> None:
    sampler = sc.create_sampling_client(base_model=MODEL)
    prompt = _prompt(sampler.get_tokenizer(), TEXT)
    logprobs = sampler.compute_logprobs(prompt).result(T)
    assert len(logprobs) == prompt.length and logprobs[0] is None and all(lp is not None for lp in logprobs[1:])


def test_025_get_info_blocks_and_returns_the_value(tc: tinker.TrainingClient) -> None:
    info = tc.get_info()
    assert info.model_id == tc.model_id and info.model_data.model_name == MODEL


def test_025_tokenizer_roundtrip(tc: tinker.TrainingClient) -> None:
    tok = tc.get_tokenizer()
    assert tok.decode(tok.encode("hello", add_special_tokens=False)) == "hello"


def test_025_server_capabilities(sc: tinker.ServiceClient) -> None:
    caps = sc.get_server_capabilities()
    assert MODEL in [m.model_name for m in caps.supported_models]


def test_025_resume_from_state(sc: tinker.ServiceClient, tc: tinker.TrainingClient) -> None:
    data = _data(tc.get_tokenizer())
    tc.forward_backward(data, "cross_entropy").result(T)
    tc.optim_step(tinker.AdamParams(learning_rate=1e-2)).result(T)
    path = tc.save_state("resume").result(T).path
    resumed = sc.create_training_client_from_state(path)
    assert resumed.model_id != tc.model_id
    assert abs(_loss(resumed) - _loss(tc)) < 1e-4


def test_025_resume_with_optimizer(sc: tinker.ServiceClient, tc: tinker.TrainingClient) -> None:
    path = tc.save_state("resume-opt").result(T).path
    resumed = sc.create_training_client_from_state_with_optimizer(path)
    out = resumed.forward_backward(_data(resumed.get_tokenizer()), "cross_entropy").result(T)
    assert out.metrics["loss:sum"] > 0


def test_025_rest_client_lists_checkpoints(sc: tinker.ServiceClient, tc: tinker.TrainingClient) -> None:
    tc.save_state("listed").result(T)
    rest = sc.create_rest_client()
    ids = [c.checkpoint_id for c in rest.list_checkpoints(tc.model_id).result(T).checkpoints]
    assert "weights/listed" in ids


def test_025_datum_from_plain_lists(tc: tinker.TrainingClient) -> None:
    datum = tinker.types.Datum(
        model_input=tinker.types.ModelInput.from_ints([1, 2, 3]),
        loss_fn_inputs={"target_tokens": [2, 3, 4], "weights": [1.0, 1.0, 0.0]},
    )
    assert tc.forward([datum], "cross_entropy").result(T).loss_fn_outputs[0]["logprobs"].shape == [3]


def test_025_pickled_sampling_client_in_another_thread(sc: tinker.ServiceClient) -> None:
    sampler = sc.create_sampling_client(base_model=MODEL)
    clone = pickle.loads(pickle.dumps(sampler))
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            resp = pool.submit(lambda: clone.sample(types.ModelInput.from_ints([104, 105]), 1,
                                                    types.SamplingParams(max_tokens=2)).result(T)).result(T)
        assert len(resp.sequences) == 1
    finally:
        clone.close()


def test_025_many_samples_in_flight(sc: tinker.ServiceClient) -> None:
    sampler = sc.create_sampling_client(base_model=MODEL)
    futures = [sampler.sample(types.ModelInput.from_ints([104, 105]), 1, types.SamplingParams(max_tokens=2, seed=i))
               for i in range(8)]
    done, _ = concurrent.futures.wait(futures, timeout=T)
    assert len(done) == 8 and all(len(f.result(0).sequences) == 1 for f in futures)


def test_025_forward_backward_with_importance_sampling(tc: tinker.TrainingClient) -> None:
    ids = tc.get_tokenizer().encode(TEXT, add_special_tokens=False)
    n = len(ids) - 1
    datum = types.Datum(model_input=types.ModelInput.from_ints(ids[:-1]), loss_fn_inputs={
        "target_tokens": ids[1:], "logprobs": [-1.0] * n, "advantages": [0.5] * n})
    out = tc.forward_backward([datum], "importance_sampling").result(T)
    assert len(out.loss_fn_outputs) == 1


# ---- 0.38 style: .result() on the creation methods, optim_params, close() future ---------------------


def test_038_result_on_create_lora_training_client(sc: tinker.ServiceClient) -> None:
    future = sc.create_lora_training_client(base_model=MODEL, rank=8)
    assert isinstance(future, concurrent.futures.Future)
    tc = future.result(T)
    assert isinstance(tc, tinker.TrainingClient) and not isinstance(tc, concurrent.futures.Future)
    assert tc.forward_backward(_data(tc.get_tokenizer()), "cross_entropy").result(T).metrics["loss:sum"] > 0


def test_038_optim_step_positional_params(tc: tinker.TrainingClient) -> None:
    before = _loss(tc)
    tc.forward_backward(_data(tc.get_tokenizer()), "cross_entropy").result(T)
    assert tc.optim_step(tinker.AdamParams(learning_rate=1e-2)).result(T) is not None
    assert _loss(tc) < before


def test_038_optim_step_optim_params_keyword(tc: tinker.TrainingClient) -> None:
    tc.forward_backward(_data(tc.get_tokenizer()), "cross_entropy").result(T)
    tc.optim_step(optim_params=tinker.types.AdamParams(learning_rate=1e-4)).result(T)


def test_038_save_weights_and_get_sampling_client_result(tc: tinker.TrainingClient) -> None:
    sampler = tc.save_weights_and_get_sampling_client().result(T)
    assert isinstance(sampler, tinker.SamplingClient)
    assert sampler.sample(_prompt(tc.get_tokenizer()), 1, types.SamplingParams(max_tokens=2)).result(T).sequences


def test_038_create_sampling_client_result(sc: tinker.ServiceClient, tc: tinker.TrainingClient) -> None:
    path = tc.save_weights_for_sampler("s038").result(T).path
    sampler = sc.create_sampling_client(model_path=path).result(T)
    assert sampler.compute_logprobs(_prompt(tc.get_tokenizer(), TEXT)).result(T)[0] is None


def test_038_training_client_create_sampling_client(tc: tinker.TrainingClient) -> None:
    path = tc.save_weights_for_sampler("from-tc").result(T).path
    sampler = tc.create_sampling_client(path).result(T)
    assert sampler.get_base_model() == MODEL


def test_038_from_state_result(sc: tinker.ServiceClient, tc: tinker.TrainingClient) -> None:
    path = tc.save_state("s").result(T).path
    resumed = sc.create_training_client_from_state(path).result(T)
    assert resumed.get_info().model_data.model_name == MODEL


def test_038_context_manager_and_close_future(local_server: Any) -> None:
    with tinker.ServiceClient(base_url=local_server.url, api_key=TEST_API_KEY) as service:
        tc = service.create_lora_training_client(base_model=MODEL, rank=4).result(T)
        tc.forward_backward(_data(tc.get_tokenizer()), "cross_entropy").result(T)
        sid = service.session_id
    finishes = _posted(local_server, f"/api/v1/sessions/{sid}/finish")
    assert finishes and finishes[-1]["reason"] == {"type": "success"}


def test_038_close_with_status_and_detail(local_server: Any) -> None:
    service = tinker.ServiceClient(base_url=local_server.url, api_key=TEST_API_KEY)
    sid = service.session_id
    assert service.close("success", detail="training complete").result(T) is None
    (finish,) = _posted(local_server, f"/api/v1/sessions/{sid}/finish")
    assert finish == {"reason": {"type": "success"}, "detail": "training complete"}


def test_038_user_metadata_and_project_positional(local_server: Any) -> None:
    with tinker.ServiceClient({"team": "rl"}, None, base_url=local_server.url, api_key=TEST_API_KEY,
                              display_name="porting") as service:
        service.session_id  # noqa: B018 - creates the session
    (create,) = _posted(local_server, "/api/v1/create_session")
    assert create["user_metadata"] == {"team": "rl"} and create["display_name"] == "porting"


def test_038_adam_optimizer_config(sc: tinker.ServiceClient, local_server: Any) -> None:
    tc = sc.create_lora_training_client(
        base_model=MODEL, rank=4, optimizer=tinker.types.AdamOptimizerConfig()
    ).result(T)
    tc.forward_backward(_data(tc.get_tokenizer()), "cross_entropy").result(T)
    tc.optim_step(tinker.types.AdamParams(learning_rate=1e-3)).result(T)
    (create,) = _posted(local_server, "/api/v1/create_model")
    assert create.get("optimizer_config", {"type": "adamw"}) == {"type": "adamw"}  # Adam is the wire default


def test_038_dimuon_optimizer(sc: tinker.ServiceClient) -> None:
    tc = sc.create_lora_training_client(base_model=MODEL, rank=4,
                                        optimizer=tinker.types.DimuonOptimizerConfig()).result(T)
    tc.forward_backward(_data(tc.get_tokenizer()), "cross_entropy").result(T)
    tc.optim_step(tinker.types.DimuonParams(learning_rate=1e-3)).result(T)
    with pytest.raises(tinker.BadRequestError, match="optim"):
        tc.optim_step(tinker.types.AdamParams(learning_rate=1e-3)).result(T)


def test_038_save_state_with_user_metadata_is_sent(tc: tinker.TrainingClient, local_server: Any) -> None:
    tc.save_state("meta", user_metadata={"step": "10"}).result(T)
    tc.save_weights_for_sampler("meta-s", user_metadata={"step": "10"}).result(T)
    assert _posted(local_server, "/api/v1/save_weights")[-1]["user_metadata"] == {"step": "10"}
    assert _posted(local_server, "/api/v1/save_weights_for_sampler")[-1]["user_metadata"] == {"step": "10"}


def test_038_checkpoint_user_metadata_is_listed(sc: tinker.ServiceClient, tc: tinker.TrainingClient) -> None:
    tc.save_state("meta", user_metadata={"step": "10"}).result(T)
    (ckpt,) = [c for c in sc.create_rest_client().list_checkpoints(tc.model_id).result(T).checkpoints
               if c.checkpoint_id == "weights/meta"]
    assert ckpt.user_metadata == {"step": "10"}


def test_038_sampler_handle_in_another_client(sc: tinker.ServiceClient) -> None:
    sampler = sc.create_sampling_client(base_model=MODEL).result(T)
    handle = sampler.get_sampler_handle()
    assert TEST_API_KEY not in handle
    other = tinker.SamplingClient.from_sampler_handle(handle, api_key=TEST_API_KEY)
    try:
        assert other.sampling_session_id == sampler.sampling_session_id
        assert other.sample(types.ModelInput.from_ints([104, 105]), 1, types.SamplingParams(max_tokens=2)).result(T)
    finally:
        other.close()


def test_038_console_urls(sc: tinker.ServiceClient, tc: tinker.TrainingClient) -> None:
    assert sc.get_console_url().endswith(f"/sessions/{sc.session_id}")
    assert tc.get_console_url().endswith(f"/training_runs/{tc.model_id}")


def test_038_topk_sample_logprobs(sc: tinker.ServiceClient) -> None:
    sampler = sc.create_sampling_client(base_model=MODEL).result(T)
    resp = sampler.sample(types.ModelInput.from_ints([104, 105]), 1, types.SamplingParams(max_tokens=3),
                          topk_sample_logprobs=2).result(T)
    seq = resp.sequences[0]
    assert seq.topk_logprobs is not None and len(seq.topk_logprobs) == len(seq.tokens)


def test_038_prompt_logprobs_last_n(sc: tinker.ServiceClient) -> None:
    sampler = sc.create_sampling_client(base_model=MODEL).result(T)
    logprobs = sampler.compute_logprobs(types.ModelInput.from_ints(list(range(100, 110))),
                                        prompt_logprobs_last_n=3).result(T)
    assert logprobs[:7] == [None] * 7 and all(lp is not None for lp in logprobs[7:])


def test_038_save_weights_external(tc: tinker.TrainingClient) -> None:
    resp = tc.save_weights_external("export").result(T)
    assert resp.path.startswith("tinker://")


def test_038_copy_weights(local_server: Any, tc: tinker.TrainingClient) -> None:
    path = tc.save_state("to-copy").result(T).path
    with tinker.ServiceClient(project_id="proj-archive", base_url=local_server.url, api_key=TEST_API_KEY) as archive:
        copied = archive.copy_weights(path).result(T)
    assert copied.startswith("tinker://") and copied != path


def test_038_inflight_sampling_client_follows_later_saves(tc: tinker.TrainingClient) -> None:
    prompt = _prompt(tc.get_tokenizer(), TEXT)
    sampler = tc.save_weights_and_get_sampling_client(kind="inflight").result(T)
    before = sampler.compute_logprobs(prompt).result(T)
    for _ in range(3):
        tc.forward_backward(_data(tc.get_tokenizer()), "cross_entropy").result(T)
        tc.optim_step(tinker.AdamParams(learning_rate=1e-2)).result(T)
    tc.save_weights_and_get_sampling_client(kind="inflight").result(T)
    assert sampler.compute_logprobs(prompt).result(T) != before


# ---- custom losses (torch, as in the official SDK; skipped without torch) ----------------------------


def test_025_forward_backward_custom_with_torch(tc: tinker.TrainingClient) -> None:
    pytest.importorskip("torch")
    data = _data(tc.get_tokenizer())

    def loss_fn(data: list[types.Datum], logprobs: list[Any]) -> tuple[Any, dict[str, float]]:
        loss = sum(-(lp * d.loss_fn_inputs["weights"].to_torch()).sum() for d, lp in zip(data, logprobs))
        return loss, {"custom_loss": float(loss.detach())}

    out = tc.forward_backward_custom(data, loss_fn).result(T)
    assert out.metrics["loss:sum"] == pytest.approx(_loss(tc), rel=1e-4)


def test_038_create_custom_loss_and_use_the_handle(sc: tinker.ServiceClient, tc: tinker.TrainingClient) -> None:
    pytest.importorskip("torch")

    def neg_ll(logprobs: Any, weights: Any) -> tuple[Any, dict[str, Any]]:
        loss = -(logprobs * weights).sum()
        return loss, {"custom/neg_ll:sum": loss}

    loss_handle = sc.create_custom_loss(neg_ll, input_ranks={"logprobs": 1, "weights": 1}).result(T)
    before = _loss(tc)
    result = tc.forward_backward_custom(_data(tc.get_tokenizer()), loss_handle).result(T)
    assert result.metrics["custom/neg_ll:sum"] == pytest.approx(before, rel=1e-4)
    tc.optim_step(tinker.AdamParams(learning_rate=1e-2)).result(T)
    assert _loss(tc) < before
