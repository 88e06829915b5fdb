"""Sample thousands of prompts through one SamplingClient into a JSONL file, resumably.

At most ``--max-in-flight`` sampling requests are outstanding at any time (a sliding window of Futures,
refilled as each one finishes), so memory and server load stay bounded however many prompts there are.
Each result is appended to ``--output`` the moment it completes (completion order, one JSON object per
line, flushed), progress is shown as it goes, and throughput is printed at the end. Run it again with
the same ``--output`` and it skips every prompt already written: an interrupted job resumes where it
stopped (a half-written last line from a crash is discarded and redone).

Offline, against the embedded local server (no network, no key)::

    python examples/batch_sampling.py --prompts 5000 --output samples.jsonl

Prompts come from ``--input`` (a text file, one prompt per line) or are generated. Against the hosted
service, pass ``--base-url`` and ``--base-model`` (and set ``TINKER_API_KEY``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from pathlib import Path
from typing import IO

from _connect import add_server_args, open_service  # examples/_connect.py: --base-url, or an embedded server

import tinker_sync
from tinker_sync import types


def load_prompts(args: argparse.Namespace) -> list[str]:
    """The prompts to sample, from ``--input`` or generated (``--prompts`` of them)."""
    if args.input:
        return [line.rstrip("\n") for line in Path(args.input).read_text(encoding="utf-8").splitlines() if line]
    return [f"Story {i}:" for i in range(args.prompts)]


def done_ids(path: Path) -> dict[int, str]:
    """Prompt id -> prompt of the results already in ``path``.

    A trailing partial line (a crash mid-write) is cut off, so that prompt is sampled again.
    """
    if not path.exists():
        return {}
    raw = path.read_bytes()
    complete = raw[: raw.rfind(b"\n") + 1]
    if len(complete) != len(raw):
        with path.open("r+b") as f:
            f.truncate(len(complete))
    records = (json.loads(line) for line in complete.decode("utf-8").splitlines() if line.strip())
    return {r["id"]: r["prompt"] for r in records}


class Progress:
    """A one-line progress report on stderr: rewritten in place on a terminal, one line per 10 % otherwise."""

    def __init__(self, total: int, stream: IO[str] = sys.stderr) -> None:
        self.total, self.done, self.stream = total, 0, stream
        self.start = time.monotonic()
        self.tty = stream.isatty()
        self._next_report = max(1, total // 10)

    def advance(self) -> None:
        """Count one finished prompt and report if it is time to."""
        self.done += 1
        if self.tty or self.done >= self._next_report or self.done == self.total:
            self._next_report = self.done + max(1, self.total // 10)
            rate = self.done / max(time.monotonic() - self.start, 1e-9)
            line = f"{self.done}/{self.total} ({100 * self.done / max(self.total, 1):.0f} %)  {rate:.1f} prompts/s"
            self.stream.write(("\r" + line) if self.tty else line + "\n")
            self.stream.flush()

    def finish(self) -> None:
        """End the progress line."""
        if self.tty:
            self.stream.write("\n")


def sample_all(sampler: tinker_sync.SamplingClient, tokenizer: tinker_sync.Tokenizer,
               todo: Iterator[tuple[int, str]], params: types.SamplingParams, max_in_flight: int,
               out: IO[str], progress: Progress) -> int:
    """Keep up to ``max_in_flight`` requests outstanding; write each result as it completes. Returns the count."""
    pending: dict[Future[types.SampleResponse], tuple[int, str]] = {}
    written = 0
    while True:
        for idx, prompt in todo:  # refill the window
            model_input = types.ModelInput.from_ints(tokenizer.encode(prompt, add_special_tokens=False))
            pending[sampler.sample(model_input, num_samples=1, sampling_params=params)] = (idx, prompt)
            if len(pending) >= max_in_flight:
                break
        if not pending:
            return written
        finished, _ = wait(pending, timeout=600, return_when=FIRST_COMPLETED)
        if not finished:
            raise TimeoutError("no sampling request finished within 600 s")
        for fut in finished:
            idx, prompt = pending.pop(fut)
            seq = fut.result().sequences[0]  # a failed request raises here and stops the job; rerun to resume
            record = {"id": idx, "prompt": prompt, "completion": tokenizer.decode(seq.tokens),
                      "tokens": list(seq.tokens), "stop_reason": seq.stop_reason}
            out.write(json.dumps(record) + "\n")
            out.flush()
            written += 1
            progress.advance()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_server_args(parser)
    parser.add_argument("--input", help="text file with one prompt per line (default: generated prompts)")
    parser.add_argument("--prompts", type=int, default=2000, help="how many prompts to generate without --input")
    parser.add_argument("--output", default="samples.jsonl")
    parser.add_argument("--max-in-flight", type=int, default=64, help="most sampling requests outstanding at once")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--temperature", type=float, default=0.8)
    args = parser.parse_args()
    if args.max_in_flight < 1:
        parser.error("--max-in-flight must be at least 1")

    prompts = load_prompts(args)
    output = Path(args.output)
    skip = done_ids(output)
    changed = [i for i, p in skip.items() if i >= len(prompts) or prompts[i] != p]
    if changed:
        parser.error(f"{output} holds results for other prompts (id {changed[0]}); use a new --output")
    todo = [(i, p) for i, p in enumerate(prompts) if i not in skip]
    print(f"{len(prompts)} prompts, {len(prompts) - len(todo)} already in {output}, {len(todo)} to sample")

    with contextlib.ExitStack() as stack:
        service = open_service(stack, args, announce=False)
        sampler = service.create_sampling_client(base_model=args.base_model)
        tokenizer = sampler.get_tokenizer()
        params = types.SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature)
        out = stack.enter_context(output.open("a", encoding="utf-8"))
        progress = Progress(len(todo))
        start = time.monotonic()
        written = sample_all(sampler, tokenizer, iter(todo), params, args.max_in_flight, out, progress)
        progress.finish()
        elapsed = time.monotonic() - start
    rate = written / elapsed if elapsed > 0 else 0.0
    print(f"sampled {written} prompts in {elapsed:.2f} s ({rate:.1f} prompts/s, at most {args.max_in_flight} "
          f"in flight); {output} holds {len(done_ids(output))} results")


if __name__ == "__main__":
    main()
