"""Recipe schema, YAML loading, ``--set key=value`` overrides and validation.

A recipe is a YAML file describing one experiment. Each experiment kind has a
dataclass schema here; :func:`load_recipe` turns a file into that dataclass or
raises :class:`PlastError` with one line naming the file, the key and what is
allowed. Nothing here touches tensors.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from plastcli import terms as term_grammar
from plastcli.errors import PlastError
from plastcli.terms import TERM_NAMES  # the engine's names; plastcli.terms needs no torch
from plastcli.vocabulary import (  # the names of the core layer; no torch there either
    DATASETS,
    FEEDBACK_MODES,
    GRID_INIT_PREFIX,
    GRID_KEYS,
    INITS,
    RECURRENT_INITS,
    REGISTRY,
    SIGMAS,
)

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
class TermSpec:
    """A term declared by a recipe: ``F = sign · s · a bᵀ`` (plastcli/terms.py lists the
    allowed values; ASCII spellings such as ``1^T y_post`` are accepted)."""

    a: str | None = spec(None, doc="left factor: e_post, y_post or ones")
    b: str | None = spec(None, doc="right factor: y_pre, e_pre, ones or y_pre - M^T y_post")
    s: str = spec("1", doc="scalar: 1, 1^T y_post, y_post^T M e_pre or e_post^T M y_pre")
    sign: float = spec(1.0, doc="-1 or +1")


@dataclass
class RuleSpec:
    # Term names (built in, declared under `define`, or g_<a>_<b>[_<s>] grammar terms), or
    # 'grammar': every term of the grammar (plastcli/terms.py).
    terms: list[str] | str = spec(factory=lambda: ["pseudo_grad"])
    # Initial coefficient per term; terms not named start at 0.
    init: dict[str, float] = spec(factory=dict)
    # Optional per-layer restriction: one list of term names per layer (P1 Table 1).
    layers: list[list[str]] | None = spec(None)
    # New terms by name: {a, b, s, sign} in the grammar F = sign · s · a bᵀ.
    define: dict[str, TermSpec] = spec(factory=dict)


@dataclass
class MetaSpec:
    episodes: int = spec(500, minimum=1)
    lr: float = spec(1e-3, minimum=0.0)
    l1: float = spec(0.0, minimum=0.0)
    grad_clip: float | None = spec(None, minimum=0.0)
    sym_grad_through_feedback: bool = spec(False)
    # auto: the hand-written reverse pass (plastcli/adjoint.py) where it applies, else autograd
    gradient: str = spec("auto", choices=("auto", "autograd"))
    # subgradient: lambda*sign(theta) joins the gradient Adam normalises (the authors' code);
    # proximal [choice]: Adam steps on the CE alone, then soft-thresholds each coefficient by
    # lambda times its Adam step size, so a dropped term is exactly 0 instead of oscillating.
    l1_mode: str = spec("subgradient", choices=("subgradient", "proximal"))
    # Stabiliser (off unless named): project theta into [low, high] per term after every
    # step; null = unbounded on that side.
    bounds: dict[str, list[float | None]] = spec(factory=dict)
    # Cross-machine stand-in: multiply each member's initial theta by (1 + jitter * N(0,1)),
    # a draw keyed on the member's seed (0 = off).
    theta_jitter: float = spec(0.0, minimum=0.0)
    # Episodes above chance (ln M) after learning that flag a member as collapsed.
    collapse_window: int = spec(25, minimum=1)
    # ...or whose mean meta-accuracy over decline_window episodes falls more than
    # decline_drop below the best such mean it had reached (null: no decline rule).
    decline_window: int = spec(50, minimum=1)
    decline_drop: float | None = spec(0.2, minimum=0.0)
    # Stabiliser (off at 0): after a non-finite episode, roll the member back to its state
    # before its last step (theta and Adam moments), scale its lr by rollback_lr_factor and
    # go on; only the (rollback + 1)-th non-finite episode marks it diverged.
    rollback: int = spec(0, minimum=0)
    rollback_lr_factor: float = spec(0.5, minimum=0.0)


@dataclass
class PopulationSpec:
    seeds: int = spec(1, minimum=1)
    seed: int = spec(0, minimum=0)


@dataclass
class MetaPopulationSpec(PopulationSpec):
    # Members = every combination of the grid (in key order) x seeds; each grid point
    # sees the same seeds, hence the same tasks. Keys: meta.l1, meta.lr, rule.init.<term>.
    grid: dict[str, list[float]] = spec(factory=dict)


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
    population: MetaPopulationSpec = spec(factory=MetaPopulationSpec)
    run: RunSpec = spec(factory=RunSpec)

    def validate(self, where: Where) -> None:
        check_dataset_network(self.dataset, self.network, where)
        defined = declared_terms([(self.rule, "rule"), (self.feedback_rule, "feedback_rule")],
                                 where)
        check_rule(self.rule, "rule", len(self.network.layers) - 1, where, defined)
        check_meta(self.meta, self.rule, self.population.grid, where)
        check_grid(self.population.grid, self.rule, where)
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
            check_rule(self.feedback_rule, "feedback_rule", len(self.network.layers) - 1, where,
                       defined)
            check_pool([self.rule.terms, self.feedback_rule.terms], defined, "feedback_rule",
                       where)
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


def check_meta(meta: MetaSpec, rule: RuleSpec, grid: dict[str, list[float]],
               where: Where) -> None:
    """Bounds: two finite entries (or null), low <= high, for terms of the rule, holding
    every initial theta (the recipe's and the grid's); rollback_lr_factor in (0, 1]."""
    if not 0.0 < meta.rollback_lr_factor <= 1.0:
        where.fail("meta.rollback_lr_factor",
                   f"must be in (0, 1] (the factor on a member's lr after a rollback), "
                   f"got {meta.rollback_lr_factor}")
    for term, pair in meta.bounds.items():
        key = f"meta.bounds.{term}"
        if term not in rule.terms:
            where.fail(key, f"term '{term}' is not among rule.terms ({', '.join(rule.terms)})")
        if len(pair) != 2:
            where.fail(key, f"expected [low, high] (null for no bound), got {pair!r}")
        lo, hi = pair
        if any(v is not None and not math.isfinite(v) for v in pair):
            where.fail(key, f"bounds must be finite numbers or null, got {pair!r}")
        if lo is not None and hi is not None and lo > hi:
            where.fail(key, f"low {lo} is above high {hi}")
        starts = [(f"rule.init.{term}", rule.init.get(term, 0.0))]
        starts += [(f"population.grid.rule.init.{term}", v)
                   for v in grid.get(GRID_INIT_PREFIX + term, [])]
        for where_key, v in starts:
            if (lo is not None and v < lo) or (hi is not None and v > hi):
                where.fail(key, f"{where_key} = {v} lies outside [{lo}, {hi}]")


def check_grid(grid: dict[str, list[float]], rule: RuleSpec, where: Where) -> None:
    """population.grid keys name a meta-hyperparameter or an initial coefficient."""
    allowed = [*GRID_KEYS, *(GRID_INIT_PREFIX + t for t in rule.terms)]
    for key, values in grid.items():
        if key not in allowed:
            where.fail(f"population.grid.{key}", f"unknown key; allowed: {', '.join(allowed)}")
        if not values:
            where.fail(f"population.grid.{key}", "needs at least one value")
        if not all(math.isfinite(v) for v in values):
            where.fail(f"population.grid.{key}", f"values must be finite, got {values}")
        if len(set(values)) != len(values):
            where.fail(f"population.grid.{key}", f"a value is listed twice: {values}")
        if key in GRID_KEYS and min(values) < 0:
            where.fail(f"population.grid.{key}", f"values must be >= 0, got {min(values)}")


def declared_terms(rules: list[tuple[RuleSpec | None, str]], where: Where) -> dict:
    """The terms declared under ``<key>.define`` of the given rules (name -> Term); one
    name declared twice must mean the same term."""
    out: dict = {}
    for rule, key in rules:
        for name, ts in (rule.define if rule is not None else {}).items():
            try:
                term = term_grammar.declare(name, ts.a, ts.b, ts.s, ts.sign)
            except term_grammar.TermError as exc:
                where.fail(f"{key}.define.{name}" + (f".{exc.field}" if exc.field else ""),
                           str(exc))
            if name in out and out[name] != term:
                where.fail(f"{key}.define.{name}", "declared differently in rule.define")
            out[name] = term
    return out


def check_pool(term_lists: list[list[str]], defined: dict, key: str, where: Where) -> None:
    """No two terms of a run may compute the same thing."""
    try:
        term_grammar.make_pool([*(n for names in term_lists for n in names), *defined], defined)
    except term_grammar.TermError as exc:
        at = f"{key}.define.{exc.field}" if exc.field in defined else f"{key}.terms"
        where.fail(at, str(exc))


def check_rule(rule: RuleSpec, key: str, n_layers: int, where: Where,
               defined: dict | None = None) -> None:
    """Check a rule's terms (resolving ``terms: grammar`` to the grammar's term names)."""
    if defined is None:
        defined = declared_terms([(rule, key)], where)
    if isinstance(rule.terms, str):
        if rule.terms != term_grammar.GRAMMAR:
            where.fail(f"{key}.terms", f"'{rule.terms}' is not allowed; allowed: a list of "
                       f"term names, or '{term_grammar.GRAMMAR}' for every term of the grammar")
        rule.terms = term_grammar.grammar_names()
    if not rule.terms:
        where.fail(f"{key}.terms", "must name at least one term")
    for i, name in enumerate(rule.terms):
        if term_grammar.resolve(name, defined) is None:
            where.fail(f"{key}.terms[{i}]", f"'{name}' is not allowed; allowed: "
                       f"{', '.join([*TERM_NAMES, *defined])}, a term declared under "
                       f"{key}.define, or a grammar term g_<a>_<b>[_<s>]")
    if len(set(rule.terms)) != len(rule.terms):
        where.fail(f"{key}.terms", "a term is named twice")
    check_pool([rule.terms], defined, key, where)
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
        return f"mapping of name to {_describe(typing.get_args(tp)[1])}"
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


def read_recipe_yaml(path: Path) -> dict:
    """The recipe file's YAML mapping; PlastError if it is missing, a directory,
    unreadable, not UTF-8 text, not YAML or not a mapping."""
    if path.is_dir():
        raise PlastError(f"{path} is a directory, not a recipe file")
    if not path.is_file():
        raise PlastError(f"{path}: recipe file not found")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PlastError(f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at "
                         f"offset {exc.start}); save the recipe as UTF-8") from None
    except OSError as exc:
        raise PlastError(f"{path}: cannot read the recipe ({exc.strerror or exc})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1})" if mark else ""
        raise PlastError(f"{path}: not valid YAML{at}") from None
    except RecursionError:
        raise PlastError(f"{path}: not valid YAML (nested too deeply)") from None
    if not isinstance(raw, dict):
        raise PlastError(f"{path}: a recipe must be a YAML mapping")
    return raw


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = (),
                expected: str | None = None) -> Any:
    """Read, override and validate a recipe; return its schema dataclass.

    Raises PlastError (one line: file, key, allowed values) on any problem.
    """
    path = Path(path)
    where = Where(path)
    raw = read_recipe_yaml(path)
    for assignment in overrides:
        apply_override(raw, assignment, where)
    kind = raw.get("experiment")
    if not isinstance(kind, str) or kind not in SCHEMAS:
        where.fail("experiment", f"{kind!r} is not an experiment; allowed: {', '.join(SCHEMAS)}")
    if expected is not None and kind != expected:
        where.fail("experiment", f"this recipe is for 'plast {kind}', not 'plast {expected}'")
    recipe = parse_dataclass(SCHEMAS[kind], raw, where)
    recipe.validate(where)
    return recipe


def recipe_needs(recipes_dir: Path) -> dict[str, list[str]]:
    """Data file (relative path) -> the recipes under ``recipes_dir`` that read it.
    Meta-training recipes read their dataset's split; online ones its train and test."""
    needs: dict[str, list[str]] = {}
    for path in sorted(Path(recipes_dir).rglob("*.yaml")):
        try:
            recipe = load_recipe(path)
        except PlastError:
            continue
        name = recipe.dataset.name
        splits = [recipe.dataset.split] if hasattr(recipe.dataset, "split") else ["train", "test"]
        for split in splits:
            for rel in REGISTRY.get(name, {}).get(split, ()):
                needs.setdefault(rel, []).append(str(path))
    return needs


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


