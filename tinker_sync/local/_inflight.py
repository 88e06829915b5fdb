"""Shared inflight sampler weights of the local server (``save_weights_for_sampler(kind="inflight")``).

The 0.38 inflight contract, as this server keeps it:

- every training model has at most one inflight *target*: the weights its inflight sampling sessions
  sample from. An inflight save replaces the target with a frozen copy of the model's current weights
  (a training step alone does not), and every inflight session of that model, old or new, uses the new
  target from its next sample request on; snapshot sessions keep their own fixed weights;
- the target is written to ``<data_dir>/live`` before the save completes, so it survives a restart;
  saves run on the model's lane in ``seq_id`` order, so the target is always the newest saved weights.
  There is one process and no replicas: a completed save is visible at once to every session;
- each inflight save returns a new sampling session. The server has no KV or prompt cache
  (``prompt_cache_hit_tokens`` is always 0), so sessions share no cached prefixes, as the contract asks;
- an inflight target has no ``tinker://`` path, no TTL and no user metadata: an inflight save carrying
  ``path``, ``ttl_seconds`` or ``user_metadata`` is refused by name (see :func:`inflight_refusal`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

from ._jobs import JobError
from ._live import adapter_tensors
from ._persist import LiveStateStore

__all__ = ["InflightTargets", "inflight_refusal"]

_PREFIX = "inflight:"  # the key of a model's target among the persisted sampler weights


def inflight_refusal(*, path: str | None, sampling_session_seq_id: int | None, ttl_seconds: int | None,
                     user_metadata: Mapping[str, str] | None) -> str | None:
    """Why an inflight save request cannot be honoured (None when it can)."""
    if path is not None:
        return ("kind 'inflight' publishes the model's shared inflight weights, which have no checkpoint path; omit "
                "'path' (or save named sampler weights with kind 'snapshot')")
    if sampling_session_seq_id is None:
        return "kind 'inflight' needs 'sampling_session_seq_id': every inflight save returns a new sampling session"
    if ttl_seconds is not None:
        return "inflight saves omit 'ttl_seconds': the shared inflight weights have no TTL"
    if user_metadata is not None:
        return "inflight saves omit 'user_metadata': the shared inflight weights are not a checkpoint"
    return None


class InflightTargets:
    """The current inflight weights of each training model: in memory, backed by ``LiveStateStore``.

    ``build(meta, tensors)`` turns persisted tensors back into an engine adapter after a restart.
    """

    def __init__(self, live: LiveStateStore, build: Callable[[Mapping[str, Any], Mapping[str, Any]], Any]) -> None:
        self._live = live
        self._build = build
        self._lock = threading.Lock()
        self._targets: dict[str, tuple[int, Any]] = {}  # model id -> (generation, frozen adapter)

    def publish(self, model_id: str, snapshot: Any, meta: Mapping[str, Any]) -> int:
        """Make ``snapshot`` (a frozen adapter) the target of ``model_id``; persisted first. Its generation."""
        with self._lock:
            generation = self._generation(model_id) + 1
            self._live.save_sampler(_PREFIX + model_id, adapter_tensors(snapshot, "p"),
                                    {**meta, "generation": generation})
            self._targets[model_id] = (generation, snapshot)
        return generation

    def current(self, model_id: str) -> Any:
        """The frozen adapter of the newest inflight save of ``model_id`` (loaded from disk after a restart)."""
        with self._lock:
            hit = self._targets.get(model_id)
            if hit is None:
                hit = self._load(model_id)
                if hit is None:
                    raise JobError(f"the inflight weights of model {model_id} were deleted", "server")
                self._targets[model_id] = hit
            return hit[1]

    def _generation(self, model_id: str) -> int:
        hit = self._targets.get(model_id) or self._load(model_id)
        return hit[0] if hit is not None else 0

    def _load(self, model_id: str) -> tuple[int, Any] | None:
        loaded = self._live.load_sampler(_PREFIX + model_id)
        if loaded is None:
            return None
        tensors, meta = loaded
        return int(meta.get("generation", 1)), self._build(meta, tensors).snapshot()
