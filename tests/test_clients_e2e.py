"""End-to-end tests of the public clients over HTTP against a real LocalTinkerServer on 127.0.0.1."""

from __future__ import annotations

import json
import pickle
import threading
import time
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor, wait
from typing import Any

import pytest
import requests

from tests.conftest import TEST_API_KEY, sent_forward_backward
from tinker_sync import ClientClosedError, RequestFailedError, types
from tinker_sync._session import Heartbeat, heartbeat_should_warn
from tinker_sync.service_client import ServiceClient
from tinker_sync.training_client import TrainingClient

MODEL = "tinker-sync/tiny-byte"
T = 60.0  # generous timeout for every .result()


def _example(tok: Any, text: str) -> types.Datum:
    ids = tok.encode(text, add_special_tokens=False)
    return types.Datum(
        model_input=types.ModelInput.from_ints(ids[:-1]),
        loss_fn_inputs={"target_tokens": ids[1:], "weights": [1.0] * (len(ids) - 1)},
    )


def _posts(server: Any, path: str, *, at_least: int = 0) -> list[Any]:
    """Recorded POSTs to ``path``; waits (bounded) for ``at_least`` of them, since the server records a
    request just after answering it."""
    deadline = time.monotonic() + 10
    while True:
        found = [r for r in server.requests if r.method == "POST" and r.path.split("?")[0] == path]
        if len(found) >= at_least or time.monotonic() > deadline:
            return found
        time.sleep(0.01)


# ---- the ~40-line blocking script -----------------------------------------------------------------


def test_blocking_script_trains_saves_samples_and_lists(local_server: Any) -> None:
    with ServiceClient(api_key=TEST_API_KEY, base_url=local_server.url) as service:
        caps = service.get_server_capabilities()
        assert MODEL in [m.model_name for m in caps.supported_models]
        training = service.create_lora_training_client(MODEL, rank=8, seed=0)
        tok = training.get_tokenizer()
        data = [_example(tok, "the cat sat on the mat. "), _example(tok, "the dog sat on the log. ")]
        losses = []
        for _ in range(8):
            fb = training.forward_backward(data, "cross_entropy")
            opt = training.optim_step(types.AdamParams(learning_rate=2e-2))
            losses.append(fb.result(T).metrics["loss:sum"])
            opt.result(T)
        assert losses[-1] < losses[0] * 0.8, losses
        state = training.save_state("step-8").result(T)
        assert state.path.endswith("/weights/step-8")
        sampler_path = training.save_weights_for_sampler("final").result(T).path
        assert sampler_path.startswith("tinker://") and sampler_path.endswith("/sampler_weights/final")
        sampler = service.create_sampling_client(model_path=sampler_path)
        resp = sampler.sample(types.ModelInput.from_ints(tok.encode("the ", add_special_tokens=False)), 2,
                              types.SamplingParams(max_tokens=5, temperature=0.5, seed=1)).result(T)
        assert len(resp.sequences) == 2 and all(len(s.tokens) <= 5 for s in resp.sequences)
        assert all(s.logprobs is not None and len(s.logprobs) == len(s.tokens) for s in resp.sequences)
        rest = service.create_rest_client()
        ckpts = rest.list_checkpoints(training.model_id).result(T).checkpoints
        assert {c.checkpoint_id for c in ckpts} >= {"weights/step-8", "sampler_weights/final"}
        info = training.get_info()
        assert info.model_id == training.model_id
        assert sampler.get_base_model() == MODEL
    # the session was finished and no client thread survives
    assert _posts(local_server, f"/api/v1/sessions/{service.session_id}/finish", at_least=1)
    assert not [
        t for t in threading.enumerate()
        if t.name.startswith("tinker-sync-") and not t.name.startswith("tinker-sync-local") and t.is_alive()
    ]


# ---- concurrency ----------------------------------------------------------------------------------


