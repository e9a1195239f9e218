"""Benchmark meta-training speed and peak memory: `python bench/bench_meta_train.py`.

Prints the median seconds per episode of recipes/bio.yaml at each population size P
(each in a fresh subprocess so peak memory is per configuration; min and max too),
seconds per member-episode, how many processes shared the population (one per core
torch may use; see plastcli/engine/workers.py) and their peak memory, summed.
Options: --sizes 1 16  --episodes 5  --device cpu|cuda  --recipe recipes/bio.yaml
(The worker processes' process pool replaced hand-made pipes after an alternating
comparison of the two, ``--compare-workers`` at commit 57f285f; see the README.)

Then, on one thread at P = 1 (bench/reference.py), blocks of --block-episodes episodes
(--blocks of them) of each --rule (bio: recipes/bio.yaml, bp: recipes/2022/fig3-bp.yaml),
and after each block the yardsticks of bench/calibrate.py: plast's time per episode in
units of a fixed calibration workload timed in the same run (a number to carry across
machines), and as a multiple of a roofline bound (bytes per online step over this machine's
measured L2 bandwidth). With ``--against-reference DIR`` (a checkout of the paper's code,
NeuralDynamicsAndComputing/MetaLearning-Plasticity; the shims it needs are built in) the
reference runs too, its blocks alternating with plast's, and the ratio reference / plast is
printed block by block (median and range). ``--sizes`` with no number skips the table;
``--blocks 0`` skips the one-thread part.
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


def measure(recipe: str, P: int, episodes: int, device: str, sets: tuple = ()) -> dict:
    """One (recipe, P): s/episode and peak memory; ``sets`` are extra --set overrides."""
    import time

    import torch

    from plastcli.data import TaskSampler, load_dataset
    from plastcli.engine.inner import resolve_device
    from plastcli.engine.meta import MetaConfig, MetaTrainer
    from plastcli.engine.workers import peak_rss_all_mib, processes_for
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
           "peak_rss_MiB": peak_rss_all_mib(), "processes": processes_for(P, dev),
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
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def one_thread(a) -> None:
    from reference import compare, report

    rule = a.rule or ("both" if a.against_reference else "bio")
    for r in (["bio", "bp"] if rule == "both" else [rule]):
        print(f"one thread, P = 1, rule {r}" + (f", reference {a.against_reference}"
                                                if a.against_reference else "") + ":")
        res = compare(r, a.against_reference, a.blocks, a.block_episodes)
        print("\n".join(report(res)), flush=True)


def table(a) -> None:
    print(f"recipe {a.recipe}")
    print(f"{'P':>6} {'s/episode':>10} {'(min - max)':>15} {'s/member-episode':>17} "
          f"{'processes':>10} {'peak RSS MiB':>13}")
    for P in a.sizes:
        res = subprocess.run([sys.executable, __file__, "--recipe", a.recipe, "--episodes",
                              str(a.episodes), "--device", a.device, "--child", str(P)],
                             capture_output=True, text=True, check=True)
        m = json.loads(res.stdout.strip().splitlines()[-1])
        extra = f"  peak GPU {m['peak_gpu_MiB']:.0f} MiB" if "peak_gpu_MiB" in m else ""
        spread = f"({m['s_per_episode_min']:.3f} - {m['s_per_episode_max']:.3f})"
        print(f"{P:>6} {m['s_per_episode']:>10.3f} {spread:>15} {m['s_per_member_episode']:>17.4f} "
              f"{m['processes']:>10} {m['peak_rss_MiB']:>13.0f}{extra}")


if __name__ == "__main__":
    main()
