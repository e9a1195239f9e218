"""`plast sweep`: a user's own study, one store per grid point, on the reproduce backends.

Torch-free, like :mod:`plastcli.reproduce`, whose jobs, cache and backends it reuses: each
point is ``python -m plastcli <command> BASE --set ... --out DIR/pNNN.h5``, skipped when its
store is complete and current, resumed when it was killed. A sweep file::

    sweep: lr-study                 # the folder: RESULTS/sweeps/lr-study/
    base: ../recipes/bio.yaml       # the base recipe (relative to this file)
    set: [meta.episodes=100]        # optional: overrides for every point
    grid:                           # every combination, first key slowest
      meta.lr: [1.0e-3, 3.0e-3]
      conditions.1.grid.oja: [[1.0e-4], [1.0e-3]]
    seeds: 3                        # optional: population.seeds of every point

``DIR/sweep.json`` lists the points (store, overrides) so that ``plast show DIR`` can draw
the point x final-metrics table without the sweep file.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import yaml

from plastcli.errors import PlastError
from plastcli.reproduce import COMMANDS, Job, decide

KEYS = ("sweep", "base", "set", "grid", "seeds", "description")
MANIFEST = "sweep.json"


def _fail(path: Path, key: str, msg: str):
    raise PlastError(f"{path}: {key}: {msg}")


def read_sweep(path: Path) -> dict:
    """The sweep file as ``{name, base (Path), set [str], grid {key: [values]}, seeds}``;
    one PlastError line naming the file and key for anything wrong."""
    from plastcli.recipes import read_recipe_yaml

    raw = read_recipe_yaml(path)  # same checks: exists, UTF-8, YAML, a mapping
    for k in raw:
        if k not in KEYS:
            _fail(path, str(k), f"unknown key; allowed: {', '.join(KEYS)}")
    for k in ("sweep", "base", "grid"):
        if k not in raw:
            _fail(path, k, "missing (a sweep names itself, its base recipe and a grid)")
    name = raw["sweep"]
    if not isinstance(name, str) or not name or not all(c.isalnum() or c in "-_." for c in name):
        _fail(path, "sweep", f"a folder name of letters, digits, '-', '_' or '.', got {name!r}")
    base = (path.parent / str(raw["base"])).resolve()
    if not base.is_file():
        _fail(path, "base", f"recipe file not found: {base}")
    sets = raw.get("set") or []
    if not isinstance(sets, list) or not all(isinstance(s, str) and "=" in s for s in sets):
        _fail(path, "set", "a list of key=value strings, e.g. [meta.episodes=100]")
    grid = raw["grid"]
    if not isinstance(grid, dict) or not grid:
        _fail(path, "grid", "a mapping of recipe keys to lists of values, e.g. "
              "{meta.lr: [1.0e-3, 3.0e-3]}")
    for k, v in grid.items():
        if not isinstance(v, list) or not v:
            _fail(path, f"grid.{k}", f"a non-empty list of values, got {v!r}")
    seeds = raw.get("seeds")
    if seeds is not None and (isinstance(seeds, bool) or not isinstance(seeds, int)
                              or seeds < 1):
        _fail(path, "seeds", f"a whole number >= 1, got {seeds!r}")
    return {"name": name, "base": base, "set": list(sets), "grid": dict(grid), "seeds": seeds}


def _yaml_value(v) -> str:
    """A value as ``--set`` parses it back (YAML flow style, one line)."""
    return yaml.safe_dump(v, default_flow_style=True, width=10**6).strip().removesuffix("...")\
        .strip()


def points(sweep: dict) -> list[dict]:
    """Every grid combination ``{key: value}``, first key slowest."""
    keys = list(sweep["grid"])
    return [dict(zip(keys, combo, strict=True))
            for combo in itertools.product(*sweep["grid"].values())]


def plan(sweep: dict, results: Path) -> list[Job]:
    """One job per point: the base recipe with the sweep's and the point's overrides.
    Every point's recipe is loaded (and so checked) before anything runs."""
    from plastcli.recipes import load_recipe, read_recipe_yaml

    raw = read_recipe_yaml(sweep["base"])  # exists, UTF-8, YAML, a mapping: else one line
    command = raw.get("experiment")
    if command not in COMMANDS:
        raise PlastError(f"{sweep['base']}: experiment '{command}' cannot be swept; allowed: "
                         f"{', '.join(COMMANDS)}")
    folder = results / "sweeps" / sweep["name"]
    jobs = []
    for i, point in enumerate(points(sweep)):
        sets = [*sweep["set"], *(f"{k}={_yaml_value(v)}" for k, v in point.items())]
        if sweep["seeds"] is not None:
            sets.append(f"population.seeds={sweep['seeds']}")
        try:
            load_recipe(sweep["base"], sets)
        except PlastError as exc:
            raise PlastError(f"sweep point {i} ({_label(point)}): {exc}") from None
        rel = f"p{i:03d}"
        jobs.append(Job(sweep["base"], sweep["name"], rel, command, folder / f"{rel}.h5", sets,
                        folder / "logs" / f"{rel}.log"))
    return jobs


def _label(point: dict) -> str:
    return ", ".join(f"{k}={_yaml_value(v)}" for k, v in point.items())


