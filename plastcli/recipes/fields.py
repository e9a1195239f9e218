"""The recipe walker: schema dataclass fields with their validation metadata, the parser
that turns a YAML mapping into a schema dataclass, ``--set key=value`` overrides, and
:class:`Where`, which names the file and key in every error. Nothing here touches tensors.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import field
from pathlib import Path
from typing import Any

import yaml

from plastcli.core.vocabulary import (  # the names of the core layer; no torch there either
    DATASETS,
)
from plastcli.errors import PlastError

DEVICES = ("auto", "cpu", "cuda")
# name -> (input size, number of classes, splits available), from the dataset catalogue
DATASET_SHAPES = {name: (n_in, classes, tuple(splits))
                  for name, (n_in, classes, splits) in DATASETS.items()}


def _meta(choices=None, minimum=None, doc=""):
    return {"choices": choices, "min": minimum, "doc": doc}


def spec(default=dataclasses.MISSING, *, choices=None, minimum=None, doc="", factory=None):
    """A dataclass field with validation metadata (allowed values, minimum)."""
    md = _meta(choices, minimum, doc)
    if factory is not None:
        return field(default_factory=factory, metadata=md)
    return field(default=default, metadata=md)



class Where:
    """Names the recipe file in error messages."""

    def __init__(self, path: str | Path):
        self.path = str(path)

    def fail(self, key: str, message: str) -> typing.NoReturn:
        raise PlastError(f"{self.path}: key '{key}': {message}")


# --------------------------------------------------------------------------- parsing


def describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {describe(typing.get_args(tp)[0])}"
    if origin is dict:
        return f"mapping of name to {describe(typing.get_args(tp)[1])}"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    return {int: "integer", float: "number", str: "string", bool: "true/false",
            type(None): "null"}.get(tp, str(tp))


def _convert(value: Any, tp: Any, key: str, md: dict, where: Where) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key, md, where)
            except PlastError:
                if len(args) == 2 and type(None) in args:
                    raise
        where.fail(key, f"expected {describe(tp)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            where.fail(key, f"expected a mapping, got {value!r}")
        return parse_dataclass(tp, value, where, prefix=key + ".")
    if origin is list:
        if not isinstance(value, list):
            where.fail(key, f"expected {describe(tp)}, got {value!r}")
        (arg,) = typing.get_args(tp)
        return [_convert(v, arg, f"{key}[{i}]", md, where) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            where.fail(key, f"expected {describe(tp)}, got {value!r}")
        _, vt = typing.get_args(tp)
        out = {}
        for k, v in value.items():
            if md.get("choices") and k not in md["choices"]:
                where.fail(f"{key}.{k}", f"unknown name '{k}'; allowed: {', '.join(md['choices'])}")
            out[str(k)] = _convert(v, vt, f"{key}.{k}", {}, where)
        return out
    if tp is bool:
        if not isinstance(value, bool):
            where.fail(key, f"expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            where.fail(key, f"expected an integer, got {value!r}")
    elif tp is float:
        if isinstance(value, str):  # PyYAML reads 1.0e4 (no exponent sign) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            where.fail(key, f"expected a number, got {value!r}")
        value = _finite(value, key, where)
    elif tp is str:
        if not isinstance(value, str):
            where.fail(key, f"expected a string, got {value!r}")
    choices = md.get("choices")
    if choices is not None and value not in choices:
        where.fail(key, f"'{value}' is not allowed; allowed: {', '.join(map(str, choices))}")
    minimum = md.get("min")
    if minimum is not None and isinstance(value, (int, float)) and value < minimum:
        where.fail(key, f"{value} is below the minimum {minimum}")
    return value


def _finite(value: int | float, key: str, where: Where) -> float:
    """A number as a float; NaN, infinity and ints too large for a float are refused."""
    try:
        out = float(value)
    except OverflowError:
        out = math.inf
    if not math.isfinite(out):
        where.fail(key, f"{value!r} is not a finite number")
    return out


def parse_dataclass(cls: type, data: dict, where: Where, prefix: str = "") -> Any:
    """Build ``cls`` from ``data``, rejecting unknown keys and wrong types."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            where.fail(prefix + str(key), f"unknown key; allowed: {', '.join(fields)}")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], prefix + name, dict(f.metadata), where)
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field is missing
        where.fail(prefix.rstrip(".") or "<root>", str(exc))


def apply_override(raw: dict, assignment: str, where: Where) -> None:
    """Apply one ``a.b.c=value`` override to the raw YAML mapping (value parsed as YAML)."""
    if "=" not in assignment:
        raise PlastError(f"--set '{assignment}': expected key=value, e.g. meta.episodes=10")
    key, text = assignment.split("=", 1)
    try:
        value = yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError) as exc:
        raise PlastError(f"--set '{assignment}': value is not valid YAML ({exc})") from None
    node = raw
    parts = key.strip().split(".")
    if parts[:2] == ["population", "grid"] and len(parts) > 3:  # grid keys are dotted names
        parts = [*parts[:2], ".".join(parts[2:])]
    for i, part in enumerate(parts):
        if isinstance(node, list):  # a list item by its index: conditions.1.grid.oja
            if not part.lstrip("-").isdigit():
                where.fail(key, f"'{'.'.join(parts[:i])}' is a list; index it by a number "
                           f"from 0 to {len(node) - 1}, not '{part}'")
            if not 0 <= int(part) < len(node):
                where.fail(key, f"index {part} is out of range: '{'.'.join(parts[:i])}' has "
                           f"{len(node)} item(s), 0 to {len(node) - 1}")
            part = int(part)
        elif not isinstance(node, dict):
            where.fail(key, f"'{parts[i - 1]}' is not a mapping or a list")
        if i == len(parts) - 1:
            node[part] = value
            return
        child = node[part] if isinstance(node, list) else node.get(part)
        if child is None:
            child = node[part] = {}
        node = child
