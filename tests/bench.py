"""Client-overhead benchmark: tinker_sync against the official SDK(s) and plain ``json``, in one run.

    python -m tests.bench                                      # tinker_sync (and json) only
    python -m tests.bench --official /venv025/bin/python --official /venv038/bin/python
    python -m tests.bench --skip-codec --steps 0 --polling per-future     # one sample fan-out only

Two parts, every workload in a fresh subprocess per client:

* codec (tests/bench_codec_workload.py): build + encode of a 128 x 2,048 forward_backward request from
  plain lists (int64 targets, float32 weights), decode of a 64 x 1,024 forward_backward output and of an
  8 x 512 sample response with prompt logprobs (best CPU time of several runs, alternating clients), and
  the peak RSS growth while building + encoding the 128 x 2,048 request, against its wire size;
* server: sample calls fanned out from 64 threads and pipelined forward_backward + optim_step against
  the local server in another process: wall time, the client process's own CPU time (user+sys), peak
  RSS and the most threads alive at once. The sample fan-out runs twice, against a server offering
  batched polling (``sample_use_retrieve_futures``: one session-wide retrieve_futures long poll, used by
  tinker_sync and 0.38) and against one that does not (every sample polled with its own retrieve_future);
  ``--polling`` picks one. The clients alternate within each repeat; the lowest CPU of each is kept and the
  range across repeats printed.

Ratios are tinker_sync / official for each official SDK given. Not a test: numbers vary by machine,
so nothing here asserts a speed.
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
from typing import Any

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
        with ThreadPoolExecutor(max_workers=int(sys.argv[5])) as pool:
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


# The local server in its own process; ``batched`` is its client-config flag sample_use_retrieve_futures
# (clients that honour it wait on one session-wide retrieve_futures poll instead of polling every sample).
_SERVER = textwrap.dedent(
    """
    import sys, threading
    from tinker_sync.local import LocalTinkerServer
    port, data_dir, batched = int(sys.argv[1]), sys.argv[2], sys.argv[3] == "1"
    LocalTinkerServer(port=port, data_dir=data_dir,
                      client_config_overrides={"sample_use_retrieve_futures": batched}).start()
    threading.Event().wait()
    """
)


def _start_server(data_dir: Path, *, batched: bool) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", _SERVER, str(port), str(data_dir), "1" if batched else "0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env(),
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


_ROOT = Path(__file__).resolve().parent.parent
_CODEC = Path(__file__).resolve().parent / "bench_codec_workload.py"


def _env() -> dict[str, str]:
    # tinker_sync from this checkout; harmless for the official SDK's interpreter.
    path = os.pathsep.join(p for p in (str(_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return dict(os.environ, TINKER_TELEMETRY="0", OPENBLAS_NUM_THREADS="1", PYTHONPATH=path)


def _run(python: str, module: str, url: str, kind: str, n: int, threads: int) -> dict[str, float]:
    out = subprocess.run([python, "-c", _WORKLOAD, module, url, kind, str(n), str(threads)], check=False,
                         capture_output=True, text=True, env=_env(), timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"{module} {kind} failed:\n{out.stderr[-3000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _codec(python: str, kind: str, lib: str, body_file: Path | None = None) -> dict[str, Any]:
    cmd = [python, str(_CODEC), kind, lib] + ([str(body_file)] if body_file else [])
    out = subprocess.run(cmd, check=False, capture_output=True, text=True, env=_env(), timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"{lib} {kind} failed:\n{out.stderr[-3000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _response_bodies(tmp: Path) -> dict[str, tuple[Path, Path]]:
    """The decode inputs, made with tinker_sync's encoders: protobuf bodies and their JSON twins."""
    import random

    from tinker_sync import _proto, _serde
    from tinker_sync import types as T

    rng = random.Random(1)
    outputs = [{key: T.TensorData(data=[-rng.random() * 10 for _ in range(1024)], dtype="float32", shape=[1024])
                for key in ("logprobs", "elementwise_loss")} for _ in range(64)]
    fwdbwd = T.ForwardBackwardOutput(loss_fn_output_type="ArrayRecord", loss_fn_outputs=outputs,
                                     metrics={"loss:sum": 123.0})
    seqs = [T.SampledSequence(stop_reason="length", tokens=[rng.randrange(50_000) for _ in range(512)],
                              logprobs=[-rng.random() for _ in range(512)]) for _ in range(8)]
    sample = T.SampleResponse(sequences=seqs, prompt_logprobs=[None] + [-rng.random() for _ in range(511)])
    bodies = {}
    for name, obj, encode in (("decode_fwdbwd", fwdbwd, _proto.encode_forward_backward_output),
                              ("decode_sample", sample, _proto.encode_sample_response)):
        proto_file, json_file = tmp / f"{name}.pb", tmp / f"{name}.json"
        proto_file.write_bytes(encode(obj))  # type: ignore[operator]
        json_file.write_bytes(_serde.dumps(obj))
        bodies[name] = (proto_file, json_file)
    return bodies


