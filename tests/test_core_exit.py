"""A script that never calls close() still ends promptly on Ctrl-C and at interpreter exit.

Each case runs a real script in a subprocess against a scripted server (in the script's own process)
that holds the request; the subprocess timeout is a hang guard, not a performance assertion.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HANG_GUARD_S = 30  # far below the 120 s the held request (and the old exit join) would take

SCRIPT = textwrap.dedent(
    """
    import atexit, sys, threading
    from tests.scripted_server import Reply, ScriptedServer
    from tinker_sync._config import ClientConfig
    from tinker_sync._runtime import Runtime

    srv = ScriptedServer().start()
    srv.default("/api/v1/held", Reply(200, {"ok": True}, delay_s=120))  # the answer takes 2 minutes
    rt = Runtime(ClientConfig(base_url=srv.url, api_key="tml-exit-test-key-0123", read_timeout_s=300))
    futs = [rt.submit_request("POST", "/api/v1/held", body={}) for _ in range(3)]
    while len(srv.requests_to("/api/v1/held")) < 3:
        threading.Event().wait(0.01)
    print("SENT", flush=True)
    # atexit functions run after the interpreter joined the worker threads: report how the calls ended
    atexit.register(lambda: print("ENDED", *sorted({type(f.exception(timeout=0)).__name__ for f in futs}), flush=True))
    if sys.argv[1] == "wait":
        futs[0].result(timeout=600)  # Ctrl-C arrives while the main thread waits here
    # "exit": the script simply ends without close()
    """
)


def _default_sigint() -> None:
    # A suite started as a shell's background job runs with SIGINT ignored, and an ignored signal stays
    # ignored across exec: Python then installs no KeyboardInterrupt handler. The script must get
    # Ctrl-C as a user's terminal delivers it, however the suite was started.
    if sys.platform != "win32":
        signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(mode: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen(
        [sys.executable, "-c", SCRIPT, mode], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, preexec_fn=_default_sigint,  # noqa: PLW1509 - no threads of ours run in the child before exec
    )


def _wait_sent(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    line = proc.stdout.readline()  # blocks until the script printed SENT (or died)
    assert line.strip() == "SENT", line + (proc.stderr.read() if proc.stderr else "")


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT delivery differs on Windows")
def test_ctrl_c_ends_a_script_that_never_closed_its_client() -> None:
    proc = _start("wait")
    try:
        _wait_sent(proc)
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=HANG_GUARD_S)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode != 0 and "KeyboardInterrupt" in err, err


def test_a_clean_exit_without_close_does_not_wait_for_held_calls() -> None:
    proc = _start("exit")
    try:
        _wait_sent(proc)
        _out, err = proc.communicate(timeout=HANG_GUARD_S)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, err
    assert "ENDED ClientClosedError" in _out, _out + err  # the bounded wait ran out; the calls failed


def _blocks_sigint(native_id: int) -> bool:
    status = Path(f"/proc/self/task/{native_id}/status").read_text()
    sigblk = next(line for line in status.splitlines() if line.startswith("SigBlk:"))
    return bool(int(sigblk.split()[1], 16) & (1 << (signal.SIGINT - 1)))


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads thread signal masks from Linux /proc")
def test_every_thread_of_the_client_and_embedded_server_leaves_ctrl_c_to_the_main_thread(tmp_path: Path) -> None:
    """The kernel gives a process-directed SIGINT to any thread not blocking it; Python raises
    KeyboardInterrupt only in the main thread, and a main thread waiting in Future.result() is not
    woken when another thread took the signal. So every thread tinker_sync starts blocks it."""
    import threading

    from tinker_sync import ServiceClient, types
    from tinker_sync.local import LocalTinkerServer

    assert not _blocks_sigint(threading.main_thread().native_id or 0)
    with LocalTinkerServer(data_dir=tmp_path / "data") as server, \
            ServiceClient(api_key="tml-exit-test-key-0123", base_url=server.url) as service:
        model = service.get_server_capabilities().supported_models[0].model_name
        training = service.create_lora_training_client(model, rank=4)
        datum = types.Datum(model_input=types.ModelInput.from_ints([1, 2, 3]),
                            loss_fn_inputs={"target_tokens": [2, 3, 4], "weights": [1.0, 1.0, 1.0]})
        training.forward_backward([datum], "cross_entropy").result(timeout=60)
        sampler = training.save_weights_and_get_sampling_client().result(timeout=60)
        futs = [sampler.sample(types.ModelInput.from_ints([1, 2]), 1, types.SamplingParams(max_tokens=2))
                for _ in range(8)]
        assert all(len(f.result(timeout=60).sequences) == 1 for f in futs)
        ours = [t for t in threading.enumerate() if t.name.startswith("tinker-sync") and t.native_id]
        names = {t.name.rstrip("0123456789") for t in ours}
        assert {"tinker-sync-worker-", "tinker-sync-local-http", "tinker-sync-heartbeat"} <= names, names
        unblocked = [t.name for t in ours if not _blocks_sigint(t.native_id or 0)]
        assert unblocked == []
        assert not _blocks_sigint(threading.main_thread().native_id or 0)  # the caller's mask is untouched
