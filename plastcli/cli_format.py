"""How typer renders plast's help and usage errors: two adjustments, in one place.

- typer 0.29 prints a parameter's type after it in rich help ("--resume <bool>",
  "--out <path>", "STORE.h5... <list[Path]>") and arguments as {recipe} in the usage line;
  here a flag shows nothing, a value-taking option its metavar or a name (N, OUT), and an
  argument its name in capitals (RECIPE).
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


def _value_name(param) -> str:
    """What a value-taking option without a metavar shows after it: N for a count, X for
    a number, its own name for a path or text (--out OUT, --data-dir DATA_DIR)."""
    desc = getattr(param, "type_descriptor", None)
    kind = getattr(getattr(desc, "annotation", None), "__name__", "")
    if kind == "int":
        return "N"
    if kind == "float":
        return "X"
    return (param.name or "value").upper()


if hasattr(typer.core.TyperOption, "display_type_rich"):
    _option_type = typer.core.TyperOption.display_type_rich

    def _option_display(self, ctx):
        if self.metavar is not None:
            return _option_type(self, ctx)
        return "" if self.is_flag else _value_name(self)

    typer.core.TyperOption.display_type_rich = _option_display
if hasattr(typer.core.TyperArgument, "display_type_rich"):
    # the argument's name column already says what it is (RECIPE, STORE)
    typer.core.TyperArgument.display_type_rich = lambda self, ctx: ""
if hasattr(typer.core.TyperArgument, "_usage_display_name"):
    def _usage_name(self) -> str:
        """RECIPE, [STORE], STORE.h5...: not typer 0.29's {recipe}."""
        name = self.metavar or (self.name or "arg").upper()
        name = name if self.required else f"[{name}]" if not name.startswith("[") else name
        return name + ("..." if self.nargs != 1 and not name.endswith("...") else "")

    typer.core.TyperArgument._usage_display_name = _usage_name

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
