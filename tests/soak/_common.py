"""Shared pieces of the soak modes: the training workload, a local server in a subprocess, reports."""

from __future__ import annotations

import concurrent.futures
import http.client
import os
import random
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import attrs

from tinker_sync import RetryPolicy, ServiceClient, TrainingClient, types

MODEL = "tinker-sync/tiny-byte"
API_KEY = "tml-soak-0000"
LEARNING_RATE = 5e-3
# Generous retries with short waits: the soak injects far more faults than a real server has.
SOAK_RETRY = RetryPolicy(max_attempts=60, initial_delay_s=0.02, max_delay_s=0.5, total_timeout_s=120.0)


def soak_client(base_url: str, **overrides: Any) -> ServiceClient:
    """A ServiceClient for soak traffic (retry policy tuned for frequent injected faults)."""
    overrides.setdefault("retry", SOAK_RETRY)
    return ServiceClient(api_key=API_KEY, base_url=base_url, **overrides)


def batch_for(step: int, seed: int, datums: int = 2) -> list[types.Datum]:
    """The deterministic training batch of ``step`` (``datums`` byte-level sequences)."""
    rng = random.Random(seed * 1_000_003 + step)
    data = []
    for _ in range(datums):
        ids = [rng.randrange(97, 123) for _ in range(rng.randint(6, 14))]
        data.append(types.Datum(model_input=types.ModelInput.from_ints(ids[:-1]),
                                loss_fn_inputs={"target_tokens": ids[1:], "weights": [1.0] * (len(ids) - 1)}))
    return data


PROBE = [types.Datum(model_input=types.ModelInput.from_ints(list(b"the quick brown fox")),
                     loss_fn_inputs={"target_tokens": list(b"he quick brown fox."), "weights": [1.0] * 19})]


@attrs.define
class TrainOutcome:
    """What a training run produced, or how it failed."""

    losses: list[float] = attrs.field(factory=list)
    fingerprint: list[float] = attrs.field(factory=list)  # forward logprobs of PROBE after the last step
    error: str | None = None  # the first failure
    failed: int = 0  # futures that raised
    unresolved: int = 0  # futures still pending when their wait ran out

    @property
    def hung(self) -> bool:
        """Whether some future never resolved within the bound."""
        return self.unresolved > 0


def _result(fut: Future[Any], what: str, timeout_s: float, outcome: TrainOutcome) -> Any:
    try:
        # once one wait ran out, the rest are only checked: the run is already reported as hung
        return fut.result(timeout=0.0 if outcome.unresolved else timeout_s)
    except concurrent.futures.TimeoutError:
        outcome.unresolved += 1
        outcome.error = outcome.error or f"{what}: no result within {timeout_s:.0f} s (hang)"
    except Exception as exc:  # noqa: BLE001 - reported, not handled
        outcome.failed += 1
        outcome.error = outcome.error or f"{what}: {type(exc).__name__}: {str(exc)[:300]}"
    return None


def train(client: TrainingClient, steps: int, *, seed: int, window: int, timeout_s: float, datums: int = 2,
          on_submitted: Callable[[int, list[Future[Any]]], None] | None = None) -> TrainOutcome:
    """Run ``steps`` pipelined forward_backward + optim_step pairs, at most ``window`` pairs unresolved.

    ``on_submitted(step, unresolved futures)`` runs after each pair is submitted. After a failure nothing
    more is submitted, and what is pending is still awaited, so the outcome says how many later futures
    failed or hung. Each wait for a result is bounded by ``timeout_s``; after one ran out, the remaining
    futures are not waited for.
    """
    outcome = TrainOutcome()
    pending: deque[tuple[int, Future[Any], Future[Any]]] = deque()

    def collect_oldest() -> None:
        step, fb, opt = pending.popleft()
        out = _result(fb, f"forward_backward of step {step}", timeout_s, outcome)
        done = _result(opt, f"optim_step of step {step}", timeout_s, outcome)
        if out is not None and done is not None and outcome.error is None:
            outcome.losses.append(float(out.metrics["loss:sum"]))

    adam = types.AdamParams(learning_rate=LEARNING_RATE)
    for step in range(steps):
        if outcome.error is not None:
            break
        pending.append(
            (step, client.forward_backward(batch_for(step, seed, datums), "cross_entropy"), client.optim_step(adam))
        )
        if on_submitted is not None:
            on_submitted(step, [f for _, fb, opt in pending for f in (fb, opt) if not f.done()])
        while len(pending) >= window:
            collect_oldest()
    while pending:
        collect_oldest()
    if outcome.error is None:
        fwd = _result(client.forward(PROBE, "cross_entropy"), "forward of the probe", timeout_s, outcome)
        if fwd is not None:
            outcome.fingerprint = [float(x) for out in fwd.loss_fn_outputs for x in out["logprobs"].data]
    return outcome


