"""The local server's one tensor file format: safetensors (8-byte LE header length, JSON header, raw LE bytes).

Checkpoints, live model state and sampler snapshots all use it, written through ``_persist.atomic_write``.
"""

from __future__ import annotations

import json
import logging
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ._persist import atomic_write

logger = logging.getLogger(__name__)

_DTYPES: dict[str, str] = {"F32": "<f4", "F64": "<f8", "I64": "<i8", "I32": "<i4", "F16": "<f2"}
_NAMES: dict[str, str] = {np.dtype(v).str: k for k, v in _DTYPES.items()}
_MAX_HEADER_BYTES = 100 * 1024 * 1024


class SafetensorsError(ValueError):
    """The file is not a valid safetensors file (or uses an unsupported dtype)."""


def dumps(tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None) -> bytes:
    """Serialize named arrays (sorted by name) to safetensors bytes."""
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blobs: list[bytes] = []
    offset = 0
    for name in sorted(tensors):
        arr = np.asarray(tensors[name])
        little = arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype
        key = np.dtype(little).str
        if key not in _NAMES:
            raise SafetensorsError(f"tensor {name!r}: unsupported dtype {arr.dtype} (use float32/float64/int64/int32)")
        raw = np.ascontiguousarray(arr, dtype=little).tobytes()
        header[name] = {"dtype": _NAMES[key], "shape": list(arr.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    head += b" " * (-len(head) % 8)  # the format pads the header to 8 bytes with spaces
    return struct.pack("<Q", len(head)) + head + b"".join(blobs)


def loads(data: bytes) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Parse safetensors bytes into (tensors, metadata); arrays are writable copies."""
    if len(data) < 8:
        raise SafetensorsError("file shorter than the 8-byte header length")
    (n,) = struct.unpack("<Q", data[:8])
    if n > _MAX_HEADER_BYTES or 8 + n > len(data):
        raise SafetensorsError(f"header length {n} does not fit a file of {len(data)} bytes")
    try:
        header = json.loads(data[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SafetensorsError(f"header is not valid JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise SafetensorsError("header is not a JSON object")
    body = memoryview(data)[8 + n :]
    metadata = header.pop("__metadata__", None) or {}
    tensors: dict[str, np.ndarray] = {}
    for name, info in header.items():
        try:
            dtype = np.dtype(_DTYPES[info["dtype"]])
            shape = tuple(int(s) for s in info["shape"])
            begin, end = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise SafetensorsError(f"tensor {name!r}: bad header entry {info!r}") from exc
        count = int(np.prod(shape, dtype=np.int64))
        if not 0 <= begin <= end <= len(body) or end - begin != count * dtype.itemsize:
            raise SafetensorsError(f"tensor {name!r}: data_offsets {[begin, end]} do not match shape {list(shape)}")
        tensors[name] = np.frombuffer(body[begin:end], dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))
    return tensors, {str(k): str(v) for k, v in dict(metadata).items()}


def save_file(tensors: Mapping[str, np.ndarray], path: Path, metadata: Mapping[str, str] | None = None) -> None:
    """Write a safetensors file atomically (temporary name, then ``os.replace``)."""
    atomic_write(Path(path), [dumps(tensors, metadata)])


def load_file(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read a safetensors file into (tensors, metadata)."""
    return loads(Path(path).read_bytes())
