"""Prompt-side sampling outputs of the local engine and the stability records StableReinforce trains from.

All logprobs are those of the temperature-free model distribution (log-softmax of the raw logits), like the
per-token logprobs of sampled sequences. Prompt rows: row ``i`` is the distribution over prompt token
``i + 1`` given ``prompt[: i + 1]`` (position 0 has no preceding context).

- ``prompt_logprobs`` / ``topk_prompt_logprobs``: one entry per prompt position, ``None`` at position 0
  and, with ``prompt_logprobs_last_n = N``, at every position before the last ``N``.
- ``target_prompt_logprobs``: an int64 ``[len(prompt) - 1, K]`` matrix of token ids (``-1`` = none) in,
  a float32 matrix of the same shape out (``0.0`` where the request had ``-1``).
- ``prompt_alt_tokens_k = k``: ``k`` independent draws with replacement at every prompt row, at the
  request's temperature (greedy at 0; top_k/top_p do not apply), from their own random stream (the
  sampled sequences are the same with or without them); ``[len(prompt) - 1, k]`` token ids + logprobs.
- ``record_stability_info``: a :class:`StabilityRecord` per sequence (prompt and sampled tokens with
  their logprobs); :func:`behaviour_logprobs` turns a datum's provenance spans into the sampling-time
  logprobs of its target tokens.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "MAX_PROMPT_ALT_TOKENS_K",
    "PromptExtras",
    "StabilityRecord",
    "behaviour_logprobs",
    "check_prompt_options",
    "int_ids",
    "prompt_extras",
    "topk_rows",
]

# Draws per prompt position: bounds the response (len(prompt) - 1) * k * 12 bytes.
MAX_PROMPT_ALT_TOKENS_K = 64


@dataclass(frozen=True)
class StabilityRecord:
    """What ``record_stability_info`` keeps of one sampled sequence (arrays are read-only)."""

    prompt_tokens: np.ndarray  # int64 (P,)
    prompt_logprobs: np.ndarray  # float64 (P,), NaN at position 0
    tokens: np.ndarray  # int64 (T,)
    logprobs: np.ndarray  # float64 (T,)


@dataclass
class PromptExtras:
    """The prompt-side outputs a sample request asked for (None where not asked)."""

    prompt_logprobs: list[float | None] | None = None
    topk_prompt_logprobs: list[list[tuple[int, float]] | None] | None = None
    target_prompt_logprobs: np.ndarray | None = None  # float32 [P - 1, K]
    prompt_alt_tokens: tuple[np.ndarray, np.ndarray] | None = None  # (int64 [P - 1, k], float32 [P - 1, k])
    all_prompt_logprobs: np.ndarray | None = None  # float64 (P,), NaN at 0: for stability records


def _non_negative_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def check_prompt_options(
    prompt_len: int, vocab_size: int, *, prompt_logprobs: bool = False, topk_prompt_logprobs: int = 0,
    target_prompt_logprobs: Any = None, prompt_alt_tokens_k: int = 0, prompt_logprobs_last_n: int | None = None,
    topk_sample_logprobs: int = 0,
) -> np.ndarray | None:
    """Validate the prompt-side sampling options; returns ``target_prompt_logprobs`` as an int64 matrix.

    Raises:
        ValueError: naming the option that is malformed or out of range.
    """
    _non_negative_int(topk_prompt_logprobs, "topk_prompt_logprobs")
    _non_negative_int(topk_sample_logprobs, "topk_sample_logprobs")
    k = _non_negative_int(prompt_alt_tokens_k, "prompt_alt_tokens_k")
    if k > MAX_PROMPT_ALT_TOKENS_K:
        raise ValueError(f"prompt_alt_tokens_k must be at most {MAX_PROMPT_ALT_TOKENS_K}, got {k}")
    if prompt_logprobs_last_n is not None:
        n = _non_negative_int(prompt_logprobs_last_n, "prompt_logprobs_last_n")
        if not (prompt_logprobs or topk_prompt_logprobs):
            raise ValueError("prompt_logprobs_last_n requires prompt_logprobs (or topk_prompt_logprobs)")
        if not 1 <= n <= prompt_len - 1:
            raise ValueError(
                f"prompt_logprobs_last_n must be between 1 and len(prompt) - 1 = {prompt_len - 1}, got {n}"
            )
    if target_prompt_logprobs is None:
        return None
    targets = np.asarray(target_prompt_logprobs)
    if targets.size and targets.dtype.kind not in "iu":
        raise ValueError(f"target_prompt_logprobs must hold integer token ids, got dtype {targets.dtype}")
    if targets.ndim != 2 or targets.shape[0] != prompt_len - 1:
        raise ValueError(
            f"target_prompt_logprobs has shape {list(targets.shape)}; it must be [len(prompt) - 1, K] = "
            f"[{prompt_len - 1}, K] (row i is scored at prompt position i + 1)"
        )
    return int_ids(targets, vocab_size, "target_prompt_logprobs: token id", "or -1 for no request", allow_none=True)


def int_ids(ids: np.ndarray, vocab_size: int, what: str, hint: str, *, allow_none: bool = False) -> np.ndarray:
    """``ids`` as int64 when every id is in the vocabulary (or -1 where ``allow_none``); else ValueError."""
    bad = (ids < (-1 if allow_none else 0)) | (ids >= vocab_size)
    if np.any(bad):
        raise ValueError(f"{what} {int(ids[bad].flat[0])} is out of range ({hint})")
    out: np.ndarray = ids.astype(np.int64)
    return out


def topk_rows(lsm: np.ndarray, k: int) -> list[list[tuple[int, float]]]:
    """The ``k`` most likely ``(token, logprob)`` of every row of a log-softmax matrix, best first."""
    k = min(k, lsm.shape[1])
    order = np.argsort(-lsm, axis=1, kind="stable")[:, :k]
    values = np.take_along_axis(lsm, order, axis=1)
    return [list(zip(map(int, ids), map(float, lps))) for ids, lps in zip(order, values)]


def _draw(lsm: np.ndarray, k: int, temperature: float, rng: np.random.Generator) -> np.ndarray:
    """``k`` independent draws per row at ``temperature`` (row-wise inverse CDF; greedy at 0)."""
    if temperature == 0.0:
        return np.repeat(np.argmax(lsm, axis=1)[:, None], k, axis=1)
    scaled = lsm / temperature
    probs = np.exp(scaled - scaled.max(axis=1, keepdims=True))
    cum = np.cumsum(probs, axis=1)
    uniform = rng.random((lsm.shape[0], k))
    out = np.empty((lsm.shape[0], k), dtype=np.int64)
    for row in range(lsm.shape[0]):
        idx = np.searchsorted(cum[row], uniform[row] * cum[row, -1], side="right")
        out[row] = np.minimum(idx, lsm.shape[1] - 1)
    return out


def prompt_extras(
    prompt: np.ndarray, prompt_logits: np.ndarray, *, prompt_logprobs: bool, topk_prompt_logprobs: int,
    target_prompt_logprobs: np.ndarray | None, prompt_alt_tokens_k: int, prompt_logprobs_last_n: int | None,
    record_stability_info: bool, temperature: float, alt_rng: np.random.Generator,
) -> PromptExtras:
    """Everything the options ask for, from the prefill's logits (P, V) of the (validated) prompt (P,)."""
    extras = PromptExtras()
    wanted = (prompt_logprobs or topk_prompt_logprobs or target_prompt_logprobs is not None or prompt_alt_tokens_k
              or record_stability_info)
    if not wanted:
        return extras
    lsm = prompt_logits[:-1].astype(np.float64)
    lsm = lsm - lsm.max(axis=1, keepdims=True)
    lsm -= np.log(np.exp(lsm).sum(axis=1, keepdims=True))
    rows = np.arange(prompt.size - 1)
    actual = lsm[rows, prompt[1:]]
    first_scored = 1 if prompt_logprobs_last_n is None else prompt.size - prompt_logprobs_last_n
    if prompt_logprobs:
        extras.prompt_logprobs = [None if pos < first_scored else float(actual[pos - 1]) for pos in range(prompt.size)]
    if topk_prompt_logprobs:
        top = topk_rows(lsm[first_scored - 1 :], topk_prompt_logprobs)
        extras.topk_prompt_logprobs = [None] * first_scored + list(top)
    if target_prompt_logprobs is not None:
        asked = target_prompt_logprobs >= 0
        picked = np.take_along_axis(lsm, np.where(asked, target_prompt_logprobs, 0), axis=1)
        extras.target_prompt_logprobs = np.where(asked, picked, 0.0).astype(np.float32)
    if prompt_alt_tokens_k:
        tokens = _draw(lsm, prompt_alt_tokens_k, temperature, alt_rng)
        extras.prompt_alt_tokens = (tokens, np.take_along_axis(lsm, tokens, axis=1).astype(np.float32))
    if record_stability_info:
        extras.all_prompt_logprobs = np.concatenate([[np.nan], actual])
    return extras


