"""Dimension labels for a store: HDF5 dimension scales that netCDF readers understand.

Every array of a labelled store names its axes (``member``, ``episode``, ``term``,
``layer``, ...) through HDF5 dimension scales, and each named axis carries its
coordinates (term names, layer names ``W01``..., indices otherwise), so that

    xarray.open_dataset(store, engine="h5netcdf", group="episodes").sel(term="oja")

works. A scale is a dataset of its group named after its dimension; readers of the store
skip scales (:func:`is_scale`). Labels are written when a run completes
(:func:`plastcli.experiments.common.finish`) and by ``plast store upgrade`` for older
stores. Torch-free; needs only h5py and numpy.
"""

from __future__ import annotations

import json
from typing import Any

import h5py
import numpy as np

# Groups whose arrays are indexed by member along axis 0 (when that axis has P entries).
MEMBER_GROUPS = ("episodes", "curves", "members", "analysis")
# The axis after the member axis, by group: one entry per episode / evaluation point.
SECOND_AXIS = {"episodes": "episode", "curves": "eval"}
# Trailing axes by array name (after member and, where the group has one, the second axis).
TRAILING = {
    "theta": ("term",), "theta_feedback": ("feedback_term",),
    "angles": ("layer",), "orthonormality_error": ("layer",),
    "update_norm": ("layer",), "update_norm_bp": ("layer",),
    "activation_norm": ("hidden_layer",), "reconstruction_error": ("hidden_layer",),
    "hidden_norm": ("step",), "added_layers": ("layer",), "mask": ("layer", "pool_term"),
    "wh_singular_before": ("singular_value",), "wh_singular_after": ("singular_value",),
    "recon_images": ("recon_image", "recon_depth", "pixel"), "recon_inputs": ("recon_image",
                                                                             "pixel"),
    "recon_labels": ("recon_image",),
}
# stats/<metric>_{mean,lo,hi}: [condition, eval, ...] as the curve they summarise
STATS_SUFFIXES = ("_mean", "_lo", "_hi")


def is_scale(obj: Any) -> bool:
    """Whether an h5py object is a dimension scale (a coordinate, not a result)."""
    return isinstance(obj, h5py.Dataset) and h5py.h5ds.is_scale(obj.id)


def attr_list(value: Any) -> Any:
    """A list attribute as Python values, whether stored natively (an array) or, as in
    older stores, as a JSON string; other values unchanged."""
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    if isinstance(value, np.ndarray):
        return [v.decode() if isinstance(v, bytes) else v for v in value.tolist()]
    return value


def to_attr(value: Any) -> Any:
    """A value as an HDF5 attribute: flat lists of strings or numbers natively (an array;
    an empty list as an empty string array), anything nested as JSON."""
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, dict):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        items = list(value)
        if not items:
            return np.array([], dtype=h5py.string_dtype())
        if all(isinstance(v, str) for v in items):
            return np.array(items, dtype=h5py.string_dtype())
        if all(isinstance(v, bool) for v in items):
            return np.array(items, dtype=bool)
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in items):
            return np.array(items)
        return json.dumps(items)
    return value


def _member_count(f: h5py.File) -> int | None:
    if "members/seed" in f:
        return int(f["members/seed"].shape[0])
    for group in ("episodes", "curves"):
        if group in f:
            for ds in f[group].values():
                if isinstance(ds, h5py.Dataset) and not is_scale(ds) and ds.ndim:
                    return int(ds.shape[0])
    return None


