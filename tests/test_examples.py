"""The examples run end to end against the embedded local server (as a user would run them)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _run(script: str, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TINKER_")}
    # the built-in tokenizer wrapper, as on a machine without the [hf] extra (CI): the examples then
    # run the same code everywhere, without the seconds transformers and torch take to import
    env["TINKER_SYNC_TOKENIZER_BACKEND"] = "tokenizers"
    out = subprocess.run([sys.executable, str(EXAMPLES / script), *args], check=False, capture_output=True, text=True,
                         timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_train_and_sample_learns_and_reproduces_the_completions() -> None:
    stdout = _run("train_and_sample.py")
    losses = [float(x) for x in re.findall(r"loss per target token ([0-9.]+)", stdout)]
    assert len(losses) == 30
    assert losses[-1] < 0.1 * losses[0], losses
    completions = re.findall(r"-> '(.*?)'  \(trained on '(.*?)'\)", stdout)
    assert len(completions) == 4
    assert all(got == want for got, want in completions), completions
    assert re.search(r"checkpoint training tinker://\S+/weights/demo-final", stdout)
    assert re.search(r"checkpoint sampler tinker://\S+/sampler_weights/demo-sampler", stdout)


def test_threaded_sampling_resolves_every_prompt() -> None:
    stdout = _run("threaded_sampling.py", "--prompts", "64", "--threads", "16")
    assert re.search(r"^64 samples from 16 threads", stdout, re.MULTILINE), stdout


def _rewards(stdout: str) -> list[float]:
    return [float(x) for x in re.findall(r"mean reward ([0-9.]+)  loss", stdout)]


def test_rl_loop_reward_rises_with_importance_sampling() -> None:
    stdout = _run("rl_loop.py", "--steps", "8", "--prompts", "4", "--group", "8", "--max-tokens", "8")
    rewards = _rewards(stdout)
    assert len(rewards) == 8, stdout
    # The untrained byte model writes lowercase letters ~10 % of the time; training must clearly raise that.
    assert rewards[0] < 0.25 and max(rewards[-2:]) > rewards[0] + 0.3, rewards


def test_rl_loop_reward_rises_with_ppo() -> None:
    stdout = _run("rl_loop.py", "--loss", "ppo", "--steps", "8", "--prompts", "4", "--group", "8", "--max-tokens", "8")
    rewards = _rewards(stdout)
    assert len(rewards) == 8, stdout
    assert max(rewards[-2:]) > rewards[0] + 0.3, rewards


def test_batch_sampling_streams_every_prompt_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "samples.jsonl"
    stdout = _run(
        "batch_sampling.py", "--prompts", "60", "--max-in-flight", "8", "--max-tokens", "4", "--output", str(out)
    )
    assert "0 already in" in stdout and re.search(r"sampled 60 prompts in .* prompts/s", stdout), stdout
    first = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["id"] for r in first) == list(range(60))
    assert all(r["prompt"] == f"Story {r['id']}:" and len(r["tokens"]) <= 4 for r in first)

    with out.open("a") as f:  # an interrupted write: a partial last line must be discarded and redone
        f.write('{"id": 61, "prom')
    stdout = _run("batch_sampling.py", "--prompts", "100", "--max-in-flight", "8", "--max-tokens", "4",
                  "--output", str(out))
    assert "60 already in" in stdout and "40 to sample" in stdout and "holds 100 results" in stdout, stdout
    lines = out.read_text().splitlines()
    assert [json.loads(line) for line in lines[:60]] == first  # earlier results untouched
    assert sorted(json.loads(line)["id"] for line in lines) == list(range(100))


def test_batch_sampling_refuses_an_output_written_for_other_prompts(tmp_path: Path) -> None:
    out = tmp_path / "samples.jsonl"
    out.write_text(json.dumps({"id": 0, "prompt": "something else"}) + "\n")
    proc = subprocess.run([sys.executable, str(EXAMPLES / "batch_sampling.py"), "--prompts", "3", "--output", str(out)],
                          check=False, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "other prompts" in proc.stderr


def test_checkpoints_walkthrough(tmp_path: Path) -> None:
    stdout = _run("checkpoints.py", "--steps", "3", "--download-dir", str(tmp_path))
    assert re.search(r"kept: expiry set to one week\n.*/weights/kept  public=False  expires=\d{4}-", stdout), stdout
    assert re.search(r"/weights/kept  public=True  expires=never", stdout), stdout
    after_delete = stdout.split("scratch deleted")[1].split("downloaded")[0]
    assert "/weights/kept" in after_delete and "/weights/scratch" not in after_delete
    assert sorted(p.name for p in (tmp_path / "kept").iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors", "checkpoint_complete"]
    assert "resumed with optimizer: " in stdout and "(same as the uninterrupted run's" in stdout.split(
        "resumed with optimizer: ")[1].splitlines()[0]
    assert "(differs from the uninterrupted run's" in stdout.split("resumed without optimizer: ")[1].splitlines()[0]


def test_rl_loop_draws_its_curves(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    png = tmp_path / "rewards.png"
    stdout = _run(
        "rl_loop.py", "--steps", "2", "--prompts", "2", "--group", "4", "--max-tokens", "4", "--plot", str(png)
    )
    assert "plot written to" in stdout and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
