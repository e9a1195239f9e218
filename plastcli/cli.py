"""The ``plast`` command line: parse, load the recipe, call the experiment, print.

Science lives in the engine and experiment modules; the commands are in cli_train (the
experiments) and cli_results (show, figures, reproduce, sweep, recipe, store, data), what
they share in cli_common. Any :class:`PlastError` becomes one red line on stderr and exit 2.
"""

from __future__ import annotations

import typer

# registration order is the order --help lists the commands in: the experiments first
import plastcli.cli_train  # noqa: F401

# isort: split
import plastcli.cli_results  # noqa: F401
from plastcli import __version__
from plastcli.cli_common import EXPERIMENTS, app, out_console  # noqa: F401  (the interface)
from plastcli.cli_results import FIGURES_DRAWN  # noqa: F401


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
