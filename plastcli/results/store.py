"""The HDF5 result store: create, append, checkpoint, read.

Layout (ARCHITECTURE.md): root attributes for provenance and ``status``
(``running`` / ``complete`` / ``failed: ...``); ``/episodes/<metric>`` ``[P, E, ...]``
and ``/curves/<metric>`` ``[P, S, ...]`` resizable along axis 1; ``/analysis/...``
fixed arrays; ``/members/...`` per-member facts; ``/checkpoint/...`` resume state.

Writes never touch the store file in place: each write (or a block of writes in
:meth:`Store.transaction`) goes to a copy ``<store>.tmp`` that then replaces the store
with ``os.replace``. A reader holding the store open keeps reading the version it
opened and never blocks the writer (HDF5 locks only the file it opened, and the
writer's file is a new one); a run killed at any moment leaves the last complete
version, whose ``status`` still says ``running``. One writer per store is enforced by
:mod:`plastcli.lock`. Reading needs only h5py and numpy (no torch import here).
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from plastcli.errors import PlastError
from plastcli.results import labels

RUNNING, COMPLETE = "running", "complete"


def git_commit() -> str:
    """The commit of the plast checkout (with '+dirty' if it has uncommitted changes)."""
    here = Path(__file__).resolve().parents[1]  # the plastcli package
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                "plastcli"], cwd=here.parent, capture_output=True, text=True,
                               timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (sha or "unknown") + ("+dirty" if dirty else "")


def package_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("plast", "torch", "numpy", "h5py"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "not installed"
    return out


_to_attr = labels.to_attr  # flat lists natively, nested values as JSON


def text_array(strings) -> np.ndarray:
    """Per-member names ``[P]`` as fixed-length UTF-8 bytes (numpy's ``dtype="S"`` alone
    accepts only ASCII, and a recipe may name a condition 'θ2=1e-4')."""
    return np.array([str(s).encode("utf-8") for s in strings], dtype="S")


def text_values(array) -> list[str]:
    """:func:`text_array` read back: ``[P]`` bytes (or str) -> Python strings."""
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in array]


class Store:
    """Writer for one result file: every write replaces the file atomically."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._file: h5py.File | None = None  # the open temporary copy within a transaction

    @property
    def tmp_path(self) -> Path:
        """Where the next version of the store is written before it replaces the store."""
        return self.path.with_name(self.path.name + ".tmp")

    # ------------------------------------------------------------------ create / open
    @classmethod
    def create(cls, path: str | Path, attrs: dict[str, Any], overwrite: bool = False) -> Store:
        path = Path(path)
        if path.is_dir():
            raise PlastError(f"{path} is a directory, not a store file")
        if path.exists() and not overwrite:
            raise PlastError(f"{path} already exists; pass --resume to continue it or "
                             f"--overwrite to start again")
        path.parent.mkdir(parents=True, exist_ok=True)
        store = cls(path)
        with store._replacing(copy=False, mode="w") as f:
            f.attrs["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
            f.attrs["git_commit"] = git_commit()
            for k, v in package_versions().items():
                f.attrs[f"{k}_version"] = v
            for k, v in attrs.items():
                f.attrs[k] = _to_attr(v)
            f.attrs["status"] = RUNNING
        return store

    @contextmanager
    def transaction(self) -> Iterator[h5py.File]:
        """Group writes: they all land in the store at once, or (on any error, Ctrl-C or
        signal) not at all."""
        if self._file is not None:
            yield self._file
            return
        with self._replacing(copy=True, mode="a") as f:
            yield f

    @contextmanager
    def _replacing(self, copy: bool, mode: str) -> Iterator[h5py.File]:
        """Open ``<store>.tmp`` (a copy of the store when ``copy``), yield it, then move
        it over the store (fsynced first); remove it instead if the block fails."""
        tmp = self.tmp_path
        try:
            if copy:
                shutil.copyfile(self.path, tmp)
            # v108: HDF5 >= 1.8 formats, whose attributes may exceed 64 KiB (many seeds)
            libver = ("v108", "latest") if mode == "w" else None
            with h5py.File(tmp, mode, libver=libver) as f:
                self._file = f
                try:
                    yield f
                finally:
                    self._file = None
            _fsync(tmp)
            os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    # ------------------------------------------------------------------ writes
    def set_attrs(self, **attrs: Any) -> None:
        with self.transaction() as f:
            for k, v in attrs.items():
                f.attrs[k] = _to_attr(v)

    def set_status(self, status: str) -> None:
        self.set_attrs(status=status)

    def append(self, group: str, rows: list[dict[str, np.ndarray]]) -> None:
        """Append records (each ``{metric: [P, ...]}``) along axis 1 of ``/group/metric``."""
        if not rows:
            return
        with self.transaction() as f:
            g = f.require_group(group)
            labels.drop_scales(g)  # the group grows: its labels are written again at the end
            for key in rows[0]:
                block = np.stack([np.asarray(r[key]) for r in rows], axis=1)  # [P, n, ...]
                if key not in g:
                    maxshape = (block.shape[0], None, *block.shape[2:])
                    chunks = (block.shape[0], max(1, min(64, block.shape[1] * 8)),
                              *block.shape[2:])
                    g.create_dataset(key, data=block, maxshape=maxshape, chunks=chunks)
                else:
                    ds = g[key]
                    n = ds.shape[1]
                    ds.resize(n + block.shape[1], axis=1)
                    ds[:, n:] = block

    def truncate(self, group: str, n: int) -> None:
        """Cut every dataset of ``group`` to its first n entries along axis 1."""
        with self.transaction() as f:
            if group in f:
                labels.drop_scales(f[group])
                for ds in f[group].values():
                    if ds.shape[1] > n:
                        ds.resize(n, axis=1)

    def write_arrays(self, group: str, arrays: dict[str, np.ndarray], **attrs: Any) -> None:
        """(Re)write fixed arrays under ``/group``."""
        with self.transaction() as f:
            g = f.require_group(group)
            for k, v in arrays.items():
                if k in g:
                    del g[k]
                g.create_dataset(k, data=np.asarray(v))
            for k, v in attrs.items():
                g.attrs[k] = _to_attr(v)

    def checkpoint(self, state: dict[str, np.ndarray], **attrs: Any) -> None:
        self.write_arrays("checkpoint", state, **attrs)

    def read_checkpoint(self) -> dict[str, np.ndarray] | None:
        with open_for_reading(self.path) as f:
            if "checkpoint" not in f:
                return None
            return {k: np.asarray(v[()]) for k, v in f["checkpoint"].items()}


def _fsync(path: Path) -> None:
    """Make a written file durable before it replaces the store."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------- reading


def _lock_refused(exc: OSError) -> bool:
    """Whether h5py refused to open a file because another process holds its HDF5 lock."""
    text = str(exc).lower()  # HDF5: "unable to lock file, errno = 11" (not "sblock->...")
    return "unable to lock" in text or "file locking" in text or \
        getattr(exc, "errno", None) in (11, 35)  # EAGAIN/EWOULDBLOCK


def open_for_reading(path: str | Path) -> h5py.File:
    """Open a store read-only. A file another program holds open for writing (HDF5's
    file lock) is opened without taking the lock rather than refused."""
    path = Path(path)
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        if not _lock_refused(exc):
            raise PlastError(f"{path}: not a readable HDF5 store ({exc})") from None
    try:
        return h5py.File(path, "r", locking=False)
    except OSError as exc:
        if "truncated" in str(exc):
            raise PlastError(f"{path}: truncated (a partial copy or download?): "
                             f"{exc}") from None
        raise PlastError(f"{path}: another program holds it open for writing and it cannot "
                         f"be read now; try again when it has closed it") from None


class StoreData:
    """A store read into memory: ``attrs`` and ``arrays`` keyed 'group/name'."""

    def __init__(self, path: Path, attrs: dict[str, Any], arrays: dict[str, np.ndarray]):
        self.path, self.attrs, self.arrays = path, attrs, arrays

    @property
    def status(self) -> str:
        return str(self.attrs.get("status", "unknown"))

    @property
    def complete(self) -> bool:
        return self.status == COMPLETE

    def json_attr(self, key: str, default: Any = None) -> Any:
        """A list or mapping attribute, stored natively or (older stores) as JSON."""
        v = self.attrs.get(key)
        return default if v is None else labels.attr_list(v)

    def __getitem__(self, key: str) -> np.ndarray:
        try:
            return self.arrays[key]
        except KeyError:
            raise PlastError(f"{self.path}: no dataset '{key}' in this store") from None

    def __contains__(self, key: str) -> bool:
        return key in self.arrays

    def members(self, mask: np.ndarray) -> StoreData:
        """The same store restricted to some members (``mask`` ``[P]`` bool): every
        ``episodes/``, ``curves/`` and ``members/`` array sliced along its first axis."""
        cut = {k: (v[mask] if k.split("/", 1)[0] in ("episodes", "curves", "members") else v)
               for k, v in self.arrays.items()}
        return StoreData(self.path, dict(self.attrs), cut)


# The attributes every store has from its creation (plastcli/experiments/common.py): a file
# without them is not a plast store, whatever else it holds.
IDENTITY = ("plast_experiment", "recipe_yaml", "status")


def read_store(path: str | Path) -> StoreData:
    """Read every attribute and dataset (except checkpoints) of a store."""
    path = Path(path)
    if path.is_dir():
        raise PlastError(f"{path} is a directory, not a store file")
    if not path.is_file():
        raise PlastError(f"store not found: {path}")
    f = open_for_reading(path)
    try:
        with f:
            attrs, arrays = _read_all(f)
    except (OSError, RuntimeError, KeyError, ValueError) as exc:
        raise PlastError(f"{path}: could not be read ({type(exc).__name__}: {exc}); another "
                         f"program may be writing it") from None
    missing = [k for k in IDENTITY if k not in attrs]
    if missing:  # an HDF5 file, but not one plast wrote: never shown as a store
        raise PlastError(f"{path}: not a plast result store (an HDF5 file without the "
                         f"attribute{'s' * (len(missing) > 1)} {', '.join(missing)})")
    return StoreData(path, attrs, arrays)


def _read_all(f: h5py.File) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Root attributes (native list attributes as lists) and every dataset outside
    /checkpoint but the dimension scales (plastcli/results/labels.py)."""
    attrs = {k: (v.decode() if isinstance(v, bytes) else
                 labels.attr_list(v) if isinstance(v, np.ndarray) else v)
             for k, v in f.attrs.items()}
    arrays: dict[str, np.ndarray] = {}

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset) and not name.startswith("checkpoint") \
                and not labels.is_scale(obj):
            arrays[name] = obj[()]

    f.visititems(visit)
    return attrs, arrays


def upgrade(path: str | Path) -> str:
    """Label an older complete store in place (dimension scales, native list attributes;
    plastcli/results/labels.py), under its lock and as one atomic replacement. The data stay
    bit for bit. Returns one line saying what changed."""
    from plastcli.lock import store_lock

    st = read_store(path)  # a readable store file, or a PlastError naming the problem
    if not st.complete:
        raise PlastError(f"{path}: status is '{st.status}'; only a complete store is "
                         f"upgraded (a running one gets its labels when it completes)")
    with store_lock(path), Store(path).transaction() as f:
        native = labels.native_attrs(f)
        labels.label(f)
        groups = [g for g in f if g != "checkpoint" and isinstance(f[g], h5py.Group)]
    return f"{path}: labelled {', '.join(groups) or 'no group'}; {native} list attribute(s) " \
           f"made native"
