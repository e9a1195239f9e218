"""Rerun the first episodes of committed meta-train stores and compare them bit for bit.

    python tools/rerun_check.py results/2022/*.h5 [--episodes 3]

For each store: its own resolved recipe (the ``recipe_yaml`` attribute) runs again with
today's code for ``--episodes`` episodes, with the thread count the store records
(``torch_threads``, which also decides the process split) and on the store's ``engine``
(``PLAST_ENGINE=reference`` for a store without one: it predates the fused kernel), and
every ``/episodes`` array but ``seconds`` is compared with the store's first episodes. A
store from a CPU of another model or SIMD level is rerun too, but only an equal machine
can promise equal bits. Stores of other experiments are listed as skipped. Exit 1 if any
store differs.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from plastcli.experiments.common import machine_attrs  # noqa: E402
from plastcli.results.store import read_store  # noqa: E402


def rerun(store: Path, episodes: int, work: Path) -> tuple[str, bool]:
    """(one line of verdict, whether it is a failure)."""
    st = read_store(store)
    if st.attrs.get("plast_experiment") != "meta-train":
        return f"skipped ({st.attrs.get('plast_experiment')})", False
    recipe, out = work / f"{store.stem}.yaml", work / f"{store.stem}.h5"
    recipe.write_text(str(st.attrs["recipe_yaml"]))
    threads = str(int(st.attrs.get("torch_threads", 1)))
    # the store's engine (stores from before the fused kernel ran on the reference path):
    # the two engines agree to float rounding only
    engine = str(st.attrs.get("engine", "reference"))
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
           "PYTHONPATH": str(REPO),
           **({"PLAST_ENGINE": "reference"} if engine != "fused" else {})}
    done = subprocess.run([sys.executable, "-m", "plastcli", "meta-train", str(recipe),
                           "--episodes", str(episodes), "--out", str(out), "--overwrite"],
                          env=env, capture_output=True, text=True)
    if done.returncode != 0:
        return f"rerun failed: {done.stderr.strip().splitlines()[-1:]}", True
    new = read_store(out)
    worst, names = 0.0, []
    for key in sorted(k for k in st.arrays if k.startswith("episodes/")):
        if key == "episodes/seconds":
            continue
        a, b = np.asarray(st[key][:, :episodes]), np.asarray(new[key])
        if a.shape != b.shape:
            return f"{key}: shape {a.shape} vs {b.shape}", True
        if not np.array_equal(a, b, equal_nan=True):
            rel = np.nanmax(np.abs(a - b)) / max(float(np.nanmax(np.abs(a))), 1e-30)
            worst, names = max(worst, float(rel)), [*names, key.removeprefix("episodes/")]
    here = machine_attrs()
    same_cpu = (st.attrs.get("cpu_model"), st.attrs.get("cpu_capability")) == \
        (here["cpu_model"], here["cpu_capability"])
    where = "" if same_cpu else (f" [made on {st.attrs.get('cpu_model')} "
                                 f"{st.attrs.get('cpu_capability')}]")
    if not names:
        return f"bit-identical ({episodes} episodes, {threads} thread(s)){where}", False
    return f"differs in {', '.join(names)}: max |diff| / max |value| {worst:.2g}{where}", same_cpu


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("stores", nargs="+", type=Path)
    ap.add_argument("--episodes", type=int, default=3)
    args = ap.parse_args()
    here = machine_attrs()
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    print(f"machine: {here['cpu_model']} ({here['cpu_capability']}, {here['blas']}); "
          f"commit {commit}")
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        for store in args.stores:
            verdict, bad = rerun(store, args.episodes, Path(tmp))
            failed |= bad
            print(f"{store}: {verdict}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