def test_256_samples_from_32_threads(service: ServiceClient) -> None:
    sampler = service.create_sampling_client(base_model=MODEL)
    prompt = types.ModelInput.from_ints([104, 105])
    params = types.SamplingParams(max_tokens=2, seed=3)
    with ThreadPoolExecutor(32) as pool:
        futs: list[Future[Any]] = [f for f in pool.map(lambda _i: sampler.sample(prompt, 1, params), range(256))]
    done, not_done = wait(futs, timeout=120)
    assert not not_done
    assert all(len(f.result(0).sequences) == 1 for f in done)


def test_seq_ids_ordered_across_threads(local_server: Any, service: ServiceClient) -> None:
    training = service.create_lora_training_client(MODEL, rank=4)
    datum = types.Datum(model_input=types.ModelInput.from_ints([1, 2, 3]),
                        loss_fn_inputs={"target_tokens": [2, 3, 4], "weights": [1.0, 1.0, 1.0]})
    futs: list[Future[Any]] = []
    lock = threading.Lock()

    def worker(i: int) -> None:
        for _ in range(5):
            a = training.forward_backward([datum])
            b = training.optim_step(types.AdamParams(learning_rate=1e-3))
            with lock:
                futs.extend([a, b])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(T)
    for f in futs:
        f.result(T)
    _posts(local_server, "/api/v1/optim_step", at_least=30)
    _posts(local_server, "/api/v1/forward_backward", at_least=30)
    seqs = []
    for r in local_server.requests:
        if r.status != 200 or r.method != "POST":
            continue
        if r.path == "/api/v1/forward_backward":
            seqs.append(sent_forward_backward(r).seq_id)
        elif r.path == "/api/v1/optim_step":
            seqs.append(json.loads(r.body)["seq_id"])
    assert seqs == list(range(1, 61))  # sent in seq_id order, no gaps, no duplicates


# ---- chunking -------------------------------------------------------------------------------------


def _forward_with_limits(
    tmp_path: Any, data: list[types.Datum], **limits: int
) -> tuple[types.ForwardBackwardOutput, list[Any]]:
    """forward() on a fresh server whose client config carries ``limits``; returns (output, fwd requests)."""
    from tinker_sync.local import LocalTinkerServer

    name = "-".join(f"{k}{v}" for k, v in limits.items()) or "default"
    with LocalTinkerServer(data_dir=tmp_path / name, client_config_overrides=limits) as server:
        with ServiceClient(api_key=TEST_API_KEY, base_url=server.url) as service:
            training = service.create_lora_training_client(MODEL, rank=4, seed=1)
            out = training.forward(data).result(T)
        return out, [sent_forward_backward(r) for r in _posts(server, "/api/v1/forward_backward", at_least=1)]


def test_chunking_by_count_and_bytes_merges_results(tmp_path: Any) -> None:
    data = [
        types.Datum(model_input=types.ModelInput.from_ints([i % 200 + 1] * n),
                    loss_fn_inputs={"target_tokens": [i % 200 + 2] * n, "weights": [1.0] * n})
        for i, n in enumerate([3, 5, 2, 7, 4, 6, 3])
    ]
    whole, reqs = _forward_with_limits(tmp_path, data)
    assert len(reqs) == 1

    by_count, reqs = _forward_with_limits(tmp_path, data, fwdbwd_max_chunk_len=3)
    assert [len(r.data) for r in reqs] == [3, 3, 1]
    assert [r.seq_id for r in reqs] == [1, 2, 3] and all(r.forward_only for r in reqs)

    # 16 bytes per token (4 input + 8 target + 4 weight): sizes 48, 80, 32, 112, 64, 96, 48 bytes
    by_bytes, reqs = _forward_with_limits(tmp_path, data, fwdbwd_max_chunk_bytes_count=130)
    assert [len(r.data) for r in reqs] == [2, 1, 1, 1, 1, 1]  # 48+80 | 32 | 112 | 64 | 96 | 48
    assert [r.seq_id for r in reqs] == [1, 2, 3, 4, 5, 6]

    for merged in (by_count, by_bytes):
        assert len(merged.loss_fn_outputs) == 7
        assert merged.metrics["loss:sum"] == pytest.approx(whole.metrics["loss:sum"], rel=1e-4)
        assert merged.metrics["num_tokens:sum"] == whole.metrics["num_tokens:sum"] == 30
        for a, b in zip(merged.loss_fn_outputs, whole.loss_fn_outputs):
            assert a["logprobs"].data == pytest.approx(b["logprobs"].data, rel=1e-4, abs=1e-5)


