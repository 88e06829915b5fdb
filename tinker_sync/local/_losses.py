"""Built-in losses of the local engine: their inputs, config defaults, and value + dLoss/dlogprobs per datum.

Every loss is a sum over the tokens of a datum (``loss:sum``); ``lp`` are the model's logprobs of
``target_tokens`` and ``old`` (``loss_fn_inputs["logprobs"]``) those of the sampling policy.

- ``cross_entropy``: ``-sum(w * lp)``.
- ``importance_sampling``: ``-sum(ratio * A)`` with ``ratio = exp(lp - old)``.
- ``ppo``: ``-sum(min(ratio * A, clip(ratio, low, high) * A))`` (bounds 0.8 / 1.2 by default).
- ``cispo``: ``-sum(sg[clip(ratio, low, high)] * A * lp)`` (bounds 0 / 4 by default).
- ``dro``: ``-sum(lp * A - beta / 2 * (lp - old)**2)`` (beta 0.05 by default).
- ``gspo`` (GSPO-token, as the Tinker docs define it): the sequence ratio
  ``s = exp(mean over M of (lp - old))`` over the tokens ``M`` where ``sequence_ratio_mask != 0`` (every
  token when the mask is absent; ``s = 1`` when ``M`` is empty); each token carries ``s``'s value with its
  own logprob's gradient, ``s_t = sg[s] * exp(lp_t - sg[lp_t])``, and the loss is
  ``-sum(min(s_t * A, clip(s_t, low, high) * A))``. The bounds default to the GSPO paper's
  ``1 - 3e-4`` / ``1 + 4e-4`` and are set like PPO's (``clip_low_threshold`` / ``clip_high_threshold``,
  as loss_fn_config keys or per-token inputs).
- ``stable_reinforce``: the official objective is not published (the service documents it as alpha),
  so this server states its own: REINFORCE with a detached importance weight truncated at 1 and an
  optional KL penalty toward the sampling policy (``kl_coeff``, default 0, the one config key the
  official SDK names): ``-sum(sg[min(ratio, 1)] * A * lp) + kl_coeff * sum(ratio - log(ratio) - 1)``.
  ``logprobs`` are the sampling-time logprobs that ``record_stability_info`` records; the server fills
  them from a datum's provenance when the caller does not send them (see :func:`._sampling.behaviour_logprobs`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["CONFIG_DEFAULTS", "LOSS_FUNCTIONS", "check_config", "loss_and_grad"]

_RL = ("target_tokens", "logprobs", "advantages")
_CLIP = ("clip_low_threshold", "clip_high_threshold")

# loss_fn -> (required loss_fn_inputs keys, optional keys)
LOSS_FUNCTIONS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "cross_entropy": (("target_tokens", "weights"), ()),
    "importance_sampling": (_RL, ()),
    "ppo": (_RL, _CLIP),
    "cispo": (_RL, _CLIP),
    "dro": (_RL, ()),
    "gspo": (_RL, (*_CLIP, "sequence_ratio_mask")),
    "stable_reinforce": (_RL, ()),
}
# loss_fn -> {config key: default}; defaults follow the Tinker docs (PPO ratio bounds 0.8/1.2, CISPO 0/4)
# and the GSPO paper (ratio bounds 1 - 3e-4 / 1 + 4e-4).
CONFIG_DEFAULTS: dict[str, dict[str, float]] = {
    "cross_entropy": {},
    "importance_sampling": {},
    "ppo": {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2},
    "cispo": {"clip_low_threshold": 0.0, "clip_high_threshold": 4.0},
    "dro": {"beta": 0.05},
    "gspo": {"clip_low_threshold": 1.0 - 3e-4, "clip_high_threshold": 1.0 + 4e-4},
    "stable_reinforce": {"kl_coeff": 0.0},
}


def check_config(loss_fn: str, loss_fn_config: Mapping[str, float | str] | None) -> dict[str, float]:
    """The loss's config with defaults filled in; unknown keys and non-finite values raise ValueError."""
    if loss_fn not in LOSS_FUNCTIONS:
        raise ValueError(f"unknown loss_fn {loss_fn!r}; supported: {', '.join(LOSS_FUNCTIONS)}")
    defaults = CONFIG_DEFAULTS[loss_fn]
    config = dict(defaults)
    for key, value in (loss_fn_config or {}).items():
        if key not in defaults:
            allowed = ", ".join(defaults) or "none"
            raise ValueError(f"loss_fn_config key {key!r} is not used by {loss_fn!r} (allowed: {allowed})")
        try:
            v = float(value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"loss_fn_config[{key!r}] must be a number, got {value!r}") from exc
        if not np.isfinite(v):
            raise ValueError(f"loss_fn_config[{key!r}] must be finite, got {value!r}")
        config[key] = v
    if "clip_low_threshold" in config and config["clip_low_threshold"] > config["clip_high_threshold"]:
        raise ValueError("clip_low_threshold must not exceed clip_high_threshold")
    if config.get("kl_coeff", 0.0) < 0:
        raise ValueError(f"loss_fn_config['kl_coeff'] must be >= 0, got {config['kl_coeff']}")
    return config


