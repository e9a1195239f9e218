"""Do two commits give the same numbers? Tiny runs of every committed recipe, bit for bit.

    PLAST_DATA=../shared/data python tools/same_numbers.py --base REV [RECIPE ...] [--jobs 2]
        [--threads 2 --set population.seeds=8]

For each recipe (default: every experiment recipe under recipes/), a tiny version (a few
episodes, samples and seeds; the recipe's own network, rule and grid otherwise; see TINY)
runs once with the code at ``--base`` (a temporary git worktree) and once with the working
tree, both with one thread, and every dataset of the two stores is compared (timings and
the recipe text aside). A refactor that says "every number stays the same" shows it here;
a deliberate change shows where and by how much. Exit 1 if any store differs or a run
fails in one tree only.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
ONLINE = ["--set", "online.val_size=50", "--set", "selection.heldout=100", "--set",
          "selection.samples=20", "--set", "selection.seeds=1", "--set", "population.seeds=2"]
# experiment kind -> the overrides that make a recipe tiny
TINY = {
    "meta-train": ["--episodes", "2", "--set", "population.seeds=2"],
    "ablate-layers": ["--episodes", "2", "--seeds", "1", "--set", "ablation.burn_in=1"],
    "baseline": ["--samples", "40", "--set", "online.eval_every=20", "--set",
                 "online.update_norm_samples=2", "--set", "online.recon_images=2", *ONLINE],
    "rnn-memory": ["--samples", "30", "--set", "online.eval_every=10", "--set", "task.T=6",
                   "--set", "task.present=2", "--set", "network.hidden=[8]", *ONLINE],
}
TINY["init-study"] = TINY["baseline"]
SKIP = ("seconds", "wall", "elapsed")  # timings differ run to run


def run(tree: Path, recipe: Path, out: Path, extra: list[str], threads: int) -> str | None:
    """Run ``recipe`` tiny (then ``extra`` arguments) with the code in ``tree`` on
    ``threads`` threads (2: a meta-train population of 8 or more splits across two
    processes); None if it worked, else the error."""
    kind = yaml.safe_load(recipe.read_text())["experiment"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "PYTHONPATH": str(tree), "MPLBACKEND": "Agg"}
    done = subprocess.run([sys.executable, "-m", "plastcli", kind, str(recipe.resolve()),
                           "--out", str(out), "--overwrite", "--device", "cpu", *TINY[kind],
                           *extra], cwd=tree, env=env, capture_output=True, text=True)
    return None if done.returncode == 0 else (done.stderr.strip().splitlines() or ["?"])[-1]


def datasets(path: Path) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda k, o: out.__setitem__(k, o[()])
                     if isinstance(o, h5py.Dataset) and not any(s in k for s in SKIP) else None)
    return out


def compare(a: Path, b: Path) -> str:
    """'' if every dataset is equal (bits, dtype, shape), else what differs."""
    da, db = datasets(a), datasets(b)
    notes = [f"only in base: {k}" for k in sorted(set(da) - set(db))]
    notes += [f"only here: {k}" for k in sorted(set(db) - set(da))]
    for k in sorted(set(da) & set(db)):
        x, y = da[k], db[k]
        if x.dtype != y.dtype or x.shape != y.shape:
            notes.append(f"{k}: {x.dtype}{x.shape} vs {y.dtype}{y.shape}")
        elif x.dtype.kind in "fc":
            if not np.array_equal(x, y, equal_nan=True):
                rel = np.nanmax(np.abs(x - y)) / max(float(np.nanmax(np.abs(x))), 1e-30)
                notes.append(f"{k}: max |diff| / max |value| {rel:.2g}")
        elif not np.array_equal(x, y):
            notes.append(f"{k}: differs")
    return "; ".join(notes)


def check(base: Path, recipe: Path, work: Path, extra: list[str], threads: int
          ) -> tuple[str, bool]:
    a, b = work / f"{recipe.stem}.base.h5", work / f"{recipe.stem}.here.h5"
    ea, eb = run(base, recipe, a, extra, threads), run(REPO, recipe, b, extra, threads)
    if ea or eb:
        same_error = ea == eb
        return (f"both fail: {ea}" if same_error else f"base: {ea or 'ok'}; here: {eb or 'ok'}",
                not same_error)
    diff = compare(a, b)
    return (diff, True) if diff else ("bit-identical", False)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("recipes", nargs="*", type=Path)
    ap.add_argument("--base", required=True, help="the commit to compare against")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="threads per run (default 1)")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="an override added to every run, e.g. population.seeds=8")
    args = ap.parse_args()
    recipes = args.recipes or sorted(
        p for p in (REPO / "recipes").rglob("*.yaml")
        if (yaml.safe_load(p.read_text()) or {}).get("experiment") in TINY)
    here = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                          capture_output=True, text=True).stdout.strip()
    extra = [a for kv in args.sets for a in ("--set", kv)]
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(base),
                        args.base], check=True, capture_output=True)
        try:
            print(f"base {args.base}, here {here}: {len(recipes)} recipes, tiny runs",
                  flush=True)
            with ThreadPoolExecutor(args.jobs) as pool:
                for recipe, (verdict, bad) in zip(recipes, pool.map(
                        lambda r: check(base, r, Path(tmp), extra, args.threads), recipes),
                        strict=True):
                    failed |= bad
                    print(f"{recipe.relative_to(REPO) if recipe.is_absolute() else recipe}: "
                          f"{verdict}", flush=True)
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force",
                            str(base)], capture_output=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
