"""plast against the paper's own code (the reference), alternating, one thread each
(issue 14): ``python bench/bench_meta_train.py --against-reference DIR``.

DIR is a checkout of https://github.com/NeuralDynamicsAndComputing/MetaLearning-Plasticity
(tag v1.0.0: main.py, optim.py, utils.py, dataset.py); it is only read (no bytecode is
written into it). Two shims make it run on today's torch, installed in ``sys.modules``
before its modules are imported: a stand-in ``torchvision.transforms`` (Resize, ToTensor,
Compose; dataset.py imports it at module level) and ``torch.nn.utils._stateless``, removed
from torch, whose ``functional_call`` is now ``torch.func.functional_call``.

Each program runs in its own process on one thread (OMP_NUM_THREADS=1 and
``torch.set_num_threads(1)``), built once and warmed up by one episode; the parent then
asks them in turn for blocks of episodes, A B, B A, A B, ..., so a change of the host's
load hits both alike, and reads the ratio block by block. The yardsticks of calibrate.py
run in plast's process after each pair of blocks. Without DIR only plast runs.

What one episode is, in each:

- plast: ``MetaTrainer.run_episode()`` at P = 1 (seed 0) of the rule's recipe (F_bio:
  recipes/bio.yaml; F_BP: recipes/2022/fig3-bp.yaml): sample the task, 250 online steps,
  the query pass, the hand-written reverse pass, the Adam step and the episode's
  diagnostics (query accuracy, angles, orthonormality errors).
- the reference: one pass of the loop in ``MetaLearner.train()`` (its main.py, unchanged):
  ``DataProcess`` (reshape, shuffle), 250 online steps through ``functional_call`` and
  ``MyOptimizer``, the query pass, autograd back through the unrolled loop, Adam, and its
  ``meta_stats`` and log files (written to a temporary directory); stdout is discarded and
  the final ``Plot`` is skipped. F_bio is ``--vec 1 2 --fbk fix`` (pseudo-gradient,
  error-Hebb, Oja; fixed random feedback), F_BP ``--vec --fbk sym``; ``--a 1e-3``, the
  other coefficients at the code's 0, K = 50, Q = 10, M = 5, lr_meta 1e-3, seed 0.
  Its tasks are the ones plast draws (same seed and episode numbers, plast's EMNIST from
  PLAST_DATA), given as the tensors its ``DataLoader`` would yield ([M, K, 28, 28] images,
  [M, K] labels, likewise for the query) and built before the timing; its own
  EmnistDataset (download, PNG files, PIL per image) is never built, in its favour.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RULES = {"bio": {"name": "F_bio", "recipe": "recipes/bio.yaml", "vec": ["1", "2"], "fbk": "fix"},
         "bp": {"name": "F_BP", "recipe": "recipes/2022/fig3-bp.yaml", "vec": [], "fbk": "sym"}}
ORIGINAL_FILES = ("main.py", "optim.py", "utils.py", "dataset.py")


# --------------------------------------------------------------------------- the shims

def install_shims() -> None:
    """Stand-ins for torchvision.transforms and torch.nn.utils._stateless."""
    import numpy as np
    import torch
    import torch.nn.utils

    class Compose:
        def __init__(self, transforms):
            self.transforms = list(transforms)

        def __call__(self, img):
            for t in self.transforms:
                img = t(img)
            return img

    class Resize:  # (h, w) on a PIL image, bilinear like torchvision's default
        def __init__(self, size):
            self.size = (size, size) if isinstance(size, int) else tuple(size)

        def __call__(self, img):
            from PIL import Image
            h, w = self.size
            return img if img.size == (w, h) else img.resize((w, h), Image.BILINEAR)

    class ToTensor:  # PIL image -> float tensor [C, H, W] in [0, 1]
        def __call__(self, img):
            a = np.asarray(img, dtype=np.float32) / 255.0
            return torch.from_numpy(a[None] if a.ndim == 2 else a.transpose(2, 0, 1).copy())

    if "torchvision" not in sys.modules:
        tv = types.ModuleType("torchvision")
        tr = types.ModuleType("torchvision.transforms")
        tr.Compose, tr.Resize, tr.ToTensor = Compose, Resize, ToTensor
        tv.transforms = tr
        sys.modules["torchvision"], sys.modules["torchvision.transforms"] = tv, tr
    if not hasattr(torch.nn.utils, "_stateless"):
        st = types.ModuleType("torch.nn.utils._stateless")
        st.functional_call = torch.func.functional_call
        torch.nn.utils._stateless = st
        sys.modules["torch.nn.utils._stateless"] = st


def load_original(checkout: str | Path) -> types.ModuleType:
    """The reference's main.py as a module, imported from ``checkout`` with the shims."""
    d = Path(checkout).resolve()
    missing = [f for f in ORIGINAL_FILES if not (d / f).is_file()]
    if missing:
        raise SystemExit(f"{d}: not a checkout of the reference (no {', '.join(missing)})")
    install_shims()
    sys.dont_write_bytecode = True  # leave the user's checkout as it is
    for name in ("main", "optim", "utils", "dataset"):
        sys.modules.pop(name, None)
    sys.path.insert(0, str(d))
    try:
        return importlib.import_module("main")
    finally:
        sys.path.remove(str(d))


