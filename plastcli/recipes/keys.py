"""What a recipe may contain, read off the schema dataclasses of :mod:`plastcli.recipes`:
every key with its type, default and allowed values (``plast recipe keys``), and a JSON
Schema (``plast recipe schema``) that editors can check recipes against. Torch-free.

The schema states what the parser checks field by field (types, ``choices`` as ``enum``,
``minimum``, no unknown keys); the cross-field checks (layer sizes against the data set,
bounds holding the initial theta, ...) stay in ``validate`` and are not in the schema.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from plastcli.recipes.fields import describe
from plastcli.recipes.load import SCHEMAS


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = f.default_factory()  # type: ignore[misc]
        return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
    return dataclasses.MISSING


def keys(experiment: str) -> list[tuple[str, str, str, str]]:
    """``(dotted key, type, default, allowed)`` for every leaf key of one experiment's recipe,
    in schema order (a nested mapping's keys follow it)."""
    rows: list[tuple[str, str, str, str]] = []

    def walk(cls: type, prefix: str, defaults: dict | None) -> None:
        """``defaults``: the parent field's default for this mapping (a recipe may default
        a nested section differently from the section's own class, e.g. 10 seeds)."""
        hints = _hints(cls)
        for f in dataclasses.fields(cls):
            tp, md, key = hints[f.name], dict(f.metadata), prefix + f.name
            inner = _dataclass_in(tp)
            d = defaults[f.name] if defaults and f.name in defaults else _default(f)
            if inner is not None and typing.get_origin(tp) is None:
                walk(inner, key + ".", d if isinstance(d, dict) else None)
                continue
            allowed = ", ".join(map(str, md["choices"])) if md.get("choices") else \
                (f">= {md['min']}" if md.get("min") is not None else "")
            rows.append((key, describe(tp), "(required)" if d is dataclasses.MISSING
                         else repr(d), allowed))
            if inner is not None:  # a list of mappings: their keys, as key.N.sub
                walk(inner, key + ".N.", None)

    walk(SCHEMAS[experiment], "", None)
    return rows


def _dataclass_in(tp: Any) -> type | None:
    """The dataclass a field holds directly or as list items, else None."""
    if dataclasses.is_dataclass(tp):
        return tp
    if typing.get_origin(tp) is list:
        (arg,) = typing.get_args(tp)
        return arg if dataclasses.is_dataclass(arg) else None
    return None


def _type_schema(tp: Any, md: dict) -> dict:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return {"anyOf": [_type_schema(a, md) for a in typing.get_args(tp)]}
    if origin is list:
        return {"type": "array", "items": _type_schema(typing.get_args(tp)[0], md)}
    if origin is dict:  # choices name the keys (e.g. terms); values keep the bounds
        out = {"type": "object", "additionalProperties":
               _type_schema(typing.get_args(tp)[1], {**md, "choices": None})}
        if md.get("choices"):
            out["propertyNames"] = {"enum": list(md["choices"])}
        return out
    if dataclasses.is_dataclass(tp):
        return _object_schema(tp)
    base = {int: {"type": "integer"}, float: {"type": "number"}, str: {"type": "string"},
            bool: {"type": "boolean"}, type(None): {"type": "null"}}.get(tp, {})
    out = dict(base)
    if md.get("choices") and tp in (str, int, float):
        out["enum"] = list(md["choices"])
    if md.get("min") is not None and tp in (int, float):
        out["minimum"] = md["min"]
    return out


def _object_schema(cls: type) -> dict:
    hints = _hints(cls)
    props, required = {}, []
    for f in dataclasses.fields(cls):
        md = dict(f.metadata)
        prop = _type_schema(hints[f.name], md)
        if md.get("doc"):
            prop["description"] = md["doc"]
        d = _default(f)
        if d is dataclasses.MISSING:
            required.append(f.name)
        props[f.name] = prop
    out = {"type": "object", "properties": props, "additionalProperties": False}
    if required:
        out["required"] = required
    return out


def json_schema() -> dict:
    """One JSON Schema for every recipe: one branch per experiment, chosen by its
    ``experiment`` key."""
    branches = []
    for name, cls in SCHEMAS.items():
        s = _object_schema(cls)
        s["properties"]["experiment"] = {"const": name}
        s["required"] = sorted({"experiment", *s.get("required", [])})
        s["title"] = f"plast {name} recipe"
        branches.append(s)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": "plast recipe", "oneOf": branches}
