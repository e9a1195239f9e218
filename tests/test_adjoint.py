"""The hand-written reverse pass against autograd through the unrolled loop."""

from __future__ import annotations

import pytest
import torch
from test_engine import _config, _tiny_sampler

from plastcli import adjoint
from plastcli.engine import MetaTrainer
from plastcli.network import init_net
from plastcli.recipes import TERM_NAMES
from plastcli.rules import LayerCoefficients, layer_mask

SMALL = {"quad_1", "quad_2", "quad_3", "sum_post_grad"}  # large values blow the net up


def _both_gradients(terms, feedback, per_layer=None, seeds=(7, 8)):
    """(autograd grad, adjoint grad, autograd CE, adjoint CE) in float64."""
    torch.set_default_dtype(torch.float64)
    try:
        sampler = _tiny_sampler()
        cfg = _config(terms, feedback, P=len(seeds))
        if per_layer is not None:
            cfg.mask = layer_mask(terms, per_layer, 3).expand(len(seeds), 3, -1).clone()
        tr = MetaTrainer(cfg, sampler, list(seeds), torch.device("cpu"))
        ep = sampler.sample(list(seeds), 0, "cpu")
        ep.x_train, ep.x_query = ep.x_train.double(), ep.x_query.double()
        g = torch.Generator().manual_seed(5)
        scale = torch.tensor([0.03 if t in SMALL else 0.3 for t in terms])
        theta = (scale * torch.rand(tr.params[0].shape, generator=g)).requires_grad_(True)
        _, ce_ref, _ = tr.member_losses(ep, [theta])
        ref = torch.autograd.grad(ce_ref.sum(), theta)[0]
        full = theta @ tr.S.double()
        coef = full.unsqueeze(1) * tr.mask.double()
        net = init_net(cfg.layers, tr.seeds, 0, cfg.init, cfg.feedback)
        net.W = [w.double() for w in net.W]
        net.Bf = [b.double() for b in net.Bf] if net.Bf else None
        active = LayerCoefficients.build(full.detach(), tr.mask).active
        ce, _, cg = adjoint.meta_loss_and_coef_grad(net, ep.x_train, ep.y_train, ep.x_query,
                                                    ep.y_query, coef.detach(), active, 10.0,
                                                    feedback)
        got = torch.autograd.grad(coef, theta, cg)[0]
        return ref, got, ce_ref.detach(), ce
    finally:
        torch.set_default_dtype(torch.float32)


@pytest.mark.parametrize("term", TERM_NAMES)
def test_each_term_alone_matches_autograd(term):
    terms = ["pseudo_grad"] if term == "pseudo_grad" else ["pseudo_grad", term]
    ref, got, ce_ref, ce = _both_gradients(terms, "fixed")
    torch.testing.assert_close(ce, ce_ref, rtol=1e-12, atol=1e-12)
    assert ref.abs().max() > 1e-3  # a gradient worth comparing
    torch.testing.assert_close(got, ref, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("feedback", ["fixed", "sym"])
def test_whole_pool_matches_autograd(feedback):
    ref, got, _, _ = _both_gradients(list(TERM_NAMES), feedback)
    torch.testing.assert_close(got, ref, rtol=1e-8, atol=1e-10)


def test_per_layer_mask_matches_autograd():
    terms = ["pseudo_grad", "err_hebb", "oja"]
    per_layer = [["pseudo_grad", "err_hebb"], ["pseudo_grad"], ["pseudo_grad", "oja"]]
    ref, got, _, _ = _both_gradients(terms, "fixed", per_layer)
    torch.testing.assert_close(got, ref, rtol=1e-8, atol=1e-10)


def test_trainer_paths_agree_and_choice_is_honoured():
    terms = ["pseudo_grad", "err_hebb", "oja"]
    runs = {}
    for g in ("auto", "autograd"):
        cfg = _config(terms, P=2)
        cfg.gradient = g
        tr = MetaTrainer(cfg, _tiny_sampler(), [3, 4], torch.device("cpu"))
        assert tr.uses_adjoint == (g == "auto")
        runs[g] = [tr.run_episode() for _ in range(3)]
    for a, b in zip(runs["auto"], runs["autograd"], strict=True):
        for key in ("meta_loss", "theta", "angles"):
            torch.testing.assert_close(torch.as_tensor(a[key]), torch.as_tensor(b[key]),
                                       rtol=1e-4, atol=1e-6)


def test_unsupported_configurations_fall_back_to_autograd():
    assert not adjoint.supported("plastic", True, True)
    assert not adjoint.supported("sym", False, False)
    assert adjoint.supported("sym", False, True) and adjoint.supported("fixed", False, True)
