"""The recurrent delayed-memory task (SPEC §6) against independent computations: a plain
autograd forward, a literal per-time-step numpy loop for the Oja term, members run alone;
and ``plast rnn-memory`` end to end on tiny data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import REPO
from typer.testing import CliRunner

from plastcli.cli import app
from plastcli.core import rnn
from plastcli.results.store import read_store

N_IN, HIDDEN, N_OUT, T, PRESENT, BETA = 13, 7, 4, 9, 3, 10.0


def _net(P=2, dtype=torch.float64):
    net = rnn.init_rnn(N_IN, HIDDEN, N_OUT, list(range(3, 3 + P)), "xavier", "cpu")
    # a stronger recurrence than xavier so that the gradient through time is not negligible
    return rnn.RnnNet(net.Wx.to(dtype), (2.5 * net.Wh).to(dtype), net.Wo.to(dtype))


def _inputs(P=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(P, 1, N_IN, generator=g, dtype=torch.float64)
    labels = torch.randint(0, N_OUT, (P, 1), generator=g)
    return x, labels


def _plain_loss(Wx, Wh, Wo, x, label):
    """One member, written from SPEC §6 with no code shared with plastcli.core.rnn."""
    z = torch.zeros(Wh.shape[0], dtype=Wh.dtype)
    for t in range(1, T + 1):
        inp = x if t <= PRESENT else torch.zeros_like(x)
        z = Wh @ (torch.log1p(torch.exp(BETA * z)) / BETA) + Wx @ inp
    out = Wo @ (torch.log1p(torch.exp(BETA * z)) / BETA)
    return -torch.log_softmax(out, 0)[label]


def test_update_without_oja_is_minus_theta_times_autograd_gradient():
    P = 2
    net, (x, labels) = _net(P), _inputs(P)
    theta = torch.tensor([0.05, 0.2], dtype=torch.float64)
    new = rnn.update(net, x, labels, theta, torch.zeros(P, dtype=torch.float64), T, PRESENT,
                     BETA)
    for p in range(P):
        W = [w[p].clone().requires_grad_(True) for w in net.weights()]
        grads = torch.autograd.grad(_plain_loss(*W, x[p, 0], labels[p, 0]), W)
        for name, w_new, w, g in zip(("Wx", "Wh", "Wo"), new.weights(), net.weights(), grads,
                                     strict=True):
            assert g.abs().max() > 1e-6, f"{name}: gradient too small to test"
            torch.testing.assert_close(w_new[p], w[p] - theta[p] * g, rtol=1e-9, atol=1e-12,
                                       msg=f"{name} of member {p}")


@pytest.mark.parametrize("pre", ["z", "sigma"])
def test_oja_term_matches_a_per_time_step_numpy_loop(pre):
    P = 2
    net, (x, labels) = _net(P), _inputs(P, seed=1)
    theta1 = torch.tensor([0.0, 0.0], dtype=torch.float64)
    theta2 = torch.tensor([0.03, 0.1], dtype=torch.float64)
    new = rnn.update(net, x, labels, theta1, theta2, T, PRESENT, BETA, pre)
    for p in range(P):
        Wx, Wh = net.Wx[p].numpy(), net.Wh[p].numpy()
        xp = x[p, 0].numpy()
        z = np.zeros(HIDDEN)
        total = np.zeros_like(Wh)
        for t in range(T):  # t = 0..T-1: the term uses z_t, then z_{t+1} is computed
            s = np.log1p(np.exp(BETA * z)) / BETA
            u = Wh @ s
            prev = z if pre == "z" else s
            total += np.outer(u, prev) - np.outer(u, u) @ Wh
            z = u + (Wx @ xp if t + 1 <= PRESENT else 0.0)
        np.testing.assert_allclose(new.Wh[p].numpy(), Wh + theta2[p].item() * total,
                                   rtol=1e-10, atol=1e-12)
        np.testing.assert_array_equal(new.Wx[p].numpy(), Wx)  # Oja acts on W_h only


@pytest.mark.parametrize("recurrent, gain, sigma", [
    ("same", 1.0, "softplus"), ("orthogonal", 1.5, "softplus"), ("normal", 2.0, "tanh"),
    ("identity", 1.0, "tanh")])
def test_batched_members_equal_members_run_alone(recurrent, gain, sigma, tmp_path):
    from plastcli.experiments.checkpoints import Checkpoints
    from plastcli.experiments.population import Population
    from plastcli.experiments.rnn_memory import train as train_unit
    from plastcli.recipes.online import RnnConditionSpec

    def train(members, *args):
        """(final net, records, W_h spectra) of one unit, through a fresh checkpoint."""
        out = train_unit(members, *args, Checkpoints(tmp_path / "t.h5", False, 5), "unit",
                         lambda net: dict(zip("xho", (w.numpy() for w in net.weights()),
                                              strict=True)))
        recs = [{k.removeprefix("rec."): v[i] for k, v in out.items() if k.startswith("rec.")}
                for i in range(len(out["rec.val_accuracy"]))]
        spectra = {k: out[k] for k in out if k.startswith("wh_")}
        return rnn.RnnNet(*(torch.as_tensor(out[k]) for k in "xho")), recs, spectra

    class _Spec:  # the recipe fields train() reads
        class task:
            T, present = 6, 2

        class network:
            beta, init, init_recurrent = 10.0, "xavier", recurrent

        oja_pre = "z"

    _Spec.network.gain, _Spec.network.sigma = gain, sigma
    _Spec.online = type("online", (), {"eval_every": 5})
    _Spec.conditions = [RnnConditionSpec(name="BPTT"), RnnConditionSpec(name="BPTT+Oja")]

    from plastcli.data import Dataset
    from plastcli.experiments.baseline import OnlineData

    g = torch.Generator().manual_seed(0)
    ds = Dataset("tiny", "train", torch.rand(40, N_IN, generator=g),
                 torch.randint(0, 10, (40,), generator=g), 10, {})
    data = OnlineData(ds, ds, torch.arange(30), torch.arange(30, 40), torch.arange(8))
    members = Population(np.array([0, 1, 1]), np.zeros(3, int), [5, 6, 7],
                         np.array([[0.05, 0.0], [0.05, 0.01], [0.1, 0.01]], np.float32))
    from plastcli.progress import Reporter

    net, recs, diag = train(members, HIDDEN, _Spec, data, 12, 0, "cpu", True, Reporter())
    for i in range(3):
        alone = Population(members.condition[i:i + 1], members.point[i:i + 1],
                           members.seeds[i:i + 1], members.coefficients[i:i + 1])
        net1, recs1, diag1 = train(alone, HIDDEN, _Spec, data, 12, 0, "cpu", True, Reporter())
        for k in ("wh_singular_before", "wh_singular_after"):
            np.testing.assert_allclose(diag[k][i:i + 1], diag1[k], rtol=1e-5, err_msg=k)
        for a, b in zip(net.weights(), net1.weights(), strict=True):
            torch.testing.assert_close(a[i:i + 1], b, rtol=1e-5, atol=1e-6)
        for ra, rb in zip(recs, recs1, strict=True):
            np.testing.assert_allclose(ra["hidden_norm"][i:i + 1], rb["hidden_norm"], rtol=1e-5)
    assert recs[-1]["hidden_norm"].shape == (3, 7)  # T + 1 time points
    assert not torch.allclose(net.Wh[1], net.Wh[2])  # members really differ
    Wh = [rnn.init_rnn(N_IN, HIDDEN, 10, [s], "xavier", "cpu", recurrent, gain).Wh[0]
          for s in members.seeds]
    np.testing.assert_allclose(diag["wh_singular_before"],  # before = the initial W_h's
                               torch.linalg.svdvals(torch.stack(Wh)).numpy(), rtol=1e-5)


TINY = {
    "experiment": "rnn-memory", "name": "tiny", "dataset": {"name": "mnist"},
    "network": {"hidden": [6, 4], "init": "xavier", "beta": 10.0},
    "task": {"T": 8, "present": 2},
    "conditions": [{"name": "BPTT", "bptt": [0.01, 0.05], "oja": [0.0]},
                   {"name": "BPTT+Oja", "bptt": [0.05], "oja": [0.001, 0.01]}],
    "online": {"samples": 30, "eval_every": 10, "val_size": 40},
    "selection": {"heldout": 50, "seeds": 2, "seed": 1000, "samples": 20},
    "population": {"seeds": 3, "seed": 0},
    "run": {"device": "cpu"},
}


def _write(tmp_path, recipe, name="r.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_rnn_memory_cli_writes_a_complete_store(tmp_path):
    out = tmp_path / "r.h5"
    res = CliRunner().invoke(app, ["rnn-memory", str(_write(tmp_path, TINY)), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "BPTT+Oja" in res.output
    st = read_store(out)
    assert st.complete
    P, S = 12, 4  # 2 hidden sizes x 2 conditions x 3 seeds; evaluations at 0, 10, 20, 30
    assert st["curves/val_accuracy"].shape == (P, S)
    assert st["curves/val_loss"].shape == (P, S)
    assert st["curves/hidden_norm"].shape == (P, S, 9)
    np.testing.assert_array_equal(st["curves/samples_seen"][0], [0, 10, 20, 30])
    np.testing.assert_array_equal(st["members/hidden"], [6] * 6 + [4] * 6)
    np.testing.assert_array_equal(st["members/seed"], [0, 1, 2] * 4)
    assert np.all(st["members/theta_oja"][st["members/condition"] == 0] == 0)
    # grid: the chosen point has the highest mean held-out accuracy in its (hidden, condition)
    g = st.arrays
    for row, h, c in zip(g["grid/best_row"], g["grid/best_hidden"], g["grid/best_condition"],
                         strict=True):
        mine = (g["grid/point_hidden"] == h) & (g["grid/point_condition"] == c)
        assert g["grid/point_mean_accuracy"][row] == g["grid/point_mean_accuracy"][mine].max()
        chosen = (st["members/hidden"] == h) & (st["members/condition"] == c)
        assert np.all(st["members/theta_bptt"][chosen] == g["grid/point_theta_bptt"][row])
    assert "held-out" in st.attrs["selection_split"]
    # the curves start from the untrained nets: the same seed has the same start in both rules
    np.testing.assert_allclose(st["curves/val_accuracy"][:3, 0], st["curves/val_accuracy"][3:6, 0])


def test_T_shorter_than_presentation_is_one_line_exit_2(tmp_path):
    bad = dict(TINY, task={"T": 3, "present": 5})
    res = CliRunner().invoke(app, ["rnn-memory", str(_write(tmp_path, bad))])
    assert res.exit_code == 2
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "task.T" in lines[0] and "present" in lines[0], res.output


def test_unknown_dataset_is_one_line_exit_2(tmp_path):
    bad = dict(TINY, dataset={"name": "emnist-balanced"})
    res = CliRunner().invoke(app, ["rnn-memory", str(_write(tmp_path, bad))])
    assert res.exit_code == 2 and "allowed: mnist, fashion-mnist" in res.output


def test_plain_loss_matches_module_forward():
    """Guards the reference itself: the plain forward equals rnn.run_sequence + loss."""
    net, (x, labels) = _net(1), _inputs(1)
    zs = rnn.run_sequence(net, x, T, PRESENT, BETA)
    ref = rnn.loss_fn(rnn.logits(net, zs[T], BETA), labels)[0]
    torch.testing.assert_close(_plain_loss(net.Wx[0], net.Wh[0], net.Wo[0], x[0, 0],
                                           labels[0, 0]), ref)
    assert F.softplus(torch.tensor(0.0), beta=BETA) > 0  # sigma(z_0) != 0: u_0 matters


# ------------------------------------------------------------------ Fig 7 factors
def _wh(kind, gain, n=64, seeds=range(20)):
    return torch.stack([rnn.init_rnn(5, n, 3, [s], "xavier", "cpu", kind, gain).Wh[0]
                        for s in seeds]).double()


def test_recurrent_initialisers_have_their_statistics():
    n = 64
    for kind in ("xavier", "normal"):  # entries of variance gain^2 / n, mean 0
        w = _wh(kind, 1.5, n)
        assert abs(w.mean().item()) < 0.01
        assert w.var().item() == pytest.approx(1.5 ** 2 / n, rel=0.05), kind
    q = _wh("orthogonal", 2.0, n)  # gain * an orthogonal matrix: all singular values = gain
    torch.testing.assert_close(torch.linalg.svdvals(q), torch.full((20, n), 2.0,
                                                                  dtype=torch.float64),
                               rtol=1e-5, atol=1e-5)
    eye = torch.eye(n, dtype=torch.float64)
    torch.testing.assert_close(q[0] @ q[0].T / 4, eye, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(q[0], q[1])  # a draw per seed
    torch.testing.assert_close(_wh("identity", 1.5, n, [0])[0], 1.5 * eye)


def test_same_recurrent_init_and_gain_1_keep_the_old_draws_and_w_x_w_o_stay():
    old = rnn.init_rnn(N_IN, HIDDEN, N_OUT, [3, 4], "xavier", "cpu")
    same = rnn.init_rnn(N_IN, HIDDEN, N_OUT, [3, 4], "xavier", "cpu", "same", 1.0)
    for a, b in zip(old.weights(), same.weights(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    ortho = rnn.init_rnn(N_IN, HIDDEN, N_OUT, [3, 4], "xavier", "cpu", "orthogonal", 3.0)
    torch.testing.assert_close(ortho.Wx, old.Wx, rtol=0, atol=0)  # only W_h changes
    torch.testing.assert_close(ortho.Wo, old.Wo, rtol=0, atol=0)
    gained = rnn.init_rnn(N_IN, HIDDEN, N_OUT, [3, 4], "xavier", "cpu", "same", 2.0)
    torch.testing.assert_close(gained.Wh, 2 * old.Wh, rtol=0, atol=0)


def test_per_member_w_h_factors_equal_each_member_drawn_alone():
    kinds, gains = ["same", "orthogonal", "same", "normal"], [1.0, 1.5, 3.0, 2.0]
    seeds = [3, 3, 4, 5]  # the same seed under two factors: the same W_x, W_o
    net = rnn.init_rnn(N_IN, HIDDEN, N_OUT, seeds, "xavier", "cpu", kinds, gains)
    for i, (s, k, g) in enumerate(zip(seeds, kinds, gains, strict=True)):
        alone = rnn.init_rnn(N_IN, HIDDEN, N_OUT, [s], "xavier", "cpu", k, g)
        for a, b in zip(net.weights(), alone.weights(), strict=True):
            torch.testing.assert_close(a[i:i + 1], b, rtol=0, atol=0)
    torch.testing.assert_close(net.Wx[0], net.Wx[1], rtol=0, atol=0)


def test_conditions_with_their_own_gain_run_as_one_population(tmp_path):
    """A condition's gain and init_recurrent reach its members' W_h (the stored spectra
    before training scale with the gain), and the recipe refuses a bad value in one line."""
    out = tmp_path / "g.h5"
    args = ["rnn-memory", str(REPO / "recipes/2024/fig7-rnn-memory.yaml"), "--samples", "20",
            "--out", str(out), "--set", "network.hidden=[6]", "--set", "task.T=4",
            "--set", "task.present=2", "--set", "online.val_size=20", "--set",
            "online.eval_every=10", "--set", "selection.heldout=50", "--set",
            "population.seeds=2", "--set", "run.device=cpu", "--set",
            "conditions=[{name: g1, bptt: [0.01], oja: [0.0]}, "
            "{name: g2, bptt: [0.01], oja: [0.0], gain: 2.0}, "
            "{name: id, bptt: [0.01], oja: [0.0], init_recurrent: identity}]"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    st = read_store(out)
    before = st["members/wh_singular_before"]  # [P, n]: conditions g1, g1, g2, g2, id, id
    np.testing.assert_allclose(before[2:4], 2 * before[0:2], rtol=1e-5)
    np.testing.assert_allclose(before[4:6], 1.0, rtol=1e-6)
    bad = CliRunner().invoke(app, [*args[:-1], "conditions=[{name: x, gain: -1}]"])
    assert bad.exit_code == 2 and "conditions[0].gain" in bad.output


def _plain_loss_act(Wx, Wh, Wo, x, label, f):
    z = torch.zeros(Wh.shape[0], dtype=Wh.dtype)
    for t in range(1, T + 1):
        z = Wh @ f(z) + Wx @ (x if t <= PRESENT else torch.zeros_like(x))
    return -torch.log_softmax(Wo @ f(z), 0)[label]


@pytest.mark.parametrize("act, f", [
    (rnn.Activation("tanh"), torch.tanh),
    (rnn.Activation("softplus", 3.0), lambda z: torch.log1p(torch.exp(3.0 * z)) / 3.0)])
def test_bptt_with_each_sigma_is_minus_theta_times_autograd(act, f):
    P = 2
    net, (x, labels) = _net(P), _inputs(P, seed=2)
    theta = torch.tensor([0.05, 0.2], dtype=torch.float64)
    new = rnn.update(net, x, labels, theta, torch.zeros(P, dtype=torch.float64), T, PRESENT,
                     act)
    for p in range(P):
        W = [w[p].clone().requires_grad_(True) for w in net.weights()]
        grads = torch.autograd.grad(_plain_loss_act(*W, x[p, 0], labels[p, 0], f), W)
        for w_new, w, g in zip(new.weights(), net.weights(), grads, strict=True):
            assert g.abs().max() > 1e-6
            torch.testing.assert_close(w_new[p], w[p] - theta[p] * g, rtol=1e-9, atol=1e-12)


def test_fig7_claim_is_decided_by_the_paired_ci_and_bptt_above_chance():
    import json

    from plastcli.figures.rnn2024 import fig7_claim_rows
    from plastcli.results.store import StoreData

    rng = np.random.default_rng(0)
    bp = 0.3 + 0.05 * rng.random(10)

    def store(oja):
        return StoreData("x.h5", {"T": 50, "condition_names": json.dumps(["BPTT", "BPTT+Oja"]),
                                  "hidden_sizes": json.dumps([100])}, {
            "members/final_val_accuracy": np.r_[bp, oja], "members/seed": np.r_[range(10),
                                                                                   range(10)],
            "members/hidden": np.full(20, 100), "members/condition": np.repeat([0, 1], 10)})

    (row,) = fig7_claim_rows("s", store(bp + 0.2))
    assert "PASS (BPTT+Oja exceeds BPTT)" in row and "+0.200 [+0.200, +0.200]" in row
    assert "| yes (" in row  # BPTT's CI lies above chance
    (row,) = fig7_claim_rows("s", store(bp + 0.01 * rng.standard_normal(10)))
    assert "NOT REPRODUCED (BPTT+Oja matches BPTT)" in row
    (row,) = fig7_claim_rows("s", store(bp - 0.2))
    assert "falls short of" in row


def test_phase_diagram_reads_the_gain_and_theta2_blocks(tmp_path):
    """Tiny runs of the phase recipes (and the g = 1 store): the figures are drawn; the phase
    table has a row per (rule, gain) and per θ₂, θ₂ = 0 first; the cross map a row per gain
    (g = 1 from the θ₂ block) and a column per θ₂; the factor overview a row per setting
    present, with the paired difference computed by seed."""
    from plastcli.figures import draw_paper

    tiny = ["--samples", "20", "--set", "network.hidden=[6]", "--set", "task.T=4", "--set",
            "task.present=2", "--set", "online.val_size=20", "--set", "online.eval_every=10",
            "--set", "selection.heldout=50", "--set", "selection.samples=10", "--set",
            "selection.seeds=1", "--set", "population.seeds=2", "--set", "run.device=cpu"]
    for name in ("fig7-rnn-tanh-xavier", "fig7-rnn-phase-gain", "fig7-rnn-phase-oja",
                 "fig7-rnn-phase-cross", "fig7-rnn-phase-init"):
        r = CliRunner().invoke(app, ["rnn-memory", str(REPO / f"recipes/2024/{name}.yaml"),
                                     "--out", str(tmp_path / f"2024/{name}.h5"), *tiny])
        assert r.exit_code == 0, r.output
    rep = draw_paper("2024", tmp_path / "2024", tmp_path / "figs", ["png"])
    assert (tmp_path / "figs/fig7-rnn-phase.png").exists(), rep.skipped
    text = (tmp_path / "figs/fig7-rnn-phase.md").read_text()
    gains = [ln.split("|")[2].strip() for ln in text.splitlines()
             if ln.startswith("| BPTT+Oja |")]
    assert gains == ["1", "1.5", "2", "3"]
    th2 = [ln.split("|")[1].strip() for ln in text.split("θ₂ = 0: plain BPTT")[1].splitlines()
           if ln.startswith("| ") and not ln.startswith("| θ2")]
    assert th2 == ["0", "0.0001", "0.0003", "0.001", "0.003", "0.01", "0.03"]
    assert text.count("| diverged seeds |") == 2  # failed seeds are named in both tables

    cross = (tmp_path / "figs/fig7-rnn-phase-cross.md").read_text().splitlines()
    assert (tmp_path / "figs/fig7-rnn-phase-cross.png").exists(), rep.skipped
    assert [ln.split("|")[1].strip() for ln in cross if ln[:3] in ("| 1", "| 2", "| 3")] == \
        ["1", "1.5", "2", "3"]
    assert cross[2].count("θ2 =") == 5  # 0 ... 3e-3: the θ₂ block's 1e-2, 3e-2 are not crossed

    from plastcli.figures.rnn_phase import condition_rows
    from plastcli.results.store import read_store

    table = (tmp_path / "figs/fig7-rnn-factors.md").read_text().splitlines()
    rows = [ln.split("|") for ln in table if ln.startswith("| ") and "`" in ln]
    assert [r[2].strip() for r in rows] == [
        "Fig 7 recipe (tanh, xavier, hidden 100, 20 sequences)", "N(0, 1/n)", "orthogonal × 1.5",
        "orthogonal × 2", "identity", "xavier × 1.5", "xavier × 2", "xavier × 3"]
    init_store = read_store(tmp_path / "2024/fig7-rnn-phase-init.h5")
    init = {r["name"]: r for r in condition_rows(init_store)}
    bp, oja = init["BPTT identity"], init["BPTT+Oja identity"]
    by_seed = dict(zip(bp["seeds"].tolist(), bp["acc"].tolist(), strict=True))
    diff = np.mean([a - by_seed[k] for k, a in zip(oja["seeds"].tolist(), oja["acc"].tolist(),
                                                   strict=True)])
    assert rows[4][6].strip().startswith(f"{diff:+.3f} [")