# ---- retries are applied exactly once -------------------------------------------------------------


@pytest.mark.parametrize("fault", ["drop", "500"])
def test_retried_forward_backward_applied_once(local_server: Any, service: ServiceClient, fault: str) -> None:
    datum = types.Datum(model_input=types.ModelInput.from_ints([5, 6, 7, 8]),
                        loss_fn_inputs={"target_tokens": [6, 7, 8, 9], "weights": [1.0] * 4})
    faulty = service.create_lora_training_client(MODEL, rank=4, seed=7)
    clean = service.create_lora_training_client(MODEL, rank=4, seed=7)
    if fault == "drop":
        local_server.faults.drop_next_connection("forward_backward")
    else:
        local_server.faults.fail_next("forward_backward", 500)
    r1 = faulty.forward_backward([datum]).result(T)
    local_server.faults.reset()
    r2 = clean.forward_backward([datum]).result(T)
    assert r1.metrics["loss:sum"] == pytest.approx(r2.metrics["loss:sum"], rel=1e-5)
    adam = types.AdamParams(learning_rate=5e-2)
    faulty.optim_step(adam).result(T)
    clean.optim_step(adam).result(T)
    after_faulty = faulty.forward([datum]).result(T).metrics["loss:sum"]
    after_clean = clean.forward([datum]).result(T).metrics["loss:sum"]
    # a doubled gradient would move the weights differently
    assert after_faulty == pytest.approx(after_clean, rel=1e-5)
    attempts = [r for r in local_server.requests if r.path == "/api/v1/forward_backward"]
    assert len(attempts) >= 4  # the faulty model's call was sent twice


def test_forward_backward_answer_lost_after_apply_is_not_doubled(local_server: Any) -> None:
    """The server applies the first attempt but the client times out reading the answer and resends."""
    datum = types.Datum(model_input=types.ModelInput.from_ints([5, 6, 7, 8]),
                        loss_fn_inputs={"target_tokens": [6, 7, 8, 9], "weights": [1.0] * 4})
    faults = local_server.faults
    original = faults.delay_for
    slowed: list[str] = []

    def slow_first_forward_backward(op: str) -> float:
        if op == "forward_backward" and not slowed:
            slowed.append(op)
            return 0.5  # longer than the client's read timeout; the server then still applies it
        return original(op)

    faults.delay_for = slow_first_forward_backward
    with ServiceClient(api_key=TEST_API_KEY, base_url=local_server.url, read_timeout_s=0.25) as service:
        faulty = service.create_lora_training_client(MODEL, rank=4, seed=7)
        clean = service.create_lora_training_client(MODEL, rank=4, seed=7)
        r1 = faulty.forward_backward([datum]).result(T)
        r2 = clean.forward_backward([datum]).result(T)
        assert slowed
        assert r1.metrics["loss:sum"] == pytest.approx(r2.metrics["loss:sum"], rel=1e-5)
        adam = types.AdamParams(learning_rate=5e-2)
        faulty.optim_step(adam).result(T)
        clean.optim_step(adam).result(T)
        after = [c.forward([datum]).result(T).metrics["loss:sum"] for c in (faulty, clean)]
        assert after[0] == pytest.approx(after[1], rel=1e-5)
    sent = [sent_forward_backward(r) for r in _posts(local_server, "/api/v1/forward_backward", at_least=5)]
    faulty_seqs = [(q.seq_id, q.forward_only) for q in sent if q.model_id == faulty.model_id]
    assert faulty_seqs.count((1, False)) == 2  # the same seq_id went out twice


