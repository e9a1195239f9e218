"""``plast ablate-layers``: per-layer rule assignments (P1 Table 1) on top of meta-train.

Every assignment x seed is one member of a single meta-training population; the
assignment only changes the member's per-layer term mask ``[L, R]`` (SPEC §3.2).
Members are laid out assignment-major: member ``a * S + s`` runs assignment ``a``
with seed ``population.seed + s``, so every assignment sees the same tasks and
initial weights. The table itself is :mod:`plastcli.results.tables` (pure numpy on a read
store): this command, the CLI and ``plast figures`` all call it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from plastcli.core.terms import recipe_pool
from plastcli.lock import store_lock
from plastcli.paths import check_store_out
from plastcli.progress import Reporter
from plastcli.recipes import AblateLayersRecipe, layer_names
from plastcli.results.store import read_store, text_array
from plastcli.results.tables import table1_rows, write_table_files

# --------------------------------------------------------------------------- members


def assignment_layers(recipe: AblateLayersRecipe) -> np.ndarray:
    """``[A, L]`` bool: does assignment a add ``ablation.added_terms`` to layer l+1?"""
    names = layer_names(len(recipe.network.layers) - 1)
    rows = [[n in a.layers for n in names] for a in recipe.ablation.assignments]
    return np.array(rows, dtype=bool).reshape(len(rows), len(names))


def assignment_masks(recipe: AblateLayersRecipe) -> np.ndarray:
    """``[A, L, R]`` 0/1 pool masks: base terms on every layer, added terms where assigned."""
    pool = recipe_pool(recipe).index  # the built-in terms, then any the recipe declares
    added = assignment_layers(recipe)
    A, L = added.shape
    masks = np.zeros((A, L, len(pool)), dtype=np.float32)
    for t in recipe.rule.terms:
        if t in recipe.ablation.added_terms:
            masks[:, :, pool[t]] = added
        else:
            masks[:, :, pool[t]] = 1.0
    return masks


def member_layout(recipe: AblateLayersRecipe) -> tuple[np.ndarray, list[int]]:
    """(assignment index per member ``[P]``, seed per member), P = A * seeds."""
    A, S = len(recipe.ablation.assignments), recipe.population.seeds
    seeds = [recipe.population.seed + s for _ in range(A) for s in range(S)]
    return np.repeat(np.arange(A), S), seeds


@dataclass
class AblateResult:
    out: Path
    table: list[dict]
    diverged: list[str]
    files: list[Path]


def run(recipe: AblateLayersRecipe, out: Path, *, resume: bool = False, overwrite: bool = False,
        data_dir=None, device: str | None = None, reporter: Reporter | None = None
        ) -> AblateResult:
    """Meta-train all assignments x seeds as one population; write the store and table files."""
    from plastcli.experiments import meta_train

    index, seeds = member_layout(recipe)
    masks = assignment_masks(recipe)[index]  # [P, L, R]
    names = [a.name for a in recipe.ablation.assignments]
    attrs = {"assignment_names": names,
             "layer_names": layer_names(len(recipe.network.layers) - 1),
             "added_terms": list(recipe.ablation.added_terms),
             "base_terms": [t for t in recipe.rule.terms if t not in recipe.ablation.added_terms],
             "burn_in": recipe.ablation.burn_in}
    out = check_store_out(out)
    with store_lock(out):  # one writer across the meta-training run and the writes after it
        # the assignment arrays go in with the seeds: the store is complete only with them
        res = meta_train.run(recipe, out, resume=resume, overwrite=overwrite,
                             data_dir=data_dir, device=device, reporter=reporter,
                             member_masks=masks, extra_attrs=attrs, seeds=seeds,
                             member_arrays={
                                 "assignment": text_array(names[a] for a in index),
                                 "assignment_index": index,
                                 "added_layers": assignment_layers(recipe)[index],  # [P, L]
                                 "mask": masks})
        store = read_store(out)
        rows = table1_rows(store)
        files = write_table_files(store, out.parent)
    return AblateResult(out, rows, res.messages, files)
