"""NumberArray: the typed buffer behind token lists, tensors and logprobs.

A NumberArray keeps its numbers in ONE typed buffer (an ``array.array``, the user's numpy array, or a
slice of the protobuf body it was decoded from) and behaves like the read-only list the official SDK
hands out: ``len``, indexing (Python ints/floats), slicing (lists), iteration, ``==`` with lists,
``repr`` and ``+`` are those of the list; ``numpy.asarray(x)`` is a zero-copy view. It is read-only:
``list(x)`` or ``x.tolist()`` gives a list to modify. Values are checked once, by the C loop that fills
the buffer (``struct.pack_into``/``array`` refuse a float where ints are wanted, a str, an out-of-range
int), and an error names the first bad item; buffers decoded from the wire are trusted and never
re-checked.

numpy and torch are never imported here unless the value handed in comes from them.
"""

from __future__ import annotations

import math
import struct
import sys
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import compress
from typing import Any, TypeVar, overload

import attrs

from ._common import _describe, _raise_bad_int

__all__ = ["NumberArray"]

T = TypeVar("T")

BIG_ENDIAN = sys.byteorder == "big"

# Canonical typecodes: 'I' token ids (uint32: int32 on the wire), 'q' int64, 'f' float32, 'd' float64.
_NUMPY_DTYPES = {"I": "uint32", "q": "int64", "f": "float32", "d": "float64"}
_VIEW_DTYPES = {**_NUMPY_DTYPES, "I": "int32"}  # token ids read back as int32, their wire type
_INT_RANGES = {"I": (0, 2**32, "non-negative ints"), "q": (-(2**63), 2**63, "ints")}
_ITEMSIZE = {"I": 4, "i": 4, "q": 8, "f": 4, "d": 8}
assert all(array(code).itemsize == size for code, size in _ITEMSIZE.items())


class NumberArray(Sequence[Any]):
    """A read-only, list-like sequence of numbers held in one typed buffer (see the module docstring).

    ``nan_as_none`` arrays (prompt logprobs) show NaN entries as ``None``, as the official SDK does.
    """

    __slots__ = ("_code", "_mv", "_nan_as_none")
    __hash__ = None  # type: ignore[assignment]  # unhashable, like the list it stands for

    def __init__(self, buffer: Any, code: str, nan_as_none: bool = False) -> None:
        # ``buffer``: a 1-D C-contiguous buffer of native-order items of ``code``'s width (trusted).
        self._mv = buffer if type(buffer) is memoryview else memoryview(buffer)
        self._code = code
        self._nan_as_none = nan_as_none

    # --- list behaviour -------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._mv)

    @overload
    def __getitem__(self, index: int) -> Any: ...

    @overload
    def __getitem__(self, index: slice) -> list[Any]: ...

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return _none_for_nan(self._mv[index].tolist()) if self._nan_as_none else self._mv[index].tolist()
        value = self._mv[index]
        if self._nan_as_none and math.isnan(value):
            return None
        return value

    def __iter__(self) -> Iterator[Any]:
        return iter(self.tolist()) if self._nan_as_none else iter(self._mv)

    def __contains__(self, value: object) -> bool:
        return value in self.tolist()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, NumberArray):
            return self.tolist() == other.tolist()
        if isinstance(other, list):
            return self.tolist() == other
        return NotImplemented

    def __add__(self, other: Iterable[Any]) -> list[Any]:
        return [*self.tolist(), *other]

    def __radd__(self, other: Iterable[Any]) -> list[Any]:
        return [*other, *self.tolist()]

    def __repr__(self) -> str:
        return repr(self.tolist())

    def __reduce__(self) -> tuple[Any, ...]:
        return (_restore, (self._code, self._mv.tobytes(), self._nan_as_none))

    def __array__(self, dtype: Any = None, copy: Any = None) -> Any:
        """numpy conversion: a zero-copy view of the buffer (NaN stays NaN in nan_as_none arrays)."""
        arr = self.to_numpy()
        if copy:
            arr = arr.copy()
        return arr if dtype is None else arr.astype(dtype, copy=False)

    # --- buffer access --------------------------------------------------------------------------
    def tolist(self) -> list[Any]:
        """A fresh Python list of the values (ints or floats; None for NaN in nan_as_none arrays)."""
        values = self._mv.tolist()
        return _none_for_nan(values) if self._nan_as_none else values

    def to_numpy(self) -> Any:
        """A 1-D numpy array sharing this buffer (read-only when the buffer came from the wire).

        Token ids ('I') read as int32, their wire type.
        """
        frombuffer, dtypes = _NUMPY or _load_numpy()
        return frombuffer(self._mv, dtypes[self._code])

    @property
    def typecode(self) -> str:
        """The item type: 'I' (token ids, uint32), 'q' (int64), 'f' (float32) or 'd' (float64)."""
        return self._code

    @property
    def nbytes(self) -> int:
        """Size of the buffer in bytes."""
        return self._mv.nbytes

    def raw(self) -> memoryview:
        """The buffer as native-order bytes (a zero-copy ``memoryview`` of format 'B')."""
        return self._mv.cast("B")

    def view(self, start: int, end: int) -> NumberArray:
        """Items ``start:end`` as a NumberArray sharing this buffer (no copy)."""
        return NumberArray(self._mv[start:end], self._code, nan_as_none=self._nan_as_none)

    def as_code(self, code: str) -> NumberArray:
        """The same values with item type ``code`` (self when it already is; C-level conversion otherwise)."""
        if code == self._code:
            return self
        return NumberArray(array(code, self._mv), code, nan_as_none=self._nan_as_none)


