"""Numpy math of the local causal transformer: forward, manual LoRA backward, KV-cache decoding.

Architecture (per layer, pre-norm): ``x += o(attn(q, k, v)(rms1(x)))``; ``x += down(gelu(up(rms2(x))))``;
then ``logits = unembed(rms_f(x))``. Learned absolute position embeddings, untied unembedding, no biases,
tanh-GELU. Linear maps are ``y = x @ W`` with ``W`` of shape (in, out). A LoRA module adds
``scale * (x @ A) @ B`` with ``A`` (in, r), ``B`` (r, out); forward uses the merged ``W + scale * A @ B``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

logger = logging.getLogger(__name__)

RMS_EPS = 1e-5
_GELU_C = float(np.sqrt(2.0 / np.pi))
ATTN_MODULES = ("q", "k", "v", "o")
MLP_MODULES = ("up", "down")
UNEMBED_MODULE = "unembed"

Array = np.ndarray


def module_shapes(d_model: int, d_ff: int, vocab_size: int, n_layers: int) -> dict[str, tuple[int, int]]:
    """(in, out) of every linear map that LoRA can target, keyed by module name."""
    shapes: dict[str, tuple[int, int]] = {}
    for i in range(n_layers):
        for m in ATTN_MODULES:
            shapes[f"layers.{i}.{m}"] = (d_model, d_model)
        shapes[f"layers.{i}.up"] = (d_model, d_ff)
        shapes[f"layers.{i}.down"] = (d_ff, d_model)
    shapes[UNEMBED_MODULE] = (d_model, vocab_size)
    return shapes


def init_base_weights(
    *, vocab_size: int, d_model: int, n_layers: int, d_ff: int, max_context: int, seed: int, dtype: type
) -> dict[str, Array]:
    """Deterministic random base weights (generated in float64, then cast)."""
    rng = np.random.default_rng(seed)
    w: dict[str, Array] = {
        "embed": rng.standard_normal((vocab_size, d_model)),
        "pos": 0.5 * rng.standard_normal((max_context, d_model)),
        "ln_f": np.ones(d_model),
    }
    out_scale = 1.0 / np.sqrt(2.0 * n_layers)
    for name, (n_in, n_out) in module_shapes(d_model, d_ff, vocab_size, n_layers).items():
        scale = 1.0 / np.sqrt(n_in)
        if name.endswith((".o", ".down")):
            scale *= out_scale
        w[name] = scale * rng.standard_normal((n_in, n_out))
    for i in range(n_layers):
        w[f"layers.{i}.ln1"] = np.ones(d_model)
        w[f"layers.{i}.ln2"] = np.ones(d_model)
    out = {}
    for k, v in w.items():
        arr: Array = np.ascontiguousarray(v, dtype=dtype)
        arr.setflags(write=False)  # shared by every thread; never mutated
        out[k] = arr
    return out


# ---------------------------------------------------------------------------------------------- pieces
def rmsnorm(x: Array, gain: Array) -> tuple[Array, Array, Array]:
    """Returns (gain * x / rms(x), normalized x, 1/rms)."""
    r = 1.0 / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + RMS_EPS)
    n = x * r
    return n * gain, n, r


def rmsnorm_backward(dh: Array, gain: Array, n: Array, r: Array) -> Array:
    dn = dh * gain
    dx: Array = r * (dn - n * np.mean(dn * n, axis=-1, keepdims=True))
    return dx


def gelu(u: Array) -> Array:
    out: Array = 0.5 * u * (1.0 + np.tanh(_GELU_C * (u + 0.044715 * (u * u * u))))
    return out


def gelu_grad(u: Array, t: Array | None = None) -> Array:
    """d gelu/du; ``t`` = the tanh term from the forward pass when available."""
    if t is None:
        t = np.tanh(_GELU_C * (u + 0.044715 * (u * u * u)))
    u2 = u * u
    u2 *= 3 * 0.044715
    u2 += 1.0
    u2 *= _GELU_C * 0.5
    u2 *= u
    sech2: Array = 1.0 - t * t
    sech2 *= u2
    sech2 += 0.5 * (1.0 + t)
    return sech2


def log_softmax(logits: Array) -> Array:
    m = np.max(logits, axis=-1, keepdims=True)
    z = logits - m
    out: Array = z - np.log(np.sum(np.exp(z), axis=-1, keepdims=True))
    return out


def _split_heads(x: Array, n_heads: int) -> Array:
    b, t, d = x.shape
    out: Array = x.reshape(b, t, n_heads, d // n_heads).transpose(0, 2, 1, 3)
    return out


def _merge_heads(x: Array) -> Array:
    b, h, t, dh = x.shape
    out: Array = x.transpose(0, 2, 1, 3).reshape(b, t, h * dh)
    return out


# ---------------------------------------------------------------------------------------------- model
@dataclass
class LayerCache:
    h1: Array
    n1: Array
    r1: Array
    q: Array
    k: Array
    v: Array
    p: Array
    a: Array
    n2: Array
    r2: Array
    h2: Array
    u: Array
    g: Array
    th: Array


@dataclass
class ForwardCache:
    layers: list[LayerCache] = field(default_factory=list)
    nf: Array | None = None
    rf: Array | None = None
    hf: Array | None = None


def forward(
    base: Mapping[str, Array], eff: Mapping[str, Array], tokens: Array, *, n_layers: int, n_heads: int
) -> tuple[Array, ForwardCache]:
    """Logits (B, T, V) for right-padded token ids (B, T); ``eff`` holds the merged linear weights."""
    t = tokens.shape[1]
    x = base["embed"][tokens] + base["pos"][:t][None, :, :]
    d = x.shape[-1]
    dh = d // n_heads
    causal = np.triu(np.ones((t, t), dtype=bool), k=1)
    cache = ForwardCache()
    for i in range(n_layers):
        pre = f"layers.{i}."
        h1, n1, r1 = rmsnorm(x, base[pre + "ln1"])
        q = _split_heads(h1 @ eff[pre + "q"], n_heads)
        k = _split_heads(h1 @ eff[pre + "k"], n_heads)
        v = _split_heads(h1 @ eff[pre + "v"], n_heads)
        s = (q @ k.transpose(0, 1, 3, 2)) * (1.0 / np.sqrt(dh))
        s = np.where(causal, -np.inf, s)
        s = s - np.max(s, axis=-1, keepdims=True)
        p = np.exp(s)
        p /= np.sum(p, axis=-1, keepdims=True)
        a = _merge_heads(p @ v)
        x = x + a @ eff[pre + "o"]
        h2, n2, r2 = rmsnorm(x, base[pre + "ln2"])
        u = h2 @ eff[pre + "up"]
        th = np.tanh(_GELU_C * (u + 0.044715 * (u * u * u)))
        g = 0.5 * u * (1.0 + th)
        x = x + g @ eff[pre + "down"]
        cache.layers.append(LayerCache(h1, n1, r1, q, k, v, p, a, n2, r2, h2, u, g, th))
    hf, nf, rf = rmsnorm(x, base["ln_f"])
    cache.nf, cache.rf, cache.hf = nf, rf, hf
    logits = hf @ eff[UNEMBED_MODULE]
    return logits, cache


def _lora_grads(
    x: Array, dy: Array, a: Array, b: Array, scale: float, out: dict[str, tuple[Array, Array]], name: str
) -> None:
    x2 = x.reshape(-1, x.shape[-1])
    dy2 = dy.reshape(-1, dy.shape[-1])
    d_a = scale * (x2.T @ (dy2 @ b.T))
    d_b = scale * ((x2 @ a).T @ dy2)
    out[name] = (d_a, d_b)


def backward(
    base: Mapping[str, Array],
    eff: Mapping[str, Array],
    lora: Mapping[str, tuple[Array, Array]],
    scale: float,
    cache: ForwardCache,
    dlogits: Array,
    *,
    n_layers: int,
    n_heads: int,
) -> dict[str, tuple[Array, Array]]:
    """Gradients (dA, dB) of every LoRA module in ``lora`` given dLoss/dlogits (base frozen)."""
    grads: dict[str, tuple[Array, Array]] = {}
    assert cache.hf is not None and cache.nf is not None and cache.rf is not None
    if UNEMBED_MODULE in lora:
        a, b = lora[UNEMBED_MODULE]
        _lora_grads(cache.hf, dlogits, a, b, scale, grads, UNEMBED_MODULE)
    layer_ids = [int(name.split(".")[1]) for name in lora if name.startswith("layers.")]
    if not layer_ids:
        return grads
    lowest = min(layer_ids)  # nothing below this layer is trainable: stop backprop there
    dx = rmsnorm_backward(dlogits @ eff[UNEMBED_MODULE].T, base["ln_f"], cache.nf, cache.rf)
    d = dx.shape[-1]
    dh = d // n_heads
    inv = 1.0 / np.sqrt(dh)
    for i in range(n_layers - 1, lowest - 1, -1):
        pre = f"layers.{i}."
        c = cache.layers[i]
        # MLP
        if pre + "down" in lora:
            _lora_grads(c.g, dx, *lora[pre + "down"], scale, grads, pre + "down")
        du = (dx @ eff[pre + "down"].T) * gelu_grad(c.u, c.th)
        if pre + "up" in lora:
            _lora_grads(c.h2, du, *lora[pre + "up"], scale, grads, pre + "up")
        dx = dx + rmsnorm_backward(du @ eff[pre + "up"].T, base[pre + "ln2"], c.n2, c.r2)
        # attention
        if pre + "o" in lora:
            _lora_grads(c.a, dx, *lora[pre + "o"], scale, grads, pre + "o")
        da = _split_heads(dx @ eff[pre + "o"].T, n_heads)
        dp = da @ c.v.transpose(0, 1, 3, 2)
        dv = c.p.transpose(0, 1, 3, 2) @ da
        ds = c.p * (dp - np.sum(dp * c.p, axis=-1, keepdims=True)) * inv
        dq = _merge_heads(ds @ c.k)
        dk = _merge_heads(ds.transpose(0, 1, 3, 2) @ c.q)
        dv_m = _merge_heads(dv)
        for m, dy in (("q", dq), ("k", dk), ("v", dv_m)):
            if pre + m in lora:
                _lora_grads(c.h1, dy, *lora[pre + m], scale, grads, pre + m)
        if i == lowest:
            break
        dh1 = dq @ eff[pre + "q"].T + dk @ eff[pre + "k"].T + dv_m @ eff[pre + "v"].T
        dx = dx + rmsnorm_backward(dh1, base[pre + "ln1"], c.n1, c.r1)
    return grads


# ---------------------------------------------------------------------------------------------- decoding
class KVDecoder:
    """Batched incremental decoding with a per-layer key/value cache (one instance per sample call)."""

    def __init__(
        self, base: Mapping[str, Array], eff: Mapping[str, Array], *, n_layers: int, n_heads: int, batch: int,
        max_len: int,
    ) -> None:
        self.base = base
        self.eff = eff
        self.n_layers = n_layers
        self.n_heads = n_heads
        d = base["embed"].shape[1]
        self.dh = d // n_heads
        dtype = base["embed"].dtype
        self.k = np.zeros((n_layers, batch, n_heads, max_len, self.dh), dtype=dtype)
        self.v = np.zeros_like(self.k)
        self.length = 0

    def prefill(self, prompt: Array) -> Array:
        """Run the prompt (T,) once, fill every row of the cache; returns the prompt logits (T, V)."""
        logits, cache = forward(self.base, self.eff, prompt[None, :], n_layers=self.n_layers, n_heads=self.n_heads)
        t = prompt.shape[0]
        for i, c in enumerate(cache.layers):
            self.k[i, :, :, :t] = c.k[0]
            self.v[i, :, :, :t] = c.v[0]
        self.length = t
        first: Array = logits[0]
        return first

    def select(self, rows: Array) -> None:
        """Keep only the given batch rows (e.g. drop finished sequences)."""
        self.k = self.k[:, rows]
        self.v = self.v[:, rows]

    def step(self, tokens: Array) -> Array:
        """Feed one token per row (B,) at the next position; returns logits (B, V)."""
        t = self.length
        base, eff = self.base, self.eff
        x = base["embed"][tokens] + base["pos"][t]
        bsz = x.shape[0]
        inv = 1.0 / np.sqrt(self.dh)
        for i in range(self.n_layers):
            pre = f"layers.{i}."
            h1, _, _ = rmsnorm(x, base[pre + "ln1"])
            qkv_q = (h1 @ eff[pre + "q"]).reshape(bsz, self.n_heads, 1, self.dh)
            self.k[i, :, :, t] = (h1 @ eff[pre + "k"]).reshape(bsz, self.n_heads, self.dh)
            self.v[i, :, :, t] = (h1 @ eff[pre + "v"]).reshape(bsz, self.n_heads, self.dh)
            keys = self.k[i, :, :, : t + 1]
            s = (qkv_q @ keys.transpose(0, 1, 3, 2)) * inv
            s = s - np.max(s, axis=-1, keepdims=True)
            p = np.exp(s)
            p /= np.sum(p, axis=-1, keepdims=True)
            a = (p @ self.v[i, :, :, : t + 1]).reshape(bsz, -1)
            x = x + a @ eff[pre + "o"]
            h2, _, _ = rmsnorm(x, base[pre + "ln2"])
            x = x + gelu(h2 @ eff[pre + "up"]) @ eff[pre + "down"]
        hf, _, _ = rmsnorm(x, base["ln_f"])
        self.length = t + 1
        out: Array = hf @ eff[UNEMBED_MODULE]
        return out
