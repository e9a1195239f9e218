"""Benchmark the delayed-memory RNN: `python bench/bench_rnn.py`.

Prints training sequences per second (one online BPTT+Oja update per sequence, T = 50,
image for 5 steps) for a population of --seeds members at hidden size --hidden, i.e. the
number of member-sequences per second is seeds x that. Also the validation throughput.
Options: --seeds 10  --hidden 100  --sequences 200  --device cpu|cuda
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from plastcli.core import rnn
from plastcli.engine.inner import resolve_device


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--hidden", type=int, default=100)
    ap.add_argument("--sequences", type=int, default=200)
    ap.add_argument("--T", type=int, default=50)
    ap.add_argument("--present", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    dev = resolve_device(a.device)
    P = a.seeds
    net = rnn.init_rnn(784, a.hidden, 10, list(range(P)), "xavier", dev)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(a.sequences, P, 1, 784, generator=g).to(dev)
    y = torch.randint(0, 10, (a.sequences, P, 1), generator=g).to(dev)
    th1 = torch.full((P,), 0.01, device=dev)
    th2 = torch.full((P,), 1e-3, device=dev)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    for i in range(5):  # warm-up
        net = rnn.update(net, x[i], y[i], th1, th2, a.T, a.present, 10.0)
    sync()
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(a.sequences):
        net = rnn.update(net, x[i], y[i], th1, th2, a.T, a.present, 10.0)
    sync()
    sec, cpu = time.perf_counter() - t0, time.process_time() - c0
    xv = torch.rand(500, 784, generator=g).to(dev)
    yv = torch.randint(0, 10, (500,), generator=g).to(dev)
    t0 = time.perf_counter()
    rnn.evaluate(net, xv, yv, a.T, a.present, 10.0)
    sync()
    ev = time.perf_counter() - t0
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu"
    print(f"device {dev} ({name}), torch threads {torch.get_num_threads()}, hidden {a.hidden}, "
          f"T {a.T}, {P} seeds (population members)")
    print(f"training: {a.sequences / sec:.1f} sequences/s per population "
          f"({P * a.sequences / sec:.1f} member-sequences/s; {1e3 * sec / a.sequences:.2f} ms "
          f"per update of all {P} members)")
    print(f"training by CPU time of this process: {a.sequences / cpu:.1f} sequences/s "
          f"(differs from the above when the machine is shared)")
    print(f"validation: {P * 500 / ev:.0f} member-sequences/s (500 sequences x {P} members in "
          f"{ev:.2f} s)")


if __name__ == "__main__":
    main()
