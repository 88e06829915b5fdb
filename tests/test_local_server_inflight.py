"""Inflight sampler weights of the local server (0.38 ``kind="inflight"``), over HTTP.

All inflight sampling sessions of a training model sample from one shared target that only an inflight
save replaces; snapshot sessions keep their weights; the target survives a restart, and a journaled
inflight save accepted before a crash publishes after it.
"""

from __future__ import annotations

import base64
import json
import pickle
from pathlib import Path
from typing import Any

import pytest

from tinker_sync import SamplingClient, ServiceClient, TrainingClient, types
from tinker_sync.local import LocalTinkerServer
from tinker_sync.local._persist import LiveStateStore
from tinker_sync.local._store import owner_of_key

from .test_local_server import BASE, KEY_A, KEY_B, Api, fwdbwd, optim, sample_body

T = 60.0
PROMPT = types.ModelInput.from_ints(list(b"Q: what is 2+2?\nA: 4"))
GREEDY = types.SamplingParams(max_tokens=12, temperature=0.0, seed=1)


def _data() -> list[types.Datum]:
    toks = list(b"Q: hi\nA: hello there, friend")
    return [types.Datum(model_input=types.ModelInput.from_ints(toks[:-1]),
                        loss_fn_inputs={"target_tokens": toks[1:], "weights": [1.0] * (len(toks) - 1)})]


def _train(tc: TrainingClient, steps: int = 3) -> None:
    for _ in range(steps):
        tc.forward_backward(_data(), "cross_entropy").result(T)
        tc.optim_step(types.AdamParams(learning_rate=5e-2)).result(T)


def _view(sampler: SamplingClient) -> tuple[list[float | None], list[int]]:
    """What a sampler's weights say: prompt logprobs and a greedy continuation."""
    logprobs = sampler.compute_logprobs(PROMPT).result(T)
    tokens = sampler.sample(PROMPT, 1, GREEDY).result(T).sequences[0].tokens
    return logprobs, list(tokens)


def test_inflight_sessions_share_the_newest_inflight_save(service: ServiceClient) -> None:
    tc = service.create_lora_training_client(base_model=BASE, rank=4).result(T)
    snapshot = tc.save_weights_and_get_sampling_client().result(T)
    early = tc.save_weights_and_get_sampling_client(kind="inflight").result(T)
    start = _view(snapshot)
    assert _view(early) == start

    _train(tc)
    assert _view(early) == start  # training alone does not publish: the target moves only on an inflight save

    late = tc.save_weights_and_get_sampling_client(kind="inflight").result(T)
    assert late.sampling_session_id != early.sampling_session_id  # a new session per save
    trained = _view(late)
    assert trained[0] != start[0]
    assert _view(early) == trained  # the earlier client follows the newest inflight save
    assert _view(snapshot) == start  # a snapshot keeps its weights
    fixed = tc.save_weights_and_get_sampling_client().result(T)
    assert _view(fixed) == trained

    copy = pickle.loads(pickle.dumps(early))  # a serialized copy (as sent to a worker) joins the same session
    try:
        _train(tc)
        newest = tc.save_weights_and_get_sampling_client(kind="inflight").result(T)
        assert _view(newest) == _view(early) == _view(late) == _view(copy) != trained
        assert _view(fixed) == trained
    finally:
        copy.close()


def test_inflight_targets_are_per_training_model(service: ServiceClient) -> None:
    one = service.create_lora_training_client(base_model=BASE, rank=4).result(T)
    two = service.create_lora_training_client(base_model=BASE, rank=4).result(T)
    a = one.save_weights_and_get_sampling_client(kind="inflight").result(T)
    before = _view(a)
    _train(two)
    two.save_weights_and_get_sampling_client(kind="inflight").result(T)
    assert _view(a) == before  # another model's inflight save leaves this model's target alone


def _save_inflight(api: Api, mid: str, seq: int, session_seq: int, **extra: Any) -> Any:
    return api.post("save_weights_for_sampler", {"model_id": mid, "seq_id": seq, "sampling_session_seq_id": session_seq,
                                                 "kind": "inflight", **extra})


@pytest.mark.parametrize(("extra", "named"), [
    ({"path": "w"}, "path"), ({"ttl_seconds": 7200}, "ttl_seconds"), ({"user_metadata": {"a": "b"}}, "user_metadata"),
    ({"sampling_session_seq_id": None}, "sampling_session_seq_id"),
])
def test_inflight_save_refuses_what_it_cannot_honour(tmp_path: Path, extra: dict[str, Any], named: str) -> None:
    with LocalTinkerServer(data_dir=tmp_path / "d", long_poll_s=0.5) as srv:
        api = Api(srv.url)
        mid = api.model(api.session())
        r = _save_inflight(api, mid, 1, 0, **extra)
        assert r.status_code == 400 and named in r.json()["detail"], r.text
        assert r.headers["X-Tinker-Seq-Id-Consumed"] == "1"  # the lane goes on past the refused seq_id
        assert "sampling_session_id" in api.result(_save_inflight(api, mid, 2, 0))


def _prompt_logprobs(api: Api, sampler: str, seq: int) -> list[float | None]:
    out = api.result(api.post("asample", sample_body(sampler, seq, n=1, max_tokens=1, prompt_logprobs=True)))
    return list(out["prompt_logprobs"])


def test_inflight_target_survives_restarts_and_journaled_saves_publish(tmp_path: Path) -> None:
    data = tmp_path / "d"
    with LocalTinkerServer(data_dir=data, long_poll_s=1.0) as srv:
        api = Api(srv.url)
        mid = api.model(api.session())
        early = api.result(_save_inflight(api, mid, 1, 0))["sampling_session_id"]
        start = _prompt_logprobs(api, early, 0)
        api.result(api.post("forward_backward", fwdbwd(mid, 2)))
        api.result(api.post("optim_step", optim(mid, 3, lr=5e-2)))
    with LocalTinkerServer(data_dir=data, long_poll_s=1.0) as srv:  # the target is read back from disk
        api = Api(srv.url)
        assert _prompt_logprobs(api, early, 1) == start
    # an inflight save accepted (journaled) but not run before the server died
    body = {"model_id": mid, "seq_id": 4, "sampling_session_seq_id": 1, "kind": "inflight"}
    LiveStateStore(data).save_pending(mid, 4, {
        "fn": "save_weights_for_sampler", "op": "save_weights_for_sampler", "request_type": "SaveWeightsForSampler",
        "owner": owner_of_key(KEY_A), "content_type": "application/json",
        "body": base64.b64encode(json.dumps(body).encode()).decode()})
    with LocalTinkerServer(data_dir=data, long_poll_s=1.0) as srv:
        api = Api(srv.url)
        late = api.result(api.post("save_weights_for_sampler", body))["sampling_session_id"]  # retry: first answer
        assert late == early.replace(":sample:0", ":sample:1")  # the session's next sampling session
        trained = _prompt_logprobs(api, late, 0)
        assert trained != start and _prompt_logprobs(api, early, 2) == trained
        assert api.ok("GET", f"samplers/{early}") == {"sampler_id": early, "base_model": BASE}


def test_another_key_cannot_sample_an_inflight_session(tmp_path: Path) -> None:
    with LocalTinkerServer(data_dir=tmp_path / "d", long_poll_s=0.5) as srv:
        api = Api(srv.url)
        sampler = api.result(_save_inflight(api, api.model(api.session()), 1, 0))["sampling_session_id"]
        other = Api(srv.url, KEY_B)
        assert other.post("asample", sample_body(sampler, 0, n=1)).status_code == 404
