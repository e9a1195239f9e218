"""Benchmark online training speed: `python bench/bench_online.py`.

Trains the 10-layer BP+Oja network of recipes/2024/fig1-depth10.yaml (784-170-150-130-115-
100-85-70-60-50-10) online on MNIST for 20 seeds batched as one population, and prints
online steps per second (one sample per member per step), member-samples per second, and
the same for one seed alone and for the periodic validation evaluation.
Options: --seeds 20 --steps 300 --device cpu|cuda --threads N
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

LAYERS = [784, 170, 150, 130, 115, 100, 85, 70, 60, 50, 10]


def rate(P: int, steps: int, device: torch.device) -> float:
    """Online steps per second of a P-member BP+Oja population (after a warm-up)."""
    from plastcli.core.network import init_net
    from plastcli.core.rules import IDX, LayerCoefficients, R, layer_mask
    from plastcli.data import load_dataset
    from plastcli.engine.online import run_online, stream_order

    d = load_dataset("mnist", "train")
    L = len(LAYERS) - 1
    seeds = list(range(P))
    theta = torch.zeros(P, R)
    theta[:, IDX["pseudo_grad"]], theta[:, IDX["oja"]] = 0.03, 0.001
    rule = LayerCoefficients.build(theta.to(device),
                                   layer_mask(["pseudo_grad", "oja"], None, L)
                                   .expand(P, L, R).to(device))
    images, labels = d.images.to(device), d.labels.to(device)
    order = stream_order(seeds, torch.arange(len(labels)), steps + 20).to(device)
    net = init_net(LAYERS, seeds, 0, "xavier", "sym", device)
    net = run_online(net, rule, images, labels, order[:, :20], 10, 10.0, "sym", 10**9)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    run_online(net, rule, images, labels, order[:, 20:], 10, 10.0, "sym", 10**9)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - t0)


def eval_seconds(P: int, device: torch.device, val_size: int = 1000) -> float:
    """Seconds for one periodic evaluation (all curves' metrics) on val_size images."""
    from plastcli.core.network import init_net
    from plastcli.core.rules import IDX, LayerCoefficients, R, layer_mask
    from plastcli.data import load_dataset
    from plastcli.experiments.baseline import Evaluator

    d = load_dataset("mnist", "test")
    L = len(LAYERS) - 1
    theta = torch.zeros(P, R)
    theta[:, IDX["pseudo_grad"]], theta[:, IDX["oja"]] = 0.03, 0.001
    rule = LayerCoefficients.build(theta.to(device), layer_mask(["pseudo_grad", "oja"], None, L)
                                   .expand(P, L, R).to(device))
    net = init_net(LAYERS, list(range(P)), 0, "xavier", "sym", device)
    ev = Evaluator(d.images[:val_size].to(device), d.labels[:val_size].to(device), 16, 10.0,
                   "sym", rule, theta[:, 0].to(device))
    with torch.no_grad():
        ev(net, 0)
        t0 = time.perf_counter()
        ev(net, 1)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu"
    print(f"device {dev} ({name}), torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"10-layer BP+Oja network {LAYERS}, online batch size 1, {a.steps} timed steps")
    for P in (a.seeds, 1):
        r = rate(P, a.steps, dev)
        print(f"  {P:3d} seed(s) batched: {r:8.1f} steps/s = {r * P:9.1f} member-samples/s "
              f"({1000 / r:.2f} ms per step)")
    s = eval_seconds(a.seeds, dev)
    print(f"  one evaluation of {a.seeds} members on 1000 validation images: {s:.2f} s")


if __name__ == "__main__":
    main()
