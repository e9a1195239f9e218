"""Run-to-first-episode and run-to-exit of ``plast meta-train``, two checkouts side by side.

    python bench/bench_startup.py [--against DIR] [--rounds K] [--recipe R]

Each round runs ``python -m plastcli meta-train RECIPE --episodes 1`` (one seed, one thread)
from this checkout and, with ``--against``, from DIR (another checkout of plast, e.g. a
``git worktree`` of an older commit), in alternating order; prints when the first
episode's progress line came and when the process ended, per run, with medians. The data
come from their cache and the kernel from its build cache (a first run fills both).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def one_run(checkout: Path, recipe: str, out: Path) -> tuple[float, float]:
    env = {**os.environ, "PYTHONPATH": str(checkout), "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-m", "plastcli", "meta-train", recipe, "--episodes",
                          "1", "--set", "population.seeds=1", "--out", str(out), "--overwrite"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                         cwd=checkout)
    first = None
    for line in p.stdout:
        if first is None and "1/1" in line:
            first = time.perf_counter() - t0
    if p.wait() or first is None:
        raise SystemExit(f"{checkout}: plast meta-train failed (exit {p.returncode})")
    return first, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--against", type=Path, help="another plast checkout to alternate with")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--recipe", default="recipes/bio.yaml")
    a = ap.parse_args()
    checkouts = [REPO] + ([a.against.resolve()] if a.against else [])
    runs: dict[Path, list[tuple[float, float]]] = {c: [] for c in checkouts}
    with tempfile.TemporaryDirectory() as tmp:
        for c in checkouts:  # fill the data and kernel caches first
            one_run(c, a.recipe, Path(tmp) / "warm.h5")
        for k in range(a.rounds):
            for c in (checkouts if k % 2 == 0 else checkouts[::-1]):
                runs[c].append(one_run(c, a.recipe, Path(tmp) / "s.h5"))
    for c, rs in runs.items():
        first, end = [r[0] for r in rs], [r[1] for r in rs]
        print(f"{c}: first episode {statistics.median(first):.2f} s (median; "
              f"{min(first):.2f}-{max(first):.2f}; under 2 s in {sum(f < 2 for f in first)} of "
              f"{len(first)}), exit {statistics.median(end):.2f} s "
              f"({min(end):.2f}-{max(end):.2f})")
        print("  runs (first, exit):", ", ".join(f"({f:.2f}, {e:.2f})" for f, e in rs))


if __name__ == "__main__":
    main()