# --------------------------------------------------------------------------- ablate-layers


def layer_names(n_layers: int) -> list[str]:
    """P1 Table 1's names of the weight layers: W_l maps layer l-1 to l -> 'W01', 'W12', ..."""
    return [f"W{l - 1}{l}" for l in range(1, n_layers + 1)]


@dataclass
class AssignmentSpec:
    """One row of P1 Table 1: the layers that add ``ablation.added_terms`` to the base rule."""

    name: str = spec(doc="row label, e.g. 'W01+W12'")
    layers: list[str] = spec(factory=list, doc="layer names W01, W12, ... (empty: base only)")


@dataclass
class AblationSpec:
    # Terms of rule.terms that act only on an assignment's layers; the other terms of
    # rule.terms (the base rule) act on every layer.
    added_terms: list[str] = spec(factory=lambda: ["err_hebb"])
    assignments: list[AssignmentSpec] = spec(factory=list)
    # Angles are averaged over episodes burn_in..end (P1 Table 1: 100..500).
    burn_in: int = spec(100, minimum=0)


@dataclass
class AblateLayersRecipe(MetaTrainRecipe):
    """A meta-train recipe whose members are assignments x seeds (P1 Table 1).

    ``population.seeds`` is the number of seeds per assignment; every assignment reuses the
    same seeds, so all assignments see the same tasks and initial weights.
    """

    experiment: str = spec("ablate-layers", choices=("ablate-layers",))
    network: NetworkSpec = spec(factory=lambda: NetworkSpec(layers=[784, 130, 70, 47]))
    ablation: AblationSpec = spec(factory=AblationSpec)

    def validate(self, where: Where) -> None:
        super().validate(where)
        names = layer_names(len(self.network.layers) - 1)
        if self.rule.layers is not None:
            where.fail("rule.layers", "not allowed here: ablation.assignments sets the layers")
        if self.population.grid:
            where.fail("population.grid", "not allowed here: the members are ablation "
                       "assignments x seeds")
        for t in self.ablation.added_terms:
            if t not in self.rule.terms:
                where.fail("ablation.added_terms", f"term '{t}' not among rule.terms "
                           f"({', '.join(self.rule.terms)})")
        if not [t for t in self.rule.terms if t not in self.ablation.added_terms]:
            where.fail("ablation.added_terms", "leaves no base term acting on every layer")
        if not self.ablation.assignments:
            where.fail("ablation.assignments", "must list at least one assignment")
        seen = set()
        for i, a in enumerate(self.ablation.assignments):
            key = f"ablation.assignments[{i}]"
            if a.name in seen:
                where.fail(f"{key}.name", f"'{a.name}' is used twice")
            seen.add(a.name)
            for layer in a.layers:
                if layer not in names:
                    where.fail(f"{key}.layers", f"layer '{layer}' does not exist in this "
                               f"{len(names)}-layer network; allowed: {', '.join(names)}")
            if len(set(a.layers)) != len(a.layers):
                where.fail(f"{key}.layers", "a layer is named twice")
        if self.ablation.burn_in >= self.meta.episodes:
            where.fail("ablation.burn_in", f"{self.ablation.burn_in} leaves no episodes to "
                       f"average (meta.episodes = {self.meta.episodes})")


