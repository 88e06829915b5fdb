"""Fan batch sampling out over plain threads: 256 prompts from 32 threads, one shared SamplingClient.

    python examples/threaded_sampling.py            # embedded local server
"""

from __future__ import annotations

import argparse
import contextlib
import time
from concurrent.futures import ThreadPoolExecutor

from _connect import add_server_args, open_service  # examples/_connect.py: --base-url, or an embedded server

from tinker_sync import types


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_server_args(parser)
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--threads", type=int, default=32)
    args = parser.parse_args()

    with contextlib.ExitStack() as stack:
        service = open_service(stack, args, announce=False)
        sampler = service.create_sampling_client(base_model=args.base_model)
        tokenizer = sampler.get_tokenizer()
        params = types.SamplingParams(max_tokens=8, temperature=0.7, seed=1)

        def one(i: int) -> str:
            prompt = types.ModelInput.from_ints(tokenizer.encode(f"Story {i}:", add_special_tokens=False))
            # Each thread blocks on its own future; the client keeps connections and threads bounded.
            return tokenizer.decode(sampler.sample(prompt, 1, params).result(timeout=600).sequences[0].tokens)

        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=args.threads) as pool:
            texts = list(pool.map(one, range(args.prompts)))
        elapsed = time.perf_counter() - start
        print(f"{len(texts)} samples from {args.threads} threads in {elapsed:.2f} s; first: {texts[0]!r}")


if __name__ == "__main__":
    main()
