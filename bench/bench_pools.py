"""Seconds per meta-training episode of F_bio, the ten-term pool and the 49-term grammar
pool, side by side: `python bench/bench_pools.py` (issue 10 §4).

Each (pool, P) is measured in a fresh subprocess by bench_meta_train.measure (a warm-up
episode, then the median of --episodes). The pools alternate within each round and the
rounds repeat (--rounds), so a load change on a shared host hits all three alike; the
ratio to F_bio at the same P is the number to compare across machines.
Options: --sizes 1 16  --episodes 2  --rounds 2  --device cpu|cuda
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
POOLS = {"F_bio (3 terms)": ("recipes/2022/fig5-bio.yaml", []),
         "ten-term pool": ("recipes/2022/fig4-pool.yaml", []),
         "grammar pool (49 terms)": ("recipes/2022/fig4-pool.yaml", ["rule.terms=grammar"])}


def child(recipe: str, sets: list[str], P: int, episodes: int, device: str) -> dict:
    code = (f"import json, sys; sys.path.insert(0, {str(REPO / 'bench')!r}); "
            "from bench_meta_train import measure; "
            f"print(json.dumps(measure({recipe!r}, {P}, {episodes}, {device!r}, {tuple(sets)!r})))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=REPO)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--episodes", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=REPO).stdout.strip()
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo")
                if ln.startswith("model name")), platform.machine()) \
        if Path("/proc/cpuinfo").exists() else platform.machine()
    print(f"machine: {cpu}, {os.cpu_count()} cores; {datetime.date.today()}; commit {commit}; "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; device {a.device}")
    times: dict[tuple[str, int], list[float]] = {}
    for r in range(a.rounds):
        for P in a.sizes:
            order = list(POOLS) if r % 2 == 0 else list(POOLS)[::-1]
            for name in order:
                recipe, sets = POOLS[name]
                m = child(recipe, sets, P, a.episodes, a.device)
                times.setdefault((name, P), []).append(m["s_per_episode"])
                print(f"  round {r + 1}, P={P}: {name}: {m['s_per_episode']:.2f} s/episode",
                      flush=True)
    print(f"\n| pool | P | s/episode (median of {a.rounds} rounds) | s/member-episode | "
          f"× F_bio |\n|---|---|---|---|---|")
    for P in a.sizes:
        base = statistics.median(times[(next(iter(POOLS)), P)])
        for name in POOLS:
            t = statistics.median(times[(name, P)])
            print(f"| {name} | {P} | {t:.2f} | {t / P:.3f} | {t / base:.1f} |")


if __name__ == "__main__":
    main()
