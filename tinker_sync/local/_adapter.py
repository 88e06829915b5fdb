"""LoRA adapters of the local engine: weights, optimizer state, gradients, and PEFT-style persistence."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import _nn, _optim, _safetensors

if TYPE_CHECKING:
    from ._engine import Engine

logger = logging.getLogger(__name__)

__all__ = ["ADAPTER_CONFIG_FILE", "ADAPTER_WEIGHTS_FILE", "LORA_ALPHA", "OPTIMIZER_STATE_FILE", "Adapter"]

LORA_ALPHA = 32.0
ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
OPTIMIZER_STATE_FILE = "optimizer_state.safetensors"


# PEFT-style tensor names for our module names.
def _peft_module_name(module: str) -> str:
    if module == _nn.UNEMBED_MODULE:
        return "base_model.model.lm_head"
    _, idx, kind = module.split(".")
    block = "self_attn" if kind in _nn.ATTN_MODULES else "mlp"
    return f"base_model.model.model.layers.{idx}.{block}.{kind}_proj"


def _target_modules(train_attn: bool, train_mlp: bool, train_unembed: bool) -> list[str]:
    out: list[str] = []
    if train_attn:
        out += [f"{m}_proj" for m in _nn.ATTN_MODULES]
    if train_mlp:
        out += [f"{m}_proj" for m in _nn.MLP_MODULES]
    if train_unembed:
        out.append("lm_head")
    return out


class Adapter:
    """LoRA weights of one model + AdamW state + accumulated gradients.

    ``params`` maps a module name (``layers.0.q`` ... ``unembed``) to ``(A, B)``. Mutations go through
    the engine under :attr:`lock`; :meth:`snapshot` gives an immutable copy for samplers.
    """

    def __init__(
        self, *, model_name: str, rank: int, seed: int, train_attn: bool, train_mlp: bool, train_unembed: bool,
        params: dict[str, tuple[np.ndarray, np.ndarray]], optimizer: str = "adamw",
    ) -> None:
        if optimizer not in _optim.OPTIMIZERS:
            raise ValueError(f"optimizer {optimizer!r} is not supported (supported: {', '.join(_optim.OPTIMIZERS)})")
        self.optimizer = optimizer  # "adamw" (exp_avg/exp_avg_sq) or "dimuon" (exp_avg = momentum)
        self.model_name = model_name
        self.rank = rank
        self.seed = seed
        self.train_attn = train_attn
        self.train_mlp = train_mlp
        self.train_unembed = train_unembed
        self.params = params
        self.grads: dict[str, tuple[np.ndarray, np.ndarray]] = {
            k: (np.zeros_like(a), np.zeros_like(b)) for k, (a, b) in params.items()
        }
        self.exp_avg: dict[str, tuple[np.ndarray, np.ndarray]] = {
            k: (np.zeros_like(a), np.zeros_like(b)) for k, (a, b) in params.items()
        }
        self.exp_avg_sq: dict[str, tuple[np.ndarray, np.ndarray]] = {
            k: (np.zeros_like(a), np.zeros_like(b)) for k, (a, b) in params.items()
        }
        self.step = 0
        self.pending_grad_calls = 0
        self.frozen = False
        self.lock = threading.RLock()
        self._merged: dict[str, np.ndarray] | None = None  # cache of W + s*A@B (invalidated on update)

    @property
    def scale(self) -> float:
        return LORA_ALPHA / self.rank

    def merged_weights(self, base: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        """The base weights with this adapter merged in (W + s*A@B), cached until the next update."""
        with self.lock:
            if self._merged is None:
                merged = dict(base)
                for module, (a, b) in self.params.items():
                    merged[module] = base[module] + self.scale * (a @ b)
                self._merged = merged
            return self._merged

    def invalidate_merged(self) -> None:
        """Drop the merged-weights cache (the adapter's parameters changed)."""
        self._merged = None

    @property
    def lora_config(self) -> dict[str, Any]:
        """PEFT-like adapter config (also written as adapter_config.json)."""
        return {
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": self.model_name,
            "r": self.rank,
            "lora_alpha": LORA_ALPHA,
            "lora_dropout": 0.0,
            "bias": "none",
            "target_modules": _target_modules(self.train_attn, self.train_mlp, self.train_unembed),
            "train_attn": self.train_attn,
            "train_mlp": self.train_mlp,
            "train_unembed": self.train_unembed,
            "seed": self.seed,
            "optimizer": self.optimizer,
        }

    def snapshot(self) -> Adapter:
        """A frozen copy of the weights (no gradients or optimizer state needed) for a sampler."""
        with self.lock:
            snap = Adapter(
                model_name=self.model_name, rank=self.rank, seed=self.seed, train_attn=self.train_attn,
                train_mlp=self.train_mlp, train_unembed=self.train_unembed, optimizer=self.optimizer,
                params={k: (a.copy(), b.copy()) for k, (a, b) in self.params.items()},
            )
            snap.step = self.step
        snap.grads = {}
        snap.exp_avg = {}
        snap.exp_avg_sq = {}
        for a, b in snap.params.values():
            a.setflags(write=False)
            b.setflags(write=False)
        snap.frozen = True
        return snap

    # ------------------------------------------------------------------ persistence
    def save(self, directory: Path, *, with_optimizer: bool) -> None:
        """Write adapter_config.json + adapter_model.safetensors (+ optimizer_state.safetensors)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with self.lock:
            weights: dict[str, np.ndarray] = {}
            for module, (a, b) in self.params.items():
                peft = _peft_module_name(module)
                weights[f"{peft}.lora_A.weight"] = a.T.astype(np.float32)
                weights[f"{peft}.lora_B.weight"] = b.T.astype(np.float32)
            meta = {"format": "pt", "base_model": self.model_name}
            _safetensors.save_file(weights, directory / ADAPTER_WEIGHTS_FILE, meta)
            if with_optimizer and not self.frozen:
                state: dict[str, np.ndarray] = {}
                for module in self.params:
                    peft = _peft_module_name(module)
                    for part, idx in (("lora_A", 0), ("lora_B", 1)):
                        state[f"{peft}.{part}.exp_avg"] = self.exp_avg[module][idx].T.astype(np.float32)
                        state[f"{peft}.{part}.exp_avg_sq"] = self.exp_avg_sq[module][idx].T.astype(np.float32)
                _safetensors.save_file(
                    state, directory / OPTIMIZER_STATE_FILE, {"step": str(self.step), "base_model": self.model_name}
                )
            config_text = json.dumps(self.lora_config, indent=2, sort_keys=True) + "\n"
        (directory / ADAPTER_CONFIG_FILE).write_text(config_text, encoding="utf-8")

    @classmethod
    def load(cls, engine: Engine, directory: Path, *, with_optimizer: bool) -> Adapter:
        """Load an adapter saved by :meth:`save`, validating base model, modules and shapes.

        The optimizer's identity comes back with its state (a full-state resume); weights alone start with
        AdamW, and the caller sets :attr:`optimizer` when the new model asked for another one.

        Raises:
            ValueError: missing files, a different base model, or tensors that do not fit this model.
        """
        directory = Path(directory)
        for name in (ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE):
            if not (directory / name).is_file():
                raise ValueError(f"checkpoint is incomplete: {name} not found in {directory}")
        kwargs = _read_config(directory / ADAPTER_CONFIG_FILE, engine.spec.name)
        if not with_optimizer:
            kwargs["optimizer"] = "adamw"
        adapter = engine.new_adapter(**kwargs)
        adapter._load_weights(directory / ADAPTER_WEIGHTS_FILE)
        if with_optimizer:
            adapter._load_optimizer_state(directory)
        adapter._merged = None
        return adapter

    def _load_weights(self, path: Path) -> None:
        try:
            tensors, _ = _safetensors.load_file(path)
        except _safetensors.SafetensorsError as exc:
            raise ValueError(f"{ADAPTER_WEIGHTS_FILE} is invalid: {exc}") from exc
        expected = {
            f"{_peft_module_name(m)}.{part}.weight": (m, idx)
            for m in self.params
            for part, idx in (("lora_A", 0), ("lora_B", 1))
        }
        if set(tensors) != set(expected):
            missing = sorted(set(expected) - set(tensors))[:3]
            extra = sorted(set(tensors) - set(expected))[:3]
            raise ValueError(f"{ADAPTER_WEIGHTS_FILE} does not match its config: missing {missing}, unexpected {extra}")
        for name, (module, idx) in expected.items():
            target = self.params[module][idx]
            value = tensors[name].T
            if value.shape != target.shape:
                raise ValueError(
                    f"tensor {name} has shape {list(tensors[name].shape)}, expected {list(target.T.shape)}"
                )
            if not np.all(np.isfinite(value)):
                raise ValueError(f"tensor {name} contains non-finite values")
            target[...] = value

    def _load_optimizer_state(self, directory: Path) -> None:
        opt_path = directory / OPTIMIZER_STATE_FILE
        if not opt_path.is_file():
            raise ValueError(f"checkpoint has no optimizer state ({OPTIMIZER_STATE_FILE} not found in {directory})")
        try:
            state, meta = _safetensors.load_file(opt_path)
            self.step = int(meta.get("step", "0"))
        except (_safetensors.SafetensorsError, ValueError) as exc:
            raise ValueError(f"{OPTIMIZER_STATE_FILE} is invalid: {exc}") from exc
        for module in self.params:
            peft = _peft_module_name(module)
            for part, idx in (("lora_A", 0), ("lora_B", 1)):
                for kind, store in (("exp_avg", self.exp_avg), ("exp_avg_sq", self.exp_avg_sq)):
                    key = f"{peft}.{part}.{kind}"
                    target = store[module][idx]
                    if key not in state or state[key].T.shape != target.shape:
                        raise ValueError(f"{OPTIMIZER_STATE_FILE}: tensor {key} missing or of the wrong shape")
                    target[...] = state[key].T


def _read_config(path: Path, model_name: str) -> dict[str, Any]:
    """``new_adapter`` keyword arguments from adapter_config.json, checked against the engine's model."""
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
        base = str(config["base_model_name_or_path"])
        kwargs: dict[str, Any] = {k: bool(config.get(k, True)) for k in ("train_attn", "train_mlp", "train_unembed")}
        kwargs.update(rank=int(config["r"]), seed=int(config.get("seed") or 0),
                      optimizer=str(config.get("optimizer") or "adamw"))
        alpha = float(config.get("lora_alpha", LORA_ALPHA))
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{ADAPTER_CONFIG_FILE} is invalid: {exc!r}") from exc
    if base != model_name:
        raise ValueError(f"checkpoint was trained on base model {base!r}; it cannot be loaded into {model_name!r}")
    if alpha != LORA_ALPHA:
        raise ValueError(f"checkpoint lora_alpha {alpha} is not supported (this server uses {LORA_ALPHA})")
    return kwargs