def _clipped_objective(
    ratio: np.ndarray, adv: np.ndarray, low: np.ndarray | float, high: np.ndarray | float
) -> tuple[np.ndarray, np.ndarray]:
    """PPO-style ``min(ratio * A, clip(ratio) * A)`` and where its gradient flows (the unclipped branch wins)."""
    unclipped = ratio * adv
    clipped = np.clip(ratio, low, high) * adv
    # Inside the bounds both branches are equal and the gradient flows; outside, only where the
    # unclipped branch is the smaller one.
    active = ((ratio >= low) & (ratio <= high)) | (unclipped < clipped)
    return np.minimum(unclipped, clipped), active


def _gspo(lp: np.ndarray, inputs: Mapping[str, np.ndarray], config: Mapping[str, float]) -> tuple[float, np.ndarray]:
    old, adv = inputs["logprobs"], inputs["advantages"]
    mask = inputs.get("sequence_ratio_mask")
    in_ratio = np.ones(lp.shape, dtype=bool) if mask is None else mask != 0
    log_ratio = float(np.mean((lp - old)[in_ratio])) if np.any(in_ratio) else 0.0
    s = np.full(lp.shape, np.exp(log_ratio))  # the value every token carries; d s_t / d lp_t = s
    low = inputs.get("clip_low_threshold", config["clip_low_threshold"])
    high = inputs.get("clip_high_threshold", config["clip_high_threshold"])
    obj, active = _clipped_objective(s, adv, low, high)
    return float(-np.sum(obj)), np.where(active, -s * adv, 0.0)


def _stable_reinforce(
    lp: np.ndarray, inputs: Mapping[str, np.ndarray], config: Mapping[str, float]
) -> tuple[float, np.ndarray]:
    old, adv = inputs["logprobs"], inputs["advantages"]
    weight = np.minimum(np.exp(lp - old), 1.0)  # detached: only lp carries the policy gradient
    kl = config["kl_coeff"]
    log_ratio = lp - old
    ratio = np.exp(log_ratio)
    # k3 estimator of KL(sampler || trainer) on tokens drawn by the sampler: ratio - log(ratio) - 1 >= 0.
    loss = -np.sum(weight * adv * lp) + kl * np.sum(ratio - log_ratio - 1.0)
    return float(loss), -weight * adv + kl * (ratio - 1.0)


def loss_and_grad(
    loss_fn: str, lp: np.ndarray, inputs: Mapping[str, np.ndarray], config: Mapping[str, float]
) -> tuple[float, np.ndarray]:
    """Summed loss of one datum and dLoss/dlogprobs (same shape as ``lp``), computed in float64."""
    if loss_fn == "cross_entropy":
        w = inputs["weights"]
        return float(-np.sum(lp * w)), -w
    if loss_fn == "gspo":
        return _gspo(lp, inputs, config)
    if loss_fn == "stable_reinforce":
        return _stable_reinforce(lp, inputs, config)
    old = inputs["logprobs"]
    adv = inputs["advantages"]
    if loss_fn == "dro":
        beta = config["beta"]
        diff = lp - old
        return float(-np.sum(lp * adv - 0.5 * beta * diff * diff)), -adv + beta * diff
    ratio = np.exp(lp - old)
    if loss_fn == "importance_sampling":
        return float(-np.sum(ratio * adv)), -ratio * adv
    low = inputs.get("clip_low_threshold", config["clip_low_threshold"])
    high = inputs.get("clip_high_threshold", config["clip_high_threshold"])
    if loss_fn == "ppo":
        obj, active = _clipped_objective(ratio, adv, low, high)
        return float(-np.sum(obj)), np.where(active, -ratio * adv, 0.0)
    if loss_fn == "cispo":
        clipped = np.clip(ratio, low, high)
        return float(-np.sum(clipped * lp * adv)), -clipped * adv
    raise AssertionError(loss_fn)  # pragma: no cover - validated before
