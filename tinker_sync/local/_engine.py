"""Compute engine of the local Tinker server: tiny byte-level transformers, LoRA training, sampling (numpy).

Models (:data:`SPECS`): ``tinker-sync/tiny-byte`` (d_model 64, 2 layers, 4 heads, d_ff 256, context 512) and
``tinker-sync/small-byte`` (d_model 128, 4 layers, 4 heads, d_ff 512, context 1024). Base weights are random
but deterministic (seed = first 8 bytes of sha256 of the model name); no weight files are shipped. Tokens
are bytes (see :mod:`._tokenizer`): ids 0..255 = byte values, 256 = ``<|endoftext|>`` (EOS), 257 = ``<|pad|>``.

LoRA: ``W + (alpha / rank) * A @ B`` with ``alpha`` = :data:`LORA_ALPHA` (32), ``A`` ~ N(0, 1/in) drawn from the
adapter seed and ``B`` = 0, so a fresh adapter reproduces the base model exactly. Targets: ``train_attn`` =
q, k, v, o projections; ``train_mlp`` = up, down; ``train_unembed`` = the (untied) unembedding.

Training: losses (:mod:`._losses`) are sums over tokens (``loss:sum``), gradients accumulate across
``forward_backward`` calls and :meth:`Engine.optim_step` applies AdamW (bias-corrected, decoupled weight decay
as in torch.optim.AdamW, optional global-norm clipping) and zeroes them; an adapter created with
``optimizer="dimuon"`` steps with :meth:`Engine.dimuon_step` instead (see :mod:`._optim`), and
:meth:`Engine.step` takes either from the wire params, refusing the other optimizer's params (a request never
runs as another optimizer). Recommended AdamW learning rate: 1e-2 for ``tiny-byte`` and 5e-3 for
``small-byte`` (any rank 4-32): 30 steps on five short prompt/completion pairs drive the loss
below 2% of its start and greedy sampling then reproduces every completion. 5e-2 is too high (diverges),
and the API default of 1e-4 barely moves these tiny random-weight models.

Sampling: per-token ``logprobs`` of sampled tokens are under the *temperature-free* model distribution
(log-softmax of the raw logits), so they equal what ``forward_backward`` reports for the same sequence and
can be fed straight back as ``logprobs`` of the importance-sampling losses. Stop rules: ``stop=None`` stops
at EOS; ``stop=[]`` never stops early; a list of token ids or of strings (or one string) stops at any of
them *and* at EOS (vLLM semantics). The stop token / the tokens completing a stop string are included in
the returned tokens, and ``stop_reason`` is ``"stop"``; running out of ``max_tokens`` gives ``"length"``.
The 0.38 options (top-k logprobs of sampled tokens, prompt scoring of the last N tokens, target prompt
logprobs, alternative prompt tokens, stability records) are described in :mod:`._sampling`.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from . import _nn, _optim, _sampling
from ._adapter import (
    LORA_ALPHA,
    Adapter,
)
from ._losses import CONFIG_DEFAULTS, LOSS_FUNCTIONS, check_config, loss_and_grad
from ._optim import parse_optimizer_config
from ._sampling import StabilityRecord, behaviour_logprobs
from ._tokenizer import (
    EOS_TOKEN_ID,
    PAD_TOKEN_ID,
    TOKENIZER_PATH,
    VOCAB_SIZE,
    token_bytes,
)

logger = logging.getLogger(__name__)

__all__ = [
    "CONFIG_DEFAULTS",
    "EOS_TOKEN_ID",
    "LORA_ALPHA",
    "LOSS_FUNCTIONS",
    "MODEL_NAMES",
    "PAD_TOKEN_ID",
    "SPECS",
    "TOKENIZER_PATH",
    "VOCAB_SIZE",
    "Adapter",
    "Engine",
    "EngineDatum",
    "ModelSpec",
    "SampleOptions",
    "SampleResult",
    "SampledSequence",
    "StabilityRecord",
    "behaviour_logprobs",
    "parse_optimizer_config",
]

RECOMMENDED_LEARNING_RATES: dict[str, float] = {"tinker-sync/tiny-byte": 1e-2, "tinker-sync/small-byte": 5e-3}

# Attention score elements (batch * heads * T * T) per micro-batch; bounds peak memory of forward_backward.
_MAX_ATTN_ELEMENTS = 1 << 23
# Rows decoded together by sample(); larger num_samples run in several batches (bounds KV-cache memory).
_MAX_SAMPLE_ROWS = 64


@dataclass(frozen=True)
class ModelSpec:
    """Shape of one local base model."""

    name: str
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    d_ff: int
    max_context: int

    @property
    def seed(self) -> int:
        """Seed of the deterministic base weights (derived from the name)."""
        return int.from_bytes(hashlib.sha256(self.name.encode("utf-8")).digest()[:8], "little")


SPECS: dict[str, ModelSpec] = {
    s.name: s
    for s in (
        ModelSpec("tinker-sync/tiny-byte", VOCAB_SIZE, 64, 2, 4, 256, 512),
        ModelSpec("tinker-sync/small-byte", VOCAB_SIZE, 128, 4, 4, 512, 1024),
    )
}
MODEL_NAMES: list[str] = list(SPECS)


# ---------------------------------------------------------------------------------------------- data types
@dataclass
class EngineDatum:
    """One training sequence: ``tokens`` (the model input) and its loss inputs as numpy arrays."""

    tokens: list[int]
    loss_fn_inputs: dict[str, np.ndarray]


class SampledSequence(NamedTuple):
    tokens: list[int]
    logprobs: list[float]
    stop_reason: str  # "stop" | "length"
    topk_logprobs: list[list[tuple[int, float]]] | None = None  # per generated token, with topk_sample_logprobs


@dataclass
class SampleResult:
    """What :meth:`Engine.sample` returns; the optional parts are None unless asked for."""

    sequences: list[SampledSequence]
    prompt_logprobs: list[float | None] | None = None
    topk_prompt_logprobs: list[list[tuple[int, float]] | None] | None = None
    target_prompt_logprobs: np.ndarray | None = None  # float32 [len(prompt) - 1, K]
    prompt_alt_tokens: tuple[np.ndarray, np.ndarray] | None = None  # int64 / float32 [len(prompt) - 1, k]
    stability: list[StabilityRecord] | None = None  # one per sequence, with record_stability_info


class SampleOptions(NamedTuple):
    """A validated sample request (see :meth:`Engine.validate_sample`)."""

    prompt: np.ndarray
    max_tokens: int
    stop: tuple[set[int], list[bytes]]
    targets: np.ndarray | None


def _stability_record(prompt: np.ndarray, prompt_logprobs: np.ndarray, seq: SampledSequence) -> StabilityRecord:
    arrays = (prompt, prompt_logprobs, np.asarray(seq.tokens, dtype=np.int64), np.asarray(seq.logprobs))
    for arr in arrays:
        arr.setflags(write=False)
    return StabilityRecord(*arrays)


# ---------------------------------------------------------------------------------------------- engine
def _as_float(arr: Any, key: str, where: str, dtype: type = np.float64) -> np.ndarray:
    try:
        out: np.ndarray = np.asarray(arr, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: loss_fn_inputs[{key!r}] is not numeric ({exc})") from exc
    if not np.all(np.isfinite(out)):
        raise ValueError(f"{where}: loss_fn_inputs[{key!r}] contains NaN or infinite values")
    return out


def _accumulate(adapter: Adapter, grads: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """Add one call's gradients to the adapter's, all or nothing."""
    for ga, gb in grads.values():
        if not (np.all(np.isfinite(ga)) and np.all(np.isfinite(gb))):
            raise ValueError("gradients are not finite (check loss inputs for extreme values); nothing was accumulated")
    with adapter.lock:
        for k, (ga, gb) in grads.items():
            adapter.grads[k][0][...] += ga
            adapter.grads[k][1][...] += gb
        adapter.pending_grad_calls += 1


class Engine:
    """One base model: deterministic weights, LoRA adapters, training and sampling.

    Thread safety: base weights are read-only; ``sample`` keeps all state local (any number of threads);
    ``forward_backward``/``optim_step`` lock the adapter they modify.
    """

    def __init__(self, model_name: str, *, dtype: type = np.float32) -> None:
        if model_name not in SPECS:
            raise ValueError(f"unknown base model {model_name!r}; available: {', '.join(MODEL_NAMES)}")
        self.spec = SPECS[model_name]
        self.dtype = np.dtype(dtype)
        s = self.spec
        self.base = _nn.init_base_weights(
            vocab_size=s.vocab_size, d_model=s.d_model, n_layers=s.n_layers, d_ff=s.d_ff,
            max_context=s.max_context, seed=s.seed, dtype=dtype,
        )
        self.module_shapes = _nn.module_shapes(s.d_model, s.d_ff, s.vocab_size, s.n_layers)

    # ------------------------------------------------------------------ adapters
    def new_adapter(
        self, *, rank: int, seed: int | None, train_attn: bool = True, train_mlp: bool = True,
        train_unembed: bool = True, optimizer: str = "adamw",
    ) -> Adapter:
        """A fresh LoRA adapter (B = 0, so it reproduces the base model); ``seed=None`` picks one at random."""
        if not isinstance(rank, int) or rank < 1:
            raise ValueError(f"LoRA rank must be a positive integer, got {rank!r}")
        if not (train_attn or train_mlp or train_unembed):
            raise ValueError("at least one of train_attn, train_mlp, train_unembed must be true")
        if seed is None:
            seed = secrets.randbits(63)
        rng = np.random.default_rng(seed)
        params: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for module, (n_in, n_out) in self.module_shapes.items():
            kind = module.rsplit(".", 1)[-1]
            selected = (
                (train_attn and kind in _nn.ATTN_MODULES)
                or (train_mlp and kind in _nn.MLP_MODULES)
                or (train_unembed and module == _nn.UNEMBED_MODULE)
            )
            # Draw for every module, selected or not, so a module's init never depends on the flags.
            a = rng.standard_normal((n_in, rank)) / np.sqrt(n_in)
            if selected:
                params[module] = (a.astype(self.dtype), np.zeros((rank, n_out), dtype=self.dtype))
        return Adapter(
            model_name=self.spec.name, rank=rank, seed=int(seed), train_attn=train_attn, train_mlp=train_mlp,
            train_unembed=train_unembed, params=params, optimizer=optimizer,
        )

    def _effective(self, adapter: Adapter | None) -> Mapping[str, np.ndarray]:
        if adapter is None:
            return self.base
        if adapter.model_name != self.spec.name:
            raise ValueError(f"adapter belongs to {adapter.model_name!r}, not {self.spec.name!r}")
        return adapter.merged_weights(self.base)

    # ------------------------------------------------------------------ validation
    def _check_tokens(self, tokens: Sequence[int], where: str) -> np.ndarray:
        arr = np.asarray(tokens)
        if arr.ndim != 1:
            raise ValueError(f"{where}: tokens must be a flat list of ints")
        if arr.size == 0:
            raise ValueError(f"{where}: the model input is empty; give at least one token")
        if not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"{where}: token ids must be integers, got dtype {arr.dtype}")
        bad = (arr < 0) | (arr >= self.spec.vocab_size)
        if np.any(bad):
            i = int(np.argmax(bad))
            raise ValueError(
                f"{where}: token id {int(arr[i])} at position {i} is out of range for {self.spec.name} "
                f"(vocabulary size {self.spec.vocab_size}: ids 0..{self.spec.vocab_size - 1})"
            )
        if arr.size > self.spec.max_context:
            raise ValueError(
                f"{where}: sequence of {arr.size} tokens exceeds the maximum context of {self.spec.name} "
                f"({self.spec.max_context} tokens); truncate or split it"
            )
        return arr.astype(np.int64)

    def _prepare(
        self, data: Sequence[EngineDatum], loss_fn: str, loss_fn_config: Mapping[str, float | str] | None
    ) -> tuple[list[tuple[np.ndarray, dict[str, np.ndarray]]], dict[str, float]]:
        config = check_config(loss_fn, loss_fn_config)
        if not data:
            raise ValueError("no data: forward_backward needs at least one Datum")
        return [self._prepare_datum(datum, loss_fn, f"data[{i}]") for i, datum in enumerate(data)], config

    def _prepare_datum(
        self, datum: EngineDatum, loss_fn: str, where: str
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        required, optional = LOSS_FUNCTIONS[loss_fn]
        tokens = self._check_tokens(datum.tokens, where)
        n = tokens.size
        given = datum.loss_fn_inputs
        missing = [k for k in required if k not in given]
        if missing:
            raise ValueError(f"{where}: loss_fn {loss_fn!r} needs loss_fn_inputs {list(required)}; missing {missing}")
        extra = [k for k in given if k not in required and k not in optional]
        if extra:
            raise ValueError(
                f"{where}: loss_fn_inputs {extra} are not used by loss_fn {loss_fn!r} "
                f"(it takes {list(required + optional)})"
            )
        targets = self._check_targets(given["target_tokens"], n, 2 if loss_fn == "cross_entropy" else 1, where)
        inputs: dict[str, np.ndarray] = {"target_tokens": targets}
        for key in list(required[1:]) + [k for k in optional if k in given]:
            arr = _as_float(given[key], key, where)
            expect = targets.shape if key == "weights" else (n,)
            if arr.shape != expect:
                raise ValueError(
                    f"{where}: loss_fn_inputs[{key!r}] has shape {list(arr.shape)}, expected {list(expect)} "
                    f"(same as target_tokens / the model_input length)"
                )
            inputs[key] = arr
        return tokens, inputs

    def _check_targets(self, given: Any, n: int, max_dims: int, where: str) -> np.ndarray:
        targets = np.asarray(given)
        if targets.dtype.kind == "f":
            if not np.all(np.isfinite(targets)) or not np.all(targets == np.round(targets)):
                raise ValueError(f"{where}: target_tokens must be integer token ids")
            targets = targets.astype(np.int64)
        elif targets.dtype.kind not in "iu":
            raise ValueError(f"{where}: target_tokens must be integer token ids, got dtype {targets.dtype}")
        if targets.ndim < 1 or targets.ndim > max_dims or targets.shape[0] != n:
            shape = "(N,) or (N, K)" if max_dims == 2 else "(N,)"
            raise ValueError(
                f"{where}: target_tokens has shape {list(targets.shape)} but must be {shape} with N = {n}, "
                f"the model_input length (position i holds the token that follows model_input[:i+1])"
            )
        return _sampling.int_ids(
            targets, self.spec.vocab_size, f"{where}: target token id", f"vocabulary size {self.spec.vocab_size}"
        )

    # ------------------------------------------------------------------ training
    def forward_backward(
        self,
        adapter: Adapter,
        data: Sequence[EngineDatum],
        loss_fn: str,
        loss_fn_config: Mapping[str, float | str] | None = None,
        *,
        forward_only: bool = False,
    ) -> tuple[list[dict[str, np.ndarray]], dict[str, float]]:
        """Compute per-datum target logprobs and the summed loss; accumulate LoRA gradients unless forward_only.

        Returns ``(outputs, metrics)``: outputs[i] = ``{"logprobs": float32 array shaped like target_tokens}``,
        metrics ``loss:sum``, ``num_tokens:sum``, ``num_sequences:sum``.

        Raises:
            ValueError: unknown loss_fn, missing/extra/mis-shaped loss inputs, bad token ids, too-long or
                empty sequences, non-finite values. Nothing is accumulated when it raises.
        """
        if adapter.frozen and not forward_only:
            raise ValueError("this adapter is a read-only snapshot; it cannot accumulate gradients")
        prepared, config = self._prepare(data, loss_fn, loss_fn_config)
        # Holding the adapter lock for the whole pass keeps a concurrent optim_step from changing the
        # weights between the forward and the backward (samplers use snapshots and never wait on it).
        with adapter.lock:
            return self._forward_backward_locked(adapter, prepared, loss_fn, config, forward_only)

    def _forward_backward_locked(
        self, adapter: Adapter, prepared: list[tuple[np.ndarray, dict[str, np.ndarray]]], loss_fn: str,
        config: dict[str, float], forward_only: bool,
    ) -> tuple[list[dict[str, np.ndarray]], dict[str, float]]:
        s = self.spec
        eff = self._effective(adapter)
        with adapter.lock:
            lora = {k: (a, b) for k, (a, b) in adapter.params.items()}
        outputs: list[dict[str, np.ndarray]] = [{} for _ in prepared]
        total_loss = 0.0
        local_grads: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for batch_ids in self._micro_batches([t.size for t, _ in prepared]):
            t_max = max(prepared[i][0].size for i in batch_ids)
            tokens = np.full((len(batch_ids), t_max), PAD_TOKEN_ID, dtype=np.int64)
            for row, i in enumerate(batch_ids):
                tokens[row, : prepared[i][0].size] = prepared[i][0]
            logits, cache = _nn.forward(self.base, eff, tokens, n_layers=s.n_layers, n_heads=s.n_heads)
            lsm = _nn.log_softmax(logits)
            dlogits = np.zeros_like(logits) if not forward_only else None
            for row, i in enumerate(batch_ids):
                n = prepared[i][0].size
                inputs = prepared[i][1]
                targets = inputs["target_tokens"]
                t2 = targets.reshape(n, -1)
                lp2 = np.take_along_axis(lsm[row, :n], t2, axis=1).astype(np.float64)
                lp = lp2.reshape(targets.shape)
                loss, dlp = loss_and_grad(loss_fn, lp, inputs, config)
                total_loss += loss
                outputs[i] = {"logprobs": lp.astype(np.float32)}
                if dlogits is not None:
                    dlp2 = dlp.reshape(n, -1).astype(logits.dtype)
                    probs = np.exp(lsm[row, :n])
                    g = -probs * np.sum(dlp2, axis=1, keepdims=True)
                    np.add.at(g, (np.arange(n)[:, None], t2), dlp2)
                    dlogits[row, :n] = g
            if dlogits is not None and lora:
                grads = _nn.backward(
                    self.base, eff, lora, adapter.scale, cache, dlogits, n_layers=s.n_layers, n_heads=s.n_heads
                )
                for k, (ga, gb) in grads.items():
                    if k in local_grads:
                        local_grads[k][0][...] += ga
                        local_grads[k][1][...] += gb
                    else:
                        local_grads[k] = (ga, gb)
        if not np.isfinite(total_loss):
            raise ValueError("the loss is not finite (check logprobs/advantages inputs for extreme values)")
        if not forward_only:
            _accumulate(adapter, local_grads)
        metrics = {
            "loss:sum": float(total_loss),
            "num_tokens:sum": float(sum(t.size for t, _ in prepared)),
            "num_sequences:sum": float(len(prepared)),
        }
        return outputs, metrics

    def _micro_batches(self, lengths: list[int]) -> list[list[int]]:
        """Consecutive groups of data whose padded attention matrices stay under the memory bound."""
        groups: list[list[int]] = []
        current: list[int] = []
        t_max = 0
        for i, n in enumerate(lengths):
            new_max = max(t_max, n)
            if current and (len(current) + 1) * self.spec.n_heads * new_max * new_max > _MAX_ATTN_ELEMENTS:
                groups.append(current)
                current, new_max = [], n
            current.append(i)
            t_max = new_max
        if current:
            groups.append(current)
        return groups

    def optim_step(
        self,
        adapter: Adapter,
        *,
        learning_rate: float,
        beta1: float = 0.9,
        beta2: float = 0.95,
        eps: float = 1e-12,
        weight_decay: float = 0.0,
        grad_clip_norm: float = 0.0,
    ) -> dict[str, float]:
        """One AdamW step on the accumulated gradients, then zero them.

        Returns plain-float metrics: ``grad_norm`` (before clipping), ``learning_rate``, ``step``.

        Raises:
            ValueError: out-of-range hyperparameters, or an adapter created for another optimizer.
        """
        for name, value, ok in (
            ("learning_rate", learning_rate, learning_rate >= 0),
            ("beta1", beta1, 0 <= beta1 < 1),
            ("beta2", beta2, 0 <= beta2 < 1),
            ("eps", eps, eps > 0),
            ("weight_decay", weight_decay, weight_decay >= 0),
            ("grad_clip_norm", grad_clip_norm, grad_clip_norm >= 0),
        ):
            if not (np.isfinite(value) and ok):
                raise ValueError(f"AdamParams.{name} = {value!r} is out of range")

        def update(p: np.ndarray, g: np.ndarray, module: str, idx: int) -> None:
            _optim.adamw_update(
                p, g, adapter.exp_avg[module][idx], adapter.exp_avg_sq[module][idx], step=adapter.step,
                learning_rate=learning_rate, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
            )

        return self._apply_step(adapter, "adamw", grad_clip_norm, learning_rate, update)

    def dimuon_step(
        self, adapter: Adapter, *, learning_rate: float, grad_clip_norm: float = 0.0, beta1: float = 0.9
    ) -> dict[str, float]:
        """One Dimuon step (see :mod:`._optim`) on the accumulated gradients, then zero them.

        Returns the same metrics as :meth:`optim_step`. ``grad_clip_norm <= 0`` disables clipping.

        Raises:
            ValueError: out-of-range hyperparameters, or an adapter created for another optimizer.
        """
        for name, value, ok in (
            ("learning_rate", learning_rate, learning_rate >= 0),
            ("beta1", beta1, 0 <= beta1 < 1),
            ("grad_clip_norm", grad_clip_norm, True),
        ):
            if not (np.isfinite(value) and ok):
                raise ValueError(f"DimuonParams.{name} = {value!r} is out of range")

        def update(p: np.ndarray, g: np.ndarray, module: str, idx: int) -> None:
            _optim.dimuon_update(
                p, g, adapter.exp_avg[module][idx], rank=adapter.rank, learning_rate=learning_rate, beta1=beta1
            )

        return self._apply_step(adapter, "dimuon", grad_clip_norm, learning_rate, update)

    def step(self, adapter: Adapter, optim_params: Mapping[str, Any]) -> dict[str, float]:
        """:meth:`optim_step` or :meth:`dimuon_step` from a wire AdamParams / DimuonParams object (``type`` picks).

        Raises:
            ValueError: an unknown optimizer type or field (named in the message), bad values, or params of
                another optimizer than the one the adapter was created with.
        """
        kind, params = _optim.parse_optim_params(optim_params)
        if kind == "dimuon":
            return self.dimuon_step(adapter, **params)
        return self.optim_step(adapter, **params)

    def _apply_step(
        self, adapter: Adapter, optimizer: str, grad_clip_norm: float, learning_rate: float,
        update: Callable[[np.ndarray, np.ndarray, str, int], None],
    ) -> dict[str, float]:
        if adapter.frozen:
            raise ValueError("this adapter is a read-only snapshot; it cannot be optimized")
        if adapter.optimizer != optimizer:
            given = "AdamParams" if optimizer == "adamw" else "DimuonParams"
            raise ValueError(
                f"this model was created with the {adapter.optimizer!r} optimizer; {given} ({optimizer!r}) cannot "
                f"step it (pass the params of the optimizer chosen at creation)"
            )
        with adapter.lock:
            norm = _optim.global_grad_norm(g for pair in adapter.grads.values() for g in pair)
            coef = _optim.clip_coefficient(norm, grad_clip_norm)
            adapter.step += 1
            for module, pair in adapter.params.items():
                for idx in (0, 1):
                    update(pair[idx], adapter.grads[module][idx] * coef, module, idx)
                    adapter.grads[module][idx][...] = 0.0
            adapter.pending_grad_calls = 0
            adapter.invalidate_merged()
            t = adapter.step
        return {"grad_norm": norm, "learning_rate": float(learning_rate), "step": float(t)}

    # ------------------------------------------------------------------ sampling
    def sample(
        self,
        adapter: Adapter | None,
        prompt: Sequence[int],
        *,
        num_samples: int = 1,
        max_tokens: int | None = None,
        temperature: float = 1.0,
        top_k: int = -1,
        top_p: float = 1.0,
        stop: str | Sequence[str] | Sequence[int] | None = None,
        seed: int | None = None,
        prompt_logprobs: bool = False,
        topk_prompt_logprobs: int = 0,
        topk_sample_logprobs: int = 0,
        target_prompt_logprobs: Any = None,
        prompt_alt_tokens_k: int = 0,
        prompt_logprobs_last_n: int | None = None,
        record_stability_info: bool = False,
    ) -> SampleResult:
        """Generate ``num_samples`` continuations of ``prompt`` in one batched KV-cache pass.

        The prompt-side options are described in :mod:`._sampling`; ``topk_sample_logprobs = k`` gives every
        sequence the ``k`` most likely ``(token, logprob)`` at each generated position, and
        ``record_stability_info`` one :class:`~._sampling.StabilityRecord` per sequence.

        Raises:
            ValueError: bad prompt tokens, prompt + max_tokens beyond the context, bad sampling params or
                options (the message names the parameter).
        """
        s = self.spec
        opts = self.validate_sample(
            prompt, num_samples=num_samples, max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
            stop=stop, seed=seed, prompt_logprobs=prompt_logprobs, topk_prompt_logprobs=topk_prompt_logprobs,
            topk_sample_logprobs=topk_sample_logprobs, target_prompt_logprobs=target_prompt_logprobs,
            prompt_alt_tokens_k=prompt_alt_tokens_k, prompt_logprobs_last_n=prompt_logprobs_last_n,
        )
        prompt_arr, max_tokens = opts.prompt, opts.max_tokens
        rng = np.random.default_rng(seed)
        # The alternative prompt tokens draw from their own stream: asking for them changes no sequence.
        alt_rng = np.random.default_rng(None if seed is None else [seed, 1])
        eff = self._effective(adapter)
        result = SampleResult(sequences=[])
        extras = _sampling.PromptExtras()
        for first in range(0, num_samples, _MAX_SAMPLE_ROWS):
            rows = min(_MAX_SAMPLE_ROWS, num_samples - first)
            decoder = _nn.KVDecoder(
                self.base, eff, n_layers=s.n_layers, n_heads=s.n_heads, batch=rows,
                max_len=prompt_arr.size + max(max_tokens, 1),
            )
            prompt_logits = decoder.prefill(prompt_arr)
            if first == 0:
                extras = _sampling.prompt_extras(
                    prompt_arr, prompt_logits, prompt_logprobs=prompt_logprobs,
                    topk_prompt_logprobs=topk_prompt_logprobs, target_prompt_logprobs=opts.targets,
                    prompt_alt_tokens_k=prompt_alt_tokens_k, prompt_logprobs_last_n=prompt_logprobs_last_n,
                    record_stability_info=record_stability_info, temperature=temperature, alt_rng=alt_rng,
                )
            result.sequences += self._decode(
                decoder, prompt_logits[-1], rows, max_tokens, (temperature, top_k, top_p), opts.stop, rng,
                topk_sample_logprobs,
            )
        result.prompt_logprobs = extras.prompt_logprobs
        result.topk_prompt_logprobs = extras.topk_prompt_logprobs
        result.target_prompt_logprobs = extras.target_prompt_logprobs
        result.prompt_alt_tokens = extras.prompt_alt_tokens
        if extras.all_prompt_logprobs is not None:
            result.stability = [_stability_record(prompt_arr, extras.all_prompt_logprobs, q) for q in result.sequences]
        return result

    def validate_sample(
        self, prompt: Sequence[int], *, num_samples: int = 1, max_tokens: int | None = None,
        temperature: float = 1.0, top_k: int = -1, top_p: float = 1.0,
        stop: str | Sequence[str] | Sequence[int] | None = None, seed: int | None = None,
        prompt_logprobs: bool = False, topk_prompt_logprobs: int = 0, topk_sample_logprobs: int = 0,
        target_prompt_logprobs: Any = None, prompt_alt_tokens_k: int = 0, prompt_logprobs_last_n: int | None = None,
    ) -> SampleOptions:
        """Check a sample request without running it (same arguments as :meth:`sample`).

        The server calls this on the request thread so a bad request is a 400 at once, not a failed future.

        Raises:
            ValueError: the message names the bad parameter.
        """
        s = self.spec
        prompt_arr = self._check_tokens(prompt, "prompt")
        p_len = int(prompt_arr.size)
        if not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
        room = s.max_context - p_len
        if max_tokens is None:
            max_tokens = room
        elif not isinstance(max_tokens, int) or max_tokens < 0:
            raise ValueError(f"max_tokens must be a non-negative integer or None, got {max_tokens!r}")
        elif max_tokens > room:
            raise ValueError(
                f"prompt of {p_len} tokens + max_tokens {max_tokens} exceeds the context of {s.name} "
                f"({s.max_context} tokens); lower max_tokens to at most {room}"
            )
        if not (np.isfinite(temperature) and temperature >= 0):
            raise ValueError(f"temperature must be >= 0, got {temperature!r}")
        if not isinstance(top_k, int) or top_k < -1:
            raise ValueError(f"top_k must be -1 (no limit) or a positive integer, got {top_k!r}")
        if not (0.0 < top_p <= 1.0):
            raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise ValueError(f"seed must be a non-negative integer or None, got {seed!r}")
        targets = _sampling.check_prompt_options(
            p_len, s.vocab_size, prompt_logprobs=prompt_logprobs, topk_prompt_logprobs=topk_prompt_logprobs,
            target_prompt_logprobs=target_prompt_logprobs, prompt_alt_tokens_k=prompt_alt_tokens_k,
            prompt_logprobs_last_n=prompt_logprobs_last_n, topk_sample_logprobs=topk_sample_logprobs,
        )
        return SampleOptions(prompt_arr, max_tokens, self._parse_stop(stop), targets)

    def _decode(
        self, decoder: _nn.KVDecoder, last_logits: np.ndarray, rows: int, max_tokens: int,
        params: tuple[float, int, float], stop: tuple[set[int], list[bytes]], rng: np.random.Generator, topk: int,
    ) -> list[SampledSequence]:
        """Sample ``rows`` sequences from a prefilled decoder; finished rows are dropped from the batch."""
        temperature, top_k, top_p = params
        stop_ids, stop_strings = stop
        tokens: list[list[int]] = [[] for _ in range(rows)]
        logprobs: list[list[float]] = [[] for _ in range(rows)]
        tops: list[list[list[tuple[int, float]]]] = [[] for _ in range(rows)]
        texts = [bytearray() for _ in range(rows)]
        reasons = ["length"] * rows
        active = np.arange(rows)  # batch position -> output row
        logits = np.broadcast_to(last_logits, (rows, last_logits.shape[-1]))
        for step in range(max_tokens):
            lsm = _nn.log_softmax(logits.astype(np.float64))
            chosen = self._choose(lsm, temperature, top_k, top_p, rng)
            step_tops = _sampling.topk_rows(lsm, topk) if topk else None
            keep = np.ones(active.size, dtype=bool)
            for pos, row in enumerate(active):
                tok = int(chosen[pos])
                tokens[row].append(tok)
                logprobs[row].append(float(lsm[pos, tok]))
                if step_tops is not None:
                    tops[row].append(step_tops[pos])
                if tok in stop_ids:
                    keep[pos], reasons[row] = False, "stop"
                elif stop_strings:
                    new = token_bytes(tok)
                    buf = texts[row]
                    buf += new
                    for pat in stop_strings:
                        if pat in buf[max(0, len(buf) - len(pat) - len(new) + 1) :]:
                            keep[pos], reasons[row] = False, "stop"
                            break
            if not keep.any() or step + 1 == max_tokens:
                break
            if not keep.all():
                decoder.select(np.flatnonzero(keep))
                active, chosen = active[keep], chosen[keep]
            logits = decoder.step(chosen)
        return [SampledSequence(tokens[i], logprobs[i], reasons[i], tops[i] if topk else None) for i in range(rows)]

    def _parse_stop(self, stop: str | Sequence[str] | Sequence[int] | None) -> tuple[set[int], list[bytes]]:
        if stop is None:
            return {EOS_TOKEN_ID}, []
        if isinstance(stop, str):
            stop = [stop]
        items = list(stop)
        if not items:
            return set(), []
        if all(isinstance(x, str) for x in items):
            if any(x == "" for x in items):
                raise ValueError("stop strings must not be empty")
            return {EOS_TOKEN_ID}, [str(x).encode("utf-8") for x in items]
        if all(isinstance(x, (int, np.integer)) and not isinstance(x, bool) for x in items):
            ids = {int(x) for x in items if isinstance(x, (int, np.integer))}
            bad = [i for i in ids if not 0 <= i < self.spec.vocab_size]
            if bad:
                raise ValueError(f"stop token id {bad[0]} is out of range (vocabulary size {self.spec.vocab_size})")
            return ids | {EOS_TOKEN_ID}, []
        raise ValueError("stop must be a string, a list of strings, or a list of token ids (not a mix)")

    @staticmethod
    def _choose(lsm: np.ndarray, temperature: float, top_k: int, top_p: float, rng: np.random.Generator) -> np.ndarray:
        """Pick one token per row from log-probabilities (S, V) with temperature / top-k / top-p."""
        uniform = rng.random(lsm.shape[0])  # always drawn, so the stream does not depend on the settings
        if temperature == 0.0:
            greedy: np.ndarray = np.argmax(lsm, axis=1)
            return greedy
        scaled = lsm / temperature
        order = np.argsort(-scaled, axis=1, kind="stable")
        sorted_logits = np.take_along_axis(scaled, order, axis=1)
        probs = np.exp(sorted_logits - sorted_logits[:, :1])
        if top_k > 0:
            probs[:, top_k:] = 0.0
        probs /= probs.sum(axis=1, keepdims=True)
        if top_p < 1.0:
            cum_before = np.cumsum(probs, axis=1) - probs
            probs = np.where(cum_before < top_p, probs, 0.0)
        cum = np.cumsum(probs, axis=1)
        idx = np.sum(cum < (uniform * cum[:, -1])[:, None], axis=1)
        idx = np.minimum(idx, lsm.shape[1] - 1)
        picked: np.ndarray = order[np.arange(lsm.shape[0]), idx]
        return picked
