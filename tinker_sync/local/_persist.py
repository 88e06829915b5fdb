"""On-disk state of live training models and unsaved samplers, so both survive a server restart.

Layout under ``<data_dir>/live``::

    models/<key>.json          metadata: ids, LoRA config, next seq_id, recent results (written last)
    models/<key>.w<gen>.bin    adapter weights + gradients + AdamW moments (rewritten only when they change)
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
import struct
import uuid
from collections.abc import Iterator, Mapping
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

    def _weights_path(self, model_id: str, gen: int) -> Path:
        return self.models_dir / f"{_key(model_id)}.w{gen}.bin"

    def save_model(self, model_id: str, meta: Mapping[str, Any], tensors: Mapping[str, Any] | None) -> None:
        """Persist ``meta`` (must hold an int ``weights_gen``); ``tensors`` (when given) become that generation.

        The weights file is written first and the metadata (which names it) last; older generations are
        removed afterwards.
        """
        self.models_dir.mkdir(parents=True, exist_ok=True)
        gen = int(meta["weights_gen"])
        if tensors is not None:
            write_tensors(self._weights_path(model_id, gen), tensors)
        text = json.dumps(dict(meta), separators=(",", ":")).encode("utf-8")
        _atomic_write(self._meta_path(model_id), iter([text]))
        if tensors is not None:
            prefix = f"{_key(model_id)}.w"
            for old in self.models_dir.glob(f"{prefix}*.bin"):
                if old.name != f"{prefix}{gen}.bin":
                    old.unlink(missing_ok=True)

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

    def load_model_tensors(self, model_id: str, gen: int) -> dict[str, Any]:
        tensors, _ = read_tensors(self._weights_path(model_id, gen))
        return tensors

    def delete_model(self, model_id: str) -> None:
        self._meta_path(model_id).unlink(missing_ok=True)
        for old in self.models_dir.glob(f"{_key(model_id)}.w*.bin"):
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
