"""Write a JSON snapshot of the official Tinker SDK's public surface (facts only, no code).

Run it with the official SDK's interpreter, e.g.::

    /path/to/venv-with-tinker-0.38/bin/python tools/snapshot_official_api.py tests/data/official_api_0.38.json

It records, for the four clients (ServiceClient, TrainingClient, SamplingClient, RestClient), every
public member: its kind (method, staticmethod, classmethod, property), its parameters (name, kind,
default) and the kind of its return value; ``*_async`` coroutines are listed separately. For every
public name of ``tinker.types`` it records what the name is (class, enum, alias) and its field names.
tests/test_api_surface.py compares tinker_sync with the snapshot.
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import json
import sys
import types as pytypes
import typing
from pathlib import Path
from typing import Any

CLIENTS = ("ServiceClient", "TrainingClient", "SamplingClient", "RestClient")
_MISSING = "<required>"


def _default_repr(value: Any) -> Any:
    if value is inspect.Parameter.empty:
        return _MISSING
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def _return_kind(annotation: Any) -> str:
    """Classify a return annotation: future (a Future-like), client_future, none, value."""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", repr(annotation))
    if annotation is inspect.Signature.empty:
        return "unannotated"
    if text in ("None", "NoneType"):
        return "none"
    if "Backcompat" in text and "ClientFuture" in text:
        return "client_future"
    if text.startswith(("APIFuture", "ConcurrentFuture", "Future", "AwaitableConcurrentFuture")):
        return "future"
    return "value"


def _signature(fn: Any, *, drop_first: bool) -> dict[str, Any]:
    sig = inspect.signature(fn)
    params = list(sig.parameters.values())
    if drop_first and params:
        params = params[1:]
    return {
        "params": [
            {"name": p.name, "kind": p.kind.name, "default": _default_repr(p.default)}
            for p in params
            if not p.name.startswith("_")
        ],
        "returns": _return_kind(sig.return_annotation),
        "return_annotation": sig.return_annotation
        if isinstance(sig.return_annotation, str)
        else repr(sig.return_annotation),
    }


def _member(cls: type, name: str) -> dict[str, Any] | None:
    raw = inspect.getattr_static(cls, name)
    if isinstance(raw, property):
        return {"kind": "property"}
    if isinstance(raw, staticmethod):
        return {"kind": "staticmethod", **_signature(raw.__func__, drop_first=False)}
    if isinstance(raw, classmethod):
        return {"kind": "classmethod", **_signature(raw.__func__, drop_first=True)}
    if inspect.isfunction(raw):
        return {"kind": "method", **_signature(raw, drop_first=True)}
    return None


def snapshot_client(cls: type) -> dict[str, Any]:
    sync: dict[str, Any] = {}
    asynchronous: list[str] = []
    for name in sorted(dir(cls)):
        if name.startswith("_") and name not in ("__init__", "__enter__", "__exit__"):
            continue
        raw = inspect.getattr_static(cls, name)
        func = getattr(raw, "__func__", raw)
        if name.endswith("_async") or inspect.iscoroutinefunction(func):
            asynchronous.append(name)
            continue
        described = _member(cls, name)
        if described is not None:
            sync[name] = described
    return {"sync": sync, "async": asynchronous}


def _literal_values(tp: Any) -> list[Any] | None:
    if typing.get_origin(tp) is typing.Literal:
        return list(typing.get_args(tp))
    return None


def _alias_members(tp: Any) -> list[str]:
    """Names of the classes a Union/Annotated alias is made of (for tagged unions)."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _alias_members(typing.get_args(tp)[0])
    if origin in (typing.Union, pytypes.UnionType):
        out: list[str] = []
        for arg in typing.get_args(tp):
            out.extend(_alias_members(arg))
        return out
    name = getattr(tp, "__name__", None)
    return [name] if name else [repr(tp)]


def _class_fields(obj: type) -> tuple[str, list[dict[str, Any]]]:
    if hasattr(obj, "model_fields"):
        out = []
        for fname, info in obj.model_fields.items():
            entry: dict[str, Any] = {"name": fname, "required": info.is_required()}
            if info.alias and info.alias != fname:
                entry["alias"] = info.alias
            out.append(entry)
        return "model", out
    if dataclasses.is_dataclass(obj):
        fields = []
        for f in dataclasses.fields(obj):
            if f.name.startswith("_"):
                continue
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            fields.append({"name": f.name, "required": required})
        return "dataclass", fields
    return "class", []


def _own_members(cls: type, fields: set[str]) -> list[str]:
    """Public methods/properties the SDK's own classes define (not pydantic's, not the fields)."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if klass.__module__.startswith("tinker"):
            names |= {n for n in vars(klass) if not n.startswith("_")}
    return sorted(names - fields - {"model_config", "Config"})


def snapshot_type(name: str, obj: Any) -> dict[str, Any]:
    if inspect.isclass(obj) and issubclass(obj, enum.Enum):
        return {"kind": "enum", "members": {m.name: m.value for m in obj}}
    if inspect.isclass(obj):
        kind, fields = _class_fields(obj)
        return {"kind": kind, "fields": fields, "members": _own_members(obj, {f["name"] for f in fields})}
    literal = _literal_values(obj)
    if literal is not None:
        return {"kind": "literal", "values": literal}
    if obj in (str, int, float, bool) or isinstance(obj, type):
        return {"kind": "alias", "target": getattr(obj, "__name__", repr(obj))}
    origin = typing.get_origin(obj)
    if origin is not None:
        return {"kind": "alias", "target": repr(obj), "members": _alias_members(obj)}
    return {"kind": "other", "repr": repr(obj)}


def snapshot_types(module: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in sorted(dir(module)):
        if name.startswith("_"):
            continue
        obj = getattr(module, name)
        if isinstance(obj, pytypes.ModuleType) or name in ("annotations",):
            continue
        out[name] = snapshot_type(name, obj)
    return out


def main(argv: list[str]) -> int:
    import tinker  # the official SDK, in the interpreter running this script

    target = Path(argv[1]) if len(argv) > 1 else Path("tests/data/official_api_0.38.json")
    data = {
        "sdk": "tinker",
        "version": tinker.__version__,
        "generated_by": "tools/snapshot_official_api.py",
        "clients": {name: snapshot_client(getattr(tinker, name)) for name in CLIENTS},
        "types": snapshot_types(tinker.types),
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    print(f"wrote {target}: {len(data['types'])} type names, "
          f"{sum(len(c['sync']) for c in data['clients'].values())} synchronous client members")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
