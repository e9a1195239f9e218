"""What a recipe may contain, read off the pydantic models of :mod:`plastcli.recipes`:
every key with its type, default, allowed values and meaning (``plast recipe keys``), and
a JSON Schema (``plast recipe schema``, pydantic's ``model_json_schema``) that editors can
check recipes against. Torch-free.

The schema states what the models check field by field (types, choices as ``enum``,
``minimum``, no unknown keys); the cross-field checks (layer sizes against the data set,
bounds holding the initial theta, ...) are the models' validators and are not in it.
"""

from __future__ import annotations

import typing
from typing import Annotated, Any, Literal

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic.json_schema import models_json_schema

from plastcli.recipes.fields import describe, is_model, is_union, strip
from plastcli.recipes.load import SCHEMAS

REQUIRED = object()


def _default(f: FieldInfo) -> Any:
    if f.is_required():
        return REQUIRED
    value = f.get_default(call_default_factory=True)
    return value.model_dump() if isinstance(value, BaseModel) else value


def keys(experiment: str, meaning: bool = False) -> list[tuple[str, ...]]:
    """``(dotted key, type, default, allowed)`` for every leaf key of one experiment's recipe,
    in schema order (a nested mapping's keys follow it); ``meaning`` adds the key's
    description (empty where the schema gives none)."""
    rows: list[tuple[str, ...]] = []

    def walk(cls: type[BaseModel], prefix: str, defaults: dict | None) -> None:
        """``defaults``: the parent field's default for this mapping (a recipe may default
        a nested section differently from the section's own class, e.g. 10 seeds)."""
        for name, f in cls.model_fields.items():
            tp, key = f.annotation, prefix + name
            inner = _model_in(tp)
            d = defaults[name] if defaults and name in defaults else _default(f)
            if inner is not None and typing.get_origin(tp) is None:
                walk(inner, key + ".", d if isinstance(d, dict) else None)
                continue
            row = (key, describe(tp), "(required)" if d is REQUIRED else repr(d), _allowed(f))
            rows.append((*row, f.description or "") if meaning else row)
            if inner is not None:  # a list of mappings: their keys, as key.N.sub
                walk(inner, key + ".N.", None)

    walk(SCHEMAS[experiment], "", None)
    return rows


def _model_in(tp: Any) -> type[BaseModel] | None:
    """The model a field holds directly or as list items, else None."""
    if is_model(tp):
        return tp
    if typing.get_origin(tp) is list:
        (arg,) = typing.get_args(tp)
        return arg if is_model(arg) else None
    return None


def _allowed(f: FieldInfo) -> str:
    """The field's choices (of the value, a list's items or a mapping's names), else its
    bounds ('>= 1', 'in (0, 1]'), else ''."""
    choices = _literal_in(f.annotation)
    if choices:
        return ", ".join(map(str, choices))
    found = _bounds(f.metadata) or _bounds_in(f.annotation)
    lo = next(((k, found[k]) for k in ("ge", "gt") if k in found), None)
    hi = next(((k, found[k]) for k in ("le", "lt") if k in found), None)
    if lo and hi:
        return f"in {'[' if lo[0] == 'ge' else '('}{lo[1]}, {hi[1]}{']' if hi[0] == 'le' else ')'}"
    sign = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
    return f"{sign[(lo or hi)[0]]} {(lo or hi)[1]}" if lo or hi else ""


def _literal_in(tp: Any) -> tuple:
    tp = strip(tp)
    if typing.get_origin(tp) is Literal:
        return typing.get_args(tp)
    if is_union(tp) or typing.get_origin(tp) in (list, dict):
        for arg in typing.get_args(tp):
            if found := _literal_in(arg):
                return found
    return ()


BOUNDS = ("ge", "gt", "le", "lt")


def _bounds(metadata: list) -> dict[str, Any]:
    """The bounds (ge, gt, le, lt) among a field's (or an ``Annotated``'s) metadata."""
    out: dict[str, Any] = {}
    for m in metadata:
        if isinstance(m, FieldInfo):
            out |= _bounds(m.metadata)
        else:
            out |= {k: getattr(m, k) for k in BOUNDS if getattr(m, k, None) is not None}
    return out


def _bounds_in(tp: Any) -> dict[str, Any]:
    """The bounds on a list's items (``list[at_least(int, 1)]``)."""
    if typing.get_origin(tp) is Annotated:
        return _bounds(list(tp.__metadata__)) or _bounds_in(typing.get_args(tp)[0])
    if is_union(tp) or typing.get_origin(tp) is list:
        for arg in typing.get_args(tp):
            if found := _bounds_in(arg):
                return found
    return {}


def json_schema() -> dict:
    """One JSON Schema for every recipe: one branch per experiment, chosen by its
    ``experiment`` key; the sections they share are defined once, under ``$defs``."""
    _, doc = models_json_schema([(cls, "validation") for cls in SCHEMAS.values()],
                                ref_template="#/$defs/{model}")
    defs = doc["$defs"]
    branches = []
    for name, cls in SCHEMAS.items():
        s = defs.pop(cls.__name__)
        s["properties"]["experiment"] = {"const": name}
        s["required"] = sorted({"experiment", *s.get("required", [])})
        s["title"] = f"plast {name} recipe"
        branches.append(s)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": "plast recipe", "oneOf": branches, "$defs": defs}
