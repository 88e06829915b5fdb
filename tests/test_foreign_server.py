"""Every client flow against servers answering in the styles of other Tinker-compatible servers.

A style-rewriting proxy (tests/foreign_server.py) sits in front of a real LocalTinkerServer: ``"type":
null`` answers, bare checkpoint ids, failed futures as HTTP 400 ``{"detail": ...}``, 202 on submit,
UUID or integer request ids, 404 for ``dynamic_config``. The flows run once per style and once with all
of them at a time.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import TEST_API_KEY
from tests.foreign_server import ForeignStyleProxy
from tinker_sync import BadRequestError, RequestFailedError, types
from tinker_sync.local import LocalTinkerServer
from tinker_sync.service_client import ServiceClient

MODEL = "tinker-sync/tiny-byte"
T = 60.0  # generous timeout for every .result()

_ALL_UUID = ("type_null", "bare_ids", "detail_400", "accepted_202", "uuid_ids", "no_dynamic_config")
_ALL_INT = ("type_null", "bare_ids", "detail_400", "accepted_202", "int_ids", "no_dynamic_config", "empty_config")
STYLE_SETS = {
    "type_null": ("type_null",),
    "bare_ids": ("bare_ids",),
    "detail_400": ("detail_400",),
    "accepted_202": ("accepted_202",),
    "uuid_ids": ("uuid_ids",),
    "int_ids": ("int_ids",),
    "no_dynamic_config": ("no_dynamic_config",),
    "empty_config": ("no_dynamic_config", "empty_config"),
    "all_uuid": _ALL_UUID,
    "all_int": _ALL_INT,
}


_PARAMS = [pytest.param(name, id=name) for name in STYLE_SETS]


@pytest.fixture(params=_PARAMS)
def foreign(request: Any, tmp_path: Path) -> Iterator[ForeignStyleProxy]:
    server = LocalTinkerServer(data_dir=tmp_path / "server-data", long_poll_s=2.0)
    server.start()
    proxy = ForeignStyleProxy(server.url, STYLE_SETS[request.param]).start()
    try:
        yield proxy
    finally:
        proxy.stop()
        server.stop()


def _example(tok: Any, text: str) -> types.Datum:
    ids = tok.encode(text, add_special_tokens=False)
    return types.Datum(
        model_input=types.ModelInput.from_ints(ids[:-1]),
        loss_fn_inputs={"target_tokens": ids[1:], "weights": [1.0] * (len(ids) - 1)},
    )


def _statuses(proxy: ForeignStyleProxy, path: str) -> list[int]:
    return [status for _, p, status in proxy.answered if p.split("?")[0] == path]


def _train(service: ServiceClient) -> tuple[Any, Any, list[types.Datum], list[float]]:
    caps = service.get_server_capabilities()
    assert MODEL in [m.model_name for m in caps.supported_models]
    training = service.create_lora_training_client(MODEL, rank=8, seed=0)
    tok = training.get_tokenizer()
    data = [_example(tok, text) for text in ("the cat sat on the mat. ", "the dog sat on the log. ")]
    # six steps submitted at once: a dozen futures in flight through the foreign answers
    adam = types.AdamParams(learning_rate=2e-2)
    steps = [(training.forward_backward(data, "cross_entropy"), training.optim_step(adam)) for _ in range(6)]
    losses = [fb.result(T).metrics["loss:sum"] for fb, _ in steps]
    assert all(isinstance(opt.result(T), types.OptimStepResponse) for _, opt in steps)
    assert losses[-1] < losses[0] * 0.8, losses
    info = training.get_info()
    assert info.model_id == training.model_id and info.model_data.model_name == MODEL and info.lora_rank == 8
    return training, tok, data, losses


def _check_failed_future(proxy: ForeignStyleProxy, training: Any) -> None:
    """A save over an existing name fails on the server: the error comes through the Future."""
    expected: type[Exception] = BadRequestError if "detail_400" in proxy.styles else RequestFailedError
    with pytest.raises(expected, match="overwrite") as info:
        training.save_state("s1").result(T)
    if "detail_400" in proxy.styles:  # the official SDK re-polls a 400 three times, then fails with it
        assert isinstance(info.value, BadRequestError) and info.value.status_code == 400


def _check_sampling(proxy: ForeignStyleProxy, training: Any, tok: Any) -> None:
    """An ephemeral sampler, then samples cancelled while queued: the cancel reaches the server by the
    server's own id (an unknown id would be a 404)."""
    ephemeral = training.save_weights_and_get_sampling_client().result(T)
    prompt = types.ModelInput.from_ints(tok.encode("the ", add_special_tokens=False))
    params = types.SamplingParams(max_tokens=48, temperature=1.0, seed=3)
    assert len(ephemeral.sample(prompt, 1, params).result(T).sequences) == 1
    futs = [ephemeral.sample(prompt, 2, params) for _ in range(12)]
    cancelled = [f for f in futs[4:] if f.cancel()]
    for f in futs:
        if f not in cancelled:
            assert len(f.result(T).sequences) == 2
    assert len(ephemeral.sample(prompt, 1, params).result(T).sequences) == 1  # the sampler still works
    if "no_dynamic_config" in proxy.styles:  # sample_cancel_enabled is never announced: not used
        assert not _statuses(proxy, "/api/v1/cancel_future")
        return
    deadline = time.monotonic() + 20  # the client sends cancels from its own thread
    while cancelled and not _statuses(proxy, "/api/v1/cancel_future") and time.monotonic() < deadline:
        time.sleep(0.02)
    sent = _statuses(proxy, "/api/v1/cancel_future")
    assert (len(sent) >= 1) == bool(cancelled) and len(sent) <= len(cancelled) and set(sent) <= {200}
    if {"uuid_ids", "int_ids"} & proxy.styles:  # the server's own ids came back (answered, not a 404)
        ids = proxy.issued_ids()
        assert all(body["request_id"] in ids for _, body in _answers(proxy, "/api/v1/cancel_future"))


