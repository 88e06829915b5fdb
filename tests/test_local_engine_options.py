"""Tests of the local engine's 0.38 surface: sampling options, stability records, hub-cache tokenizers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.test_local_engine import TINY, train_demo
from tinker_sync.local import _engine as E
from tinker_sync.local import _nn, _tokenizer
from tinker_sync.local._tokenizer import encode


@pytest.fixture(scope="module", name="engine")
def _engine() -> E.Engine:
    return E.Engine(TINY)


@pytest.fixture(scope="module", name="trained")
def _trained(engine: E.Engine) -> tuple[E.Adapter, list[float]]:
    return train_demo(engine)


# ---------------------------------------------------------------------------------------------- tokenizers
def test_hub_cache_layout_is_idempotent(tmp_path: Path) -> None:
    cache = _tokenizer.install_hub_cache(tmp_path / "hub")
    assert cache == tmp_path / "hub"
    for name, context in (("tiny-byte", 512), ("small-byte", 1024)):
        repo = cache / f"models--tinker-sync--{name}"
        rev = (repo / "refs" / "main").read_text(encoding="ascii")
        assert len(rev) == 40 and all(c in "0123456789abcdef" for c in rev)
        snapshot = repo / "snapshots" / rev
        assert sorted(p.name for p in snapshot.iterdir()) == [
            "config.json", "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]
        assert (snapshot / "tokenizer.json").read_bytes() == _tokenizer.TOKENIZER_PATH.read_bytes()
        config = json.loads((snapshot / "tokenizer_config.json").read_text(encoding="utf-8"))
        assert config["chat_template"] == _tokenizer.CHAT_TEMPLATE and config["model_max_length"] == context
        assert (config["eos_token"], config["pad_token"]) == ("<|endoftext|>", "<|pad|>")
        assert config["added_tokens_decoder"]["256"]["content"] == "<|endoftext|>"
    stamp = (snapshot / "tokenizer.json").stat().st_mtime_ns
    _tokenizer.install_hub_cache(cache)  # again: same revision, nothing rewritten
    assert [p.name for p in (repo / "snapshots").iterdir()] == [rev]
    assert (snapshot / "tokenizer.json").stat().st_mtime_ns == stamp
    assert not list(cache.rglob("*.tmp"))


def test_default_hub_cache_follows_huggingface_hub() -> None:
    home = Path("~").expanduser()
    assert _tokenizer.default_hub_cache({}) == home / ".cache" / "huggingface" / "hub"
    assert _tokenizer.default_hub_cache({"XDG_CACHE_HOME": "/x"}) == Path("/x/huggingface/hub")
    assert _tokenizer.default_hub_cache({"HF_HOME": "/h", "XDG_CACHE_HOME": "/x"}) == Path("/h/hub")
    assert _tokenizer.default_hub_cache({"HUGGINGFACE_HUB_CACHE": "/old", "HF_HOME": "/h"}) == Path("/old")
    assert _tokenizer.default_hub_cache({"HF_HUB_CACHE": "/c", "HUGGINGFACE_HUB_CACHE": "/old"}) == Path("/c")


_AUTO_TOKENIZER_CHECK = """
import json, sys
from transformers import AutoTokenizer
out = {}
for name in ("tinker-sync/tiny-byte", "tinker-sync/small-byte"):
    tok = AutoTokenizer.from_pretrained(name)
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    prompt = tok.apply_chat_template(chat[:1], tokenize=True, add_generation_prompt=True)
    prompt = prompt["input_ids"] if hasattr(prompt, "keys") else prompt  # transformers 5: a BatchEncoding
    out[name] = {
        "ids": tok.encode("h\u00e9llo"), "eos": tok.eos_token_id, "pad": tok.pad_token_id,
        "text": tok.apply_chat_template(chat, tokenize=False), "prompt": [int(t) for t in prompt],
    }
