"""Poller head-of-line benchmark: N futures whose results are released in REVERSE submission order.

    python -m tests.bench_poller [--n 64] [--hold 5] [--step 0.02] [--max-pollers 16]

A scripted server long-polls each retrieve_future like the hosted API: it holds the request until that
result is released or ``--hold`` seconds pass (then answers try_again). Future i is released at
``(N - 1 - i) * step`` seconds after all were submitted (the ``--late`` oldest ones ``--late-s`` later). Reports the wall time until every Future
resolved and the lag between a result's release and its Future resolving (mean / max). Not a test.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import threading
import time
from concurrent.futures import Future, wait

from tests.scripted_server import RecordedRequest, Reply, ScriptedServer
from tinker_sync._config import ClientConfig
from tinker_sync._runtime import Runtime


def run(n: int, hold_s: float, step_s: float, max_pollers: int | None, late: int = 0, late_s: float = 0.0) -> dict[str, float]:
    released: dict[str, threading.Event] = {}
    release_at: dict[str, float] = {}
    ids = itertools.count()
    lock = threading.Lock()

    def submit(rec: RecordedRequest) -> Reply:
        # request ids name the submission index (POSTs reach the server in any order)
        rid = f"req-{rec.json()['i']}-{next(ids)}"
        with lock:
            released[f"req-{rec.json()['i']}"] = released[rid] = threading.Event()
        return Reply(200, {"request_id": rid})

    def retrieve(rec: RecordedRequest) -> Reply:
        rid = rec.json()["request_id"]
        if released[rid].wait(hold_s):
            return Reply(200, {"rid": rid})
        return Reply(200, {"type": "try_again", "request_id": rid, "queue_state": "active"})

    with ScriptedServer() as srv:
        srv.default("/api/v1/forward", submit)
        srv.default("/api/v1/retrieve_future", retrieve)
        kw = {} if max_pollers is None else {"max_pollers": max_pollers}
        cfg = ClientConfig(base_url=srv.url, api_key="tml-bench-poller", **kw)  # type: ignore[arg-type]
        with Runtime(cfg) as rt:
            done_at: dict[int, float] = {}
            futs: list[Future[object]] = []
            for i in range(n):
                fut = rt.submit_polled("/api/v1/forward", {"i": i}, None, request_type="Forward")
                fut.add_done_callback(lambda _f, i=i: done_at.__setitem__(i, time.monotonic()))
                futs.append(fut)
            while True:  # wait until every POST got its request id
                with lock:
                    if len(released) == 2 * n:
                        break
                time.sleep(0.001)
            t0 = time.monotonic()
            for k in range(n):
                i = n - 1 - k
                target = t0 + k * step_s + (late_s if i < late else 0.0)
                time.sleep(max(0.0, target - time.monotonic()))
                release_at[f"req-{i}"] = time.monotonic()
                released[f"req-{i}"].set()
            wait(futs, timeout=600)
            wall = max(done_at.values()) - t0
            early = max(done_at[i] for i in range(late, n)) - t0
            lags = [done_at[i] - release_at[f"req-{i}"] for i in range(n)]
    return {"wall_s": wall, "early_wall_s": early, "mean_lag_s": statistics.mean(lags), "max_lag_s": max(lags)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--hold", type=float, default=5.0, help="server long-poll hold time (s)")
    parser.add_argument("--step", type=float, default=0.02, help="seconds between two releases")
    parser.add_argument("--max-pollers", type=int, default=None)
    parser.add_argument("--late", type=int, default=0, help="the LATE oldest futures are released ...")
    parser.add_argument("--late-s", type=float, default=0.0, help="... this many seconds later still")
    args = parser.parse_args()
    res = run(args.n, args.hold, args.step, args.max_pollers, args.late, args.late_s)
    ideal = (args.n - 1 - args.late) * args.step
    print(
        f"n={args.n} hold={args.hold}s step={args.step}s late={args.late}+{args.late_s}s "
        f"max_pollers={args.max_pollers or 'default'}: wall {res['wall_s']:.2f} s, all-but-late done at "
        f"{res['early_wall_s']:.2f} s (ideal {ideal:.2f} s), lag mean {res['mean_lag_s']:.3f} s, "
        f"max {res['max_lag_s']:.3f} s"
    )


if __name__ == "__main__":
    main()
