"""The 0.38 endpoints of the local server, over HTTP: batched polls, cancel, join, copies, search, links."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tinker_sync.local import LocalTinkerServer

from .test_local_server import BASE, KEY_B, Api, fwdbwd, sample_body


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    with LocalTinkerServer(data_dir=tmp_path / "data", long_poll_s=0.5, sample_workers=1) as srv:
        yield Api(srv.url)


def _sampler(api: Api, sid: str, seq: int = 0) -> str:
    return str(api.ok("POST", "create_sampling_session", {"session_id": sid, "sampling_session_seq_id": seq,
                                                           "base_model": BASE})["sampling_session_id"])


def test_flags_announce_the_new_paths(api: Api) -> None:
    cfg = api.ok("POST", "client/config", {"sdk_version": "0.38.0"})
    assert cfg["sample_use_retrieve_futures"] and cfg["sample_join_sampling_session"]
    assert api.ok("POST", "client/dynamic_config", {"sdk_version": "0.38.0"})["sample_cancel_enabled"] is True


def test_retrieve_futures_cursor_and_acks(api: Api) -> None:
    sid = api.session()
    sampler = _sampler(api, sid)
    rids = [api.post("asample", sample_body(sampler, i, n=1)).json()["request_id"] for i in range(4)]
    target = {"type": "sampling_session", "sampling_session_id": sampler, "cloned_sampler_id": 0}
    seen: dict[str, str] = {}
    cursor = 0
    for _ in range(20):
        out = api.ok("POST", "retrieve_futures", {"target": target, "prev_cursor": cursor})
        seen.update({c["request_id"]: c["state"] for c in out["completions"]})
        cursor = out["cursor"]
        if len(seen) == 4:
            break
    assert seen == dict.fromkeys(rids, "finished") and cursor == 4
    # acknowledged entries are gone; an ack-only poll answers at once with nothing new
    assert api.ok("POST", "retrieve_futures", {"target": target, "prev_cursor": 4, "timeout": 0,
                                               "retrieved_request_ids": rids}) == {"completions": [], "cursor": 4}
    # a clone (seq_ids from 1e9) has its own log
    joined = api.ok("POST", "join_sampling_session", {"sampling_session_id": sampler})["client_counter"]
    assert joined == 1 and api.ok("POST", "join_sampling_session", {"sampling_session_id": sampler})[
        "client_counter"] == 2
    clone_rid = api.post("asample", sample_body(sampler, 1_000_000_000, n=1)).json()["request_id"]
    clone = {**target, "cloned_sampler_id": 1}
    out = api.ok("POST", "retrieve_futures", {"target": clone, "prev_cursor": 0})
    assert [c["request_id"] for c in out["completions"]] == [clone_rid]
    assert Api(api.url, KEY_B).post("retrieve_futures", {"target": target}).status_code == 404


def test_cancel_future_cancels_queued_samples(api: Api) -> None:
    sid = api.session()
    sampler = _sampler(api, sid)
    rids = [api.post("asample", sample_body(sampler, i, n=8, max_tokens=64)).json()["request_id"] for i in range(12)]
    answers = [api.ok("POST", "cancel_future", {"request_id": rid}) for rid in rids]
    cancelled = [a["request_id"] for a in answers if a["cancelled"]]
    assert cancelled, "one sampler worker cannot have started all 12 requests"
    r = api.poll(cancelled[-1]).json()
    assert r["category"] == "user" and "cancelled" in r["error"]
    mid = api.model(sid)
    fb = api.post("forward_backward", fwdbwd(mid, 1)).json()["request_id"]
    assert api.post("cancel_future", {"request_id": fb}).status_code == 400  # training runs in seq order
    assert api.post("cancel_future", {"request_id": "req-nope"}).status_code == 404


def test_copy_weights_into_a_session_or_project(api: Api) -> None:
    sid = api.session()
    mid = api.model(sid)
    src = api.result(api.post("save_weights", {"model_id": mid, "path": "w", "seq_id": 1}))["path"]
    key = {"X-Idempotency-Key": "copy-1"}
    first = api.ok("POST", "copy_weights", {"source_path": src, "session_id": sid, "model_seq_id": 5}, headers=key)
    assert first["tinker_path"] == f"tinker://{sid}:train:5/weights/w"
    again = api.ok("POST", "copy_weights", {"source_path": src, "session_id": sid, "model_seq_id": 5}, headers=key)
    assert again == first  # the same idempotency key: the first answer
    proj = api.ok("POST", "copy_weights", {"source_path": src, "destination_project_id": "p1", "ttl_seconds": 3600})
    assert proj["tinker_path"].startswith("tinker://copy-")
    assert api.post("copy_weights", {"source_path": src}).status_code == 400
    assert Api(api.url, KEY_B).post("copy_weights", {"source_path": src, "destination_project_id": "p"}
                                    ).status_code == 404
    usage = api.ok("GET", "billing/usage/checkpoints/current", params={"project_id": "p1"})["data"]
    assert [(u["project_id"], u["checkpoint_count"]) for u in usage] == [("p1", 1)]


def test_external_weights_urls_are_signed(api: Api) -> None:
    sid = api.session()
    mid = api.model(sid)
    out = api.result(api.post("save_weights_external", {"model_id": mid, "path": "hf", "seq_id": 1,
                                                        "ttl_seconds": 3600}))
    assert out["path"] == f"tinker://{mid}/external_weights/hf" and out["size_bytes"] > 0
    refused = api.post("save_weights_external", {"model_id": mid, "path": "x", "seq_id": 2,
                                                 "age_encryption_recipients": ["age1xyz"]})
    assert "age_encryption_recipients" in refused.json()["detail"]
    urls = api.ok("GET", f"training_runs/{mid}/checkpoints/external_weights/hf/external_weights_urls")["urls"]
    assert set(urls) == {"adapter_config.json", "adapter_model.safetensors"}
    assert requests.get(urls["adapter_config.json"], timeout=10).json()["r"] == 4  # no credentials needed
    token = urls["adapter_config.json"].split("/_download/", 1)[1].split("/", 1)[0]
    tampered = urls["adapter_config.json"].replace(token, token[:-2] + ("AA" if not token.endswith("AA") else "BB"))
    assert requests.get(tampered, timeout=10).status_code == 404
    listed = api.ok("GET", f"training_runs/{mid}/checkpoints")["checkpoints"]
    assert [c["checkpoint_type"] for c in listed] == ["external"]


def test_session_search_filters_and_pages(api: Api) -> None:
    ids = []
    for i in range(5):
        body = {"sdk_version": "0.38.0", "tags": [], "user_metadata": {"team": "a" if i % 2 else "b"},
                "display_name": f"run number {i}"}
        ids.append(api.ok("POST", "create_session", body)["session_id"])
    api.ok("POST", f"sessions/{ids[0]}/finish", {"reason": {"type": "errored"}})
    page = api.ok("POST", "sessions/search", {"limit": 2})
    assert len(page["sessions"]) == 2 and page["next_cursor"] is not None
    rest = api.ok("POST", "sessions/search", {"limit": 10, "cursor": page["next_cursor"]})
    assert len(page["sessions"]) + len(rest["sessions"]) == 5 and rest["next_cursor"] is None
    team_a = api.ok("POST", "sessions/search", {"user_metadata": {"team": "a"}})["sessions"]
    assert {s["session_id"] for s in team_a} == {ids[1], ids[3]}
    named = api.ok("POST", "sessions/search", {"display_name": "NUMBER 4"})["sessions"]
    assert [s["session_id"] for s in named] == [ids[4]]
    errored = api.ok("POST", "sessions/search", {"statuses": [{"type": "client_finished", "reasons": ["errored"]}]})
    assert [(s["session_id"], s["status"]["reason"]["type"]) for s in errored["sessions"]] == [(ids[0], "errored")]
    assert api.ok("GET", f"sessions/{ids[1]}")["display_name"] == "run number 1"
    assert api.post("sessions/search", {"limit": 500}).status_code == 400
    assert api.post("sessions/search", {"owner": {"type": "user", "owner_urns": ["x"]}}).status_code == 400


def test_stability_records_fill_stable_reinforce_logprobs(api: Api) -> None:
    sid = api.session()
    mid = api.model(sid)
    sampler = _sampler(api, sid)
    handle = api.post("asample", sample_body(sampler, 0, n=1, max_tokens=4, record_stability_info=True))
    seq_id = handle.json()["sample_sequence_ids"][0]
    sampled = api.result(handle)["sequences"][0]
    prompt = list(b"Q: hi\nA:")
    tokens = prompt + sampled["tokens"]
    n = len(tokens) - 1
    datum = {"model_input": {"chunks": [{"type": "encoded_text", "tokens": tokens[:-1]}]},
             "loss_fn_inputs": {"target_tokens": {"data": tokens[1:], "dtype": "int64", "shape": [n]},
                                "advantages": {"data": [1.0] * n, "dtype": "float32", "shape": [n]}},
             "model_input_spans": [
                 {"type": "prompt_tokens", "sequence_id": seq_id, "offset": 0, "length": len(prompt)},
                 {"type": "sampled_tokens", "sequence_id": seq_id, "offset": 0, "length": len(sampled["tokens"]) - 1}],
             "loss_fn_input_spans": [
                 {"type": "prompt_tokens", "sequence_id": seq_id, "offset": 1, "length": len(prompt) - 1},
                 {"type": "sampled_tokens", "sequence_id": seq_id, "offset": 0, "length": len(sampled["tokens"])}]}
    body = {"model_id": mid, "seq_id": 1, "forward_backward_input": {"data": [datum], "loss_fn": "stable_reinforce"}}
    out = api.result(api.post("forward_backward", body))
    lp = out["loss_fn_outputs"][0]["logprobs"]["data"]
    assert abs(lp[-1] - sampled["logprobs"][-1]) < 1e-4  # the fresh adapter is the sampling policy
    other = {**datum, "loss_fn_input_spans": [{"type": "sampled_tokens", "sequence_id": "other", "length": n}]}
    bad = {**body, "seq_id": 2, "forward_backward_input": {"data": [other], "loss_fn": "stable_reinforce"}}
    assert "no stability info" in api.post("forward_backward", bad).json()["detail"]


def test_load_weights_never_switches_optimizer_silently(api: Api) -> None:
    sid = api.session()
    mid = api.model(sid)
    path = api.result(api.post("save_weights", {"model_id": mid, "path": "w", "seq_id": 1}))["path"]
    dimuon = {"type": "dimuon", "version": 1}
    r = api.post("load_weights", {"model_id": mid, "path": path, "optimizer": False, "seq_id": 2,
                                  "optimizer_config": dimuon})
    assert "differs" in r.json()["detail"]
    r = api.post("load_weights", {"session_id": sid, "model_seq_id": 1, "path": path, "optimizer": True,
                                  "optimizer_config": dimuon})
    assert "cannot resume" in r.json()["detail"]
    # weights only into a new model: it trains with the optimizer it asked for
    new = api.result(api.post("load_weights", {"session_id": sid, "model_seq_id": 2, "path": path, "optimizer": False,
                                               "optimizer_config": dimuon}))["model_id"]
    assert api.ok("POST", "get_info", {"model_id": new})["optimizer_config"] == dimuon


def test_zstd_forward_backward_bodies(api: Api) -> None:
    zstandard = pytest.importorskip("zstandard")
    from tinker_sync import _proto, _serde
    from tinker_sync.types import ForwardBackwardRequest

    assert api.ok("POST", "client/config", {"sdk_version": "0.38.0"})["proto_compress_fwdbwd"] is True
    mid = api.model(api.session())
    plain = _proto.encode_forward_backward_request(_serde.parse_request(fwdbwd(mid, 1), ForwardBackwardRequest))
    headers = {"Content-Type": "application/x-protobuf", "Content-Encoding": "zstd"}
    packed = zstandard.ZstdCompressor().compress(plain)
    r = api.s.post(f"{api.url}/api/v1/forward_backward", data=packed, headers=headers, timeout=30)
    assert api.result(r)["metrics"]["loss:sum"] > 0
    r = api.s.post(f"{api.url}/api/v1/forward_backward", data=b"not zstd", headers=headers, timeout=30)
    assert r.status_code == 400 and "decompress" in r.json()["detail"]
    bomb = zstandard.ZstdCompressor().compress(b"\0" * (65 * 1024 * 1024))
    r = api.s.post(f"{api.url}/api/v1/forward_backward", data=bomb, headers=headers, timeout=30)
    assert r.status_code == 413 and len(bomb) < 100_000
    r = api.s.post(f"{api.url}/api/v1/forward_backward", data=plain, timeout=30,
                   headers={"Content-Type": "application/x-protobuf", "Content-Encoding": "br"})
    assert r.status_code == 415