_NUMPY: tuple[Callable[..., Any], dict[str, Any]] | None = None  # (numpy.frombuffer, code -> dtype) once loaded


def require_numpy(what: str) -> Any:
    """The numpy module, or an ImportError saying that ``what`` needs it and how to install it."""
    try:
        import numpy
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError(f"{what} need numpy: pip install 'tinker-sync[numpy]'") from None
    return numpy


def _load_numpy() -> tuple[Callable[..., Any], dict[str, Any]]:
    global _NUMPY
    np = require_numpy("numpy views")
    _NUMPY = (np.frombuffer, {code: np.dtype(name) for code, name in _VIEW_DTYPES.items()})
    return _NUMPY


def numpy_of(values: Any, code: str) -> Any:
    """``values`` as a 1-D numpy array of ``code``'s item type ('I' reads as int32): a view of a NumberArray of
    that type, a converted copy otherwise."""
    frombuffer, dtypes = _NUMPY or _load_numpy()
    if isinstance(values, NumberArray):
        arr = values.to_numpy()
        return arr if values.typecode == code else arr.astype(dtypes[code])
    return frombuffer(to_numbers(values, code, "values").raw(), dtypes[code])


def _cast(view: memoryview, code: str) -> memoryview:
    return view.cast(code)  # type: ignore[call-overload,no-any-return]  # typeshed wants a literal code


def _restore(code: str, data: bytes, nan_as_none: bool) -> NumberArray:
    arr = array(code)
    arr.frombytes(data)
    return NumberArray(arr, code, nan_as_none=nan_as_none)


def _none_for_nan(values: list[Any]) -> list[Any]:
    for i in compress(range(len(values)), map(math.isnan, values)):
        values[i] = None
    return values


def from_wire(data: bytes | memoryview, code: str, *, nan_as_none: bool = False) -> NumberArray:
    """Trusted: little-endian wire bytes -> NumberArray (a zero-copy view on little-endian hosts).

    Raises:
        ValueError: the byte count is not a whole number of items.
    """
    if len(data) % _ITEMSIZE[code]:
        raise ValueError(f"{len(data)} bytes is not a whole number of {_ITEMSIZE[code]}-byte items")
    if BIG_ENDIAN:
        arr = array(code)
        arr.frombytes(data)
        arr.byteswap()
        return NumberArray(arr, code, nan_as_none=nan_as_none)
    mv = data if type(data) is memoryview else memoryview(data)
    return NumberArray(_cast(mv if mv.format == "B" else mv.cast("B"), code), code, nan_as_none)