def test_server_faults_are_absorbed(local_server: Any, service: ServiceClient) -> None:
    training = service.create_lora_training_client(MODEL, rank=4)
    sampler = service.create_sampling_client(base_model=MODEL)
    datum = types.Datum(model_input=types.ModelInput.from_ints([1, 2]),
                        loss_fn_inputs={"target_tokens": [2, 3], "weights": [1.0, 1.0]})
    prompt = types.ModelInput.from_ints([1, 2])
    params = types.SamplingParams(max_tokens=1)
    faults = local_server.faults

    faults.try_again("ForwardBackward", 3)
    assert training.forward_backward([datum]).result(T).metrics["loss:sum"] > 0
    faults.expire_next_future("Sample")  # 410 on the poll: the same request is re-submitted
    assert len(sampler.sample(prompt, 1, params).result(T).sequences) == 1
    faults.fail_next("asample", 503, count=2)
    assert len(sampler.sample(prompt, 1, params).result(T).sequences) == 1
    faults.fail_next("asample", 429, count=3, retry_after="0.05")  # shared back-off window, then success
    futs = [sampler.sample(prompt, 1, params) for _ in range(8)]
    assert all(len(f.result(T).sequences) == 1 for f in futs)

    # a server-side failure comes through the Future and does not block later calls
    bad = types.Datum(model_input=types.ModelInput.from_ints([1, 2]),
                      loss_fn_inputs={"target_tokens": [2, 9999], "weights": [1.0, 1.0]})
    with pytest.raises(RequestFailedError) as info:
        training.forward_backward([bad]).result(T)
    assert info.value.category == "user" and "9999" in str(info.value)
    assert training.forward_backward([datum]).result(T).metrics["loss:sum"] > 0


def test_futures_are_real_and_cancellable_and_close_cancels(local_server: Any) -> None:
    service = ServiceClient(api_key=TEST_API_KEY, base_url=local_server.url)
    sampler = service.create_sampling_client(base_model=MODEL)
    fut = sampler.sample(types.ModelInput.from_ints([1]), 1, types.SamplingParams(max_tokens=1))
    assert type(fut) is Future
    done, _ = wait([fut], timeout=T)
    assert done
    local_server.faults.latency("asample", 0.5)
    pending = [sampler.sample(types.ModelInput.from_ints([1]), 1, types.SamplingParams(max_tokens=1)) for _ in range(4)]
    cancelled = pending.pop()
    assert cancelled.cancel() and cancelled.cancelled()  # the user stops waiting: a real cancel
    with pytest.raises(CancelledError):
        cancelled.result(T)
    assert not any(f.done() for f in pending)  # still held by the server's latency
    service.close(cancel_pending=True)
    assert all(f.done() for f in pending)  # none is left hanging
    for f in pending:  # each one failed with the close, none was silently cancelled or answered
        assert not f.cancelled()
        assert isinstance(f.exception(0), ClientClosedError), f.exception(0)
    with pytest.raises(ClientClosedError):
        service.create_sampling_client(base_model=MODEL)


# ---- bad arguments --------------------------------------------------------------------------------