def dimension_names(group: str, name: str, shape: tuple[int, ...], members: int | None
                    ) -> list[str]:
    """The axis names of ``/group/name`` with ``shape``; an axis without a known meaning
    gets ``<name>_dim<i>``, a name of its own."""
    dims: list[str | None] = [None] * len(shape)
    lead: list[str] = []
    metric = name
    if group == "stats":
        metric = next((name[: -len(s)] for s in STATS_SUFFIXES if name.endswith(s)), name)
        lead = ["condition", "eval"]
    elif group == "grid":
        lead = ["grid_member" if name.startswith("member_") else
                "grid_point" if name.startswith("point_") else "best"]
    elif group in MEMBER_GROUPS and shape and shape[0] == members:
        lead = ["member"] + ([SECOND_AXIS[group]] if group in SECOND_AXIS else [])
    for i, d in enumerate(lead[: len(shape)]):
        dims[i] = d
    rest = TRAILING.get(metric, ())
    start = len([d for d in dims if d is not None])
    if group == "grid" and metric.endswith("theta"):
        rest = ("term",)
    for i, d in enumerate(rest):
        if start + i < len(shape):
            dims[start + i] = d
    if metric.startswith("pca_cumvar_") and len(shape) == 2:  # [member, component]
        dims[1] = "component_" + metric.removeprefix("pca_cumvar_")
    return [d if d is not None else f"{name}_dim{i}" for i, d in enumerate(dims)]


def _layer_names(n: int) -> list[str]:
    return [f"W{i}{i + 1}" for i in range(n)]


def coordinates(dim: str, size: int, attrs: dict[str, Any]) -> np.ndarray:
    """What a dimension's scale holds: names where the store has them, else 0..size-1."""
    names: list | None = None
    if dim == "term":
        names = attr_list(attrs.get("term_names"))
    elif dim == "feedback_term":
        names = attr_list(attrs.get("feedback_term_names"))
    elif dim == "layer":
        names = attr_list(attrs.get("layer_names")) or _layer_names(size)
    elif dim == "hidden_layer":
        names = [f"y{i + 1}" for i in range(size)]
    elif dim == "condition":
        names = attr_list(attrs.get("condition_names"))
    if isinstance(names, list) and len(names) == size and all(isinstance(n, str)
                                                              for n in names):
        return np.array(names, dtype=h5py.string_dtype())
    return np.arange(size, dtype=np.int64)


def drop_scales(g: h5py.Group) -> None:
    """Remove a group's dimension scales (before it grows; :func:`label` writes new ones)."""
    if not any(is_scale(ds) for ds in g.values()):
        return
    for ds in g.values():  # detach first: a scale still attached cannot be deleted cleanly
        if isinstance(ds, h5py.Dataset) and not is_scale(ds):
            for i, dim in enumerate(ds.dims):
                for scale in list(dim.values()):
                    ds.dims[i].detach_scale(scale)
    for key in [k for k, ds in g.items() if is_scale(ds)]:
        del g[key]


def label(f: h5py.File) -> None:
    """(Re)write the dimension scales of every result group of an open, writable store.
    Idempotent: old scales are removed first, so a store that grew gets them again."""
    attrs = {k: f.attrs[k] for k in f.attrs}
    members = _member_count(f)
    for group in f:
        g = f[group]
        if group == "checkpoint" or not isinstance(g, h5py.Group):
            continue
        drop_scales(g)
        arrays = {k: ds for k, ds in g.items() if isinstance(ds, h5py.Dataset) and ds.ndim}
        named = {k: dimension_names(group, k, ds.shape, members) for k, ds in arrays.items()}
        sizes: dict[str, int] = {}
        for k, dims in named.items():  # one size per name in a group, else a name of its own
            for i, d in enumerate(dims):
                n = arrays[k].shape[i]
                if d in arrays or sizes.get(d, n) != n:
                    d = dims[i] = f"{k}_dim{i}"
                sizes.setdefault(d, n)
        for d, n in sizes.items():
            g.create_dataset(d, data=coordinates(d, n, attrs))
            g[d].make_scale(d)
        for k, dims in named.items():
            for i, d in enumerate(dims):
                arrays[k].dims[i].attach_scale(g[d])
                arrays[k].dims[i].label = d


def native_attrs(f: h5py.File) -> int:
    """Rewrite an older store's JSON list attributes as native arrays; the count changed."""
    changed = 0
    for obj in (f, *(g for g in f.values() if isinstance(g, h5py.Group))):
        for k in list(obj.attrs):
            v = obj.attrs[k]
            if isinstance(v, bytes):
                v = v.decode()
            if isinstance(v, str) and v.startswith("["):
                parsed = attr_list(v)
                new = to_attr(parsed) if isinstance(parsed, list) else v
                if not isinstance(new, str):
                    obj.attrs[k] = new
                    changed += 1
    return changed