def wire_bytes(numbers: NumberArray, code: str) -> memoryview | bytes:
    """``numbers`` as little-endian items of ``code`` for the wire: zero-copy on little-endian hosts.

    Raises:
        ValueError: a value does not fit ``code``.
    """
    try:
        same = numbers.as_code(code)
    except OverflowError:
        raise ValueError(f"a value does not fit the wire's {_NUMPY_DTYPES[code]} items") from None
    if BIG_ENDIAN:
        arr = array(code)
        arr.frombytes(same.raw())  # a copy: never swap the caller's buffer in place
        arr.byteswap()
        return arr.tobytes()
    return same.raw()


def _is_foreign_array(value: Any) -> bool:
    module = type(value).__module__.split(".", 1)[0]
    return module in ("numpy", "torch")


def _from_foreign(value: Any, code: str, where: str) -> NumberArray:
    """numpy arrays (zero-copy when already of the right dtype and contiguous) and torch tensors."""
    import numpy as np

    if type(value).__module__.split(".", 1)[0] == "torch":
        tensor = value.detach().cpu()
        if tensor.dtype.is_floating_point and tensor.element_size() < 4:
            tensor = tensor.float()
        value = tensor.contiguous().numpy()
    arr = np.asarray(value)
    kind = arr.dtype.kind
    if code in _INT_RANGES:
        lo, hi, what = _INT_RANGES[code]
        if kind not in "iub" or (kind == "u" and arr.dtype.itemsize == 8 and code == "q" and arr.size
                                 and int(arr.max()) >= hi):
            raise TypeError(f"{where} must be a list of {what}, got a numpy array of {arr.dtype}")
        if code == "I" and arr.size and (int(arr.min()) < lo or int(arr.max()) >= hi):
            raise ValueError(f"{where} must be a list of {what}; values range {int(arr.min())}..{int(arr.max())}")
    elif kind not in "fiub":
        raise TypeError(f"{where} must be a list of numbers, got a numpy array of {arr.dtype}")
    flat = np.ascontiguousarray(arr.reshape(-1), dtype=_NUMPY_DTYPES[code])
    return NumberArray(flat, code)


def _packed(code: str, items: list[Any] | tuple[Any, ...]) -> memoryview:
    # struct converts each item with PyNumber_Index/PyFloat_AsDouble: ~3x faster than array('q'/'f', list),
    # whose items go through PyArg_Parse. Native order, like array; refuses floats for 'q' and non-numbers.
    buf = bytearray(len(items) * _ITEMSIZE[code])
    struct.pack_into(f"={len(items)}{code}", buf, 0, *items)
    return _cast(memoryview(buf), code)


def _fast_buffer(code: str, items: list[Any] | tuple[Any, ...]) -> Any:
    return array(code, items) if code == "I" else _packed(code, items)


def to_numbers(value: Any, code: str, where: str) -> NumberArray:
    """Validate ``value`` (list, tuple, iterable, numpy array, torch tensor, NumberArray) into a NumberArray.

    One C-level pass for Python sequences; numpy input of the right dtype is kept without a copy.

    Raises:
        TypeError: not a sequence of numbers of the kind ``code`` needs (message names the item).
        ValueError: an int out of range (negative token id, beyond int64).
    """
    if type(value) is list or type(value) is tuple:
        try:
            return NumberArray(_fast_buffer(code, value), code)
        except (TypeError, OverflowError, struct.error):
            pass  # the checks below name the offending item
    if isinstance(value, NumberArray):
        try:
            return value.as_code(code)
        except OverflowError:
            lo, hi, what = _INT_RANGES[code]
            _raise_bad_int(value.tolist(), where, lo, hi, what)
            raise
    if isinstance(value, (str, bytes, bytearray, memoryview)) or not isinstance(value, Iterable):
        kind = _INT_RANGES[code][2] if code in _INT_RANGES else "numbers"
        raise TypeError(f"{where} must be a list of {kind}, got {type(value).__name__}")
    if _is_foreign_array(value):
        return _from_foreign(value, code, where)
    try:
        return NumberArray(array(code, value), code)
    except (TypeError, OverflowError):
        items = list(value)
    if code in _INT_RANGES:
        lo, hi, what = _INT_RANGES[code]
        _raise_bad_int(items, where, lo, hi, what)
    for i, item in enumerate(items):
        if isinstance(item, (str, bytes)) or not (isinstance(item, (int, float)) or hasattr(item, "__float__")):
            raise TypeError(f"{where} must be a list of numbers; item {i} is {_describe(item)}") from None
    raise TypeError(f"{where} must be a list of numbers")


