"""Shared validation helpers for the wire types (cheap, one pass, C-level where possible)."""

from __future__ import annotations

import math
import re
from array import array
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone

UTC = timezone.utc
from typing import Any

import attrs

__all__: list[str] = []

# array typecodes with a guaranteed width on every platform CPython supports.
assert array("I").itemsize == 4 and array("q").itemsize == 8 and array("f").itemsize == 4


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _find_bad_item(items: Iterable[Any], ok: Any) -> tuple[int, Any]:
    for i, item in enumerate(items):
        if not ok(item):
            return i, item
    return -1, None


def _as_int(x: Any) -> int | None:
    if isinstance(x, (bool, float, str, bytes)) or not hasattr(x, "__index__"):
        return None
    return int(x.__index__())


def _raise_bad_int(items: list[Any], where: str, lo: int, hi: int, kind: str) -> None:
    for i, item in enumerate(items):
        as_int = _as_int(item)
        if as_int is None:
            raise TypeError(f"{where} must be a list of {kind}; item {i} is {_describe(item)}")
        if not lo <= as_int < hi:
            raise ValueError(f"{where} must be a list of {kind}; item {i} is {_describe(item)} (out of range)")
    raise TypeError(f"{where} must be a list of {kind}")


def token_list(value: Any, where: str) -> list[int]:
    """Validate a list of token ids (non-negative, < 2**32) in one C-level pass.

    The result is always a fresh list of plain Python ints (numpy ints and bools are normalised).
    """
    if isinstance(value, (str, bytes, bytearray)) or not isinstance(value, Iterable):
        raise TypeError(f"{where} must be a list of non-negative ints, got {type(value).__name__}")
    try:
        arr = array("I", value)
    except (TypeError, OverflowError):
        _raise_bad_int(list(value), where, 0, 2**32, "non-negative ints")
    return arr.tolist()


def int_list(value: Any, where: str, *, nonneg: bool = False) -> list[int]:
    """Validate a list of (64-bit) ints; ``nonneg`` also refuses negative values."""
    if isinstance(value, (str, bytes, bytearray)) or not isinstance(value, Iterable):
        raise TypeError(f"{where} must be a list of ints, got {type(value).__name__}")
    code = "Q" if nonneg else "q"
    kind = "non-negative ints" if nonneg else "ints"
    try:
        arr = array(code, value)
    except (TypeError, OverflowError):
        _raise_bad_int(list(value), where, 0 if nonneg else -(2**63), 2**64 if nonneg else 2**63, kind)
    return arr.tolist()


def float_list(value: Any, where: str, *, float32: bool = False) -> list[float]:
    """Validate a list of numbers and return it as floats (rounded to float32 when ``float32``)."""
    if isinstance(value, (str, bytes, bytearray)) or not isinstance(value, Iterable):
        raise TypeError(f"{where} must be a list of numbers, got {type(value).__name__}")
    try:
        arr = array("f" if float32 else "d", value)
    except (TypeError, OverflowError):
        items = list(value)
        i, bad = _find_bad_item(items, lambda x: isinstance(x, (int, float)) or hasattr(x, "__float__"))
        raise TypeError(f"{where} must be a list of numbers; item {i} is {_describe(bad)}") from None
    return arr.tolist()


def check_int(value: Any, where: str, *, minimum: int | None = None, optional: bool = False) -> Any:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        if hasattr(value, "__index__") and not isinstance(value, (bool, float)):
            value = value.__index__()
        else:
            raise TypeError(f"{where} must be an int, got {_describe(value)}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{where} must be >= {minimum}, got {value}")
    return value


