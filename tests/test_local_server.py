"""HTTP tests of the embedded local Tinker server (real engine, real sockets, `requests` as the client)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from datetime import datetime, timezone

UTC = timezone.utc
from pathlib import Path
from typing import Any

import pytest
import requests

from tinker_sync.local import LocalTinkerServer

KEY_A = "tml-test-key-aaaaaaaaaaaa"
KEY_B = "tml-test-key-bbbbbbbbbbbb"
BASE = "tinker-sync/tiny-byte"
PROTO = "application/x-protobuf"


class Api:
    """A thin `requests` client for the tests (one keep-alive session)."""

    def __init__(self, url: str, key: str | None = KEY_A) -> None:
        self.url = url
        self.s = requests.Session()
        if key is not None:
            self.s.headers["X-API-Key"] = key

    def post(self, path: str, body: Any = None, **kw: Any) -> requests.Response:
        return self.s.post(f"{self.url}/api/v1/{path}", json=body if body is not None else {}, timeout=30, **kw)

    def get(self, path: str, **kw: Any) -> requests.Response:
        return self.s.get(f"{self.url}/api/v1/{path}", timeout=30, **kw)

    def ok(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        r = self.s.request(method, f"{self.url}/api/v1/{path}", json=body, timeout=30, **kw)
        assert r.status_code in (200, 204), (r.status_code, r.text)
        return r.json() if r.content else None

    def poll(self, request_id: str, *, accept: str = "application/json", deadline_s: float = 30.0) -> requests.Response:
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            r = self.s.post(f"{self.url}/api/v1/retrieve_future", json={"request_id": request_id,
                            "allow_metadata_only": True}, headers={"Accept": accept}, timeout=30)
            if r.status_code == 200 and r.headers["Content-Type"].startswith("application/json") \
                    and r.json().get("type") == "try_again":
                continue
            return r
        raise AssertionError(f"future {request_id} did not finish")

    def result(self, handle: requests.Response) -> Any:
        assert handle.status_code == 200, handle.text
        r = self.poll(handle.json()["request_id"])
        assert r.status_code == 200, r.text
        out = r.json()
        assert "error" not in out, out
        return out

    def session(self) -> str:
        return str(self.ok("POST", "create_session", {"tags": [], "user_metadata": {}, "sdk_version": "0.25.0"})[
            "session_id"])

    def model(self, session: str, seq: int = 0, rank: int = 4) -> str:
        out = self.result(self.post("create_model", {"session_id": session, "model_seq_id": seq, "base_model": BASE,
                                                     "lora_config": {"rank": rank, "seed": 7}}))
        return str(out["model_id"])


def text_datum(prompt: str, completion: str) -> dict[str, Any]:
    toks = list((prompt + completion).encode())
    inp, tgt = toks[:-1], toks[1:]
    w = [0.0] * (len(prompt) - 1) + [1.0] * len(completion)
    return {"model_input": {"chunks": [{"type": "encoded_text", "tokens": inp}]},
            "loss_fn_inputs": {"target_tokens": {"data": tgt, "dtype": "int64", "shape": [len(tgt)]},
                               "weights": {"data": w, "dtype": "float32", "shape": [len(w)]}}}


DATA = [text_datum("Q: hi\nA:", " hello"), text_datum("Q: 2+2\nA:", " 4")]


def fwdbwd(model_id: str, seq: int, data: list[dict[str, Any]] = DATA) -> dict[str, Any]:
    return {"forward_backward_input": {"data": data, "loss_fn": "cross_entropy"}, "model_id": model_id, "seq_id": seq}


def forward(model_id: str, seq: int) -> dict[str, Any]:
    return {"forward_backward_input": {"data": DATA, "loss_fn": "cross_entropy"}, "model_id": model_id,
            "seq_id": seq, "forward_only": True}


def optim(model_id: str, seq: int, lr: float = 1e-2) -> dict[str, Any]:
    return {"adam_params": {"learning_rate": lr, "beta1": 0.9, "beta2": 0.95, "eps": 1e-12, "weight_decay": 0.0,
                            "grad_clip_norm": 0.0}, "model_id": model_id, "seq_id": seq, "type": "optim_step"}


def sample_body(sid: str, seq: int, *, n: int = 2, max_tokens: int = 5, **extra: Any) -> dict[str, Any]:
    return {"sampling_session_id": sid, "seq_id": seq, "num_samples": n,
            "prompt": {"chunks": [{"type": "encoded_text", "tokens": list(b"Q: hi\nA:")}]},
            "sampling_params": {"max_tokens": max_tokens, "temperature": 1.0, "top_k": -1, "top_p": 1.0, "seed": 3},
            "prompt_logprobs": False, "topk_prompt_logprobs": 0, "type": "sample", **extra}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LocalTinkerServer]:
    srv = LocalTinkerServer(data_dir=tmp_path / "data", long_poll_s=0.3).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def api(server: LocalTinkerServer) -> Api:
    return Api(server.url)


# ------------------------------------------------------------------------------------------ bootstrap
def test_startup_is_fast_and_lazy(tmp_path: Path) -> None:
    code = (
        "import sys, time; t = time.perf_counter(); from tinker_sync.local import LocalTinkerServer; "
        f"s = LocalTinkerServer(data_dir={str(tmp_path / 'd')!r}).start(); "
        "import requests; assert requests.get(s.url + '/api/v1/healthz', timeout=5).json() == {'status': 'ok'}; "
        "print(time.perf_counter() - t, 'numpy' in sys.modules); s.stop()"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    elapsed, numpy_loaded = out.stdout.split()
    print(f"\nlocal server import+start+first request: {float(elapsed) * 1000:.0f} ms")
    assert numpy_loaded == "False"  # the engine (numpy) is loaded only when a model is needed


def test_bootstrap_endpoints(api: Api) -> None:
    cfg = api.ok("POST", "client/config", {"sdk_version": "0.25.0"})
    assert cfg["pjwt_auth_enabled"] is False and cfg["fwdbwd_max_chunk_len"] == 1024
    assert api.ok("POST", "client/dynamic_config", {"sdk_version": "0.25.0"})["refresh_interval_sec"] > 0
    assert requests.get(f"{api.url}/api/v1/healthz", timeout=5).json() == {"status": "ok"}  # no key needed
    caps = api.ok("GET", "get_server_capabilities")["supported_models"]
    assert {"model_name": BASE, "max_context_length": 512, "trainable": True, "sampleable": True} in caps
    sid = api.session()
    assert api.ok("POST", "session_heartbeat", {"session_id": sid, "type": "session_heartbeat"}) == {
        "type": "session_heartbeat"}
    assert api.ok("POST", "telemetry", {"events": [], "platform": "Linux", "sdk_version": "0.25.0",
                                        "session_id": sid, "process_uuid": "x"}) == {"status": "accepted"}
    assert api.ok("GET", "audit", params={"event_type": "all"}) == {"entries": []}
    assert api.ok("GET", "billing/usage/events", params={"starting_on": "2026-01-01T00:00:00Z",
                                                         "ending_before": "2026-01-02T00:00:00Z"})["data"] == []
    assert api.s.post(f"{api.url}/api/v1/auth/token", json={}, timeout=5).status_code == 404  # JWT auth is off


def test_client_config_overrides(tmp_path: Path) -> None:
    with LocalTinkerServer(data_dir=tmp_path / "d", client_config_overrides={"fwdbwd_max_chunk_len": 3}) as srv:
        cfg = Api(srv.url).ok("POST", "client/config", {"sdk_version": "0.25.0"})
        assert cfg["fwdbwd_max_chunk_len"] == 3 and cfg["pjwt_auth_enabled"] is False


def test_legacy_forward_endpoint_and_pagination(api: Api) -> None:
    sid = api.session()
    mids = [api.model(sid, i) for i in range(3)]
    out = api.result(api.post("forward", {"forward_input": {"data": DATA, "loss_fn": "cross_entropy"},
                                          "model_id": mids[0], "seq_id": 1}))
    assert out["metrics"]["loss:sum"] > 0 and out["loss_fn_output_type"] == "ArrayRecord"
    page = api.ok("GET", "training_runs", params={"limit": 2, "offset": 0})
    assert len(page["training_runs"]) == 2 and page["cursor"] == {"offset": 0, "limit": 2, "total_count": 3}
    rest = api.ok("GET", "training_runs", params={"limit": 2, "offset": 2})["training_runs"]
    assert {r["training_run_id"] for r in page["training_runs"] + rest} == set(mids)
    for i, m in enumerate(mids):
        api.result(api.post("save_weights", {"model_id": m, "path": f"c{i}", "seq_id": 2 if i == 0 else 1}))
    ck = api.ok("GET", "checkpoints", params={"limit": 2, "offset": 1})
    assert ck["cursor"] == {"offset": 1, "limit": 2, "total_count": 3} and len(ck["checkpoints"]) == 2
    assert api.get("training_runs", params={"limit": "x"}).status_code == 400
    assert api.get("training_runs", params={"access_scope": "all"}).status_code == 400


def test_auth_errors(server: LocalTinkerServer, tmp_path: Path) -> None:
    r = Api(server.url, key=None).post("create_session", {})
    assert r.status_code == 401 and "X-API-Key" in r.json()["detail"]
    r = Api(server.url, key="sk-wrong").post("create_session", {})
    assert r.status_code == 401 and "tml-" in r.json()["detail"]
    with LocalTinkerServer(data_dir=tmp_path / "fixed", api_keys=[KEY_B]) as fixed:
        assert Api(fixed.url, KEY_A).post("create_session", {}).status_code == 401
        assert Api(fixed.url, KEY_B).post("create_session", {"sdk_version": "0"}).status_code == 200


# ------------------------------------------------------------------------------------------ training + sampling
def test_train_save_and_sample(api: Api) -> None:
    sid = api.session()
    mid = api.model(sid)
    assert mid == f"{sid}:train:0"
    info = api.ok("POST", "get_info", {"model_id": mid, "type": "get_info"})
    assert info["model_data"]["model_name"] == BASE and info["lora_rank"] == 4
    first = api.result(api.post("forward_backward", fwdbwd(mid, 1)))
    assert first["metrics"]["loss:sum"] > 0 and len(first["loss_fn_outputs"]) == 2
    lp = first["loss_fn_outputs"][0]["logprobs"]
    assert lp["dtype"] == "float32" and lp["shape"] == [len(DATA[0]["loss_fn_inputs"]["target_tokens"]["data"])]
    api.result(api.post("optim_step", optim(mid, 2)))
    after = api.result(api.post("forward_backward", forward(mid, 3)))
    assert after["metrics"]["loss:sum"] < first["metrics"]["loss:sum"]

    saved = api.result(api.post("save_weights", {"model_id": mid, "path": "step-1", "seq_id": 4}))
    assert saved["path"] == f"tinker://{mid}/weights/step-1"
    sampler_ckpt = api.result(api.post("save_weights_for_sampler", {"model_id": mid, "path": "s1", "seq_id": 5}))
    assert sampler_ckpt["path"] == f"tinker://{mid}/sampler_weights/s1"
    eph = api.result(api.post("save_weights_for_sampler", {"model_id": mid, "sampling_session_seq_id": 7,
                                                           "seq_id": 6}))
    assert eph["sampling_session_id"] == f"{sid}:sample:7"

    sampler = api.ok("POST", "create_sampling_session", {"session_id": sid, "sampling_session_seq_id": 0,
                                                          "model_path": sampler_ckpt["path"]})["sampling_session_id"]
    assert sampler == f"{sid}:sample:0"
    assert api.ok("GET", f"samplers/{sampler}") == {"sampler_id": sampler, "base_model": BASE,
                                                     "model_path": sampler_ckpt["path"]}
    handle = api.post("asample", sample_body(sampler, 0, prompt_logprobs=True, topk_prompt_logprobs=2))
    assert len(handle.json()["sample_sequence_ids"]) == 2
    out = api.result(handle)
    assert out["type"] == "sample" and len(out["sequences"]) == 2
    for seq in out["sequences"]:
        assert 1 <= len(seq["tokens"]) <= 5 and len(seq["logprobs"]) == len(seq["tokens"])
        assert seq["stop_reason"] in ("stop", "length")
    assert out["prompt_logprobs"][0] is None and len(out["prompt_logprobs"]) == len(b"Q: hi\nA:")
    assert out["topk_prompt_logprobs"][0] is None and len(out["topk_prompt_logprobs"][1]) == 2
    # the ephemeral sampler and a base-model sampler both sample
    assert api.result(api.post("asample", sample_body(eph["sampling_session_id"], 0)))["sequences"]
    base_sampler = api.ok("POST", "create_sampling_session", {"session_id": sid, "sampling_session_seq_id": 1,
                                                               "base_model": BASE})["sampling_session_id"]
    assert api.result(api.post("asample", sample_body(base_sampler, 0, n=1)))["sequences"]

    sess = api.ok("GET", f"sessions/{sid}")
    assert sess["training_run_ids"] == [mid] and sampler in sess["sampler_ids"]
    assert sid in api.ok("GET", "sessions")["sessions"]
    run = api.ok("GET", f"training_runs/{mid}")
    assert run["base_model"] == BASE and run["lora_rank"] == 4
    assert run["last_checkpoint"]["tinker_path"] == saved["path"]
    assert run["last_sampler_checkpoint"]["checkpoint_type"] == "sampler"
    ckpts = api.ok("GET", f"training_runs/{mid}/checkpoints")["checkpoints"]
    assert {c["checkpoint_id"] for c in ckpts} == {"weights/step-1", "sampler_weights/s1"}
    assert all(c["size_bytes"] > 0 for c in ckpts)
    info = api.ok("POST", "weights_info", {"tinker_path": saved["path"]})
    assert info == {"base_model": BASE, "is_lora": True, "lora_rank": 4, "train_unembed": True, "train_mlp": True,
                    "train_attn": True, "optimizer_config": {"type": "adamw"}}

    # load_state on the same model restores the saved weights: forward loss equals the post-step loss
    api.result(api.post("optim_step", optim(mid, 7, lr=5e-2)))  # Adam momentum moves the weights again
    api.result(api.post("load_weights", {"model_id": mid, "path": saved["path"], "optimizer": True, "seq_id": 8}))
    again = api.result(api.post("forward_backward", forward(mid, 9)))
    assert again["metrics"]["loss:sum"] == pytest.approx(after["metrics"]["loss:sum"], rel=1e-5)


def test_protobuf_bodies_and_results(api: Api) -> None:
    from tinker_sync import _proto
    from tinker_sync.types import (
        Datum,
        EncodedTextChunk,
        ForwardBackwardRequest,
        ModelInput,
        TensorData,
    )

    sid = api.session()
    mid = api.model(sid)
    data = []
    for d in DATA:
        toks = d["model_input"]["chunks"][0]["tokens"]
        lfi = d["loss_fn_inputs"]
        data.append(Datum(model_input=ModelInput(chunks=[EncodedTextChunk(tokens=toks)]), loss_fn_inputs={
            "target_tokens": TensorData(data=lfi["target_tokens"]["data"], dtype="int64", shape=[len(toks)]),
            "weights": TensorData(data=lfi["weights"]["data"], dtype="float32", shape=[len(toks)])}))
    body = _proto.encode_forward_backward_request(ForwardBackwardRequest(
        model_id=mid, seq_id=1, data=data, loss_fn="cross_entropy", forward_only=True))
    h = api.s.post(f"{api.url}/api/v1/forward_backward", data=body, headers={"Content-Type": PROTO}, timeout=30)
    assert h.status_code == 200, h.text
    r = api.poll(h.json()["request_id"], accept=PROTO)
    assert r.headers["Content-Type"] == PROTO
    out = _proto.decode_forward_backward_output(r.content)
    assert len(out.loss_fn_outputs) == 2 and out.metrics["loss:sum"] > 0
    # the same future answered as JSON to a JSON client carries the same numbers
    j = api.poll(h.json()["request_id"]).json()
    assert j["metrics"]["loss:sum"] == pytest.approx(out.metrics["loss:sum"])
    assert j["loss_fn_outputs"][1]["logprobs"]["data"] == pytest.approx(out.loss_fn_outputs[1]["logprobs"].data)
    # forward_only honoured: an optim step after it changes nothing (no gradients were accumulated)
    api.result(api.post("optim_step", optim(mid, 2, lr=0.05)))
    again = api.result(api.post("forward_backward", forward(mid, 3)))
    assert again["metrics"]["loss:sum"] == pytest.approx(out.metrics["loss:sum"], rel=1e-5)
    # bad protobuf -> 400 with a message
    bad = api.s.post(f"{api.url}/api/v1/forward_backward", data=b"\xff\xff\xff", headers={"Content-Type": PROTO},
                     timeout=30)
    assert bad.status_code == 400 and "protobuf" in bad.json()["detail"]

    sampler = api.ok("POST", "create_sampling_session", {"session_id": sid, "sampling_session_seq_id": 0,
                                                          "base_model": BASE})["sampling_session_id"]
    h = api.post("asample", sample_body(sampler, 0, n=3, prompt_logprobs=True))
    r = api.poll(h.json()["request_id"], accept=f"{PROTO}, application/json")
    assert r.headers["Content-Type"] == PROTO
    resp = _proto.decode_sample_response(r.content)
    assert len(resp.sequences) == 3 and resp.prompt_logprobs is not None and resp.prompt_logprobs[0] is None


# ------------------------------------------------------------------------------------------ ordering / dedupe
def test_out_of_order_arrival_and_duplicates_apply_once(api: Api, server: LocalTinkerServer) -> None:
    sid = api.session()
    twin, mid = api.model(sid, 0), api.model(sid, 1)
    # reference: in order, no duplicates
    api.result(api.post("forward_backward", fwdbwd(twin, 1)))
    api.result(api.post("optim_step", optim(twin, 2)))
    ref = api.result(api.post("forward_backward", forward(twin, 3)))
    # model under test: seq 3 and 2 arrive before 1, seq 2 is sent three times
    h3 = api.post("forward_backward", forward(mid, 3))
    h2 = api.post("optim_step", optim(mid, 2))
    h2_again = api.post("optim_step", optim(mid, 2))
    assert h2_again.json()["request_id"] == h2.json()["request_id"]
    pend = api.s.post(f"{api.url}/api/v1/retrieve_future", json={"request_id": h3.json()["request_id"],
                      "allow_metadata_only": False}, timeout=30).json()
    assert pend["type"] == "try_again"  # seq 1 has not arrived: seq 3 must wait
    h1 = api.post("forward_backward", fwdbwd(mid, 1))
    got = api.result(h3)
    api.result(h1)
    step = api.result(h2)
    assert api.result(api.post("optim_step", optim(mid, 2)))["metrics"] == step["metrics"]  # retry: first result
    assert got["metrics"]["loss:sum"] == pytest.approx(ref["metrics"]["loss:sum"], rel=1e-5)
    assert server.api is not None and server.api.models[mid].optim_steps == 1
    # the same seq_id used for another kind of request is a conflict, not a silent dedupe
    clash = api.post("forward_backward", fwdbwd(mid, 2))
    assert clash.status_code == 409 and "seq_id 2" in clash.json()["detail"]
    # a refused request consumes its seq so later ones are not stuck
    bad = api.post(
        "forward_backward", {**fwdbwd(mid, 4), "forward_backward_input": {"data": [], "loss_fn": "cross_entropy"}}
    )
    assert bad.status_code == 400 and "empty" in bad.json()["detail"]
    api.result(api.post("forward_backward", forward(mid, 5)))


def test_concurrent_shuffled_and_duplicated_submissions(api: Api, server: LocalTinkerServer) -> None:
    import random
    from concurrent.futures import ThreadPoolExecutor

    sid = api.session()
    twin, mid = api.model(sid, 0), api.model(sid, 1)
    plan = [("forward_backward", fwdbwd), ("optim_step", optim)] * 3 + [("forward_backward", forward)]
    for seq, (ep, build) in enumerate(plan, start=1):  # reference: one at a time, in order
        last_ref = api.result(api.post(ep, build(twin, seq)))
    jobs = [(seq, ep, build) for seq, (ep, build) in enumerate(plan, start=1)] * 3  # every request sent 3 times
    random.Random(0).shuffle(jobs)
    clients = [Api(server.url) for _ in range(4)]

    def send(i: int) -> tuple[int, str]:
        seq, ep, build = jobs[i]
        r = clients[i % 4].post(ep, build(mid, seq))
        assert r.status_code == 200, r.text
        return seq, r.json()["request_id"]

    with ThreadPoolExecutor(8) as pool:
        handles = list(pool.map(send, range(len(jobs))))
    by_seq: dict[int, set[str]] = {}
    for seq, rid in handles:
        by_seq.setdefault(seq, set()).add(rid)
    assert all(len(ids) == 1 for ids in by_seq.values())  # duplicates share one request id
    last = api.poll(next(iter(by_seq[len(plan)]))).json()
    assert last["metrics"]["loss:sum"] == pytest.approx(last_ref["metrics"]["loss:sum"], rel=1e-5)
    assert server.api is not None and server.api.models[mid].optim_steps == 3


def test_many_concurrent_samples(api: Api) -> None:
    from concurrent.futures import ThreadPoolExecutor

    sid = api.session()
    smp = api.ok("POST", "create_sampling_session", {"session_id": sid, "sampling_session_seq_id": 0,
                                                      "base_model": BASE})["sampling_session_id"]
    with ThreadPoolExecutor(8) as pool:
        outs = list(pool.map(lambda i: Api(api.url).result(Api(api.url).post("asample", sample_body(smp, i, n=1))),
                             range(32)))
    assert len(outs) == 32 and all(len(o["sequences"]) == 1 for o in outs)


def test_different_models_run_concurrently(api: Api) -> None:
    sid = api.session()
    a, b = api.model(sid, 0), api.model(sid, 1)
    ha = api.post("forward_backward", forward(a, 2))  # a waits for its seq 1
    hb = api.result(api.post("forward_backward", forward(b, 1)))  # b is not blocked by a's gap
    assert hb["metrics"]["loss:sum"] > 0
    api.result(api.post("forward_backward", forward(a, 1)))
    api.result(ha)


# ------------------------------------------------------------------------------------------ faults
def test_fail_next_and_seq_not_consumed(api: Api, server: LocalTinkerServer) -> None:
    sid = api.session()
    mid = api.model(sid)
    server.faults.fail_next("forward_backward", 429, retry_after="0")
    r = api.post("forward_backward", fwdbwd(mid, 1))
    assert r.status_code == 429 and r.headers["Retry-After"] == "0"
    assert api.result(api.post("forward_backward", fwdbwd(mid, 1)))["metrics"]["loss:sum"] > 0  # same seq works
    server.faults.fail_next("*", 503, count=2, body={"detail": "down"}, headers={"x-should-retry": "true"})
    assert api.post("create_session", {}).status_code == 503
    r = api.get("healthz")
    assert r.status_code == 503 and r.json() == {"detail": "down"} and r.headers["x-should-retry"] == "true"
    assert api.get("healthz").status_code == 200


def test_drop_connection_latency_and_recording(api: Api, server: LocalTinkerServer) -> None:
    server.faults.drop_next_connection("healthz")
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{api.url}/api/v1/healthz", timeout=5)
    assert requests.get(f"{api.url}/api/v1/healthz", timeout=5).status_code == 200
    server.faults.latency("healthz", 0.15)
    t = time.perf_counter()
    api.get("healthz")
    assert time.perf_counter() - t >= 0.15
    server.faults.reset()
    server.clear_requests()
    api.post("create_session", {"tags": [], "sdk_version": "0"})
    rec = server.requests[-1]
    assert rec.method == "POST" and rec.path == "/api/v1/create_session" and rec.status == 200
    assert json.loads(rec.body) == {"tags": [], "sdk_version": "0"}
    assert all(k.lower() != "x-api-key" for k in rec.headers) and KEY_A not in repr(rec)


def test_try_again_and_expire(api: Api, server: LocalTinkerServer) -> None:
    sid = api.session()
    mid = api.model(sid)
    server.faults.try_again("ForwardBackward", 2)
    h = api.post("forward_backward", fwdbwd(mid, 1))
    rid = h.json()["request_id"]
    answers = [api.s.post(f"{api.url}/api/v1/retrieve_future", json={"request_id": rid}, timeout=30).json()
               for _ in range(3)]
    assert [a.get("type") for a in answers[:2]] == ["try_again", "try_again"]
    assert answers[0]["queue_state"] == "active" and answers[2]["metrics"]["loss:sum"] > 0
    server.faults.expire_next_future("OptimStep")
    h = api.post("optim_step", optim(mid, 2))
    r = api.s.post(f"{api.url}/api/v1/retrieve_future", json={"request_id": h.json()["request_id"]}, timeout=30)
    assert r.status_code == 410
    again = api.post("optim_step", optim(mid, 2))  # the client re-submits the same seq after a 410
    assert api.result(again)["metrics"]["step"] == 1.0
    assert server.api is not None and server.api.models[mid].optim_steps == 1


def test_rate_limit_window_with_fake_clock(api: Api, server: LocalTinkerServer) -> None:
    now = [1000.0]
    server.faults.clock = lambda: now[0]
    server.faults.rate_limit_window(5.0, op="asample")
    r = api.post("asample", {})
    assert r.status_code == 429 and r.headers["Retry-After"] == "5"
    assert api.get("healthz").status_code == 200  # other ops are not limited
    now[0] += 4.5
    assert api.post("asample", {}).headers["Retry-After"] == "1"
    now[0] += 1.0
    assert api.post("asample", {}).status_code == 400  # window over: the (empty) request is now validated


# ------------------------------------------------------------------------------------------ persistence / ownership
def test_restart_persistence(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with LocalTinkerServer(data_dir=data, long_poll_s=1.0) as s1:
        api = Api(s1.url)
        sid = api.session()
        mid = api.model(sid)
        api.result(api.post("forward_backward", fwdbwd(mid, 1)))
        api.result(api.post("optim_step", optim(mid, 2)))
        ref = api.result(api.post("forward_backward", forward(mid, 3)))
        wpath = api.result(api.post("save_weights", {"model_id": mid, "path": "w", "seq_id": 4}))["path"]
        spath = api.result(api.post("save_weights_for_sampler", {"model_id": mid, "path": "s", "seq_id": 5}))["path"]
        eph = api.result(api.post("save_weights_for_sampler", {"model_id": mid, "sampling_session_seq_id": 3,
                                                               "seq_id": 6}))["sampling_session_id"]
        before = api.result(api.post("asample", sample_body(eph, 0, n=1, max_tokens=8)))
    with LocalTinkerServer(data_dir=data, long_poll_s=1.0) as s2:
        api = Api(s2.url)
        runs = api.ok("GET", "training_runs")
        assert [r["training_run_id"] for r in runs["training_runs"]] == [mid] and runs["cursor"]["total_count"] == 1
        assert {c["tinker_path"] for c in api.ok("GET", "checkpoints")["checkpoints"]} == {wpath, spath}
        # the live model and the unnamed sampler survived: same weights, same samples
        again = api.result(api.post("forward_backward", forward(mid, 7)))
        assert again["metrics"]["loss:sum"] == pytest.approx(ref["metrics"]["loss:sum"], rel=1e-6)
        eph_after = api.result(api.post("asample", sample_body(eph, 1, n=1, max_tokens=8)))
        assert eph_after["sequences"][0]["tokens"] == before["sequences"][0]["tokens"]
        sid2 = api.session()
        sampler = api.ok("POST", "create_sampling_session", {"session_id": sid2, "sampling_session_seq_id": 0,
                                                              "model_path": spath})["sampling_session_id"]
        after = api.result(api.post("asample", sample_body(sampler, 0, n=1, max_tokens=8)))
        assert after["sequences"][0]["tokens"] == before["sequences"][0]["tokens"]  # same weights, same seed
        # create-via-load (seq 0 is the load), then training continues at seq 1
        h = api.post("load_weights", {"session_id": sid2, "model_seq_id": 0, "path": wpath, "optimizer": True})
        loaded = api.result(h)
        assert loaded["model_id"] == f"{sid2}:train:0" and h.json()["model_id"] == loaded["model_id"]
        got = api.result(api.post("forward_backward", forward(loaded["model_id"], 1)))
        assert got["metrics"]["loss:sum"] == pytest.approx(ref["metrics"]["loss:sum"], rel=1e-5)


def _train_steps(api: Api, mid: str, seqs: range) -> list[float]:
    """Alternating forward_backward (odd seq) / optim_step (even seq); the forward_backward losses."""
    losses = []
    for seq in seqs:
        if seq % 2:
            losses.append(api.result(api.post("forward_backward", fwdbwd(mid, seq)))["metrics"]["loss:sum"])
        else:
            api.result(api.post("optim_step", optim(mid, seq, lr=5e-3)))
    return losses


def test_live_model_continues_after_restart(tmp_path: Path) -> None:
    with LocalTinkerServer(data_dir=tmp_path / "ref", long_poll_s=1.0) as ref_server:  # no restart
        ref_api = Api(ref_server.url)
        reference = _train_steps(ref_api, ref_api.model(ref_api.session()), range(1, 10))
    assert reference == sorted(reference, reverse=True)  # the loss falls step after step
    data = tmp_path / "data"
    with LocalTinkerServer(data_dir=data, long_poll_s=1.0) as s1:
        api = Api(s1.url)
        sid = api.session()
        mid = api.model(sid)
        losses = _train_steps(api, mid, range(1, 3))
        h3 = api.post("forward_backward", fwdbwd(mid, 3))
        step3 = api.result(h3)  # its gradients are accumulated, not applied yet, when the server stops
        losses.append(step3["metrics"]["loss:sum"])
        other = Api(s1.url, KEY_B)
        assert other.post("forward_backward", fwdbwd(mid, 4)).status_code == 404  # not B's model
    with LocalTinkerServer(data_dir=data, long_poll_s=1.0) as s2:
        api = Api(s2.url)
        # a poll of a pre-restart request id still answers (the model is restored on demand)
        polled = api.poll(h3.json()["request_id"]).json()
        assert polled["metrics"] == step3["metrics"]
        # the retried seq 3 returns its first result and is not applied a second time
        retry = api.post("forward_backward", fwdbwd(mid, 3))
        assert retry.status_code == 200 and retry.json()["request_id"] == h3.json()["request_id"]
        assert api.result(retry)["metrics"] == step3["metrics"]
        assert Api(s2.url, KEY_B).post("forward_backward", fwdbwd(mid, 4)).status_code == 404
        losses += _train_steps(api, mid, range(4, 10))  # seq 4 applies the gradients of seq 3
        # identical to training without a restart: weights, gradients and Adam state all came back
        assert losses == pytest.approx(reference, rel=1e-6)
        assert s2.api is not None and s2.api.models[mid].optim_steps == 4
        # a retried create_model answers the original model instead of replacing it
        again = api.post("create_model", {"session_id": sid, "model_seq_id": 0, "base_model": BASE,
                                          "lora_config": {"rank": 4, "seed": 7}})
        assert api.result(again)["model_id"] == mid
        assert api.result(api.post("unload_model", {"model_id": mid, "type": "unload_model"}))["model_id"] == mid
    with LocalTinkerServer(data_dir=data, long_poll_s=1.0) as s3:  # an unloaded model stays unloaded
        r = Api(s3.url).post("forward_backward", forward(mid, 10))
        assert r.status_code == 404 and "not loaded" in r.json()["detail"]


def test_session_expiry_with_fake_clock(tmp_path: Path) -> None:
    now = [1_800_000_000.0]
    data = tmp_path / "data"
    with LocalTinkerServer(data_dir=data, long_poll_s=0.5, clock=lambda: now[0], session_timeout_s=100) as srv:
        api = Api(srv.url)
        idle, alive = api.session(), api.session()
        idle_model, alive_model = api.model(idle), api.model(alive)
        smp = api.ok("POST", "create_sampling_session", {"session_id": idle, "sampling_session_seq_id": 0,
                                                          "base_model": BASE})["sampling_session_id"]
        now[0] += 90
        api.result(api.post("forward_backward", forward(idle_model, 1)))  # any request keeps a session alive
        api.ok("POST", "session_heartbeat", {"session_id": alive})
        for _ in range(4):  # heartbeats alone keep `alive` alive; `idle` gets nothing for 160 s
            now[0] += 40
            assert api.ok("POST", "session_heartbeat", {"session_id": alive}) == {"type": "session_heartbeat"}
        assert api.result(api.post("forward_backward", forward(alive_model, 1)))["metrics"]["loss:sum"] > 0
        for r in (api.post("forward_backward", forward(idle_model, 2)), api.post("asample", sample_body(smp, 0)),
                  api.post("session_heartbeat", {"session_id": idle}),
                  api.post("create_model", {"session_id": idle, "model_seq_id": 1, "base_model": BASE})):
            assert r.status_code == 410, (r.status_code, r.text)
            assert "expired" in r.json()["detail"] and "100 s" in r.json()["detail"]
        # finished sessions: heartbeats answer 410 too
        assert api.ok("POST", f"sessions/{alive}/finish", {"reason": {"type": "success"}, "detail": None}) == {}
        r = api.post("session_heartbeat", {"session_id": alive})
        assert r.status_code == 410 and "finished" in r.json()["detail"]
        third = api.session()
        third_model = api.model(third)
    now[0] += 10_000  # server down for a long time: the downtime does not expire sessions
    with LocalTinkerServer(data_dir=data, long_poll_s=0.5, clock=lambda: now[0], session_timeout_s=100) as srv:
        api = Api(srv.url)
        assert api.result(api.post("forward_backward", forward(third_model, 1)))["metrics"]["loss:sum"] > 0
        assert api.post("forward_backward", forward(idle_model, 2)).status_code == 410  # still expired
        now[0] += 101
        assert api.post("forward_backward", forward(third_model, 2)).status_code == 410


def test_ownership_publish_and_delete(api: Api, server: LocalTinkerServer) -> None:
    other = Api(server.url, KEY_B)
    sid = api.session()
    mid = api.model(sid)
    path = api.result(api.post("save_weights_for_sampler", {"model_id": mid, "path": "pub", "seq_id": 1}))["path"]
    ckpt = f"training_runs/{mid}/checkpoints/sampler_weights/pub"
    assert other.post("weights_info", {"tinker_path": path}).status_code == 404
    assert other.get(f"training_runs/{mid}").status_code == 404
    assert other.post("forward_backward", forward(mid, 2)).status_code == 404
    osid = other.session()
    r = other.post("create_sampling_session", {"session_id": osid, "sampling_session_seq_id": 0, "model_path": path})
    assert r.status_code == 404
    assert other.s.post(f"{api.url}/api/v1/{ckpt}/publish", timeout=5).status_code == 404
    assert api.s.post(f"{api.url}/api/v1/{ckpt}/publish", timeout=5).status_code in (200, 204)
    assert api.s.post(f"{api.url}/api/v1/{ckpt}/publish", timeout=5).status_code == 409
    # public: readable, loadable into a sampler, but not deletable by others
    assert other.ok("POST", "weights_info", {"tinker_path": path})["base_model"] == BASE
    smp = other.ok("POST", "create_sampling_session", {"session_id": osid, "sampling_session_seq_id": 0,
                                                        "model_path": path})["sampling_session_id"]
    assert other.result(other.post("asample", sample_body(smp, 0, n=1)))["sequences"]
    assert other.get(f"training_runs/{mid}", params={"access_scope": "accessible"}).status_code == 200
    assert other.s.delete(f"{api.url}/api/v1/{ckpt}", timeout=5).status_code == 404
    assert other.s.post(f"{api.url}/api/v1/retrieve_future", json={"request_id": "req-x"}, timeout=5).status_code == 404
    assert api.s.delete(f"{api.url}/api/v1/{ckpt}/publish", timeout=5).status_code in (200, 204)
    assert api.s.delete(f"{api.url}/api/v1/{ckpt}/publish", timeout=5).status_code == 409
    bad = api.s.post(f"{api.url}/api/v1/training_runs/{mid}/checkpoints/bogus/pub/publish", timeout=5)
    assert bad.status_code == 400
    assert api.s.delete(f"{api.url}/api/v1/{ckpt}", timeout=5).status_code in (200, 204)
    assert api.get(f"training_runs/{mid}/checkpoints").json()["checkpoints"] == []
    assert api.post("weights_info", {"tinker_path": path}).status_code == 404


def test_ttl_expiry_with_injected_clock(tmp_path: Path) -> None:
    now = [1_800_000_000.0]
    with LocalTinkerServer(data_dir=tmp_path / "d", long_poll_s=1.0, clock=lambda: now[0]) as srv:
        api = Api(srv.url)
        sid = api.session()
        mid = api.model(sid)
        keep = api.result(api.post("save_weights", {"model_id": mid, "path": "keep", "seq_id": 1}))["path"]
        gone = api.result(api.post("save_weights", {"model_id": mid, "path": "gone", "seq_id": 2,
                                                    "ttl_seconds": 7200}))["path"]
        listed = {c["tinker_path"]: c for c in api.ok("GET", "checkpoints")["checkpoints"]}
        assert listed[gone]["expires_at"] == datetime.fromtimestamp(now[0] + 7200, UTC).isoformat()
        assert listed[keep]["expires_at"] is None
        ttl_url = f"{api.url}/api/v1/training_runs/{mid}/checkpoints/weights/keep/ttl"
        assert api.s.put(ttl_url, json={"ttl_seconds": 0}, timeout=5).status_code == 400
        for bad in (3599, 10 * 366 * 86400, 10**400, 1e12, True):  # 1 hour .. 10 years, integers only
            assert api.s.put(ttl_url, json={"ttl_seconds": bad}, timeout=5).status_code == 400, bad
        assert api.s.put(ttl_url, json={"ttl_seconds": 9000}, timeout=5).status_code in (200, 204)
        now[0] += 7201
        assert [c["tinker_path"] for c in api.ok("GET", "checkpoints")["checkpoints"]] == [keep]
        assert api.post("weights_info", {"tinker_path": gone}).status_code == 404
        assert api.s.put(ttl_url, json={"ttl_seconds": None}, timeout=5).status_code in (200, 204)  # remove expiry
        now[0] += 10_000
        assert api.ok("POST", "weights_info", {"tinker_path": keep})["lora_rank"] == 4


def test_archive_download(api: Api) -> None:
    sid = api.session()
    mid = api.model(sid)
    api.result(api.post("save_weights", {"model_id": mid, "path": "w", "seq_id": 1}))
    archive = f"training_runs/{mid}/checkpoints/weights/w/archive"
    out = api.ok("GET", archive, headers={"Accept": "application/json"})
    assert out["url"].startswith(api.url) and out["expires"]
    # a client asking for the archive itself (or a 0.18-era SDK) gets the redirect it follows
    for headers in ({"Accept": "*/*"}, {"Accept": "application/json", "X-Stainless-Package-Version": "0.18.0"}):
        r = api.get(archive, headers=headers, allow_redirects=False)
        assert r.status_code == 302 and r.headers["Location"].startswith(api.url) and r.headers["Expires"]
    tar_bytes = requests.get(out["url"], timeout=10).content  # unauthenticated, like the CLI
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        names = sorted(tar.getnames())
        assert names == ["adapter_config.json", "adapter_model.safetensors", "checkpoint_complete"]
        assert json.loads(tar.extractfile("adapter_config.json").read())["r"] == 4  # type: ignore[union-attr]
    assert requests.get(f"{api.url}/api/v1/_download/nope", timeout=5).status_code == 404


# ------------------------------------------------------------------------------------------ sessions / misc REST
def test_sessions_samplers_trace_finish_unload(api: Api) -> None:
    sid = api.session()
    r = api.s.put(f"{api.url}/api/v1/sessions/{sid}/project", json={}, timeout=5)
    assert r.status_code == 400 and "project_id" in r.json()["detail"]
    assert api.s.put(f"{api.url}/api/v1/sessions/{sid}/project", json={"project_id": "p"}, timeout=5).ok
    trace = api.ok("GET", f"sessions/{sid}/trace_export")
    assert trace["status"] == "ready" and "traceEvents" in requests.get(trace["url"], timeout=5).json()
    assert api.get("sessions/nope").status_code == 404
    assert api.get("samplers/nope").status_code == 404
    mid = api.model(sid)
    assert api.result(api.post("unload_model", {"model_id": mid, "type": "unload_model"}))["model_id"] == mid
    r = api.post("forward_backward", forward(mid, 1))
    assert r.status_code == 404 and "not loaded" in r.json()["detail"]
    assert api.ok("POST", f"sessions/{sid}/finish", {"reason": {"type": "success"}, "detail": None}) == {}
    assert api.post("session_heartbeat", {"session_id": sid}).status_code == 410


# ------------------------------------------------------------------------------------------ bad input
def test_bad_input_gets_clear_4xx(api: Api, server: LocalTinkerServer, tmp_path: Path) -> None:
    def detail(r: requests.Response, status: int) -> str:
        assert r.status_code == status, (r.status_code, r.text)
        return str(r.json()["detail"])

    raw = api.s.post(f"{api.url}/api/v1/create_session", data=b"{not json", timeout=5)
    assert "not valid JSON" in detail(raw, 400)
    assert "must be a JSON object" in detail(api.s.post(f"{api.url}/api/v1/create_session", data=b"[1]",
                                                        timeout=5), 400)
    sid = api.session()
    assert "tinker-sync/tiny-byte" in detail(api.post("create_model", {"session_id": sid, "model_seq_id": 0,
                                                                        "base_model": "Qwen/Qwen3-8B"}), 400)
    assert "must be an int" in detail(api.post("create_model", {"session_id": sid, "model_seq_id": "zero",
                                                         "base_model": BASE}), 400)
    assert "rank" in detail(api.post("create_model", {"session_id": sid, "model_seq_id": 0, "base_model": BASE,
                                                      "lora_config": {"rank": 0}}), 400)
    assert "not found" in detail(api.post("create_model", {"session_id": "nope", "model_seq_id": 0,
                                                            "base_model": BASE}), 404)
    mid = api.model(sid)
    assert mid in detail(api.post("forward_backward", fwdbwd("nope:train:0", 1)), 404)  # lists loaded models
    big = text_datum("x", "y")
    big["model_input"]["chunks"][0]["tokens"] = [300]
    assert "out of range" in detail(api.post("forward_backward", fwdbwd(mid, 1, [big])), 400)
    long = text_datum("a" * 600, "b")
    assert "context" in detail(api.post("forward_backward", fwdbwd(mid, 2, [long])), 400)
    short = text_datum("Q: hi\nA:", " hello")
    short["loss_fn_inputs"]["weights"]["data"] = [1.0]
    short["loss_fn_inputs"]["weights"]["shape"] = [1]
    assert "first dimension" in detail(api.post("forward_backward", fwdbwd(mid, 3, [short])), 400)
    nokey = text_datum("Q: hi\nA:", " hello")
    del nokey["loss_fn_inputs"]["weights"]
    assert "'weights' is missing" in detail(api.post("forward_backward", fwdbwd(mid, 4, [nokey])), 400)
    assert "loss_fn" in detail(api.post("forward_backward", {**fwdbwd(mid, 5), "forward_backward_input": {
        "data": DATA, "loss_fn": "magic"}}), 400)
    assert "learning_rate" in detail(api.post("optim_step", {**optim(mid, 6), "adam_params": {
        "learning_rate": -1}}), 400)
    # the model was not corrupted by any of the above: seq 7 runs normally
    assert api.result(api.post("forward_backward", fwdbwd(mid, 7)))["metrics"]["loss:sum"] > 0
    sampler = api.ok("POST", "create_sampling_session", {"session_id": sid, "sampling_session_seq_id": 0,
                                                          "base_model": BASE})["sampling_session_id"]
    assert "context too long" in detail(api.post("asample", sample_body(sampler, 0, max_tokens=10_000)), 400)
    assert "top_p" in detail(api.post("asample", {**sample_body(sampler, 1), "sampling_params": {"top_p": 2}}), 400)
    assert "Invalid tinker path" in detail(api.post("weights_info", {"tinker_path": "tinker://a/b"}), 400)
    assert "unknown endpoint" in detail(api.get("no_such_thing"), 404)
    r = api.get("create_session")
    assert "POST" in detail(r, 405) and r.headers["Allow"] == "POST"
    assert "request_id" in detail(api.post("retrieve_future", {"request_id": "req-missing"}), 404)
    with LocalTinkerServer(data_dir=tmp_path / "small", max_body_bytes=1000) as small:
        r = requests.post(f"{small.url}/api/v1/telemetry", data=b"x" * 5000, headers={"X-API-Key": KEY_A},
                          timeout=5)
        assert "exceeds" in detail(r, 413)


def _raw_exchange(url: str, payload: bytes, answers: int, heads: frozenset[int] = frozenset()) -> list[bytes]:
    """Send raw bytes on one connection; read until ``answers`` complete responses or EOF.

    ``heads``: indices of answers to HEAD requests (no body follows their headers)."""
    import socket

    host, port = url.removeprefix("http://").split(":")
    out: list[bytes] = []
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(payload)
        f = sock.makefile("rb")
        while len(out) < answers:
            status = f.readline()
            if not status:
                break
            length = 0
            while (line := f.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            out.append(status.split(b" ", 2)[1] + b" " + (b"" if len(out) in heads else f.read(length)))
    return out


def test_rejected_requests_never_poison_the_connection(server: LocalTinkerServer) -> None:
    key = f"X-API-Key: {KEY_A}\r\n".encode()

    def post(path: str, body: bytes, extra: bytes = b"") -> bytes:
        return (f"POST /api/v1/{path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n".encode() + key + extra
                + b"\r\n" + body)

    ok = b"GET /api/v1/healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    # pipelined on one keep-alive connection: rejected requests (bad JSON, 404, 405, 401, HEAD) leave it clean
    got = _raw_exchange(server.url, post("create_session", b"{not json") + post("nope", b"{}") + ok
                        + b"GET /api/v1/create_session HTTP/1.1\r\nHost: x\r\n\r\n"
                        + b"HEAD /api/v1/healthz HTTP/1.1\r\nHost: x\r\n\r\n"
                        + post("create_session", b"{}").replace(key, b"") + ok, 7, frozenset({4}))
    assert [g.split(b" ")[0] for g in got] == [b"400", b"404", b"200", b"405", b"405", b"401", b"200"]
    assert b"not valid JSON" in got[0] and got[2].endswith(b'{"status":"ok"}')
    # a body the server refuses to read (too large / malformed framing): a JSON error, then the connection
    # closes (the unread bytes are never parsed as a request)
    with LocalTinkerServer(data_dir=server.data_dir / "small", max_body_bytes=100) as small:
        big = post("telemetry", b"x" * 5000) + ok
        got = _raw_exchange(small.url, big, 2)
        assert len(got) == 1 and got[0].startswith(b"413 ") and b"exceeds" in got[0]
        bad_len = post("telemetry", b"{}").replace(b"Content-Length: 2", b"Content-Length: zz") + ok
        got = _raw_exchange(small.url, bad_len, 2)
        assert len(got) == 1 and got[0].startswith(b"400 ") and b"Content-Length" in got[0]
        got = _raw_exchange(small.url, b"BREW /api/v1/healthz HTTP/1.1\r\nHost: x\r\n\r\n" + ok, 2)
        assert len(got) == 1 and got[0].startswith(b"501 ") and json.loads(got[0].split(b" ", 1)[1])["detail"]
        # the big body is refused with its 413 even when the client sends all of it first
        for _ in range(5):
            r = requests.post(f"{small.url}/api/v1/telemetry", data=b"y" * 2_000_000, headers={"X-API-Key": KEY_A},
                              timeout=10)
            assert r.status_code == 413
        assert requests.get(f"{small.url}/api/v1/healthz", timeout=5).status_code == 200
    assert [r.status for r in server.requests] == [400, 404, 200, 405, 405, 401, 200]


def test_cli_main_prints_url_and_stops(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tinker_sync.local", "--port", "0", "--data-dir", str(tmp_path / "cli"),
         "--log-level", "warning"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_CACHE": ""})
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        url = first.split(" on ")[1].split()[0]
        assert proc.stdout.readline().strip() == f"export TINKER_BASE_URL={url}"
        assert requests.get(f"{url}/api/v1/healthz", timeout=5).json() == {"status": "ok"}
        proc.send_signal(2)  # Ctrl-C
        assert proc.wait(timeout=15) == 0
        # serve made the local models' tokenizers loadable offline from the hub cache
        assert (tmp_path / "hf" / "hub" / "models--tinker-sync--tiny-byte" / "refs" / "main").is_file()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
