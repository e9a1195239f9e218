"""Benchmark meta-training speed and peak memory: `python bench/bench_meta_train.py`.

Prints the median seconds per episode of recipes/bio.yaml at each population size P
(each in a fresh subprocess so peak memory is per configuration; min and max too),
seconds per member-episode, the engine (fused or reference; plastcli/engine/parallel.py),
how many threads (fused) or processes (reference) shared the population, and their peak
memory, summed. Options: --sizes 1 16  --episodes 5  --device cpu|cuda  --recipe ...
(The worker processes' process pool replaced hand-made pipes after an alternating
comparison of the two, ``--compare-workers`` at commit 57f285f; see the README.)

Then (bench/reference.py) blocks of --block-episodes episodes (--blocks of them) of each
--rule (bio: recipes/bio.yaml, bp: recipes/2022/fig3-bp.yaml), plast at P = --members on
--threads threads (default 1 and 1), with --reference-path also plast on its reference
tensor path, and after each block the yardsticks of bench/calibrate.py: plast's time per
episode in units of a fixed calibration workload timed in the same run (a number to carry
across machines), and as a multiple of a roofline bound (bytes per online step over this
machine's measured L2 bandwidth). With ``--against-reference DIR`` (a checkout of the
paper's code, NeuralDynamicsAndComputing/MetaLearning-Plasticity; the shims it needs are
built in) the reference runs too, on one thread at one seed; the programs' blocks
alternate and the ratios are printed block by block (median and range). ``--cli N`` also
times the CLI (`plast meta-train` with 1 and 1 + N episodes): run-to-first-episode and
per-episode time beside the engine's own. ``--sizes`` with no number skips the table;
``--blocks 0`` skips the comparison.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def measure(recipe: str, P: int, episodes: int, device: str, sets: tuple = ()) -> dict:
    """One (recipe, P): s/episode and peak memory; ``sets`` are extra --set overrides."""
    import time

    import torch

    from plastcli.data import TaskSampler, load_dataset
    from plastcli.engine.inner import resolve_device
    from plastcli.engine.meta import MetaConfig, MetaTrainer
    from plastcli.engine.workers import peak_rss_all_mib
    from plastcli.recipes import load_recipe

    r = load_recipe(recipe, [f"population.seeds={P}", *sets])
    dev = resolve_device(device)
    d = load_dataset(r.dataset.name, r.dataset.split)
    s = TaskSampler(d, r.task.classes, r.task.train_per_class, r.task.query_per_class,
                    r.dataset.per_class_cap, r.dataset.cap_seed)
    tr = MetaTrainer(MetaConfig.from_recipe(r, P), s, list(range(P)), dev)
    tr.run_episode()  # warm-up
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(episodes):
        t0 = time.perf_counter()
        tr.run_episode()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    # the median episode: robust to another process stealing a core for a moment
    sec = statistics.median(times)
    out = {"P": P, "s_per_episode": sec, "s_per_member_episode": sec / P,
           "s_per_episode_min": min(times), "s_per_episode_max": max(times),
           "peak_rss_MiB": peak_rss_all_mib(), "engine": tr.engine,
           "processes": tr.processes if tr.engine == "reference" else tr.threads,
           "threads": torch.get_num_threads(), "device": str(dev)}
    if dev.type == "cuda":
        out["peak_gpu_MiB"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--recipe", default=str(REPO / "recipes/bio.yaml"))
    ap.add_argument("--sizes", type=int, nargs="*", default=[1, 16])
    ap.add_argument("--episodes", type=int, default=9)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--against-reference", metavar="DIR", default=None,
                    help="a checkout of the paper's code, run alternating with plast")
    ap.add_argument("--rule", choices=["bio", "bp", "both"], default=None,
                    help="the one-thread comparison's rule(s); default both with a "
                         "reference, else bio")
    ap.add_argument("--blocks", type=int, default=4)
    ap.add_argument("--block-episodes", type=int, default=2)
    ap.add_argument("--members", type=int, default=1,
                    help="seeds in plast's population for the one-thread comparison "
                         "(times per member-episode; the paper's code runs one)")
    ap.add_argument("--threads", type=int, default=1,
                    help="plast's threads in that comparison (the paper's code: one)")
    ap.add_argument("--reference-path", action="store_true",
                    help="also run plast on its reference tensor path (PLAST_ENGINE=reference)")
    ap.add_argument("--cli-rounds", type=int, default=2, metavar="K",
                    help="with --cli: K rounds of the two runs (default 2)")
    ap.add_argument("--cli", type=int, default=0, metavar="N",
                    help="also time the CLI: `plast meta-train` with 1 and 1 + N episodes, "
                         "alternating, twice: run-to-first-episode and per-episode time")
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child is not None:
        print(json.dumps(measure(a.recipe, a.child, a.episodes, a.device)))
        return
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=REPO).stdout.strip()
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo")
                if ln.startswith("model name")), None) if Path("/proc/cpuinfo").exists() \
        else None
    print(f"machine: {cpu or platform.processor() or platform.machine()}, {os.cpu_count()} "
          f"cores; {datetime.date.today()}; commit {commit}; load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if a.sizes:
        table(a)
    if a.blocks > 0:
        one_thread(a)
    if a.cli:
        cli_timing(a)
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def one_thread(a) -> None:
    from reference import compare, report

    rule = a.rule or ("both" if a.against_reference else "bio")
    for r in (["bio", "bp"] if rule == "both" else [rule]):
        ref = f", reference {a.against_reference}" if a.against_reference else ""
        print(f"plast at P = {a.members} on {a.threads} thread(s), rule {r}{ref}:")
        res = compare(r, a.against_reference, a.blocks, a.block_episodes,
                      members=a.members, threads=a.threads, reference_path=a.reference_path)
        print("\n".join(report(res)), flush=True)


def _cli_run(recipe: str, members: int, episodes: int, threads: int, out: Path) -> dict:
    """One `plast meta-train` in a fresh process: wall time, when its first episode's
    progress line came, and the engine's own median seconds per episode (from the store)."""
    import h5py
    import numpy as np

    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    p = subprocess.Popen(["plast", "meta-train", recipe, "--episodes", str(episodes),
                          "--set", f"population.seeds={members}", "--out", str(out),
                          "--overwrite"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, env=env, cwd=REPO)
    first = None  # a log sees a progress line every 10%: "1/N" comes only where N < 10
    first_line = re.compile(rf"(?<![0-9])1/{episodes}(?![0-9])")
    for line in p.stdout:
        if first is None and first_line.search(line):
            first = time.perf_counter() - t0
    if p.wait():
        raise SystemExit(f"plast meta-train failed (exit {p.returncode})")
    wall = time.perf_counter() - t0
    with h5py.File(out, "r") as f:
        engine_s = float(np.median(f["episodes/seconds"][...]))
        engine = f.attrs.get("engine", "?")
    return {"wall": wall, "first": first, "engine_s": engine_s, "engine": engine}


def cli_timing(a) -> None:
    """The CLI as a user runs it: 1 and 1 + N episodes, alternating, twice; the difference
    per added episode is the CLI's per-episode time (checkpoints, progress and all)."""
    import tempfile

    import numpy as np

    rule_recipes = {"bio": "recipes/bio.yaml", "bp": "recipes/2022/fig3-bp.yaml"}
    rule = a.rule or ("both" if a.against_reference else "bio")
    with tempfile.TemporaryDirectory() as tmp:
        for r in (["bio", "bp"] if rule == "both" else [rule]):
            small, big, launched = [], [], []
            for k in range(a.cli_rounds):
                pair = [(1, small), (1 + a.cli, big)]
                for eps, acc in (pair if k % 2 == 0 else pair[::-1]):
                    acc.append(_cli_run(rule_recipes[r], a.members, eps, a.threads,
                                        Path(tmp) / f"{r}-{eps}.h5"))
                    launched.append((eps, acc[-1]))
            per = [(b["wall"] - s["wall"]) / (a.cli * a.members)
                   for s, b in zip(small, big, strict=True)]
            # the first episode's line: from the 1-episode runs (a longer run logs every 10%)
            first = [x["first"] for eps, x in launched if eps == 1 and x["first"] is not None]
            eng = [x["engine_s"] / a.members for x in big]
            print(f"CLI, {rule_recipes[r]}, P = {a.members}, {a.threads} thread(s), engine "
                  f"{big[0]['engine']}: first episode done {min(first):.2f}-{max(first):.2f} s "
                  f"after launch (median {np.median(first):.2f}; in order: "
                  f"{', '.join(f'{v:.2f}' for v in first)}); per member-episode "
                  f"{min(per):.3f}-{max(per):.3f} s (CLI, "
                  f"from 1 vs {1 + a.cli} episodes) against {min(eng):.3f}-{max(eng):.3f} s "
                  "(the engine's own, from the store)", flush=True)


def table(a) -> None:
    print(f"recipe {a.recipe}")
    print(f"{'P':>6} {'s/episode':>10} {'(min - max)':>15} {'s/member-episode':>17} "
          f"{'engine':>10} {'procs/threads':>14} {'peak RSS MiB':>13}")
    for P in a.sizes:
        res = subprocess.run([sys.executable, __file__, "--recipe", a.recipe, "--episodes",
                              str(a.episodes), "--device", a.device, "--child", str(P)],
                             capture_output=True, text=True, check=True)
        m = json.loads(res.stdout.strip().splitlines()[-1])
        extra = f"  peak GPU {m['peak_gpu_MiB']:.0f} MiB" if "peak_gpu_MiB" in m else ""
        spread = f"({m['s_per_episode_min']:.3f} - {m['s_per_episode_max']:.3f})"
        print(f"{P:>6} {m['s_per_episode']:>10.3f} {spread:>15} {m['s_per_member_episode']:>17.4f} "
              f"{m['engine']:>10} {m['processes']:>14} {m['peak_rss_MiB']:>13.0f}{extra}")


if __name__ == "__main__":
    main()