SCHEMAS["ablate-layers"] = AblateLayersRecipe


# --------------------------------------------------------------------------- online (issue 3)

ONLINE_DATASETS = ("mnist", "fashion-mnist", "emnist-balanced")


@dataclass
class OnlineDatasetSpec:
    """Online data: the stream comes from the train split, validation curves from the test
    split, and grid-search selection from a held-out part of the train split."""

    name: str = spec("mnist", choices=ONLINE_DATASETS)


@dataclass
class ConditionSpec:
    """One learning rule of an online comparison: feedback path, terms and coefficient grid."""

    name: str = spec(doc="label used in stores, tables and legends, e.g. 'BP+Oja'")
    feedback: str = spec("sym", choices=("sym", "fixed", "direct"))
    terms: list[str] = spec(factory=lambda: ["pseudo_grad"], choices=TERM_NAMES)
    # Candidate values per term (every term needs a non-empty list); the grid is their
    # Cartesian product. A single value per term means no search.
    grid: dict[str, list[float]] = spec(factory=dict, choices=TERM_NAMES)


@dataclass
class OnlineSpec:
    samples: int = spec(5000, minimum=1, doc="online training samples per run")
    eval_every: int = spec(100, minimum=1, doc="evaluate every this many samples")
    val_size: int = spec(1000, minimum=1, doc="fixed validation subset of the TEST split")
    update_norm_samples: int = spec(16, minimum=1,
                                    doc="validation images used for the update norms")
    recon_images: int = spec(4, minimum=1, doc="validation images reconstructed at the end")


