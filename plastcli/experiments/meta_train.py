"""``plast meta-train``: recipe -> MetaTrainer -> store (SPEC §4)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from plastcli import signals
from plastcli.core.terms import recipe_pool
from plastcli.core.vocabulary import grid_dataset_name
from plastcli.data import TaskSampler
from plastcli.engine import fused
from plastcli.engine.meta import MetaConfig, MetaTrainer
from plastcli.errors import PlastError
from plastcli.experiments.common import (
    finish,
    load_recipe_dataset,
    machine_attrs,
    mark_failed,
    member_seeds,
    open_run,
)
from plastcli.progress import Reporter
from plastcli.recipes import MetaTrainRecipe
from plastcli.results.collapse import LOSS, replay
from plastcli.results.statistics import final_window, finite_mean


@dataclass
class MetaTrainResult:
    """What the CLI prints at the end."""

    out: Path
    seeds: list[int]
    episodes: int
    final: dict[str, np.ndarray]  # metric -> [P], statistics.final_window (last 50 finite)
    theta: np.ndarray  # [P, R] final coefficients
    terms: list[str]
    diverged_at: np.ndarray  # [P], -1 = never
    collapsed_at: np.ndarray  # [P], -1 = never (plastcli/results/collapse.py)
    grid: dict[str, np.ndarray] = field(default_factory=dict)  # population.grid key -> [P]
    messages: list[str] = field(default_factory=list)


def grid_members(recipe: MetaTrainRecipe) -> tuple[list[int], dict[str, np.ndarray]]:
    """Member seeds ``[P]`` and per-member grid values ``{key: [P]}``.

    Members are grid points (every combination, keys in sorted order, so that a recipe
    listing them in another order lays out the same members) x seeds, seed fastest:
    member ``g * S + s`` is grid point g with seed ``population.seed + s``.
    Without a grid: the seeds alone and ``{}``.
    """
    seeds = member_seeds(recipe)
    grid = {k: recipe.population.grid[k] for k in sorted(recipe.population.grid)}
    if not grid:
        return seeds, {}
    points = list(itertools.product(*grid.values()))
    values = {k: np.array([p[j] for p in points for _ in seeds], dtype=np.float64)
              for j, k in enumerate(grid)}
    return seeds * len(points), values


def grid_label(grid: dict[str, np.ndarray], i: int) -> str:
    """', l1=0.1, init_oja=0.001' for member i of a gridded run ('' without a grid)."""
    return "".join(f", {grid_dataset_name(k)}={v[i]:g}" for k, v in grid.items())


# checkpoint arrays older stores may lack (collapse detection and its decline rule came later)
OPTIONAL_IN_CHECKPOINT = ("collapse_learned", "collapse_below", "collapse_run_start",
                          "collapsed_at", "collapse_reason", "decline_recent", "decline_best")


def check_checkpoint(saved: dict[str, np.ndarray], fresh: dict[str, np.ndarray],
                     out: Path) -> None:
    """A checkpoint must hold this run's state, array by array as the trainer would write
    it now (shapes; keys added since, such as the collapse rule's, may be missing); else
    one line, before anything is loaded."""
    for key, want in fresh.items():
        if key in saved and np.shape(saved[key]) != np.shape(want):
            raise PlastError(f"--resume: {out}: its checkpoint does not fit this run "
                             f"(checkpoint/{key} has shape {np.shape(saved[key])}, this run's "
                             f"{np.shape(want)}); run without --resume (--overwrite replaces "
                             "the store)")
    missing = [k for k in fresh if k not in saved and k not in OPTIONAL_IN_CHECKPOINT]
    if missing:
        raise PlastError(f"--resume: {out}: its checkpoint lacks {', '.join(missing)}; run "
                         "without --resume (--overwrite replaces the store)")


def term_declarations(recipe: MetaTrainRecipe) -> dict[str, list[dict]]:
    """The declarations (a, b, s, sign; plastcli.core.terms) of the rule's terms, stored next
    to their names."""
    pool = recipe_pool(recipe)
    fb = recipe.feedback_rule.terms if recipe.feedback_rule else []
    return {"term_declarations": [pool.decl(n).to_dict() for n in recipe.rule.terms],
            "feedback_term_declarations": [pool.decl(n).to_dict() for n in fb]}


def run(recipe: MetaTrainRecipe, out: Path, *, resume: bool = False, overwrite: bool = False,
        data_dir=None, device: str | None = None, reporter: Reporter | None = None,
        member_masks: np.ndarray | None = None, extra_attrs: dict | None = None,
        seeds: list[int] | None = None,
        member_arrays: dict[str, np.ndarray] | None = None) -> MetaTrainResult:
    """Meta-train every member of the recipe's population, writing ``out`` as it goes.

    ``member_masks`` ``[P, L, R]`` overrides the per-layer term mask per member (used by
    ablate-layers); its P must match the number of member seeds. ``seeds`` overrides the
    member seeds (default population.seed + 0..seeds-1); ablate-layers repeats the same seeds
    for every assignment, so all assignments see the same tasks and initial weights.
    ``member_arrays`` (each ``[P, ...]``) are written under ``/members`` with the seeds, so
    the store is never complete without them.
    """
    reporter = reporter or Reporter()
    data = load_recipe_dataset(recipe.dataset, data_dir)
    grid: dict[str, np.ndarray] = {}
    if seeds is None:
        seeds, grid = grid_members(recipe)
    seeds = list(seeds)
    # every check (here: enough images per class) before the store exists
    sampler = TaskSampler(data, recipe.task.classes, recipe.task.train_per_class,
                          recipe.task.query_per_class, recipe.dataset.per_class_cap,
                          recipe.dataset.cap_seed)
    r = open_run(recipe, out, [data], resume=resume, overwrite=overwrite, device_name=device,
                 extra_attrs={"term_names": recipe.rule.terms,
                              "feedback_term_names": recipe.feedback_rule.terms
                              if recipe.feedback_rule else [],
                              **term_declarations(recipe),
                              "seeds": seeds, "grid_keys": list(grid),
                              **(extra_attrs or {})},
                 may_grow=("meta.episodes",))
    torch.manual_seed(0)  # nothing should draw from the global RNG; make sure it is fixed
    cfg = MetaConfig.from_recipe(recipe, len(seeds), grid)
    if member_masks is not None:
        cfg.mask = torch.as_tensor(member_masks, dtype=torch.float32)
    trainer = MetaTrainer(cfg, sampler, seeds, r.device)
    if trainer.engine == "fused" and trainer.threads < torch.get_num_threads():
        # torch's own threads (sampling, Adam, diagnostics) would wait for busy cores too
        torch.set_num_threads(trainer.threads)
    # The engine and how it shares the population (plastcli/engine/parallel.py): the fused
    # kernel's threads do not change a member's numbers; on the reference path the process
    # split and torch's threads decide float rounding. On resume: the machine that wrote
    # the rest.
    r.store.set_attrs(engine=trainer.engine, engine_threads=trainer.threads,
                      engine_build=(fused.build_id() or "") if trainer.engine == "fused" else "",
                      torch_threads=torch.get_num_threads(), processes=trainer.processes,
                      **machine_attrs())
    total = recipe.meta.episodes
    if r.state is not None:
        check_checkpoint(r.state, trainer.state_dict(), out)
        trainer.load_state_dict(r.state)
        r.store.truncate("episodes", trainer.episode)
        if "decline_recent" not in r.state:  # a checkpoint from before today's collapse rule
            from plastcli.results.store import read_store

            got = read_store(out)
            trainer.collapse = replay(got["episodes/query_ce"], cfg.chance, cfg.collapse_window,
                                      got["episodes/meta_accuracy"], cfg.decline_window,
                                      cfg.decline_drop)
    elif r.resumed:  # killed before the first checkpoint: start over in the same file
        r.store.truncate("episodes", 0)
    members = {"seed": np.array(seeds),
               **{grid_dataset_name(k): v for k, v in grid.items()}, **(member_arrays or {})}
    if not r.resumed:
        r.store.write_arrays("members", members)
    messages: list[str] = []
    buffer: list[dict[str, np.ndarray]] = []
    every = recipe.run.checkpoint_every

    def flush() -> None:
        with r.store.transaction():  # records and checkpoint replace the store at once
            r.store.append("episodes", buffer)
            extra = {"rollbacks": trainer.rollbacks} if cfg.rollback else {}
            r.store.write_arrays("members", {**members, "diverged_at": trainer.diverged_at,
                                             "collapsed_at": trainer.collapsed_at, **extra})
            r.store.checkpoint(trainer.state_dict())
        buffer.clear()

    def say(msg: str) -> None:
        messages.append(msg)
        reporter.message(f"[yellow]{msg}")

    reporter.start(total, trainer.episode, f"meta-train {recipe.name}")
    try:
        while trainer.episode < total:
            signals.check()  # a SIGTERM whose exception a weakref callback swallowed
            dead_before = trainer.diverged_at.copy()
            rollbacks_before = trainer.rollbacks.copy()
            collapsed_before = trainer.collapsed_at.copy()
            rec = trainer.run_episode()
            buffer.append(rec)
            for i in np.nonzero((dead_before < 0) & (trainer.diverged_at >= 0))[0]:
                say(f"member {i} (seed {seeds[i]}{grid_label(grid, i)}) diverged at episode "
                    f"{trainer.diverged_at[i]}: theta or meta-loss became NaN; "
                    f"its coefficients are frozen from here on")
            for i in np.nonzero(trainer.rollbacks > rollbacks_before)[0]:
                say(f"member {i} (seed {seeds[i]}{grid_label(grid, i)}) rolled back at episode "
                    f"{trainer.episode - 1} (non-finite; rollback {trainer.rollbacks[i]} of "
                    f"{cfg.rollback}): its state before its last step, lr now "
                    f"{float(trainer.lr[i]):.3g}")
            if (dead_before < 0).any() and (trainer.diverged_at >= 0).all() \
                    and trainer.episode < total:
                rest = (f"episode {trainer.episode} is" if trainer.episode == total - 1
                        else f"episodes {trainer.episode}-{total - 1} are")
                say(f"every member has diverged: {rest} recorded as NaN without computing")
            for i in np.nonzero((collapsed_before < 0) & (trainer.collapsed_at >= 0))[0]:
                why = (f"its query loss has stayed above chance (ln {recipe.task.classes} = "
                       f"{cfg.chance:.2f}) for {cfg.collapse_window} episodes after it had learned"
                       if trainer.collapse.reason[i] == LOSS else
                       f"its mean meta-accuracy over {cfg.decline_window} episodes fell more "
                       f"than {cfg.decline_drop} below its best "
                       f"({trainer.collapse.best_mean[i]:.3f})")
                say(f"member {i} (seed {seeds[i]}{grid_label(grid, i)}) collapsed at episode "
                    f"{trainer.collapsed_at[i]}: {why}")
            if trainer.episode % every == 0 or trainer.episode == total:
                flush()
            reporter.update(trainer.episode, loss=finite_mean(rec["meta_loss"]),
                            acc=finite_mean(rec["meta_accuracy"]))
    except BaseException as exc:  # the store must never look complete or still running
        mark_failed(r.store, exc, "continue with --resume")
        raise
    from plastcli.results.store import read_store

    data_out = read_store(out)
    final = {k: final_window(data_out[f"episodes/{k}"]) for k in ("meta_accuracy", "meta_loss")}
    n_div = int((trainer.diverged_at >= 0).sum())
    n_col = int((trainer.collapsed_at >= 0).sum())
    finish(r.store, diverged_members=n_div, collapsed_members=n_col)
    return MetaTrainResult(out, seeds, total, final, trainer.params[0].detach().cpu().numpy(),
                           list(recipe.rule.terms), trainer.diverged_at.copy(),
                           trainer.collapsed_at.copy(), grid, messages)
