"""How typer renders plast's help and usage errors: two adjustments, in one place.

- typer 0.29 prints a parameter's type after it in rich help ("--resume <bool>",
  "STORE.h5... <list[Path]>"); a flag takes no value and a parameter with its own metavar
  already says what it takes, so neither shows a type.
- A usage error (an unknown option, a missing argument) is one red line and exit 2, as every
  other bad input is, instead of a usage line, a hint and a boxed panel.

``tests/test_cli_help.py`` checks both on every command.
"""

from __future__ import annotations

import typer
import typer.core
import typer.rich_utils
from rich.console import Console
from rich.markup import escape

if hasattr(typer.core.TyperOption, "display_type_rich"):
    _option_type = typer.core.TyperOption.display_type_rich
    typer.core.TyperOption.display_type_rich = (
        lambda self, ctx: "" if self.is_flag and self.metavar is None
        else _option_type(self, ctx))
if hasattr(typer.core.TyperArgument, "display_type_rich"):
    _argument_type = typer.core.TyperArgument.display_type_rich
    typer.core.TyperArgument.display_type_rich = (
        lambda self, ctx: "" if self.metavar is not None else _argument_type(self, ctx))

_rich_format_error = getattr(typer.rich_utils, "rich_format_error", None)


def _one_line_error(exc) -> None:
    if exc.__class__.__name__ == "NoArgsIsHelpError" and _rich_format_error is not None:
        return _rich_format_error(exc)  # no arguments: the help was printed, as asked
    ctx = getattr(exc, "ctx", None)
    hint = f" (see: {ctx.command_path} --help)" if ctx is not None else ""
    message = " ".join(str(exc.format_message()).split())
    Console(stderr=True).print(f"[bold red]error:[/] {escape(message)}{escape(hint)}",
                               highlight=False, soft_wrap=True)


if _rich_format_error is not None:
    typer.rich_utils.rich_format_error = _one_line_error
