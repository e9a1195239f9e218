"""Every declared term (the grammar, the ten built-in ones, recipe-declared ones) against a
literal per-sample loop written without the engine."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from term_cases import DECLARED, IDS, RECIPE_POOL

from plastcli.core import terms
from plastcli.core.rules import IDX, LayerCoefficients, apply_rule, layer_mask
from plastcli.core.terms import TERM_NAMES


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


# ------------------------------------------------------------------ generated over declarations


def literal_grammar(term, W, e_post, e_pre, y_post, y_pre):
    """F = sign · s · a bᵀ for one sample with numpy, straight from the grammar's meaning."""
    if term.decay:
        return -W
    left = {"e_post": e_post, "y_post": y_post, "ones": np.ones_like(y_post)}[term.a]
    right = {"y_pre": y_pre, "e_pre": e_pre, "ones": np.ones_like(y_pre),
             "y_pre - M^T y_post": y_pre - W.T @ y_post}[term.b]
    scalar = {"1": 1.0, "1^T y_post": np.sum(y_post), "y_post^T M e_pre": y_post @ W @ e_pre,
              "e_post^T M y_pre": e_post @ W @ y_pre}[term.s]
    F = np.zeros_like(W)
    for i in range(W.shape[0]):  # one entry at a time: no grouping, no outer-product helper
        for j in range(W.shape[1]):
            F[i, j] = term.sign * scalar * left[i] * right[j]
    return F


@pytest.mark.parametrize(("term", "pool"), DECLARED, ids=IDS)
def test_every_declared_term_matches_a_literal_per_sample_loop(term, pool):
    W, e_post, e_pre, y_post, y_pre = _random_layer(B=2, seed=4)
    P, r = W.shape[0], pool.index[term.name]
    theta = torch.zeros(P, len(pool), dtype=torch.float64)
    theta[:, r] = torch.tensor([0.5, -1.3, 2.0], dtype=torch.float64)
    mask = layer_mask([term.name], None, 1, pool).expand(P, 1, -1)
    rule = LayerCoefficients.build(theta, mask, pool)
    new = apply_rule(W, rule.views[0], rule.active[0], e_post, e_pre, y_post, y_pre, pool=pool)
    for p in range(P):
        Wp = W[p].numpy()
        if term.decay:  # decay acts once per step on W, not per sample
            expected = Wp * (1 - theta[p, r].item())
        else:
            expected = Wp.copy()
            for b in range(2):  # a batch of 2 sums the per-sample updates
                expected += theta[p, r].item() * literal_grammar(
                    term, Wp, e_post[p, b].numpy(), e_pre[p, b].numpy(), y_post[p, b].numpy(),
                    y_pre[p, b].numpy())
        np.testing.assert_allclose(new[p].numpy(), expected, rtol=1e-10, atol=1e-10)


def test_recipe_terms_together_with_the_pool_sum_of_literal_terms():
    pool = RECIPE_POOL
    W, e_post, e_pre, y_post, y_pre = _random_layer(P=2, seed=5)
    theta = torch.randn(2, len(pool), generator=torch.Generator().manual_seed(2),
                        dtype=torch.float64)
    rule = LayerCoefficients.build(theta, layer_mask(pool.names, None, 1, pool)
                                   .expand(2, 1, -1), pool)
    new = apply_rule(W, rule.views[0], rule.active[0], e_post, e_pre, y_post, y_pre, pool=pool)
    for p in range(2):
        Wp = W[p].numpy()
        expected = Wp.copy()
        for r, term in enumerate(pool.terms):
            expected += theta[p, r].item() * literal_grammar(
                term, Wp, e_post[p, 0].numpy(), e_pre[p, 0].numpy(), y_post[p, 0].numpy(),
                y_pre[p, 0].numpy())
        np.testing.assert_allclose(new[p].numpy(), expected, rtol=1e-9, atol=1e-9)


def test_builtin_declarations_are_spec_table():
    """The declarations of the ten terms give SPEC §3.1's formulas (literal_term above)."""
    W, e_post, e_pre, y_post, y_pre = (a[0, 0].numpy() if a.dim() == 3 and a.shape[1] == 1
                                       else a[0].numpy() for a in _random_layer(seed=6))
    for term in terms.BUILTIN:
        np.testing.assert_allclose(literal_grammar(term, W, e_post, e_pre, y_post, y_pre),
                                   literal_term(term.name, W, e_post, e_pre, y_post, y_pre),
                                   rtol=1e-12, atol=1e-12, err_msg=term.name)


def test_grammar_has_every_distinct_term_once():
    g = terms.grammar()
    assert len(g) == 3 * 4 * 4 + 1 and g[: len(TERM_NAMES)] == terms.BUILTIN
    assert len({t.structure for t in g}) == len(g) and len({t.name for t in g}) == len(g)
    # distinct as functions too: no two proportional over a few random samples (on one
    # sample s a b^T and a b^T are, so the samples are stacked)
    W, e_post, e_pre, y_post, y_pre = (a[0].numpy() for a in _random_layer(B=3, seed=7))
    W = W[0] if W.ndim == 3 else W
    F = np.stack([np.concatenate([literal_grammar(t, W, e_post[i], e_pre[i], y_post[i],
                                                  y_pre[i]).ravel() for i in range(3)])
                  for t in g])
    F /= np.linalg.norm(F, axis=1, keepdims=True)
    cos = np.abs(F @ F.T) - np.eye(len(g))
    assert cos.max() < 1 - 1e-6


def test_spellings_and_invalid_declarations():
    ascii_ = terms.declare("t", "ones", "y_pre - M^T y_post", "y_post^T M e_pre", -1)
    pretty = terms.declare("t", "ones", "y_pre − Mᵀ y_post", "y_postᵀ M e_pre", -1.0)
    assert ascii_ == pretty and ascii_.reads_pre_error
    for args, field in [(("t", "e_pre", "y_pre"), "a"), (("t", "e_post", "y_post"), "b"),
                        (("t", "e_post", "y_pre", "2"), "s"),
                        (("t", "e_post", "y_pre", "1", 0), "sign"),
                        (("oja", "e_post", "y_pre"), ""), (("9x", "e_post", "y_pre"), "")]:
        with pytest.raises(terms.TermError) as err:
            terms.declare(*args)
        assert err.value.field == field
    with pytest.raises(terms.TermError, match="same term as 'pseudo_grad'"):
        terms.make_pool(["mine"], {"mine": terms.declare("mine", "e_post", "y_pre", sign=1)})
