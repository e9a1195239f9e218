"""What every plast command shares: the Typer apps, the consoles, the shared options and
choices, and :func:`user_errors`, which turns bad input into one red line and exit 2 and
signals into exit 130, 143 or 129."""

from __future__ import annotations

import errno
import functools
import importlib
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

import plastcli.cli_format  # noqa: F401  (flags without <bool>; one-line usage errors)
from plastcli.errors import PlastError

EXIT_CODES = ("Exit codes: 0 done; 1 a run failed (reproduce, sweep), data check found a "
              "bad file, a figure failed on its stores, or the machine refused a write (a "
              "full disk); 2 bad input (one "
              "line naming the file, key or option and what is allowed); 130 Ctrl-C, 143 "
              "SIGTERM, 129 SIGHUP (the store says how to continue).")

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
        "Meta-training runs on a C kernel built on first use ($CC, else cc, else gcc; cached "
        "in $PLAST_CACHE/fused, else ~/.cache/plast/fused); PLAST_ENGINE=reference runs the "
        "slower tensor path instead, as does a machine without a compiler.\n\n"
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
OutOpt = typer.Option(None, "--out", help="Result store path [default: results/PAPER/NAME.h5 "
                      "under the current folder; results/NAME.h5 for a recipe with no paper].")
SetOpt = typer.Option(None, "--set", metavar="KEY=VALUE", help="Override a recipe key, e.g. "
                      "--set population.seeds=3 (repeatable; plast recipe keys KIND lists "
                      "the keys).")
ResumeOpt = typer.Option(False, "--resume", help="Continue a killed or extended "
                         "run from its last checkpoint; gives the same numbers as an "
                         "uninterrupted run.")
OverwriteOpt = typer.Option(False, "--overwrite", help="Replace an existing store.")
DataDirOpt = typer.Option(None, "--data-dir", help="Directory holding the IDX files "
                          "[default: $PLAST_DATA, else ~/.cache/plast/data].")


def fail(message: str) -> None:
    # escape: messages name keys like rule.layers[0] and extras like plast[download];
    # one line, whatever the message quotes from the user's input
    message = " ".join(str(message).split())
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def abandon(exc: BaseException) -> None:
    """Mark runs this command left open failed and release their locks (only if an
    experiment was loaded at all)."""
    common = sys.modules.get("plastcli.experiments.common")
    if common is not None:
        common.abandon_open_runs(exc)


REFUSED_WRITES = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO)


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
            abandon(exc)
            fail(str(exc))
        except KeyboardInterrupt as exc:
            abandon(exc)
            err_console.print("[yellow]interrupted[/]: a store being written says 'failed: "
                              "interrupted' and how to continue")
            raise typer.Exit(130) from None
        except Terminated as exc:
            abandon(exc)
            err_console.print(f"[yellow]terminated[/] ({exc}): a store being written says "
                              "'failed: terminated' and how to continue")
            raise typer.Exit(exc.exit_code) from None
        except OSError as exc:
            if exc.errno not in REFUSED_WRITES:
                abandon(exc)
                raise
            # the machine refused a write (a full disk, a read-only or lost mount): one line
            abandon(exc)
            where = f"{exc.filename}: " if exc.filename else ""
            hint = ("; free some space and run the command again (a training run continues "
                    "with --resume)") if exc.errno in (errno.ENOSPC, errno.EDQUOT) else ""
            why = escape(f"{where}{exc.strerror or exc}{hint}")
            err_console.print(f"[bold red]error:[/] {why}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except BaseException as exc:
            if not isinstance(exc, typer.Exit | SystemExit):
                abandon(exc)
            raise

    return wrapper


def check_device(device: str | None) -> None:
    check_choice("--device", device, DEVICES)


def load_for(recipe: Path, kind: str, sets: list[str] | None, extra: list[str]):
    from plastcli.recipes import load_recipe

    return load_recipe(recipe, list(extra) + list(sets or []), expected=kind)


def run_experiment(kind: str, module_name: str, recipe: Path, set_, device, out, resume, overwrite,
         data_dir, shortcuts: dict):
    """Load and check the recipe and --out (before torch is imported: bad input fails in
    well under a second), run the experiment under a progress bar and print its result
    table; return (recipe, result)."""
    from plastcli.paths import check_store_out, default_out

    check_device(device)
    extra = [f"{key}={value}" for key, value in shortcuts.items() if value is not None]
    rec = load_for(recipe, kind, set_, extra)
    out = check_store_out(out or default_out(rec))
    from plastcli.engine.cores import start_probe

    start_probe()  # the free cores, measured while torch is imported
    module = importlib.import_module(f"plastcli.experiments.{module_name}")
    from plastcli.progress import RichReporter

    with RichReporter(err_console) as rep:
        res = module.run(rec, out, resume=resume, overwrite=overwrite, data_dir=data_dir,
                         device=device, reporter=rep)
    from plastcli.experiments.result_tables import TABLES

    print_result(TABLES[kind](rec, res))
    return rec, res


def print_result(t) -> None:
    """A :class:`~plastcli.experiments.result_tables.ResultTable`: the table on stdout (in
    parts that each fit the terminal, never a number cut short), its warnings on stderr,
    then the files it wrote."""
    from rich.table import Table

    from plastcli.experiments.result_tables import column_parts, fit_widths

    parts = column_parts(t, out_console.width)
    for k, cols in enumerate(parts):
        table = Table(title=escape(t.title) if k == 0 else None,
                      caption=escape(t.caption) or None if k == len(parts) - 1 else None)
        for i, w in zip(cols, fit_widths(t, cols, out_console.width), strict=True):
            table.add_column(escape(t.columns[i][0]), justify=t.columns[i][1], width=w)
        for row in t.rows:  # escaped: a cell may hold a list, e.g. [pseudo_grad, oja]
            table.add_row(*(escape(row[i]) for i in cols))
        out_console.print(table)
    for line in t.warnings:
        err_console.print(f"[yellow]{escape(line)}[/]", highlight=False)
    for f in t.files:
        out_console.print(f"wrote {f}", highlight=False)
