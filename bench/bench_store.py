"""What a checkpoint costs now that every write replaces the store atomically.

A meta-train checkpoint appends the buffered episodes, rewrites /members and
/checkpoint. Before, these were written in place (the file opened three times in mode
'a'); now they go to a copy ``<store>.tmp`` that replaces the store (copy, write, fsync,
os.replace). This times both for stores of growing size (P members, E episodes already
written, the P1 network's 3 coefficients and 5 layers).

    python bench/bench_store.py [--sizes 3x500 16x500 256x2000 1024x5000] [--reps 9]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from plastcli.results.store import Store

CHUNK = 25  # run.checkpoint_every in the shipped recipes


def records(P: int, n: int, R: int = 3, L: int = 5) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [{"meta_loss": rng.random(P), "query_ce": rng.random(P),
             "meta_accuracy": rng.random(P), "seconds": rng.random(P),
             "theta": rng.random((P, R)), "angles": rng.random((P, L)),
             "orthonormality_error": rng.random((P, L))} for _ in range(n)]


def state(P: int, R: int = 3) -> dict[str, np.ndarray]:
    return {"theta": np.ones((P, R)), "m": np.ones((P, R)), "v": np.ones((P, R)),
            "alive": np.ones(P, bool), "episode": np.array(1)}


def make_store(path: Path, P: int, E: int) -> Store:
    store = Store.create(path, {"seeds": list(range(P))})
    for start in range(0, E, 500):
        store.append("episodes", records(P, min(500, E - start)))
    store.write_arrays("members", {"seed": np.arange(P), "diverged_at": -np.ones(P, int)})
    store.checkpoint(state(P))
    return store


def in_place(store: Store, rows, P: int) -> None:
    """The old way: each write opens the store itself in mode 'a'."""
    with h5py.File(store.path, "a") as f:
        g = f["episodes"]
        for key in rows[0]:
            block = np.stack([r[key] for r in rows], axis=1)
            ds = g[key]
            n = ds.shape[1]
            ds.resize(n + block.shape[1], axis=1)
            ds[:, n:] = block
    for group, arrays in (("members", {"seed": np.arange(P), "diverged_at": -np.ones(P, int)}),
                          ("checkpoint", state(P))):
        with h5py.File(store.path, "a") as f:
            g = f.require_group(group)
            for k, v in arrays.items():
                del g[k]
                g.create_dataset(k, data=v)


def replaced(store: Store, rows, P: int) -> None:
    """The new way: one transaction, i.e. copy, write, fsync, os.replace."""
    with store.transaction():
        store.append("episodes", rows)
        store.write_arrays("members", {"seed": np.arange(P), "diverged_at": -np.ones(P, int)})
        store.checkpoint(state(P))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["3x500", "16x500", "256x2000", "1024x5000"])
    ap.add_argument("--reps", type=int, default=9)
    args = ap.parse_args()
    print(f"{'P x E':>12} {'store MiB':>10} {'in place ms':>12} {'replace ms':>11}")
    for size in args.sizes:
        P, E = map(int, size.split("x"))
        with tempfile.TemporaryDirectory(dir=".") as d:
            store = make_store(Path(d) / "s.h5", P, E)
            rows = records(P, CHUNK)
            times = {"in place": [], "replace": []}
            for _ in range(args.reps):
                for name, fn in (("in place", in_place), ("replace", replaced)):
                    t = time.perf_counter()
                    fn(store, rows, P)
                    times[name].append(time.perf_counter() - t)
            mib = store.path.stat().st_size / 2**20
            print(f"{size:>12} {mib:>10.1f} {1e3 * statistics.median(times['in place']):>12.1f} "
                  f"{1e3 * statistics.median(times['replace']):>11.1f}")


if __name__ == "__main__":
    main()
