"""Online training (plastcli/engine/online.py) and the online diagnostics, each against an
independent computation: a literal numpy loop, a direct numpy formula, or members run alone."""

from __future__ import annotations

import numpy as np
import torch

from plastcli.core.network import Net, errors, forward, init_net, output_error
from plastcli.core.rules import IDX, PSEUDO, LayerCoefficients, R, layer_mask
from plastcli.engine import diagnostics
from plastcli.engine.online import concat_nets, eval_points, run_online, stream_order
from plastcli.results import statistics

BETA = 10.0
LAYERS = [12, 9, 7, 5]


def _rule(P: int, terms: list[str], values: dict[str, float], L: int) -> LayerCoefficients:
    theta = torch.zeros(P, R)
    for t, v in values.items():
        theta[:, IDX[t]] = v
    return LayerCoefficients.build(theta, layer_mask(terms, None, L).expand(P, L, R))


def _tiny_data(n: int = 60, n_in: int = 12, n_out: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, n_in, generator=g), torch.randint(0, n_out, (n,), generator=g)


# ----------------------------------------------------------------- bootstrap CI


def test_bootstrap_ci_matches_a_literal_resampling_loop():
    values = np.array([[0.1, 1.0], [0.4, 2.0], [0.35, 0.5], [0.8, 1.5], [0.2, 3.0]])
    mean, lo, hi = statistics.bootstrap_ci(values, level=0.98, resamples=500, seed=3)
    rng = np.random.default_rng(3)
    idx = rng.integers(0, 5, size=(500, 5))
    means = np.array([[np.mean([values[i, c] for i in row]) for c in range(2)] for row in idx])
    np.testing.assert_allclose(mean, values.mean(0))
    for c in range(2):
        srt = np.sort(means[:, c])
        # numpy's default 'linear' percentile: position q (n - 1)
        for q, got in ((0.01, lo[c]), (0.99, hi[c])):
            pos = q * (len(srt) - 1)
            k = int(np.floor(pos))
            want = srt[k] + (pos - k) * (srt[min(k + 1, len(srt) - 1)] - srt[k])
            np.testing.assert_allclose(got, want, rtol=1e-12)


def test_bootstrap_ci_width_matches_normal_theory():
    rng = np.random.default_rng(1)
    x = rng.normal(5.0, 2.0, size=400)
    mean, lo, hi = statistics.bootstrap_ci(x, level=0.98, resamples=500)
    half = 2.326 * x.std() / np.sqrt(len(x))  # z_{0.99} sd / sqrt(n)
    assert lo < mean < hi
    np.testing.assert_allclose((hi - lo) / 2, half, rtol=0.15)
    const = statistics.bootstrap_ci(np.full((7, 3), 0.25))
    for a in const:
        np.testing.assert_allclose(a, 0.25)


# ----------------------------------------------------------------- online training