@dataclass
class SelectionSpec:
    """Grid search: grid points x seeds trained on the stream, scored on a held-out part
    of the TRAIN split that the stream never shows (and that is not the validation set)."""

    heldout: int = spec(5000, minimum=1, doc="train-split images set aside for selection")
    seeds: int = spec(3, minimum=1)
    seed: int = spec(1000, minimum=0, doc="first seed of the grid stage (distinct from runs)")
    samples: int | None = spec(None, minimum=1, doc="online samples in the grid stage "
                               "(default: online.samples)")


@dataclass
class BaselineRecipe:
    experiment: str = spec("baseline", choices=("baseline",))
    name: str = spec("baseline")
    paper: int | None = spec(None)
    description: str = spec("")
    dataset: OnlineDatasetSpec = spec(factory=OnlineDatasetSpec)
    network: NetworkSpec = spec(factory=lambda: NetworkSpec(layers=[784, 170, 130, 100, 70, 10]))
    conditions: list[ConditionSpec] = spec(factory=list)
    online: OnlineSpec = spec(factory=OnlineSpec)
    selection: SelectionSpec = spec(factory=SelectionSpec)
    population: PopulationSpec = spec(factory=lambda: PopulationSpec(seeds=20, seed=0))
    run: RunSpec = spec(factory=RunSpec)

    def validate(self, where: Where) -> None:
        check_dataset_network(DatasetSpec(name=self.dataset.name, split="train"), self.network,
                              where)
        if not self.conditions:
            where.fail("conditions", "must list at least one condition")
        seen = set()
        for i, c in enumerate(self.conditions):
            key = f"conditions[{i}]"
            if c.name in seen:
                where.fail(f"{key}.name", f"'{c.name}' is used twice")
            seen.add(c.name)
            check_rule(RuleSpec(terms=c.terms), f"{key}", len(self.network.layers) - 1, where)
            for term in c.grid:
                if term not in c.terms:
                    where.fail(f"{key}.grid.{term}", f"not among {key}.terms "
                               f"({', '.join(c.terms)})")
            for term in c.terms:
                values = c.grid.get(term)
                if not values:
                    where.fail(f"{key}.grid.{term}", "needs a non-empty list of values "
                               "(one value: no search)")
        if self.online.update_norm_samples > self.online.val_size:
            where.fail("online.update_norm_samples", f"exceeds online.val_size "
                       f"({self.online.val_size})")
        if self.online.recon_images > self.online.val_size:
            where.fail("online.recon_images", f"exceeds online.val_size ({self.online.val_size})")