def check_float(value: Any, where: str, *, optional: bool = False) -> Any:
    """Accept ints and floats (not bools, not NaN/inf) and return a float."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        if hasattr(value, "__float__") and not isinstance(value, (str, bytes)):
            value = float(value)
        else:
            raise TypeError(f"{where} must be a number, got {_describe(value)}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{where} must be a finite number, got {value}")
    return value


def check_str(value: Any, where: str, *, optional: bool = False) -> Any:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise TypeError(f"{where} must be a str, got {_describe(value)}")
    return value


def check_bool(value: Any, where: str, *, optional: bool = False) -> Any:
    if value is None and optional:
        return None
    if not isinstance(value, bool):
        raise TypeError(f"{where} must be a bool (True/False), got {_describe(value)}")
    return value


def check_choice(value: Any, where: str, choices: tuple[str, ...], *, optional: bool = False) -> Any:
    if value is None and optional:
        return None
    if value not in choices:
        raise ValueError(f"{where} must be one of {', '.join(repr(c) for c in choices)}; got {_describe(value)}")
    return value


def check_str_list(value: Any, where: str) -> list[str]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise TypeError(f"{where} must be a list of str, got {type(value).__name__}")
    items = list(value)
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise TypeError(f"{where} must be a list of str; item {i} is {_describe(item)}")
    return items


def check_float_dict(value: Any, where: str, *, optional: bool = False) -> Any:
    if value is None and optional:
        return None
    if not isinstance(value, Mapping):
        raise TypeError(f"{where} must be a dict of str -> float, got {type(value).__name__}")
    out: dict[str, float] = {}
    for k, v in value.items():
        if not isinstance(k, str):
            raise TypeError(f"{where} keys must be str, got {_describe(k)}")
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            if hasattr(v, "__float__") and not isinstance(v, (str, bytes)):
                v = float(v)
            else:
                raise TypeError(f"{where}[{k!r}] must be a number, got {_describe(v)}")
        out[k] = float(v)
    return out


def check_list_of(value: Any, where: str, cls: type, *, optional: bool = False) -> Any:
    if value is None and optional:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise TypeError(f"{where} must be a list of {cls.__name__}, got {type(value).__name__}")
    items = value if type(value) is list else list(value)
    for i, item in enumerate(items):
        if not isinstance(item, cls):
            raise TypeError(f"{where} must be a list of {cls.__name__}; item {i} is a {type(item).__name__}")
    return items


def check_instance(value: Any, where: str, cls: type, *, optional: bool = False) -> Any:
    if value is None and optional:
        return None
    if not isinstance(value, cls):
        raise TypeError(f"{where} must be a {cls.__name__}, got {type(value).__name__}")
    return value


_FRACTION = re.compile(r"(\.\d+)")


def parse_datetime(value: Any, where: str = "datetime") -> datetime:
    """Parse an ISO-8601 string (``Z`` suffix, any number of fraction digits) into an aware datetime."""
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        # Python 3.10's fromisoformat wants exactly 3 or 6 fraction digits.
        m = _FRACTION.search(text)
        if m:
            frac = m.group(1)[1:]
            frac = (frac + "000000")[:6]
            text = text[: m.start()] + "." + frac + text[m.end():]
        try:
            dt = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"{where} must be an ISO-8601 date-time, got {_describe(value)}") from None
    else:
        raise TypeError(f"{where} must be a datetime or an ISO-8601 string, got {_describe(value)}")
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt


def aware_datetime(where: str, *, optional: bool = False) -> Any:
    """attrs converter factory: datetime/ISO string -> timezone-aware datetime (naive = UTC)."""

    def convert(value: Any) -> Any:
        if value is None and optional:
            return None
        return parse_datetime(value, where)

    return convert


# --- attrs field factories -------------------------------------------------------------------------
# Converters get the instance and the field so messages can say "<Class>.<field> must ...".


def _where(self_: Any, field: Any) -> str:
    return f"{type(self_).__name__}.{field.name}"


def _conv(fn: Any) -> Any:
    return attrs.Converter(fn, takes_self=True, takes_field=True)


# Each converter below lets the plain, valid value through at once (the checks above only run, and the
# "<Class>.<field>" of their message is only built, for anything else): a sample call builds about 30 fields.


def str_field(*, default: Any = attrs.NOTHING, **kw: Any) -> Any:
    optional = default is None
    return attrs.field(
        default=default,
        converter=_conv(
            lambda v, s, f: v
            if type(v) is str or (v is None and optional)
            else check_str(v, _where(s, f), optional=optional)
        ),
        **kw,
    )


def int_field(*, default: Any = attrs.NOTHING, minimum: int | None = None, **kw: Any) -> Any:
    optional = default is None
    return attrs.field(
        default=default,
        converter=_conv(
            lambda v, s, f: v
            if (type(v) is int and (minimum is None or v >= minimum)) or (v is None and optional)
            else check_int(v, _where(s, f), minimum=minimum, optional=optional)
        ),
        **kw,
    )


def float_field(
    *,
    default: Any = attrs.NOTHING,
    minimum: float | None = None,
    maximum: float | None = None,
    min_exclusive: bool = False,
    max_exclusive: bool = False,
    **kw: Any,
) -> Any:
    optional = default is None

    def convert(v: Any, s: Any, f: Any) -> Any:
        if v is None and optional:
            return None
        if type(v) is not float or not math.isfinite(v):
            v = check_float(v, _where(s, f), optional=optional)
            if v is None:
                return v
        if minimum is not None and (v <= minimum if min_exclusive else v < minimum):
            raise ValueError(f"{_where(s, f)} must be {'>' if min_exclusive else '>='} {minimum:g}, got {v:g}")
        if maximum is not None and (v >= maximum if max_exclusive else v > maximum):
            raise ValueError(f"{_where(s, f)} must be {'<' if max_exclusive else '<='} {maximum:g}, got {v:g}")
        return v

    return attrs.field(default=default, converter=_conv(convert), **kw)


def bool_field(*, default: Any = attrs.NOTHING, **kw: Any) -> Any:
    optional = default is None
    return attrs.field(
        default=default,
        converter=_conv(
            lambda v, s, f: v
            if v is True or v is False or (v is None and optional)
            else check_bool(v, _where(s, f), optional=optional)
        ),
        **kw,
    )


def choice_field(choices: tuple[str, ...], *, default: Any = attrs.NOTHING, **kw: Any) -> Any:
    optional = default is None
    return attrs.field(
        default=default,
        converter=_conv(
            lambda v, s, f: v
            if (type(v) is str and v in choices) or (v is None and optional)
            else check_choice(v, _where(s, f), choices, optional=optional)
        ),
        **kw,
    )


def tag_field(tag: str) -> Any:
    """The ``type`` discriminator: defaults to ``tag`` and refuses any other value."""
    return choice_field((tag,), default=tag)


def str_list_field(*, default: Any = attrs.NOTHING, **kw: Any) -> Any:
    optional = default is None

    def convert(v: Any, s: Any, f: Any) -> Any:
        if v is None and optional:
            return None
        return check_str_list(v, _where(s, f))

    return attrs.field(default=default, converter=_conv(convert), **kw)


def list_of_field(cls: type, *, default: Any = attrs.NOTHING, **kw: Any) -> Any:
    optional = default is None
    return attrs.field(
        default=default,
        converter=_conv(
            lambda v, s, f: v if v is None and optional else check_list_of(v, _where(s, f), cls, optional=optional)
        ),
        **kw,
    )


def instance_field(cls: type, *, default: Any = attrs.NOTHING, **kw: Any) -> Any:
    optional = default is None
    return attrs.field(
        default=default,
        converter=_conv(
            lambda v, s, f: v
            if type(v) is cls or (v is None and optional)
            else check_instance(v, _where(s, f), cls, optional=optional)
        ),
        **kw,
    )


def float_dict_field(*, default: Any = attrs.NOTHING, **kw: Any) -> Any:
    optional = default is None
    return attrs.field(
        default=default, converter=_conv(lambda v, s, f: check_float_dict(v, _where(s, f), optional=optional)), **kw
    )


def json_dict_field(*, default: Any = attrs.NOTHING, none_as_empty: bool = False, **kw: Any) -> Any:
    """A free-form JSON object (user metadata): a dict with str keys; ``none_as_empty`` maps None to {}."""
    optional = default is None

    def convert(v: Any, s: Any, f: Any) -> Any:
        if v is None and optional:
            return None
        if v is None and none_as_empty:
            return {}
        if not isinstance(v, Mapping):
            raise TypeError(f"{_where(s, f)} must be a dict, got {type(v).__name__}")
        for k in v:
            if not isinstance(k, str):
                raise TypeError(f"{_where(s, f)} keys must be str, got {_describe(k)}")
        return dict(v)

    return attrs.field(default=default, converter=_conv(convert), **kw)


def datetime_field(*, default: Any = attrs.NOTHING, **kw: Any) -> Any:
    optional = default is None

    def convert(v: Any, s: Any, f: Any) -> Any:
        if v is None and optional:
            return None
        return parse_datetime(v, _where(s, f))

    return attrs.field(default=default, converter=_conv(convert), **kw)


def converted_field(converter: Any, *, default: Any = attrs.NOTHING, **kw: Any) -> Any:
    """A field with a custom converter (a plain function or an ``attrs.Converter``)."""
    return attrs.field(default=default, converter=converter, **kw)


# Field metadata: leave the field off the wire while it equals its default (new optional keys that
# servers predating them would refuse), instead of the usual "always send non-None defaults".
OMIT_DEFAULT = {"serde_omit_default": True}