def _check_rest(proxy: ForeignStyleProxy, service: ServiceClient, training: Any, state_path: str) -> None:
    bare = "bare_ids" in proxy.styles
    rest = service.create_rest_client()
    runs = rest.list_training_runs().result(T).training_runs
    assert training.model_id in [r.training_run_id for r in runs]
    listed = rest.list_checkpoints(training.model_id).result(T).checkpoints
    by_id = {c.checkpoint_id: c for c in listed}
    ckpt, smp = ("s1", "smp") if bare else ("weights/s1", "sampler_weights/smp")
    assert set(by_id) == {ckpt, smp}
    assert by_id[ckpt].tinker_path == state_path and by_id[ckpt].checkpoint_type == "training"
    assert by_id[smp].checkpoint_type == "sampler"
    assert {c.checkpoint_id for c in rest.list_user_checkpoints().result(T).checkpoints} == {ckpt, smp}
    winfo = rest.get_weights_info_by_tinker_path(state_path).result(T)
    assert winfo.base_model == MODEL and winfo.is_lora and winfo.lora_rank == 8

    rest.publish_checkpoint_from_tinker_path(state_path).result(T)
    assert {c.checkpoint_id: c.public for c in rest.list_checkpoints(training.model_id).result(T).checkpoints}[ckpt]
    rest.unpublish_checkpoint_from_tinker_path(state_path).result(T)
    assert not {c.checkpoint_id: c.public for c in rest.list_checkpoints(training.model_id).result(T).checkpoints}[ckpt]
    run = rest.get_training_run(training.model_id).result(T)
    assert run.lora_rank == 8 and run.last_checkpoint is not None and run.last_checkpoint.checkpoint_id == ckpt
    rest.set_checkpoint_ttl_from_tinker_path(state_path, 7200).result(T)
    assert {c.checkpoint_id: c.expires_at for c in rest.list_checkpoints(training.model_id).result(T).checkpoints}[ckpt]
    rest.set_checkpoint_ttl_from_tinker_path(state_path, None).result(T)
    expiry = {c.checkpoint_id: c.expires_at for c in rest.list_checkpoints(training.model_id).result(T).checkpoints}
    assert expiry[ckpt] is None
    archive = rest.get_checkpoint_archive_url(training.model_id, ckpt).result(T)  # by the listed id
    with tarfile.open(fileobj=io.BytesIO(requests.get(archive.url, timeout=T).content)) as tar:
        assert tar.getnames()
    # delete by the id the listing gave (bare where the server lists bare ids)
    assert rest.delete_checkpoint(training.model_id, smp).result(T) is None
    assert [c.checkpoint_id for c in rest.list_checkpoints(training.model_id).result(T).checkpoints] == [ckpt]
    if bare:  # the bare id is a path segment of the checkpoint endpoints
        assert any(m == "DELETE" and p.endswith("/checkpoints/smp") and s == 204 for m, p, s in proxy.answered)


def _answers(proxy: ForeignStyleProxy, path: str) -> list[tuple[int, Any]]:
    return [(status, body) for p, status, body in proxy.json_answers if p == path]


