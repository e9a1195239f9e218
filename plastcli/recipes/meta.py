"""The meta-training recipe schemas (``meta-train``, ``ablate-layers``) and their
cross-field checks: layer sizes against the data set, the rule and pool, the meta
settings and the population grid."""

from __future__ import annotations

import math
from dataclasses import dataclass

from plastcli.core import terms as term_grammar
from plastcli.core.terms import TERM_NAMES  # the engine's names; plastcli.core.terms needs no torch
from plastcli.core.vocabulary import (  # the names of the core layer; no torch there either
    FEEDBACK_MODES,
    GRID_INIT_PREFIX,
    GRID_KEYS,
    INITS,
)
from plastcli.recipes.fields import DATASET_SHAPES, DEVICES, Where, spec

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
    """A term declared by a recipe: ``F = sign · s · a bᵀ`` (plastcli/core/terms.py lists the
    allowed values; ASCII spellings such as ``1^T y_post`` are accepted)."""

    a: str | None = spec(None, doc="left factor: e_post, y_post or ones")
    b: str | None = spec(None, doc="right factor: y_pre, e_pre, ones or y_pre - M^T y_post")
    s: str = spec("1", doc="scalar: 1, 1^T y_post, y_post^T M e_pre or e_post^T M y_pre")
    sign: float = spec(1.0, doc="-1 or +1")


@dataclass
class RuleSpec:
    # Term names (built in, declared under `define`, or g_<a>_<b>[_<s>] grammar terms), or
    # 'grammar': every term of the grammar (plastcli/core/terms.py).
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
    # auto: the hand-written reverse pass (plastcli/engine/adjoint.py) where it applies,
    # else autograd
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


# --------------------------------------------------------------------------- checks


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


