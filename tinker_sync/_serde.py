"""The one cattrs Converter for the Tinker JSON wire format, plus dumps()/loads().

Wire rules: optional fields whose value is None are omitted, fields with non-None defaults (and every
``type`` tag) are always sent, bytes travel as base64, datetimes as ISO-8601, unknown response keys are
ignored. Validation is done by the attrs classes themselves: the structure hooks only walk the shape and
hand leaves through untouched (fast for big token lists; the class converters check them in one pass).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import typing
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Final, TypeVar

import attrs
import cattrs
from cattrs.cols import list_structure_factory, mapping_structure_factory
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override
from cattrs.preconf.json import make_converter as _make_json_converter

from . import types as wire
from ._exceptions import APIResponseValidationError
from .types._common import parse_datetime
from .types._numbers import NumberArray, plain_list
from .types._provenance import ProvenanceSpan
from .types._sampling import StopCondition

__all__ = [
    "COMPACT_JSON",
    "configure_converter",
    "converter",
    "dumps",
    "loads",
    "make_converter",
    "parse_request",
    "structure_strict",
    "unstructure",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Tagged unions: alias -> {tag: member class}. Every member carries a non-None tag default.
_TAGGED_UNIONS: dict[Any, dict[str, type]] = {}
_UNION_NAMES: dict[Any, str] = {}


def _tag_of(cl: type, tag_name: str = "type") -> str:
    return str(attrs.fields_dict(cl)[tag_name].default)


def _register_tagged_union(
    c: cattrs.Converter, alias: Any, name: str, *, tag_name: str = "type", fallback: type | None = None
) -> None:
    """Structure ``alias`` (and ``alias | None``) by the ``tag_name`` key; unknown tags go to ``fallback``."""
    members = [m for m in typing.get_args(alias) if m is not fallback]
    by_tag = {_tag_of(m, tag_name): m for m in members}
    allowed = ", ".join(repr(t) for t in sorted(by_tag))
    _TAGGED_UNIONS[alias] = by_tag
    _UNION_NAMES[alias] = name
    optional = alias | None

    def structure(value: Any, type_: Any) -> Any:
        if value is None and type_ == optional:
            return None
        if not isinstance(value, Mapping):
            raise TypeError(f"a {name} must be a JSON object with a {tag_name!r} key, got {_json_kind(value)}")
        tag = value.get(tag_name)
        cl = by_tag.get(tag) if isinstance(tag, str) else None
        if cl is None:
            if fallback is not None and isinstance(tag, str):
                return c.structure(value, fallback)
            if tag_name not in value:
                raise ValueError(f"a {name} needs a {tag_name!r} key (one of {allowed})")
            raise ValueError(f"unknown {name} {tag_name} {tag!r}; expected one of {allowed}")
        return c.structure(value, cl)

    c.register_structure_hook_func(lambda t: t == alias or t == optional, structure)


def _is_literal(t: Any) -> bool:
    return typing.get_origin(t) is typing.Literal


def _identity(value: Any, _: Any = None) -> Any:
    return value


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64decode(value: Any, _: Any) -> bytes:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if not isinstance(value, str):
        raise TypeError(f"expected a base64 string, got {type(value).__name__}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("invalid base64 data") from None


# Leaf types whose validation (and int/float normalisation) the attrs classes do themselves.
_PASSTHROUGH_LEAVES = (int, float, str, bool)
# Each field of these types checks its own items.
_FAST_LISTS = (list[int], list[float], list[int | float], list[float | None], list[str])


def configure_converter(c: cattrs.Converter) -> None:
    """Install the Tinker wire rules on ``c`` (see the module docstring)."""
    c.register_unstructure_hook(bytes, _b64encode)
    c.register_structure_hook(bytes, _b64decode)
    c.register_unstructure_hook(datetime, datetime.isoformat)
    c.register_structure_hook(datetime, lambda v, _: parse_datetime(v))
    for leaf in _PASSTHROUGH_LEAVES:
        c.register_structure_hook(leaf, _identity)
    c.register_structure_hook_func(_is_literal, _identity)
    # The attrs converter maps any category (even an unknown one) to the enum.
    c.register_structure_hook(wire.RequestErrorCategory, _identity)
    c.register_structure_hook_func(lambda t: t == StopCondition, _identity)
    c.register_structure_hook_func(lambda t: t is typing.Any, _identity)
    # JSON shape checks: a str must not be iterated as a list, nor a list/str read as an object.
    c.register_structure_hook_factory(_is_list_type, lambda t: _checked(list_structure_factory(t, c), list, "array"))
    c.register_structure_hook_factory(
        _is_dict_type, lambda t: _checked(mapping_structure_factory(t, c), Mapping, "object")
    )
    # Lists of scalars go through as the same list object: json.dumps handles them at C speed,
    # and the attrs converters validate/copy them in one pass on the way in.
    c.register_unstructure_hook_func(_is_fast_list, plain_list)  # typed buffers (NumberArray) become lists
    c.register_unstructure_hook(NumberArray, plain_list)
    c.register_structure_hook_func(_is_fast_list, _list_passthrough)

    # Omit None, never non-None defaults (except fields marked OMIT_DEFAULT, new keys older servers
    # would refuse). Registered BEFORE the union hooks, which look members up.
    def unstructure_factory(cl: type) -> Callable[[Any], dict[str, Any]]:
        overrides = {
            a.name: override(omit_if_default=True)
            for a in attrs.fields(cl)
            if (a.default is None and not a.metadata.get("serde_keep_none")) or a.metadata.get("serde_omit_default")
        }
        base: Callable[[Any], dict[str, Any]] = make_dict_unstructure_fn(cl, c, **overrides)  # type: ignore[arg-type]
        # Nullable fields with a non-None default (e.g. user_metadata = {}) are dropped when None, too.
        attrs.resolve_types(cl)
        drop = tuple(
            a.name
            for a in attrs.fields(cl)
            if a.default is not None
            and not a.metadata.get("serde_keep_none")
            and type(None) in typing.get_args(a.type)
        )
        if not drop:
            return base

        def unstructure_dropping_none(obj: Any) -> dict[str, Any]:
            data = base(obj)
            for name in drop:
                if data.get(name, 0) is None:
                    del data[name]
            return data

        return unstructure_dropping_none

    def structure_factory(cl: type) -> Callable[[Any, Any], Any]:
        return _null_as_absent(
            cl, make_dict_structure_fn(cl, c, _cattrs_forbid_extra_keys=c.forbid_extra_keys)
        )

    c.register_unstructure_hook_factory(attrs.has, unstructure_factory)
    c.register_structure_hook_factory(attrs.has, structure_factory)
    c.register_unstructure_hook(wire.OptimStepRequest, lambda req: _unstructure_optim_step(c, req))
    c.register_structure_hook(wire.OptimStepRequest, lambda value, _: _structure_optim_step(c, value))
    for alias, name in _TYPE_TAGGED:
        _register_tagged_union(c, alias, name)
    _register_tagged_union(c, wire.BillingEventInfo, "BillingEventInfo", fallback=wire.OtherBillingEvent)
    _register_tagged_union(c, wire.FutureCompletion, "FutureCompletion", tag_name="state")
    _register_tagged_union(c, wire.TelemetryEvent, "TelemetryEvent", tag_name="event")


# Unions whose members all carry a `type` tag.
_TYPE_TAGGED: tuple[tuple[Any, str], ...] = (
    (wire.ModelInputChunk, "ModelInputChunk"),
    (wire.OptimizerConfig, "OptimizerConfig"),
    (ProvenanceSpan, "ProvenanceSpan"),
    (wire.SearchOwner, "SearchOwner"),
    (wire.SessionStatusQuery, "SessionStatusQuery"),
    (wire.SessionStatus, "SessionStatus"),
    (wire.SessionFailedReason, "SessionFailedReason"),
    (wire.ClientSessionFinishReason, "ClientSessionFinishReason"),
)


def _null_as_absent(cl: type, fn: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    """Structure hook: a JSON object, where an explicit null for a field with a default means "absent".

    Servers built from the official pydantic models send ``"type": null`` and ``"x": null`` for unset
    optional fields; the official SDK reads those as the defaults, and so do we.
    """
    with_default = frozenset(a.name for a in attrs.fields(cl) if a.default is not attrs.NOTHING)

    def structure(value: Any, type_: Any) -> Any:
        if not isinstance(value, Mapping):
            raise TypeError(f"expected a JSON object, got {_json_kind(value)}")
        if None in value.values():
            value = {k: v for k, v in value.items() if v is not None or k not in with_default}
        return fn(value, type_)

    return structure


def _unstructure_optim_step(c: cattrs.Converter, req: wire.OptimStepRequest) -> dict[str, Any]:
    # The official wire: AdamParams travel as `adam_params`, any other family as `optimizer_params`.
    key = "adam_params" if isinstance(req.optim_params, wire.AdamParams) else "optimizer_params"
    data: dict[str, Any] = {key: c.unstructure(req.optim_params), "model_id": req.model_id}
    if req.seq_id is not None:
        data["seq_id"] = req.seq_id
    data["type"] = req.type
    return data


def _structure_optim_step(c: cattrs.Converter, value: Any) -> wire.OptimStepRequest:
    if not isinstance(value, Mapping):
        raise TypeError(f"expected a JSON object, got {_json_kind(value)}")
    keys = [k for k in ("adam_params", "optimizer_params", "optim_params") if value.get(k) is not None]
    if len(keys) != 1:
        raise ValueError("an OptimStepRequest needs exactly one of adam_params, optimizer_params, optim_params")
    raw = value[keys[0]]
    if not isinstance(raw, Mapping):
        raise TypeError(f"{keys[0]}: expected a JSON object, got {_json_kind(raw)}")
    if keys[0] == "adam_params" or raw.get("type") is None:
        params: wire.OptimParams = c.structure(raw, wire.AdamParams)
    elif raw.get("type") == "dimuon":
        params = c.structure(raw, wire.DimuonParams)
    else:
        raise ValueError(f"unknown optimizer_params type {raw.get('type')!r}; expected 'dimuon'")
    if c.forbid_extra_keys:
        extra = set(value) - {keys[0], "model_id", "seq_id", "type"}
        if extra:
            raise ValueError(f"unknown OptimStepRequest key(s): {', '.join(sorted(extra))}")
    return wire.OptimStepRequest(
        params, value.get("model_id"), value.get("seq_id"), value.get("type") or "optim_step"
    )


def _is_list_type(t: Any) -> bool:
    return typing.get_origin(t) is list


def _is_dict_type(t: Any) -> bool:
    return typing.get_origin(t) is dict


def _checked(fn: Callable[[Any, Any], Any], kind: type, json_name: str) -> Callable[[Any, Any], Any]:
    def structure(value: Any, type_: Any) -> Any:
        if not isinstance(value, kind):
            raise TypeError(f"expected a JSON {json_name}, got {_json_kind(value)}")
        return fn(value, type_)

    return structure


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


def _is_fast_list(t: Any) -> bool:
    return t in _FAST_LISTS


def _list_passthrough(value: Any, _: Any) -> Any:
    if not isinstance(value, list):
        raise TypeError(f"expected a JSON array, got {_json_kind(value)}")
    return value


def make_converter(*, forbid_extra_keys: bool = False) -> cattrs.Converter:
    """A fresh JSON converter with the Tinker wire rules."""
    c = _make_json_converter(forbid_extra_keys=forbid_extra_keys, detailed_validation=True)
    configure_converter(c)
    return c


converter: Final[cattrs.Converter] = make_converter()
_strict_converter: Final[cattrs.Converter] = make_converter(forbid_extra_keys=True)


def unstructure(obj: Any) -> Any:
    """An attrs wire object -> JSON-ready data (None omitted; defaults and ``type`` tags kept)."""
    return converter.unstructure(obj)


COMPACT_JSON = json.JSONEncoder(separators=(",", ":"))  # json.dumps with options builds an encoder per call


def dumps(obj: Any) -> bytes:
    """Serialise a wire object (or plain JSON data) to compact UTF-8 JSON bytes."""
    return COMPACT_JSON.encode(converter.unstructure(obj)).encode("ascii")


def _type_name(cls: Any) -> str:
    name = getattr(cls, "__name__", None)
    if name:
        return str(name)
    for alias, alias_name in _UNION_NAMES.items():
        if alias == cls:
            return alias_name
    return repr(cls)


def _describe_error(exc: BaseException) -> str:
    if isinstance(exc, cattrs.BaseValidationError):
        messages = cattrs.transform_error(exc, path="$", format_exception=_format_leaf)
        return "; ".join(messages)
    return _format_leaf(exc, None)


def _format_leaf(exc: BaseException, type_: Any) -> str:
    if isinstance(exc, KeyError):
        return "required field missing"
    if isinstance(exc, (ValueError, TypeError)):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


_STRUCTURE_ERRORS = (
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    cattrs.BaseValidationError,
    cattrs.StructureHandlerNotFoundError,
)


def _parse(data: bytes | str | Mapping[str, Any], cls: Any, c: cattrs.Converter) -> Any:
    obj = data if isinstance(data, Mapping) else json.loads(data)
    return c.structure(obj, cls)


def loads(data: bytes | str | Mapping[str, Any], cls: type[T]) -> T:
    """Parse a response body (JSON bytes/str or an already-parsed dict) into ``cls``; unknown keys ignored.

    Raises:
        APIResponseValidationError: the body is not JSON or does not fit ``cls`` (message says where).
    """
    try:
        return _parse(data, cls, converter)  # type: ignore[no-any-return]
    except _STRUCTURE_ERRORS as exc:
        name = _type_name(cls)
        raise APIResponseValidationError(
            f"response does not match {name}: {_describe_error(exc)}", body=data, expected_type=name
        ) from exc


def parse_request(data: bytes | str | Mapping[str, Any], cls: type[T], *, strict: bool = False) -> T:
    """Parse a request body into ``cls`` (for servers); ``strict`` refuses unknown keys.

    Raises:
        ValueError: the body is not JSON or does not fit ``cls`` (message says what and where).
    """
    try:
        return _parse(data, cls, _strict_converter if strict else converter)  # type: ignore[no-any-return]
    except _STRUCTURE_ERRORS as exc:
        raise ValueError(f"invalid {_type_name(cls)}: {_describe_error(exc)}") from exc


def structure_strict(data: Mapping[str, Any], cls: type[T]) -> T:
    """Structure ``data`` into ``cls`` refusing unknown keys (golden tests, strict servers).

    Raises:
        ValueError: with a message naming the offending path.
    """
    return parse_request(data, cls, strict=True)
