"""Machine yardsticks for the meta-training benchmark (issue 14): a calibration workload
and a roofline. Both run on one thread, in the process that measures plast.

**Calibration workload** (:func:`calibration_seconds`): a fixed, deterministic chain of
the operations an online step is made of, at the P1 network's sizes (784-170-130-100-70-47,
one member): per step, each layer's matrix-vector product as a ``bmm`` of a row ``[1, 1, n]``
with ``W [1, n, m]``, a ``tanh``, and a rank-one ``addcmul_`` into ``W``; CAL_STEPS steps,
about 1 s on the 2-core AMD EPYC (AVX2) of this workplace. A time per episode divided by it
is a number of "calibration units" that can be carried to another machine (a ratio of two
programs is better still: ``--against-reference``). CAL_STEPS and the operations are the
definition of the unit: never change them.

**Roofline** (:func:`roofline`): a lower bound on one meta-training episode from the bytes
a step must move, over a measured bandwidth. Per online step, with N = sum of n_l * m_l
over the layers (the weights of one member; 178,670 for the P1 network, 715 kB in float32),
the count is 11 passes over N floats of 4 bytes:

- forward (4 N): read W_l for ``y_l = g(W_l y_{l-1})``; read B_l for the error
  ``e_{l-1} = (B_l^T e_l) g'`` (with symmetric feedback B = W this is a second read of W,
  which the whole forward pass separates from the first); read and write W_l for the
  update (all rank-few terms of the rule in one pass, Oja's ``W``-dependent term included);
- reverse (7 N): read and write W_l to rebuild the step's weights from the next step's;
  read W_l and B_l for the adjoints of the two products; read and write the adjoint G_l
  for its rank-few update; one read of G_l for its products with the step's vectors.

Not counted: the query pass and the meta-step (about 50 batched samples, once per episode),
the per-operation overhead of the framework and the interpreter, and caches: every pass is
assumed to stream at the L2-resident bandwidth, although W, B and G of the P1 network
(2.1 MB) do not fit one core's L2 (512 kB here), so the bound is optimistic. The bandwidth
is the best of repeated ``add(x, y, out=y)`` over buffers that fit L2 (3 x 4 bytes per
element: two reads, one write); the same at the working set's size (the L3 here) is printed
as a second, less optimistic bound.
"""

from __future__ import annotations

import time

import numpy as np
import torch

P1_LAYERS = (784, 170, 130, 100, 70, 47)
CAL_STEPS = 10_000  # the unit: never change
ONLINE_STEPS = 250  # per episode (M * K = 5 * 50)
PASSES_FORWARD, PASSES_REVERSE = 4, 7
L2_BUFFER_BYTES = 2 * 128 * 1024  # two arrays of 128 kB: fits a 512 kB L2 with room


def calibration_seconds(layers: tuple[int, ...] = P1_LAYERS, steps: int = CAL_STEPS) -> float:
    """Seconds of the fixed calibration workload on one thread (restores the thread count)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        g = torch.Generator().manual_seed(0)
        W = [torch.rand(1, n, m, generator=g) * (2.0 / n) - 1.0 / n
             for n, m in zip(layers[:-1], layers[1:], strict=True)]
        x = torch.rand(1, 1, layers[0], generator=g)
        with torch.no_grad():
            t0 = time.perf_counter()
            for _ in range(steps):
                a = x
                for w in W:
                    b = torch.tanh(torch.bmm(a, w))
                    w.addcmul_(a.transpose(1, 2), b, value=-1e-5)
                    a = b
            return time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)


def bandwidth(buffer_bytes: int, seconds: float = 0.3) -> float:
    """Best bytes/s of ``y += x`` over two float32 arrays of ``buffer_bytes`` in all."""
    n = buffer_bytes // 8
    x, y = np.ones(n, np.float32), np.zeros(n, np.float32)
    reps = max(1, int(2e6 // n))  # calls per timing, so the call overhead is amortised
    best, t_end = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        for _ in range(reps):
            np.add(x, y, out=y)
        best = min(best, (time.perf_counter() - t0) / reps)
    return 3 * 4 * n / best


def weights(layers: tuple[int, ...]) -> int:
    return sum(n * m for n, m in zip(layers[:-1], layers[1:], strict=True))


def bytes_per_step(layers: tuple[int, ...]) -> dict[str, int]:
    N4 = 4 * weights(layers)
    return {"forward": PASSES_FORWARD * N4, "reverse": PASSES_REVERSE * N4,
            "total": (PASSES_FORWARD + PASSES_REVERSE) * N4}


def roofline(layers: tuple[int, ...], bw: float, steps: int = ONLINE_STEPS) -> dict:
    """Bytes per step and the lower bound in seconds per episode at ``bw`` bytes/s."""
    b = bytes_per_step(layers)
    return {**{f"bytes_{k}": v for k, v in b.items()}, "steps": steps,
            "bandwidth": bw, "s_per_episode": steps * b["total"] / bw}


def yardsticks(layers: tuple[int, ...] = P1_LAYERS) -> dict:
    """One measurement of everything this module defines (calibration, two bandwidths)."""
    ws = 3 * 4 * weights(layers)  # W, B and G of one member
    return {"calibration_s": calibration_seconds(),
            "bw_l2": bandwidth(L2_BUFFER_BYTES), "bw_ws": bandwidth(ws),
            "working_set_bytes": ws}


if __name__ == "__main__":
    torch.set_num_threads(1)
    y = yardsticks()
    print(f"calibration {y['calibration_s']:.3f} s; bandwidth L2 {y['bw_l2'] / 1e9:.1f} GB/s, "
          f"at {y['working_set_bytes'] / 1e6:.1f} MB {y['bw_ws'] / 1e9:.1f} GB/s")
    r = roofline(P1_LAYERS, y["bw_l2"])
    print(f"roofline: {r['bytes_total'] / 1e6:.2f} MB per step, "
          f"{r['s_per_episode'] * 1e3:.1f} ms per episode at the L2 bandwidth")