def _codec_table(clients: list[tuple[str, str, str]], rounds: int, tmp: Path) -> None:
    bodies = _response_bodies(tmp)
    rows: list[tuple[str, str, dict[str, float]]] = [
        ("build_encode", "build+encode 128x2048 request (ms)", {}),
        ("decode_fwdbwd", "decode 64x1024 fwd-bwd output (ms)", {}),
        ("decode_sample", "decode 8x512 sample + prompt lp (ms)", {}),
    ]
    for kind, _, best in rows:
        for _ in range(rounds):  # alternate the clients, keep each one's best
            for label, python, lib in clients:
                body = None
                if kind in bodies:
                    body = bodies[kind][1] if lib == "json" else bodies[kind][0]
                ms = _codec(python, kind, lib, body)["ms"]
                best[label] = min(best.get(label, ms), ms)
    memory: dict[str, float] = {}
    traced: dict[str, float] = {}
    wire_mb = 0.0
    for label, python, lib in clients:
        result = _codec(python, "memory", lib)
        memory[label], traced[label] = result["peak_growth_mb"], result["traced_peak_mb"]
        if lib != "json":
            wire_mb = result["wire_mb"]
    labels = [label for label, _, _ in clients]
    officials = [label for label in labels if label.startswith("official")]
    head = f"{'codec workload':40}" + "".join(f"{label:>15}" for label in labels)
    head += "".join(f"{'vs ' + o:>20}" for o in officials)
    print(head)
    for _, title, best in rows:
        line = f"{title:40}" + "".join(f"{best[label]:15.3f}" for label in labels)
        line += "".join(f"{best['tinker_sync'] / best[o]:19.2f}x" for o in officials)
        print(line)
    line = f"{'peak RSS growth, 128x2048 (MB)':40}" + "".join(f"{memory[label]:15.1f}" for label in labels)
    line += "".join(f"{memory['tinker_sync'] / memory[o]:19.2f}x" for o in officials if memory[o] > 0)
    print(line)
    print(f"{'  ... / protobuf wire size':40}" + "".join(f"{memory[label] / wire_mb:14.2f}x" for label in labels)
          + f"   (wire {wire_mb:.2f} MB)")
    print(f"{'peak traced allocations / wire size':40}"
          + "".join(f"{traced[label] / wire_mb:14.2f}x" for label in labels), flush=True)


def _official_label(python: str) -> str:
    out = subprocess.run([python, "-c", "import tinker; print(tinker.__version__)"], check=True, capture_output=True,
                         text=True, env=_env(), timeout=120)
    version = out.stdout.strip()
    return "official " + ".".join(version.split(".")[:2])


def _server_table(clients: list[tuple[str, str, str]], args: argparse.Namespace, tmp: Path) -> None:
    print(f"{'client':15} {'workload':30} {'wall s':>8} {'client cpu s':>13} {'cpu ms/call':>12} "
          f"{'peak rss MB':>12} {'threads':>8}")
    cpu_per_call: dict[str, float] = {}
    # Sample fan-out against a server that offers batched polling (retrieve_futures: 0.38 and tinker_sync
    # use it) and one that does not (every client polls each sample with retrieve_future).
    workloads = [("sample", mode, args.samples, args.samples, args.threads) for mode in args.polling]
    if args.steps:
        workloads.append(("train", args.polling[0], args.steps, 2 * args.steps, 1))
    for kind, mode, n, calls, threads in workloads:
        data_dir = tmp / f"server-{kind}-{mode}"
        data_dir.mkdir(exist_ok=True)
        proc, url = _start_server(data_dir, batched=mode == "batched")
        try:
            runs: dict[str, list[dict[str, float]]] = {label: [] for label, _, _ in clients}
            for _ in range(args.repeat):  # alternate the clients, keep each one's lowest CPU
                for label, python, module in clients:
                    runs[label].append(_run(python, module, url, kind, n, threads))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        for label, _, _ in clients:
            best = min(runs[label], key=lambda r: r["cpu_s"])
            per_call = [1000 * r["cpu_s"] / calls for r in runs[label]]
            key = f"{kind} {mode}" if kind == "sample" else kind
            cpu_per_call[f"{label} {key}"] = min(per_call)
            title = f"{kind} x{n}" + (f" /{threads} thr, {mode}" if kind == "sample" else "")
            spread = f"  ({min(per_call):.3f}-{max(per_call):.3f})" if len(per_call) > 1 else ""
            print(f"{label:15} {title:30} {best['wall_s']:8.2f} {best['cpu_s']:13.3f} "
                  f"{min(per_call):12.3f} {best['peak_rss_mb']:12.1f} {int(best['peak_threads']):8d}{spread}",
                  flush=True)
    for kind, mode, *_ in workloads:
        key = f"{kind} {mode}" if kind == "sample" else kind
        for label, _, _ in clients[1:]:
            ratio = cpu_per_call[f"tinker_sync {key}"] / cpu_per_call[f"{label} {key}"]
            print(f"client CPU per {key} call: tinker_sync / {label} = {ratio:.2f}x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", metavar="PYTHON", action="append", default=[],
                        help="an interpreter with the official `tinker` SDK installed (repeatable: 0.25 and 0.38)")
    parser.add_argument("--samples", type=int, default=2000,
                        help="sample calls per run (enough that start-up costs do not count per call)")
    parser.add_argument("--threads", type=int, default=64, help="fan-out of the sample workload")
    parser.add_argument("--steps", type=int, default=40, help="forward_backward + optim_step pairs (0: skip)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3, help="codec runs per client (best kept)")
    parser.add_argument("--skip-server", action="store_true", help="codec workloads only")
    parser.add_argument("--skip-codec", action="store_true", help="server workloads only")
    parser.add_argument("--polling", choices=["batched", "per-future"], action="append", default=None,
                        help="server polling mode(s) of the sample workload (repeatable; default: both)")
    args = parser.parse_args(argv)
    args.polling = args.polling or ["batched", "per-future"]

    print("command: python -m tests.bench " + " ".join(sys.argv[1:] if argv is None else argv), flush=True)
    officials = [(_official_label(python), python, "tinker") for python in args.official]
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_codec:
            _codec_table([("tinker_sync", sys.executable, "tinker_sync"), *officials,
                          ("json", sys.executable, "json")], args.rounds, Path(tmp))
            print()
        if not args.skip_server:
            _server_table([("tinker_sync", sys.executable, "tinker_sync"), *officials], args, Path(tmp))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
