"""TensorData: a flat, typed array with an optional shape and optional CSR sparsity.

The values live in one typed buffer (a NumberArray: ``array.array``, or the caller's numpy array without a
copy); ``data`` reads like the official SDK's list.
"""

# attrs fields are built by validating factories (str_field(), int_field(), ...), not dataclass defaults.
# ruff: noqa: RUF009
from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import attrs

from ._common import check_choice, choice_field, converted_field, int_list
from ._numbers import NumberArray, to_numbers, trusted_builder

if TYPE_CHECKING:  # pragma: no cover
    import numpy
    import torch  # type: ignore[import-not-found,unused-ignore]  # torch is optional

__all__ = ["TensorData", "TensorDtype"]

TensorDtype = Literal["int64", "float32"]
_DTYPES = ("int64", "float32")
_CODES = {"int64": "q", "float32": "f"}
_WIRE_ITEMSIZE = {"int64": 8, "float32": 4}


def _optional_index_list(where: str) -> Callable[[Any], list[int] | None]:
    def convert(value: Any) -> list[int] | None:
        if value is None:
            return None
        return int_list(value, where, nonneg=True)

    return convert


@attrs.frozen
class TensorData:
    """A tensor on the wire: flattened row-major ``data`` in ``dtype`` (int64 or float32).

    With ``sparse_crow_indices``/``sparse_col_indices`` set, ``data`` holds only the non-zero values of
    a 2-D CSR matrix and ``shape`` is required. float32 data is rounded to float32 at construction.
    ``data`` accepts a list, a numpy array or a torch tensor (kept without a copy when it already has the
    dtype) and reads back as a list-like NumberArray; ``to_numpy()`` is a zero-copy view.
    """

    data: list[int | float] = attrs.field()  # validated in __attrs_post_init__ (depends on dtype)
    dtype: TensorDtype = choice_field(_DTYPES)
    shape: list[int] | None = converted_field(_optional_index_list("TensorData.shape"), default=None)
    sparse_crow_indices: list[int] | None = converted_field(
        _optional_index_list("TensorData.sparse_crow_indices"), default=None
    )
    sparse_col_indices: list[int] | None = converted_field(
        _optional_index_list("TensorData.sparse_col_indices"), default=None
    )

    def __attrs_post_init__(self) -> None:
        check_choice(self.dtype, "TensorData.dtype", _DTYPES)
        raw: Any = self.data
        data = to_numbers(raw, _CODES[self.dtype], f"TensorData.data (dtype {self.dtype})")
        object.__setattr__(self, "data", data)
        crow, col, shape = self.sparse_crow_indices, self.sparse_col_indices, self.shape
        if shape is None and crow is None and len(getattr(raw, "shape", ())) > 1:
            object.__setattr__(self, "shape", shape := [int(n) for n in raw.shape])
        if (crow is None) != (col is None):
            raise ValueError("TensorData.sparse_crow_indices and sparse_col_indices must be given together")
        if crow is not None and col is not None:
            _check_csr(crow, col, shape, len(data))
        elif shape is not None and math.prod(shape) != len(data):
            raise ValueError(
                f"TensorData.shape {shape} holds {math.prod(shape)} elements but data has {len(data)}"
            )

    @property
    def is_sparse(self) -> bool:
        """True for CSR tensors."""
        return self.sparse_crow_indices is not None

    @property
    def nbytes(self) -> int:
        """The bytes these values take on the wire (``dtype`` width each, plus 8 per CSR index); no list is walked."""
        size = len(self.data) * _WIRE_ITEMSIZE[self.dtype]
        if self.sparse_crow_indices is not None and self.sparse_col_indices is not None:
            size += 8 * (len(self.sparse_crow_indices) + len(self.sparse_col_indices))
        return size

    def dense_shape(self) -> list[int]:
        """The shape, defaulting to 1-D ``[len(data)]``."""
        return list(self.shape) if self.shape is not None else [len(self.data)]

    def dense_data(self) -> list[Any]:
        """The flattened row-major values with CSR expanded (zeros filled in); list-like."""
        if self.sparse_crow_indices is None or self.sparse_col_indices is None:
            return self.data
        nrows, ncols = self.dense_shape()
        zero: Any = 0 if self.dtype == "int64" else 0.0
        out = [zero] * (nrows * ncols)
        crow, col, data = self.sparse_crow_indices, self.sparse_col_indices, self.data
        for r in range(nrows):
            base = r * ncols
            for j in range(crow[r], crow[r + 1]):
                out[base + col[j]] = data[j]
        return out

    def tolist(self) -> list[Any]:
        """The values as (nested) Python lists following ``shape``."""
        flat = self.dense_data()
        flat = flat.tolist() if isinstance(flat, NumberArray) else list(flat)
        shape = self.dense_shape()
        if len(shape) <= 1:
            return flat
        return _nest(flat, shape)

    @classmethod
    def from_numpy(cls, array: numpy.ndarray) -> TensorData:
        """Build from a numpy array (floats -> float32, ints/bools -> int64), sharing its memory when it
        is already a contiguous float32/int64 array; imports numpy lazily."""
        import numpy as np

        arr = np.asarray(array)
        if arr.dtype.kind == "f":
            dtype: TensorDtype = "float32"
        elif arr.dtype.kind in "iub":
            dtype = "int64"
        else:
            raise TypeError(f"TensorData.from_numpy supports float, int and bool arrays, got dtype {arr.dtype}")
        return cls(data=arr, dtype=dtype, shape=list(arr.shape))  # type: ignore[arg-type]

    def to_numpy(self) -> numpy.ndarray:
        """As a numpy array of ``dtype`` and ``shape`` (CSR expanded); a zero-copy view for dense tensors
        (read-only when decoded from a response); imports numpy lazily."""
        import numpy as np

        if self.sparse_crow_indices is None:
            data: Any = self.data
            return data.to_numpy().reshape(self.dense_shape())  # type: ignore[no-any-return]
        np_dtype = np.int64 if self.dtype == "int64" else np.float32
        return np.asarray(self.dense_data(), dtype=np_dtype).reshape(self.dense_shape())

    @classmethod
    def from_torch(cls, tensor: torch.Tensor) -> TensorData:
        """Build from a torch tensor (sparse CSR tensors stay sparse); imports torch lazily.

        CPU tensors of dtype float32/int64 are shared without a copy.
        """
        import torch

        t = tensor.detach().cpu()
        if t.layout == torch.sparse_csr:
            dtype: TensorDtype = "float32" if t.dtype.is_floating_point else "int64"
            values: Any = t.values()  # the field's converter takes any buffer; its annotation is the list form
            return cls(
                data=values,
                dtype=dtype,
                shape=list(t.shape),
                sparse_crow_indices=t.crow_indices().tolist(),
                sparse_col_indices=t.col_indices().tolist(),
            )
        if t.is_sparse:
            t = t.to_dense()
        if t.dtype.is_complex:
            raise TypeError(f"TensorData.from_torch does not support complex tensors ({t.dtype})")
        dtype = "float32" if t.dtype.is_floating_point else "int64"
        dense: Any = t
        return cls(data=dense, dtype=dtype, shape=list(t.shape))

    def to_torch(self) -> torch.Tensor:
        """As a dense torch tensor of ``dtype`` and ``shape`` (sharing memory when the buffer is writable);
        imports torch lazily."""
        import torch

        arr = self.to_numpy()
        return torch.from_numpy(arr if arr.flags.writeable else arr.copy())


