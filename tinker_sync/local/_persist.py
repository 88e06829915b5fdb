"""On-disk state of live training models and unsaved samplers, so both survive a server restart.

Layout under ``<data_dir>/live``::

    models/<key>.json                 metadata: ids, LoRA config, next seq_id, kept result keys (written last)
    models/<key>.w<gen>.safetensors   adapter weights + AdamW moments (rewritten by create/load/optim_step)
    models/<key>.g<gen>.safetensors   accumulated gradients (rewritten by forward_backward; none while zero)
    models/<key>.results/<k>.json     one completed result each ("create" or a seq_id), written once
    models/<key>.pending/<seq>.json   journal: an accepted request not yet run (or a refused seq_id to skip)
    samplers/<key>.safetensors        the weights of a sampler made by an unnamed save_weights_for_sampler,
                                      or (id "inflight:<model_id>") a model's shared inflight weights

Every file goes through :func:`atomic_write` (temporary name, then ``os.replace``) and the metadata names
the tensor generation it belongs to, so a crash at any point leaves the previous consistent state. Tensor
files use the server's one tensor format (``_safetensors``). Files are not fsync'ed: the state survives a
killed server process, not a power loss.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import uuid
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["LiveStateStore", "atomic_write", "secret_file"]

_SAFE = re.compile(r"[^A-Za-z0-9._-]")
_TENSORS = ".safetensors"


def _key(ident: str) -> str:
    """A file-name-safe, collision-free key for an id."""
    return _SAFE.sub("_", ident)[:80] + "-" + hashlib.sha256(ident.encode("utf-8")).hexdigest()[:12]


def atomic_write(path: Path, chunks: Iterable[bytes | memoryview]) -> None:
    """Write ``chunks`` to a temporary file next to ``path``, then move it into place (``os.replace``).

    A crash at any point leaves either the previous file or the complete new one, never a torn file.
    """
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as f:
            f.writelines(chunks)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def secret_file(path: Path) -> bytes:
    """A 32-byte secret kept in ``path`` (created on first use, readable by the owner only)."""
    try:
        secret = path.read_bytes()
        if len(secret) >= 32:
            return secret
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    secret = secrets.token_bytes(32)
    path.write_bytes(secret)
    return secret


def _write_json(path: Path, value: Mapping[str, Any]) -> None:
    atomic_write(path, [json.dumps(dict(value), separators=(",", ":")).encode("utf-8")])


def _write_tensors(path: Path, tensors: Mapping[str, Any], meta: Mapping[str, Any] | None = None) -> None:
    from . import _safetensors

    _safetensors.save_file(tensors, path, {"meta": json.dumps(dict(meta or {}))})


def _read_tensors(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    from . import _safetensors

    tensors, meta = _safetensors.load_file(path)
    return tensors, json.loads(meta.get("meta") or "{}")


class LiveStateStore:
    """Reads and writes the persisted state of live models and samplers under ``<data_dir>/live``."""

    def __init__(self, data_dir: Path) -> None:
        self.models_dir = data_dir / "live" / "models"
        self.samplers_dir = data_dir / "live" / "samplers"

    # -- models ----------------------------------------------------------------------------------
    def _meta_path(self, model_id: str) -> Path:
        return self.models_dir / f"{_key(model_id)}.json"

    def _tensor_path(self, model_id: str, group: str, gen: int) -> Path:
        return self.models_dir / f"{_key(model_id)}.{group}{gen}{_TENSORS}"

    def _results_dir(self, model_id: str) -> Path:
        return self.models_dir / f"{_key(model_id)}.results"

    def _pending_dir(self, model_id: str) -> Path:
        return self.models_dir / f"{_key(model_id)}.pending"

    def save_model(self, model_id: str, meta: Mapping[str, Any], groups: Mapping[str, Mapping[str, Any]], *,
                   result: tuple[str, Mapping[str, Any]] | None = None, dropped: Iterable[str] = ()) -> None:
        """Persist ``meta``; ``groups`` maps a tensor group ("w", "g") to its new tensors.

        ``meta["gens"][group]`` is the generation each group is saved under (0 = no file: all zeros).
        ``result`` = (key, JSON-able entry) is stored once under its key; ``dropped`` result keys are
        deleted. Tensor and result files are written first and the metadata (which names them) last;
        what it no longer names is removed afterwards.
        """
        self.models_dir.mkdir(parents=True, exist_ok=True)
        gens = {str(k): int(v) for k, v in meta["gens"].items()}
        for group, tensors in groups.items():
            _write_tensors(self._tensor_path(model_id, group, gens[group]), tensors)
        if result is not None:
            rdir = self._results_dir(model_id)
            rdir.mkdir(exist_ok=True)
            _write_json(rdir / f"{_SAFE.sub('_', result[0])}.json", result[1])
        _write_json(self._meta_path(model_id), meta)
        for group, gen in gens.items():
            keep = self._tensor_path(model_id, group, gen).name
            for old in self.models_dir.glob(f"{_key(model_id)}.{group}*{_TENSORS}"):
                if old.name != keep:
                    old.unlink(missing_ok=True)
        for key in dropped:
            (self._results_dir(model_id) / f"{_SAFE.sub('_', key)}.json").unlink(missing_ok=True)

    def load_model_results(self, model_id: str, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The stored results under ``keys`` (unreadable ones are skipped with a warning)."""
        out: dict[str, dict[str, Any]] = {}
        rdir = self._results_dir(model_id)
        for key in keys:
            try:
                value = json.loads((rdir / f"{_SAFE.sub('_', key)}.json").read_bytes())
            except (OSError, ValueError) as exc:
                logger.warning("model %s: result %s not restored: %s", model_id, key, exc)
                continue
            if isinstance(value, dict):
                out[key] = value
        return out

    def load_model_meta(self, model_id: str) -> dict[str, Any] | None:
        """The persisted metadata of ``model_id``, or None."""
        return self._load_meta(self._meta_path(model_id))

    @staticmethod
    def _load_meta(path: Path) -> dict[str, Any] | None:
        try:
            value = json.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            logger.warning("ignoring unreadable live state %s: %s", path.name, exc)
            return None
        return value if isinstance(value, dict) else None

    def load_model_tensors(self, model_id: str, gens: Mapping[str, int]) -> dict[str, Any]:
        """The tensors of every group saved under a generation > 0."""
        out: dict[str, Any] = {}
        for group, gen in gens.items():
            if int(gen) > 0:
                out.update(_read_tensors(self._tensor_path(model_id, group, int(gen)))[0])
        return out

    def delete_model(self, model_id: str) -> None:
        self._meta_path(model_id).unlink(missing_ok=True)
        shutil.rmtree(self._results_dir(model_id), ignore_errors=True)
        self.delete_pending(model_id)
        for old in self.models_dir.glob(f"{_key(model_id)}.*{_TENSORS}"):
            old.unlink(missing_ok=True)

    def all_model_metas(self) -> Iterator[dict[str, Any]]:
        """Every persisted model's metadata (used to find the model of a pre-restart request id)."""
        if not self.models_dir.is_dir():
            return
        for path in self.models_dir.glob("*.json"):
            value = self._load_meta(path)
            if value is not None:
                yield value

    # -- journal of accepted, not yet executed requests -------------------------------------------
    def save_pending(self, model_id: str, seq_id: int, entry: Mapping[str, Any]) -> None:
        """Journal an accepted request (or a seq_id to skip) before its handle is returned."""
        pdir = self._pending_dir(model_id)
        pdir.mkdir(parents=True, exist_ok=True)
        _write_json(pdir / f"{int(seq_id)}.json", {**entry, "model_id": model_id, "seq_id": int(seq_id)})

    def drop_pending(self, model_id: str, seq_id: int) -> None:
        (self._pending_dir(model_id) / f"{int(seq_id)}.json").unlink(missing_ok=True)

    def delete_pending(self, model_id: str) -> None:
        shutil.rmtree(self._pending_dir(model_id), ignore_errors=True)

    def load_pending(self, model_id: str) -> dict[int, dict[str, Any]]:
        """The journaled entries of ``model_id`` by seq_id (unreadable ones are skipped with a warning)."""
        out: dict[int, dict[str, Any]] = {}
        pdir = self._pending_dir(model_id)
        if not pdir.is_dir():
            return out
        for path in pdir.glob("*.json"):
            value = self._load_meta(path)
            if value is not None and isinstance(value.get("seq_id"), int):
                out[value["seq_id"]] = value
        return out

    def models_with_pending(self) -> Iterator[str]:
        """Model ids with journaled work (found through the entries themselves)."""
        if not self.models_dir.is_dir():
            return
        for pdir in self.models_dir.glob("*.pending"):
            for path in pdir.glob("*.json"):
                value = self._load_meta(path)
                if value is not None and isinstance(value.get("model_id"), str):
                    yield value["model_id"]
                    break

    # -- samplers --------------------------------------------------------------------------------
    def _sampler_path(self, sampler_id: str) -> Path:
        return self.samplers_dir / f"{_key(sampler_id)}{_TENSORS}"

    def save_sampler(self, sampler_id: str, tensors: Mapping[str, Any], meta: Mapping[str, Any]) -> None:
        self.samplers_dir.mkdir(parents=True, exist_ok=True)
        _write_tensors(self._sampler_path(sampler_id), tensors, meta)

    def has_sampler(self, sampler_id: str) -> bool:
        return self._sampler_path(sampler_id).is_file()

    def load_sampler(self, sampler_id: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
        path = self._sampler_path(sampler_id)
        if not path.is_file():
            return None
        return _read_tensors(path)
