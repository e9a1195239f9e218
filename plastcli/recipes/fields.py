"""The recipe schema's building blocks on pydantic v2: the strict base model of every
section and of a whole recipe (whose cross-field checks run as a model validator), the value
types that keep plast's rules (numbers, names, choices, bounds), :class:`Where`, which names
the file and key in every error, ``--set key=value`` overrides, and the type names that
messages and ``plast recipe keys`` print. Nothing here touches tensors.
"""

from __future__ import annotations

import math
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, model_validator
from pydantic_core import PydanticCustomError

from plastcli.core.vocabulary import (  # the names of the core layer; no torch there either
    DATASETS,
)
from plastcli.errors import PlastError

DEVICES = ("auto", "cpu", "cuda")
# name -> (input size, number of classes, splits available), from the dataset catalogue
DATASET_SHAPES = {name: (n_in, classes, tuple(splits))
                  for name, (n_in, classes, splits) in DATASETS.items()}


class Schema(BaseModel):
    """A recipe section: strict types (true/false is no integer, 1.0 no integer, 3 no
    string) and no unknown keys."""

    model_config = ConfigDict(extra="forbid", strict=True)


def choice(names: tuple[str, ...] | list[str]) -> Any:
    """``Literal[names]``: one of a vocabulary's names (plastcli.core.vocabulary)."""
    return Literal.__getitem__(tuple(names))


def as_number(value: Any) -> float:
    """A number as a finite float: an integer is accepted, and so is a numeric string
    (PyYAML reads 1.0e4, with no exponent sign, as a string); true/false is not a number;
    NaN, infinity and integers too large for a float are refused."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PydanticCustomError("plast", "expected a number, got {got}", {"got": repr(value)})
    try:
        out = float(value)
    except OverflowError:
        out = math.inf
    if not math.isfinite(out):
        raise PydanticCustomError("plast", "{got} is not a finite number", {"got": repr(value)})
    return out


# A float field (its messages are plast's own: see as_number).
Number = Annotated[float, BeforeValidator(as_number)]


def at_least(tp: Any, minimum: float) -> Any:
    """``tp`` with a lower bound where a field's own ``Field(ge=...)`` does not reach: list
    items, and a :data:`Number` inside ``X | None`` (its bound goes under the conversion,
    so that the JSON Schema states it as ``minimum``)."""
    if tp is Number:
        return Annotated[float, Field(ge=minimum), BeforeValidator(as_number)]
    return Annotated[tp, Field(ge=minimum)]
# A mapping's key where any name is allowed: YAML's 3: or null: becomes '3' or 'None'.
Name = Annotated[str, BeforeValidator(str)]


class Where:
    """Names the recipe file in error messages, and the ``--set`` a bad value came from."""

    def __init__(self, path: str | Path, overrides: list[str] | tuple[str, ...] = ()):
        self.path = str(path)
        self.overrides = [a for a in overrides if "=" in a]

    def fail(self, key: str, message: str) -> typing.NoReturn:
        raise PlastError(f"{self.path}: key '{key}': {message}{self._source(key)}")

    def _source(self, key: str) -> str:
        """' (from --set K=V)' when ``key`` is, or lies under, an overridden key (the last
        such --set wins, as it does for the value)."""
        dotted = re.sub(r"\[(\d+)\]", r".\1", key)
        for assignment in reversed(self.overrides):
            k = assignment.split("=", 1)[0].strip()
            if dotted == k or dotted.startswith(k + "."):
                return f" (from --set {assignment})"
        return ""


def where_of(info: ValidationInfo) -> Where:
    """The :class:`Where` a model validator reports to: the validation context's
    ``where`` (``model_validate(raw, context={"where": ...})``), else ``<recipe>``."""
    context = getattr(info, "context", None) or {}
    return context.get("where") or Where("<recipe>")


# The keys every recipe has.
EXPERIMENT = "the experiment kind: the plast command that runs the recipe"
NAME = "the recipe's name in stores, tables and progress lines"
PAPER = "the paper it belongs to (2022 or 2024): plast reproduce --paper runs it"
DESCRIPTION = "what it is, in prose (left out of plast reproduce's cache key)"


class Recipe(Schema):
    """A whole recipe: its sections, then :meth:`check`, the cross-field checks, once every
    field is right (the recipe file comes in the validation context: see where_of). Every
    kind starts with the same four keys; a kind narrows ``experiment`` and names its own
    default ``name`` (a field redeclared in a subclass keeps its place)."""

    experiment: str = Field(description=EXPERIMENT)
    name: str = Field(description=NAME)
    paper: int | None = Field(None, description=PAPER)
    description: str = Field("", description=DESCRIPTION)

    @model_validator(mode="after")
    def _cross_field(self, info: ValidationInfo) -> Recipe:
        self.check(where_of(info))
        return self

    def check(self, where: Where) -> None:
        """The checks that read more than one field; PlastError naming ``where``."""


# --------------------------------------------------------------------------- type names


def strip(tp: Any) -> Any:
    """The type under ``Annotated[...]``."""
    while typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def describe(tp: Any) -> str:
    """A type as messages and ``plast recipe keys`` name it: 'list of integer',
    'mapping of name to number', 'mapping', 'string or null'."""
    tp = strip(tp)
    origin = typing.get_origin(tp)
    if is_union(tp):
        return " or ".join(describe(a) for a in typing.get_args(tp))
    if origin is Literal:
        return describe(type(typing.get_args(tp)[0]))
    if origin is list:
        return f"list of {describe(typing.get_args(tp)[0])}"
    if origin is dict:
        return f"mapping of name to {describe(typing.get_args(tp)[1])}"
    if is_model(tp):
        return "mapping"
    return {int: "integer", float: "number", str: "string", bool: "true/false",
            type(None): "null"}.get(tp, str(tp))


# --------------------------------------------------------------------------- --set


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
