"""The training commands: meta-train, ablate-layers, baseline, init-study, rnn-memory.
Each loads and checks its recipe before torch is imported, runs its experiment module
under a progress bar, and prints its result table (plastcli.experiments.result_tables)."""

from __future__ import annotations

from pathlib import Path

import typer

import plastcli.cli_format  # noqa: F401  (flags without <bool>; one-line usage errors)
from plastcli.cli_common import (
    DataDirOpt,
    DeviceOpt,
    OutOpt,
    OverwriteOpt,
    ResumeOpt,
    SeedsOpt,
    SetOpt,
    app,
    recipe_arg,
    run_experiment,
    user_errors,
)


@app.command("meta-train")
@user_errors
def meta_train(
    recipe: Path = recipe_arg("recipes/bio.yaml"),
    seeds: int | None = SeedsOpt,
    episodes: int | None = typer.Option(None, "--episodes", min=1,
                                        help="Overrides meta.episodes."),
    device: str | None = DeviceOpt,
    out: Path | None = OutOpt,
    set_: list[str] | None = SetOpt,
    resume: bool = ResumeOpt,
    overwrite: bool = OverwriteOpt,
    data_dir: Path | None = DataDirOpt,
) -> None:
    """Meta-learn plasticity-rule coefficients (P1 Algorithm 1) for every seed at once.

    Each episode draws a 5-way task, re-initialises the network, trains it online on
    250 images with the rule and updates the coefficients by the gradient of the query
    loss through the whole inner loop. Example: plast meta-train recipes/bio.yaml

    On a CPU with several cores, a population of 8 or more seeds is split across one
    single-threaded process per core (OMP_NUM_THREADS=1 keeps it in one process).

    Recipe keys for stable meta-learning (README, "Using plast"): population.grid
    (meta.l1, meta.lr, rule.init.TERM per member), meta.bounds, meta.l1_mode
    (subgradient or proximal), meta.rollback and meta.rollback_lr_factor, meta.theta_jitter,
    meta.collapse_window, meta.decline_window and meta.decline_drop; and rule.define for
    your own terms (plast recipe keys meta-train lists them all). Example: plast meta-train
    recipes/2022/fig4-pool-sweep.yaml
    """
    run_experiment("meta-train", "meta_train", recipe, set_, device, out, resume, overwrite,
                   data_dir, {"population.seeds": seeds, "meta.episodes": episodes})


@app.command("ablate-layers")
@user_errors
def ablate_layers(
    recipe: Path = recipe_arg("recipes/2022/table1-ablate-layers.yaml"),
    seeds: int | None = typer.Option(None, "--seeds", min=1, help="Seeds per assignment; "
                                     "overrides population.seeds."),
    episodes: int | None = typer.Option(None, "--episodes", min=1,
                                        help="Overrides meta.episodes."),
    device: str | None = DeviceOpt,
    out: Path | None = OutOpt,
    set_: list[str] | None = SetOpt,
    resume: bool = ResumeOpt,
    overwrite: bool = OverwriteOpt,
    data_dir: Path | None = DataDirOpt,
) -> None:
    """Meta-train per-layer rule assignments (P1 Table 1) as one population and print the table.

    Each assignment says which layers add the recipe's ablation.added_terms (e.g. err_hebb)
    to the base rule; all assignments x seeds train together. Prints alignment angles
    averaged from ablation.burn_in to the end (mean ± sd over seeds) and writes
    STORE.csv and STORE.md. Example: plast ablate-layers recipes/2022/table1-ablate-layers.yaml
    """
    run_experiment("ablate-layers", "ablate_layers", recipe, set_, device, out, resume,
                   overwrite, data_dir, {"population.seeds": seeds, "meta.episodes": episodes})


def _online_command(kind: str, recipe: Path, seeds, samples, device, out, set_, resume,
                    overwrite, data_dir) -> None:
    """Shared body of ``plast baseline`` and ``plast init-study``."""
    run_experiment(kind, kind.replace("-", "_"), recipe, set_, device, out, resume, overwrite,
                   data_dir, {"population.seeds": seeds, "online.samples": samples})


SamplesOpt = typer.Option(None, "--samples", min=1, help="Overrides online.samples.")


def _register_online(kind: str, example: str, doc: str) -> None:
    """``plast baseline`` and ``plast init-study``: the same options, each with an example
    recipe of its own kind."""

    def command(
        recipe: Path = recipe_arg(example),
        seeds: int | None = SeedsOpt,
        samples: int | None = SamplesOpt,
        device: str | None = DeviceOpt,
        out: Path | None = OutOpt,
        set_: list[str] | None = SetOpt,
        resume: bool = ResumeOpt,
        overwrite: bool = OverwriteOpt,
        data_dir: Path | None = DataDirOpt,
    ) -> None:
        _online_command(kind, recipe, seeds, samples, device, out, set_, resume, overwrite,
                        data_dir)

    command.__doc__ = f"{doc}\n\n    Example: plast {kind} {example}\n    "
    command.__name__ = f"{kind.replace('-', '_')}_cmd"
    app.command(kind)(user_errors(command))


_register_online(
    "baseline", "recipes/2024/fig1-depth5.yaml",
    """Online (batch size 1) learning with fixed coefficients: BP, FA, DFA, +Oja, any pool rule.

    Grid-searches the coefficients on a held-out part of the train split, then trains
    every condition x seed as one population and records validation curves (test-split
    subset), alignment angles, activation norms, reconstruction errors and update norms.""")
_register_online(
    "init-study", "recipes/2024/fig5-naive-init.yaml",
    "The baseline with each rule run under every initialiser (naive N(0, 0.01^2) vs xavier).")


@app.command("rnn-memory")
@user_errors
def rnn_memory_cmd(
    recipe: Path = recipe_arg("recipes/2024/fig7-rnn-memory.yaml"),
    seeds: int | None = SeedsOpt,
    samples: int | None = typer.Option(None, "--samples", min=1,
                                       help="Overrides online.samples (training sequences)."),
    device: str | None = DeviceOpt,
    out: Path | None = OutOpt,
    set_: list[str] | None = SetOpt,
    resume: bool = ResumeOpt,
    overwrite: bool = OverwriteOpt,
    data_dir: Path | None = DataDirOpt,
) -> None:
    """Recurrent delayed-memory task (P2 Fig 7): BPTT vs BPTT+Oja on W_h.

    An image is the input for the first task.present steps, zeros until step T, then the
    class is read out. Grid-searches the coefficients on a held-out part of the train split,
    then trains every condition x seed (per hidden size) online, one sequence per update.
    Example: plast rnn-memory recipes/2024/fig7-rnn-memory.yaml
    """
    run_experiment("rnn-memory", "rnn_memory", recipe, set_, device, out, resume, overwrite,
                   data_dir, {"population.seeds": seeds, "online.samples": samples})
