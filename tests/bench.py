"""Client-overhead benchmark: tinker_sync against the official SDK, both talking to the local server.

    python -m tests.bench                              # tinker_sync only
    python -m tests.bench --official /path/to/python   # also an interpreter that has `tinker` installed

The server runs in its own process, and each client workload runs in a fresh subprocess. For each one,
the report gives wall time, the client process's own CPU time (user+sys: the client overhead that
this project tries to keep small), its peak RSS and the most threads it had alive at once. Not a test:
numbers vary by machine, so nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

# One workload script for both clients: the official SDK and tinker_sync share these public names.
_WORKLOAD = textwrap.dedent(
    """
    import json, os, resource, sys, threading, time
    from concurrent.futures import ThreadPoolExecutor
    lib = __import__(sys.argv[1])
    types = lib.types
    base_url, kind, n = sys.argv[2], sys.argv[3], int(sys.argv[4])
    peak_threads = [threading.active_count()]
    stop = threading.Event()
    def watch():
        while not stop.wait(0.01):
            peak_threads[0] = max(peak_threads[0], threading.active_count())
    threading.Thread(target=watch, daemon=True).start()
    service = lib.ServiceClient(base_url=base_url, api_key="tml-bench-key")
    prompt = types.ModelInput.from_ints(list(range(65, 65 + 16)))
    t0 = time.perf_counter(); c0 = time.process_time()
    if kind == "sample":
        sampler = service.create_sampling_client(base_model="tinker-sync/tiny-byte")
        params = types.SamplingParams(max_tokens=1, temperature=1.0, seed=0)
        def one(i):
            return sampler.sample(prompt=prompt, num_samples=1, sampling_params=params).result(timeout=600)
        with ThreadPoolExecutor(max_workers=16) as pool:
            results = list(pool.map(one, range(n)))
        assert len(results) == n and all(r.sequences for r in results)
    elif kind == "train":
        training = service.create_lora_training_client(base_model="tinker-sync/tiny-byte", rank=8)
        tokens = list(range(65, 65 + 64))
        data = [types.Datum(model_input=types.ModelInput.from_ints(tokens),
                            loss_fn_inputs={"target_tokens": types.TensorData(data=tokens, dtype="int64", shape=[64]),
                                            "weights": types.TensorData(data=[1.0] * 64, dtype="float32", shape=[64])})
                for _ in range(4)]
        futures = []
        for _ in range(n):
            futures.append(training.forward_backward(data, "cross_entropy"))
            futures.append(training.optim_step(types.AdamParams(learning_rate=1e-3)))
        losses = [f.result(timeout=600) for f in futures[0::2]]
        [f.result(timeout=600) for f in futures[1::2]]
        assert len(losses) == n
    wall = time.perf_counter() - t0; cpu = time.process_time() - c0
    stop.set()
    ru = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"wall_s": wall, "cpu_s": cpu, "peak_rss_mb": ru.ru_maxrss / 1024.0,
                      "peak_threads": peak_threads[0]}))
    os._exit(0)  # do not let either SDK's shutdown hooks count in the numbers
    """
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_server(data_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tinker_sync.local", "--port", str(port), "--data-dir", str(data_dir),
         "--log-level", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, url
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("the local server did not start")


def _run(python: str, module: str, url: str, kind: str, n: int) -> dict[str, float]:
    env = dict(os.environ, TINKER_TELEMETRY="0", OPENBLAS_NUM_THREADS="1")
    out = subprocess.run([python, "-c", _WORKLOAD, module, url, kind, str(n)], check=False, capture_output=True, text=True,
                         env=env, timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"{module} {kind} failed:\n{out.stderr[-3000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", metavar="PYTHON", help="an interpreter with the official `tinker` SDK installed")
    parser.add_argument("--samples", type=int, default=400)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)

    clients = [("tinker_sync", sys.executable)]
    if args.official:
        clients.append(("tinker", args.official))
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = _start_server(Path(tmp))
        try:
            print(f"{'client':12} {'workload':18} {'wall s':>8} {'client cpu s':>13} {'cpu ms/call':>12} "
                  f"{'peak rss MB':>12} {'threads':>8}")
            for kind, n, calls in (("sample", args.samples, args.samples), ("train", args.steps, 2 * args.steps)):
                for module, python in clients:
                    runs = [_run(python, module, url, kind, n) for _ in range(args.repeat)]
                    best = min(runs, key=lambda r: r["cpu_s"])
                    label = f"{kind} x{n}"
                    print(f"{module:12} {label:18} {best['wall_s']:8.2f} {best['cpu_s']:13.3f} "
                          f"{1000 * best['cpu_s'] / calls:12.3f} {best['peak_rss_mb']:12.1f} "
                          f"{int(best['peak_threads']):8d}", flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
