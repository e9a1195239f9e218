"""The ``plast`` command line: parse, load the recipe, call the experiment, print.

Science lives in the engine and experiment modules; this file only parses
options and prints Rich output. Any :class:`PlastError` becomes one red line on
stderr and exit code 2.
"""

from __future__ import annotations

import functools
import importlib
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

import plastcli.cli_format  # noqa: F401  (flags without <bool>; one-line usage errors)
from plastcli import __version__
from plastcli.errors import PlastError

EXIT_CODES = ("Exit codes: 0 done; 1 a run failed (reproduce, sweep) or data check found a "
              "bad file; 2 bad input (one line naming the file, key or option and what is "
              "allowed); 130 Ctrl-C, 143 SIGTERM, 129 SIGHUP (the store says how to continue).")

app = typer.Typer(
    name="plast",
    help=(
        "Reproduce two papers on biologically plausible learning, end to end:\n\n"
        "P1 (2022) Shervani-Tabar & Rosenbaum, meta-learned plasticity rules with random "
        "feedback; P2 (2024) Shervani-Tabar, Mirhoseini & Rosenbaum, Oja's rule as a "
        "stabiliser.\n\n"
        "Every experiment reads a YAML recipe (see recipes/), writes an HDF5 result store "
        "(results/PAPER/NAME.h5) and 'plast figures' draws the papers' figures from "
        "the stores. Data: --data-dir, else $PLAST_DATA, else ~/.cache/plast/data.\n\n"
        + EXIT_CODES
    ),
    no_args_is_help=True,
    rich_markup_mode="markdown",
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Verify or download the datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")
recipe_app = typer.Typer(help="What a recipe may hold: its keys, a JSON Schema, a resolved "
                         "recipe.", no_args_is_help=True)
app.add_typer(recipe_app, name="recipe")
store_app = typer.Typer(help="Look after result stores: label older ones for xarray.",
                        no_args_is_help=True)
app.add_typer(store_app, name="store")

out_console = Console()
err_console = Console(stderr=True)

# Options shared by every training subcommand.


def recipe_arg(example: str):
    """The recipe argument, with an example of the command's own kind."""
    return typer.Argument(..., help=f"YAML recipe file, e.g. {example}.", show_default=False)


def choice_option(default, flag: str, choices: tuple[str, ...], help: str, **kw):
    """An option with a fixed set of values: listed in --help and completed by the shell;
    a value outside it is one red line and exit 2 (:func:`check_choice`)."""
    return typer.Option(default, flag, metavar="[" + "|".join(choices) + "]", help=help,
                        autocompletion=lambda: list(choices), **kw)


def check_choice(flag: str, value: str | None, choices: tuple[str, ...]) -> None:
    if value is not None and value not in choices:
        raise PlastError(f"{flag} '{value}' is not allowed; allowed: {', '.join(choices)}")


DEVICES = ("auto", "cpu", "cuda")
# the experiment kinds (plastcli.recipes.SCHEMAS; tests/test_cli_help.py checks they agree)
EXPERIMENTS = ("meta-train", "ablate-layers", "baseline", "init-study", "rnn-memory")
SeedsOpt = typer.Option(None, "--seeds", min=1, help="Number of seeds (population members); "
                        "overrides population.seeds.")
DeviceOpt = choice_option(None, "--device", DEVICES, "Overrides run.device.")
OutOpt = typer.Option(None, "--out", help="Result store path [default: results/PAPER/NAME.h5].")
SetOpt = typer.Option(None, "--set", metavar="KEY=VALUE", help="Override a recipe key, e.g. "
                      "--set meta.lr=3e-3 (repeatable).")
ResumeOpt = typer.Option(False, "--resume", help="Continue a killed or extended "
                         "run from its last checkpoint; gives the same numbers as an "
                         "uninterrupted run.")
OverwriteOpt = typer.Option(False, "--overwrite", help="Replace an existing store.")
DataDirOpt = typer.Option(None, "--data-dir", help="Directory holding the IDX files "
                          "[default: $PLAST_DATA, else ~/.cache/plast/data].")


def _fail(message: str) -> None:
    # escape: messages name keys like rule.layers[0] and extras like plast[download];
    # one line, whatever the message quotes from the user's input
    message = " ".join(str(message).split())
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _abandon(exc: BaseException) -> None:
    """Mark runs this command left open failed and release their locks (only if an
    experiment was loaded at all)."""
    common = sys.modules.get("plastcli.experiments.common")
    if common is not None:
        common.abandon_open_runs(exc)


def user_errors(fn):
    """Turn PlastError (and a bad recipe's validation) into one red line and exit 2;
    Ctrl-C, SIGTERM and SIGHUP into a note and exit 130, 143, 129."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from plastcli.signals import Terminated, terminate_as_interrupt

        try:
            with terminate_as_interrupt():
                return fn(*args, **kwargs)
        except PlastError as exc:
            _abandon(exc)
            _fail(str(exc))
        except KeyboardInterrupt as exc:
            _abandon(exc)
            err_console.print("[yellow]interrupted[/]: a store being written says 'failed: "
                              "interrupted' and how to continue")
            raise typer.Exit(130) from None
        except Terminated as exc:
            _abandon(exc)
            err_console.print(f"[yellow]terminated[/] ({exc}): a store being written says "
                              "'failed: terminated' and how to continue")
            raise typer.Exit(exc.exit_code) from None
        except BaseException as exc:
            if not isinstance(exc, typer.Exit | SystemExit):
                _abandon(exc)
            raise

    return wrapper


def _check_device(device: str | None) -> None:
    check_choice("--device", device, DEVICES)


def _load(recipe: Path, kind: str, sets: list[str] | None, extra: list[str]):
    from plastcli.recipes import load_recipe

    return load_recipe(recipe, list(extra) + list(sets or []), expected=kind)


def _run(kind: str, module_name: str, recipe: Path, set_, device, out, resume, overwrite,
         data_dir, shortcuts: dict):
    """Load and check the recipe and --out (before torch is imported: bad input fails in
    well under a second), then run the experiment under a progress bar; return
    (recipe, result)."""
    from plastcli.paths import check_store_out, default_out

    _check_device(device)
    extra = [f"{key}={value}" for key, value in shortcuts.items() if value is not None]
    rec = _load(recipe, kind, set_, extra)
    out = check_store_out(out or default_out(rec))
    module = importlib.import_module(f"plastcli.experiments.{module_name}")
    from plastcli.progress import RichReporter

    with RichReporter(err_console) as rep:
        res = module.run(rec, out, resume=resume, overwrite=overwrite, data_dir=data_dir,
                         device=device, reporter=rep)
    return rec, res


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
    rec, res = _run("meta-train", "meta_train", recipe, set_, device, out, resume, overwrite,
                    data_dir, {"population.seeds": seeds, "meta.episodes": episodes})
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
    rec, res = _run("ablate-layers", "ablate_layers", recipe, set_, device, out, resume,
                    overwrite, data_dir, {"population.seeds": seeds, "meta.episodes": episodes})
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


def _online_command(kind: str, recipe: Path, seeds, samples, device, out, set_,
                    overwrite, data_dir) -> None:
    """Shared body of ``plast baseline`` and ``plast init-study`` (no --resume: these runs
    have no checkpoints yet)."""
    rec, res = _run(kind, kind.replace("-", "_"), recipe, set_, device, out, False, overwrite,
                    data_dir, {"population.seeds": seeds, "online.samples": samples})
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


@app.command("baseline")
@user_errors
def baseline_cmd(
    recipe: Path = recipe_arg("recipes/2024/fig1-depth5.yaml"),
    seeds: int | None = SeedsOpt,
    samples: int | None = SamplesOpt,
    device: str | None = DeviceOpt,
    out: Path | None = OutOpt,
    set_: list[str] | None = SetOpt,
    overwrite: bool = OverwriteOpt,
    data_dir: Path | None = DataDirOpt,
) -> None:
    """Online (batch size 1) learning with fixed coefficients: BP, FA, DFA, +Oja, any pool rule.

    Grid-searches the coefficients on a held-out part of the train split, then trains
    every condition x seed as one population and records validation curves (test-split
    subset), alignment angles, activation norms, reconstruction errors and update norms.
    Example: plast baseline recipes/2024/fig1-depth5.yaml
    """
    _online_command("baseline", recipe, seeds, samples, device, out, set_, overwrite,
                    data_dir)


@app.command("init-study")
@user_errors
def init_study_cmd(
    recipe: Path = recipe_arg("recipes/2024/fig5-naive-init.yaml"),
    seeds: int | None = SeedsOpt,
    samples: int | None = SamplesOpt,
    device: str | None = DeviceOpt,
    out: Path | None = OutOpt,
    set_: list[str] | None = SetOpt,
    overwrite: bool = OverwriteOpt,
    data_dir: Path | None = DataDirOpt,
) -> None:
    """The baseline with each rule run under every initialiser (naive N(0, 0.01^2) vs xavier).

    Example: plast init-study recipes/2024/fig5-naive-init.yaml
    """
    _online_command("init-study", recipe, seeds, samples, device, out, set_, overwrite,
                    data_dir)


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
    overwrite: bool = OverwriteOpt,
    data_dir: Path | None = DataDirOpt,
) -> None:
    """Recurrent delayed-memory task (P2 Fig 7): BPTT vs BPTT+Oja on W_h.

    An image is the input for the first task.present steps, zeros until step T, then the
    class is read out. Grid-searches the coefficients on a held-out part of the train split,
    then trains every condition x seed (per hidden size) online, one sequence per update.
    Example: plast rnn-memory recipes/2024/fig7-rnn-memory.yaml
    """
    rec, res = _run("rnn-memory", "rnn_memory", recipe, set_, device, out, False, overwrite,
                    data_dir, {"population.seeds": seeds, "online.samples": samples})
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


@app.command("show")
@user_errors
def show(store: Path = typer.Argument(..., help="A result store (.h5), or a sweep folder "
                                       "(plast sweep).")) -> None:
    """Summarise a result store: recipe, status, per-member final metrics and coefficients.
    For a sweep folder: one row per point with its final metrics."""
    if store.is_dir():
        from plastcli.sweep import summary_table

        out_console.print(summary_table(store))
        return
    from plastcli.results.summary import store_summary

    for renderable in store_summary(store):
        out_console.print(renderable)


FIGURE_PAPERS, FORMATS = ("2022", "2024"), ("png", "pdf")
# What plast figures draws, per paper (tests/test_cli_help.py checks it against the registry
# of plastcli.figures, which this file does not import: it loads matplotlib).
FIGURES_DRAWN = {
    "2022": "fig3-pseudo-vs-bp, fig4-pool, fig4-pool-sweep, fig4-grammar-pool, fig5-bio, "
            "fig6-ehebb, fig8-oja, fig9-orthonormality, fig-meta-accuracy-all, fig1-fa-dfa-bp, "
            "table1-ablate-layers, fig-stability-map, fig-stability-strip, stability-map.md, "
            "reproduction-2022.md",
    "2024": "fig1-bp-vs-oja, fig2-reconstruction-error, fig3-reconstructions-depth5, "
            "fig3-reconstructions-depth10, fig4-pca, fig5-naive-init, fig6-activation-norms, "
            "figS1-update-norms, fig7-rnn-memory, fig8-plastic-feedback, online-results-2024.md",
}


@app.command("figures", help="Draw every figure of a paper that its stores support (missing "
             "stores are named).\n\n" + "\n\n".join(f"{p}: {v}." for p, v in FIGURES_DRAWN.items())
             + "\n\nExample: plast figures --paper 2022 --results results --format png")
@user_errors
def figures(
    paper: str = choice_option(..., "--paper", FIGURE_PAPERS, "The paper."),
    results: Path = typer.Option(Path("results"), "--results",
                                 help="Results directory holding PAPER/*.h5."),
    out: Path | None = typer.Option(None, "--out",
                                    help="Figure directory [default: RESULTS/PAPER/figures]."),
    fmt: list[str] | None = choice_option(None, "--format", FORMATS,
                                          "Repeatable [default: png and pdf]."),
) -> None:
    from plastcli.figures import draw_paper
    from plastcli.paths import ensure_out_dir, remove_empty

    check_choice("--paper", paper, FIGURE_PAPERS)
    formats = fmt or list(FORMATS)
    for f in formats:
        check_choice("--format", f, FORMATS)
    out_dir = out or results / paper / "figures"
    made = ensure_out_dir(out_dir)
    report = draw_paper(paper, results / paper, out_dir, formats)
    if not report.written:
        remove_empty(made)  # a refused call leaves nothing behind
    for line in report.skipped:
        err_console.print(f"[yellow]skipped:[/] {line}", highlight=False, soft_wrap=True)
    for path in report.written:
        out_console.print(f"wrote {path}", highlight=False)
    if not report.written:
        raise PlastError(f"no figure could be drawn from {results / paper}: no complete store")


# Options shared by plast reproduce and plast sweep (a run: one recipe, or one sweep point).
JobsOpt = typer.Option(None, "--jobs", min=1, help="Runs side by side [default: the cores "
                       "available].")
BackendOpt = choice_option("local", "--backend", ("local", "ray"), "local (a process per "
                           "run) or ray (needs pip install -e '.[ray]').")
AddressOpt = typer.Option(None, "--address", metavar="HOST:PORT", help="Ray cluster to join "
                          "[default: start an embedded local Ray].")
ForceOpt = typer.Option(False, "--force", help="Rerun every run, even one whose "
                        "store is complete and current.")
SeedChunkOpt = typer.Option(None, "--seed-chunk", min=1, help="Ray: run a meta-train "
                            "population of more seeds as one task per chunk of this many "
                            "seeds, merged into one store.")


@app.command("reproduce")
@user_errors
def reproduce_cmd(
    paper: str = choice_option(..., "--paper", (*FIGURE_PAPERS, "all"), "The paper, or both."),
    scale: str = choice_option("full", "--scale", ("smoke", "full"), "smoke (every recipe "
                               "shrunk, ~minutes, numbers are not results) or full (the "
                               "recipes as written)."),
    jobs: int | None = JobsOpt,
    backend: str = BackendOpt,
    address: str | None = AddressOpt,
    results: Path = typer.Option(Path("results"), "--results",
                                 help="Results directory: one store per recipe, "
                                 "RESULTS/PAPER/RECIPE.h5."),
    force: bool = ForceOpt,
    recipes: Path | None = typer.Option(None, "--recipes", help="Recipe folder [default: the "
                                        "recipes/ of this checkout, else ./recipes]."),
    seed_chunk: int | None = SeedChunkOpt,
) -> None:
    """Reproduce a paper in one command: every recipe of recipes/PAPER/ (by its paper: key),
    cached and side by side, then its figures and one report (RESULTS/REPORT.md and
    RESULTS/report.html).

    A store that is complete and whose resolved recipe and plast version match is skipped;
    a running or failed one is resumed; --force reruns all. Ctrl-C stops every run and
    leaves each store resumable. Exit 1 when a run failed.

    Example: plast reproduce --paper all --scale smoke --results /tmp/smoke
    """
    from plastcli.reproduce import PAPERS, reproduce

    if paper not in (*PAPERS, "all"):
        raise PlastError(f"--paper '{paper}' is not allowed; allowed: 2022, 2024, all")
    papers = list(PAPERS) if paper == "all" else [paper]
    code = reproduce(papers, scale, jobs or 0, backend, address, results,
                     recipes or _recipes_dir(), force, err_console, seed_chunk)
    if code:
        raise typer.Exit(code)


@app.command("sweep")
@user_errors
def sweep_cmd(
    sweep: Path = typer.Argument(..., help="Sweep file: base recipe, grid of --set keys, "
                                 "seeds (see plastcli/sweep.py)."),
    jobs: int | None = JobsOpt,
    backend: str = BackendOpt,
    address: str | None = AddressOpt,
    results: Path = typer.Option(Path("results"), "--results",
                                 help="Stores go to RESULTS/sweeps/NAME/pNNN.h5."),
    force: bool = ForceOpt,
    seed_chunk: int | None = SeedChunkOpt,
) -> None:
    """Run your own study: every combination of a sweep file's grid over a base recipe, one
    store per point, cached, resumed and side by side as in plast reproduce, then a table of
    point x final metrics (plast show RESULTS/sweeps/NAME prints it again).

    Example: plast sweep recipes/sweeps/bio-lr.yaml --results /tmp/mine
    """
    from plastcli.sweep import run

    code = run(sweep, results, jobs or 0, backend, address, force, err_console, seed_chunk)
    if code:
        raise typer.Exit(code)


@recipe_app.command("show")
@user_errors
def recipe_show(recipe: Path = recipe_arg("recipes/2022/fig4-pool.yaml"),
                sets: list[str] | None = SetOpt) -> None:
    """Print the resolved recipe (every default filled in, --set applied), as a run stores
    it."""
    from plastcli.recipes import load_recipe, recipe_to_yaml

    out_console.print(recipe_to_yaml(load_recipe(recipe, sets or [])), end="", markup=False,
                      highlight=False, soft_wrap=True)


@recipe_app.command("keys")
@user_errors
def recipe_keys_cmd(experiment: str = typer.Argument(
        ..., metavar="[" + "|".join(EXPERIMENTS) + "]", help="The experiment kind.",
        autocompletion=lambda: list(EXPERIMENTS), show_default=False)) -> None:
    """Every key of an experiment's recipe with its type, default and allowed values (a
    list of mappings shows its items' keys as key.N.sub, the form --set takes)."""
    from plastcli.recipes import SCHEMAS
    from plastcli.recipes.keys import keys

    if experiment not in SCHEMAS:
        raise PlastError(f"experiment '{experiment}' is not allowed; allowed: "
                         f"{', '.join(SCHEMAS)}")
    t = Table(title=f"plast {experiment} recipe keys", title_justify="left")
    for col in ("key", "type", "default", "allowed"):
        t.add_column(col)
    for row in keys(experiment):
        t.add_row(*(escape(c) for c in row))
    out_console.print(t)


@recipe_app.command("schema")
@user_errors
def recipe_schema(out: Path | None = typer.Option(None, "--out", help="Write it to this file "
                                                  "[default: print it].")) -> None:
    """A JSON Schema of every recipe (one branch per experiment), for editors: e.g. the YAML
    extension's yaml.schemas setting. Cross-field checks stay in plast itself."""
    import json

    from plastcli.recipes.keys import json_schema

    text = json.dumps(json_schema(), indent=1) + "\n"
    if out is None:
        sys.stdout.write(text)
        return
    from plastcli.paths import ensure_out_dir

    ensure_out_dir(out.parent)
    out.write_text(text, encoding="utf-8")
    err_console.print(f"wrote {out}", highlight=False)


@store_app.command("upgrade")
@user_errors
def store_upgrade(stores: list[Path] = typer.Argument(..., metavar="STORE.h5...",
                                                      help="Complete result stores "
                                                      "(.h5) to upgrade in place.",
                                                      show_default=False)) -> None:
    """Give older stores today's labels in place: HDF5 dimension scales (member, episode,
    term, layer, ...) with their coordinates, and native list attributes, so that e.g.
    xarray.open_dataset(STORE, engine="h5netcdf", group="episodes").sel(term="oja")
    works. The data stay bit for bit; stores written now are labelled when they complete."""
    from plastcli.results.store import upgrade

    for path in stores:
        out_console.print(upgrade(path), highlight=False, soft_wrap=True)


@data_app.command("check")
@user_errors
def data_check(
    data_dir: Path | None = DataDirOpt,
    recipes: Path | None = typer.Option(None, "--recipes", help="Recipe folder whose needs "
                                        "are checked [default: the recipes/ of this checkout, "
                                        "else ./recipes]."),
) -> None:
    """Verify every known data file against the sha256 sums shipped with plast.

    Exits with 1 when a file some recipe needs is missing, or any file is corrupt, and
    names the recipes each missing file blocks.
    """
    from plastcli.data import check_all, how_to_get, resolve_data_dir
    from plastcli.recipes import recipe_needs

    root = resolve_data_dir(data_dir)
    rows = check_all(root)
    needs = recipe_needs(recipes or _recipes_dir())
    table = Table(title=f"data files in {root}")
    for col in ("file", "status", "sha256", "needed by"):
        table.add_column(col)
    colour = {"ok": "green", "missing": "yellow", "corrupt": "red", "unverified": "cyan"}
    for rel, status, digest in rows:
        users = needs.get(rel, [])
        table.add_row(rel, f"[{colour[status]}]{status}[/]", digest[:16] + "…" if digest else "",
                      f"{len(users)} recipe(s)" if users else "-")
    out_console.print(table)
    blocked = [(rel, needs[rel]) for rel, status, _ in rows if status == "missing" and rel in needs]
    for rel, users in blocked:
        err_console.print(f"[yellow]missing[/] {rel} blocks {', '.join(users)}; "
                          f"{how_to_get(rel, root)}", highlight=False, soft_wrap=True)
    if blocked or any(s == "corrupt" for _, s, _ in rows):
        raise typer.Exit(1)


def _recipes_dir() -> Path:
    """The recipes/ folder next to the package (a checkout), else ./recipes."""
    here = Path(__file__).resolve().parent.parent / "recipes"
    return here if here.is_dir() else Path("recipes")


@data_app.command("fetch")
@user_errors
def data_fetch(
    dataset: str | None = typer.Argument(None, metavar="[mnist|fashion-mnist|emnist-balanced]",
                                         help="[default: list what can be fetched]",
                                         autocompletion=lambda: ["mnist", "fashion-mnist",
                                                                 "emnist-balanced"],
                                         show_default=False),
    data_dir: Path | None = DataDirOpt,
) -> None:
    """Download a dataset through torchvision (needs internet and torchvision).

    Without DATASET: list what can be fetched, and what must be placed by hand
    (emnist-bymerge, emnist-byclass) and from where.
    """
    from plastcli.data import fetch, fetch_listing, resolve_data_dir

    root = resolve_data_dir(data_dir)
    if dataset is None:
        for line in fetch_listing(root):
            out_console.print(line, highlight=False, soft_wrap=True)
        return
    for line in fetch(dataset, root):
        out_console.print(line)


def _version(value: bool) -> None:
    if value:
        out_console.print(f"plast {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version,
                                       is_eager=True, help="Print the version and exit.")
          ) -> None:
    pass


def main() -> None:
    """Entry point of the ``plast`` console script."""
    app()


if __name__ == "__main__":
    main()
