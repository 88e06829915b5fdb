"""Argument checks of the client methods, run in the caller's thread before anything is sent."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

from . import types

__all__ = [
    "LOSS_FNS",
    "check_data",
    "check_loss_fn",
    "check_loss_fn_config",
    "check_name",
    "check_retry_config",
    "check_tinker_path",
    "check_ttl",
    "check_user_metadata",
]

logger = logging.getLogger(__name__)

# Loss names the wire accepts (the official SDK's LossFnType; 0.38 added gspo, stable_reinforce, custom).
# Inputs are checked client-side only for the ones in _REQUIRED_INPUTS; the others pass through.
LOSS_FNS: tuple[str, ...] = (
    "cross_entropy", "importance_sampling", "ppo", "cispo", "dro", "gspo", "stable_reinforce", "custom")

# loss_fn -> loss_fn_inputs keys the server needs (the Tinker loss-function docs).
_REQUIRED_INPUTS: dict[str, tuple[str, ...]] = {
    "cross_entropy": ("target_tokens", "weights"),
    "importance_sampling": ("target_tokens", "logprobs", "advantages"),
    "ppo": ("target_tokens", "logprobs", "advantages"),
    "cispo": ("target_tokens", "logprobs", "advantages"),
    "dro": ("target_tokens", "logprobs", "advantages"),
}
# Per-token loss inputs: their first dimension is the model_input length.
_PER_TOKEN_INPUTS = ("target_tokens", "weights", "advantages", "logprobs")
_ENCODABLE_CHUNKS = (types.EncodedTextChunk, types.ImageChunk, types.DmelChunk)


def _input_length(datum: types.Datum) -> int | None:
    """model_input.length, or None when it cannot be known client-side (dmel, image without expected_tokens)."""
    try:
        return datum.model_input.length
    except ValueError:
        return None


def _check_chunks(d: types.Datum, i: int, where: str) -> None:
    if not d.model_input.chunks:
        raise ValueError(f"{where}: data[{i}].model_input is empty (give it at least one token)")
    for j, chunk in enumerate(d.model_input.chunks):
        if isinstance(chunk, types.ImageAssetPointerChunk):
            raise ValueError(  # noqa: TRY004 - a valid chunk type that this request cannot carry
                f"{where}: data[{i}].model_input.chunks[{j}] is an ImageAssetPointerChunk, which a "
                "forward_backward request cannot carry; read the image and pass "
                "types.ImageChunk(data=<bytes>, format=..., expected_tokens=...) instead"
            )
        if not isinstance(chunk, _ENCODABLE_CHUNKS):
            raise TypeError(f"{where}: data[{i}].model_input.chunks[{j}] has unsupported type {type(chunk).__name__}")


def _check_loss_inputs(d: types.Datum, i: int, where: str, loss_fn: str) -> None:
    required = _REQUIRED_INPUTS.get(loss_fn, ())
    missing = [k for k in required if k not in d.loss_fn_inputs]
    if missing:
        raise ValueError(
            f"{where}: data[{i}].loss_fn_inputs is missing {', '.join(repr(k) for k in missing)}; loss_fn "
            f"{loss_fn!r} needs {list(required)} (one value per model_input token"
            + ("; use weights 1.0 to train on a token and 0.0 to skip it)" if "weights" in missing else ")")
        )
    n = _input_length(d)
    if n is None:
        return
    for key in _PER_TOKEN_INPUTS:
        tensor = d.loss_fn_inputs.get(key)
        if tensor is None:
            continue
        shape = tensor.dense_shape()
        rows = shape[0] if shape else 0
        if rows != n:
            raise ValueError(
                f"{where}: data[{i}].loss_fn_inputs[{key!r}] has {rows} entries along its first dimension "
                f"(shape {shape}) but data[{i}].model_input has {n} tokens; they must match: entry t belongs "
                "to the token predicted after model_input[:t+1] (for next-token training use "
                "model_input = tokens[:-1] and target_tokens = tokens[1:])"
            )


def check_data(data: Any, where: str, loss_fn: str | None = None) -> list[types.Datum]:
    """Type, encodability and (for ``loss_fn``) per-datum loss-input checks, in the caller's thread.

    Mirrors the server's rules without being stricter than the hosted service: required keys only for the
    loss functions listed in ``_REQUIRED_INPUTS``; extra keys are left for the server to judge.
    """
    if isinstance(data, types.Datum):
        raise TypeError(f"{where}: data must be a list of Datum, got a single Datum (wrap it in a list)")
    if not isinstance(data, (list, tuple)):
        raise TypeError(f"{where}: data must be a list of Datum, got {type(data).__name__}")
    if not data:
        raise ValueError(f"{where}: No data provided (data is an empty list)")
    for i, d in enumerate(data):
        if not isinstance(d, types.Datum):
            raise TypeError(f"{where}: data[{i}] must be a tinker_sync.types.Datum, got {type(d).__name__}")
        _check_chunks(d, i, where)
        if loss_fn is not None:
            _check_loss_inputs(d, i, where, loss_fn)
    return list(data)


def check_loss_fn(loss_fn: Any, where: str) -> str:
    if not isinstance(loss_fn, str) or loss_fn not in LOSS_FNS:
        raise ValueError(f"{where}: unknown loss_fn {loss_fn!r}; use one of {', '.join(LOSS_FNS)}")
    return loss_fn


def check_loss_fn_config(config: Any, where: str) -> dict[str, float] | None:
    if config is None:
        return None
    if not isinstance(config, Mapping):
        raise TypeError(f"{where}: loss_fn_config must be a dict of str -> float, got {type(config).__name__}")
    out: dict[str, float] = {}
    for k, v in config.items():
        if not isinstance(k, str):
            raise TypeError(f"{where}: loss_fn_config keys must be str, got {k!r}")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
            raise ValueError(f"{where}: loss_fn_config[{k!r}] must be a finite number, got {v!r}")
        out[k] = float(v)
    return out


def check_name(name: Any, where: str) -> str:
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where}: name must be a non-empty str, got {name!r}")
    if "/" in name:
        raise ValueError(f"{where}: name {name!r} must not contain '/' (tinker paths have exactly three segments)")
    return name


def check_ttl(ttl_seconds: Any, where: str) -> int | None:
    if ttl_seconds is None:
        return None
    if isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, int) or ttl_seconds <= 0:
        raise ValueError(f"{where}: ttl_seconds must be a positive int or None (never expires), got {ttl_seconds!r}")
    return ttl_seconds


def check_tinker_path(path: Any, where: str) -> str:
    if not isinstance(path, str) or not path.startswith("tinker://"):
        raise ValueError(f"{where}: path must be a tinker:// URI (e.g. tinker://RUN/weights/NAME), got {path!r}")
    return path


def check_user_metadata(user_metadata: Any, where: str) -> dict[str, Any] | None:
    """A copy of ``user_metadata`` (a dict with str keys) or None."""
    if user_metadata is None:
        return None
    if not isinstance(user_metadata, Mapping):
        raise TypeError(f"{where}: user_metadata must be a dict, got {type(user_metadata).__name__}")
    if not all(isinstance(k, str) for k in user_metadata):
        raise TypeError(f"{where}: user_metadata keys must be str")
    return dict(user_metadata)


def check_retry_config(retry_config: Any, where: str) -> None:
    """The official SDK's ``retry_config`` is accepted, never applied: say so (WARNING) when one is given.

    Retries here follow one policy per ServiceClient (``ClientConfig.retry``, ``max_retries=``).
    """
    if retry_config is not None:
        logger.warning(
            "%s: retry_config is not applied by tinker_sync; retries follow the ServiceClient's policy "
            "(ServiceClient(max_retries=...) or retry=RetryPolicy(...))", where,
        )
