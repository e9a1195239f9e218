"""The online recipe schemas (``baseline``, ``init-study``, ``rnn-memory``)."""

from __future__ import annotations

from dataclasses import dataclass

from plastcli.core.terms import TERM_NAMES  # the engine's names; plastcli.core.terms needs no torch
from plastcli.core.vocabulary import (  # the names of the core layer; no torch there either
    INITS,
    RECURRENT_INITS,
    SIGMAS,
)
from plastcli.recipes.fields import DEVICES, Where, spec
from plastcli.recipes.meta import (
    DatasetSpec,
    NetworkSpec,
    PopulationSpec,
    RuleSpec,
    check_dataset_network,
    check_rule,
)

# --------------------------------------------------------------------------- online (issue 3)

ONLINE_DATASETS = ("mnist", "fashion-mnist", "emnist-balanced")


@dataclass
class OnlineRunSpec:
    checkpoint_every: int = spec(1000, minimum=1, doc="samples (rnn-memory: sequences) "
                                 "between checkpoints of the population in training "
                                 "(--resume continues from the last)")
    device: str = spec("auto", choices=DEVICES)


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
    run: OnlineRunSpec = spec(factory=OnlineRunSpec)

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
    # W_h factors of this condition's members (default: network's), so that one run, one
    # population, can vary them (the Fig 7 study's phase diagram over the gain)
    gain: float | None = spec(None, minimum=0.0, doc="gain on W_h (default: network.gain)")
    init_recurrent: str | None = spec(None, choices=RECURRENT_INITS,
                                      doc="W_h initialiser (default: network.init_recurrent)")


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
    run: OnlineRunSpec = spec(factory=OnlineRunSpec)

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


