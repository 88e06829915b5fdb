"""Tests of the local numpy engine: tokenizer, gradients, AdamW, sampling, adapter persistence, the demo."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinker_sync.local import _engine as E
from tinker_sync.local import _nn, _optim, _safetensors, _tokenizer
from tinker_sync.local._tokenizer import decode, encode

TINY = "tinker-sync/tiny-byte"

PAIRS = [
    ("The capital of France is", " Paris."),
    ("The capital of Japan is", " Tokyo."),
    ("The capital of Italy is", " Rome."),
    ("The capital of Spain is", " Madrid."),
    ("Water boils at", " 100 degrees."),
]


def sft_datum(prompt: str, completion: str) -> E.EngineDatum:
    p = encode(prompt)
    c = encode(completion) + [E.EOS_TOKEN_ID]
    full = p + c
    weights = np.array([0.0] * (len(p) - 1) + [1.0] * len(c))
    return E.EngineDatum(full[:-1], {"target_tokens": np.array(full[1:]), "weights": weights})


@pytest.fixture(scope="module")
def engine() -> E.Engine:
    return E.Engine(TINY)


@pytest.fixture(scope="module")
def engine64() -> E.Engine:
    return E.Engine(TINY, dtype=np.float64)


@pytest.fixture(scope="module")
def trained(engine: E.Engine) -> tuple[E.Adapter, list[float]]:
    return train_demo(engine)


def train_demo(engine: E.Engine) -> tuple[E.Adapter, list[float]]:
    """THE DEMO: 30 supervised steps on five short sentences."""
    adapter = engine.new_adapter(rank=8, seed=0)
    data = [sft_datum(p, c) for p, c in PAIRS]
    losses = []
    for _ in range(30):
        _, metrics = engine.forward_backward(adapter, data, "cross_entropy")
        losses.append(metrics["loss:sum"])
        engine.optim_step(adapter, learning_rate=E.RECOMMENDED_LEARNING_RATES[TINY])
    return adapter, losses


# ---------------------------------------------------------------------------------------------- tokenizer
def test_committed_tokenizer_json_matches_generator() -> None:
    committed = _tokenizer.TOKENIZER_PATH.read_text(encoding="utf-8")
    assert json.loads(committed) == json.loads(_tokenizer.build_tokenizer_json())
    assert committed == _tokenizer.build_tokenizer_json()


def test_token_ids_are_bytes_and_specials_are_fixed() -> None:
    tok = _tokenizer.load_tokenizer()
    assert tok.get_vocab_size() == E.VOCAB_SIZE == 258
    assert tok.token_to_id("<|endoftext|>") == E.EOS_TOKEN_ID == 256
    assert tok.token_to_id("<|pad|>") == E.PAD_TOKEN_ID == 257
    assert encode("Aé\n") == list("Aé\n".encode())
    assert encode("") == []


@settings(max_examples=60, deadline=None)
@given(st.text())
def test_tokenizer_round_trips_any_text(text: str) -> None:
    ids = encode(text.replace("<|", "<"))
    assert ids == list(text.replace("<|", "<").encode("utf-8"))
    assert _tokenizer.load_tokenizer().decode(ids) == text.replace("<|", "<")
    assert decode(ids) == text.replace("<|", "<")


# ---------------------------------------------------------------------------------------------- safetensors
def test_safetensors_round_trip_and_layout(tmp_path: Path) -> None:
    tensors = {"b": np.arange(6, dtype=np.float32).reshape(2, 3), "a": np.array([1, -2], dtype=np.int64)}
    path = tmp_path / "x.safetensors"
    _safetensors.save_file(tensors, path, {"k": "v"})
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    assert n % 8 == 0
    header = json.loads(raw[8 : 8 + n])
    assert header["a"] == {"dtype": "I64", "shape": [2], "data_offsets": [0, 16]}
    assert header["b"]["data_offsets"] == [16, 40] and header["__metadata__"] == {"k": "v"}
    loaded, meta = _safetensors.load_file(path)
    assert meta == {"k": "v"}
    for k, v in tensors.items():
        assert loaded[k].dtype == v.dtype and np.array_equal(loaded[k], v)
    with pytest.raises(_safetensors.SafetensorsError):
        _safetensors.loads(raw[:-4])


# ---------------------------------------------------------------------------------------------- gradients
def _randomize(adapter: E.Adapter, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for a, b in adapter.params.values():
        a[...] = rng.standard_normal(a.shape) * 0.3
        b[...] = rng.standard_normal(b.shape) * 0.05
    adapter._merged = None


def _rl_data(engine: E.Engine, adapter: E.Adapter, seed: int) -> list[E.EngineDatum]:
    """RL data whose sampling logprobs put ratios clearly below, inside, or above [0.8, 1.2]."""
    rng = np.random.default_rng(seed)
    data = []
    for n in (5, 8):
        tokens = rng.integers(0, 256, n + 1)
        probe = E.EngineDatum(list(tokens[:-1]), {"target_tokens": tokens[1:], "weights": np.ones(n)})
        (out,), _ = engine.forward_backward(adapter, [probe], "cross_entropy", forward_only=True)
        offsets = rng.choice([-0.5, 0.0, 0.5], size=n)
        data.append(
            E.EngineDatum(
                list(tokens[:-1]),
                {
                    "target_tokens": tokens[1:],
                    "logprobs": out["logprobs"].astype(np.float64) + offsets,
                    "advantages": rng.standard_normal(n),
                },
            )
        )
    return data


def _ce_data(seed: int, k: int = 0) -> list[E.EngineDatum]:
    rng = np.random.default_rng(seed)
    data = []
    for n in (4, 9):
        tokens = rng.integers(0, E.VOCAB_SIZE, n)
        shape = (n, k) if k else (n,)
        data.append(
            E.EngineDatum(
                list(tokens),
                {"target_tokens": rng.integers(0, E.VOCAB_SIZE, shape), "weights": rng.uniform(0, 1, shape)},
            )
        )
    return data


GRAD_CASES = [
    ("cross_entropy", None, 0),
    ("cross_entropy", None, 3),
    ("importance_sampling", None, 0),
    ("ppo", None, 0),
    ("cispo", {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2}, 0),
    ("cispo", None, 0),
    ("dro", {"beta": 0.3}, 0),
    ("gspo", None, 0),
    ("gspo", {"clip_low_threshold": 0.7, "clip_high_threshold": 1.3}, 1),  # k=1: with a sequence_ratio_mask
    ("stable_reinforce", None, 0),
    ("stable_reinforce", {"kl_coeff": 0.3}, 0),
]


def _logprobs64(engine: E.Engine, adapter: E.Adapter, datum: E.EngineDatum) -> np.ndarray:
    """Target logprobs at full float64 precision (forward_backward reports them as float32)."""
    s = engine.spec
    logits, _ = _nn.forward(engine.base, engine._effective(adapter), np.array([datum.tokens]),
                            n_layers=s.n_layers, n_heads=s.n_heads)
    lsm = _nn.log_softmax(logits[0])
    targets = datum.loss_fn_inputs["target_tokens"]
    out: np.ndarray = lsm[np.arange(len(datum.tokens)), targets]
    return out


def _frozen_surrogate(
    loss_fn: str, config: dict[str, float] | None, data: list[E.EngineDatum], lps0: list[np.ndarray]
) -> list[tuple[str, list[E.EngineDatum]]]:
    """For losses with stop-gradients: plain losses whose summed value has the loss's gradient at ``lps0``.

    The detached factors (CISPO's clipped ratio, GSPO's sequence ratio and clip state, StableReinforce's
    truncated weight) are frozen at ``lps0`` into cross-entropy weights; StableReinforce's KL penalty
    ``kl * sum(ratio - log ratio - 1)`` is ``importance_sampling`` with advantages ``-kl`` plus
    cross-entropy weight ``kl`` (up to a constant). Summed losses are float64, unlike the float32 outputs.
    """
    cfg = {**E.CONFIG_DEFAULTS[loss_fn], **(config or {})}
    ce, kl_data = [], []
    for d, lp0 in zip(data, lps0):
        old, adv = d.loss_fn_inputs["logprobs"], d.loss_fn_inputs["advantages"]
        ratio0 = np.exp(lp0 - old)
        if loss_fn == "cispo":
            weights = np.clip(ratio0, cfg["clip_low_threshold"], cfg["clip_high_threshold"]) * adv
        elif loss_fn == "gspo":
            mask = d.loss_fn_inputs.get("sequence_ratio_mask", np.ones_like(lp0)) != 0
            s0 = float(np.exp(np.mean((lp0 - old)[mask])))
            low, high = cfg["clip_low_threshold"], cfg["clip_high_threshold"]
            active = (low <= s0 <= high) | (s0 * adv < np.clip(s0, low, high) * adv)
            weights = np.where(active, s0 * adv, 0.0)
        else:
            kl = cfg["kl_coeff"]
            weights = np.minimum(ratio0, 1.0) * adv + kl
            kl_inputs = {"target_tokens": d.loss_fn_inputs["target_tokens"], "logprobs": old,
                         "advantages": np.full(len(d.tokens), -kl)}
            kl_data.append(E.EngineDatum(d.tokens, kl_inputs))
        ce.append(E.EngineDatum(d.tokens, {"target_tokens": d.loss_fn_inputs["target_tokens"], "weights": weights}))
    return [("cross_entropy", ce)] + ([("importance_sampling", kl_data)] if kl_data else [])


@pytest.mark.parametrize(("loss_fn", "config", "k"), GRAD_CASES)
def test_gradients_match_finite_differences(
    engine64: E.Engine, loss_fn: str, config: dict[str, float] | None, k: int
) -> None:
    adapter = engine64.new_adapter(rank=3, seed=7)
    _randomize(adapter, 1)
    data = _ce_data(2, k) if loss_fn == "cross_entropy" else _rl_data(engine64, adapter, 3)
    if loss_fn == "gspo" and k:
        for d in data:
            n = len(d.tokens)
            d.loss_fn_inputs["sequence_ratio_mask"] = (np.arange(n) >= n // 3).astype(np.float64)
    engine64.forward_backward(adapter, data, loss_fn, config)
    grads = {m: (ga.copy(), gb.copy()) for m, (ga, gb) in adapter.grads.items()}
    assert set(grads) == set(engine64.module_shapes)  # every target group: attn, mlp, unembed
    assert any(np.any(gb != 0) for _, gb in grads.values())

    terms = [(loss_fn, data)]
    if loss_fn in ("cispo", "gspo", "stable_reinforce"):
        terms = _frozen_surrogate(loss_fn, config, data, [_logprobs64(engine64, adapter, d) for d in data])
        config = None

    def loss() -> float:
        adapter._merged = None
        return sum(engine64.forward_backward(adapter, d, f, config, forward_only=True)[1]["loss:sum"] for f, d in terms)

    rng = np.random.default_rng(5)
    eps = 1e-6
    for module, (a, b) in adapter.params.items():
        for idx, p in ((0, a), (1, b)):
            direction = rng.standard_normal(p.shape)
            p += eps * direction
            up = loss()
            p -= 2 * eps * direction
            down = loss()
            p += eps * direction
            numeric = (up - down) / (2 * eps)
            analytic = float(np.sum(grads[module][idx] * direction))
            assert analytic == pytest.approx(numeric, rel=1e-5, abs=1e-7), (module, idx)


@pytest.mark.parametrize("flags", [(True, False, False), (False, True, False), (False, False, True)])
def test_target_groups_select_modules(engine: E.Engine, flags: tuple[bool, bool, bool]) -> None:
    adapter = engine.new_adapter(rank=2, seed=0, train_attn=flags[0], train_mlp=flags[1], train_unembed=flags[2])
    kinds = {m.rsplit(".", 1)[-1] for m in adapter.params}
    assert kinds == [{"q", "k", "v", "o"}, {"up", "down"}, {"unembed"}][flags.index(True)]
    _, metrics = engine.forward_backward(adapter, _ce_data(0), "cross_entropy")
    assert metrics["loss:sum"] > 0
    assert any(np.any(gb != 0) for _, gb in adapter.grads.values())


def test_loss_values_follow_the_documented_formulas(engine64: E.Engine) -> None:
    adapter = engine64.new_adapter(rank=2, seed=0)
    data = _rl_data(engine64, adapter, 11)
    ce_data = [
        E.EngineDatum(d.tokens, {"target_tokens": d.loss_fn_inputs["target_tokens"], "weights": np.ones(len(d.tokens))})
        for d in data
    ]
    ce_out, ce_metrics = engine64.forward_backward(adapter, ce_data, "cross_entropy", forward_only=True)
    lps = [o["logprobs"].astype(np.float64) for o in ce_out]
    assert ce_metrics["loss:sum"] == pytest.approx(-sum(np.sum(lp) for lp in lps), rel=1e-6)
    olds = [d.loss_fn_inputs["logprobs"] for d in data]
    advs = [d.loss_fn_inputs["advantages"] for d in data]
    ratio = [np.exp(lp - old) for lp, old in zip(lps, olds)]
    expected = {
        "importance_sampling": sum(-np.sum(r * a) for r, a in zip(ratio, advs)),
        "ppo": sum(-np.sum(np.minimum(r * a, np.clip(r, 0.8, 1.2) * a)) for r, a in zip(ratio, advs)),
        "cispo": sum(-np.sum(np.clip(r, 0.0, 4.0) * lp * a) for r, lp, a in zip(ratio, lps, advs)),
        "dro": sum(-np.sum(lp * a - 0.5 * 0.05 * (lp - old) ** 2) for lp, old, a in zip(lps, olds, advs)),
        "stable_reinforce": sum(-np.sum(np.minimum(r, 1.0) * a * lp) for r, lp, a in zip(ratio, lps, advs)),
    }
    seq = [float(np.exp(np.mean(lp - old))) for lp, old in zip(lps, olds)]  # GSPO: one ratio per sequence
    expected["gspo"] = sum(
        -np.sum(np.minimum(s * a, np.clip(s, 1 - 3e-4, 1 + 4e-4) * a)) for s, a in zip(seq, advs)
    )
    for loss_fn, value in expected.items():
        outs, metrics = engine64.forward_backward(adapter, data, loss_fn, forward_only=True)
        assert metrics["loss:sum"] == pytest.approx(value, rel=1e-5), loss_fn
        assert metrics["num_tokens:sum"] == 13.0
        for out, lp in zip(outs, lps):
            assert out["logprobs"].dtype == np.float32
            np.testing.assert_allclose(out["logprobs"], lp, rtol=1e-6)
    kl = 0.2
    _, metrics = engine64.forward_backward(adapter, data, "stable_reinforce", {"kl_coeff": kl}, forward_only=True)
    log_ratio = [lp - old for lp, old in zip(lps, olds)]
    penalty = kl * sum(np.sum(np.exp(x) - x - 1.0) for x in log_ratio)
    assert metrics["loss:sum"] == pytest.approx(expected["stable_reinforce"] + penalty, rel=1e-5)
    # GSPO's ratio runs over the tokens sequence_ratio_mask marks; an empty mask means a ratio of 1
    masked = [
        E.EngineDatum(d.tokens, {**d.loss_fn_inputs, "sequence_ratio_mask": np.eye(1, len(d.tokens), 2).ravel()})
        for d in data
    ]
    _, metrics = engine64.forward_backward(adapter, masked, "gspo", {"clip_low_threshold": 0.0,
                                                                   "clip_high_threshold": 10.0}, forward_only=True)
    seq = [float(np.exp(lp[2] - old[2])) for lp, old in zip(lps, olds)]
    assert metrics["loss:sum"] == pytest.approx(sum(-np.sum(s * a) for s, a in zip(seq, advs)), rel=1e-5)
    empty = [E.EngineDatum(d.tokens, {**d.loss_fn_inputs, "sequence_ratio_mask": np.zeros(len(d.tokens))})
             for d in data]
    _, metrics = engine64.forward_backward(adapter, empty, "gspo", forward_only=True)
    assert metrics["loss:sum"] == pytest.approx(sum(-np.sum(a) for a in advs), rel=1e-5)


def test_forward_only_does_not_touch_gradients(engine: E.Engine) -> None:
    adapter = engine.new_adapter(rank=4, seed=0)
    engine.forward_backward(adapter, _ce_data(1), "cross_entropy", forward_only=True)
    assert all(not ga.any() and not gb.any() for ga, gb in adapter.grads.values())
    assert adapter.pending_grad_calls == 0


def test_gradient_accumulation_equals_one_big_batch(engine64: E.Engine) -> None:
    data = _ce_data(3) + _ce_data(4)
    one = engine64.new_adapter(rank=4, seed=9)
    two = engine64.new_adapter(rank=4, seed=9)
    _randomize(one, 2)
    _randomize(two, 2)
    _, m_all = engine64.forward_backward(one, data, "cross_entropy")
    _, m1 = engine64.forward_backward(two, data[:2], "cross_entropy")
    _, m2 = engine64.forward_backward(two, data[2:], "cross_entropy")
    assert m1["loss:sum"] + m2["loss:sum"] == pytest.approx(m_all["loss:sum"])
    for module in one.grads:
        for idx in (0, 1):
            np.testing.assert_allclose(two.grads[module][idx], one.grads[module][idx], rtol=1e-10, atol=1e-12)


def test_micro_batches_do_not_change_results(engine64: E.Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _ce_data(5) + _ce_data(6)
    ref = engine64.new_adapter(rank=2, seed=1)
    split = engine64.new_adapter(rank=2, seed=1)
    _randomize(ref, 0)
    _randomize(split, 0)
    out_ref, m_ref = engine64.forward_backward(ref, data, "cross_entropy")
    monkeypatch.setattr(E, "_MAX_ATTN_ELEMENTS", 1)  # one datum per micro-batch
    out_split, m_split = engine64.forward_backward(split, data, "cross_entropy")
    assert m_split["loss:sum"] == pytest.approx(m_ref["loss:sum"], rel=1e-12)
    for a, b in zip(out_ref, out_split):
        np.testing.assert_allclose(a["logprobs"], b["logprobs"], rtol=1e-6)
    for module in ref.grads:
        np.testing.assert_allclose(split.grads[module][1], ref.grads[module][1], rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------------------------------------- AdamW
def test_adamw_matches_reference_implementation(engine64: E.Engine) -> None:
    adapter = engine64.new_adapter(rank=2, seed=3, train_attn=False, train_mlp=False)
    _randomize(adapter, 4)
    hp = {"learning_rate": 0.01, "beta1": 0.8, "beta2": 0.9, "eps": 1e-8, "weight_decay": 0.1}
    ref_p = [p.copy() for p in adapter.params["unembed"]]
    ref_m = [np.zeros_like(p) for p in ref_p]
    ref_v = [np.zeros_like(p) for p in ref_p]
    for t in (1, 2, 3):
        engine64.forward_backward(adapter, _ce_data(t), "cross_entropy")
        grads = [g.copy() for g in adapter.grads["unembed"]]
        norm = float(np.sqrt(sum(np.sum(g**2) for g in grads)))
        clip = norm / 2 if t == 2 else 0.0  # the second step exercises clipping
        if clip:
            grads = [g * (clip / (norm + 1e-6)) for g in grads]
        for i in (0, 1):
            ref_m[i] = hp["beta1"] * ref_m[i] + (1 - hp["beta1"]) * grads[i]
            ref_v[i] = hp["beta2"] * ref_v[i] + (1 - hp["beta2"]) * grads[i] ** 2
            m_hat = ref_m[i] / (1 - hp["beta1"] ** t)
            v_hat = ref_v[i] / (1 - hp["beta2"] ** t)
            ref_p[i] = ref_p[i] * (1 - hp["learning_rate"] * hp["weight_decay"])
            ref_p[i] = ref_p[i] - hp["learning_rate"] * m_hat / (np.sqrt(v_hat) + hp["eps"])
        metrics = engine64.optim_step(adapter, grad_clip_norm=clip, **hp)
        assert metrics == {"grad_norm": pytest.approx(norm), "learning_rate": 0.01, "step": float(t)}
        for i in (0, 1):
            np.testing.assert_allclose(adapter.params["unembed"][i], ref_p[i], rtol=1e-10, atol=1e-14)
            assert not adapter.grads["unembed"][i].any()  # zeroed after the step


def test_optim_step_rejects_bad_hyperparameters(engine: E.Engine) -> None:
    adapter = engine.new_adapter(rank=2, seed=0)
    with pytest.raises(ValueError, match="beta2"):
        engine.optim_step(adapter, learning_rate=1e-3, beta2=1.0)
    with pytest.raises(ValueError, match="learning_rate"):
        engine.optim_step(adapter, learning_rate=float("nan"))


# ---------------------------------------------------------------------------------------------- Dimuon
def test_matrix_sign_is_the_polar_factor() -> None:
    rng = np.random.default_rng(0)
    for shape in ((40, 4), (3, 30), (8, 8)):
        m = rng.standard_normal(shape) * np.geomspace(1e-3, 10, shape[1])  # ill-conditioned columns
        u, _, vt = np.linalg.svd(m, full_matrices=False)
        np.testing.assert_allclose(_optim.matrix_sign(m), u @ vt, atol=1e-9)
    low_rank = rng.standard_normal((20, 1)) @ rng.standard_normal((1, 6))
    sign = _optim.matrix_sign(low_rank)
    assert np.linalg.norm(sign) == pytest.approx(1.0)  # one nonzero singular value, driven to 1
    assert not _optim.matrix_sign(np.zeros((5, 3))).any()


def test_dimuon_matches_reference_implementation(engine64: E.Engine) -> None:
    adapter = engine64.new_adapter(rank=3, seed=3, train_mlp=False, optimizer="dimuon")
    _randomize(adapter, 4)
    lr, beta1 = 0.02, 0.8
    ref_p = {m: [p.copy() for p in pair] for m, pair in adapter.params.items()}
    ref_mom = {m: [np.zeros_like(p) for p in pair] for m, pair in adapter.params.items()}
    for t in (1, 2, 3):
        engine64.forward_backward(adapter, _ce_data(t), "cross_entropy")
        grads = {m: [g.copy() for g in pair] for m, pair in adapter.grads.items()}
        norm = float(np.sqrt(sum(np.sum(g**2) for pair in grads.values() for g in pair)))
        clip = norm / 3 if t == 2 else 0.0
        coef = clip / (norm + 1e-6) if clip else 1.0
        for m, pair in grads.items():
            for i in (0, 1):
                ref_mom[m][i] = beta1 * ref_mom[m][i] + (1 - beta1) * pair[i] * coef
                u, _, vt = np.linalg.svd(ref_mom[m][i], full_matrices=False)
                direction = u @ vt
                ref_p[m][i] = ref_p[m][i] - lr * np.sqrt(3) / np.linalg.norm(direction) * direction
        metrics = engine64.step(adapter, {"type": "dimuon", "learning_rate": lr, "beta1": beta1,
                                          "grad_clip_norm": clip})
        assert metrics == {"grad_norm": pytest.approx(norm), "learning_rate": lr, "step": float(t)}
        for m, pair in adapter.params.items():
            for i in (0, 1):
                np.testing.assert_allclose(pair[i], ref_p[m][i], rtol=1e-8, atol=1e-10)
                assert not adapter.grads[m][i].any()
    # every matrix moved by exactly lr * sqrt(rank) in Frobenius norm on a step where its momentum is nonzero
    before = {m: [p.copy() for p in pair] for m, pair in adapter.params.items()}
    engine64.forward_backward(adapter, _ce_data(9), "cross_entropy")
    engine64.dimuon_step(adapter, learning_rate=lr)
    for m, pair in adapter.params.items():
        for i in (0, 1):
            assert np.linalg.norm(pair[i] - before[m][i]) == pytest.approx(lr * np.sqrt(3), rel=1e-9)


def test_dimuon_trains_and_optimizers_are_never_mixed(engine: E.Engine, tmp_path: Path) -> None:
    adapter = engine.new_adapter(rank=4, seed=0, optimizer="dimuon")
    data = [sft_datum(p, c) for p, c in PAIRS[:2]]
    losses = []
    for _ in range(8):
        losses.append(engine.forward_backward(adapter, data, "cross_entropy")[1]["loss:sum"])
        engine.step(adapter, {"type": "dimuon", "learning_rate": 0.01})
    assert losses[-1] < 0.75 * losses[0]
    with pytest.raises(ValueError, match="created with the 'dimuon' optimizer; AdamParams"):
        engine.optim_step(adapter, learning_rate=1e-3)
    with pytest.raises(ValueError, match="created with the 'adamw' optimizer; DimuonParams"):
        engine.step(engine.new_adapter(rank=2, seed=0), {"type": "dimuon", "learning_rate": 1e-3})
    with pytest.raises(ValueError, match="optimizer type 'lion' is not supported"):
        engine.step(adapter, {"type": "lion", "learning_rate": 1e-3})
    with pytest.raises(ValueError, match=r"DimuonParams: unknown field\(s\) \['damping'\]"):
        engine.step(adapter, {"type": "dimuon", "learning_rate": 1e-3, "damping": 0.1})
    with pytest.raises(ValueError, match="learning_rate is required"):
        engine.step(adapter, {"type": "dimuon"})
    with pytest.raises(ValueError, match="DimuonParams.beta1"):
        engine.dimuon_step(adapter, learning_rate=1e-3, beta1=1.0)
    with pytest.raises(ValueError, match="optimizer 'sgd' is not supported"):
        engine.new_adapter(rank=2, seed=0, optimizer="sgd")
    assert [_optim.parse_optimizer_config(c) for c in (None, {}, {"type": "adamw"}, {"type": "dimuon", "version": 1})] \
        == ["adamw", "adamw", "adamw", "dimuon"]
    for bad, match in (({"type": "dimuon", "version": 2}, "version 2"), ({"type": "lion"}, "'lion' is not supported"),
                       ({"type": "adamw", "beta1": 0.9}, r"unknown field\(s\) \['beta1'\]")):
        with pytest.raises(ValueError, match=match):
            _optim.parse_optimizer_config(bad)
    # the optimizer's identity and momentum come back with a full-state resume only
    adapter.save(tmp_path / "ck", with_optimizer=True)
    resumed = E.Adapter.load(engine, tmp_path / "ck", with_optimizer=True)
    assert resumed.optimizer == "dimuon" and resumed.step == 8
    np.testing.assert_array_equal(resumed.exp_avg["layers.0.q"][1], adapter.exp_avg["layers.0.q"][1])
    assert E.Adapter.load(engine, tmp_path / "ck", with_optimizer=False).optimizer == "adamw"


# ---------------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("loss_fn", "inputs", "tokens", "config", "match"),
    [
        ("mse", {}, [1, 2], None, "unknown loss_fn 'mse'"),
        ("cross_entropy", {"target_tokens": [1, 2]}, [1, 2], None, r"missing \['weights'\]"),
        ("cross_entropy", {"target_tokens": [1, 2, 3], "weights": [1, 1, 1]}, [1, 2], None, "N = 2"),
        ("cross_entropy", {"target_tokens": [1, 2], "weights": [1.0]}, [1, 2], None, "weights"),
        ("cross_entropy", {"target_tokens": [1, 999], "weights": [1, 1]}, [1, 2], None, "999 is out of range"),
        ("cross_entropy", {"target_tokens": [1, 2], "weights": [1, 1]}, [1, -3], None, "token id -3 at position 1"),
        ("cross_entropy", {"target_tokens": [1], "weights": [1]}, [], None, "empty"),
        ("cross_entropy", {"target_tokens": [1, 2], "weights": [1, float("nan")]}, [1, 2], None, "NaN"),
        ("cross_entropy", {"target_tokens": [1, 2], "weights": [1, 1], "advantages": [0, 0]}, [1, 2], None, "not used"),
        ("cross_entropy", {"target_tokens": [1, 2], "weights": [1, 1]}, [1, 2], {"beta": 1.0},
         "loss_fn_config key 'beta'"),
        ("ppo", {"target_tokens": [1, 2], "logprobs": [0, 0], "advantages": [1, float("inf")]}, [1, 2], None,
         "infinite"),
        ("dro", {"target_tokens": [1, 2], "logprobs": [0, 0]}, [1, 2], None, "advantages"),
        ("gspo", {"target_tokens": [1, 2], "logprobs": [0, 0], "advantages": [1, 1]}, [1, 2], {"beta": 1.0}, "allowed"),
        ("gspo", {"target_tokens": [1, 2], "logprobs": [0, 0], "advantages": [1, 1], "sequence_ratio_mask": [1]},
         [1, 2], None, "sequence_ratio_mask"),
        ("stable_reinforce", {"target_tokens": [1, 2], "advantages": [1, 1]}, [1, 2], None, "logprobs"),
        ("stable_reinforce", {"target_tokens": [1, 2], "logprobs": [0, 0], "advantages": [1, 1]}, [1, 2],
         {"kl_coeff": -1.0}, "kl_coeff"),
    ],
)
def test_bad_inputs_are_refused_with_clear_messages(
    engine: E.Engine, loss_fn: str, inputs: dict, tokens: list[int], config: dict | None, match: str
) -> None:
    adapter = engine.new_adapter(rank=2, seed=0)
    datum = E.EngineDatum(tokens, {k: np.asarray(v) for k, v in inputs.items()})
    with pytest.raises(ValueError, match=match):
        engine.forward_backward(adapter, [datum], loss_fn, config)
    assert all(not gb.any() for _, gb in adapter.grads.values())


def test_too_long_sequence_is_refused(engine: E.Engine) -> None:
    adapter = engine.new_adapter(rank=2, seed=0)
    n = engine.spec.max_context + 1
    datum = E.EngineDatum([1] * n, {"target_tokens": np.ones(n, dtype=np.int64), "weights": np.ones(n)})
    with pytest.raises(ValueError, match="maximum context"):
        engine.forward_backward(adapter, [datum], "cross_entropy")
    with pytest.raises(ValueError, match="lower max_tokens"):
        engine.sample(None, [1] * 500, max_tokens=20)


# ---------------------------------------------------------------------------------------------- the demo
def test_demo_training_drives_loss_down_and_greedy_reproduces_completions(
    engine: E.Engine, trained: tuple[E.Adapter, list[float]]
) -> None:
    adapter, losses = trained
    assert losses[-1] < 0.3 * losses[0]
    assert losses[-1] < 0.05 * losses[0]
    for prompt, completion in PAIRS:
        result = engine.sample(adapter, encode(prompt), num_samples=2, max_tokens=30, temperature=0.0)
        for seq in result.sequences:
            assert seq.tokens == encode(completion) + [E.EOS_TOKEN_ID]
            assert seq.stop_reason == "stop"
            assert decode(seq.tokens) == completion


def test_fresh_adapter_equals_base_model(engine: E.Engine) -> None:
    fresh = engine.new_adapter(rank=8, seed=123)
    prompt = encode("Hello, world")
    base = engine.sample(None, prompt, max_tokens=8, temperature=0.7, seed=4, prompt_logprobs=True)
    with_adapter = engine.sample(fresh, prompt, max_tokens=8, temperature=0.7, seed=4, prompt_logprobs=True)
    assert base == with_adapter


# ---------------------------------------------------------------------------------------------- sampling
def test_sampling_is_deterministic_per_seed(engine: E.Engine, trained: tuple[E.Adapter, list[float]]) -> None:
    adapter = trained[0].snapshot()
    prompt = encode("The capital of")
    a = engine.sample(adapter, prompt, num_samples=4, max_tokens=12, seed=42, top_k=50, top_p=0.9, stop=[])
    b = engine.sample(adapter, prompt, num_samples=4, max_tokens=12, seed=42, top_k=50, top_p=0.9, stop=[])
    c = engine.sample(adapter, prompt, num_samples=4, max_tokens=12, seed=43, top_k=50, top_p=0.9, stop=[])
    assert a == b
    assert a != c
    assert len({tuple(s.tokens) for s in a.sequences}) > 1  # the batch rows differ
    unseeded = engine.sample(adapter, prompt, num_samples=2, max_tokens=5, seed=None, stop=[])
    assert all(len(s.tokens) == 5 and s.stop_reason == "length" for s in unseeded.sequences)


def test_top_k_one_is_greedy(engine: E.Engine) -> None:
    prompt = encode("abc")
    greedy = engine.sample(None, prompt, max_tokens=10, temperature=0.0, stop=[])
    top1 = engine.sample(None, prompt, max_tokens=10, temperature=1.5, top_k=1, seed=1, stop=[])
    tiny_p = engine.sample(None, prompt, max_tokens=10, temperature=1.0, top_p=1e-6, seed=2, stop=[])
    assert greedy.sequences[0].tokens == top1.sequences[0].tokens == tiny_p.sequences[0].tokens


def test_stop_handling(engine: E.Engine, trained: tuple[E.Adapter, list[float]]) -> None:
    adapter = trained[0]
    prompt = encode("The capital of France is")
    expect = encode(" Paris.") + [E.EOS_TOKEN_ID]

    def run(stop: object, max_tokens: int | None = 20) -> E.SampledSequence:
        return engine.sample(adapter, prompt, max_tokens=max_tokens, temperature=0.0, stop=stop).sequences[0]  # type: ignore[arg-type]

    assert run(None) == (expect, pytest.approx(run(None).logprobs), "stop", None)
    never = run([], max_tokens=12)
    assert never.tokens[: len(expect)] == expect and len(never.tokens) == 12 and never.stop_reason == "length"
    assert run("ri").tokens == encode(" Pari") and run("ri").stop_reason == "stop"
    assert run(["zz", "is."]).tokens == encode(" Paris.")
    assert run([ord("r")]).tokens == encode(" Par") and run([ord("r")]).stop_reason == "stop"
    assert run(["nope"]).tokens == expect  # EOS still stops with explicit stop strings
    short = run(None, max_tokens=3)
    assert short.tokens == expect[:3] and short.stop_reason == "length"
    assert run(None, max_tokens=0).tokens == []
    unbounded = engine.sample(adapter, encode("x" * 500), temperature=0.0, stop=[]).sequences[0]
    assert len(unbounded.tokens) == engine.spec.max_context - 500 and unbounded.stop_reason == "length"
    with pytest.raises(ValueError, match="not a mix"):
        run(["a", 1])


def test_sampled_logprobs_match_forward(engine: E.Engine, trained: tuple[E.Adapter, list[float]]) -> None:
    adapter = trained[0]
    prompt = encode("The capital of Spain")
    result = engine.sample(adapter, prompt, num_samples=3, max_tokens=10, temperature=1.0, seed=5, stop=[])
    for seq in result.sequences:
        full = prompt + seq.tokens
        datum = E.EngineDatum(full[:-1], {"target_tokens": np.array(full[1:]), "weights": np.ones(len(full) - 1)})
        (out,), _ = engine.forward_backward(adapter, [datum], "cross_entropy", forward_only=True)
        np.testing.assert_allclose(out["logprobs"][len(prompt) - 1 :], seq.logprobs, atol=2e-4)
    # logprobs stay those of the temperature-free distribution even when sampling at another temperature
    hot = engine.sample(adapter, prompt, max_tokens=6, temperature=2.0, seed=1, stop=[]).sequences[0]
    full = prompt + hot.tokens
    datum = E.EngineDatum(full[:-1], {"target_tokens": np.array(full[1:]), "weights": np.ones(len(full) - 1)})
    (out,), _ = engine.forward_backward(adapter, [datum], "cross_entropy", forward_only=True)
    np.testing.assert_allclose(out["logprobs"][len(prompt) - 1 :], hot.logprobs, atol=2e-4)


def test_prompt_logprobs_match_forward(engine: E.Engine, trained: tuple[E.Adapter, list[float]]) -> None:
    adapter = trained[0]
    prompt = encode("The capital of Italy is Rome.")
    result = engine.sample(adapter, prompt, max_tokens=1, prompt_logprobs=True, topk_prompt_logprobs=3, seed=0)
    assert result.prompt_logprobs is not None and result.topk_prompt_logprobs is not None
    assert len(result.prompt_logprobs) == len(result.topk_prompt_logprobs) == len(prompt)
    assert result.prompt_logprobs[0] is None and result.topk_prompt_logprobs[0] is None
    datum = E.EngineDatum(prompt[:-1], {"target_tokens": np.array(prompt[1:]), "weights": np.ones(len(prompt) - 1)})
    (out,), _ = engine.forward_backward(adapter, [datum], "cross_entropy", forward_only=True)
    np.testing.assert_allclose(result.prompt_logprobs[1:], out["logprobs"], atol=2e-4)
    for pos in range(1, len(prompt)):
        row = result.topk_prompt_logprobs[pos]
        assert row is not None and len(row) == 3
        lps = [lp for _, lp in row]
        assert lps == sorted(lps, reverse=True)
        assert lps[0] >= result.prompt_logprobs[pos] - 1e-9
        for tok, lp in row:
            if tok == prompt[pos]:
                assert lp == pytest.approx(result.prompt_logprobs[pos])
    plain = engine.sample(adapter, prompt, max_tokens=1, seed=0)
    assert plain.prompt_logprobs is None and plain.topk_prompt_logprobs is None


def test_concurrent_sampling_is_consistent(engine: E.Engine, trained: tuple[E.Adapter, list[float]]) -> None:
    snap = trained[0].snapshot()
    prompt = encode("Water boils")
    expected = engine.sample(snap, prompt, num_samples=3, max_tokens=16, seed=9, stop=[])
    barrier = threading.Barrier(4)

    def work(_: int) -> E.SampleResult:
        barrier.wait(timeout=10)
        return engine.sample(snap, prompt, num_samples=3, max_tokens=16, seed=9, stop=[])

    with ThreadPoolExecutor(4) as pool:
        results = [f.result(timeout=30) for f in [pool.submit(work, i) for i in range(4)]]
    assert all(r == expected for r in results)


def test_snapshot_is_isolated_and_read_only(engine: E.Engine) -> None:
    adapter = engine.new_adapter(rank=2, seed=0)
    snap = adapter.snapshot()
    engine.forward_backward(adapter, _ce_data(0), "cross_entropy")
    engine.optim_step(adapter, learning_rate=0.1)
    assert all(not b.any() for _, b in snap.params.values())
    with pytest.raises(ValueError, match="read-only"):
        engine.forward_backward(snap, _ce_data(0), "cross_entropy")


# ---------------------------------------------------------------------------------------------- persistence
def test_save_load_round_trip(engine: E.Engine, trained: tuple[E.Adapter, list[float]], tmp_path: Path) -> None:
    adapter = trained[0]
    adapter.save(tmp_path / "ckpt", with_optimizer=True)
    config = json.loads((tmp_path / "ckpt" / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["base_model_name_or_path"] == TINY and config["lora_alpha"] == 32.0
    assert config["target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj", "lm_head"]
    tensors, _ = _safetensors.load_file(tmp_path / "ckpt" / "adapter_model.safetensors")
    assert tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"].shape == (8, 64)
    assert tensors["base_model.model.lm_head.lora_B.weight"].shape == (E.VOCAB_SIZE, 8)

    loaded = E.Adapter.load(engine, tmp_path / "ckpt", with_optimizer=True)
    assert loaded.step == adapter.step == 30 and loaded.seed == adapter.seed
    for module, (a, b) in adapter.params.items():
        np.testing.assert_array_equal(loaded.params[module][0], a)
        np.testing.assert_array_equal(loaded.params[module][1], b)
        np.testing.assert_array_equal(loaded.exp_avg_sq[module][1], adapter.exp_avg_sq[module][1])
    prompt = encode("The capital of Japan is")
    assert engine.sample(loaded, prompt, temperature=0.0, max_tokens=10) == engine.sample(
        adapter, prompt, temperature=0.0, max_tokens=10
    )
    weights_only = E.Adapter.load(engine, tmp_path / "ckpt", with_optimizer=False)
    assert weights_only.step == 0 and not weights_only.exp_avg["unembed"][0].any()

    adapter.save(tmp_path / "no_opt", with_optimizer=False)
    with pytest.raises(ValueError, match="no optimizer state"):
        E.Adapter.load(engine, tmp_path / "no_opt", with_optimizer=True)
    with pytest.raises(ValueError, match="cannot be loaded into 'tinker-sync/small-byte'"):
        E.Adapter.load(E.Engine("tinker-sync/small-byte"), tmp_path / "ckpt", with_optimizer=False)
    with pytest.raises(ValueError, match="adapter_config.json not found"):
        E.Adapter.load(engine, tmp_path, with_optimizer=False)
    cfg_path = tmp_path / "no_opt" / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["r"] = 4
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="has shape"):
        E.Adapter.load(engine, tmp_path / "no_opt", with_optimizer=False)


def test_adapter_seed_controls_init(engine: E.Engine) -> None:
    a1 = engine.new_adapter(rank=4, seed=5)
    a2 = engine.new_adapter(rank=4, seed=5, train_mlp=False)
    a3 = engine.new_adapter(rank=4, seed=6)
    np.testing.assert_array_equal(a1.params["layers.1.q"][0], a2.params["layers.1.q"][0])
    assert not np.array_equal(a1.params["layers.1.q"][0], a3.params["layers.1.q"][0])
    assert engine.new_adapter(rank=4, seed=None).seed != engine.new_adapter(rank=4, seed=None).seed
    with pytest.raises(ValueError, match="at least one"):
        engine.new_adapter(rank=4, seed=0, train_attn=False, train_mlp=False, train_unembed=False)


def test_base_weights_are_deterministic_and_read_only() -> None:
    a = E.Engine(TINY)
    b = E.Engine(TINY)
    assert all(np.array_equal(a.base[k], b.base[k]) for k in a.base)
    assert not a.base["embed"].flags.writeable
    assert set(E.MODEL_NAMES) == set(E.SPECS) and TINY in E.MODEL_NAMES
    with pytest.raises(ValueError, match="unknown base model"):
        E.Engine("gpt-5")
    assert _nn.module_shapes(64, 256, 258, 2)["layers.1.down"] == (256, 64)


def test_rows_finishing_early_and_batches_of_rows(
    engine: E.Engine, trained: tuple[E.Adapter, list[float]], monkeypatch: pytest.MonkeyPatch
) -> None:
    adapter = trained[0]
    prompt = encode("The capital of")
    kwargs = {"num_samples": 7, "max_tokens": 12, "temperature": 1.3, "seed": 8, "stop": ["a", "o"]}
    result = engine.sample(adapter, prompt, **kwargs)  # type: ignore[arg-type]
    reasons = {seq.stop_reason for seq in result.sequences}
    assert reasons == {"stop", "length"} or len({len(s.tokens) for s in result.sequences}) > 1
    for seq in result.sequences:
        text = bytes(t for t in seq.tokens if t < 256)
        if seq.stop_reason == "stop":
            assert text.endswith((b"a", b"o")) or seq.tokens[-1] == E.EOS_TOKEN_ID
            assert b"a" not in text[:-1] and b"o" not in text[:-1]
        else:
            assert len(seq.tokens) == 12
        full = prompt + seq.tokens
        datum = E.EngineDatum(full[:-1], {"target_tokens": np.array(full[1:]), "weights": np.ones(len(full) - 1)})
        (out,), _ = engine.forward_backward(adapter, [datum], "cross_entropy", forward_only=True)
        np.testing.assert_allclose(out["logprobs"][len(prompt) - 1 :], seq.logprobs, atol=2e-4)
    monkeypatch.setattr(E, "_MAX_SAMPLE_ROWS", 3)
    chunked = engine.sample(adapter, prompt, **kwargs)  # type: ignore[arg-type]
    assert len(chunked.sequences) == 7
    assert chunked == engine.sample(adapter, prompt, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="seed must be"):
        engine.sample(adapter, prompt, seed=-1)
    with pytest.raises(ValueError, match="top_p"):
        engine.sample(adapter, prompt, top_p=0.0)
    with pytest.raises(ValueError, match="prompt: token id 300"):
        engine.sample(adapter, [300])