def test_bad_arguments_raise_now_and_send_nothing(local_server: Any, service: ServiceClient) -> None:
    training = service.create_lora_training_client(MODEL, rank=4).result(T)
    sampler = service.create_sampling_client(base_model=MODEL).result(T)
    rest = service.create_rest_client()
    good = types.Datum(model_input=types.ModelInput.from_ints([1, 2]),
                       loss_fn_inputs={"target_tokens": [2, 3], "weights": [1.0, 1.0]})
    _posts(local_server, "/api/v1/create_sampling_session", at_least=1)  # let the server finish recording
    local_server.clear_requests()
    cases: list[tuple[type[Exception], str, Any]] = [
        (ValueError, "No data", lambda: training.forward_backward([])),
        (TypeError, "list of Datum", lambda: training.forward_backward(good)),
        (TypeError, r"data\[1\]", lambda: training.forward_backward([good, {"x": 1}])),
        (ValueError, "unknown loss_fn", lambda: training.forward_backward([good], "mse")),
        (ValueError, "finite number", lambda: training.forward_backward([good], "ppo", {"clip": "x"})),
        (TypeError, "AdamParams", lambda: training.optim_step({"learning_rate": 1e-3})),
        (ValueError, "must not contain '/'", lambda: training.save_state("a/b")),
        (ValueError, "ttl_seconds", lambda: training.save_weights_for_sampler("x", ttl_seconds=-1)),
        (ValueError, "tinker://", lambda: training.load_state("s3://bucket/x")),
        (TypeError, "ModelInput", lambda: sampler.sample([1, 2], 1, types.SamplingParams())),
        (ValueError, "num_samples", lambda: sampler.sample(types.ModelInput.from_ints([1]), 0, types.SamplingParams())),
        (TypeError, "SamplingParams", lambda: sampler.sample(types.ModelInput.from_ints([1]), 1, {"max_tokens": 1})),
        (ValueError, "model_path .* or base_model", lambda: service.create_sampling_client()),
        (ValueError, "tinker://", lambda: service.create_sampling_client(model_path="/tmp/x")),
        (ValueError, "rank", lambda: service.create_lora_training_client(MODEL, rank=0)),
        (ValueError, "tinker path", lambda: rest.delete_checkpoint_from_tinker_path("bad")),
        (ValueError, "limit", lambda: rest.list_training_runs(limit=0)),
        (ValueError, "access_scope", lambda: rest.list_sessions(access_scope="everyone")),
    ]
    for exc_type, pattern, call in cases:
        with pytest.raises(exc_type, match=pattern):
            call()
    time.sleep(0.05)
    assert local_server.requests == []


# ---- other training features ----------------------------------------------------------------------


def test_unnamed_sampler_from_state_and_custom_loss(local_server: Any, service: ServiceClient) -> None:
    training = service.create_lora_training_client(MODEL, rank=4, seed=2)
    datum = types.Datum(model_input=types.ModelInput.from_ints([10, 11, 12]),
                        loss_fn_inputs={"target_tokens": [11, 12, 13], "weights": [1.0] * 3})
    training.forward_backward([datum]).result(T)
    training.optim_step(types.AdamParams(learning_rate=1e-2)).result(T)

    ephemeral = training.save_weights_and_get_sampling_client()
    logprobs = ephemeral.compute_logprobs(types.ModelInput.from_ints([10, 11, 12])).result(T)
    assert logprobs[0] is None and len(logprobs) == 3

    path = training.save_state("ckpt").result(T).path
    with pytest.raises(RequestFailedError, match="overwrite"):
        training.save_state("ckpt").result(T)
    assert training.save_state("ckpt", overwrite=True).result(T).path == path
    before = training.forward([datum]).result(T).metrics["loss:sum"]
    restored = service.create_training_client_from_state_with_optimizer(path)
    assert restored.model_id != training.model_id
    assert restored.forward([datum]).result(T).metrics["loss:sum"] == pytest.approx(before, rel=1e-5)
    restored2 = service.create_training_client_from_state(path)
    assert restored2.forward([datum]).result(T).metrics["loss:sum"] == pytest.approx(before, rel=1e-5)
    # one more step on each: only the copy with the Adam moments moves exactly like the original
    after = []
    for client in (training, restored, restored2):
        client.forward_backward([datum]).result(T)
        client.optim_step(types.AdamParams(learning_rate=1e-2)).result(T)
        after.append(client.forward([datum]).result(T).metrics["loss:sum"])
    assert after[1] == pytest.approx(after[0], rel=1e-5)
    assert abs(after[2] - after[0]) > 1e-4 * abs(after[0])  # fresh moments: a different step
    before = after[0]

    # numpy custom loss: L = -sum(logprobs) (plain NLL) -> grads = -1 everywhere
    import numpy as np

    def nll(data: list[types.Datum], lps: list[np.ndarray]) -> tuple[float, dict[str, float], list[np.ndarray]]:
        return float(-sum(lp.sum() for lp in lps)), {"custom:mean": 1.5}, [-np.ones_like(lp) for lp in lps]

    plain = types.Datum(model_input=datum.model_input, loss_fn_inputs={"target_tokens": [11, 12, 13]})
    out = training.forward_backward_custom([plain], nll, backend="numpy").result(T)
    assert out.metrics["custom:mean"] == 1.5
    assert out.metrics["loss:sum"] == pytest.approx(before, rel=1e-4)
    assert out.metrics["surrogate_loss:sum"] == pytest.approx(before, rel=1e-4)
    with pytest.raises(ValueError, match="target_tokens"):
        training.forward_backward_custom([types.Datum(model_input=datum.model_input, loss_fn_inputs={})], nll)


