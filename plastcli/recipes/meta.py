"""The meta-training recipe schemas (``meta-train``, ``ablate-layers``) and their
cross-field checks: layer sizes against the data set, the rule and pool, the meta
settings and the population grid."""

import math

from pydantic import Field

from plastcli.core import terms as term_grammar
from plastcli.core.terms import TERM_NAMES  # the engine's names; plastcli.core.terms needs no torch
from plastcli.core.vocabulary import (  # the names of the core layer; no torch there either
    FEEDBACK_MODES,
    GRID_INIT_PREFIX,
    GRID_KEYS,
    INITS,
)
from plastcli.recipes.fields import (
    DATASET_SHAPES,
    DEVICES,
    EXPERIMENT,
    NAME,
    Name,
    Number,
    Recipe,
    Schema,
    Where,
    at_least,
    choice,
)

# --------------------------------------------------------------------------- schema


class DatasetSpec(Schema):
    name: choice(DATASET_SHAPES) = Field("emnist-bymerge", description="the data set tasks "
                                         "are drawn from")
    split: choice(("train", "test")) = Field("test", description="its split (emnist-bymerge "
                                             "and -byclass: test only)")
    per_class_cap: int | None = Field(400, ge=1, description="a fixed, seeded subset of at "
                                      "most this many images per class (null: all)")
    cap_seed: int = Field(0, ge=0, description="seed of that subset")


class TaskSpec(Schema):
    classes: int = Field(5, ge=2, description="classes per episode (M-way)")
    train_per_class: int = Field(50, ge=1, description="images per class the rule learns "
                                 "from, one at a time")
    query_per_class: int = Field(10, ge=1, description="images per class the meta-loss is "
                                 "measured on")


class NetworkSpec(Schema):
    layers: list[at_least(int, 1)] = Field(
        default_factory=lambda: [784, 170, 130, 100, 70, 47], description="layer sizes, "
        "input first (the image size) and output last (at least the classes)")
    init: choice(INITS) = Field("xavier", description="initial weights: xavier U(-a, a), "
                                "a = sqrt(6 / (n_in + n_out)), or naive N(0, 0.01^2)")
    beta: Number = Field(10.0, ge=1e-6, description="softplus sharpness: "
                         "log(1 + exp(beta z)) / beta")


class TermSpec(Schema):
    """A term declared by a recipe: ``F = sign · s · a bᵀ`` (plastcli/core/terms.py lists the
    allowed values; ASCII spellings such as ``1^T y_post`` are accepted)."""

    a: str | None = Field(None, description="left factor: e_post, y_post or ones")
    b: str | None = Field(None, description="right factor: y_pre, e_pre, ones or "
                          "y_pre - M^T y_post")
    s: str = Field("1", description="scalar: 1, 1^T y_post, y_post^T M e_pre or "
                   "e_post^T M y_pre")
    sign: Number = Field(1.0, description="-1 or +1")


class RuleSpec(Schema):
    terms: list[str] | str = Field(
        default_factory=lambda: ["pseudo_grad"],
        description="term names (built in, declared under define, or g_<a>_<b>[_<s>] grammar "
        "terms), or 'grammar': every term of the grammar (plastcli/core/terms.py)")
    init: dict[Name, Number] = Field(default_factory=dict, description="initial coefficient "
                                     "per term; terms not named start at 0")
    layers: list[list[str]] | None = Field(None, description="optional per-layer restriction: "
                                           "one list of term names per layer (P1 Table 1)")
    define: dict[Name, TermSpec] = Field(default_factory=dict, description="new terms by "
                                         "name: {a, b, s, sign} in the grammar "
                                         "F = sign · s · a bᵀ")


class MetaSpec(Schema):
    episodes: int = Field(500, ge=1, description="meta-training episodes (one task each)")
    lr: Number = Field(1e-3, ge=0.0, description="Adam's learning rate on the coefficients")
    l1: Number = Field(0.0, ge=0.0, description="L1 penalty lambda on the coefficients "
                       "(the pool search; see l1_mode)")
    grad_clip: at_least(Number, 0.0) | None = Field(None, description="clip each member's "
                                                    "meta-gradient to this norm (null: no "
                                                    "clipping)")
    sym_grad_through_feedback: bool = Field(False, description="with sym feedback (B = W^T): "
                                            "let the meta-gradient flow through B too")
    gradient: choice(("auto", "autograd")) = Field(
        "auto", description="auto: the hand-written reverse pass (plastcli/engine/adjoint.py) "
        "where it applies, else autograd")
    l1_mode: choice(("subgradient", "proximal")) = Field(
        "subgradient", description="subgradient: lambda*sign(theta) joins the gradient Adam "
        "normalises (the authors' code); proximal: Adam steps on the CE alone, then "
        "soft-thresholds each coefficient by lambda times its Adam step size, so a dropped "
        "term is exactly 0 instead of oscillating")
    bounds: dict[Name, list[Number | None]] = Field(
        default_factory=dict, description="stabiliser (off unless named): project theta into "
        "[low, high] per term after every step; null = unbounded on that side")
    theta_jitter: Number = Field(0.0, ge=0.0, description="cross-machine stand-in: multiply "
                                 "each member's initial theta by (1 + jitter * N(0,1)), a "
                                 "draw keyed on the member's seed (0 = off)")
    collapse_window: int = Field(25, ge=1, description="episodes above chance (ln M) after "
                                 "learning that flag a member as collapsed")
    decline_window: int = Field(50, ge=1, description="...or whose mean meta-accuracy over "
                                "decline_window episodes falls more than decline_drop below "
                                "the best such mean it had reached")
    decline_drop: at_least(Number, 0.0) | None = Field(0.2, description="see decline_window "
                                                       "(null: no decline rule)")
    rollback: int = Field(0, ge=0, description="stabiliser (off at 0): after a non-finite "
                          "episode, roll the member back to its state before its last step "
                          "(theta and Adam moments), scale its lr by rollback_lr_factor and go "
                          "on; only the (rollback + 1)-th non-finite episode marks it diverged")
    rollback_lr_factor: Number = Field(0.5, gt=0.0, le=1.0, description="factor on a member's lr "
                                       "after each rollback, in (0, 1]")


