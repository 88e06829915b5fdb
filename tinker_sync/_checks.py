"""Argument checks of the client methods, run in the caller's thread before anything is sent."""

from __future__ import annotations

import logging
import math
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import attrs

from . import types
from ._exceptions import APIStatusError, TinkerError

__all__ = [
    "LOSS_FNS",
    "ModelLimits",
    "ServerLimits",
    "check_data",
    "check_datum_limits",
    "check_loss_fn",
    "check_loss_fn_config",
    "check_name",
    "check_prompt_limits",
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
# Checkpoint names: what the local server stores (and a tinker:// path segment can carry): 1-200 characters
# from ASCII letters, digits and ``._-=+@,``; never "." or ".." (no spaces, no '/', no non-ASCII).
_NAME_RE = re.compile(r"[A-Za-z0-9._\-=+@,]{1,200}")
_NAME_RULE = "1-200 characters from ASCII letters, digits and . _ - = + @ , (not '.' or '..')"


def _input_length(datum: types.Datum) -> int | None:
    """model_input.length, or None when it cannot be known client-side (dmel, image without expected_tokens)."""
    try:
        return datum.model_input.length
    except ValueError:
        return None


def _check_chunks(d: types.Datum, i: int, where: str) -> None:
    if not d.model_input.chunks or _input_length(d) == 0:
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
    _check_finite(d, i, where)
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


def _check_finite(d: types.Datum, i: int, where: str) -> None:
    """NaN/inf in a float loss input (weights, advantages, logprobs...) would make the step's loss NaN."""
    for key, tensor in d.loss_fn_inputs.items():
        if tensor.dtype == "int64":
            continue
        values = tensor.data
        if math.isfinite(sum(values)):  # one C-level pass; float32 values cannot overflow a float64 sum
            continue
        pos = next(j for j, v in enumerate(values) if not math.isfinite(v))
        raise ValueError(
            f"{where}: data[{i}].loss_fn_inputs[{key!r}] holds {values[pos]} at flat position {pos}; "
            "loss inputs must be finite numbers (replace NaN/inf, e.g. weight 0.0 to skip a token)"
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
    """A checkpoint name the server accepts: ``_NAME_RULE``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where}: name must be a non-empty str, got {name!r}")
    if "/" in name:
        raise ValueError(f"{where}: name {name!r} must not contain '/' (tinker paths have exactly three segments)")
    if not _NAME_RE.fullmatch(name) or name in (".", ".."):
        shown = repr(name) if len(name) <= 60 else f"{name[:40]!r}... ({len(name)} characters)"
        raise ValueError(f"{where}: checkpoint name {shown} is invalid; use {_NAME_RULE}")
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


# ---- model limits ------------------------------------------------------------------------------


@attrs.frozen
class ModelLimits:
    """What the server says a model takes; None = not known (that check is skipped)."""

    max_context: int | None = None
    vocab_size: int | None = None
    model: str = "the model"


class ServerLimits:
    """The models' limits from ``get_server_capabilities``, fetched once on first use (blocking), thread-safe.

    A server that cannot answer (no endpoint, an error) gives unknown limits: the checks are skipped and the
    server judges. For an unknown base model the largest context of any model the server offers still
    refuses what no model could take (a multi-million-token prompt).
    """

    def __init__(self, fetch: Callable[[], types.GetServerCapabilitiesResponse]) -> None:
        self._fetch = fetch
        self._lock = threading.Lock()
        self._models: Sequence[types.SupportedModel] | None = None

    def _supported(self) -> Sequence[types.SupportedModel]:
        with self._lock:
            if self._models is None:
                try:
                    self._models = list(self._fetch().supported_models)
                except APIStatusError as exc:  # the server has no (usable) capabilities endpoint: never ask again
                    logger.debug("no server capabilities (%s): model limits are not checked client-side", exc)
                    self._models = []
                except TinkerError as exc:  # unreachable or closed: skip the checks this time, ask again next time
                    logger.debug("server capabilities unavailable (%s): model limits not checked", exc)
                    return []
            return self._models

    def of(self, base_model: str | None) -> ModelLimits:
        """The limits of ``base_model`` (or of the largest model when it is not known)."""
        models = self._supported()
        for m in models:
            if base_model is not None and m.model_name == base_model:
                # vocab_size: read when the server publishes it (SupportedModel has no such field in 0.38)
                return ModelLimits(m.max_context_length, getattr(m, "vocab_size", None), base_model)
        contexts = [m.max_context_length for m in models]
        if not contexts or any(c is None for c in contexts):
            return ModelLimits()
        return ModelLimits(max(c for c in contexts if c is not None), None, "any model of this server")


def _check_ids(tokens: Sequence[int], limits: ModelLimits, what: str, offset: int = 0) -> None:
    """Ids >= 0 and (when known) below the vocabulary size: two C-level passes, the position found only on error."""
    if not tokens:
        return
    low, high = min(tokens), max(tokens)
    if low < 0:
        raise ValueError(f"{what}: token id {low} at position {offset + tokens.index(low)} is negative; ids are >= 0")
    if limits.vocab_size is not None and high >= limits.vocab_size:
        raise ValueError(
            f"{what}: token id {high} at position {offset + tokens.index(high)} is out of range for {limits.model} "
            f"(vocabulary size {limits.vocab_size}: ids 0..{limits.vocab_size - 1})"
        )


def _check_input_ids(model_input: types.ModelInput, limits: ModelLimits, what: str) -> None:
    if limits.vocab_size is None:
        return  # text chunks hold non-negative ids by construction
    offset = 0
    for chunk in model_input.chunks:
        if isinstance(chunk, types.EncodedTextChunk):
            _check_ids(chunk.tokens, limits, what, offset)
        try:
            offset += chunk.length
        except ValueError:  # a chunk of unknown length (dmel): later positions are not known
            return


def _check_context(n: int | None, extra: int, limits: ModelLimits, what: str) -> None:
    if n is None or limits.max_context is None or n + extra <= limits.max_context:
        return
    more = f" + max_tokens {extra}" if extra else ""
    raise ValueError(
        f"{what}: context too long: {n} tokens{more} exceeds the maximum context of {limits.model} "
        f"({limits.max_context} tokens, from the server's capabilities); shorten or split the input"
    )


def check_datum_limits(data: Sequence[types.Datum], limits: ModelLimits, where: str) -> None:
    """Token ids and context length of every datum against the model's limits (checks with an unknown limit pass)."""
    for i, d in enumerate(data):
        what = f"{where}: data[{i}]"
        _check_input_ids(d.model_input, limits, f"{what}.model_input")
        target = d.loss_fn_inputs.get("target_tokens")
        if target is not None and target.dtype == "int64":
            _check_ids(cast("Sequence[int]", target.data), limits, f"{what}.loss_fn_inputs['target_tokens']")
        _check_context(_input_length(d), 0, limits, what)


def check_prompt_limits(prompt: types.ModelInput, max_tokens: int, limits: ModelLimits, where: str) -> None:
    """A sampling prompt: not empty, ids in range, prompt + ``max_tokens`` within the model's context."""
    try:
        n: int | None = prompt.length
    except ValueError:
        n = None
    if n == 0:
        raise ValueError(f"{where}: prompt is empty; give at least one token")
    _check_input_ids(prompt, limits, f"{where}: prompt")
    _check_context(n, max_tokens, limits, f"{where}: prompt")