def compare_runs(reference: TrainOutcome, run: TrainOutcome) -> list[str]:
    """Differences between a run and the fault-free reference (empty = bit-identical)."""
    problems = []
    if reference.error:
        problems.append(f"the fault-free reference failed: {reference.error}")
    if run.error:
        problems.append(f"{run.error} (futures failed in all: {run.failed}, never resolved: {run.unresolved})")
    if run.losses != reference.losses[:len(run.losses)]:
        first = next(i for i, (a, b) in enumerate(zip(run.losses, reference.losses)) if a != b)
        problems.append(f"loss of step {first} differs: {run.losses[first]!r} != reference {reference.losses[first]!r}")
    elif len(run.losses) != len(reference.losses):
        problems.append(f"only {len(run.losses)} of {len(reference.losses)} steps completed")
    if not run.error and run.fingerprint != reference.fingerprint:
        problems.append("probe logprobs after training differ from the reference (weights differ)")
    return problems


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _limit_memory(max_bytes: int) -> Callable[[], None]:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (max_bytes, max_bytes))
    return apply


class ServerProcess:
    """``python -m tinker_sync.local`` on 127.0.0.1 in a subprocess, restartable on the same port and data dir."""

    def __init__(self, data_dir: Path, *, port: int | None = None, long_poll_s: float = 2.0,
                 max_memory_bytes: int | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.long_poll_s = long_poll_s
        self.max_memory_bytes = max_memory_bytes
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        """Base URL of the server."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, ready_timeout_s: float = 60.0) -> None:
        """Start the server and wait (bounded) until /api/v1/healthz answers."""
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        log = open(self.data_dir.parent / f"{self.data_dir.name}-server.log", "ab")  # noqa: SIM115
        cmd = [sys.executable, "-m", "tinker_sync.local", "--port", str(self.port), "--data-dir", str(self.data_dir),
               "--long-poll", str(self.long_poll_s), "--log-level", "warning"]
        preexec = _limit_memory(self.max_memory_bytes) if self.max_memory_bytes else None
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=env, preexec_fn=preexec)  # noqa: PLW1509
        log.close()
        self.starts += 1
        deadline = time.monotonic() + ready_timeout_s
        while not self.healthy():
            if self.proc.poll() is not None:
                raise RuntimeError(f"the local server exited with {self.proc.returncode} at start; see its log "
                                   f"{self.data_dir.parent / (self.data_dir.name + '-server.log')}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the local server did not answer healthz within {ready_timeout_s} s")
            time.sleep(0.05)

    def healthy(self, timeout_s: float = 2.0) -> bool:
        """Whether GET /api/v1/healthz answers 200 now."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout_s)
        try:
            conn.request("GET", "/api/v1/healthz")
            return conn.getresponse().status == 200
        except (OSError, http.client.HTTPException):
            return False
        finally:
            conn.close()

    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the server and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def stop(self) -> None:
        """SIGTERM (then SIGKILL after 10 s) and reap."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.kill()


def close_bounded(client: ServiceClient, timeout_s: float = 10.0) -> str | None:
    """Close a client without waiting for pending work; report (not hang) if close itself does not return."""
    t = threading.Thread(target=client.close, kwargs={"cancel_pending": True, "timeout_s": min(5.0, timeout_s)},
                         name="soak-close", daemon=True)
    t.start()
    t.join(timeout_s)
    return None if not t.is_alive() else f"ServiceClient.close() did not return within {timeout_s} s"


def print_figures(title: str, figures: dict[str, Any]) -> None:
    """The end-of-run figures, one per line, then the problems found (one per line)."""
    figures = dict(figures)
    problems = figures.pop("problems", [])
    print(f"== {title}")
    width = max(len(k) for k in figures)
    for key, value in figures.items():
        print(f"  {key:<{width}}  {value}")
    print(f"  problems ({len(problems)}){':' if problems else ''}")
    for problem in problems:
        print(f"    {problem}")


def report(title: str, figures: dict[str, Any]) -> int:
    """Print a mode's figures; the exit code: 1 when it found problems."""
    print_figures(title, figures)
    return 1 if figures["problems"] else 0