_PLAIN_NUMBERS = frozenset({float, int})


def to_optional_floats(value: Any, code: str, where: str) -> NumberArray:
    """Numbers where ``None`` entries are allowed (stored as NaN, shown as None): prompt logprobs."""
    if isinstance(value, NumberArray) or _is_foreign_array(value):
        out = to_numbers(value, code, where)
    else:
        if isinstance(value, (str, bytes, bytearray)) or not isinstance(value, Iterable):
            raise TypeError(f"{where} must be a list of float or None, got {type(value).__name__}")
        items = value if isinstance(value, list) else list(value)
        try:
            out = NumberArray(array(code, items), code)
        except TypeError:
            nan = math.nan
            filled = [nan if x is None else x for x in items]
            if not _PLAIN_NUMBERS.issuperset(map(type, filled)):  # C-level: only plain floats/ints skip the loop
                for i, item in enumerate(items):
                    if item is not None and (
                        isinstance(item, (bool, str, bytes)) or not isinstance(item, (int, float))
                    ):
                        raise TypeError(
                            f"{where} must be a list of float or None; item {i} is {_describe(item)}"
                        ) from None
            out = NumberArray(array(code, filled), code)
    return NumberArray(_cast(out.raw(), code), code, nan_as_none=True)


def plain_list(value: Any) -> Any:
    """Serialisation hook: a NumberArray as a plain list (lists pass through as the same object)."""
    return value.tolist() if isinstance(value, NumberArray) else value


_BUILDERS: dict[type, Callable[..., Any]] = {}


def _make_builder(cls: type) -> Callable[..., Any]:
    """A function ``(**fields) -> instance`` for ``cls`` that sets the slots directly, generated once per class
    (attrs does the same for ``__init__``); fields not passed take their defaults."""
    names, params, namespace = [], [], {"cls": cls, "new": object.__new__, "setattr": object.__setattr__}
    for i, field in enumerate(attrs.fields(cls)):
        default = field.default
        names.append(field.name)
        if default is attrs.NOTHING:
            params.append(field.name)
            continue
        namespace[f"d{i}"] = default.factory if isinstance(default, attrs.Factory) else default  # type: ignore[arg-type]
        if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
            params.append(f"{field.name}=None")
            namespace[f"m{i}"] = True
        else:
            params.append(f"{field.name}=d{i}")
    params = [p for p in params if "=" not in p] + [p for p in params if "=" in p]
    body = [f"def build(*, {', '.join(params)}):", "    obj = new(cls)"]
    for i, name in enumerate(names):
        value = f"(d{i}() if {name} is None else {name})" if f"m{i}" in namespace else name
        slot = cls.__dict__.get(name)
        if type(slot).__name__ == "member_descriptor":  # a __slots__ entry: set it through its descriptor
            namespace[f"s{i}"] = slot.__set__  # type: ignore[union-attr]
            body.append(f"    s{i}(obj, {value})")
        else:
            body.append(f"    setattr(obj, {name!r}, {value})")
    body.append("    return obj")
    exec("\n".join(body), namespace)  # noqa: S102 - source built from attrs field names only
    builder: Callable[..., Any] = namespace["build"]  # type: ignore[assignment]
    _BUILDERS[cls] = builder
    return builder


def trusted(cls: type[T], **values: Any) -> T:
    """Build an attrs instance from already-valid values, skipping converters and validators (decoders only).

    Fields not given take their defaults, so a field added to ``cls`` later needs no change here.
    """
    builder = _BUILDERS.get(cls) or _make_builder(cls)
    return builder(**values)  # type: ignore[no-any-return]


def trusted_builder(cls: type[T]) -> Callable[..., T]:
    """``trusted`` for one class as a keyword-only function, for decoders' inner loops."""
    return _BUILDERS.get(cls) or _make_builder(cls)
