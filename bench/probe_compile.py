"""Probe for issue 14: does torch.compile (Inductor, CPU) cut the cost of one online step?

    OMP_NUM_THREADS=1 python bench/probe_compile.py [P]

Times 250 calls of ``plastcli.engine.inner.inner_step`` (F_bio: pseudo_grad + err_hebb +
oja, fixed feedback, 784-170-130-100-70-47, P members, no autograd: the forward pass and the
update, not the meta-gradient) eagerly and compiled (``torch.compile(inner_step)``), one
thread, in alternating blocks, and prints the medians and their ratio, and the compile time.
"""

from __future__ import annotations

import statistics
import sys
import time

import torch
import torch.nn.functional as F

from plastcli.core.network import init_net
from plastcli.core.rules import LayerCoefficients, layer_mask
from plastcli.core.terms import BUILTIN_POOL
from plastcli.engine.inner import inner_step

LAYERS = [784, 170, 130, 100, 70, 47]
TERMS = ("pseudo_grad", "err_hebb", "oja")
STEPS, BLOCKS = 250, 6


def main(P: int) -> None:
    torch.set_num_threads(1)
    net = init_net(LAYERS, list(range(P)), 0, "xavier", "fixed")
    mask = layer_mask(list(TERMS), None, len(LAYERS) - 1, BUILTIN_POOL)
    mask = mask.expand(P, len(LAYERS) - 1, -1).clone()
    theta = torch.zeros(P, len(BUILTIN_POOL))
    for t in TERMS:
        theta[:, BUILTIN_POOL.index[t]] = 1e-3
    rule = LayerCoefficients.build(theta, mask)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(P, STEPS, LAYERS[0], generator=g)
    y = F.one_hot(torch.randint(0, LAYERS[-1], (P, STEPS), generator=g), LAYERS[-1]).float()

    def episode(step) -> float:
        t0, state = time.perf_counter(), net
        for t in range(STEPS):
            state = step(state, x[:, t:t + 1], y[:, t:t + 1], rule, 10.0, "fixed")
        return time.perf_counter() - t0

    with torch.no_grad():
        compiled = torch.compile(inner_step, dynamic=False)
        t0 = time.perf_counter()
        episode(compiled)
        print(f"P={P}: compile and first episode {time.perf_counter() - t0:.1f} s")
        times: dict[str, list[float]] = {"eager": [], "compiled": []}
        for b in range(BLOCKS):  # alternate which goes first
            order = [("eager", inner_step), ("compiled", compiled)][:: 1 if b % 2 == 0 else -1]
            for name, step in order:
                times[name].append(episode(step))
    e, c = (statistics.median(times[k]) for k in ("eager", "compiled"))
    print(f"P={P}: eager {e:.3f} s per {STEPS} steps, compiled {c:.3f} s, eager / compiled "
          f"{e / c:.2f}; blocks {({k: [round(v, 3) for v in vs] for k, vs in times.items()})}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