_new_tensor = trusted_builder(TensorData)


def trusted_tensor(data: NumberArray, dtype: TensorDtype, shape: list[int] | None) -> TensorData:
    """A dense TensorData from decoded wire values, without re-validation (decoders only)."""
    return _new_tensor(data=data, dtype=dtype, shape=shape)


def _check_csr(crow: list[int], col: list[int], shape: list[int] | None, nvalues: int) -> None:
    if shape is None or len(shape) != 2:
        raise ValueError(f"a sparse (CSR) TensorData needs a 2-D shape, got shape={shape!r}")
    nrows, ncols = shape
    if len(crow) != nrows + 1:
        raise ValueError(
            f"TensorData.sparse_crow_indices must have shape[0] + 1 = {nrows + 1} entries, got {len(crow)}"
        )
    if crow[0] != 0 or crow[-1] != nvalues:
        raise ValueError(
            "TensorData.sparse_crow_indices must start at 0 and end at len(data) = "
            f"{nvalues}, got {crow[0]}..{crow[-1]}"
        )
    if any(a > b for a, b in itertools.pairwise(crow)):
        raise ValueError("TensorData.sparse_crow_indices must be non-decreasing")
    if len(col) != nvalues:
        raise ValueError(f"TensorData.sparse_col_indices must have one entry per value ({nvalues}), got {len(col)}")
    if col and max(col) >= ncols:
        raise ValueError(f"TensorData.sparse_col_indices must be < shape[1] = {ncols}, got {max(col)}")


def _nest(flat: list[Any], shape: list[int]) -> list[Any]:
    if len(shape) == 1:
        return list(flat)
    step = math.prod(shape[1:])
    return [_nest(flat[i * step : (i + 1) * step], shape[1:]) for i in range(shape[0])]