class PopulationSpec(Schema):
    seeds: int = Field(1, ge=1, description="members (runs), each with its own seed")
    seed: int = Field(0, ge=0, description="first seed; the members take seed, seed + 1, ...")


class MetaPopulationSpec(PopulationSpec):
    grid: dict[Name, list[Number]] = Field(
        default_factory=dict, description="members = every combination of the grid (in key "
        "order) x seeds; each grid point sees the same seeds, hence the same tasks. Keys: "
        "meta.l1, meta.lr, rule.init.<term>")


class RunSpec(Schema):
    checkpoint_every: int = Field(25, ge=1, description="episodes between checkpoints "
                                  "(--resume continues from the last)")
    device: choice(DEVICES) = Field("auto", description="auto: cuda when there is one")


class MetaTrainRecipe(Recipe):
    experiment: choice(("meta-train",)) = Field("meta-train", description=EXPERIMENT)
    name: str = Field("meta-train", description=NAME)
    dataset: DatasetSpec = Field(default_factory=DatasetSpec)
    task: TaskSpec = Field(default_factory=TaskSpec)
    network: NetworkSpec = Field(default_factory=NetworkSpec)
    feedback: choice(FEEDBACK_MODES) = Field(
        "fixed", description="the backward path: sym (B = W^T, backprop), fixed (random B, "
        "FA), direct (DFA; not for meta-train) or plastic (B learns by feedback_rule)")
    rule: RuleSpec = Field(default_factory=RuleSpec)
    feedback_rule: RuleSpec | None = Field(None, description="the rule of the feedback "
                                           "matrices (with feedback: plastic; its keys as "
                                           "rule's)")
    meta: MetaSpec = Field(default_factory=MetaSpec)
    population: MetaPopulationSpec = Field(default_factory=MetaPopulationSpec)
    run: RunSpec = Field(default_factory=RunSpec)

    def check(self, where: Where) -> None:
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
    every initial theta (the recipe's and the grid's)."""
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
        at = f"{key}.define" if key else "define"  # key '': a recipe's top-level define
        for name, ts in (rule.define if rule is not None else {}).items():
            try:
                term = term_grammar.declare(name, ts.a, ts.b, ts.s, ts.sign)
            except term_grammar.TermError as exc:
                where.fail(f"{at}.{name}" + (f".{exc.field}" if exc.field else ""), str(exc))
            if name in out and out[name] != term:
                where.fail(f"{at}.{name}", "declared differently in rule.define")
            out[name] = term
    return out


def check_pool(term_lists: list[list[str]], defined: dict, key: str, where: Where,
               define_key: str | None = None) -> None:
    """No two terms of a run may compute the same thing."""
    try:
        term_grammar.make_pool([*(n for names in term_lists for n in names), *defined], defined)
    except term_grammar.TermError as exc:
        at = (f"{define_key or key + '.define'}.{exc.field}" if exc.field in defined
              else f"{key}.terms")
        where.fail(at, str(exc))


def check_rule(rule: RuleSpec, key: str, n_layers: int, where: Where,
               defined: dict | None = None, define_key: str | None = None) -> None:
    """Check a rule's terms (resolving ``terms: grammar`` to the grammar's term names);
    ``define_key``: where its declared terms are (default ``<key>.define``)."""
    define_key = define_key or f"{key}.define"
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
                       f"{define_key}, or a grammar term g_<a>_<b>[_<s>]")
    if len(set(rule.terms)) != len(rule.terms):
        where.fail(f"{key}.terms", "a term is named twice")
    check_pool([rule.terms], defined, key, where, define_key)
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


class AssignmentSpec(Schema):
    """One row of P1 Table 1: the layers that add ``ablation.added_terms`` to the base rule."""

    name: str = Field(description="row label, e.g. 'W01+W12'")
    layers: list[str] = Field(default_factory=list, description="layer names W01, W12, ... "
                              "(empty: base only)")


class AblationSpec(Schema):
    added_terms: list[str] = Field(
        default_factory=lambda: ["err_hebb"], description="terms of rule.terms that act only "
        "on an assignment's layers; the other terms of rule.terms (the base rule) act on "
        "every layer")
    assignments: list[AssignmentSpec] = Field(default_factory=list, description="the rows "
                                              "of the table (at least one)")
    burn_in: int = Field(100, ge=0, description="angles are averaged over episodes "
                         "burn_in..end (P1 Table 1: 100..500)")


class AblateLayersRecipe(MetaTrainRecipe):
    """A meta-train recipe whose members are assignments x seeds (P1 Table 1).

    ``population.seeds`` is the number of seeds per assignment; every assignment reuses the
    same seeds, so all assignments see the same tasks and initial weights.
    """

    experiment: choice(("ablate-layers",)) = Field("ablate-layers", description=EXPERIMENT)
    name: str = Field("ablate-layers", description=NAME)
    network: NetworkSpec = Field(default_factory=lambda: NetworkSpec(layers=[784, 130, 70, 47]))
    ablation: AblationSpec = Field(default_factory=AblationSpec)

    def check(self, where: Where) -> None:
        super().check(where)
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
