"""Fault soak: samples and pipelined training through the faulting proxy, checked exactly-once against a
fault-free run with the same seed."""

from __future__ import annotations

import threading
import time
from typing import Any

import attrs

from tests.soak._common import MODEL, close_bounded, compare_runs, report, soak_client, train
from tests.soak.proxy import FAULT_KINDS, FaultPlan, FaultProxy
from tinker_sync import SamplingClient, types
from tinker_sync.local import LocalTinkerServer


@attrs.frozen
class FaultsOptions:
    """Sizes and bounds of one fault soak."""

    samples: int = 10_000
    steps: int = 200
    threads: int = 32
    window: int = 8
    check_samples: int = 500
    fault_rate: float = 0.25
    seed: int = 0
    timeout_s: float = 900.0


def plan_for(rate: float) -> FaultPlan:
    """Split ``rate`` over the fault kinds (lost-after-apply answers get the largest share)."""
    shares = {"drop_before": 0.2, "drop_after": 0.3, "status_429": 0.1, "status_503": 0.1, "status_500": 0.1,
              "delay": 0.2}
    return FaultPlan(**{k: rate * v for k, v in shares.items()})  # type: ignore[arg-type]


def _prompt(i: int) -> types.ModelInput:
    return types.ModelInput.from_ints(list(f"sample {i}: ".encode()))


def _params(i: int) -> types.SamplingParams:
    return types.SamplingParams(max_tokens=4, temperature=1.0, seed=i)


@attrs.define
class _Samples:
    results: dict[int, tuple[int, ...]] = attrs.field(factory=dict)
    latencies_s: list[float] = attrs.field(factory=list)
    errors: dict[int, str] = attrs.field(factory=dict)
    duplicates: int = 0
    lock: threading.Lock = attrs.field(factory=threading.Lock)

    def put(self, i: int, tokens: tuple[int, ...] | None, error: str | None, latency_s: float) -> None:
        with self.lock:
            self.latencies_s.append(latency_s)
            if i in self.results or i in self.errors:
                self.duplicates += 1
            elif error is not None:
                self.errors[i] = error
            else:
                assert tokens is not None
                self.results[i] = tokens


def _sample_worker(sampler: SamplingClient, indices: range, out: _Samples, deadline: float) -> None:
    for i in indices:
        start = time.monotonic()
        try:
            resp = sampler.sample(_prompt(i), 1, _params(i)).result(timeout=max(0.0, deadline - time.monotonic()))
            out.put(i, tuple(resp.sequences[0].tokens), None, time.monotonic() - start)
        except Exception as exc:  # noqa: BLE001 - reported
            out.put(i, None, f"{type(exc).__name__}: {str(exc)[:200]}", time.monotonic() - start)


def _fan_out(sampler: SamplingClient, opts: FaultsOptions, deadline: float) -> _Samples:
    out = _Samples()
    threads = [threading.Thread(target=_sample_worker,
                                args=(sampler, range(t, opts.samples, opts.threads), out, deadline),
                                name=f"soak-sampler-{t}", daemon=True) for t in range(opts.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()) + 5)
    return out


def _percentiles(values: list[float]) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    p50, p99 = (ordered[min(len(ordered) - 1, int(q * len(ordered)))] for q in (0.5, 0.99))
    return f"{p50:.2f} / {p99:.2f} / {ordered[-1]:.2f}"


def run(opts: FaultsOptions) -> dict[str, Any]:
    """Run the fault soak; returns its figures, ``problems`` empty when every check held."""
    started = time.monotonic()
    deadline = started + opts.timeout_s
    problems: list[str] = []
    with LocalTinkerServer(long_poll_s=2.0) as server:
        client = soak_client(server.url)
        try:
            reference = train(client.create_lora_training_client(MODEL, rank=4, seed=opts.seed), opts.steps,
                              seed=opts.seed, window=opts.window, timeout_s=opts.timeout_s)
            ref_sampler = client.create_sampling_client(base_model=MODEL)
            stride = max(1, opts.samples // max(1, opts.check_samples))
            checked = range(0, opts.samples, stride)
            ref_samples = {i: tuple(ref_sampler.sample(_prompt(i), 1, _params(i)).result(60).sequences[0].tokens)
                           for i in checked}
        finally:
            close_bounded(client)
        reference_s = time.monotonic() - started
        proxy = FaultProxy(server.port, plan=plan_for(opts.fault_rate), seed=opts.seed).start()
        faulted = soak_client(proxy.url)
        soak_started = time.monotonic()
        try:
            training = faulted.create_lora_training_client(MODEL, rank=4, seed=opts.seed)
            sampler = faulted.create_sampling_client(base_model=MODEL)
            box: dict[str, Any] = {}
            def train_timed() -> None:
                box["run"] = train(training, opts.steps, seed=opts.seed, window=opts.window,
                                   timeout_s=deadline - time.monotonic())
                box["seconds"] = time.monotonic() - soak_started

            trainer = threading.Thread(target=train_timed, name="soak-trainer", daemon=True)
            trainer.start()
            samples = _fan_out(sampler, opts, deadline)
            sampling_s = time.monotonic() - soak_started
            trainer.join(max(0.0, deadline - time.monotonic()) + 10)
            outcome = box.get("run")
        finally:
            close_problem = close_bounded(faulted)
            proxy.stop()
        soak_s = time.monotonic() - soak_started
    if outcome is None:
        problems.append("the training thread did not finish before the deadline (hang)")
    else:
        problems += compare_runs(reference, outcome)
    if close_problem:
        problems.append(close_problem)
    missing = opts.samples - len(samples.results) - len(samples.errors)
    if samples.errors:
        first = min(samples.errors)
        problems.append(f"{len(samples.errors)} samples failed, e.g. #{first}: {samples.errors[first]}")
    if missing:
        problems.append(f"{missing} samples never resolved before the deadline")
    if samples.duplicates:
        problems.append(f"{samples.duplicates} samples resolved more than once")
    mismatched = [i for i in ref_samples if i in samples.results and samples.results[i] != ref_samples[i]]
    if mismatched:
        problems.append(f"{len(mismatched)} of {len(ref_samples)} checked samples differ from the fault-free answer "
                        f"(first #{mismatched[0]})")
    counts = proxy.counts
    return {
        "samples ok / failed / unresolved": f"{len(samples.results)} / {len(samples.errors)} / {missing}",
        "samples checked against fault-free": f"{len(ref_samples) - len(mismatched)} of {len(ref_samples)} identical",
        "training steps ok / asked": f"{len(outcome.losses) if outcome else 0} / {opts.steps}",
        "losses + final weights bit-identical": not any("loss" in p or "weights" in p for p in problems),
        "proxied requests": counts["requests"],
        "fault rate (all requests)": f"{proxy.fault_rate():.1%}",
        "faults": ", ".join(f"{k}={counts[k]}" for k in FAULT_KINDS),
        "time reference / soak (s)": f"{reference_s:.1f} / {soak_s:.1f}",
        "time sampling / training under faults (s)": f"{sampling_s:.1f} / {box.get('seconds', float('nan')):.1f}",
        "samples per second under faults": f"{opts.samples / sampling_s:.0f}",
        "sample latency p50 / p99 / max (s)": _percentiles(samples.latencies_s),
        "problems": problems,
    }


def main(opts: FaultsOptions) -> int:
    """Run, print the figures, return the exit code."""
    title = f"faults: {opts.samples} samples + {opts.steps} training steps, fault rate {opts.fault_rate:.0%}"
    return report(title, run(opts))
