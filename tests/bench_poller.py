"""Poller benchmarks. Head-of-line: N futures whose results are released in REVERSE submission order.

    python -m tests.bench_poller [--n 64] [--hold 5] [--step 0.02] [--max-pollers 16]
    python -m tests.bench_poller --fan-out 200,2000 [--max-pollers 16]

``--fan-out``: N samples of one sampling session in flight, finished in 4 groups, polled with the
batched ``retrieve_futures`` and (for comparison) one long poll per future; prints requests and
client threads (counts, not times).

A scripted server long-polls each retrieve_future like the hosted API: it holds the request until that
result is released or ``--hold`` seconds pass (then answers try_again). Future i is released at
``(N - 1 - i) * step`` seconds after all were submitted (the ``--late`` oldest ones ``--late-s`` later).
Reports the wall time until every Future resolved and the lag between a result's release and its
Future resolving (mean / max). Not a test.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import threading
import time
from concurrent.futures import Future, wait

from tests.scripted_server import RecordedRequest, Reply, ScriptedServer, SessionSim, wait_for
from tinker_sync._batch_poller import PollFeatures, SessionTarget
from tinker_sync._config import ClientConfig
from tinker_sync._poller import FuturePoller, PolledCall
from tinker_sync._runtime import Runtime
from tinker_sync._transport import Transport


def run(
    n: int, hold_s: float, step_s: float, max_pollers: int | None, late: int = 0, late_s: float = 0.0
) -> dict[str, float]:
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


def _client_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name.startswith("tinker-sync-") and t.is_alive())


def fan_out(
    n: int, *, batched: bool, chunks: int = 4, max_pollers: int = 16, hold_s: float = 2.0, gap_s: float = 0.0
) -> dict[str, int]:
    """``n`` sample calls of one session in flight, finished in ``chunks`` groups ``gap_s`` apart.

    Returns request and thread counts. The server holds a long poll up to ``hold_s``.
    """
    sim = SessionSim(hold_s=hold_s)
    peak = [0]
    stop = threading.Event()

    def sample_threads() -> None:
        while not stop.wait(0.002):
            peak[0] = max(peak[0], _client_threads())

    with ScriptedServer() as srv:
        sim.install(srv)
        transport = Transport(ClientConfig(base_url=srv.url, api_key="tml-bench-fan-out", max_pollers=max_pollers))
        poller = FuturePoller(transport, max_pollers=max_pollers)
        poller.set_features(PollFeatures(batched=batched))
        sampler = threading.Thread(target=sample_threads, name="bench-thread-sampler", daemon=True)
        sampler.start()
        try:
            rids = [f"r{i}" for i in range(n)]
            futs: list[Future[object]] = []
            for rid in rids:
                sim.add(rid)
                fut: Future[object] = Future()
                poller.track(PolledCall(request_id=rid, expected_type=None, request_type="Sample", future=fut,
                                        batch=SessionTarget("sess-1", 0)))
                futs.append(fut)
            size = -(-n // chunks)
            for k in range(chunks):
                wait_for(lambda: False, gap_s)  # let the work take a while, as sampling does
                # batched: each group finishes while the client waits on the session's long poll
                if batched and not wait_for(lambda: sim.batch_inflight == 1, 30.0):
                    raise RuntimeError("the client never long-polled retrieve_futures")
                sim.complete(rids[k * size:(k + 1) * size])
            results = [f.result(timeout=120) for f in futs]
            if results != [{"rid": rid} for rid in rids]:
                raise RuntimeError("wrong results")
            if batched and not wait_for(lambda: sim.retrieved == set(rids), 30.0):
                raise RuntimeError("not every fetch was acknowledged")
            stats = poller.batch_stats()
        finally:
            stop.set()
            sampler.join(5)
            poller.close(cancel_pending=True, join_timeout_s=5.0)
            transport.close()
        return {
            "samples": n,
            "retrieve_futures": len(srv.requests_to("/api/v1/retrieve_futures")),
            "retrieve_future": len(srv.requests_to("/api/v1/retrieve_future")),
            "batch_threads": stats["sessions"],
            "peak_client_threads": peak[0],
            "peak_concurrent_batch_polls": sim.batch_peak,
            "bad_targets": sim.bad_targets,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fan-out", default="", help="comma-separated sample counts, e.g. 200,2000")
    parser.add_argument("--gap", type=float, default=3.0, help="--fan-out: seconds between completion groups")
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--hold", type=float, default=5.0, help="server long-poll hold time (s)")
    parser.add_argument("--step", type=float, default=0.02, help="seconds between two releases")
    parser.add_argument("--max-pollers", type=int, default=None)
    parser.add_argument("--late", type=int, default=0, help="the LATE oldest futures are released ...")
    parser.add_argument("--late-s", type=float, default=0.0, help="... this many seconds later still")
    args = parser.parse_args()
    if args.fan_out:
        for n in (int(x) for x in args.fan_out.split(",")):
            for batched in (True, False):
                c = fan_out(n, batched=batched, max_pollers=args.max_pollers or 16, gap_s=args.gap)
                print(
                    f"{'batched  ' if batched else 'per-future'} samples={n}: retrieve_futures={c['retrieve_futures']} "
                    f"retrieve_future={c['retrieve_future']} peak client threads={c['peak_client_threads']} "
                    f"(max_pollers={args.max_pollers or 16})"
                )
        return
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
