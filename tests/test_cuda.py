"""The engine on a GPU against the CPU (skipped where no CUDA device is present; run on a
lent GPU with ``python -m pytest -q tests/test_cuda.py``).

The fast reverse pass on CUDA is checked in float64 against autograd on the CPU, for every
pool term and both feedback kinds; a float32 meta-training run on CUDA is checked against
the same run on the CPU to float32 rounding (the two devices order their sums differently).
"""

from __future__ import annotations

import pytest
import torch
from test_engine import _config, _tiny_sampler

from plastcli.core.network import init_net
from plastcli.core.rules import LayerCoefficients
from plastcli.core.terms import TERM_NAMES
from plastcli.engine import parallel
from plastcli.engine.meta import MetaTrainer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")

SMALL = {"quad_1", "quad_2", "quad_3", "sum_post_grad"}


def _net_to(net, device, dtype):
    net.W = [w.to(device, dtype) for w in net.W]
    net.Bf = [b.to(device, dtype) for b in net.Bf] if net.Bf else None
    return net


@pytest.mark.parametrize("feedback", ["fixed", "sym"])
def test_fast_gradient_on_cuda_matches_cpu_autograd_in_float64(feedback):
    torch.set_default_dtype(torch.float64)
    try:
        terms, seeds = list(TERM_NAMES), [7, 8]
        sampler = _tiny_sampler()
        cfg = _config(terms, feedback, P=len(seeds))
        tr = MetaTrainer(cfg, sampler, seeds, torch.device("cpu"))
        ep = sampler.sample(seeds, 0, "cpu")
        ep.x_train, ep.x_query = ep.x_train.double(), ep.x_query.double()
        g = torch.Generator().manual_seed(5)
        scale = torch.tensor([0.03 if t in SMALL else 0.3 for t in terms])
        theta = (scale * torch.rand(tr.params[0].shape, generator=g)).requires_grad_(True)
        _, ce_ref, _ = tr.member_losses(ep, [theta])
        ref = torch.autograd.grad(ce_ref.sum(), theta)[0]

        cuda = torch.device("cuda")
        full = theta @ tr.S.double()
        coef = (full.unsqueeze(1) * tr.mask.double()).to(cuda)  # differentiable copy
        active = LayerCoefficients.build(full.detach(), tr.mask).active
        net = _net_to(init_net(cfg.layers, seeds, 0, cfg.init, cfg.feedback), cuda,
                      torch.float64)
        ce, _, cg = parallel.meta_loss_and_coef_grad(
            net, ep.x_train.to(cuda), ep.y_train.to(cuda), ep.x_query.to(cuda),
            ep.y_query.to(cuda), coef.detach(), active, 10.0, feedback)
        assert cg.device.type == "cuda"
        got = torch.autograd.grad(coef, theta, cg)[0]
        torch.testing.assert_close(ce.cpu(), ce_ref.detach(), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(got, ref, rtol=1e-8, atol=1e-10)
    finally:
        torch.set_default_dtype(torch.float32)


def test_meta_training_on_cuda_follows_the_cpu_run():
    """Five float32 episodes of F_bio on both devices: the same tasks, the same initial
    weights, so the records agree up to the devices' different summation order."""
    seeds = [3, 4]
    runs = {}
    for name in ("cpu", "cuda"):
        device = torch.device(name)
        sampler = _tiny_sampler()
        tr = MetaTrainer(_config(["pseudo_grad", "err_hebb", "oja"], P=2), sampler, seeds,
                         device)
        assert tr.uses_adjoint
        runs[name] = [tr.run_episode() for _ in range(5)]
    for a, b in zip(runs["cpu"], runs["cuda"], strict=True):
        for key in ("meta_loss", "theta"):
            torch.testing.assert_close(torch.as_tensor(b[key]), torch.as_tensor(a[key]),
                                       rtol=2e-3, atol=1e-5)


def test_the_whole_population_is_one_group_with_no_deferral_on_cuda():
    net = init_net([8, 6, 4], list(range(16)), 0, "xavier", "fixed")
    net = _net_to(net, torch.device("cuda"), torch.float32)
    assert parallel.group_size(net, "cuda") == 16
    assert parallel.chunk_steps(16, "cuda") == 1
