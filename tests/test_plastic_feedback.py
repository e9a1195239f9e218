"""Plastic feedback (P2 Eq. 9, SPEC §3.3): the B update against a literal per-sample loop,
the feedback coefficients' meta-gradient against finite differences, angles against
backprop, and both coefficient sets in the store."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import REPO

from plastcli.core.network import Net, forward, init_net
from plastcli.core.rules import IDX, LayerCoefficients, R, layer_mask, selection_matrix
from plastcli.data import Dataset, TaskSampler
from plastcli.engine.diagnostics import alignment_angles
from plastcli.engine.inner import run_inner_loop
from plastcli.engine.meta import MetaConfig, MetaTrainer
from plastcli.experiments import meta_train
from plastcli.recipes import load_recipe
from plastcli.results.store import read_store

LAYERS = [12, 9, 7, 5]
BETA = 10.0
FWD = ["pseudo_grad", "err_hebb", "oja", "decay"]
FB = ["post_act_pre_err", "decay"]


def _coefs(values: np.ndarray, terms: list[str]) -> LayerCoefficients:
    """values ``[P, len(terms)]`` on every layer."""
    P, L = values.shape[0], len(LAYERS) - 1
    full = torch.as_tensor(values, dtype=torch.float64) @ selection_matrix(terms).double()
    return LayerCoefficients.build(full, layer_mask(terms, None, L).double().expand(P, L, R))


def _numpy_plastic_loop(W, B, xs, labels, c, f):
    """Online steps, one sample at a time, every element of both updates in a loop.

    c = (pseudo_grad, err_hebb, oja, decay) forward coefficients, f = (post_act_pre_err,
    decay) feedback coefficients; W, B lists of [n_l, n_{l-1}] arrays (copied).
    """
    W, B = [w.copy() for w in W], [b.copy() for b in B]
    L = len(W)
    for x, label in zip(xs, labels, strict=True):
        ys, zs = [x], [None]
        for l in range(1, L + 1):
            z = W[l - 1] @ ys[-1]
            zs.append(z)
            ys.append(np.log1p(np.exp(BETA * z)) / BETA if l < L
                      else np.exp(z - z.max()) / np.exp(z - z.max()).sum())
        es = [None] * (L + 1)
        es[L] = ys[L] - np.eye(len(ys[L]))[label]
        for l in range(L, 0, -1):  # errors through the CURRENT feedback matrices
            d = 1 - np.exp(-BETA * ys[0]) if l == 1 else 1 / (1 + np.exp(-BETA * zs[l - 1]))
            es[l - 1] = (B[l - 1].T @ es[l]) * d
        newW, newB = [], []
        for l in range(1, L + 1):
            w, b = W[l - 1], B[l - 1]
            e, ep, y, yp = es[l], es[l - 1], ys[l], ys[l - 1]
            dw, db = np.zeros_like(w), np.zeros_like(b)
            for i in range(w.shape[0]):
                for j in range(w.shape[1]):
                    oja = y[i] * yp[j] - sum(y[i] * y[k] * w[k, j] for k in range(w.shape[0]))
                    dw[i, j] = (-c[0] * e[i] * yp[j] - c[1] * e[i] * ep[j] + c[2] * oja
                                - c[3] * w[i, j])
                    db[i, j] = -f[0] * y[i] * ep[j] - f[1] * b[i, j]
            newW.append(w + dw)
            newB.append(b + db)
        W, B = newW, newB
    return W, B


def test_plastic_feedback_update_matches_literal_loop():
    P, T = 2, 3
    net = init_net(LAYERS, [5, 6], 0, "xavier", "plastic")
    net = Net(W=[w.double() for w in net.W], Bf=[b.double() for b in net.Bf])
    g = torch.Generator().manual_seed(1)
    x = torch.rand(P, T, LAYERS[0], generator=g, dtype=torch.float64)
    labels = torch.tensor([[0, 3, 1], [4, 4, 2]])
    c = np.array([[0.05, 0.2, 0.01, 0.002], [0.03, -0.1, 0.02, 0.001]])
    f = np.array([[0.3, 0.01], [-0.2, 0.05]])
    new = run_inner_loop(net, x, labels, LAYERS[-1], _coefs(c, FWD), BETA, "plastic",
                         _coefs(f, FB))
    for p in range(P):
        W, B = _numpy_plastic_loop([w[p].numpy() for w in net.W], [b[p].numpy() for b in net.Bf],
                                   x[p].numpy(), labels[p].tolist(), c[p], f[p])
        for l in range(len(W)):
            np.testing.assert_allclose(new.W[l][p].numpy(), W[l], rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(new.Bf[l][p].numpy(), B[l], rtol=1e-9, atol=1e-12)
            # B really moved by its own rule
            assert np.abs(B[l] - net.Bf[l][p].numpy()).max() > 1e-4


def _tiny_sampler():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(5 * 12, LAYERS[0], generator=g)
    data = Dataset("tiny", "test", images, torch.arange(5).repeat_interleave(12), 5, {})
    return TaskSampler(data, classes=3, train_per_class=4, query_per_class=2,
                       per_class_cap=None, cap_seed=0)


def test_feedback_coefficients_meta_gradient_matches_finite_differences():
    torch.set_default_dtype(torch.float64)
    try:
        L = len(LAYERS) - 1
        cfg = MetaConfig(layers=LAYERS, init="xavier", beta=BETA, feedback="plastic", terms=FWD,
                         term_init={}, mask=layer_mask(FWD, None, L)[None].clone(),
                         fb_terms=FB, fb_init={},
                         fb_mask=layer_mask(FB, None, L)[None].clone())
        sampler = _tiny_sampler()
        tr = MetaTrainer(cfg, sampler, [3], torch.device("cpu"))
        ep = sampler.sample([3], 0, "cpu")
        ep.x_train, ep.x_query = ep.x_train.double(), ep.x_query.double()
        fwd = torch.tensor([[0.08, 0.05, 0.02, 0.003]])
        fb = torch.tensor([[0.4, 0.02]])
        leaves = [fwd.clone().requires_grad_(True), fb.clone().requires_grad_(True)]
        analytic = torch.autograd.grad(tr.member_losses(ep, leaves)[0].sum(), leaves)[1]
        assert analytic.abs().min() > 1e-6  # the feedback rule matters to the meta-loss
        h = 1e-6
        for j in range(len(FB)):
            plus, minus = fb.clone(), fb.clone()
            plus[0, j] += h
            minus[0, j] -= h
            with torch.no_grad():
                fd = (tr.member_losses(ep, [fwd, plus])[0].sum()
                      - tr.member_losses(ep, [fwd, minus])[0].sum()) / (2 * h)
            assert analytic[0, j].item() == pytest.approx(fd.item(), rel=1e-5, abs=1e-9)
    finally:
        torch.set_default_dtype(torch.float32)


def test_angles_are_measured_against_backprop_not_the_plastic_matrices():
    net = init_net(LAYERS, [1], 0, "xavier", "plastic")
    x = torch.rand(1, 4, LAYERS[0], generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([[0, 1, 2, 3]])
    zs, ys = forward(net.W, x, BETA)
    random_b = alignment_angles(net, zs, ys, labels, BETA, "plastic")
    assert (random_b[0, 1:] > 20).all()  # random B: far from backprop (last entry = e_{L-1})
    aligned = Net(W=net.W, Bf=[w.clone() for w in net.W])
    same = alignment_angles(aligned, zs, ys, labels, BETA, "plastic")
    assert same.abs().max() < 0.1  # degrees; float32 arccos near 1


def test_fig8_recipes_and_store_records_both_coefficient_sets(tmp_path):
    tiny = ["network.layers=[784, 10, 8, 47]", "task.classes=3", "task.train_per_class=3",
            "task.query_per_class=2", "population.seeds=2", "meta.episodes=3",
            "run.checkpoint_every=2", "run.device=cpu", "meta.lr=0.01"]
    rec = load_recipe(REPO / "recipes/2024/fig8-plastic-feedback.yaml", tiny)
    assert rec.feedback == "plastic" and rec.rule.terms == FWD and rec.feedback_rule.terms == FB
    bp = load_recipe(REPO / "recipes/2024/fig8-bp.yaml")
    assert bp.feedback == "sym" and bp.rule.terms == ["pseudo_grad"]
    assert bp.network.layers == [784, 170, 130, 100, 70, 47] == \
        load_recipe(REPO / "recipes/2024/fig8-plastic-feedback.yaml").network.layers
    meta_train.run(rec, tmp_path / "f8.h5")
    st = read_store(tmp_path / "f8.h5")
    assert st.complete and st.json_attr("feedback_term_names") == FB
    fb = st["episodes/theta_feedback"]
    assert fb.shape == (2, 3, 2) and st["episodes/theta"].shape == (2, 3, 4)
    assert (np.abs(np.diff(fb, axis=1)).sum(-1) > 0).all()  # learned, recorded every episode
    assert np.isfinite(st["episodes/angles"]).all()
    assert IDX["post_act_pre_err"] != IDX["decay"]


class _Store:
    """The part of a read store the Fig 8 summary uses: arrays by path, attrs."""

    def __init__(self, arrays: dict, classes: int = 5):
        self.arrays = arrays
        self.attrs = {"recipe_yaml": f"task: {{classes: {classes}}}\n"}

    def __getitem__(self, key):
        return self.arrays[key]


def _fig8_stores(base, order, delta, loss=None, diverged=None):
    S, E = base.shape
    loss = np.full((S, E), 1.0) if loss is None else loss
    bp = _Store({"members/seed": np.arange(S), "episodes/meta_accuracy": base,
                 "episodes/meta_loss": np.full((S, E), 1.0),
                 "members/diverged_at": np.full(S, -1)})
    plastic = _Store({"members/seed": order, "episodes/meta_accuracy": base[order] + delta,
                      "episodes/meta_loss": loss[order],
                      "members/diverged_at": np.full(S, -1) if diverged is None
                      else diverged[order]})
    return plastic, bp


def test_fig8_verdict_pairs_members_by_seed_and_reads_the_ci():
    from plastcli.figures.paper2024 import fig8_verdict

    rng = np.random.default_rng(0)
    base = rng.uniform(0.5, 0.7, size=(10, 1)) + np.zeros((10, 60))  # [seeds, episodes]
    order = rng.permutation(10)  # the plastic store lists its seeds in another order

    def stores(delta):
        return _fig8_stores(base, order, delta)

    assert "**exceeds**" in fig8_verdict(*stores(0.01))  # paired: a tiny, constant gain
    assert "**falls short of**" in fig8_verdict(*stores(-0.01))
    noisy = rng.normal(0, 0.02, size=(10, 1))
    assert "**matches**" in fig8_verdict(*stores(noisy - noisy.mean()))
    assert "10 shared seeds" in fig8_verdict(*stores(0.0))
    assert "neither failed" not in fig8_verdict(*stores(0.0))


def test_fig8_names_failed_seeds_and_decides_with_and_without_them():
    """Seed 2 diverged, seed 5 never learned (final loss above ln 5): they count in the
    verdict over all seeds, and a second verdict leaves them out."""
    from plastcli.figures.paper2024 import failed_seeds, fig8_failures, fig8_verdict

    base = np.linspace(0.6, 0.7, 10)[:, None] + np.zeros((10, 60))
    order = np.arange(10)
    delta = np.full((10, 1), 0.01)
    delta[[2, 5]] = -0.45  # the failed seeds sit near chance accuracy
    loss = np.full((10, 60), 1.0)
    loss[5] = 2.0  # > ln 5
    diverged = np.full(10, -1)
    diverged[2] = 7
    plastic, bp = _fig8_stores(base, order, delta, loss, diverged)
    assert failed_seeds(plastic) == {"diverged": [2], "above chance loss": [5]}
    assert fig8_failures(plastic) == ("2 of 10 seeds failed (diverged: seed 2 (episode 7); "
                                      "above chance loss: seed 5)")
    text = fig8_verdict(plastic, bp)
    assert "over 10 shared seeds" in text and "**matches**" in text
    assert "over 8 shared seeds where neither failed" in text and "**exceeds**" in text
