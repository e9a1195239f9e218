"""Output paths: the default store path and the checks that ``--out`` can be written.

These checks need no torch, so the CLI runs them with the recipe's validation, before
any data is loaded or any file is written.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from plastcli.errors import PlastError


def default_out(recipe: Any, results_dir: str | Path = "results") -> Path:
    """results/<paper>/<name>.h5 (or results/<name>.h5 for a recipe without a paper)."""
    sub = str(recipe.paper) if getattr(recipe, "paper", None) else ""
    name = str(recipe.name)
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        raise PlastError(f"recipe name '{name}' cannot name a store file (no '/', '\\', "
                         f"'.' or '..'); give --out, or a plain name")
    return Path(results_dir) / sub / f"{name}.h5"


def _nearest_existing(path: Path) -> Path:
    """The deepest ancestor of ``path`` (or path itself) that exists."""
    path = Path(os.path.abspath(path))
    while not os.path.lexists(path) and path != path.parent:
        path = path.parent
    return path


def _check_parents(path: Path, option: str) -> None:
    """The folders above ``path`` must be folders (or not exist yet) and writable."""
    top = _nearest_existing(path.parent)
    if not top.is_dir():
        raise PlastError(f"{option} {path}: {top} is a file, not a directory")
    if not os.access(top, os.W_OK | os.X_OK):
        raise PlastError(f"{option} {path}: cannot write in {top} (permission denied)")


def check_store_out(out: str | Path, option: str = "--out") -> Path:
    """``out`` must be a file path whose folder exists or can be made (not a directory,
    not under a regular file, not in a read-only folder); return it as a Path."""
    out = Path(out)
    if "\0" in str(out):
        raise PlastError(f"{option} {out!r}: a path cannot contain a NUL character")
    if out.is_dir():
        raise PlastError(f"{option} {out} is a directory; give a store file such as "
                         f"{out / 'name.h5'}")
    if os.path.lexists(out) and not out.is_file():
        raise PlastError(f"{option} {out} exists and is not a regular file")
    _check_parents(out, option)
    return out


def make_dirs(folder: Path) -> list[Path]:
    """Create ``folder`` and the missing directories above it; return the ones made,
    deepest first (for :func:`remove_empty`)."""
    missing = []
    while not os.path.lexists(folder) and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    for d in reversed(missing):
        _undo_on_error(missing, f"cannot create the directory {d}", d.mkdir)
    return missing


def _undo_on_error(made: list[Path], what: str, action) -> None:
    """Run ``action()``; on OSError remove the directories made so far and raise one line."""
    try:
        action()
    except OSError as exc:
        remove_empty(made)
        raise PlastError(f"{what}: {exc.strerror or exc}") from None


def remove_empty(folders: list[Path]) -> None:
    """Remove directories a refused command made, deepest first, while they are empty."""
    for d in folders:
        try:
            d.rmdir()
        except OSError:
            return


def check_out_dir(folder: str | Path, option: str = "--out") -> Path:
    """``folder`` must be a directory, or one that can be made (not a file, not under one,
    not in a read-only place); a one-line PlastError otherwise. Creates nothing."""
    folder = Path(folder)
    if "\0" in str(folder):
        raise PlastError(f"{option} {folder!r}: a path cannot contain a NUL character")
    if os.path.lexists(folder) and not folder.is_dir():
        raise PlastError(f"{option} {folder} is a file, not a directory")
    top = _nearest_existing(folder)  # the folder itself when it exists, else the deepest above
    if not top.is_dir():
        raise PlastError(f"{option} {folder}: {top} is a file, not a directory")
    if not os.access(top, os.W_OK | os.X_OK):
        raise PlastError(f"{option} {folder}: cannot write in {top} (permission denied)")
    return folder


def ensure_out_dir(folder: str | Path, option: str = "--out") -> list[Path]:
    """Create the output directory ``folder`` if needed and check that files can be
    written in it (a one-line PlastError otherwise); return the directories made."""
    folder = check_out_dir(folder, option)
    made = make_dirs(folder)
    probe = folder / f".plast-write-test-{os.getpid()}"

    def touch_and_remove() -> None:
        probe.touch()
        probe.unlink()

    _undo_on_error(made, f"{option} {folder}: cannot write there", touch_and_remove)
    return made