def test_pickled_sampling_client_samples(service: ServiceClient) -> None:
    sampler = service.create_sampling_client(base_model=MODEL)
    clone = pickle.loads(pickle.dumps(sampler))
    try:
        assert clone.sampling_session_id == sampler.sampling_session_id
        resp = clone.sample(types.ModelInput.from_ints([1, 2]), 1, types.SamplingParams(max_tokens=2)).result(T)
        assert len(resp.sequences) == 1
    finally:
        clone.close()


def test_heartbeat_and_finish(local_server: Any) -> None:
    client = ServiceClient(api_key=TEST_API_KEY, base_url=local_server.url, heartbeat_interval_s=0.05)
    sid = client.session_id
    deadline = time.monotonic() + 10
    while not _posts(local_server, "/api/v1/session_heartbeat") and time.monotonic() < deadline:
        time.sleep(0.02)
    beats = _posts(local_server, "/api/v1/session_heartbeat")
    assert beats and json.loads(beats[0].body)["session_id"] == sid
    client.close()
    assert _posts(local_server, f"/api/v1/sessions/{sid}/finish", at_least=1)
    assert not any(t.name == "tinker-sync-heartbeat" and t.is_alive() for t in threading.enumerate())
    order = [r.path for r in local_server.requests]
    assert order.index("/api/v1/client/config") < order.index("/api/v1/create_session")
    with pytest.raises(Exception, match="closed"):
        client.create_rest_client()


def test_heartbeat_stops_on_410(local_server: Any) -> None:
    client = ServiceClient(api_key=TEST_API_KEY, base_url=local_server.url, heartbeat_interval_s=0.02)
    try:
        sid = client.session_id
        # another process finishes the session: the next heartbeat gets 410 and the loop ends
        requests.post(f"{local_server.url}/api/v1/sessions/{sid}/finish", json={"reason": {"type": "success"}},
                      headers={"X-API-Key": TEST_API_KEY}, timeout=T).raise_for_status()
        deadline = time.monotonic() + T
        while any(t.name == "tinker-sync-heartbeat" and t.is_alive() for t in threading.enumerate()):
            assert time.monotonic() < deadline, "the heartbeat thread did not stop after a 410"
            time.sleep(0.02)
    finally:
        client.close()


def test_heartbeat_warns_only_after_two_minutes_of_silence(caplog: pytest.LogCaptureFixture) -> None:
    """A failing heartbeat logs at DEBUG; a WARNING only once nothing succeeded for more than 120 s (fake clock)."""
    now = [1000.0]
    beat = Heartbeat(None, "s1", 10.0, clock=lambda: now[0])  # type: ignore[arg-type]  # never started
    with caplog.at_level("DEBUG", logger="tinker_sync._session"):
        now[0] = 1100.0
        beat.failed(RuntimeError("boom"))
        assert not [r for r in caplog.records if r.levelname == "WARNING"]
        now[0] = 1210.0
        beat.failed(RuntimeError("boom"))
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "210 s" in warnings[0].getMessage()
    assert not heartbeat_should_warn(120.0) and heartbeat_should_warn(120.5)


