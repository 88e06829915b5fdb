"""Optimizer math of the local engine: AdamW and Dimuon updates of LoRA matrices (numpy, in place).

AdamW follows torch.optim.AdamW (bias-corrected moments, decoupled weight decay). Dimuon follows the
fields and field documentation of the official ``DimuonParams`` (0.38: ``learning_rate``, ``grad_clip_norm``,
``beta1``): an exponential moving average of the gradient (``beta1``), turned into a direction by the matrix
sign (orthogonal polar factor ``U V^T``, which the service approximates by an iteration of internal length
and this server computes exactly by thin SVD), scaled to Frobenius norm ``sqrt(rank)``, and applied as
``p -= learning_rate * direction``.
No weight decay (the 0.38 fields have none) and no rank correction of the learning rate.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "OPTIMIZERS",
    "adamw_update",
    "dimuon_update",
    "global_grad_norm",
    "matrix_sign",
    "parse_optim_params",
    "parse_optimizer_config",
]

OPTIMIZERS = ("adamw", "dimuon")
_ADAM_DEFAULTS: dict[str, float] = {
    "learning_rate": 1e-4, "beta1": 0.9, "beta2": 0.95, "eps": 1e-12, "weight_decay": 0.0, "grad_clip_norm": 0.0,
}
_DIMUON_DEFAULTS: dict[str, float] = {"grad_clip_norm": 0.0, "beta1": 0.9}  # learning_rate is required


def global_grad_norm(grads: Iterable[np.ndarray]) -> float:
    """Euclidean norm of all gradient arrays together (computed in float64)."""
    return float(np.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in grads)))


def clip_coefficient(norm: float, grad_clip_norm: float) -> float:
    """Factor that scales the gradients to ``grad_clip_norm`` when their norm exceeds it (<= 0: no clipping)."""
    if grad_clip_norm > 0 and norm > grad_clip_norm:
        return grad_clip_norm / (norm + 1e-6)
    return 1.0


def adamw_update(
    p: np.ndarray, g: np.ndarray, m: np.ndarray, v: np.ndarray, *, step: int, learning_rate: float, beta1: float,
    beta2: float, eps: float, weight_decay: float,
) -> None:
    """One AdamW update of ``p`` in place from gradient ``g`` (already clipped); ``m``/``v`` are updated too."""
    m *= beta1
    m += (1.0 - beta1) * g
    v *= beta2
    v += (1.0 - beta2) * g * g
    if weight_decay:
        p *= 1.0 - learning_rate * weight_decay
    p -= learning_rate * (m / (1.0 - beta1**step)) / (np.sqrt(v / (1.0 - beta2**step)) + eps)


def matrix_sign(m: np.ndarray) -> np.ndarray:
    """The orthogonal polar factor ``U V^T`` of ``m`` over its nonzero singular values (zero for a zero matrix).

    This is the limit of the Newton-Schulz iteration ``X <- 1.5 X - 0.5 X X^T X`` that Muon-style optimizers
    run; LoRA matrices have one side of at most the rank (<= 64 here), so a thin SVD gives it exactly and
    faster than the iteration. Singular values below 1e-12 of the largest count as zero.
    """
    x = m.astype(np.float64)
    if not x.size or not np.any(x) or not np.all(np.isfinite(x)):
        return np.zeros_like(x)
    u, sigma, vt = np.linalg.svd(x, full_matrices=False)
    k = int(np.sum(sigma > sigma[0] * 1e-12))
    out: np.ndarray = u[:, :k] @ vt[:k]
    return out


def dimuon_update(p: np.ndarray, g: np.ndarray, momentum: np.ndarray, *, rank: int, learning_rate: float,
                  beta1: float) -> None:
    """One Dimuon update of the LoRA matrix ``p`` in place from gradient ``g`` (already clipped)."""
    momentum *= beta1
    momentum += (1.0 - beta1) * g
    direction = matrix_sign(momentum)
    norm = float(np.linalg.norm(direction))
    if norm > 0.0:
        p -= (learning_rate * np.sqrt(rank) / norm) * direction.astype(p.dtype)


def _fields(given: Mapping[str, Any], defaults: Mapping[str, float], required: tuple[str, ...], where: str
            ) -> dict[str, float]:
    allowed = set(defaults) | set(required)
    unknown = sorted(set(given) - allowed - {"type"})
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown}; {where} takes {sorted(allowed)}")
    missing = [k for k in required if given.get(k) is None]
    if missing:
        raise ValueError(f"{where}: {missing[0]} is required")
    out = dict(defaults)
    for key in allowed:
        value = given.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where}.{key} must be a number, got {value!r}")  # noqa: TRY004 - a bad wire value (400)
        out[key] = float(value)
    return out


def parse_optim_params(params: Mapping[str, Any]) -> tuple[str, dict[str, float]]:
    """``(optimizer, hyperparameters)`` of an AdamParams / DimuonParams mapping (the ``type`` picks one).

    A mapping without ``type`` (or ``"adamw"``/``"adam"``) is AdamParams. Unknown optimizer types and
    unknown fields raise ValueError naming them, so a request never runs as another optimizer.
    """
    kind = params.get("type") or "adamw"
    if kind in ("adamw", "adam"):
        return "adamw", _fields(params, _ADAM_DEFAULTS, (), "AdamParams")
    if kind == "dimuon":
        return "dimuon", _fields(params, _DIMUON_DEFAULTS, ("learning_rate",), "DimuonParams")
    raise ValueError(f"optimizer type {kind!r} is not supported by this server (supported: {', '.join(OPTIMIZERS)})")


def parse_optimizer_config(config: Mapping[str, Any] | None) -> str:
    """The optimizer a CreateModelRequest's ``optimizer_config`` selects: ``"adamw"`` (also for None) or ``"dimuon"``.

    Raises:
        ValueError: an unknown type, a Dimuon ``version`` other than 1, or unknown fields (named).
    """
    if config is None:
        return "adamw"
    kind = config.get("type") or "adamw"
    allowed = {"adamw": {"type"}, "dimuon": {"type", "version"}}.get(kind)
    if allowed is None:
        raise ValueError(f"optimizer_config type {kind!r} is not supported (supported: {', '.join(OPTIMIZERS)})")
    unknown = sorted(set(config) - allowed)
    if unknown:
        raise ValueError(f"optimizer_config ({kind}): unknown field(s) {unknown}")
    if kind == "dimuon" and config.get("version", 1) != 1:
        raise ValueError(f"optimizer_config: Dimuon version {config.get('version')!r} is not supported (only 1)")
    return str(kind)
