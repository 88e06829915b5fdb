"""Reliability suite for tinker_sync and its local server (minutes; not part of the default pytest run).

    python -m tests.soak fuzz   [--iterations N] [--seed S]      server fuzzer over every endpoint: zero 5xx
    python -m tests.soak kill   [--rounds N] [--pairs P] [--seed S]  SIGKILL + restart with >= 8 steps in flight
    python -m tests.soak faults [--samples N] [--steps N] [--rate R]  tinker_sync through a faulting proxy
    python -m tests.soak all                                        the three, with their defaults

Each command prints what it measured and exits non-zero on any violation.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests

from tinker_sync.local import LocalTinkerServer, route_table

ROOT = Path(__file__).resolve().parents[1]
KEY = "tml-soak"
BASE = "tinker-sync/tiny-byte"
HEADERS = {"X-API-Key": KEY}


def _datum(prompt: str, completion: str) -> dict[str, Any]:
    toks = list((prompt + completion).encode())
    w = [0.0] * (len(prompt) - 1) + [1.0] * len(completion)
    return {"model_input": {"chunks": [{"type": "encoded_text", "tokens": toks[:-1]}]},
            "loss_fn_inputs": {"target_tokens": {"data": toks[1:], "dtype": "int64", "shape": [len(toks) - 1]},
                               "weights": {"data": w, "dtype": "float32", "shape": [len(w)]}}}


DATA = [_datum("Q: hi\nA:", " hello"), _datum("Q: 2+2\nA:", " 4")]


def _fwdbwd(mid: str, seq: int) -> dict[str, Any]:
    return {"forward_backward_input": {"data": DATA, "loss_fn": "cross_entropy"}, "model_id": mid, "seq_id": seq}


def _optim(mid: str, seq: int) -> dict[str, Any]:
    return {"adam_params": {"learning_rate": 1e-2}, "model_id": mid, "seq_id": seq, "type": "optim_step"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ============================================================================================== fuzz
_NASTY: list[Any] = [None, True, -1, 0, 2**64, 10**400, 1e308, "", "x" * 300, "a\ud800b", [], {}, [[[[]]]],
                     {"type": "bogus"}, "tinker://x/y/z", "tinker://a:train:0/weights/../../etc"]


class _Fuzzer:
    """Sends mutated bodies to every route of a live server and counts answers by status."""

    def __init__(self, url: str, rng: random.Random) -> None:
        self.url = url
        self.rng = rng
        self.s = requests.Session()
        self.s.headers.update(HEADERS)
        self.statuses: Counter[int] = Counter()
        self.failures: list[str] = []
        self.ids = self._setup()

    def _post(self, path: str, body: Any) -> Any:
        r = self.s.post(f"{self.url}/api/v1/{path}", json=body, timeout=60)
        r.raise_for_status()
        return r.json()

    def _setup(self) -> dict[str, str]:
        sid = self._post("create_session", {"sdk_version": "soak", "tags": []})["session_id"]
        rid = self._post("create_model", {"session_id": sid, "model_seq_id": 0, "base_model": BASE,
                                          "lora_config": {"rank": 4}})["request_id"]
        mid = self._wait(rid)["model_id"]
        path = self._wait(self._post("save_weights", {"model_id": mid, "path": "w", "seq_id": 1})["request_id"])["path"]
        sampler = self._post("create_sampling_session", {"session_id": sid, "sampling_session_seq_id": 0,
                                                         "base_model": BASE})["sampling_session_id"]
        return {"session": sid, "model": mid, "path": path, "sampler": sampler, "request": rid}

    def _wait(self, rid: str) -> Any:
        while True:
            out = self._post("retrieve_future", {"request_id": rid})
            if out.get("type") != "try_again":
                return out

    def seeds(self) -> dict[str, list[Any]]:
        i = self.ids
        sample = {"sampling_session_id": i["sampler"], "seq_id": 1, "num_samples": 2, "prompt": {"chunks": [
            {"type": "encoded_text", "tokens": [72, 105]}]}, "sampling_params": {"max_tokens": 4, "seed": 1}}
        return {
            "create_session": [{"sdk_version": "x", "tags": ["a"], "user_metadata": {"k": "v"}}],
            "create_model": [{"session_id": i["session"], "model_seq_id": 9, "base_model": BASE,
                              "lora_config": {"rank": 2}}],
            "forward_backward": [_fwdbwd(i["model"], 2)],
            "forward": [{"forward_input": {"data": DATA, "loss_fn": "cross_entropy"}, "model_id": i["model"],
                         "seq_id": 2}],
            "optim_step": [_optim(i["model"], 2)],
            "save_weights": [{"model_id": i["model"], "path": "f", "seq_id": 2, "ttl_seconds": 3600}],
            "save_weights_for_sampler": [{"model_id": i["model"], "sampling_session_seq_id": 3, "seq_id": 2}],
            "save_weights_external": [{"model_id": i["model"], "path": "e", "seq_id": 2}],
            "load_weights": [{"model_id": i["model"], "path": i["path"], "optimizer": True, "seq_id": 2}],
            "asample": [sample],
            "retrieve_future": [{"request_id": i["request"], "allow_metadata_only": True}],
            "retrieve_futures": [{"target": {"type": "sampling_session", "sampling_session_id": i["sampler"]},
                                  "prev_cursor": 0, "timeout": 0}],
            "cancel_future": [{"request_id": i["request"]}],
            "copy_weights": [{"source_path": i["path"], "destination_project_id": "p"}],
            "sessions/search": [{"limit": 3, "statuses": [{"type": "active"}]}],
            "weights_info": [{"tinker_path": i["path"]}],
            "create_sampling_session": [{"session_id": i["session"], "sampling_session_seq_id": 4,
                                         "base_model": BASE}],
        }

    def mutate(self, value: Any, depth: int = 0) -> Any:
        rng = self.rng
        if depth > 6 or rng.random() < 0.15:
            return rng.choice(_NASTY)
        if isinstance(value, dict) and value:
            out = dict(value)
            roll = rng.random()
            key = rng.choice(list(out))
            if roll < 0.15:
                del out[key]
            elif roll < 0.25:
                out["unknown_" + str(rng.randrange(99))] = rng.choice(_NASTY)
            else:
                out[key] = self.mutate(out[key], depth + 1)
            return out
        if isinstance(value, list) and value:
            out_list = list(value)
            j = rng.randrange(len(out_list))
            out_list[j] = self.mutate(out_list[j], depth + 1)
            return out_list
        return rng.choice(_NASTY)

    def _path(self, pattern: str) -> str:
        i, rng = self.ids, self.rng
        run = i["model"] if rng.random() < 0.7 else rng.choice(["nope", "a:b", "x" * 300])
        return (pattern.replace("(?P<run>[^/]+)", run).replace("(?P<kind>[^/]+)", rng.choice(["weights", "bad"]))
                .replace("(?P<name>[^/]+)", rng.choice(["w", "nope", ".."]))
                .replace("(?P<id>[^/]+)", rng.choice([i["session"], i["sampler"], "nope"]))
                .replace(r"(?P<token>[A-Za-z0-9_\-.]+)(?:/[A-Za-z0-9_.\-]+)?", rng.choice(["abc.def", "x"])))

    def send(self, method: str, path: str, data: bytes, content_type: str = "application/json") -> None:
        try:
            r = self.s.request(method, f"{self.url}/api/v1/{path}", data=data, timeout=60,
                               headers={"Content-Type": content_type})
        except requests.RequestException as exc:
            self.failures.append(f"{method} {path}: transport error {exc}")
            return
        self.statuses[r.status_code] += 1
        if r.status_code >= 500:
            self.failures.append(f"{method} {path} -> {r.status_code}: {r.text[:300]} (body {data[:200]!r})")

    def run(self, iterations: int) -> None:
        seeds = self.seeds()
        routes = route_table()
        from tinker_sync import _proto, _serde
        from tinker_sync.types import ForwardBackwardRequest

        proto = _proto.encode_forward_backward_request(_serde.parse_request(_fwdbwd(self.ids["model"], 2),
                                                                            ForwardBackwardRequest))
        for n in range(iterations):
            method, pattern = routes[n % len(routes)]
            path = self._path(pattern)
            body = self.mutate(self.rng.choice(seeds.get(path, [{}])))
            if self.rng.random() < 0.05:
                data = bytes(self.rng.randrange(256) for _ in range(self.rng.randrange(64)))
            elif self.rng.random() < 0.03:
                data = b"[" * 100_000
            else:
                data = json.dumps(body).encode()
            self.send(method, path, data)
            if path == "forward_backward" and self.rng.random() < 0.5:
                flipped = bytearray(proto)
                for _ in range(self.rng.randrange(1, 8)):
                    flipped[self.rng.randrange(len(flipped))] = self.rng.randrange(256)
                self.send("POST", path, bytes(flipped), "application/x-protobuf")


def cmd_fuzz(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory() as tmp, LocalTinkerServer(data_dir=Path(tmp), long_poll_s=0.2) as srv:
        fuzzer = _Fuzzer(srv.url, random.Random(args.seed))
        t0 = time.monotonic()
        fuzzer.run(args.iterations)
        took = time.monotonic() - t0
        ok = requests.get(f"{srv.url}/api/v1/healthz", timeout=10).status_code == 200
    total = sum(fuzzer.statuses.values())
    print(f"fuzz: {total} requests over {len(route_table())} routes in {took:.1f} s; statuses "
          f"{dict(sorted(fuzzer.statuses.items()))}; server healthy afterwards: {ok}")
    for line in fuzzer.failures[:20]:
        print("  FAIL", line)
    return 0 if not fuzzer.failures and ok else 1


# ============================================================================================== kill
class _KilledServer:
    """A ``python -m tinker_sync.local`` subprocess on a fixed port and data dir, restartable."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[str] | None = None
        self.kills = 0

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tinker_sync.local", "--port", str(self.port), "--data-dir", str(self.data_dir),
             "--long-poll", "1", "--log-level", "error", "--no-tokenizer-install"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if "listening on" not in line:
            raise RuntimeError(f"server did not start: {line!r}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
            self.kills += 1

    def stop(self) -> None:
        self.kill()


class _Driver:
    """Raw HTTP client that survives restarts: retries connection errors, resubmits a vanished seq_id."""

    def __init__(self, url: str, deadline_s: float = 120.0) -> None:
        self.url = url
        self.deadline = time.monotonic() + deadline_s
        self.s = requests.Session()
        self.s.headers.update(HEADERS)
        self.resubmits = 0

    def _call(self, path: str, body: Any) -> requests.Response:
        while time.monotonic() < self.deadline:
            try:
                return self.s.post(f"{self.url}/api/v1/{path}", json=body, timeout=30)
            except requests.ConnectionError:
                self.s = requests.Session()
                self.s.headers.update(HEADERS)
                time.sleep(0.1)
        raise TimeoutError(f"{path}: no answer before the deadline")

    def submit(self, path: str, body: Any) -> str:
        while True:
            r = self._call(path, body)
            if r.status_code == 200:
                return str(r.json()["request_id"])
            if r.status_code < 500 and r.status_code != 429:
                raise AssertionError(f"{path} refused: {r.status_code} {r.text}")
            time.sleep(0.1)

    def result(self, path: str, body: Any, rid: str) -> Any:
        while True:
            r = self._call("retrieve_future", {"request_id": rid})
            if r.status_code == 404:  # accepted by a server that died before journaling it: send it again
                self.resubmits += 1
                rid = self.submit(path, body)
                continue
            if r.status_code >= 500:
                time.sleep(0.1)
                continue
            out = r.json()
            if out.get("type") == "try_again":
                continue
            if "error" in out:
                raise AssertionError(f"{path} failed: {out}")
            return out


def _train(driver: _Driver, mid: str, pairs: int, on_submitted: Callable[[int], None] = lambda n: None
           ) -> list[float]:
    """Pipelined pairs (all submitted before any result is read), then a final forward; the losses."""
    calls = []
    for i in range(pairs):
        for path, body in (("forward_backward", _fwdbwd(mid, 1 + 2 * i)), ("optim_step", _optim(mid, 2 + 2 * i))):
            calls.append((path, body, driver.submit(path, body)))
            on_submitted(len(calls))
    losses = [driver.result(p, b, rid)["metrics"]["loss:sum"] for p, b, rid in calls if p == "forward_backward"]
    fwd = {**_fwdbwd(mid, 2 * pairs + 1), "forward_only": True}
    losses.append(driver.result("forward_backward", fwd, driver.submit("forward_backward", fwd))["metrics"]["loss:sum"])
    return losses


def _new_model(driver: _Driver) -> str:
    sid = driver._call("create_session", {"sdk_version": "soak"}).json()["session_id"]
    body = {"session_id": sid, "model_seq_id": 0, "base_model": BASE, "lora_config": {"rank": 4, "seed": 3}}
    return str(driver.result("create_model", body, driver.submit("create_model", body))["model_id"])


def cmd_kill(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        with LocalTinkerServer(data_dir=Path(tmp) / "ref", long_poll_s=1.0) as ref:
            drv = _Driver(ref.url)
            expected = _train(drv, _new_model(drv), args.pairs)
        failures = kills = resubmits = 0
        t0 = time.monotonic()
        for n in range(args.rounds):
            server = _KilledServer(Path(tmp) / f"round{n}")
            server.start()
            try:
                drv = _Driver(server.url)
                mid = _new_model(drv)
                kill_after = rng.randrange(8, 2 * args.pairs + 1)  # >= 8 requests submitted when it dies

                def maybe_kill(submitted: int, at: int = kill_after, srv: _KilledServer = server) -> None:
                    if submitted == at:  # the pipeline's first `at` requests are accepted, some ran, some queued
                        time.sleep(rng.random() * 0.02)
                        srv.kill()
                        srv.start()

                got = _train(drv, mid, args.pairs, maybe_kill)
                resubmits += drv.resubmits
                kills += server.kills
                if got != expected:
                    failures += 1
                    print(f"  round {n}: losses differ from the fault-free run:\n    {got}\n    {expected}")
            finally:
                server.stop()
    print(f"kill: {args.rounds} rounds ({kills} SIGKILLs), {args.pairs} pairs each, SIGKILL after 8..{2 * args.pairs} "
          f"submissions; "
          f"{resubmits} vanished requests resubmitted; {failures} rounds differed from the fault-free run; "
          f"{time.monotonic() - t0:.1f} s")
    return 0 if failures == 0 and kills == args.rounds else 1


# ============================================================================================== faults
class _FaultProxy(ThreadingHTTPServer):
    """Forwards to ``upstream``; a fraction of requests get a 503/429, are dropped before being forwarded,
    or are forwarded and then lose their answer (lost-after-apply)."""

    daemon_threads = True

    def __init__(self, upstream: str, rate: float, rng: random.Random) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.upstream = upstream.removeprefix("http://")
        self.rate = rate
        self.rng = rng
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()

    def pick(self) -> str:
        with self.lock:
            roll = self.rng.random()
            kind = "pass"
            if roll < self.rate:
                kind = self.rng.choice(["503", "429", "drop_before", "lost_after_apply", "delay"])
            self.counts[kind] += 1
            return kind


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _FaultProxy

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _relay(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        kind = self.server.pick() if "/retrieve_future" not in self.path or self.server.rng.random() < 0.5 else "pass"
        if kind in ("503", "429"):
            payload = b'{"detail": "injected"}'
            self.send_response(int(kind))
            self.send_header("Retry-After", "0")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        if kind == "drop_before":
            self.close_connection = True
            return
        if kind == "delay":
            time.sleep(0.05)
        conn = http.client.HTTPConnection(self.server.upstream, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
        conn.request(self.command, self.path, body=body or None, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        if kind == "lost_after_apply":
            self.close_connection = True
            return
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in ("connection", "transfer-encoding", "content-length"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = _relay


def _client_workload(url: str, samples: int, steps: int) -> tuple[list[float], int]:
    from tinker_sync import types
    from tinker_sync.service_client import ServiceClient

    with ServiceClient(api_key=KEY, base_url=url) as service:
        training = service.create_lora_training_client(base_model=BASE, rank=4, seed=3)
        data = [types.Datum(model_input=types.ModelInput.from_ints(d["model_input"]["chunks"][0]["tokens"]),
                            loss_fn_inputs={"target_tokens": d["loss_fn_inputs"]["target_tokens"]["data"],
                                            "weights": d["loss_fn_inputs"]["weights"]["data"]}) for d in DATA]
        futs = []
        for _ in range(steps):
            futs.append(training.forward_backward(data, "cross_entropy"))
            training.optim_step(types.AdamParams(learning_rate=1e-2))
        losses = [f.result(timeout=600).metrics["loss:sum"] for f in futs]
        sampler = service.create_sampling_client(base_model=BASE)
        prompt = types.ModelInput.from_ints(list(b"Q: hi\nA:"))
        sfuts = [sampler.sample(prompt, 1, types.SamplingParams(max_tokens=3, seed=i)) for i in range(samples)]
        done = sum(1 for f in sfuts if len(f.result(timeout=600).sequences) == 1)
    return losses, done


def cmd_faults(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        with LocalTinkerServer(data_dir=Path(tmp) / "ref") as ref:
            expected, _ = _client_workload(ref.url, 0, args.steps)
        with LocalTinkerServer(data_dir=Path(tmp) / "faulty") as srv:
            proxy = _FaultProxy(srv.url, args.rate, random.Random(args.seed))
            threading.Thread(target=proxy.serve_forever, daemon=True).start()
            t0 = time.monotonic()
            try:
                got, done = _client_workload(f"http://127.0.0.1:{proxy.server_address[1]}", args.samples, args.steps)
            finally:
                proxy.shutdown()
                proxy.server_close()
    faults = sum(v for k, v in proxy.counts.items() if k != "pass")
    total = sum(proxy.counts.values())
    same = got == expected
    print(f"faults: {total} proxied requests, {faults} faulted ({faults / max(total, 1):.0%}: "
          f"{dict(proxy.counts)}); {done}/{args.samples} samples, {len(got)} training steps, losses equal to the "
          f"fault-free run: {same}; {time.monotonic() - t0:.1f} s")
    return 0 if same and done == args.samples else 1


# ============================================================================================== main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tests.soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("fuzz", help="fuzz every endpoint of the local server (zero 5xx)")
    p.add_argument("--iterations", type=int, default=3000)
    p.add_argument("--seed", type=int, default=1)
    p = sub.add_parser("kill", help="SIGKILL + restart the local server with >= 8 training steps in flight")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--pairs", type=int, default=8, help="forward_backward + optim_step pairs per round (>= 4)")
    p.add_argument("--seed", type=int, default=1)
    p = sub.add_parser("faults", help="samples and pipelined training through a faulting proxy")
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rate", type=float, default=0.25, help="fraction of requests faulted (default 0.25)")
    p.add_argument("--seed", type=int, default=1)
    sub.add_parser("all", help="fuzz, kill and faults with their defaults")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "all":
        parser = build_parser()
        return max(cmd_fuzz(parser.parse_args(["fuzz"])), cmd_kill(parser.parse_args(["kill"])),
                   cmd_faults(parser.parse_args(["faults"])))
    if args.command == "kill" and args.pairs < 4:
        raise SystemExit("--pairs must be >= 4 (8 requests in flight)")
    return {"fuzz": cmd_fuzz, "kill": cmd_kill, "faults": cmd_faults}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
