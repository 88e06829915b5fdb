"""On-disk state of live training models and unsaved samplers, so both survive a server restart.

Layout under ``<data_dir>/live``::

    models/<key>.json          metadata: ids, LoRA config, next seq_id, keys of the kept results (written last)
    models/<key>.w<gen>.bin    adapter weights + AdamW moments (rewritten by create/load/optim_step)
    models/<key>.g<gen>.bin    accumulated gradients (rewritten by forward_backward; none while they are zero)
    models/<key>.results/<k>.json  one completed result each ("create" or a seq_id), written once
    samplers/<key>.bin         the weights of a sampler made by an unnamed save_weights_for_sampler

Every file is written to a temporary name and moved into place with ``os.replace``, and the metadata names
the weights generation it belongs to, so a crash at any point leaves the previous consistent state.
Tensor files are a small binary format: 8-byte little-endian header length, a JSON header
``{"tensors": {name: [dtype, shape, offset, nbytes]}, "meta": {...}}``, then the raw bytes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import struct
import uuid
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["LiveStateStore", "read_tensors", "write_tensors"]

_HEADER = struct.Struct("<Q")
_SAFE = re.compile(r"[^A-Za-z0-9._-]")


def _key(ident: str) -> str:
    """A file-name-safe, collision-free key for an id."""
    return _SAFE.sub("_", ident)[:80] + "-" + hashlib.sha256(ident.encode("utf-8")).hexdigest()[:12]


def _atomic_write(path: Path, chunks: Iterator[bytes | memoryview]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as f:
            f.writelines(chunks)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_tensors(path: Path, tensors: Mapping[str, Any], meta: Mapping[str, Any] | None = None) -> None:
    """Write numpy arrays (any numeric dtype, exact) plus JSON metadata to ``path`` atomically."""
    import numpy as np

    entries: dict[str, list[Any]] = {}
    arrays = []
    offset = 0
    for name, arr in tensors.items():
        a = np.ascontiguousarray(arr)
        entries[name] = [a.dtype.str, list(a.shape), offset, a.nbytes]
        arrays.append(a)
        offset += a.nbytes
    header = json.dumps({"tensors": entries, "meta": dict(meta or {})}, separators=(",", ":")).encode("utf-8")

    def chunks() -> Iterator[bytes | memoryview]:
        yield _HEADER.pack(len(header))
        yield header
        for a in arrays:
            if a.nbytes:
                yield a.data.cast("B")

    _atomic_write(path, chunks())


def read_tensors(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a file written by :func:`write_tensors`: (writable arrays by name, metadata)."""
    import numpy as np

    data = path.read_bytes()
    (hlen,) = _HEADER.unpack_from(data, 0)
    header = json.loads(data[_HEADER.size:_HEADER.size + hlen])
    base = _HEADER.size + hlen
    out: dict[str, Any] = {}
    for name, (dtype, shape, offset, nbytes) in header["tensors"].items():
        buf = data[base + offset:base + offset + nbytes]
        if len(buf) != nbytes:
            raise ValueError(f"{path.name}: tensor {name} is truncated")
        out[name] = np.frombuffer(buf, dtype=np.dtype(dtype)).reshape(shape).copy()
    return out, dict(header.get("meta") or {})


class LiveStateStore:
    """Reads and writes the persisted state of live models and samplers under ``<data_dir>/live``."""

    def __init__(self, data_dir: Path) -> None:
        self.models_dir = data_dir / "live" / "models"
        self.samplers_dir = data_dir / "live" / "samplers"

    # -- models ----------------------------------------------------------------------------------
    def _meta_path(self, model_id: str) -> Path:
        return self.models_dir / f"{_key(model_id)}.json"

    def _tensor_path(self, model_id: str, group: str, gen: int) -> Path:
        return self.models_dir / f"{_key(model_id)}.{group}{gen}.bin"

    def _results_dir(self, model_id: str) -> Path:
        return self.models_dir / f"{_key(model_id)}.results"

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
            write_tensors(self._tensor_path(model_id, group, gens[group]), tensors)
        if result is not None:
            rdir = self._results_dir(model_id)
            rdir.mkdir(exist_ok=True)
            text = json.dumps(dict(result[1]), separators=(",", ":")).encode("utf-8")
            _atomic_write(rdir / f"{_SAFE.sub('_', result[0])}.json", iter([text]))
        text = json.dumps(dict(meta), separators=(",", ":")).encode("utf-8")
        _atomic_write(self._meta_path(model_id), iter([text]))
        for group, gen in gens.items():
            prefix = f"{_key(model_id)}.{group}"
            for old in self.models_dir.glob(f"{prefix}*.bin"):
                if old.name != f"{prefix}{gen}.bin":
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
        try:
            value = json.loads(self._meta_path(model_id).read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            logger.warning("ignoring unreadable live state of model %s: %s", model_id, exc)
            return None
        return value if isinstance(value, dict) else None

    def load_model_tensors(self, model_id: str, gens: Mapping[str, int]) -> dict[str, Any]:
        """The tensors of every group saved under a generation > 0."""
        out: dict[str, Any] = {}
        for group, gen in gens.items():
            if int(gen) > 0:
                out.update(read_tensors(self._tensor_path(model_id, group, int(gen)))[0])
        return out

    def delete_model(self, model_id: str) -> None:
        self._meta_path(model_id).unlink(missing_ok=True)
        shutil.rmtree(self._results_dir(model_id), ignore_errors=True)
        for old in self.models_dir.glob(f"{_key(model_id)}.*.bin"):
            old.unlink(missing_ok=True)

    def all_model_metas(self) -> Iterator[dict[str, Any]]:
        """Every persisted model's metadata (used to find the model of a pre-restart request id)."""
        if not self.models_dir.is_dir():
            return
        for path in self.models_dir.glob("*.json"):
            try:
                value = json.loads(path.read_bytes())
            except (OSError, ValueError):
                continue
            if isinstance(value, dict):
                yield value

    # -- samplers --------------------------------------------------------------------------------
    def _sampler_path(self, sampler_id: str) -> Path:
        return self.samplers_dir / f"{_key(sampler_id)}.bin"

    def save_sampler(self, sampler_id: str, tensors: Mapping[str, Any], meta: Mapping[str, Any]) -> None:
        self.samplers_dir.mkdir(parents=True, exist_ok=True)
        write_tensors(self._sampler_path(sampler_id), tensors, meta)

    def has_sampler(self, sampler_id: str) -> bool:
        return self._sampler_path(sampler_id).is_file()

    def load_sampler(self, sampler_id: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
        path = self._sampler_path(sampler_id)
        if not path.is_file():
            return None
        return read_tensors(path)