json.dump(out, sys.stdout)
"""


def test_auto_tokenizer_loads_the_local_models_offline(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    pytest.importorskip("jinja2")
    cache = _tokenizer.install_hub_cache(tmp_path / "hub")
    # A child process: huggingface_hub reads HF_HUB_CACHE / HF_HUB_OFFLINE once, at import.
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "home")}
    env.pop("HUGGINGFACE_HUB_CACHE", None)
    proc = subprocess.run([sys.executable, "-c", _AUTO_TOKENIZER_CHECK], env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for info in json.loads(proc.stdout).values():
        assert info["ids"] == encode("héllo")
        assert (info["eos"], info["pad"]) == (E.EOS_TOKEN_ID, E.PAD_TOKEN_ID)
        assert info["text"] == "user: hi<|endoftext|>assistant: yo<|endoftext|>"
        assert info["prompt"] == encode("user: hi") + [E.EOS_TOKEN_ID] + encode("assistant: ")


# ---------------------------------------------------------------------------------------------- 0.38 sampling options
def _full_lsm(engine: E.Engine, adapter: E.Adapter | None, tokens: list[int]) -> np.ndarray:
    s = engine.spec
    logits, _ = _nn.forward(engine.base, engine._effective(adapter), np.array([tokens]), n_layers=s.n_layers,
                            n_heads=s.n_heads)
    out: np.ndarray = _nn.log_softmax(logits[0].astype(np.float64))
    return out


def test_topk_sample_logprobs(engine: E.Engine, trained: tuple[E.Adapter, list[float]]) -> None:
    adapter = trained[0]
    prompt = encode("The capital of Spain")
    kwargs = {"num_samples": 3, "max_tokens": 9, "temperature": 1.0, "seed": 5, "stop": []}
    result = engine.sample(adapter, prompt, topk_sample_logprobs=4, **kwargs)  # type: ignore[arg-type]
    plain = engine.sample(adapter, prompt, **kwargs)  # type: ignore[arg-type]
    assert [q.tokens for q in result.sequences] == [q.tokens for q in plain.sequences]  # the option changes no draw
    assert all(q.topk_logprobs is None for q in plain.sequences)
    for seq in result.sequences:
        assert seq.topk_logprobs is not None and len(seq.topk_logprobs) == len(seq.tokens)
        lsm = _full_lsm(engine, adapter, prompt + seq.tokens)
        for j, row in enumerate(seq.topk_logprobs):
            at = lsm[len(prompt) - 1 + j]
            best = np.argsort(-at, kind="stable")[:4]
            assert [t for t, _ in row] == [int(t) for t in best]
            np.testing.assert_allclose([lp for _, lp in row], at[best], atol=2e-4)
            if seq.tokens[j] in dict(row):
                assert dict(row)[seq.tokens[j]] == pytest.approx(seq.logprobs[j])
    with pytest.raises(ValueError, match="topk_sample_logprobs"):
        engine.sample(adapter, prompt, topk_sample_logprobs=-1)


def test_prompt_logprobs_last_n(engine: E.Engine, trained: tuple[E.Adapter, list[float]]) -> None:
    adapter = trained[0]
    prompt = encode("The capital of Italy is Rome.")
    full = engine.sample(adapter, prompt, max_tokens=1, prompt_logprobs=True, topk_prompt_logprobs=2, seed=0)
    last = engine.sample(adapter, prompt, max_tokens=1, prompt_logprobs=True, topk_prompt_logprobs=2, seed=0,
                         prompt_logprobs_last_n=4)
    assert last.prompt_logprobs is not None and full.prompt_logprobs is not None
    assert last.prompt_logprobs[:-4] == [None] * (len(prompt) - 4)
    assert last.prompt_logprobs[-4:] == full.prompt_logprobs[-4:]
    assert last.topk_prompt_logprobs is not None and full.topk_prompt_logprobs is not None
    assert last.topk_prompt_logprobs[:-4] == [None] * (len(prompt) - 4)
    assert last.topk_prompt_logprobs[-4:] == full.topk_prompt_logprobs[-4:]
    every = engine.sample(adapter, prompt, max_tokens=1, prompt_logprobs=True, prompt_logprobs_last_n=len(prompt) - 1)
    assert every.prompt_logprobs == full.prompt_logprobs
    with pytest.raises(ValueError, match="requires prompt_logprobs"):
        engine.sample(adapter, prompt, max_tokens=1, prompt_logprobs_last_n=2)
    for bad in (0, len(prompt)):
        with pytest.raises(ValueError, match="prompt_logprobs_last_n must be between 1 and"):
            engine.sample(adapter, prompt, max_tokens=1, prompt_logprobs=True, prompt_logprobs_last_n=bad)


def test_target_prompt_logprobs(engine: E.Engine, trained: tuple[E.Adapter, list[float]]) -> None:
    adapter = trained[0]
    prompt = encode("Water boils at")
    lsm = _full_lsm(engine, adapter, prompt)
    targets = np.full((len(prompt) - 1, 3), -1, dtype=np.int64)
    targets[:, 0] = prompt[1:]
    targets[::2, 2] = E.EOS_TOKEN_ID
    targets[1, 1] = ord("x")
    result = engine.sample(adapter, prompt, max_tokens=1, prompt_logprobs=True, target_prompt_logprobs=targets)
    out = result.target_prompt_logprobs
    assert out is not None and out.dtype == np.float32 and out.shape == targets.shape
    assert result.prompt_logprobs is not None
    np.testing.assert_allclose(out[:, 0], result.prompt_logprobs[1:], atol=1e-5)
    np.testing.assert_allclose(out[::2, 2], lsm[:-1:2, E.EOS_TOKEN_ID], atol=2e-4)
    assert out[1, 1] == pytest.approx(lsm[1, ord("x")], abs=2e-4)
    assert np.all(out[targets == -1] == 0.0)
    for bad, match in (
        (targets[:-1], r"has shape \[12, 3\]; it must be \[len\(prompt\) - 1, K\] = \[13, K\]"),
        (np.where(targets == -1, 999, targets), "token id 999 is out of range"),
        (targets.astype(np.float64), "integer token ids"),
    ):
        with pytest.raises(ValueError, match=match):
            engine.sample(adapter, prompt, max_tokens=1, target_prompt_logprobs=bad)


def test_prompt_alt_tokens(engine: E.Engine, trained: tuple[E.Adapter, list[float]]) -> None:
    adapter = trained[0]
    prompt = encode("The capital of France is Paris. The capital of Japan is")
    lsm = _full_lsm(engine, adapter, prompt)[:-1]
    greedy = engine.sample(adapter, prompt, max_tokens=1, temperature=0.0, prompt_alt_tokens_k=3)
    assert greedy.prompt_alt_tokens is not None
    tokens, logprobs = greedy.prompt_alt_tokens
    assert tokens.shape == logprobs.shape == (len(prompt) - 1, 3) and logprobs.dtype == np.float32
    assert np.all(tokens == np.argmax(lsm, axis=1)[:, None])
    kwargs = {"num_samples": 2, "max_tokens": 6, "temperature": 1.0, "seed": 11, "stop": []}
    drawn = engine.sample(adapter, prompt, prompt_alt_tokens_k=64, **kwargs)  # type: ignore[arg-type]
    plain = engine.sample(adapter, prompt, **kwargs)  # type: ignore[arg-type]
    assert drawn.sequences == plain.sequences and plain.prompt_alt_tokens is None
    assert drawn.prompt_alt_tokens is not None
    tokens, logprobs = drawn.prompt_alt_tokens
    np.testing.assert_allclose(logprobs, np.take_along_axis(lsm, tokens, axis=1), atol=2e-4)
    # draws at temperature 1 follow the model: their mean logprob is close to minus the mean entropy
    entropy = -np.sum(np.exp(lsm) * lsm, axis=1)
    assert float(np.mean(logprobs)) == pytest.approx(-float(np.mean(entropy)), abs=0.1)
    assert len(np.unique(tokens)) > len(np.unique(np.argmax(lsm, axis=1)))
    again = engine.sample(adapter, prompt, prompt_alt_tokens_k=64, **kwargs)  # type: ignore[arg-type]
    assert again.prompt_alt_tokens is not None and np.array_equal(again.prompt_alt_tokens[0], tokens)
    with pytest.raises(ValueError, match="prompt_alt_tokens_k must be at most 64"):
        engine.sample(adapter, prompt, max_tokens=1, prompt_alt_tokens_k=65)


def test_stability_records_give_behaviour_logprobs(engine: E.Engine, trained: tuple[E.Adapter, list[float]]) -> None:
    adapter = trained[0].snapshot()
    prompt = encode("The capital of Japan")
    result = engine.sample(adapter, prompt, num_samples=2, max_tokens=8, seed=3, stop=[], record_stability_info=True,
                           prompt_logprobs=True)
    assert result.stability is not None and len(result.stability) == 2
    assert engine.sample(adapter, prompt, max_tokens=2).stability is None
    records = {f"req-{i}": r for i, r in enumerate(result.stability)}
    for seq, record in zip(result.sequences, result.stability):
        assert list(record.tokens) == seq.tokens and list(record.logprobs) == seq.logprobs
        assert list(record.prompt_tokens) == prompt and np.isnan(record.prompt_logprobs[0])
        assert list(record.prompt_logprobs[1:]) == result.prompt_logprobs[1:]  # type: ignore[index]
        assert not record.tokens.flags.writeable
    seq = result.sequences[1]
    full = prompt + seq.tokens
    targets = np.array(full[1:])
    spans = [("prompt", "req-1", 1, len(prompt) - 1), ("sampled", "req-1", 0, len(seq.tokens))]
    old = E.behaviour_logprobs(spans, records, targets)
    np.testing.assert_array_equal(old, list(result.stability[1].prompt_logprobs[1:]) + seq.logprobs)
    # on-policy, StableReinforce's weight is 1 and its KL penalty ~0: the loss is -sum(A * lp)
    adv = np.linspace(-1, 1, targets.size)
    datum = E.EngineDatum(full[:-1], {"target_tokens": targets, "logprobs": old, "advantages": adv})
    _, metrics = engine.forward_backward(adapter, [datum], "stable_reinforce", {"kl_coeff": 1.0}, forward_only=True)
    assert metrics["loss:sum"] == pytest.approx(-float(np.sum(adv * old)), abs=1e-3)
    for bad_spans, match in (
        ([("sampled", "req-9", 0, targets.size)], "no stability info for sequence_id 'req-9'"),
        ([("prompt", "req-1", 0, len(prompt)), ("sampled", "req-1", 0, len(seq.tokens) - 1)], "position 0"),
        (spans[:1], "cover 19 of the 27"),
        ([spans[0], ("sampled", "req-0", 0, len(seq.tokens))], r"target_tokens\[\d+\] is \d+ but 'req-0' has"),
        ([spans[0], ("sampled", "req-1", 1, len(seq.tokens))], "is past the 8 sampled tokens"),
        ([("weird", "req-1", 0, 1)], "kind must be"),
    ):
        with pytest.raises(ValueError, match=match):
            E.behaviour_logprobs(bad_spans, records, targets)
