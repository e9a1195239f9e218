"""The online recipe schemas (``baseline``, ``init-study``, ``rnn-memory``)."""

from pydantic import Field

from plastcli.core.vocabulary import (  # the names of the core layer; no torch there either
    INITS,
    RECURRENT_INITS,
    SIGMAS,
)
from plastcli.recipes.fields import (
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
from plastcli.recipes.meta import (
    DatasetSpec,
    NetworkSpec,
    PopulationSpec,
    RuleSpec,
    TermSpec,
    check_dataset_network,
    check_pool,
    check_rule,
    declared_terms,
)

# --------------------------------------------------------------------------- online (issue 3)

ONLINE_DATASETS = ("mnist", "fashion-mnist", "emnist-balanced")


class OnlineRunSpec(Schema):
    checkpoint_every: int = Field(1000, ge=1, description="samples (rnn-memory: sequences) "
                                  "between checkpoints of the population in training "
                                  "(--resume continues from the last)")
    device: choice(DEVICES) = Field("auto", description="auto: cuda when there is one")


class OnlineDatasetSpec(Schema):
    """Online data: the stream comes from the train split, validation curves from the test
    split, and grid-search selection from a held-out part of the train split."""

    name: choice(ONLINE_DATASETS) = Field("mnist", description="the data set streamed")


class ConditionSpec(Schema):
    """One learning rule of an online comparison: feedback path, terms and coefficient grid."""

    name: str = Field(description="label used in stores, tables and legends, e.g. 'BP+Oja'")
    feedback: choice(("sym", "fixed", "direct")) = Field(
        "sym", description="the backward path: sym (BP), fixed (FA) or direct (DFA)")
    terms: list[str] = Field(default_factory=lambda: ["pseudo_grad"],
                             description="the rule's terms, e.g. [pseudo_grad, oja] = BP+Oja: "
                             "built in, declared under define, or g_<a>_<b>[_<s>] grammar "
                             "terms")
    grid: dict[str, list[Number]] = Field(
        default_factory=dict, description="candidate values per term (every term needs a "
        "non-empty list); the grid is their Cartesian product. A single value per term means "
        "no search")


class OnlineSpec(Schema):
    samples: int = Field(5000, ge=1, description="online training samples per run")
    eval_every: int = Field(100, ge=1, description="evaluate every this many samples")
    val_size: int = Field(1000, ge=1, description="fixed validation subset of the TEST split")
    update_norm_samples: int = Field(16, ge=1, description="validation images used for the "
                                     "update norms")
    recon_images: int = Field(4, ge=1, description="validation images reconstructed at the "
                              "end")


class SelectionSpec(Schema):
    """Grid search: grid points x seeds trained on the stream, scored on a held-out part
    of the TRAIN split that the stream never shows (and that is not the validation set)."""

    heldout: int = Field(5000, ge=1, description="train-split images set aside for selection")
    seeds: int = Field(3, ge=1, description="seeds per grid point")
    seed: int = Field(1000, ge=0, description="first seed of the grid stage (distinct from "
                      "runs)")
    samples: int | None = Field(None, ge=1, description="online samples in the grid stage "
                                "(default: online.samples)")


class BaselineRecipe(Recipe):
    experiment: choice(("baseline",)) = Field("baseline", description=EXPERIMENT)
    name: str = Field("baseline", description=NAME)
    dataset: OnlineDatasetSpec = Field(default_factory=OnlineDatasetSpec)
    network: NetworkSpec = Field(
        default_factory=lambda: NetworkSpec(layers=[784, 170, 130, 100, 70, 10]))
    define: dict[Name, TermSpec] = Field(default_factory=dict, description="new terms by "
                                         "name, for the conditions' terms: F = sign · s · a "
                                         "bᵀ, as meta-train's rule.define")
    conditions: list[ConditionSpec] = Field(default_factory=list, description="the rules "
                                            "compared (at least one)")
    online: OnlineSpec = Field(default_factory=OnlineSpec)
    selection: SelectionSpec = Field(default_factory=SelectionSpec)
    population: PopulationSpec = Field(default_factory=lambda: PopulationSpec(seeds=20, seed=0))
    run: OnlineRunSpec = Field(default_factory=OnlineRunSpec)

    def check(self, where: Where) -> None:
        check_dataset_network(DatasetSpec(name=self.dataset.name, split="train"), self.network,
                              where)
        if not self.conditions:
            where.fail("conditions", "must list at least one condition")
        seen = set()
        defined = declared_terms([(self, "")], where)
        for i, c in enumerate(self.conditions):
            key = f"conditions[{i}]"
            if c.name in seen:
                where.fail(f"{key}.name", f"'{c.name}' is used twice")
            seen.add(c.name)
            check_rule(RuleSpec(terms=c.terms), f"{key}", len(self.network.layers) - 1, where,
                       defined, "define")
            for term in c.grid:
                if term not in c.terms:
                    where.fail(f"{key}.grid.{term}", f"not among {key}.terms "
                               f"({', '.join(c.terms)})")
            for term in c.terms:
                values = c.grid.get(term)
                if not values:
                    where.fail(f"{key}.grid.{term}", "needs a non-empty list of values "
                               "(one value: no search)")
        # one pool for the whole store: no two conditions' terms may compute the same thing
        check_pool([c.terms for c in self.conditions], defined, "conditions", where, "define")
        if self.online.update_norm_samples > self.online.val_size:
            where.fail("online.update_norm_samples", f"exceeds online.val_size "
                       f"({self.online.val_size})")
        if self.online.recon_images > self.online.val_size:
            where.fail("online.recon_images", f"exceeds online.val_size ({self.online.val_size})")


class InitStudyRecipe(BaselineRecipe):
    """A baseline whose conditions are each run with every initialiser in ``inits``
    (P2 Fig 5: naive N(0, 0.01^2) vs xavier); network.init is ignored."""

    experiment: choice(("init-study",)) = Field("init-study", description=EXPERIMENT)
    name: str = Field("init-study", description=NAME)
    inits: list[choice(INITS)] = Field(default_factory=lambda: ["naive", "xavier"],
                                       description="the initialisers each condition runs "
                                       "under")

    def check(self, where: Where) -> None:
        super().check(where)
        if not self.inits:
            where.fail("inits", f"must list at least one initialiser; allowed: {', '.join(INITS)}")
        if len(set(self.inits)) != len(self.inits):
            where.fail("inits", "an initialiser is named twice")


# --------------------------------------------------------------------------- rnn-memory (issue 5)


class RnnDatasetSpec(Schema):
    """Stream from the train split, selection from a held-out part of it, validation curves
    from a fixed subset of the test split (as in ``plast baseline``)."""

    name: choice(("mnist", "fashion-mnist")) = Field("mnist", description="the data set "
                                                     "streamed")


class RnnNetworkSpec(Schema):
    hidden: list[at_least(int, 1)] = Field(
        default_factory=lambda: [100], description="one or more hidden sizes; each is run "
        "(grid search included) as its own population")
    init: choice(INITS) = Field("xavier", description="initial weights: xavier or naive "
                                "N(0, 0.01^2)")
    beta: Number = Field(10.0, ge=1e-6, description="softplus sharpness")
    init_recurrent: choice(RECURRENT_INITS) = Field(
        "same", description="W_h alone (P2 Fig 7 factors): its initialisation ('same' = init)")
    gain: Number = Field(1.0, ge=0.0, description="a gain on W_h alone")
    sigma: choice(SIGMAS) = Field("softplus", description="softplus (with beta) or tanh (a "
                                  "reference; beta unused)")


class RnnTaskSpec(Schema):
    T: int = Field(50, ge=1, description="sequence length (classification at step T)")
    present: int = Field(5, ge=1, description="the image is the input at steps 1..present")


class RnnConditionSpec(Schema):
    """One learning rule: BPTT with coefficient grid ``bptt`` (theta_1) and Oja on W_h with
    grid ``oja`` (theta_2; [0.0] = plain BPTT). The grid is their Cartesian product.
    ``gain`` and ``init_recurrent`` set this condition's W_h (default: the network's), so
    that one run, one population, can vary them (the Fig 7 study's phase diagram)."""

    name: str = Field(description="label, e.g. 'BPTT+Oja'")
    bptt: list[at_least(Number, 0.0)] = Field(default_factory=lambda: [0.01],
                                              description="candidate values of theta_1, the "
                                              "BPTT coefficient")
    oja: list[at_least(Number, 0.0)] = Field(default_factory=lambda: [0.0],
                                             description="candidate values of theta_2, Oja's "
                                             "coefficient on W_h (0 = plain BPTT)")
    gain: at_least(Number, 0.0) | None = Field(None, description="gain on W_h (default: "
                                               "network.gain)")
    init_recurrent: choice(RECURRENT_INITS) | None = Field(
        None, description="W_h initialiser (default: network.init_recurrent)")


class RnnOnlineSpec(Schema):
    samples: int = Field(5000, ge=1, description="training sequences per run (one per update)")
    eval_every: int = Field(250, ge=1, description="evaluate every this many sequences")
    val_size: int = Field(1000, ge=1, description="fixed validation subset of the TEST split")


class RnnMemoryRecipe(Recipe):
    experiment: choice(("rnn-memory",)) = Field("rnn-memory", description=EXPERIMENT)
    name: str = Field("rnn-memory", description=NAME)
    dataset: RnnDatasetSpec = Field(default_factory=RnnDatasetSpec)
    network: RnnNetworkSpec = Field(default_factory=RnnNetworkSpec)
    task: RnnTaskSpec = Field(default_factory=RnnTaskSpec)
    oja_pre: choice(("z", "sigma")) = Field("z", description="Oja's presynaptic factor: 'z' = "
                                            "u_t z_t^T as P2 prints it; 'sigma' = "
                                            "u_t sigma(z_t)^T")
    conditions: list[RnnConditionSpec] = Field(default_factory=list, description="the "
                                               "rules compared (at least one)")
    online: RnnOnlineSpec = Field(default_factory=RnnOnlineSpec)
    selection: SelectionSpec = Field(default_factory=SelectionSpec)
    population: PopulationSpec = Field(default_factory=lambda: PopulationSpec(seeds=10, seed=0))
    run: OnlineRunSpec = Field(default_factory=OnlineRunSpec)

    def check(self, where: Where) -> None:
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