def _check_style_seen(proxy: ForeignStyleProxy) -> None:
    """The proxy really answered in its style (so a pass is not a pass against the plain server)."""
    if "type_null" in proxy.styles:
        assert [body["type"] for _, body in _answers(proxy, "/api/v1/get_info")][:1] == [None]
        results = [body for _, body in _answers(proxy, "/api/v1/retrieve_future") if "path" in body]
        assert results and all(body["type"] is None for body in results)  # save / load results
    listed = [c["checkpoint_id"] for _, body in _answers(proxy, "/api/v1/checkpoints") for c in body["checkpoints"]]
    assert set(listed) == ({"s1", "smp"} if "bare_ids" in proxy.styles else {"weights/s1", "sampler_weights/smp"})
    failed = [body for status, body in _answers(proxy, "/api/v1/retrieve_future") if status == 400]
    if "detail_400" in proxy.styles:
        assert failed and all(set(body) == {"detail"} and "overwrite" in body["detail"] for body in failed)
        assert _statuses(proxy, "/api/v1/retrieve_future").count(400) == 4  # re-polled 3 times, as the official SDK
    else:
        assert not failed
    submits = _statuses(proxy, "/api/v1/forward_backward") + _statuses(proxy, "/api/v1/asample")
    assert submits and set(submits) == ({202} if "accepted_202" in proxy.styles else {200})
    ids = proxy.issued_ids()
    if "int_ids" in proxy.styles:
        assert len(ids) > 10 and all(isinstance(i, int) for i in ids)
    elif "uuid_ids" in proxy.styles:
        assert len(ids) > 10 and all(uuid.UUID(i).version == 4 for i in ids)
    if "no_dynamic_config" in proxy.styles:
        assert set(_statuses(proxy, "/api/v1/client/dynamic_config")) <= {404}
    if "empty_config" in proxy.styles:
        assert _statuses(proxy, "/api/v1/client/config") == [200]
        assert not _statuses(proxy, "/api/v1/retrieve_futures")  # not offered, so not used


def test_every_client_flow_against_a_foreign_style(foreign: ForeignStyleProxy) -> None:
    with ServiceClient(api_key=TEST_API_KEY, base_url=foreign.url) as service:
        training, tok, data, _ = _train(service)

        state = training.save_state("s1").result(T)
        assert state.path == f"tinker://{training.model_id}/weights/s1"
        saved_loss = training.forward(data).result(T).metrics["loss:sum"]
        _check_failed_future(foreign, training)
        sampler_path = training.save_weights_for_sampler("smp").result(T).path
        assert sampler_path == f"tinker://{training.model_id}/sampler_weights/smp"

        # train on, then load the saved state back: the loss is the saved one again
        training.forward_backward(data, "cross_entropy").result(T)
        training.optim_step(types.AdamParams(learning_rate=2e-2)).result(T)
        assert training.forward(data).result(T).metrics["loss:sum"] != pytest.approx(saved_loss, rel=1e-6)
        loaded = training.load_state(state.path).result(T)
        assert loaded.path in (None, state.path)
        assert training.forward(data).result(T).metrics["loss:sum"] == pytest.approx(saved_loss, rel=1e-5)
        restored = service.create_training_client_from_state(state.path)
        assert restored.model_id != training.model_id
        assert restored.forward(data).result(T).metrics["loss:sum"] == pytest.approx(saved_loss, rel=1e-5)

        restored_opt = service.create_training_client_from_state_with_optimizer(state.path)
        assert restored_opt.forward(data).result(T).metrics["loss:sum"] == pytest.approx(saved_loss, rel=1e-5)
        _check_sampling(foreign, training, tok)

        sampler = service.create_sampling_client(model_path=sampler_path)
        prompt = types.ModelInput.from_ints(tok.encode("the ", add_special_tokens=False))
        resp = sampler.sample(prompt, 2, types.SamplingParams(max_tokens=5, temperature=0.5, seed=1)).result(T)
        assert len(resp.sequences) == 2 and all(1 <= len(s.tokens) <= 5 for s in resp.sequences)
        assert all(s.logprobs is not None and len(s.logprobs) == len(s.tokens) for s in resp.sequences)
        logprobs = sampler.compute_logprobs(types.ModelInput.from_ints([10, 11, 12])).result(T)
        assert logprobs[0] is None and len(logprobs) == 3 and all(lp is not None and lp <= 0 for lp in logprobs[1:])
        assert sampler.get_base_model() == MODEL

        _check_rest(foreign, service, training, state.path)
        _check_style_seen(foreign)


@pytest.mark.parametrize("env_var", ["TINKER_SDK_PYTHON", "TINKER_SDK038_PYTHON"])
def test_official_sdk_accepts_the_foreign_styles(env_var: str, tmp_path: Path) -> None:
    """The official SDK (in its own venv) runs its core flow against all styles at once (UUID ids: both
    official SDKs refuse integer ids), so the proxy speaks styles the official SDK copes with."""
    sdk_python = os.environ.get(env_var)
    if not sdk_python:
        pytest.skip(f"set {env_var} to a python with the official tinker SDK")
    with LocalTinkerServer(data_dir=tmp_path / "server-data", long_poll_s=2.0) as server:
        proxy = ForeignStyleProxy(server.url, _ALL_UUID).start()
        try:
            out = subprocess.run(
                [sdk_python, str(Path(__file__).parent / "foreign_sdk_flow.py"), proxy.url, "1"],
                capture_output=True, text=True, timeout=600, check=False, cwd=tmp_path,
                env={**os.environ, "TINKER_TELEMETRY": "0"},
            )
        finally:
            proxy.stop()
    lines = out.stdout.strip().splitlines()
    result = json.loads(lines[-1]) if lines else {"ok": False, "error": out.stderr[-3000:]}
    assert result["ok"], result
    assert result["failed_future"] == "ValueError"  # the official poll loop's error for a 400 (3 re-polls)
    assert result["info_type"] is None
    assert set(_statuses(proxy, "/api/v1/forward_backward")) == {202}
