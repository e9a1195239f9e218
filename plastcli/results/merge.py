"""Merge meta-train stores of consecutive seed chunks into one store (h5py only).

`plast reproduce --backend ray --seed-chunk N` runs a big meta-train population as several
Ray tasks, each a complete store for seeds ``seed + k*N .. seed + (k+1)*N - 1``; the driver
then merges them here. Members are independent, so the merged store holds what one run of
all seeds gives (up to float rounding: a population's size can change BLAS blocking), and it
carries the full recipe, so that the cache, ``--resume`` (more episodes) and every figure
treat it as that one run. Every ``/episodes``, ``/members`` and ``/checkpoint`` array is
concatenated along its member axis (axis 0); the 0-d checkpoint entries (the episode) must
agree.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np

from plastcli.errors import PlastError
from plastcli.results import labels
from plastcli.results.store import COMPLETE, _fsync

MEMBER_GROUPS = ("episodes", "members", "checkpoint")
SUMMED = ("diverged_members", "collapsed_members")
# Where each chunk ran: the merged store keeps the first chunk's machine attributes, and
# these per chunk (chunks from different CPUs or commits round differently).
PROVENANCE = ("cpu_model", "cpu_capability", "git_commit", "torch_threads", "created", "engine",
              "engine_threads", "processes")


def merge_seed_chunks(parts: list[Path], out: Path, recipe_yaml: str) -> None:
    """Write ``out`` (atomically) from the complete chunk stores ``parts``, in seed order.

    ``recipe_yaml`` is the resolved recipe of the whole population (stored as the merged
    store's ``recipe_yaml``)."""
    if not parts:
        raise PlastError(f"{out}: no seed chunks to merge")
    files = [h5py.File(p, "r") for p in parts]
    try:
        for p, f in zip(parts, files, strict=True):
            if str(f.attrs.get("status")) != COMPLETE:
                raise PlastError(f"{p}: seed chunk is not complete ({f.attrs.get('status')})")
            if str(f.attrs.get("plast_experiment")) != "meta-train":
                raise PlastError(f"{p}: only meta-train stores are merged by seed")
            if labels.attr_list(f.attrs.get("grid_keys", "[]")):
                raise PlastError(f"{p}: a population.grid run is not split by seed")
            extra = set(f) - set(MEMBER_GROUPS)
            if extra:
                raise PlastError(f"{p}: unexpected group(s) {sorted(extra)} in a meta-train store")
            # chunks written by different plast versions may hold different arrays (e.g. one
            # without collapse detection): merging them would silently drop some
            if _arrays(f) != _arrays(files[0]):
                diff = sorted(_arrays(f) ^ _arrays(files[0]))
                raise PlastError(f"{p}: seed chunk holds other arrays than {parts[0]} "
                                 f"({', '.join(diff[:4])}{', ...' if len(diff) > 4 else ''}); "
                                 f"rerun the older chunk with this plast")
        tmp = out.with_name(out.name + ".tmp")
        with h5py.File(tmp, "w", libver=("v108", "latest")) as dst:
            for k, v in files[0].attrs.items():
                dst.attrs[k] = v
            chunks = [[int(s) for s in labels.attr_list(f.attrs["seeds"])] for f in files]
            dst.attrs["seeds"] = labels.to_attr([s for c in chunks for s in c])
            dst.attrs["recipe_yaml"] = recipe_yaml
            dst.attrs["seed_chunks"] = labels.to_attr(chunks)  # nested: JSON
            dst.attrs["seed_chunk_provenance"] = labels.to_attr([
                {k: str(f.attrs[k]) for k in PROVENANCE if k in f.attrs} for f in files])
            for k in SUMMED:
                if k in files[0].attrs:
                    dst.attrs[k] = int(sum(int(f.attrs[k]) for f in files))
            for group in MEMBER_GROUPS:
                if group not in files[0]:
                    continue
                g = dst.create_group(group)
                for k, v in files[0][group].attrs.items():
                    g.attrs[k] = v
                for name, ds in files[0][group].items():
                    if not labels.is_scale(ds):  # the merged store is labelled anew
                        _merge_dataset(g, name, [f[group][name] for f in files], parts, group)
            labels.label(dst)
        _fsync(tmp)
        os.replace(tmp, out)
    finally:
        for f in files:
            f.close()


def _arrays(f: h5py.File) -> set[str]:
    """The data arrays of a store's member groups (dimension scales left out)."""
    return {f"{g}/{name}" for g in MEMBER_GROUPS if g in f for name, ds in f[g].items()
            if not labels.is_scale(ds)}


def _merge_dataset(g: h5py.Group, name: str, sources: list, parts: list[Path],
                   group: str) -> None:
    arrays = [np.asarray(ds[()]) for ds in sources]
    if arrays[0].ndim == 0:  # e.g. the checkpoint's episode: one value for all chunks
        if any(not np.array_equal(a, arrays[0]) for a in arrays):
            raise PlastError(f"{parts[0].parent}: seed chunks disagree on {group}/{name} "
                             f"({[a.item() for a in arrays]})")
        g.create_dataset(name, data=arrays[0])
        return
    if any(a.shape[1:] != arrays[0].shape[1:] for a in arrays):
        raise PlastError(f"{parts[0].parent}: seed chunks disagree on the shape of "
                         f"{group}/{name} ({[a.shape for a in arrays]})")
    data = np.concatenate(arrays, axis=0)
    if group == "episodes":  # stays resizable along episodes, so --resume can extend it
        g.create_dataset(name, data=data, maxshape=(data.shape[0], None, *data.shape[2:]),
                         chunks=(data.shape[0], max(1, min(64, data.shape[1])),
                                 *data.shape[2:]) if data.shape[1] else True)
    else:
        g.create_dataset(name, data=data)