SCHEMAS["baseline"] = BaselineRecipe


@dataclass
class InitStudyRecipe(BaselineRecipe):
    """A baseline whose conditions are each run with every initialiser in ``inits``
    (P2 Fig 5: naive N(0, 0.01^2) vs xavier); network.init is ignored."""

    experiment: str = spec("init-study", choices=("init-study",))
    inits: list[str] = spec(factory=lambda: ["naive", "xavier"], choices=INITS)

    def validate(self, where: Where) -> None:
        super().validate(where)
        if not self.inits:
            where.fail("inits", f"must list at least one initialiser; allowed: {', '.join(INITS)}")
        if len(set(self.inits)) != len(self.inits):
            where.fail("inits", "an initialiser is named twice")


SCHEMAS["init-study"] = InitStudyRecipe


# --------------------------------------------------------------------------- rnn-memory (issue 5)


@dataclass
class RnnDatasetSpec:
    """Stream from the train split, selection from a held-out part of it, validation curves
    from a fixed subset of the test split (as in ``plast baseline``)."""

    name: str = spec("mnist", choices=("mnist", "fashion-mnist"))


@dataclass
class RnnNetworkSpec:
    # One or more hidden sizes; each is run (grid search included) as its own population.
    hidden: list[int] = spec(factory=lambda: [100], minimum=1)
    init: str = spec("xavier", choices=INITS)
    beta: float = spec(10.0, minimum=1e-6)
    # W_h alone (P2 Fig 7 factors): its initialisation ('same' = init) and a gain on it
    init_recurrent: str = spec("same", choices=RECURRENT_INITS)
    gain: float = spec(1.0, minimum=0.0)
    # softplus (with beta) or tanh (a reference; beta unused)
    sigma: str = spec("softplus", choices=SIGMAS)


