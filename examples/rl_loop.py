"""On-policy RL: sample groups of completions over threads, score them, train with group-relative advantages.

Each step the current policy writes ``--group`` completions for each of ``--prompts`` prompts (one thread
per prompt, all sampling requests in flight together), a programmatic reward scores every completion,
advantages are the rewards minus their group's mean, and one ``forward_backward`` with the
``importance_sampling`` loss (``--loss ppo`` for the clipped objective) plus an ``optim_step`` moves the
policy. The sampler is then refreshed from the new weights, so the next step samples on-policy. (With
one update per batch the policy ratio starts at 1, so ``ppo``'s clipping bounds how far that update
trusts the sampler's logprobs rather than changing the first gradient.)

The default reward is the fraction of completion characters that are lowercase ASCII letters: the
tiny byte-level model starts near 10 % and learns to emit letters within a minute on a laptop CPU.

Offline, against the embedded local server (no network, no key)::

    python examples/rl_loop.py --plot rewards.png

Against the hosted Tinker service (or any Tinker-compatible server)::

    TINKER_API_KEY=tml-... python examples/rl_loop.py \\
        --base-url https://tinker.thinkingmachines.dev/services/tinker-prod \\
        --base-model Qwen/Qwen3-4B-Instruct-2507 --lr 4e-5
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import statistics
import string
from concurrent.futures import ThreadPoolExecutor

from _connect import add_server_args, open_service  # examples/_connect.py: --base-url, or an embedded server

import tinker_sync
from tinker_sync import types

PROMPTS = ["Once upon a time", "The weather today", "My favourite food", "In the beginning", "Dear friend,",
           "The answer is", "Q: why? A:", "Note to self:"]
_TARGET = frozenset(string.ascii_lowercase)


def reward(text: str) -> float:
    """Fraction of the completion's characters that are lowercase ASCII letters (0 for an empty one)."""
    return sum(ch in _TARGET for ch in text) / len(text) if text else 0.0


class Rollout:
    """One sampled completion of a prompt, with what training needs: tokens, sampler logprobs, reward."""

    def __init__(self, prompt: list[int], tokens: list[int], logprobs: list[float], reward: float) -> None:
        self.prompt, self.tokens, self.logprobs, self.reward = prompt, tokens, logprobs, reward


def sample_group(sampler: tinker_sync.SamplingClient, tokenizer: tinker_sync.Tokenizer, prompt: str, group: int,
                 params: types.SamplingParams) -> list[Rollout]:
    """Sample ``group`` completions of one prompt and score them (runs in a worker thread)."""
    prompt_ids = tokenizer.encode(prompt, add_special_tokens=False)
    result = sampler.sample(types.ModelInput.from_ints(prompt_ids), num_samples=group,
                            sampling_params=params).result(timeout=600)
    rollouts = []
    for seq in result.sequences:
        if seq.logprobs is None:
            raise RuntimeError("the sampler returned no logprobs; importance sampling needs them")
        text = tokenizer.decode([t for t in seq.tokens if t != tokenizer.eos_token_id])
        rollouts.append(Rollout(prompt_ids, list(seq.tokens), list(seq.logprobs), reward(text)))
    return rollouts


def to_datums(group: list[Rollout]) -> list[types.Datum]:
    """Datums for one group, each completion's advantage being its reward minus the group mean.

    Groups where every completion scored the same carry no signal and give no datums.
    """
    mean = statistics.fmean(r.reward for r in group)
    datums = []
    for r in group:
        advantage = r.reward - mean
        if not r.tokens or abs(advantage) < 1e-9:
            continue
        tokens = r.prompt + r.tokens
        n_prompt = len(r.prompt) - 1  # target positions that predict prompt tokens: no loss there
        datums.append(types.Datum(
            model_input=types.ModelInput.from_ints(tokens[:-1]),
            loss_fn_inputs={
                "target_tokens": tokens[1:],
                "logprobs": [0.0] * n_prompt + r.logprobs,
                "advantages": [0.0] * n_prompt + [advantage] * len(r.tokens),
            },
        ))
    return datums


def plot(path: str, rewards: list[float], losses: list[float]) -> None:
    """Draw reward and loss per step into ``path`` (needs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_r, ax_l) = plt.subplots(1, 2, figsize=(9, 3.5))
    steps = range(1, len(rewards) + 1)
    ax_r.plot(steps, rewards, marker="o")
    ax_r.set(xlabel="step", ylabel="mean reward", title="reward")
    ax_l.plot(steps, losses, marker="o", color="tab:red")
    ax_l.set(xlabel="step", ylabel="loss per token", title="loss")
    fig.tight_layout()
    fig.savefig(path)
    print("plot written to", path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_server_args(parser)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--prompts", type=int, default=8, help="prompts per step (cycled from a fixed list)")
    parser.add_argument("--group", type=int, default=8, help="completions sampled per prompt")
    parser.add_argument("--max-tokens", type=int, default=12)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--loss", choices=["importance_sampling", "ppo"], default="importance_sampling")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", metavar="PNG", help="draw reward and loss curves (needs matplotlib)")
    args = parser.parse_args()
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        parser.error("--plot needs matplotlib (pip install matplotlib)")

    with contextlib.ExitStack() as stack:
        service = open_service(stack, args)
        training = service.create_lora_training_client(base_model=args.base_model, rank=args.rank, seed=args.seed)
        tokenizer = training.get_tokenizer()
        sampler = training.save_weights_and_get_sampling_client()
        pool = stack.enter_context(ThreadPoolExecutor(max_workers=args.prompts, thread_name_prefix="rollout"))
        config = {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2} if args.loss == "ppo" else None
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.prompts)]
        rewards: list[float] = []
        losses: list[float] = []

        for step in range(args.steps):
            params = types.SamplingParams(max_tokens=args.max_tokens, temperature=1.0, seed=args.seed * 10_000 + step)
            # One thread per prompt, each blocking on its own sampling Future: every request is in flight at once.
            rollout = functools.partial(sample_group, sampler, tokenizer, group=args.group, params=params)
            groups = list(pool.map(rollout, prompts))
            step_reward = statistics.fmean(r.reward for g in groups for r in g)
            datums = [d for g in groups for d in to_datums(g)]
            loss = float("nan")
            if datums:
                fwd_bwd = training.forward_backward(datums, args.loss, loss_fn_config=config)
                optim = training.optim_step(types.AdamParams(learning_rate=args.lr))
                n_tokens = sum(len(g_r.tokens) for g in groups for g_r in g)
                loss = fwd_bwd.result(timeout=600).metrics["loss:sum"] / max(n_tokens, 1)
                optim.result(timeout=600)
                # Sample the next step from the weights just trained (on-policy).
                sampler = training.save_weights_and_get_sampling_client()
            rewards.append(step_reward)
            losses.append(loss)
            example = tokenizer.decode(groups[0][0].tokens)
            shown = f"{loss:+.4f}" if datums else "   n/a (every group scored evenly, nothing to learn)"
            print(f"step {step + 1:3d}  mean reward {step_reward:.3f}  loss {shown}  datums {len(datums):3d}  "
                  f"e.g. {example!r}")

        k = max(1, len(rewards) // 4)
        print(f"mean reward first {k} steps {statistics.fmean(rewards[:k]):.3f} -> "
              f"last {k} steps {statistics.fmean(rewards[-k:]):.3f}")
        if args.plot:
            plot(args.plot, rewards, losses)


if __name__ == "__main__":
    main()
