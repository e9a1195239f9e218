"""ablate-layers (P1 Table 1): per-layer masks against a literal loop, assignments batched
against assignments alone, the table against numpy, and the CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import REPO
from typer.testing import CliRunner

from plastcli import cli
from plastcli.cli import app
from plastcli.core.network import Net, init_net
from plastcli.core.rules import IDX, LayerCoefficients, R
from plastcli.engine.inner import inner_step
from plastcli.experiments import ablate_layers
from plastcli.recipes import load_recipe
from plastcli.results import tables
from plastcli.results.store import read_store

RECIPE = REPO / "recipes/2022/table1-ablate-layers.yaml"
LAYERS = [12, 9, 7, 5]
BETA = 10.0
TINY = ["dataset.name=mnist", "network.layers=[784, 6, 5, 10]", "task.classes=3",
        "task.train_per_class=3", "task.query_per_class=2", "population.seeds=2",
        "run.checkpoint_every=1", "run.device=cpu", "meta.episodes=3", "ablation.burn_in=1",
        "meta.lr=0.05"]


# ----------------------------------------------------------------- literal numpy reference


def _softplus(z):
    return np.log1p(np.exp(BETA * z)) / BETA


def _numpy_step(W, Bf, x, label, theta_pg, theta_eh, eh_layers):
    """One online step with fixed feedback, every element of every update in a loop.

    W, Bf: lists of [n_l, n_{l-1}] arrays; eh_layers: 1-based layers where err_hebb acts.
    """
    L = len(W)
    ys, zs = [x], [None]
    for l in range(1, L + 1):
        z = W[l - 1] @ ys[-1]
        zs.append(z)
        ys.append(_softplus(z) if l < L else np.exp(z - z.max()) / np.exp(z - z.max()).sum())
    es = [None] * (L + 1)
    es[L] = ys[L] - np.eye(len(ys[L]))[label]
    for l in range(L, 0, -1):
        deriv = 1 - np.exp(-BETA * ys[0]) if l == 1 else 1 / (1 + np.exp(-BETA * zs[l - 1]))
        es[l - 1] = (Bf[l - 1].T @ es[l]) * deriv
    new = []
    for l in range(1, L + 1):
        Wn = W[l - 1].copy()
        for i in range(Wn.shape[0]):
            for j in range(Wn.shape[1]):
                Wn[i, j] += -theta_pg * es[l][i] * ys[l - 1][j]
                if l in eh_layers:
                    Wn[i, j] += -theta_eh * es[l][i] * es[l - 1][j]
        new.append(Wn)
    return new


def test_mask_enabling_err_hebb_on_one_layer_changes_only_that_layer():
    """Member 0: err_hebb on layer 2 only; member 1: on layer 1 only (reads e_0); member 2: none."""
    P, L = 3, 3
    net = init_net(LAYERS, [1, 2, 3], 0, "xavier", "fixed")
    net = Net(W=[w.double() for w in net.W], Bf=[b.double() for b in net.Bf])
    g = torch.Generator().manual_seed(0)
    x = torch.rand(P, 1, LAYERS[0], generator=g, dtype=torch.float64)
    labels = [1, 4, 2]
    onehot = F.one_hot(torch.tensor(labels).view(P, 1), LAYERS[-1]).double()
    theta = torch.zeros(P, R, dtype=torch.float64)
    theta[:, IDX["pseudo_grad"]], theta[:, IDX["err_hebb"]] = 0.05, 0.3
    mask = torch.zeros(P, L, R, dtype=torch.float64)
    mask[:, :, IDX["pseudo_grad"]] = 1
    eh_layers = [{2}, {1}, set()]
    for p, layers in enumerate(eh_layers):
        for l in layers:
            mask[p, l - 1, IDX["err_hebb"]] = 1
    new = inner_step(net, x, onehot, LayerCoefficients.build(theta, mask), BETA, "fixed")
    for p in range(P):
        W = [w[p].numpy() for w in net.W]
        Bf = [b[p].numpy() for b in net.Bf]
        ref = _numpy_step(W, Bf, x[p, 0].numpy(), labels[p], 0.05, 0.3, eh_layers[p])
        pseudo = _numpy_step(W, Bf, x[p, 0].numpy(), labels[p], 0.05, 0.3, set())
        for l in range(1, L + 1):
            np.testing.assert_allclose(new.W[l - 1][p].numpy(), ref[l - 1], rtol=1e-10,
                                       atol=1e-13, err_msg=f"member {p} layer {l}")
            changed = np.abs(ref[l - 1] - pseudo[l - 1]).max()
            if l in eh_layers[p]:
                assert changed > 1e-6  # the term really acts on its layer
            else:
                assert changed == 0.0  # and nowhere else


# ----------------------------------------------------------------- batched vs alone


def test_all_seven_assignments_batched_equal_each_alone(tmp_path):
    recipe = load_recipe(RECIPE, TINY)
    assert len(recipe.ablation.assignments) == 7
    ablate_layers.run(recipe, tmp_path / "all.h5")
    together = read_store(tmp_path / "all.h5")
    assert together.complete and together["episodes/theta"].shape == (14, 3, 2)
    index = together["members/assignment_index"]
    assert list(together["members/seed"]) == [0, 1] * 7
    for a, spec in enumerate(recipe.ablation.assignments):
        layers = "[" + ", ".join(spec.layers) + "]"
        alone_recipe = load_recipe(RECIPE, [*TINY, f"ablation.assignments=[{{name: "
                                            f"'{spec.name}', layers: {layers}}}]"])
        ablate_layers.run(alone_recipe, tmp_path / f"alone{a}.h5")
        alone = read_store(tmp_path / f"alone{a}.h5")
        assert [x.decode() for x in alone["members/assignment"]] == [spec.name] * 2
        for key in ("theta", "angles", "meta_loss", "meta_accuracy", "orthonormality_error"):
            np.testing.assert_allclose(together[f"episodes/{key}"][index == a],
                                       alone[f"episodes/{key}"], rtol=1e-4, atol=1e-5,
                                       err_msg=f"{spec.name}: {key}")
        # float32 with a different set of active terms rounds differently; assignments
        # themselves differ far more than that, so a wrong member layout fails above
        if a > 0:
            gap = np.abs(alone["episodes/theta"] - together["episodes/theta"][index == 0]).max()
            assert gap > 1e-3
    # err_hebb's coefficient moves only where the term acts somewhere
    eh = together["episodes/theta"][:, -1, 1]
    assert (eh[index == 0] == 0).all() and (np.abs(eh[index != 0]) > 0).all()


# ----------------------------------------------------------------- table and CLI


def test_cli_smoke_writes_table_matching_numpy(tmp_path, monkeypatch):
    monkeypatch.setattr(cli.out_console, "width", 200)  # no wrapping inside table cells
    out = tmp_path / "t1.h5"
    args = ["ablate-layers", str(RECIPE), "--out", str(out), "--episodes", "3", "--seeds", "2"]
    for s in TINY:
        args += ["--set", s]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "all eHebb" in r.output and "W01+W23" in r.output
    st = read_store(out)
    rows = tables.table1_rows(st)
    assert [row["assignment"] for row in rows][:2] == ["all pseudo", "W12"]
    assert rows[3]["added_layers"] == ["W01", "W12"] and rows[3]["base_layers"] == ["W23"]
    # direct numpy: member means over episodes 1..2, then mean/sd over the 2 seeds
    m = st["members/assignment_index"] == 4
    per_member = st["episodes/angles"][m, 1:, :].astype(np.float64).mean(1)
    np.testing.assert_allclose(rows[4]["alpha"][:, 0], per_member.mean(0), rtol=1e-6)
    np.testing.assert_allclose(rows[4]["alpha"][:, 1], per_member.std(0, ddof=1), rtol=1e-6)
    acc = st["episodes/meta_accuracy"][m].astype(np.float64).mean(1)
    assert rows[4]["meta_accuracy"] == pytest.approx((acc.mean(), acc.std(ddof=1)))
    # SPEC §7 pairs: W12 added to 'all pseudo' -> 'W12', change of alpha_1 paired by seed
    pairs = tables.eHebb_pairs(st)
    assert len(pairs) == 9 and {p["layer"] for p in pairs} == {"W01", "W12", "W23"}
    pair = next(p for p in pairs if p["without"] == "all pseudo" and p["layer"] == "W12")
    ang = st["episodes/angles"].astype(np.float64)[:, 1:, 1].mean(1)
    idx = st["members/assignment_index"]
    diff = ang[idx == 1] - ang[idx == 0]
    assert pair["alpha"] == 1 and pair["with"] == "W12"
    assert pair["delta"] == pytest.approx((diff.mean(), diff.std(ddof=1)))
    csv = (tmp_path / "t1.csv").read_text().splitlines()
    md = (tmp_path / "t1.md").read_text()
    assert len(csv) == 8 and csv[0].startswith("assignment,base_layers,added_layers,alpha_0_mean")
    assert "| W12+W23 | W01 | W12, W23 |" in md


def test_assignment_naming_missing_layer_is_one_line_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(RECIPE.read_text().replace("[W01, W23]", "[W01, W34]"))
    r = CliRunner().invoke(app, ["ablate-layers", str(bad), "--out", str(tmp_path / "x.h5")])
    assert r.exit_code == 2
    lines = r.output.strip().splitlines()
    assert len(lines) == 1, r.output
    assert "ablation.assignments[5].layers" in lines[0] and "'W34' does not exist" in lines[0]
    assert "allowed: W01, W12, W23" in lines[0]
    assert not (tmp_path / "x.h5").exists()
    r = CliRunner().invoke(app, ["ablate-layers", str(REPO / "recipes/2022/fig6-ehebb.yaml")])
    assert r.exit_code == 2 and "not 'plast ablate-layers'" in r.output


def test_store_is_complete_only_with_its_assignment_arrays(tmp_path, monkeypatch):
    """Issue 11 §4: the assignment arrays are in the store before it says 'complete'."""
    import h5py

    from plastcli.experiments import common, meta_train

    seen = []
    real = common.finish

    def spy(store, *a, **kw):
        with h5py.File(store.path, "r") as f:
            seen.append(sorted(f["members"]))
        return real(store, *a, **kw)

    monkeypatch.setattr(meta_train, "finish", spy)
    rec = load_recipe(REPO / "recipes/2022/table1-ablate-layers.yaml",
                      [*TINY, "meta.episodes=2", "population.seeds=1", "ablation.burn_in=1"])
    ablate_layers.run(rec, tmp_path / "t.h5")
    assert seen and {"assignment", "assignment_index", "added_layers", "mask"} <= set(seen[0])
    st = read_store(tmp_path / "t.h5")
    assert st.complete and st["members/mask"].shape[0] == len(rec.ablation.assignments)