def write_manifest(sweep: dict, jobs: list[Job]) -> Path:
    folder = jobs[0].store.parent
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / MANIFEST
    doc = {"sweep": sweep["name"], "base": str(sweep["base"]), "set": sweep["set"],
           "seeds": sweep["seeds"], "keys": list(sweep["grid"]),
           "points": [{"store": j.store.name, "values": p}
                      for j, p in zip(jobs, points(sweep), strict=True)]}
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1), encoding="utf-8")
    tmp.replace(out)
    return out


def run(path: Path, results: Path, n_jobs: int, backend: str, address: str | None,
        force: bool, console, seed_chunk: int | None = None) -> int:
    """Run every stale point, then print the summary. Exit code 1 when a point failed."""
    from plastcli.reproduce import check_backend, report_failures, run_live

    check_backend(backend, address, seed_chunk)
    sweep = read_sweep(path)
    jobs = plan(sweep, results)
    for j in jobs:
        decide(j, force)
    write_manifest(sweep, jobs)
    run_live(jobs, f"plast sweep {sweep['name']}: {len(jobs)} points", n_jobs, backend,
             address, seed_chunk, force, console)
    console.print(summary_table(jobs[0].store.parent))
    return report_failures(jobs, console)


# ------------------------------------------------------------------ the summary
def point_finals(store_path: Path) -> dict[str, float]:
    """A point's final metrics, each the median over its members: episodes/ metrics by
    :func:`plastcli.results.statistics.final_window`, curves/ accuracies by their last value;
    plus how many members diverged or collapsed. Empty for a missing store."""
    from plastcli.results.statistics import final_window
    from plastcli.results.store import read_store

    if not store_path.is_file():
        return {}
    try:
        s = read_store(store_path)
    except PlastError:  # not a store (or unreadable): the row says so, the others still show
        return {"status": "not a readable store"}  # type: ignore[dict-item]
    out: dict[str, float] = {}
    # online stores hold several conditions (BP, BP+Oja, ...): one column per condition
    names = s.arrays.get("members/condition_name")
    if names is None:
        groups = {"": slice(None)}
    else:
        from plastcli.results.store import text_values

        text = np.array(text_values(names))
        groups = {f" ({c})": text == c for c in dict.fromkeys(text)}
    for key, v in s.arrays.items():
        group, _, name = key.partition("/")
        if v.ndim != 2 or v.shape[1] == 0:
            continue
        if group == "episodes" and name in ("meta_accuracy", "meta_loss"):
            out[name] = float(np.nanmedian(final_window(v)))
        elif group == "curves" and "acc" in name:
            for label, rows in groups.items():
                out[name + label] = float(np.nanmedian(v[rows, -1]))
    for what in ("diverged", "collapsed"):
        if f"members/{what}_at" in s:
            out[what] = float((s[f"members/{what}_at"] >= 0).sum())
    out["status"] = s.status  # type: ignore[assignment]
    return out


def read_manifest(folder: Path) -> dict:
    """A sweep folder's sweep.json: ``sweep``, ``keys`` and ``points`` (store, values)."""
    manifest = folder / MANIFEST
    try:
        doc = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise PlastError(f"{folder}: not a sweep folder (no readable {MANIFEST})") from None
    points = doc.get("points") if isinstance(doc, dict) else None
    if not (isinstance(points, list) and isinstance(doc.get("keys"), list)
            and all(isinstance(p, dict) and isinstance(p.get("store"), str)
                    and isinstance(p.get("values"), dict) for p in points)):
        raise PlastError(f"{manifest}: not the manifest plast sweep writes (sweep, keys, and "
                         "points of store and values); run the sweep again to rewrite it")
    return doc


def point_stores(folder: Path) -> dict[str, Path]:
    """Each point's label (``key=value, ...``) -> its store, in the sweep's order."""
    doc = read_manifest(folder)
    return {_label(p["values"]): folder / p["store"] for p in doc["points"]}


def summary_table(folder: Path):
    """Point x final metrics for the sweep folder (from its sweep.json)."""
    from rich.markup import escape
    from rich.table import Table

    doc = read_manifest(folder)
    finals = [point_finals(folder / p["store"]) for p in doc["points"]]
    metrics = sorted({k for f in finals for k in f if k != "status"},
                     key=lambda k: (k in ("diverged", "collapsed"), k))
    t = Table(title=escape(f"sweep {doc.get('sweep', folder.name)}: final metrics per point "
                           "(median over members)"), title_justify="left")
    t.add_column("point")
    for k in doc["keys"]:
        t.add_column(escape(k), justify="right")
    for m in metrics:  # a condition's name is the user's: escaped
        t.add_column(escape(m), justify="right")
    t.add_column("status")
    for p, f in zip(doc["points"], finals, strict=True):
        cells = [_fmt(f.get(m)) if m not in ("diverged", "collapsed") else
                 (str(int(f[m])) if m in f else "") for m in metrics]
        # escaped: a value may be a list, [pseudo_grad, oja], which rich reads as markup
        t.add_row(escape(Path(p["store"]).stem),
                  *[escape(_yaml_value(p["values"].get(k))) for k in doc["keys"]],
                  *cells, escape(str(f.get("status", "missing"))))
    return t


def _fmt(v) -> str:
    return "" if v is None else f"{v:.4g}"
