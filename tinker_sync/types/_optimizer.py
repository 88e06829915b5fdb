"""Optimizer choice (fixed when a model is created) and per-step optimizer hyper-parameters."""

# attrs fields are built by validating factories (str_field(), int_field(), ...), not dataclass defaults.
from __future__ import annotations

from typing import Literal

import attrs

from ._common import choice_field, float_field, tag_field

__all__ = [
    "AdamOptimizerConfig",
    "AdamParams",
    "DimuonOptimizerConfig",
    "DimuonParams",
    "OptimParams",
    "OptimizerConfig",
]


@attrs.frozen
class AdamOptimizerConfig:
    """Train the model with Adam(W) (the default optimizer family)."""

    type: Literal["adamw"] = tag_field("adamw")


@attrs.frozen
class DimuonOptimizerConfig:
    """Train the model with the Dimuon optimizer (``version`` 1)."""

    version: Literal[1] = attrs.field(default=1, validator=attrs.validators.in_((1,)))
    type: Literal["dimuon"] = tag_field("dimuon")


# The optimizer family of a training model, chosen at creation (tagged by ``type``).
OptimizerConfig = AdamOptimizerConfig | DimuonOptimizerConfig


@attrs.frozen
class AdamParams:
    """Adam(W) hyper-parameters for optim_step (all always sent)."""

    learning_rate: float = float_field(default=1e-4, minimum=0.0)
    beta1: float = float_field(default=0.9, minimum=0.0, maximum=1.0, max_exclusive=True)
    beta2: float = float_field(default=0.95, minimum=0.0, maximum=1.0, max_exclusive=True)
    eps: float = float_field(default=1e-12, minimum=0.0, min_exclusive=True)
    weight_decay: float = float_field(default=0.0, minimum=0.0)
    grad_clip_norm: float = float_field(default=0.0, minimum=0.0)


@attrs.frozen
class DimuonParams:
    """Hyper-parameters of one Dimuon optimizer step (``learning_rate`` is required, as officially)."""

    learning_rate: float = float_field(minimum=0.0)
    grad_clip_norm: float = float_field(default=0.0)
    beta1: float = float_field(default=0.9, minimum=0.0, maximum=1.0, max_exclusive=True)
    type: Literal["dimuon"] = choice_field(("dimuon",), default="dimuon")


# Per-step hyper-parameters: AdamParams (sent as ``adam_params``) or another family's (``optimizer_params``).
OptimParams = AdamParams | DimuonParams


def check_optimizer_config(value: object) -> OptimizerConfig | None:
    """attrs converter: an OptimizerConfig (AdamOptimizerConfig or DimuonOptimizerConfig) or None."""
    if value is None or isinstance(value, (AdamOptimizerConfig, DimuonOptimizerConfig)):
        return value
    raise TypeError(
        f"optimizer_config must be AdamOptimizerConfig or DimuonOptimizerConfig, got {type(value).__name__}"
    )
