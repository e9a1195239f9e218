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

import importlib
import importlib.machinery
import importlib.util
import sys

import typer
import typer.core
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

def _patch_rich_utils(rich_utils) -> None:
    """Make typer's usage errors one line (typer calls ``rich_utils.rich_format_error``)."""
    rich_format_error = getattr(rich_utils, "rich_format_error", None)
    if rich_format_error is None:
        return

    def one_line_error(exc) -> None:
        if exc.__class__.__name__ == "NoArgsIsHelpError":
            return rich_format_error(exc)  # no arguments: the help was printed, as asked
        ctx = getattr(exc, "ctx", None)
        hint = f" (see: {ctx.command_path} --help)" if ctx is not None else ""
        message = " ".join(str(exc.format_message()).split())
        Console(stderr=True).print(f"[bold red]error:[/] {escape(message)}{escape(hint)}",
                                   highlight=False, soft_wrap=True)

    rich_utils.rich_format_error = one_line_error


def _patch_rich_utils_when_loaded() -> None:
    """typer imports ``typer.rich_utils`` (and with it rich's markdown, 0.06-0.1 s) only
    to print help or an error: load it lazily and patch it when it loads, not on every run."""
    name = "typer.rich_utils"
    spec = None if name in sys.modules else importlib.util.find_spec(name)
    if spec is None or not isinstance(spec.loader, importlib.machinery.SourceFileLoader):
        _patch_rich_utils(importlib.import_module(name))  # loaded, or an unusual loader
        return

    class PatchOnLoad(type(spec.loader)):
        def exec_module(self, module):
            super().exec_module(module)
            _patch_rich_utils(module)

    spec.loader = importlib.util.LazyLoader(PatchOnLoad(spec.loader.name, spec.loader.path))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = typer.rich_utils = module
    spec.loader.exec_module(module)  # lazily: the module runs on its first attribute access


_patch_rich_utils_when_loaded()
