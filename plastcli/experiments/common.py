"""What every experiment shares: output paths, store creation/resume, provenance."""

from __future__ import annotations

import platform
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from plastcli import SIGN_CONVENTION, lock
from plastcli.data import Dataset, load_dataset
from plastcli.engine.inner import resolve_device
from plastcli.errors import PlastError
from plastcli.experiments.checkpoints import Checkpoints, checkpoint_path
from plastcli.paths import check_store_out, default_out  # noqa: F401  (default_out: API)
from plastcli.recipes import recipe_from_yaml, recipe_to_yaml
from plastcli.recipes.load import NOT_IN_RESULTS, drop_keys
from plastcli.results import labels
from plastcli.results.store import COMPLETE, Store, read_store
from plastcli.signals import Terminated

# Stores of the runs this process has opened and not yet finished or marked failed.
_OPEN: dict[Path, Store] = {}


def member_seeds(recipe: Any) -> list[int]:
    """Seeds of the population members: population.seed + 0..seeds-1."""
    return [recipe.population.seed + i for i in range(recipe.population.seeds)]


def _comparable(recipe_yaml: str, ignore: tuple[str, ...]) -> dict:
    """The recipe resolved through today's schema (so keys added since, like
    meta.gradient, take their defaults), minus the keys that may change on resume."""
    try:
        raw = yaml.safe_load(recipe_to_yaml(recipe_from_yaml(recipe_yaml)))
    except PlastError:
        try:
            raw = yaml.safe_load(recipe_yaml)
        except yaml.YAMLError:
            raw = None
        if not isinstance(raw, dict):
            raise PlastError("--resume: the store's recipe_yaml cannot be read as a recipe; "
                             "run without --resume (--overwrite replaces the store)") from None
    return drop_keys(raw, (*ignore, *NOT_IN_RESULTS))


def first_difference(a, b, prefix: str = "") -> str:
    """The first dotted key (list items as key.N) where two YAML trees differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in [*a, *(k for k in b if k not in a)]:
            if a.get(k) != b.get(k):
                return first_difference(a.get(k), b.get(k), f"{prefix}{k}.")
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            if x != y:
                return first_difference(x, y, f"{prefix}{i}.")
    return prefix.rstrip(".") or "<root>"


@dataclass
class Run:
    """An open run: its store, device, dataset and (on resume) checkpoint state."""

    store: Store
    device: torch.device
    state: dict[str, np.ndarray] | None
    resumed: bool


def open_run(recipe: Any, out: Path, datasets: list[Dataset], *, resume: bool, overwrite: bool,
             device_name: str | None = None, extra_attrs: dict | None = None,
             may_grow: tuple[str, ...] = ()) -> Run:
    """Take the store's lock, then create the store (status 'running') or reopen it for
    ``--resume``. The lock is held until :func:`finish` or :func:`mark_failed`.

    ``may_grow`` names recipe keys that may differ on resume (e.g. 'meta.episodes').
    """
    if resume and overwrite:
        raise PlastError("--resume continues a store and --overwrite replaces it; give one "
                         "of them")
    out = check_store_out(out)
    device = resolve_device(device_name or recipe.run.device)
    lock.acquire(out)
    try:
        Store(out).tmp_path.unlink(missing_ok=True)  # left by a writer killed mid-write
        if resume:
            run = _reopen(recipe, out, device, may_grow)
        else:
            if overwrite:  # an online run's checkpoint beside the old store is not this run's
                checkpoint_path(out).unlink(missing_ok=True)
            run = _create(recipe, out, datasets, device, overwrite, extra_attrs)
    except BaseException:
        lock.release(out)
        raise
    _OPEN[out] = run.store
    return run


def _reopen(recipe: Any, out: Path, device, may_grow: tuple[str, ...]) -> Run:
    """The ``--resume`` half of :func:`open_run`."""
    text = recipe_to_yaml(recipe)
    if not out.exists():
        raise PlastError(f"--resume: {out} does not exist; run without --resume first")
    stored = read_store(out)
    if stored.attrs["plast_experiment"] != recipe.experiment:
        raise PlastError(f"--resume: {out} holds a '{stored.attrs['plast_experiment']}' run, "
                         f"not a '{recipe.experiment}' one")
    if stored.complete and not may_grow:
        raise PlastError(f"--resume: {out} is already complete")
    old = stored.attrs.get("recipe_yaml", "")
    then, now = _comparable(old, may_grow), _comparable(text, may_grow)
    if then != now:
        key = first_difference(then, now)
        raise PlastError(f"--resume: the recipe differs from the one {out} was made with at "
                         f"'{key}' (only {', '.join(may_grow) or 'nothing'} may change)")
    held = max((v.shape[1] for k, v in stored.arrays.items()
                if k.startswith("episodes/") and v.ndim >= 2), default=0)
    after = recipe.meta.episodes if "meta.episodes" in may_grow else held
    if after < held:
        raise PlastError(f"--resume: meta.episodes = {after} is fewer than the {held} episodes "
                         f"{out} already holds; a resumed run may only extend it")
    store = Store(out)
    state = store.read_checkpoint()
    store.set_attrs(recipe_yaml=text, status="running")
    return Run(store, device, state, True)


def _create(recipe: Any, out: Path, datasets: list[Dataset], device, overwrite: bool,
            extra_attrs: dict | None) -> Run:
    """The new-store half of :func:`open_run`."""
    attrs = {
        "plast_experiment": recipe.experiment,
        "name": recipe.name,
        "paper": recipe.paper if recipe.paper is not None else "",
        "recipe_yaml": recipe_to_yaml(recipe),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "seeds": member_seeds(recipe),
        "sign_convention": SIGN_CONVENTION,
        "data_sha256": {k: v for d in datasets for k, v in d.sha256.items()},
        "datasets": [f"{d.name}:{d.split}" for d in datasets],
        # every store says what decides its rounding (meta-train also updates it on resume)
        "torch_threads": torch.get_num_threads(), **machine_attrs(),
    }
    attrs.update(extra_attrs or {})
    return Run(Store.create(out, attrs, overwrite=overwrite), device, None, False)


def online_checkpoints(r: Run, out: Path, every: int) -> Checkpoints:
    """The checkpoint units of an online run (``baseline``, ``init-study``, ``rnn-memory``),
    stamped with its store's creation time; a resumed run records the machine that writes
    the rest, as meta-train does."""
    created = str(read_store(out).attrs.get("created", ""))
    if r.resumed:
        r.store.set_attrs(device=str(r.device), torch_threads=torch.get_num_threads(),
                          **machine_attrs())
    return Checkpoints(out, r.resumed, every, created)


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo; platform.processor() elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_attrs() -> dict[str, str]:
    """What decides float rounding besides the code: CPU, torch build, BLAS, SIMD level."""
    config = torch.__config__.show()
    blas = re.search(r"BLAS_INFO=([^,\s]+)", config)
    simd = re.search(r"CPU capability usage: (\S+)", config)
    return {"cpu_model": cpu_model(), "torch_build": config.strip(),
            "blas": blas.group(1) if blas else "unknown",
            "cpu_capability": simd.group(1) if simd else "unknown"}


def _close(store: Store) -> None:
    """Forget an open run and release its lock."""
    if _OPEN.pop(store.path, None) is not None:
        lock.release(store.path)


def failure_status(exc: BaseException, hint: str) -> str:
    """'failed: interrupted; <hint>' (Ctrl-C), 'failed: terminated; <hint>' (SIGTERM,
    SIGHUP) or 'failed: <error>'."""
    if isinstance(exc, KeyboardInterrupt):
        return f"failed: interrupted; {hint}"
    if isinstance(exc, Terminated):
        return f"failed: terminated; {hint}"
    return f"failed: {type(exc).__name__}: {exc}"


def mark_failed(store: Store, exc: BaseException, hint: str) -> None:
    """Record why a run stopped (see :func:`failure_status`) and release the store's lock."""
    try:
        store.set_status(failure_status(exc, hint))
    except OSError:
        pass  # e.g. a full disk: keep the original error; the store says 'running'
    finally:
        _close(store)


