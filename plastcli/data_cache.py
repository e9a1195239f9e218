"""Decoded data sets cached as uncompressed ``.npz`` files, so that a run does not gunzip,
transpose and cap its IDX files on every start (a 1-episode meta-train run starts 1.15x
faster warm than cold; CHANGELOG, 2026-12-02).

A cache entry is keyed by the caller (data set, split, cap and the sha256 of the source
files) and carries the sha256 of its own arrays, checked on every load: a truncated or
altered entry is rebuilt, never used. [choice] The cache lives in the per-user cache
directory (``$PLAST_CACHE``, else ``$XDG_CACHE_HOME/plast/decoded``), not beside the data,
so that a shared, read-only data folder stays untouched; a cache that cannot be written is
no error (the data are decoded each time, as before).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

CACHE_ENV = "PLAST_CACHE"


def cache_dir() -> Path:
    """``$PLAST_CACHE``, else ``${XDG_CACHE_HOME:-~/.cache}/plast/decoded``. A
    ``$PLAST_CACHE`` that is (or lies under) a file is a one-line PlastError: the user asked
    for it; the default that cannot be made (HOME=/dev/null in a sandbox) or a read-only
    cache only goes unused."""
    if not os.environ.get(CACHE_ENV):
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        return Path(base) / "plast" / "decoded"
    path = top = Path(os.environ[CACHE_ENV]).expanduser()
    while not os.path.lexists(top) and top != top.parent:
        top = top.parent
    if not top.is_dir():
        from plastcli.errors import PlastError

        raise PlastError(f"{CACHE_ENV}={path}: the cache folder cannot be made there ({top} "
                         "is a file, not a directory)")
    return path


def digest(arrays: dict[str, np.ndarray]) -> str:
    """sha256 over the arrays' names, dtypes, shapes and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{a.dtype.str}:{a.shape};".encode())
        h.update(a.data)
    return h.hexdigest()


def _load(path: Path) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    stored = arrays.pop("_sha256", None)
    if stored is None or str(stored) != digest(arrays):
        return None
    return arrays


def cached_arrays(key: str, build: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The arrays cached under ``key``, or ``build()``'s, written to the cache for next time."""
    path = cache_dir() / f"{key}.npz"
    if path.is_file():
        arrays = _load(path)
        if arrays is not None:
            return arrays
    arrays = build()
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, _sha256=np.array(digest(arrays)), **arrays)
        os.replace(tmp, path)  # a reader sees the old entry or the whole new one
    except OSError:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
    return arrays
