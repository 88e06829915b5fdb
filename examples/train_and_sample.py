"""Fine-tune a LoRA adapter, save it, sample from it and list its checkpoints, with blocking calls only.

Offline, against the embedded local server (no network, no key)::

    python examples/train_and_sample.py

Against the hosted Tinker service (or any Tinker-compatible server), the same code::

    TINKER_API_KEY=tml-... python examples/train_and_sample.py \
        --base-url https://tinker.thinkingmachines.dev/services/tinker-prod \
        --base-model Qwen/Qwen3-4B-Instruct-2507 --lr 1e-4
"""

from __future__ import annotations

import argparse
import contextlib

from _connect import add_server_args, open_service  # examples/_connect.py: --base-url, or an embedded server

import tinker_sync
from tinker_sync import types

PAIRS = [
    ("The capital of France is", " Paris."),
    ("The capital of Italy is", " Rome."),
    ("The capital of Japan is", " Tokyo."),
    ("The capital of Kenya is", " Nairobi."),
]


def make_datum(tokenizer: tinker_sync.Tokenizer, prompt: str, completion: str) -> types.Datum:
    """Next-token datum that puts loss weight on the completion (and its end-of-text token) only."""
    prompt_ids = tokenizer.encode(prompt, add_special_tokens=False)
    completion_ids = tokenizer.encode(completion, add_special_tokens=False) + [tokenizer.eos_token_id]
    tokens = prompt_ids + completion_ids
    weights = [0.0] * (len(prompt_ids) - 1) + [1.0] * len(completion_ids)
    return types.Datum(
        model_input=types.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={"target_tokens": tokens[1:], "weights": weights},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_server_args(parser)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-2)
    args = parser.parse_args()

    with contextlib.ExitStack() as stack:
        service = open_service(stack, args)

        training = service.create_lora_training_client(base_model=args.base_model, rank=args.rank, seed=0)
        tokenizer = training.get_tokenizer()
        data = [make_datum(tokenizer, prompt, completion) for prompt, completion in PAIRS]
        n_target = sum(sum(d.loss_fn_inputs["weights"].data) for d in data)

        for step in range(args.steps):
            # Both requests are in flight at once; the server applies them in submission order.
            fwd_bwd = training.forward_backward(data, "cross_entropy")
            optim = training.optim_step(types.AdamParams(learning_rate=args.lr))
            loss = fwd_bwd.result(timeout=600).metrics["loss:sum"] / n_target
            optim.result(timeout=600)
            print(f"step {step + 1:3d}  loss per target token {loss:.4f}")

        print("saved", training.save_state("demo-final").result(timeout=600).path)
        sampler_path = training.save_weights_for_sampler("demo-sampler").result(timeout=600).path
        sampler = training.create_sampling_client(sampler_path)
        params = types.SamplingParams(max_tokens=16, temperature=0.0, stop=["."])
        for prompt, expected in PAIRS:
            prompt_input = types.ModelInput.from_ints(tokenizer.encode(prompt, add_special_tokens=False))
            result = sampler.sample(prompt_input, num_samples=1, sampling_params=params).result(timeout=600)
            text = tokenizer.decode(result.sequences[0].tokens)
            print(f"{prompt!r} -> {text!r}  (trained on {expected!r})")

        rest = service.create_rest_client()
        for ckpt in rest.list_checkpoints(training.model_id).result(timeout=60).checkpoints:
            print("checkpoint", ckpt.checkpoint_type, ckpt.tinker_path)


if __name__ == "__main__":
    main()