def abandon_open_runs(exc: BaseException) -> None:
    """Mark every run still open in this process failed and release its lock (the CLI
    calls this when a command stops with an error outside a run's own handling)."""
    for store in list(_OPEN.values()):
        mark_failed(store, exc, "continue with --resume or start again with --overwrite")


def finish(store: Store, status: str = COMPLETE, **attrs: Any) -> None:
    """Write the final attributes and status in one replacement, remove an online run's
    checkpoint (the store now holds everything), then release the lock."""
    try:
        with store.transaction() as f:
            store.set_attrs(**attrs)
            store.set_status(status)
            if status == COMPLETE:  # a finished store names its axes (plastcli/results/labels.py)
                labels.label(f)
        if status == COMPLETE:
            checkpoint_path(store.path).unlink(missing_ok=True)
    finally:
        _close(store)


def load_recipe_dataset(dataset_spec, data_dir) -> Dataset:
    return load_dataset(dataset_spec.name, dataset_spec.split, data_dir,
                        dataset_spec.per_class_cap, dataset_spec.cap_seed)


CI_LEVEL, CI_RESAMPLES = 0.98, 500  # P2: 98% bootstrap CI over runs, 500 resamples


def split_attrs(ds: str, n_heldout: int, n_val: int, *, grid_samples: int, grid_seeds: int,
                searched: bool, item: str = "sample", per: str = "step",
                scope: str = "", runs: str = "runs") -> dict[str, str]:
    """Store attributes naming the three disjoint data sets of an online experiment
    (stream, grid selection, validation) and the confidence interval used."""
    selection = "none: every condition has a single grid point"
    if searched:
        selection = (f"held-out {n_heldout} images of the {ds} TRAIN split (generator_for(0, 0, "
                     f"'grid')), never streamed and separate from the validation set; grid points "
                     f"scored by mean accuracy at the end of {grid_samples} {item}s over "
                     f"{grid_seeds} seeds{scope}")
    return {
        "stream_split": f"{ds} train split minus the {n_heldout} held-out images; each member "
                        f"streams its own seeded permutation (one {item} per {per})",
        "validation_split": f"fixed {n_val}-image subset of the {ds} TEST split "
                            f"(generator_for(0, 0, 'val')); curves and tables use it",
        "selection_split": selection,
        "ci": f"{int(CI_LEVEL * 100)}% percentile bootstrap over {runs}, {CI_RESAMPLES} "
              f"resamples",
    }