# ---- REST -----------------------------------------------------------------------------------------


def _training_with_checkpoints(service: ServiceClient) -> tuple[TrainingClient, str, str]:
    training = service.create_lora_training_client(MODEL, rank=4)
    w = training.save_state("w1").result(T).path
    s = training.save_weights_for_sampler("s1").result(T).path
    return training, w, s


def test_rest_client_methods(local_server: Any, service: ServiceClient) -> None:
    training, wpath, spath = _training_with_checkpoints(service)
    service.create_lora_training_client(MODEL, rank=4).result(T)
    rest = service.create_rest_client()
    runs = rest.list_training_runs(limit=1).result(T)
    assert runs.cursor.total_count >= 2 and len(runs.training_runs) == 1
    all_runs = list(rest.iter_training_runs(page_size=1))
    assert len(all_runs) == runs.cursor.total_count
    assert training.model_id in {r.training_run_id for r in all_runs}
    run = rest.get_training_run(training.model_id).result(T)
    assert run.is_lora and run.lora_rank == 4 and run.base_model == MODEL
    assert rest.get_training_run_by_tinker_path(wpath).result(T).training_run_id == training.model_id
    winfo = rest.get_weights_info_by_tinker_path(wpath).result(T)
    assert winfo.base_model == MODEL and winfo.lora_rank == 4

    user = list(rest.iter_user_checkpoints(page_size=1))
    assert {c.tinker_path for c in user} >= {wpath, spath}
    assert len(rest.list_user_checkpoints(limit=1).result(T).checkpoints) == 1

    rest.publish_checkpoint_from_tinker_path(wpath).result(T)
    assert {c.tinker_path: c.public for c in rest.list_checkpoints(training.model_id).result(T).checkpoints}[wpath]
    rest.unpublish_checkpoint_from_tinker_path(wpath).result(T)
    rest.set_checkpoint_ttl_from_tinker_path(wpath, 3600).result(T)
    ck = {c.tinker_path: c for c in rest.list_checkpoints(training.model_id).result(T).checkpoints}[wpath]
    assert ck.expires_at is not None and not ck.public
    rest.set_checkpoint_ttl_from_tinker_path(wpath, None).result(T)
    archive = rest.get_checkpoint_archive_url_from_tinker_path(wpath).result(T)
    assert archive.url.startswith("http")

    rest.delete_checkpoint_from_tinker_path(spath).result(T)
    left = {c.tinker_path for c in rest.list_checkpoints(training.model_id).result(T).checkpoints}
    assert spath not in left and wpath in left
    from tinker_sync import NotFoundError

    with pytest.raises(NotFoundError):
        rest.get_training_run("nope:train:0").result(T)

    sessions = list(rest.iter_sessions(page_size=1))
    assert service.session_id in sessions
    sess = rest.get_session(service.session_id).result(T)
    assert training.model_id in sess.training_run_ids
    sampler = service.create_sampling_client(base_model=MODEL)
    assert rest.get_sampler(sampler.sampling_session_id).result(T).base_model == MODEL
    rest.assign_session_project(service.session_id, "proj-1").result(T)
    # the local server exports a session trace (Chrome trace-event JSON) behind a signed URL
    trace_url = rest.export_session_trace(service.session_id, poll_interval_s=0.05).result(T)
    assert "traceEvents" in requests.get(trace_url, timeout=10).json()
    # the local server keeps no audit log or billing records: typed, empty answers
    audit = rest.get_audit_log(day="2026-01-02").result(T)
    assert isinstance(audit, types.AuditLogResponse) and audit.entries == []
    usage = rest.get_billing_usage("2026-01-01T00:00:00Z", "2026-01-02T00:00:00").result(T)
    assert isinstance(usage, types.BillingUsageResponse) and usage.data == []
