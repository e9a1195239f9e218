"""Recipe schema, YAML loading, ``--set key=value`` overrides and validation.

A recipe is a YAML file describing one experiment. Each experiment kind has a
dataclass schema here; :func:`load_recipe` turns a file into that dataclass or
raises :class:`PlastError` with one line naming the file, the key and what is
allowed. Nothing here touches tensors.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from plastcli.errors import PlastError

# Names shared with the engine; kept here (not imported from torch modules) so
# that validation is fast and needs no torch.
TERM_NAMES = (
    "pseudo_grad",
    "post_act_pre_err",
    "err_hebb",
    "decay",
    "ones_pre_err",
    "sum_post_grad",
    "quad_1",
    "quad_2",
    "quad_3",
    "oja",
)
FEEDBACK_MODES = ("sym", "fixed", "direct", "plastic")
INITS = ("xavier", "naive")
DEVICES = ("auto", "cpu", "cuda")
# name -> (input size, number of classes, splits available)
DATASET_SHAPES = {
    "mnist": (784, 10, ("train", "test")),
    "fashion-mnist": (784, 10, ("train", "test")),
    "emnist-balanced": (784, 47, ("train", "test")),
    "emnist-bymerge": (784, 47, ("test",)),
    "emnist-byclass": (784, 62, ("test",)),
}


def _meta(choices=None, minimum=None, doc=""):
    return {"choices": choices, "min": minimum, "doc": doc}


def spec(default=dataclasses.MISSING, *, choices=None, minimum=None, doc="", factory=None):
    """A dataclass field with validation metadata (allowed values, minimum)."""
    md = _meta(choices, minimum, doc)
    if factory is not None:
        return field(default_factory=factory, metadata=md)
    return field(default=default, metadata=md)


# --------------------------------------------------------------------------- schema


@dataclass
class DatasetSpec:
    name: str = spec("emnist-bymerge", choices=tuple(DATASET_SHAPES))
    split: str = spec("test", choices=("train", "test"))
    # A fixed, seeded subset of at most this many images per class (None: all).
    per_class_cap: int | None = spec(400, minimum=1)
    cap_seed: int = spec(0, minimum=0)


@dataclass
class TaskSpec:
    classes: int = spec(5, minimum=2)
    train_per_class: int = spec(50, minimum=1)
    query_per_class: int = spec(10, minimum=1)


@dataclass
class NetworkSpec:
    layers: list[int] = spec(factory=lambda: [784, 170, 130, 100, 70, 47], minimum=1)
    init: str = spec("xavier", choices=INITS)
    beta: float = spec(10.0, minimum=1e-6)


@dataclass
class RuleSpec:
    terms: list[str] = spec(factory=lambda: ["pseudo_grad"], choices=TERM_NAMES)
    # Initial coefficient per term; terms not named start at 0.
    init: dict[str, float] = spec(factory=dict, choices=TERM_NAMES)
    # Optional per-layer restriction: one list of term names per layer (P1 Table 1).
    layers: list[list[str]] | None = spec(None, choices=TERM_NAMES)


@dataclass
class MetaSpec:
    episodes: int = spec(500, minimum=1)
    lr: float = spec(1e-3, minimum=0.0)
    l1: float = spec(0.0, minimum=0.0)
    grad_clip: float | None = spec(None, minimum=0.0)
    sym_grad_through_feedback: bool = spec(False)


@dataclass
class PopulationSpec:
    seeds: int = spec(1, minimum=1)
    seed: int = spec(0, minimum=0)


@dataclass
class RunSpec:
    checkpoint_every: int = spec(25, minimum=1)
    device: str = spec("auto", choices=DEVICES)


@dataclass
class MetaTrainRecipe:
    experiment: str = spec("meta-train", choices=("meta-train",))
    name: str = spec("meta-train")
    paper: int | None = spec(None)
    description: str = spec("")
    dataset: DatasetSpec = spec(factory=DatasetSpec)
    task: TaskSpec = spec(factory=TaskSpec)
    network: NetworkSpec = spec(factory=NetworkSpec)
    feedback: str = spec("fixed", choices=FEEDBACK_MODES)
    rule: RuleSpec = spec(factory=RuleSpec)
    feedback_rule: RuleSpec | None = spec(None)
    meta: MetaSpec = spec(factory=MetaSpec)
    population: PopulationSpec = spec(factory=PopulationSpec)
    run: RunSpec = spec(factory=RunSpec)

    def validate(self, where: Where) -> None:
        check_dataset_network(self.dataset, self.network, where)
        check_rule(self.rule, "rule", len(self.network.layers) - 1, where)
        n_classes = DATASET_SHAPES[self.dataset.name][1]
        if self.task.classes > n_classes:
            where.fail("task.classes", f"{self.task.classes} > {n_classes} classes in dataset")
        need = self.task.train_per_class + self.task.query_per_class
        cap = self.dataset.per_class_cap
        if cap is not None and need > cap:
            where.fail(
                "task",
                f"train_per_class + query_per_class = {need} exceeds dataset.per_class_cap = {cap}",
            )
        if self.feedback == "plastic" and self.feedback_rule is None:
            where.fail("feedback_rule", "required when feedback is 'plastic'")
        if self.feedback != "plastic" and self.feedback_rule is not None:
            where.fail("feedback_rule", "only allowed with feedback: plastic")
        if self.feedback_rule is not None:
            check_rule(self.feedback_rule, "feedback_rule", len(self.network.layers) - 1, where)
        if self.feedback == "direct":
            where.fail("feedback", "meta-train supports sym, fixed and plastic feedback")


# Experiment kind -> schema. Other experiment modules register theirs here.
SCHEMAS: dict[str, type] = {"meta-train": MetaTrainRecipe}


# --------------------------------------------------------------------------- checks


class Where:
    """Names the recipe file in error messages."""

    def __init__(self, path: str | Path):
        self.path = str(path)

    def fail(self, key: str, message: str) -> typing.NoReturn:
        raise PlastError(f"{self.path}: key '{key}': {message}")


def check_dataset_network(dataset: DatasetSpec, network: NetworkSpec, where: Where) -> None:
    """Layer sizes must fit the data: input = image size, output >= number of classes."""
    n_in, n_classes, splits = DATASET_SHAPES[dataset.name]
    if dataset.split not in splits:
        where.fail("dataset.split", f"'{dataset.split}' not available for {dataset.name}; "
                   f"allowed: {', '.join(splits)}")
    layers = network.layers
    if len(layers) < 2:
        where.fail("network.layers", "need at least an input and an output size")
    if layers[0] != n_in:
        where.fail("network.layers", f"first size {layers[0]} must equal the input size {n_in} "
                   f"of {dataset.name}")
    if layers[-1] < n_classes:
        where.fail("network.layers", f"last size {layers[-1]} is smaller than the "
                   f"{n_classes} classes of {dataset.name}")


def check_rule(rule: RuleSpec, key: str, n_layers: int, where: Where) -> None:
    if not rule.terms:
        where.fail(f"{key}.terms", "must name at least one term")
    if len(set(rule.terms)) != len(rule.terms):
        where.fail(f"{key}.terms", "a term is named twice")
    for name in rule.init:
        if name not in rule.terms:
            where.fail(f"{key}.init.{name}", f"not among {key}.terms ({', '.join(rule.terms)})")
    if rule.layers is not None:
        if len(rule.layers) != n_layers:
            where.fail(f"{key}.layers", f"has {len(rule.layers)} entries; the network has "
                       f"{n_layers} weight layers")
        for i, names in enumerate(rule.layers):
            for name in names:
                if name not in rule.terms:
                    where.fail(f"{key}.layers[{i}]", f"term '{name}' not among {key}.terms")


# --------------------------------------------------------------------------- parsing


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_describe(typing.get_args(tp)[0])}"
    if origin is dict:
        return "mapping of name to number"
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
                if len(args) == 2:
                    raise
        where.fail(key, f"expected {_describe(tp)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            where.fail(key, f"expected a mapping, got {value!r}")
        return parse_dataclass(tp, value, where, prefix=key + ".")
    if origin is list:
        if not isinstance(value, list):
            where.fail(key, f"expected {_describe(tp)}, got {value!r}")
        (arg,) = typing.get_args(tp)
        return [_convert(v, arg, f"{key}[{i}]", md, where) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            where.fail(key, f"expected {_describe(tp)}, got {value!r}")
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
        value = float(value)
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
    except yaml.YAMLError as exc:
        raise PlastError(f"--set '{assignment}': value is not valid YAML ({exc})") from None
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            where.fail(key, f"'{part}' is not a mapping")
        node = child
    node[parts[-1]] = value


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = (),
                expected: str | None = None) -> Any:
    """Read, override and validate a recipe; return its schema dataclass.

    Raises PlastError (one line: file, key, allowed values) on any problem.
    """
    path = Path(path)
    where = Where(path)
    if not path.is_file():
        raise PlastError(f"{path}: recipe file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1})" if mark else ""
        raise PlastError(f"{path}: not valid YAML{at}") from None
    if not isinstance(raw, dict):
        raise PlastError(f"{path}: a recipe must be a YAML mapping")
    for assignment in overrides:
        apply_override(raw, assignment, where)
    kind = raw.get("experiment")
    if kind not in SCHEMAS:
        where.fail("experiment", f"{kind!r} is not an experiment; allowed: {', '.join(SCHEMAS)}")
    if expected is not None and kind != expected:
        where.fail("experiment", f"this recipe is for 'plast {kind}', not 'plast {expected}'")
    recipe = parse_dataclass(SCHEMAS[kind], raw, where)
    recipe.validate(where)
    return recipe


def recipe_to_yaml(recipe: Any) -> str:
    """The resolved recipe (defaults filled in) as YAML, for provenance."""
    return yaml.safe_dump(dataclasses.asdict(recipe), sort_keys=False)


def recipe_from_yaml(text: str, where: str = "<store>") -> Any:
    """Rebuild a recipe from the YAML stored in a result file."""
    raw = yaml.safe_load(text)
    w = Where(where)
    recipe = parse_dataclass(SCHEMAS[raw["experiment"]], raw, w)
    recipe.validate(w)
    return recipe