def test_batched_twenty_seeds_equal_seeds_one_by_one():
    """Each member's trajectory is the same alone or in a population of 20 (FA + Oja, so the
    fixed feedback matrices and the stream order are per member too)."""
    images, labels = _tiny_data()
    seeds = list(range(20))
    L = len(LAYERS) - 1
    values = {"pseudo_grad": 0.05, "oja": 0.01}
    terms = list(values)
    order = stream_order(seeds, torch.arange(len(labels)), 40)
    net = init_net(LAYERS, seeds, 0, "xavier", "fixed")
    together = run_online(net, _rule(20, terms, values, L), images, labels, order, 5, BETA,
                          "fixed", 10)
    alone = []
    for s in seeds:
        one = init_net(LAYERS, [s], 0, "xavier", "fixed")
        o = stream_order([s], torch.arange(len(labels)), 40)
        torch.testing.assert_close(o[0], order[s])
        alone.append(run_online(one, _rule(1, terms, values, L), images, labels, o, 5, BETA,
                                "fixed", 10))
    stacked = concat_nets(alone)
    for a, b in zip(together.W, stacked.W, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(together.W[0][0], together.W[0][1])  # members differ


def test_run_online_matches_a_numpy_loop_and_calls_eval_at_the_right_points():
    """Two members of BP (sym feedback) against plain numpy SGD on softplus nets."""
    images, labels = _tiny_data(30)
    seeds = [4, 9]
    L = len(LAYERS) - 1
    net = init_net(LAYERS, seeds, 0, "xavier", "sym")
    W0 = [w.double().numpy().copy() for w in net.W]
    order = stream_order(seeds, torch.arange(30), 13)
    seen = []
    out = run_online(net, _rule(2, ["pseudo_grad"], {"pseudo_grad": 0.1}, L), images, labels,
                     order, 5, BETA, "sym", 5, lambda n, k: seen.append(k))
    assert seen == [0, 5, 10, 13] == eval_points(13, 5)
    x_np, y_np = images.double().numpy(), labels.numpy()
    for p in range(2):
        W = [w[p].copy() for w in W0]
        for t in order[p].tolist():
            ys, zs = [x_np[t]], [None]
            for l in range(L):
                z = W[l] @ ys[-1]
                zs.append(z)
                ys.append(np.logaddexp(0, BETA * z) / BETA if l < L - 1
                          else np.exp(z - z.max()) / np.exp(z - z.max()).sum())
            e = ys[-1] - np.eye(5)[y_np[t]]
            grads = [None] * L
            for l in range(L, 0, -1):
                grads[l - 1] = np.outer(e, ys[l - 1])
                if l > 1:
                    e = (W[l - 1].T @ e) / (1 + np.exp(-BETA * zs[l - 1]))
            W = [w - 0.1 * g for w, g in zip(W, grads, strict=True)]
        for l in range(L):
            np.testing.assert_allclose(out.W[l][p].double().numpy(), W[l], rtol=1e-4, atol=1e-6)


def test_stream_order_depends_only_on_the_seed():
    pool = torch.arange(100, 200)
    a = stream_order([1, 2, 3], pool, 50)
    b = stream_order([3, 1], pool, 50)
    torch.testing.assert_close(a[2], b[0])
    torch.testing.assert_close(a[0], b[1])
    assert len(set(a[0].tolist())) == 50 and set(a[0].tolist()) <= set(pool.tolist())
    assert not torch.equal(a[0], a[1])
    assert not torch.equal(a[0], stream_order([1], pool, 50, stream=1)[0])


# ----------------------------------------------------------------- network pieces


def test_dfa_errors_match_a_literal_loop():
    torch.manual_seed(0)
    P, L = 2, len(LAYERS) - 1
    net = init_net(LAYERS, [0, 1], 0, "xavier", "direct")
    x = torch.rand(P, 1, LAYERS[0])
    onehot = torch.nn.functional.one_hot(torch.tensor([[1], [3]]), LAYERS[-1]).float()
    zs, ys = forward(net.W, x, BETA)
    es = errors(net, zs, ys, output_error(ys[-1], onehot), BETA, "direct", need_e0=True)
    for p in range(P):
        eL = (ys[-1][p, 0] - onehot[p, 0]).numpy()
        for l in range(L):
            D = net.D[l][p].numpy()  # [n_L, n_l]
            for i in range(LAYERS[l]):
                s = sum(D[k, i] * eL[k] for k in range(LAYERS[-1]))
                if l == 0:
                    deriv = 1 - np.exp(-BETA * x[p, 0, i].item())
                else:
                    deriv = 1 / (1 + np.exp(-BETA * zs[l][p, 0, i].item()))
                np.testing.assert_allclose(es[l][p, 0, i].item(), s * deriv, rtol=1e-5,
                                           atol=1e-7)


def test_naive_initialiser_mean_and_std():
    net = init_net([784, 300, 10], [0, 1], 0, "naive", "sym")
    w = net.W[0].flatten()
    assert abs(w.mean().item()) < 3e-4
    np.testing.assert_allclose(w.std().item(), 0.01, rtol=0.01)
    assert not torch.equal(net.W[0][0], net.W[0][1])


# ----------------------------------------------------------------- diagnostics


def _net_and_acts(P=2, B=6, seed=0):
    net = init_net(LAYERS, list(range(seed, seed + P)), 0, "xavier", "sym")
    x = torch.rand(P, B, LAYERS[0], generator=torch.Generator().manual_seed(seed))
    zs, ys = forward(net.W, x, BETA)
    return net, x, zs, ys


def test_reconstruction_error_and_activation_norms_match_numpy():
    net, x, zs, ys = _net_and_acts()
    rec = diagnostics.reconstruction_error(net.W, ys).numpy()
    norms = diagnostics.activation_norms(ys).numpy()
    L = net.n_layers
    assert rec.shape == norms.shape == (2, L - 1)
    for p in range(2):
        for l in range(1, L):
            W = net.W[l - 1][p].double().numpy()
            errs, ns = [], []
            for b in range(x.shape[1]):
                pre = ys[l - 1][p, b].double().numpy()
                post = np.logaddexp(0, BETA * (W @ pre)) / BETA
                errs.append(np.sum((pre - W.T @ post) ** 2))
                ns.append(np.sqrt(np.sum(post ** 2)))
            np.testing.assert_allclose(rec[p, l - 1], np.mean(errs), rtol=1e-4)
            np.testing.assert_allclose(norms[p, l - 1], np.mean(ns), rtol=1e-4)


def test_reconstructed_images_match_numpy():
    net, x, zs, ys = _net_and_acts()
    out = diagnostics.reconstruct_inputs(net.W, ys, [1, 2]).numpy()
    assert out.shape == (2, 6, 2, LAYERS[0])
    for p in range(2):
        W1, W2 = (net.W[i][p].double().numpy() for i in range(2))
        for b in range(6):
            y1, y2 = ys[1][p, b].double().numpy(), ys[2][p, b].double().numpy()
            np.testing.assert_allclose(out[p, b, 0], W1.T @ y1, rtol=1e-4, atol=1e-6)
            np.testing.assert_allclose(out[p, b, 1], W1.T @ (W2.T @ y2), rtol=1e-4, atol=1e-6)


def test_pca_spectrum_matches_numpy_covariance_eigenvalues():
    g = np.random.default_rng(0)
    y = g.normal(size=(2, 50, 6)) * np.array([3.0, 2.0, 1.0, 0.5, 0.2, 0.1])
    got = diagnostics.pca_cumulative_variance(torch.tensor(y, dtype=torch.float32)).numpy()
    for p in range(2):
        ev = np.sort(np.linalg.eigvalsh(np.cov(y[p].T)))[::-1]
        np.testing.assert_allclose(got[p], np.cumsum(ev) / ev.sum(), rtol=1e-5)
    assert np.all(np.diff(got, axis=1) >= -1e-7)


def test_update_norms_match_numpy_outer_products():
    P, L = 2, len(LAYERS) - 1
    net, x, zs, ys = _net_and_acts(P, 3, seed=5)
    labels = torch.tensor([[0, 2, 4], [1, 3, 0]])
    vals = {"pseudo_grad": 0.05, "oja": 0.02}
    rule = _rule(P, list(vals), vals, L)
    pseudo = torch.full((P,), 0.05)
    bp, whole = diagnostics.update_norms(net, x, labels, rule, pseudo, BETA, "sym")
    onehot = torch.nn.functional.one_hot(labels, LAYERS[-1]).float()
    es = errors(net, zs, ys, output_error(ys[-1], onehot), BETA, "sym", need_e0=False)
    for p in range(P):
        for l in range(1, L + 1):
            W = net.W[l - 1][p].double().numpy()
            want_bp, want_all = [], []
            for b in range(3):
                e = es[l][p, b].double().numpy()
                pre, post = ys[l - 1][p, b].double().numpy(), ys[l][p, b].double().numpy()
                d_bp = -0.05 * np.outer(e, pre)
                d_oja = 0.02 * (np.outer(post, pre) - np.outer(post, post) @ W)
                want_bp.append(np.linalg.norm(d_bp))
                want_all.append(np.linalg.norm(d_bp + d_oja))
            np.testing.assert_allclose(bp[p, l - 1].item(), np.mean(want_bp), rtol=1e-4)
            np.testing.assert_allclose(whole[p, l - 1].item(), np.mean(want_all), rtol=1e-3)
    assert PSEUDO == IDX["pseudo_grad"]


def test_concat_nets_keeps_feedback_matrices():
    a = init_net(LAYERS, [0], 0, "xavier", "fixed")
    b = init_net(LAYERS, [1], 0, "xavier", "fixed")
    both = concat_nets([a, b])
    assert isinstance(both, Net) and both.W[0].shape[0] == 2 and both.D is None
    torch.testing.assert_close(both.Bf[1][1], b.Bf[1][0])


def test_update_norms_with_a_declared_term_match_numpy():
    """A recipe's own term (here −(1ᵀ y_post) y_post 1ᵀ, beyond the built-in pool) enters
    the whole update's norm; the diagnostics once ignored the run's pool and failed."""
    from plastcli.core.terms import declare, make_pool

    P, L = 2, len(LAYERS) - 1
    net, x, zs, ys = _net_and_acts(P, 3, seed=6)
    labels = torch.tensor([[0, 2, 4], [1, 3, 0]])
    pool = make_pool(["pseudo_grad", "act"], {"act": declare("act", "y_post", "ones",
                                                              "1ᵀ y_post", -1)})
    theta = torch.zeros(P, len(pool))
    theta[:, pool.index["pseudo_grad"]], theta[:, pool.index["act"]] = 0.05, 0.01
    mask = layer_mask(["pseudo_grad", "act"], None, L, pool).expand(P, L, len(pool))
    rule = LayerCoefficients.build(theta, mask, pool)
    _, whole = diagnostics.update_norms(net, x, labels, rule, torch.full((P,), 0.05), BETA,
                                        "sym")
    onehot = torch.nn.functional.one_hot(labels, LAYERS[-1]).float()
    es = errors(net, zs, ys, output_error(ys[-1], onehot), BETA, "sym", need_e0=False)
    for p in range(P):
        for l in range(1, L + 1):
            want = []
            for b in range(3):
                e = es[l][p, b].double().numpy()
                pre, post = ys[l - 1][p, b].double().numpy(), ys[l][p, b].double().numpy()
                d = -0.05 * np.outer(e, pre) - 0.01 * post.sum() * np.outer(post,
                                                                           np.ones_like(pre))
                want.append(np.linalg.norm(d))
            np.testing.assert_allclose(whole[p, l - 1].item(), np.mean(want), rtol=1e-3)
