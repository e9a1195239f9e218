"""The engine against independent computations: autograd, finite differences,
members run alone, torch's Adam."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from plastcli.core.network import Net, forward, init_net
from plastcli.core.rules import IDX, LayerCoefficients, layer_mask, selection_matrix
from plastcli.core.terms import BUILTIN_POOL
from plastcli.data import Dataset, TaskSampler
from plastcli.engine.inner import Adam, inner_step
from plastcli.engine.meta import MetaConfig, MetaTrainer

LAYERS = [12, 9, 7, 5]


def _coefs(theta_full, terms, P, L=3):
    return LayerCoefficients.build(theta_full, layer_mask(terms, None, L).expand(P, L, -1)
                                   .to(theta_full.dtype))


def test_sym_pseudo_grad_step_is_exact_gradient_descent():
    """With B = W and pseudo_grad alone, one step is W - theta * dCE/dW (autograd)."""
    P, theta = 2, 0.05
    net = init_net(LAYERS, [3, 4], 0, "xavier", "sym")
    net = Net(W=[w.double() for w in net.W])
    g = torch.Generator().manual_seed(0)
    x = torch.rand(P, 1, LAYERS[0], generator=g, dtype=torch.float64)
    labels = torch.tensor([[1], [4]])
    onehot = F.one_hot(labels, LAYERS[-1]).double()
    full = torch.zeros(P, 10, dtype=torch.float64)
    full[:, IDX["pseudo_grad"]] = theta
    new = inner_step(net, x, onehot, _coefs(full, ["pseudo_grad"], P), 10.0, "sym")

    W = [w.clone().requires_grad_(True) for w in net.W]
    z = forward(W, x, 10.0)[0][-1]
    loss = F.cross_entropy(z.reshape(-1, LAYERS[-1]), labels.reshape(-1), reduction="sum")
    grads = torch.autograd.grad(loss, W)
    for w_new, w, gW in zip(new.W, net.W, grads, strict=True):
        torch.testing.assert_close(w_new, w - theta * gW, rtol=1e-10, atol=1e-12)


def _tiny_sampler(n_classes=5, per_class=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n_classes * per_class, LAYERS[0], generator=g)
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    data = Dataset("tiny", "test", images, labels, n_classes, {})
    return TaskSampler(data, classes=3, train_per_class=4, query_per_class=2,
                       per_class_cap=None, cap_seed=0)


def _config(terms, feedback="fixed", P=1, fb_terms=None, dtype=torch.float32, l1=0.0,
            pool=BUILTIN_POOL):
    L = len(LAYERS) - 1
    cfg = MetaConfig(layers=LAYERS, init="xavier", beta=10.0, feedback=feedback, terms=terms,
                     term_init={"pseudo_grad": 0.02}, mask=layer_mask(terms, None, L, pool)
                     .expand(P, L, -1).clone(), lr=1e-2, l1=l1, pool=pool)
    if fb_terms:
        cfg.fb_terms, cfg.fb_init = fb_terms, {}
        cfg.fb_mask = layer_mask(fb_terms, None, L).expand(P, L, -1).clone()
    return cfg


def _adjoint_args(seeds, terms=("pseudo_grad", "err_hebb", "oja")) -> tuple:
    """Positional arguments of parallel.meta_loss_and_coef_grad for a tiny fixed-feedback
    population with the trainer's initial coefficients, on episode 0."""
    sampler = _tiny_sampler()
    cfg = _config(list(terms), P=len(seeds))
    tr = MetaTrainer(cfg, sampler, list(seeds), torch.device("cpu"))
    ep = sampler.sample(list(seeds), 0, "cpu")
    full = tr.params[0] @ tr.S
    coef = full.unsqueeze(1) * tr.mask
    active = LayerCoefficients.build(full, tr.mask).active
    net = init_net(cfg.layers, list(seeds), 0, cfg.init, cfg.feedback)
    return net, ep.x_train, ep.y_train, ep.x_query, ep.y_query, coef, active, 10.0, "fixed"


