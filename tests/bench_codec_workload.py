"""Codec workloads for ``tests/bench.py``, each run in a fresh interpreter (any SDK's Python).

    python tests/bench_codec_workload.py KIND LIB [FILE]

KIND: ``build_encode`` (128 x 2,048 forward_backward request from plain lists), ``memory`` (the same, once,
reporting the peak RSS growth), ``decode_fwdbwd`` / ``decode_sample`` (FILE: the body to decode).
LIB: ``tinker_sync``, ``tinker`` (the official SDK) or ``json`` (plain json.dumps/json.loads of the same data).
Prints one JSON line. Standalone on purpose: the official SDK's interpreter has neither tinker_sync nor tests.
"""

from __future__ import annotations

import gc
import json
import random
import resource
import sys
import time
from collections.abc import Callable
from typing import Any

N_DATUMS, SEQ_LEN = 128, 2048
REPEAT = 7


def plain_lists() -> tuple[list[list[int]], list[list[int]], list[list[float]]]:
    rng = random.Random(0)
    tokens = [[rng.randrange(1, 50_000) for _ in range(SEQ_LEN)] for _ in range(N_DATUMS)]
    targets = [row[1:] + [0] for row in tokens]
    weights = [[float(rng.random() < 0.9) for _ in range(SEQ_LEN)] for _ in range(N_DATUMS)]
    return tokens, targets, weights


def build_encode_fn(lib: str) -> Callable[[Any, Any, Any], bytes]:
    if lib == "json":
        def encode_json(tokens: Any, targets: Any, weights: Any) -> bytes:
            data = [{"model_input": {"chunks": [{"tokens": tk, "type": "encoded_text"}]},
                     "loss_fn_inputs": {"target_tokens": {"data": tg, "dtype": "int64", "shape": [len(tg)]},
                                        "weights": {"data": w, "dtype": "float32", "shape": [len(w)]}}}
                    for tk, tg, w in zip(tokens, targets, weights)]
            body = {"model_id": "m", "seq_id": 1,
                    "forward_backward_input": {"data": data, "loss_fn": "cross_entropy"}}
            return json.dumps(body, separators=(",", ":")).encode()
        return encode_json
    lib_module = __import__(lib)
    T = lib_module.types

    def datums(tokens: Any, targets: Any, weights: Any) -> list[Any]:
        return [T.Datum(model_input=T.ModelInput.from_ints(tk),
                        loss_fn_inputs={"target_tokens": T.TensorData(data=tg, dtype="int64", shape=[len(tg)]),
                                        "weights": T.TensorData(data=w, dtype="float32", shape=[len(w)])})
                for tk, tg, w in zip(tokens, targets, weights)]

    if lib == "tinker_sync":
        from tinker_sync import _proto

        def encode_sync(tokens: Any, targets: Any, weights: Any) -> bytes:
            req = T.ForwardBackwardRequest(model_id="m", data=datums(tokens, targets, weights),
                                           loss_fn="cross_entropy", seq_id=1)
            return _proto.encode_forward_backward_request(req)
        return encode_sync
    from tinker.proto.request_conv import forward_backward_request_to_proto

    def encode_official(tokens: Any, targets: Any, weights: Any) -> bytes:
        fb_input = T.ForwardBackwardInput(data=datums(tokens, targets, weights), loss_fn="cross_entropy")
        req = T.ForwardBackwardRequest(forward_backward_input=fb_input, model_id="m", seq_id=1)
        return bytes(forward_backward_request_to_proto(req).SerializeToString())
    return encode_official


def decode_fn(lib: str, kind: str) -> Callable[[bytes], Any]:
    if lib == "json":
        return json.loads
    if lib == "tinker_sync":
        from tinker_sync import _proto

        return _proto.decode_forward_backward_output if kind == "decode_fwdbwd" else _proto.decode_sample_response
    from tinker.proto import response_conv

    if kind == "decode_fwdbwd":
        return response_conv.deserialize_forward_backward_output  # type: ignore[no-any-return]
    return response_conv.deserialize_sample_response  # type: ignore[no-any-return]


def best_ms(fn: Callable[[], Any], repeat: int = REPEAT, number: int = 1) -> float:
    """Best CPU time of the calling thread per call, over ``repeat`` batches of ``number`` calls (CPU, not
    wall: the machine may be shared)."""
    times = []
    for _ in range(repeat):
        gc.collect()
        t0 = time.thread_time()
        for _ in range(number):
            fn()
        times.append((time.thread_time() - t0) / number)
    return 1000 * min(times)


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def peak_growth_kb(fn: Callable[[], Any]) -> tuple[int, Any]:
    """Peak RSS growth while ``fn`` runs: VmHWM reset through /proc/self/clear_refs (ru_maxrss otherwise)."""
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = _status_kb("VmRSS")
        result = fn()
        return _status_kb("VmHWM") - base, result
    except OSError:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        result = fn()
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base, result


def main() -> None:
    kind, lib = sys.argv[1], sys.argv[2]
    out: dict[str, Any] = {"kind": kind, "lib": lib}
    if kind in ("build_encode", "memory"):
        tokens, targets, weights = plain_lists()
        encode = build_encode_fn(lib)
        if kind == "memory":
            growth_kb, body = peak_growth_kb(lambda: encode(tokens, targets, weights))
            del body
            import tracemalloc  # second measure: every Python-level allocation (numpy's too), page-independent

            tracemalloc.start()
            body = encode(tokens, targets, weights)
            traced_peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            out.update(peak_growth_mb=growth_kb / 1024, traced_peak_mb=traced_peak / 2**20, wire_mb=len(body) / 2**20)
        else:
            body = encode(tokens, targets, weights)
            out.update(ms=best_ms(lambda: encode(tokens, targets, weights)), wire_bytes=len(body))
            import hashlib

            out["sha256"] = hashlib.sha256(body).hexdigest()
    else:
        with open(sys.argv[3], "rb") as f:
            body = f.read()
        decode = decode_fn(lib, kind)
        t0 = time.thread_time()
        decode(body)
        number = max(1, min(50, int(0.005 / max(time.thread_time() - t0, 1e-6))))  # batches of >= ~5 ms
        out.update(ms=best_ms(lambda: decode(body), repeat=15, number=number), wire_bytes=len(body))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
