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


def _start(mode: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen(
        [sys.executable, "-c", SCRIPT, mode], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
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