def _assert_same_meta_outputs(got, ref) -> None:
    """Two (CE, final Net, coefficient gradient) results agree to float32 rounding."""
    torch.testing.assert_close(got[0], ref[0], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(got[2], ref[2], rtol=1e-5, atol=1e-6)
    for a, b in zip(got[1].W, ref[1].W, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("terms,feedback,fb_terms", [
    (["pseudo_grad", "err_hebb", "oja"], "fixed", None),
    (["pseudo_grad", "quad_1", "quad_3", "decay", "ones_pre_err"], "fixed", None),
    (["pseudo_grad", "err_hebb", "oja", "decay"], "plastic", ["post_act_pre_err", "decay"]),
])
def test_meta_gradient_matches_finite_differences(terms, feedback, fb_terms):
    torch.set_default_dtype(torch.float64)
    try:
        sampler = _tiny_sampler()
        cfg = _config(terms, feedback, fb_terms=fb_terms, l1=0.01)
        tr = MetaTrainer(cfg, sampler, [7], torch.device("cpu"))
        ep = sampler.sample([7], 0, "cpu")
        ep.x_train, ep.x_query = ep.x_train.double(), ep.x_query.double()
        g = torch.Generator().manual_seed(5)
        params = [(0.05 * torch.randn(p.shape, generator=g)).double() for p in tr.params]
        leaves = [p.clone().requires_grad_(True) for p in params]
        loss = tr.member_losses(ep, leaves)[0].sum()
        analytic = torch.autograd.grad(loss, leaves)
        h = 1e-6
        for k, p in enumerate(params):
            for j in range(p.shape[1]):
                plus = [q.clone() for q in params]
                minus = [q.clone() for q in params]
                plus[k][0, j] += h
                minus[k][0, j] -= h
                with torch.no_grad():
                    fd = (tr.member_losses(ep, plus)[0].sum()
                          - tr.member_losses(ep, minus)[0].sum()) / (2 * h)
                assert analytic[k][0, j].item() == pytest.approx(fd.item(), rel=1e-5, abs=1e-8)
    finally:
        torch.set_default_dtype(torch.float32)


def _train(seeds, cfg, episodes=3):
    tr = MetaTrainer(cfg, _tiny_sampler(), seeds, torch.device("cpu"))
    return [tr.run_episode() for _ in range(episodes)]


def test_batched_members_equal_members_run_alone():
    terms = ["pseudo_grad", "err_hebb", "oja"]
    seeds = [11, 12, 13, 14]
    together = _train(seeds, _config(terms, P=4))
    for i, s in enumerate(seeds):
        alone = _train([s], _config(terms, P=1))
        for rt, ra in zip(together, alone, strict=True):
            for key in ("meta_loss", "meta_accuracy", "theta", "angles",
                        "orthonormality_error"):
                np.testing.assert_allclose(rt[key][i], ra[key][0], rtol=1e-5, atol=1e-6,
                                           err_msg=key)


def test_adam_matches_torch_adam_and_freezes_inactive_members():
    g = torch.Generator().manual_seed(0)
    p0 = torch.randn(3, 4, generator=g)
    ours, ref = p0.clone(), p0.clone().requires_grad_(True)
    adam = Adam([(3, 4)], lr=0.01)
    opt = torch.optim.Adam([ref], lr=0.01)
    active = torch.tensor([True, False, True])
    for _ in range(5):
        grad = torch.randn(3, 4, generator=g)
        adam.step([ours], [grad], active)
        opt.zero_grad()
        ref.grad = grad.clone()
        opt.step()
    torch.testing.assert_close(ours[active], ref.detach()[active])
    torch.testing.assert_close(ours[1], p0[1])  # inactive member untouched


def test_selection_matrix_places_rule_terms_in_pool():
    S = selection_matrix(["oja", "pseudo_grad"])
    theta = torch.tensor([[2.0, 3.0]])
    full = theta @ S
    assert full[0, IDX["oja"]] == 2.0 and full[0, IDX["pseudo_grad"]] == 3.0
    assert full.abs().sum() == 5.0
