"""Crash durability of the local server: accepted sequenced work survives SIGKILL + restart on the same data dir.

The server runs as a real subprocess (``python -m tinker_sync.local``) so the kill is a real SIGKILL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tinker_sync.local import LocalTinkerServer

from .test_local_server import Api, fwdbwd, optim

ROOT = Path(__file__).resolve().parents[1]
PAIRS = 8  # forward_backward + optim_step pairs in flight when the server dies


def spawn(data_dir: Path) -> tuple[subprocess.Popen[str], str]:
    """Start ``python -m tinker_sync.local`` on a free port; (process, base URL)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tinker_sync.local", "--port", "0", "--data-dir", str(data_dir), "--long-poll", "1",
         "--no-tokenizer-install", "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert "listening on" in line, line
    return proc, line.split("listening on ", 1)[1].split()[0]


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait(10)


def _losses(api: Api, handles: dict[int, str]) -> list[float]:
    out = []
    for seq in sorted(handles):
        r = api.poll(handles[seq], deadline_s=60)
        assert r.status_code == 200, r.text
        body = r.json()
        assert "error" not in body, (seq, body)
        if "metrics" in body and "loss:sum" in body["metrics"]:
            out.append(body["metrics"]["loss:sum"])
    return out


def _pipeline(api: Api, mid: str) -> dict[int, str]:
    """Queue seq_ids 2..2*PAIRS+1 (they wait for seq 1); returns request ids by seq_id."""
    handles = {}
    for i in range(PAIRS):
        fb, op = 2 + 2 * i, 3 + 2 * i
        handles[fb] = api.post("forward_backward", fwdbwd(mid, fb)).json()["request_id"]
        handles[op] = api.post("optim_step", optim(mid, op)).json()["request_id"]
    return handles


def test_sigkill_with_steps_in_flight_resumes_exactly_once(tmp_path: Path,
                                                            procs: list[subprocess.Popen[str]]) -> None:
    # fault-free reference
    with LocalTinkerServer(data_dir=tmp_path / "ref", long_poll_s=1.0) as ref:
        api = Api(ref.url)
        mid = api.model(api.session())
        handles = _pipeline(api, mid)
        handles[1] = api.post("forward_backward", fwdbwd(mid, 1)).json()["request_id"]
        expected = _losses(api, handles)
        final_ref = api.result(api.post("forward_backward", fwdbwd(mid, 2 * PAIRS + 2)))["metrics"]["loss:sum"]

    data = tmp_path / "data"
    proc, url = spawn(data)
    procs.append(proc)
    api = Api(url)
    mid = api.model(api.session())
    handles = _pipeline(api, mid)  # accepted and journaled; seq 1 is missing, so none has run
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)

    proc, url = spawn(data)
    procs.append(proc)
    api = Api(url)
    # the handles of the killed server still resolve; a duplicate submission gets the same request id
    assert api.post("optim_step", optim(mid, 3)).json()["request_id"] == handles[3]
    handles[1] = api.post("forward_backward", fwdbwd(mid, 1)).json()["request_id"]
    assert _losses(api, handles) == expected
    final = api.result(api.post("forward_backward", fwdbwd(mid, 2 * PAIRS + 2)))["metrics"]["loss:sum"]
    assert final == final_ref  # every step applied exactly once, in order


def test_refusal_journaled_before_a_crash_still_frees_the_lane(tmp_path: Path,
                                                               procs: list[subprocess.Popen[str]]) -> None:
    data = tmp_path / "data"
    proc, url = spawn(data)
    procs.append(proc)
    api = Api(url)
    mid = api.model(api.session())
    assert api.post("forward_backward", {**fwdbwd(mid, 2), "bogus": 1}).status_code == 400  # seq 2 consumed
    queued = api.post("forward_backward", fwdbwd(mid, 3)).json()["request_id"]
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    proc, url = spawn(data)
    procs.append(proc)
    api = Api(url)
    api.result(api.post("forward_backward", fwdbwd(mid, 1)))
    r = api.poll(queued, deadline_s=60)
    assert r.status_code == 200 and r.json()["metrics"]["loss:sum"] > 0


def test_graceful_stop_keeps_queued_work(tmp_path: Path) -> None:
    with LocalTinkerServer(data_dir=tmp_path / "d", long_poll_s=0.5) as srv:
        api = Api(srv.url)
        mid = api.model(api.session())
        queued = api.post("optim_step", optim(mid, 2)).json()["request_id"]
    with LocalTinkerServer(data_dir=tmp_path / "d", long_poll_s=0.5) as srv:
        api = Api(srv.url)
        api.result(api.post("forward_backward", fwdbwd(mid, 1)))
        r = api.poll(queued, deadline_s=30)
        assert r.status_code == 200 and "metrics" in r.json(), r.text


@pytest.mark.parametrize("slow_recovery", [False, True], ids=["recovery", "request-before-recovery"])
def test_journaled_creation_runs_after_a_restart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 slow_recovery: bool) -> None:
    """A create_model accepted but not run before the crash (its journal entry is all that is left) runs on
    restart, then the requests queued behind it. A request that arrives while the recovery is still
    re-creating the model waits for it instead of getting a 404."""
    import base64
    import time

    from tinker_sync.local._api_live import LiveApi

    if slow_recovery:
        resume = LiveApi._resume

        def late_resume(self: LiveApi, model_ids: list[str]) -> None:
            time.sleep(0.5)  # the request below arrives first
            resume(self, model_ids)

        monkeypatch.setattr(LiveApi, "_resume", late_resume)
    import json

    from tinker_sync.local._persist import LiveStateStore
    from tinker_sync.local._store import owner_of_key

    from .test_local_server import BASE, KEY_A

    with LocalTinkerServer(data_dir=tmp_path / "d") as srv:
        sid = Api(srv.url).session()
    mid = f"{sid}:train:0"
    journal = LiveStateStore(tmp_path / "d")

    def entry(fn: str, body: dict[str, object], request_type: str) -> dict[str, object]:
        return {"fn": fn, "op": fn, "request_type": request_type, "owner": owner_of_key(KEY_A),
                "content_type": "application/json", "body": base64.b64encode(json.dumps(body).encode()).decode()}

    journal.save_pending(mid, 0, entry("create_model", {"session_id": sid, "model_seq_id": 0, "base_model": BASE,
                                                        "lora_config": {"rank": 4, "seed": 7}}, "CreateModel"))
    journal.save_pending(mid, 1, entry("forward_backward", fwdbwd(mid, 1), "ForwardBackward"))
    with LocalTinkerServer(data_dir=tmp_path / "d", long_poll_s=0.5) as srv:
        api = Api(srv.url)
        # the resumed seq_id 1 is found by a retry of the same request
        assert api.result(api.post("forward_backward", fwdbwd(mid, 1)))["metrics"]["loss:sum"] > 0
        assert api.ok("POST", "get_info", {"model_id": mid})["model_id"] == mid
    assert journal.load_pending(mid) == {}
