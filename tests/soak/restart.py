"""Restart soak: SIGKILL the local server (a subprocess) while training pairs are in flight, restart it on
the same port and data dir, and check the same client finishes exactly once (bounded: a hang is reported)."""

from __future__ import annotations

import random
import tempfile
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import attrs

from tests.soak._common import (
    MODEL,
    ServerProcess,
    TrainOutcome,
    close_bounded,
    compare_runs,
    report,
    soak_client,
    train,
)

_MIN_IN_FLIGHT = 8


@attrs.frozen
class RestartOptions:
    """Sizes and bounds of the restart soak."""

    steps: int = 40
    kills: int = 3
    runs: int = 4
    window: int = 10  # > 8, so 8 pairs can be unresolved when the kill comes
    hang_timeout_s: float = 60.0
    datums: int = 8  # per forward_backward; more makes each step slower, so more work is queued at a kill
    seed: int = 0
    timeout_s: float = 1800.0


@attrs.define
class _Killer:
    """Kills and restarts the server after chosen steps, once >= 8 pairs are unresolved."""

    server: ServerProcess
    kill_after: set[int]
    rng: random.Random
    in_flight_at_kill: list[int] = attrs.field(factory=list)
    downtime_s: list[float] = attrs.field(factory=list)
    restart_error: str | None = None

    def __call__(self, step: int, unresolved: list[Future[Any]]) -> None:
        if step not in self.kill_after:
            return
        self.kill_after.discard(step)
        time.sleep(self.rng.uniform(0.0, 0.02))  # a random point inside the server's work on the queue
        in_flight = sum(1 for f in unresolved if not f.done())
        if in_flight < 2 * _MIN_IN_FLIGHT:  # not enough in flight yet: try after the next pair
            self.kill_after.add(step + 1)
            return
        down = time.monotonic()
        self.server.kill()
        self.in_flight_at_kill.append((in_flight + 1) // 2)
        time.sleep(self.rng.uniform(0.0, 0.5))
        try:
            self.server.start()
        except RuntimeError as exc:
            self.restart_error = str(exc)
        self.downtime_s.append(time.monotonic() - down)


def _one_run(opts: RestartOptions, run: int, workdir: Path, reference: TrainOutcome) -> dict[str, Any]:
    rng = random.Random(opts.seed * 7919 + run)
    server = ServerProcess(workdir / f"run{run}")
    server.start()
    client = soak_client(server.url)
    # Kill points: after a burst of pairs has been queued (the pipeline window keeps them unresolved).
    # Kill points: random steps once the pipeline window is full (the window keeps >= 8 pairs unresolved).
    # (early enough that a postponed kill still finds a full window before the pipeline drains)
    points = range(opts.window, max(opts.window + opts.kills, opts.steps - 2 * opts.window))
    kill_after = set(rng.sample(points, min(opts.kills, len(points))))
    killer = _Killer(server, kill_after, rng)
    started = time.monotonic()
    try:
        training = client.create_lora_training_client(MODEL, rank=4, seed=opts.seed)
        outcome = train(training, opts.steps, seed=opts.seed, window=opts.window,
                        timeout_s=opts.hang_timeout_s, datums=opts.datums, on_submitted=killer)
    finally:
        close_problem = close_bounded(client)
        server.stop()
    problems = compare_runs(reference, outcome)
    if killer.restart_error:
        problems.append(f"restart failed: {killer.restart_error}")
    if close_problem:
        problems.append(close_problem)
    return {"steps_ok": len(outcome.losses), "kills": len(killer.in_flight_at_kill),
            "in_flight_at_kill": killer.in_flight_at_kill, "hung": outcome.hung,
            "failed": outcome.failed, "unresolved": outcome.unresolved,
            "seconds": time.monotonic() - started, "problems": problems}


def run(opts: RestartOptions) -> dict[str, Any]:
    """Run the restart soak; returns its figures, ``problems`` empty when every check held."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tinker-sync-soak-") as tmp:
        workdir = Path(tmp)
        ref_server = ServerProcess(workdir / "reference")
        ref_server.start()
        ref_client = soak_client(ref_server.url)
        try:
            reference = train(ref_client.create_lora_training_client(MODEL, rank=4, seed=opts.seed), opts.steps,
                              seed=opts.seed, window=opts.window, timeout_s=opts.hang_timeout_s, datums=opts.datums)
        finally:
            close_bounded(ref_client)
            ref_server.stop()
        runs = []
        for i in range(opts.runs):
            if time.monotonic() - started > opts.timeout_s:
                break
            runs.append(_one_run(opts, i, workdir, reference))
    problems = [f"run {i}: {p}" for i, r in enumerate(runs) for p in r["problems"]]
    if reference.error:
        problems.insert(0, f"fault-free reference failed: {reference.error}")
    return {
        "runs completed exactly once": f"{sum(not r['problems'] for r in runs)} of {len(runs)}",
        f"runs that hung (bound {opts.hang_timeout_s:.0f} s)": sum(r["hung"] for r in runs),
        "futures failed / unresolved": f"{sum(r['failed'] for r in runs)} / {sum(r['unresolved'] for r in runs)}",
        "SIGKILLs": sum(r["kills"] for r in runs),
        "pairs in flight at each kill": [r["in_flight_at_kill"] for r in runs],
        "steps completed per run": f"{[r['steps_ok'] for r in runs]} of {opts.steps}",
        "time (s)": f"{time.monotonic() - started:.1f}",
        "problems": problems,
    }


def main(opts: RestartOptions) -> int:
    """Run, print the figures, return the exit code."""
    return report(f"restart: {opts.runs} runs x {opts.steps} steps, {opts.kills} SIGKILLs each", run(opts))