# --------------------------------------------------------------------------- the two programs

def _recipe_and_sampler(rule: str, members: int = 1):
    from plastcli.data import TaskSampler, load_dataset
    from plastcli.recipes import load_recipe

    r = load_recipe(str(REPO / RULES[rule]["recipe"]), [f"population.seeds={members}"])
    d = load_dataset(r.dataset.name, r.dataset.split)
    return r, TaskSampler(d, r.task.classes, r.task.train_per_class, r.task.query_per_class,
                          r.dataset.per_class_cap, r.dataset.cap_seed)


class PlastProgram:
    """plast's MetaTrainer at P = ``members`` (seeds seed, seed + 1, ...), on the engine
    PLAST_ENGINE names (fused by default), with the threads its environment allows."""

    def __init__(self, rule: str, seed: int, members: int = 1):
        import torch

        from plastcli.engine.meta import MetaConfig, MetaTrainer

        r, sampler = _recipe_and_sampler(rule, members)
        self.layers = tuple(r.network.layers)
        self.trainer = MetaTrainer(MetaConfig.from_recipe(r, members), sampler,
                                   list(range(seed, seed + members)), torch.device("cpu"))
        self.engine, self.threads = self.trainer.engine, self.trainer.threads

    def run(self, n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            self.trainer.run_episode()
        return time.perf_counter() - t0


class OriginalProgram:
    def __init__(self, rule: str, seed: int, checkout: str):
        import numpy as np
        import torch

        main = load_original(checkout)
        r, self.sampler = _recipe_and_sampler(rule)
        self.layers = tuple(r.network.layers)
        self.seed, self.episode = seed, 0
        self.m, self.k, self.q = r.task.classes, r.task.train_per_class, r.task.query_per_class
        self.res_dir = tempfile.mkdtemp(prefix="plast-reference-")
        args = argparse.Namespace(
            device=torch.device("cpu"), K=self.k, Q=self.q, M=self.m, dim=28,
            database="emnist", a=1e-3, lamb=0.0, lr_meta=1e-3, vec=RULES[rule]["vec"],
            fbk=RULES[rule]["fbk"], res_dir=self.res_dir, avg_window=10)
        torch.manual_seed(seed)
        np.random.seed(seed)
        self.learner = main.MetaLearner(None, args)
        self.learner.plot = lambda: None  # the figures at the end of train(): not an episode

    def task(self, episode: int) -> tuple:
        """One task as the reference's DataLoader yields it (a batch of M classes)."""
        tr, qu = self.sampler.member_indices(self.seed, episode)
        d, y = self.sampler.data, self.sampler.data.labels
        m, k, q = self.m, self.k, self.q
        return (d.rows(tr).reshape(m, k, 28, 28), y[tr].reshape(m, k),
                d.rows(qu).reshape(m, q, 28, 28), y[qu].reshape(m, q))

    def run(self, n: int) -> float:
        tasks = [self.task(self.episode + i) for i in range(n)]
        self.episode += n
        self.learner.metatrain_dataset = tasks
        with contextlib.redirect_stdout(io.StringIO()):
            t0 = time.perf_counter()
            self.learner.train()
            return time.perf_counter() - t0


def serve(program: str, rule: str, seed: int, checkout: str, members: int = 1) -> None:
    """A child process: build one program, warm it up, then answer JSON lines on stdin."""
    import torch
    from calibrate import yardsticks

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    reply, sys.stdout = sys.stdout, sys.stderr  # anything else printed goes to stderr
    prog = OriginalProgram(rule, seed, checkout) if program == "reference" else \
        PlastProgram(rule, seed, members)
    prog.run(1)  # warm-up
    answer = {"ready": True, "threads": getattr(prog, "threads", torch.get_num_threads()),
              "engine": getattr(prog, "engine", "original"), "layers": prog.layers}
    print(json.dumps(answer), file=reply, flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "run":
            answer = {"seconds": prog.run(cmd["n"]), "n": cmd["n"]}
        elif cmd["cmd"] == "yardsticks":
            answer = yardsticks(prog.layers)
        else:
            answer = {"peak_rss_MiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
            if isinstance(prog, OriginalProgram):
                shutil.rmtree(prog.res_dir, ignore_errors=True)
        print(json.dumps(answer), file=reply, flush=True)
        if cmd["cmd"] == "quit":
            return


# The programs: plast on its default engine (the fused kernel where it builds), plast on the
# reference tensor path, and the paper's code.
PROGRAMS = {"plast": {}, "plast-reference": {"PLAST_ENGINE": "reference"}, "reference": {}}


class Child:
    def __init__(self, program: str, rule: str, seed: int, checkout: str | None,
                 members: int = 1, threads: int = 1):
        self.program = program
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
               **PROGRAMS[program]}
        self.err = tempfile.TemporaryFile("w+")
        self.p = subprocess.Popen(
            [sys.executable, __file__, "--serve", program, "--rule", rule, "--seed", str(seed),
             "--checkout", checkout or "", "--members", str(members)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self.err, text=True, env=env, cwd=REPO)
        self.hello = self._read()

    def _read(self) -> dict:
        line = self.p.stdout.readline()
        if not line:
            self.err.seek(0)
            tail = self.err.read()[-3000:]
            raise SystemExit(f"the {self.program} process ended (exit {self.p.wait()}):\n{tail}")
        return json.loads(line)

    def ask(self, **cmd) -> dict:
        self.p.stdin.write(json.dumps(cmd) + "\n")
        self.p.stdin.flush()
        return self._read()

    def close(self) -> dict:
        out = self.ask(cmd="quit")
        self.p.wait()
        return out


def compare(rule: str, checkout: str | None, blocks: int, n: int, seed: int = 0,
            log=print, members: int = 1, threads: int = 1,
            reference_path: bool = False) -> dict:
    """Alternate blocks of ``n`` episodes of plast, (``reference_path``) plast on its
    reference tensor path, and (with ``checkout``) the paper's code, one thread each
    except plast's ``threads``; plast's programs run ``members`` seeds (times are per
    member-episode), the paper's code one."""
    kids = {"plast": Child("plast", rule, seed, None, members, threads)}
    if reference_path:
        kids["plast-reference"] = Child("plast-reference", rule, seed, None, members, threads)
    if checkout:
        kids["reference"] = Child("reference", rule, seed, checkout)
    per: dict[str, list[float]] = {k: [] for k in kids}
    yard: list[dict] = []
    for b in range(blocks):
        order = list(kids) if b % 2 == 0 else list(kids)[::-1]
        for k in order:
            m = 1 if k == "reference" else members
            per[k].append(kids[k].ask(cmd="run", n=n)["seconds"] / (n * m))
        yard.append(kids["plast"].ask(cmd="yardsticks"))
        log(f"  block {b + 1}/{blocks} ({' then '.join(order)}): " + ", ".join(
            f"{k} {per[k][-1]:.3f}" for k in kids) + " s/episode; calibration "
            f"{yard[-1]['calibration_s']:.3f} s")
    peaks = {k: c.close()["peak_rss_MiB"] for k, c in kids.items()}
    return {"rule": rule, "per_episode": per, "yardsticks": yard, "peak_rss_MiB": peaks,
            "threads": {k: c.hello["threads"] for k, c in kids.items()},
            "engine": {k: c.hello["engine"] for k, c in kids.items()},
            "layers": tuple(kids["plast"].hello["layers"]), "blocks": blocks, "n": n,
            "members": members}


def spread(xs: list[float], fmt: str = ".3f") -> str:
    return f"median {statistics.median(xs):{fmt}} (range {min(xs):{fmt}}-{max(xs):{fmt}})"


def report(res: dict) -> list[str]:
    """The lines bench_meta_train prints for one rule."""
    from calibrate import PASSES_FORWARD, PASSES_REVERSE, roofline, weights

    per, yard, layers = res["per_episode"], res["yardsticks"], res["layers"]
    info = RULES[res["rule"]]
    P = res.get("members", 1)
    unit = "s/episode" if P == 1 else "s/member-episode"
    out = [f"{info['name']} ({info['recipe']}, {'-'.join(map(str, layers))}, plast at P = {P},"
           f" the paper's code at one seed), {res['blocks']} blocks of {res['n']} episodes, "
           "order alternating:"]
    for k, xs in per.items():
        out.append(f"  {k:<15} {unit if k != 'reference' else 's/episode'} {spread(xs)}; "
                   f"peak RSS {res['peak_rss_MiB'][k]:.0f} MiB; engine "
                   f"{res.get('engine', {}).get(k, '?')}, threads {res['threads'][k]}")
    p = per["plast"]
    for k in ("reference", "plast-reference"):
        if k in per:
            ratio = [o / q for o, q in zip(per[k], p, strict=True)]
            out.append(f"  {k} / plast per block: {spread(ratio, '.2f')}")
    cal = [y["calibration_s"] for y in yard]
    units = [q / c for q, c in zip(p, cal, strict=True)]
    out.append(f"  calibration workload (bench/calibrate.py): {spread(cal)} s; plast per "
               f"episode = {spread(units, '.2f')} calibration units")
    bw2, bws = max(y["bw_l2"] for y in yard), max(y["bw_ws"] for y in yard)
    r = roofline(layers, bw2)
    rws = roofline(layers, bws)
    med = statistics.median(p)
    out.append(f"  roofline: {PASSES_FORWARD} + {PASSES_REVERSE} passes over "
               f"{weights(layers):,} float32 weights = {r['bytes_total'] / 1e6:.2f} MB per "
               f"online step; L2 bandwidth (best) {bw2 / 1e9:.0f} GB/s -> "
               f"{r['s_per_episode'] * 1e3:.1f} ms per {r['steps']}-step episode; plast "
               f"{med / r['s_per_episode']:.1f}x the bound")
    out.append(f"  (at the working set's {yard[0]['working_set_bytes'] / 1e6:.1f} MB: "
               f"{bws / 1e9:.0f} GB/s -> {rws['s_per_episode'] * 1e3:.1f} ms, plast "
               f"{med / rws['s_per_episode']:.1f}x)")
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="a child of bench_meta_train.py (internal)")
    ap.add_argument("--serve", choices=list(PROGRAMS), required=True)
    ap.add_argument("--rule", choices=list(RULES), required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--checkout", default="")
    ap.add_argument("--members", type=int, default=1)
    a = ap.parse_args()
    serve(a.serve, a.rule, a.seed, a.checkout, a.members)