def _span_fields(span: Any) -> tuple[str, str, int, int]:
    kind, sequence_id, offset, length = span
    if kind not in ("prompt", "sampled"):
        raise ValueError(f"provenance span kind must be 'prompt' or 'sampled', got {kind!r}")
    if not sequence_id:
        raise ValueError("provenance span sequence_id must be non-empty")
    if int(offset) < 0 or int(length) < 0:
        raise ValueError(f"provenance span offset/length must be >= 0, got {offset}/{length}")
    return kind, str(sequence_id), int(offset), int(length)


def behaviour_logprobs(
    spans: Sequence[Any], records: Mapping[str, StabilityRecord], target_tokens: Sequence[int] | np.ndarray
) -> np.ndarray:
    """Sampling-time logprobs (float64, one per target token) from ``loss_fn_input_spans``-style runs.

    ``spans`` are ``(kind, sequence_id, offset, length)`` runs tiling ``target_tokens`` in order: kind
    ``"sampled"`` covers positions ``[offset, offset + length)`` of that sequence's sampled tokens,
    ``"prompt"`` those of its request's prompt. Each covered target token must be the recorded one.

    Raises:
        ValueError: an unknown sequence_id (not recorded, or recorded for another session), runs that do
            not tile the targets, runs past the recorded tokens, prompt position 0 (it has no logprob), or
            target tokens that differ from the recorded ones.
    """
    targets = np.asarray(target_tokens, dtype=np.int64)
    out = np.empty(targets.size, dtype=np.float64)
    pos = 0
    for i, span in enumerate(spans):
        kind, sequence_id, offset, length = _span_fields(span)
        record = records.get(sequence_id)
        if record is None:
            raise ValueError(
                f"provenance span {i}: no stability info for sequence_id {sequence_id!r} (sample with "
                f"record_stability_info=True in this session)"
            )
        source, lps = (record.tokens, record.logprobs) if kind == "sampled" else (
            record.prompt_tokens, record.prompt_logprobs)
        if offset + length > source.size:
            raise ValueError(
                f"provenance span {i}: [{offset}, {offset + length}) is past the {source.size} {kind} tokens of "
                f"{sequence_id!r}"
            )
        if kind == "prompt" and offset == 0 and length:
            raise ValueError(f"provenance span {i}: prompt position 0 of {sequence_id!r} has no logprob")
        if pos + length > targets.size:
            raise ValueError(f"provenance spans cover more than the {targets.size} target tokens")
        got = targets[pos : pos + length]
        want = source[offset : offset + length]
        if not np.array_equal(got, want):
            j = int(np.argmax(got != want))
            raise ValueError(
                f"provenance span {i}: target_tokens[{pos + j}] is {int(got[j])} but {sequence_id!r} has "
                f"{int(want[j])} at {kind} position {offset + j}"
            )
        out[pos : pos + length] = lps[offset : offset + length]
        pos += length
    if pos != targets.size:
        raise ValueError(f"provenance spans cover {pos} of the {targets.size} target tokens; they must tile them")
    return out
