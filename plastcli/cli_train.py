"""The training commands: meta-train, ablate-layers, baseline, init-study, rnn-memory.
Each loads and checks its recipe before torch is imported, runs its experiment module
under a progress bar, and prints one table."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

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
    err_console,
    out_console,
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
    rec, res = run_experiment("meta-train", "meta_train", recipe, set_, device, out, resume,
                              overwrite, data_dir,
                              {"population.seeds": seeds, "meta.episodes": episodes})
    table = Table(title=f"meta-train {rec.name}: {res.episodes} episodes -> {res.out}",
                  caption="meta-acc, meta-loss: mean of the last 50 finite episodes (a "
                          "diverged member: the 50 before it diverged); diverged, collapsed: "
                          "the episode it happened (- = never)")
    table.add_column("seed", justify="right")
    for key in res.grid:
        table.add_column(key, justify="right")
    table.add_column("meta-acc", justify="right")
    table.add_column("meta-loss", justify="right")
    wide = len(res.terms) > 4  # e.g. the pool or rule.terms: grammar: the largest ones only
    for name in ["largest |θ|"] if wide else res.terms:
        table.add_column(name if wide else f"θ {name}", justify="right")
    table.add_column("diverged", justify="right")
    table.add_column("collapsed", justify="right")
    for i, s in enumerate(res.seeds):
        d, c = res.diverged_at[i], res.collapsed_at[i]
        theta = [f"{v:.3g}" for v in res.theta[i]]
        if wide:
            top = sorted(range(len(theta)), key=lambda j: -abs(res.theta[i][j]))[:4]
            theta = [", ".join(f"{res.terms[j]}={theta[j]}" for j in top)]
        table.add_row(str(s), *[f"{v[i]:.3g}" for v in res.grid.values()],
                      f"{res.final['meta_accuracy'][i]:.3f}",
                      f"{res.final['meta_loss'][i]:.3f}", *theta, "-" if d < 0 else str(d),
                      "-" if c < 0 else str(c))
    out_console.print(table)


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
    rec, res = run_experiment("ablate-layers", "ablate_layers", recipe, set_, device, out,
                              resume, overwrite, data_dir,
                              {"population.seeds": seeds, "meta.episodes": episodes})
    from plastcli.results.store import read_store
    from plastcli.results.tables import table1_text

    header, body = table1_text(read_store(res.out))
    table = Table(title=f"ablate-layers {rec.name} (P1 Table 1): angles averaged over episodes "
                  f"{rec.ablation.burn_in}..{rec.meta.episodes}, mean ± sd over seeds")
    for i, col in enumerate(header):
        table.add_column(col, justify="left" if i < 3 else "right")
    for row in body:
        table.add_row(*row)
    out_console.print(table)
    for line in res.diverged:
        err_console.print(f"[yellow]{line}[/]", highlight=False)
    for f in res.files:
        out_console.print(f"wrote {f}", highlight=False)


def _online_command(kind: str, recipe: Path, seeds, samples, device, out, set_, resume,
                    overwrite, data_dir) -> None:
    """Shared body of ``plast baseline`` and ``plast init-study``."""
    rec, res = run_experiment(kind, kind.replace("-", "_"), recipe, set_, device, out, resume,
                              overwrite, data_dir,
                              {"population.seeds": seeds, "online.samples": samples})
    table = Table(title=f"{kind} {rec.name}: {rec.online.samples} online samples, "
                  f"{rec.population.seeds} runs per condition -> {res.out}")
    table.add_column("condition")
    table.add_column("coefficients" + (" (grid-searched)" if res.grid_searched else ""))
    table.add_column("final val. accuracy (mean)", justify="right")
    table.add_column("98% CI", justify="right")
    from plastcli.core.rules import IDX

    for i, name in enumerate(res.conditions):
        coefs = ", ".join(f"{t}={res.theta[i, IDX[t]]:.3g}" for t in res.terms[i])
        table.add_row(name, coefs, f"{res.final_mean[i]:.4f}",
                      f"[{res.final_lo[i]:.4f}, {res.final_hi[i]:.4f}]")
    out_console.print(table)


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
    rec, res = run_experiment("rnn-memory", "rnn_memory", recipe, set_, device, out, resume,
                              overwrite, data_dir,
                              {"population.seeds": seeds, "online.samples": samples})
    table = Table(title=f"rnn-memory {rec.name}: {rec.online.samples} sequences (T = "
                  f"{rec.task.T}, image for {rec.task.present} steps), {rec.population.seeds} "
                  f"runs per condition -> {res.out}")
    for col in ("hidden", "condition", "θ_1 (BPTT)", "θ_2 (Oja)", "final val. accuracy (mean)",
                "98% CI"):
        table.add_column(col, justify="left" if col == "condition" else "right")
    for row in res.rows:
        star = " (grid)" if row["searched"] else ""
        table.add_row(str(row["hidden"]), row["condition"] + star, f"{row['theta_bptt']:.3g}",
                      f"{row['theta_oja']:.3g}", f"{row['mean']:.4f}",
                      f"[{row['lo']:.4f}, {row['hi']:.4f}]")
    out_console.print(table)
