"""The commands around results: show, figures, reproduce, sweep, and the recipe, store and
data groups."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

import plastcli.cli_format  # noqa: F401  (flags without <bool>; one-line usage errors)
from plastcli.cli_common import (
    EXPERIMENTS,
    DataDirOpt,
    SetOpt,
    app,
    check_choice,
    choice_option,
    data_app,
    err_console,
    out_console,
    recipe_app,
    recipe_arg,
    store_app,
    user_errors,
)
from plastcli.errors import PlastError


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
    "2024": "fig1-bp-vs-oja, fig1-bp-vs-oja-fashion, fig2-reconstruction-error, "
            "fig3-reconstructions-depth5, fig3-reconstructions-depth10, fig4-pca, "
            "fig5-naive-init, fig6-activation-norms, figS1-update-norms, fig7-rnn-memory, "
            "fig7-rnn-phase, fig7-rnn-phase-cross, fig7-rnn-factors, "
            "fig8-plastic-feedback, online-results-2024.md",
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
        err_console.print(f"[yellow]skipped:[/] {escape(line)}", highlight=False,
                          soft_wrap=True)
    for path in report.written:
        out_console.print(f"wrote {path}", highlight=False)
    for line in report.failed:
        err_console.print(f"[bold red]failed:[/] {escape(line)}", highlight=False,
                          soft_wrap=True)
    if report.failed:
        raise typer.Exit(1)
    if not report.written:
        raise PlastError(f"no figure could be drawn from {results / paper}: each needs a "
                         "complete store that is missing or unusable (skipped: above)")


PLOT_SUFFIXES = (".png", ".pdf", ".svg")


@app.command("plot", help="Draw your own stores: meta-accuracy, meta-loss and θ of "
             "meta-training stores, or validation accuracy and loss of online ones, several "
             "side by side, members grouped by condition, hidden size, layer assignment or "
             "grid point.\n\nExample: plast plot results/my-rule.h5 results/2022/fig5-bio.h5 "
             "--out compare.png; plast plot results/sweeps/bio-lr (every point)")
@user_errors
def plot(
    stores: list[Path] = typer.Argument(..., help="Result stores (.h5) of one kind, or sweep "
                                        "folders (plast sweep: every point)."),
    out: Path | None = typer.Option(None, "--out", help="The figure file, .png, .pdf or .svg "
                                    "[default: beside the first store, NAME.png, or "
                                    "compare.png for several]."),
) -> None:
    from plastcli.figures.own import draw
    from plastcli.paths import ensure_out_dir
    from plastcli.results.store import read_store
    from plastcli.sweep import point_stores

    named: dict[str, Path] = {}
    for path in stores:
        if path.is_dir():
            for label, store in point_stores(path).items():
                if not store.is_file():
                    err_console.print(f"[yellow]skipped:[/] {escape(str(store))} ({label}): "
                                      "not run yet", highlight=False)
                    continue
                named[label if len(stores) == 1 else f"{path.name} {label}"] = store
        else:
            named[path.stem if path.stem not in named else str(path)] = path
    if not named:
        raise PlastError("nothing to plot: no store of " + ", ".join(map(str, stores)))
    first = next(iter(named.values()))
    out = out or first.parent / (f"{first.stem}.png" if len(named) == 1 else "compare.png")
    if out.suffix.lower() not in PLOT_SUFFIXES:
        raise PlastError(f"--out {out}: allowed suffixes: {', '.join(PLOT_SUFFIXES)}")
    fig = draw({name: read_store(p) for name, p in named.items()})
    ensure_out_dir(out.parent)
    fig.savefig(out, dpi=150, bbox_inches="tight")
    out_console.print(f"wrote {out}", highlight=False)


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
    from plastcli.paths import check_out_dir
    from plastcli.reproduce import PAPERS, reproduce

    check_choice("--paper", paper, (*PAPERS, "all"))
    check_out_dir(results, "--results")
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
    from plastcli.paths import check_out_dir
    from plastcli.sweep import run

    check_out_dir(results, "--results")
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
    """Every key of an experiment's recipe with its type, default, allowed values and
    meaning, read off the schema (a list of mappings shows its items' keys as key.N.sub, the
    form --set takes)."""
    from plastcli.recipes import SCHEMAS
    from plastcli.recipes.keys import keys

    if experiment not in SCHEMAS:
        raise PlastError(f"experiment '{experiment}' is not allowed; allowed: "
                         f"{', '.join(SCHEMAS)}")
    rows = keys(experiment, meaning=True)
    if out_console.width < 140:  # too narrow for five columns: one key per block, uncut
        out_console.print(f"plast {experiment} recipe keys (key: type; default; allowed; "
                          "then its meaning)\n", highlight=False)
        for key, kind, default, allowed, meaning in rows:
            facts = "; ".join(x for x in (kind, f"default {default}",
                                          f"allowed {allowed}" if allowed else "") if x)
            out_console.print(f"[bold]{escape(key)}[/]: {escape(facts)}", highlight=False,
                              soft_wrap=True)
            if meaning:
                out_console.print(f"    {escape(meaning)}", highlight=False)
        return
    t = Table(title=f"plast {experiment} recipe keys", title_justify="left")
    # nothing is cut: keys keep their full width, the other columns fold onto more lines
    t.add_column("key", no_wrap=True, min_width=max(len(r[0]) for r in rows))
    for col in ("type", "default", "allowed", "meaning"):
        t.add_column(col, overflow="fold")
    for row in rows:
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

    if out.is_dir():
        raise PlastError(f"--out {out} is a directory; give a file, e.g. {out / 'plast.json'}")
    ensure_out_dir(out.parent)
    try:
        out.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise PlastError(f"--out {out}: cannot write it ({exc.strerror or exc})") from None
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
    if root.exists() and not root.is_dir():
        raise PlastError(f"--data-dir {root} is a file, not a directory")
    if not root.exists():  # say so once, not once per missing file
        err_console.print(f"[yellow]{escape(str(root))} does not exist[/]: every file below is "
                          "missing; set --data-dir or $PLAST_DATA, or run 'plast data fetch'",
                          highlight=False, soft_wrap=True)
    if recipes is not None and not recipes.is_dir():
        raise PlastError(f"--recipes {recipes}: "
                         f"{'not a directory' if recipes.exists() else 'no such directory'}")
    rows = check_all(root)
    needs = recipe_needs(recipes or _recipes_dir())
    table = Table(title=escape(f"data files in {root}"))
    table.add_column("file", overflow="fold")  # a long name wraps, never cut to '…'
    for col in ("status", "sha256", "needed by"):
        table.add_column(col, no_wrap=True)
    colour = {"ok": "green", "missing": "yellow", "corrupt": "red", "unverified": "cyan"}
    for rel, status, digest in rows:
        users = needs.get(rel, [])
        table.add_row(rel, f"[{colour[status]}]{status}[/]", digest[:16] + "…" if digest else "",
                      f"{len(users)} recipe(s)" if users else "-")
    out_console.print(table)
    blocked = [(rel, needs[rel]) for rel, status, _ in rows if status == "missing" and rel in needs]
    for rel, users in blocked:
        shown = ", ".join(users[:3]) + (f" and {len(users) - 3} more" if len(users) > 3 else "")
        err_console.print(f"[yellow]missing[/] {rel} blocks {shown}; "
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
