"""Every pool term against a literal per-sample loop written without the engine."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from plastcli.recipes import TERM_NAMES
from plastcli.rules import IDX, LayerCoefficients, apply_rule, layer_mask


def literal_term(name, W, e_post, e_pre, y_post, y_pre):
    """F_r for one sample, straight from SPEC §3.1 with numpy (no grouping tricks)."""
    e_l, e_m, y_l, y_m = e_post, e_pre, y_post, y_pre
    ones = np.ones_like(y_l)
    if name == "pseudo_grad":
        return -np.outer(e_l, y_m)
    if name == "post_act_pre_err":
        return -np.outer(y_l, e_m)
    if name == "err_hebb":
        return -np.outer(e_l, e_m)
    if name == "decay":
        return -W
    if name == "ones_pre_err":
        return -np.outer(ones, e_m)
    if name == "sum_post_grad":
        return -(ones @ y_l) * np.outer(e_l, y_m)
    if name == "quad_1":
        return -(y_l @ W @ e_m) * np.outer(y_l, e_m)
    if name == "quad_2":
        return -(y_l @ W @ e_m) * np.outer(e_l, y_m)
    if name == "quad_3":
        return -(y_m @ W.T @ e_l) * np.outer(y_l, e_m)
    if name == "oja":
        return np.outer(y_l, y_m) - np.outer(y_l, y_l) @ W
    raise KeyError(name)


def _random_layer(P=3, n_post=7, n_pre=5, B=1, seed=0):
    g = torch.Generator().manual_seed(seed)

    def draw(fn, *shape):
        return fn(*shape, generator=g, dtype=torch.float64)

    W = draw(torch.randn, P, n_post, n_pre)
    e_post, y_post = draw(torch.randn, P, B, n_post), draw(torch.rand, P, B, n_post)
    e_pre, y_pre = draw(torch.randn, P, B, n_pre), draw(torch.rand, P, B, n_pre)
    return W, e_post, e_pre, y_post, y_pre


def _coefficients(theta, terms, n_layers=1):
    P = theta.shape[0]
    mask = layer_mask(terms, None, n_layers).expand(P, n_layers, -1)
    return LayerCoefficients.build(theta, mask)


@pytest.mark.parametrize("name", TERM_NAMES)
def test_each_term_matches_literal_loop(name):
    W, e_post, e_pre, y_post, y_pre = _random_layer(B=2)
    P = W.shape[0]
    theta = torch.zeros(P, len(TERM_NAMES), dtype=torch.float64)
    # a different coefficient per member
    theta[:, IDX[name]] = torch.tensor([0.5, -1.3, 2.0], dtype=torch.float64)
    rule = _coefficients(theta, [name])
    z_post = torch.matmul(y_pre, W.transpose(1, 2))
    new = apply_rule(W, rule.views[0], rule.active[0], e_post, e_pre, y_post, y_pre, z_post)
    for p in range(P):
        expected = W[p].numpy().copy()
        for b in range(2):  # a batch of 2 sums the per-sample updates
            expected += theta[p, IDX[name]].item() * literal_term(
                name, W[p].numpy(), e_post[p, b].numpy(), e_pre[p, b].numpy(),
                y_post[p, b].numpy(), y_pre[p, b].numpy())
        if name == "decay":  # decay acts once per step on W, not per sample
            expected = W[p].numpy() * (1 - theta[p, IDX[name]].item())
        np.testing.assert_allclose(new[p].numpy(), expected, rtol=1e-10, atol=1e-10)


def test_all_terms_together_sum_of_literal_terms():
    W, e_post, e_pre, y_post, y_pre = _random_layer(P=2, seed=3)
    theta = torch.randn(2, len(TERM_NAMES), generator=torch.Generator().manual_seed(1),
                        dtype=torch.float64)
    rule = _coefficients(theta, list(TERM_NAMES))
    new = apply_rule(W, rule.views[0], rule.active[0], e_post, e_pre, y_post, y_pre)
    for p in range(2):
        expected = W[p].numpy().copy()
        for name in TERM_NAMES:
            expected += theta[p, IDX[name]].item() * literal_term(
                name, W[p].numpy(), e_post[p, 0].numpy(), e_pre[p, 0].numpy(),
                y_post[p, 0].numpy(), y_pre[p, 0].numpy())
        np.testing.assert_allclose(new[p].numpy(), expected, rtol=1e-9, atol=1e-9)


def test_layer_mask_limits_terms_to_named_layers():
    mask = layer_mask(["pseudo_grad", "err_hebb"], [["pseudo_grad"], ["pseudo_grad", "err_hebb"]],
                      2)
    assert mask[0, IDX["err_hebb"]] == 0 and mask[1, IDX["err_hebb"]] == 1
    assert mask[:, IDX["pseudo_grad"]].tolist() == [1, 1]
    assert mask.sum() == 3
