"""``python -m tests.soak <mode> [options]``: the reliability suite (see ``--help``)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

# Before numpy loads (the in-process server of the faults mode): single-threaded BLAS keeps every run
# bit-reproducible and leaves the shared cores to the server.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

_DESCRIPTION = """\
Reliability soak of tinker_sync against the local server (all traffic stays on 127.0.0.1).
Every mode is bounded in count and time, prints its figures at the end and exits 1 if a check failed.

modes:
  faults   N samples from a thread fan-out plus M pipelined forward_backward+optim_step pairs through a
           faulting proxy (dropped connections, answers lost after the server applied the request,
           429/503/500 with Retry-After, delays; >= 20% of requests). Checks every sample resolved once
           and matches the fault-free answer, and the losses and final weights are bit-identical to a
           fault-free run with the same seed.
  restart  SIGKILLs `python -m tinker_sync.local` at random points while >= 8 training pairs are in flight,
           restarts it on the same port and data dir, and checks the same client finishes the run exactly
           once (losses and final weights equal to a fault-free run). A hang is detected with a bound.
  fuzz     malformed requests to every endpoint of the local server (wrong types, deep nesting, huge
           numbers, lone surrogates, huge sparse shapes, oversized and random bodies, protobuf garbage).
           Requires zero 500s and a server that stays alive; lists every 500 with its input.
  all      the three in turn.

--quick shrinks every mode to seconds (tests/test_soak_quick.py runs similar sizes).
Run from the repository root: python -m tests.soak all --quick
"""


def build_parser() -> argparse.ArgumentParser:
    """The command line of the soak suite."""
    parser = argparse.ArgumentParser(prog="python -m tests.soak", description=_DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["faults", "restart", "fuzz", "all"])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (seconds), for CI")
    parser.add_argument("--seed", type=int, default=0, help="seed of the workload and of every fault draw")
    parser.add_argument("--samples", type=int, help="faults: samples to run (default 10000; quick 200)")
    parser.add_argument("--steps", type=int, help="faults/restart: training pairs (default 200 / 40; quick 20 / 24)")
    parser.add_argument("--threads", type=int, default=32, help="faults: sampling threads (default 32)")
    parser.add_argument("--fault-rate", type=float, default=0.25,
                        help="faults: share of requests that meet a fault (default 0.25)")
    parser.add_argument("--kills", type=int, help="restart: SIGKILLs per run (default 3; quick 1)")
    parser.add_argument("--runs", type=int, help="restart: independent runs (default 4; quick 1)")
    parser.add_argument("--hang-timeout", type=float,
                        help="restart: seconds after which an unresolved step counts as a hang (default 60; quick 10)")
    parser.add_argument("--cases", type=int, help="fuzz: cap on cases per endpoint (default 400; quick 25)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="overall bound per mode in seconds")
    parser.add_argument("-v", "--verbose", action="store_true", help="log tinker_sync warnings to stderr")
    return parser


def _size(value: Any, quick: bool, quick_default: Any, default: Any) -> Any:
    """An option's value: given on the command line, else the quick or the full default."""
    if value is not None:
        return value
    return quick_default if quick else default


def _faults(args: argparse.Namespace) -> int:
    from tests.soak import faults

    return faults.main(faults.FaultsOptions(
        samples=_size(args.samples, args.quick, 200, 10_000), steps=_size(args.steps, args.quick, 20, 200),
        threads=args.threads, check_samples=_size(None, args.quick, 50, 500), fault_rate=args.fault_rate,
        seed=args.seed, timeout_s=args.timeout))


def _restart(args: argparse.Namespace) -> int:
    from tests.soak import restart

    return restart.main(restart.RestartOptions(
        steps=_size(args.steps, args.quick, 24, 40), kills=_size(args.kills, args.quick, 1, 3),
        runs=_size(args.runs, args.quick, 1, 4), hang_timeout_s=_size(args.hang_timeout, args.quick, 10.0, 60.0),
        seed=args.seed, timeout_s=args.timeout))


def _fuzz(args: argparse.Namespace) -> int:
    from tests.soak import fuzz

    return fuzz.main(fuzz.FuzzOptions(cases_per_endpoint=_size(args.cases, args.quick, 25, 400),
                                      big_bodies=not args.quick, seed=args.seed, timeout_s=args.timeout))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the chosen mode(s); exit code 0 when every check held."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.verbose else logging.CRITICAL,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    modes = ["faults", "restart", "fuzz"] if args.mode == "all" else [args.mode]
    code = 0
    for mode in modes:
        code |= {"faults": _faults, "restart": _restart, "fuzz": _fuzz}[mode](args)
    return code


if __name__ == "__main__":
    sys.exit(main())
