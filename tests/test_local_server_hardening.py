"""Malformed input against the local server: every class answers a 4xx that says what to fix, never a 500.

Also the bounds (body size, connections) and the rule that a refused sequenced request never blocks its
model's lane.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tinker_sync.local import LocalTinkerServer

from .test_local_server import BASE, DATA, Api, fwdbwd, optim, text_datum


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    with LocalTinkerServer(data_dir=tmp_path / "data", long_poll_s=0.3) as srv:
        yield Api(srv.url)


def _detail(r: requests.Response, status: int) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    return str(r.json()["detail"])


def _raw_post(api: Api, path: str, raw: bytes) -> requests.Response:
    return api.s.post(f"{api.url}/api/v1/{path}", data=raw, headers={"Content-Type": "application/json"},
                      timeout=30)


def test_deeply_nested_json_is_a_400(api: Api) -> None:
    deep = b"[" * 200_000 + b"]" * 200_000
    assert "nested too deeply" in _detail(_raw_post(api, "create_session", deep), 400)
    meta = b'{"sdk_version": "x", "tags": [], "user_metadata": {"a": ' + b"[" * 5_000 + b"]" * 5_000 + b"}}"
    assert "nested too deeply" in _detail(_raw_post(api, "create_session", meta), 400)


def test_lone_surrogate_is_a_400_and_never_reaches_sqlite(api: Api) -> None:
    body = b'{"sdk_version": "x", "tags": ["a\\ud800b"], "user_metadata": {}}'
    assert "surrogate" in _detail(_raw_post(api, "create_session", body), 400)
    pair = b'{"sdk_version": "x", "tags": ["\\ud83d\\ude00"], "user_metadata": {}, "project_id": "p\\ud83d\\ude00"}'
    assert _raw_post(api, "create_session", pair).status_code == 200  # a valid pair (an emoji) is fine
    sid = api.session()
    body = json.dumps({"session_id": sid, "sampling_session_seq_id": 0, "base_model": BASE}).encode()
    body = body.replace(BASE.encode(), b"x\\udfff")
    assert "surrogate" in _detail(_raw_post(api, "create_sampling_session", body), 400)
    body = b'{"model_id": "a\\ud800b", "path": "f", "seq_id": 2}'  # found by the fuzzer (python -m tests.soak fuzz)
    assert _raw_post(api, "save_weights", body).status_code in (400, 404)


def test_numbers_out_of_range_are_a_400(api: Api) -> None:
    sid = api.session()
    mid = api.model(sid)
    huge = "1" + "0" * 400
    body = json.dumps(optim(mid, 1)).replace('"learning_rate": 0.01', f'"learning_rate": {huge}').encode()
    assert "learning_rate" in _detail(_raw_post(api, "optim_step", body), 400)
    body = json.dumps({"model_id": mid, "path": "w", "seq_id": 2, "ttl_seconds": 0}).replace(
        '"ttl_seconds": 0', f'"ttl_seconds": {huge}').encode()
    assert "ttl_seconds" in _detail(_raw_post(api, "save_weights", body), 400)
    assert "ttl_seconds" in _detail(api.post("save_weights", {"model_id": mid, "path": "w", "seq_id": 3,
                                                              "ttl_seconds": 10**12}), 400)
    # the refused seq_ids 1..3 were consumed: the lane goes on with 4
    assert api.result(api.post("forward_backward", fwdbwd(mid, 4)))["metrics"]["loss:sum"] > 0
    # a far-future expiry never poisons listings
    assert api.ok("GET", f"training_runs/{mid}/checkpoints")["checkpoints"] == []


def test_huge_sparse_tensor_from_a_tiny_body_is_a_400(api: Api) -> None:
    sid = api.session()
    mid = api.model(sid)
    datum = text_datum("Q: hi\nA:", " hello")
    n = len(datum["model_input"]["chunks"][0]["tokens"])
    datum["loss_fn_inputs"]["weights"] = {"data": [], "dtype": "float32", "shape": [n, 10**9],
                                          "sparse_crow_indices": [0] * (n + 1), "sparse_col_indices": []}
    r = api.post("forward_backward", fwdbwd(mid, 1, [datum]))
    assert "limit" in _detail(r, 400) and str(10**9) in r.json()["detail"]
    datum["loss_fn_inputs"]["weights"] = {"data": [], "dtype": "float32", "shape": [10**12, 10**12],
                                          "sparse_crow_indices": [0, 0], "sparse_col_indices": []}
    assert "sparse_crow_indices" in _detail(api.post("forward_backward", fwdbwd(mid, 2, [datum])), 400)
    from tinker_sync import _proto, _serde
    from tinker_sync.types import ForwardBackwardRequest

    datum["loss_fn_inputs"]["weights"] = {"data": [], "dtype": "float32", "shape": [n, 10**9],
                                          "sparse_crow_indices": [0] * (n + 1), "sparse_col_indices": []}
    proto = _proto.encode_forward_backward_request(
        _serde.parse_request(fwdbwd(mid, 3, [datum]), ForwardBackwardRequest)
    )
    r = api.s.post(f"{api.url}/api/v1/forward_backward", data=proto, timeout=30,
                   headers={"Content-Type": "application/x-protobuf"})
    assert len(proto) < 1000 and "limit" in _detail(r, 400)  # the same check on the protobuf path
    dense = text_datum("Q: hi\nA:", " hello")
    dense["loss_fn_inputs"]["weights"]["shape"] = [n, 10**6]
    assert "elements" in _detail(api.post("forward_backward", fwdbwd(mid, 4, [dense])), 400)
    assert api.result(api.post("forward_backward", fwdbwd(mid, 5)))["metrics"]["loss:sum"] > 0


def test_unknown_fields_are_refused_by_name(api: Api) -> None:
    sid = api.session()
    r = api.post("create_model", {"session_id": sid, "model_seq_id": 0, "base_model": BASE, "lora_rnk": 4})
    assert "'lora_rnk'" in _detail(r, 400)
    mid = api.model(sid)
    r = api.post("optim_step", {**optim(mid, 1), "momentum": 0.5})
    assert "'momentum'" in _detail(r, 400)
    # an optimizer request never runs as another optimizer
    r = api.post(
        "optim_step", {"model_id": mid, "seq_id": 2, "optimizer_params": {"type": "dimuon", "learning_rate": 1}}
    )
    assert "'adamw' optimizer" in _detail(r, 400)
    r = api.post("optim_step", {"model_id": mid, "seq_id": 3, "optimizer_params": {"type": "lion", "learning_rate": 1}})
    assert "lion" in _detail(r, 400)
    dimuon = api.result(api.post("create_model", {"session_id": sid, "model_seq_id": 1, "base_model": BASE,
                                                  "optimizer_config": {"type": "dimuon", "version": 1}}))["model_id"]
    assert api.ok("POST", "get_info", {"model_id": dimuon})["optimizer_config"] == {"type": "dimuon", "version": 1}
    api.result(api.post("forward_backward", fwdbwd(dimuon, 1)))
    r = api.post("optim_step", {"model_id": dimuon, "seq_id": 2, "optimizer_params": {"type": "dimuon",
                                                                                      "learning_rate": 1e-2}})
    assert api.result(r)["metrics"]["step"] == 1.0
    assert "'dimuon' optimizer" in _detail(api.post("optim_step", optim(dimuon, 3)), 400)
    sampler = api.ok("POST", "create_sampling_session", {"session_id": sid, "sampling_session_seq_id": 0,
                                                          "base_model": BASE})["sampling_session_id"]
    body = {"sampling_session_id": sampler, "seq_id": 0, "num_samples": 1, "prompt": {"chunks": [
        {"type": "encoded_text", "tokens": [1, 2]}]}, "sampling_params": {"max_tokens": 2}}
    assert "prompt_alt_tokens_k" in _detail(api.post("asample", {**body, "prompt_alt_tokens_k": 10**6}), 400)
    flat = {"data": [1], "dtype": "int64", "shape": [1]}  # not [len(prompt) - 1, K]
    assert "target_prompt_logprobs" in _detail(api.post("asample", {**body, "target_prompt_logprobs": flat}), 400)
    assert "prompt_logprobs_last_n" in _detail(api.post("asample", {**body, "prompt_logprobs_last_n": 1}), 400)
    assert api.post("asample", {**body, "topk_sample_logprobs": 0, "prompt_alt_tokens_k": 0}).status_code == 200
    assert api.result(api.post("forward_backward", fwdbwd(mid, 4)))["metrics"]["loss:sum"] > 0


def test_refused_and_unparseable_sequenced_requests_never_block_the_lane(api: Api) -> None:
    sid = api.session()
    mid = api.model(sid)
    assert api.post("forward_backward", {**fwdbwd(mid, 1), "bogus": 1}).status_code == 400
    bad = fwdbwd(mid, 2)
    bad["forward_backward_input"]["loss_fn"] = "magic"
    assert api.post("forward_backward", bad).status_code == 400
    assert api.post("save_weights", {"model_id": mid, "seq_id": 3, "path": "no/slash"}).status_code == 400
    assert api.post("forward_backward", fwdbwd(mid, 3)).status_code == 400  # seq 3 was consumed by the refusal
    assert api.result(api.post("forward_backward", fwdbwd(mid, 4)))["metrics"]["loss:sum"] > 0


def test_body_size_bounds(tmp_path: Path) -> None:
    with LocalTinkerServer(data_dir=tmp_path / "d", max_json_body_bytes=10_000) as srv:
        api = Api(srv.url)
        r = api.post("create_session", {"sdk_version": "x", "tags": ["t" * 20_000]})
        assert "exceeds" in _detail(r, 413)
        assert api.post("create_session", {"sdk_version": "x"}).status_code == 200  # the next request is fine


def test_connections_beyond_the_cap_get_503(tmp_path: Path) -> None:
    with LocalTinkerServer(data_dir=tmp_path / "d", max_connections=3) as srv:
        host, port = srv.url.removeprefix("http://").split(":")
        idle = [socket.create_connection((host, int(port)), timeout=5) for _ in range(3)]
        try:
            for _ in range(50):  # the accept thread registers them asynchronously
                if srv.active_connections() >= 3:
                    break
                socket.socket().close()
            r = requests.get(f"{srv.url}/api/v1/healthz", timeout=5)
            assert r.status_code == 503 and r.headers["Retry-After"] == "1"
        finally:
            for s in idle:
                s.close()


def test_jwt_minting_and_use(tmp_path: Path) -> None:
    with LocalTinkerServer(data_dir=tmp_path / "d", jwt_auth=True) as srv:
        api = Api(srv.url)
        assert api.ok("POST", "client/config", {"sdk_version": "0.38.0"})["pjwt_auth_enabled"] is True
        sid = api.session()
        token = api.ok("POST", "auth/token", {})["jwt"]
        assert token.startswith("eyJ")
        with_jwt = Api(srv.url, key=token)
        assert sid in with_jwt.ok("GET", "sessions")["sessions"]  # the JWT stands for the key's owner
        forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
        r = Api(srv.url, key=forged).get("sessions")
        assert r.status_code == 401 and "invalid_token" in r.headers["WWW-Authenticate"]
    with LocalTinkerServer(data_dir=tmp_path / "d") as plain:  # JWT auth off: tokens are refused
        assert Api(plain.url, key=token).get("sessions").status_code == 401


@pytest.mark.parametrize("path", ["create_session", "create_model", "asample", "optim_step", "retrieve_future",
                                  "sessions/search", "retrieve_futures", "copy_weights", "cancel_future"])
def test_wrong_json_shapes_are_a_400(api: Api, path: str) -> None:
    for body in (b"[]", b"1", b'"x"', b"null", b'{"type": 5}', b"{"):
        r = _raw_post(api, path, body)
        assert 400 <= r.status_code < 500, (body, r.status_code, r.text)
        assert r.json()["detail"]


def test_data_list_keeps_working_after_many_refusals(api: Api) -> None:
    sid = api.session()
    mid = api.model(sid)
    for seq in range(1, 6):
        assert api.post("forward_backward", {**fwdbwd(mid, seq), "x": 1}).status_code == 400
    assert api.result(api.post("forward_backward", fwdbwd(mid, 6, DATA)))["metrics"]["loss:sum"] > 0