@dataclass
class RnnTaskSpec:
    T: int = spec(50, minimum=1, doc="sequence length (classification at step T)")
    present: int = spec(5, minimum=1, doc="the image is the input at steps 1..present")


@dataclass
class RnnConditionSpec:
    """One learning rule: BPTT with coefficient grid ``bptt`` (theta_1) and Oja on W_h with
    grid ``oja`` (theta_2; [0.0] = plain BPTT). The grid is their Cartesian product."""

    name: str = spec(doc="label, e.g. 'BPTT+Oja'")
    bptt: list[float] = spec(factory=lambda: [0.01], minimum=0.0)
    oja: list[float] = spec(factory=lambda: [0.0], minimum=0.0)


@dataclass
class RnnOnlineSpec:
    samples: int = spec(5000, minimum=1, doc="training sequences per run (one per update)")
    eval_every: int = spec(250, minimum=1, doc="evaluate every this many sequences")
    val_size: int = spec(1000, minimum=1, doc="fixed validation subset of the TEST split")


@dataclass
class RnnMemoryRecipe:
    experiment: str = spec("rnn-memory", choices=("rnn-memory",))
    name: str = spec("rnn-memory")
    paper: int | None = spec(None)
    description: str = spec("")
    dataset: RnnDatasetSpec = spec(factory=RnnDatasetSpec)
    network: RnnNetworkSpec = spec(factory=RnnNetworkSpec)
    task: RnnTaskSpec = spec(factory=RnnTaskSpec)
    # Oja's presynaptic factor: 'z' = u_t z_t^T as P2 prints it; 'sigma' = u_t sigma(z_t)^T.
    oja_pre: str = spec("z", choices=("z", "sigma"))
    conditions: list[RnnConditionSpec] = spec(factory=list)
    online: RnnOnlineSpec = spec(factory=RnnOnlineSpec)
    selection: SelectionSpec = spec(factory=SelectionSpec)
    population: PopulationSpec = spec(factory=lambda: PopulationSpec(seeds=10, seed=0))
    run: RunSpec = spec(factory=RunSpec)

    def validate(self, where: Where) -> None:
        if self.task.T < self.task.present:
            where.fail("task.T", f"T = {self.task.T} is shorter than the presentation length "
                       f"task.present = {self.task.present}; need T >= present")
        if not self.network.hidden:
            where.fail("network.hidden", "must list at least one hidden size")
        if len(set(self.network.hidden)) != len(self.network.hidden):
            where.fail("network.hidden", "a hidden size is listed twice")
        if not self.conditions:
            where.fail("conditions", "must list at least one condition")
        seen = set()
        for i, c in enumerate(self.conditions):
            if c.name in seen:
                where.fail(f"conditions[{i}].name", f"'{c.name}' is used twice")
            seen.add(c.name)
            for key in ("bptt", "oja"):
                if not getattr(c, key):
                    where.fail(f"conditions[{i}].{key}", "needs a non-empty list of values "
                               "(one value: no search)")


SCHEMAS["rnn-memory"] = RnnMemoryRecipe
