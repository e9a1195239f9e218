"""``plast baseline`` / ``plast init-study`` end to end on tiny data: store layout, grid
selection on the held-out train split, statistics, and one-line recipe errors."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from plastcli.cli import app
from plastcli.experiments.baseline import split_data
from plastcli.recipes import load_recipe
from plastcli.results import statistics
from plastcli.results.store import read_store

TINY = {
    "experiment": "baseline", "name": "tiny", "dataset": {"name": "mnist"},
    "network": {"layers": [784, 8, 6, 10], "init": "xavier", "beta": 10.0},
    "conditions": [
        {"name": "BP", "feedback": "sym", "terms": ["pseudo_grad"],
         "grid": {"pseudo_grad": [0.001, 0.05]}},
        {"name": "FA+Oja", "feedback": "fixed", "terms": ["pseudo_grad", "oja"],
         "grid": {"pseudo_grad": [0.05], "oja": [0.0, 0.001]}},
        {"name": "DFA", "feedback": "direct", "terms": ["pseudo_grad"],
         "grid": {"pseudo_grad": [0.05]}},
    ],
    "online": {"samples": 60, "eval_every": 20, "val_size": 50, "update_norm_samples": 2,
               "recon_images": 2},
    "selection": {"heldout": 100, "seeds": 2, "seed": 1000, "samples": 40},
    "population": {"seeds": 3, "seed": 0},
    "run": {"device": "cpu"},
}


def _write(tmp_path, recipe: dict, name="r.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_baseline_cli_writes_a_complete_store(tmp_path):
    out = tmp_path / "b.h5"
    res = CliRunner().invoke(app, ["baseline", str(_write(tmp_path, TINY)), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "final val. accuracy" in res.output
    st = read_store(out)
    assert st.complete
    shown = CliRunner().invoke(app, ["show", str(out)], env={"COLUMNS": "200"},
                               terminal_width=200).output
    # members are told apart by condition, and each condition gets its mean and CI
    assert "condition" in shown and "FA+Oja" in shown and "mean [98% CI]" in shown, shown
    acc = st["curves/val_accuracy"][:, -1]
    from plastcli.results.statistics import bootstrap_ci

    m, lo, hi = bootstrap_ci(acc[st["members/condition"] == 1][:, None])
    assert f"{m[0]:.4f} [{lo[0]:.4f}, {hi[0]:.4f}]" in shown
    P, S = 9, 4  # 3 conditions x 3 seeds; evaluations at 0, 20, 40, 60
    assert st["curves/val_accuracy"].shape == (P, S)
    np.testing.assert_array_equal(st["curves/samples_seen"][0], [0, 20, 40, 60])
    assert st["curves/angles"].shape == (P, S, 3)
    assert st["curves/activation_norm"].shape == (P, S, 2)
    assert st["analysis/recon_images"].shape == (P, 2, 2, 784)
    assert st["analysis/pca_cumvar_y1"].shape == (P, 8)
    np.testing.assert_array_equal(st["members/condition"], np.repeat([0, 1, 2], 3))
    np.testing.assert_array_equal(st["members/seed"], [0, 1, 2] * 3)
    # BP's angles are 0 by definition; FA's and DFA's are not.
    assert np.all(st["curves/angles"][:3] == 0) and np.all(st["curves/angles"][3:, 1:, 1] > 0)
    # grid: best point = highest mean held-out accuracy, per condition
    pm, pc = st["grid/point_mean_accuracy"], st["grid/point_condition"]
    for c, b in enumerate(st["grid/best_point"]):
        assert pc[b] == c and pm[b] == pm[pc == c].max()
        np.testing.assert_array_equal(st["members/theta"][3 * c], st["grid/point_theta"][b])
    acc = st["grid/member_selection_accuracy"].reshape(-1, 2).mean(1)
    np.testing.assert_allclose(pm, acc, rtol=1e-6)
    # stats = bootstrap over the runs of each condition
    m, lo, hi = statistics.bootstrap_ci(st["curves/val_accuracy"][3:6])
    np.testing.assert_allclose(st["stats/val_accuracy_mean"][1], m)
    np.testing.assert_allclose(st["stats/val_accuracy_lo"][1], lo)
    assert "TRAIN split" in st.attrs["selection_split"]
    assert "TEST split" in st.attrs["validation_split"]
    # like every store, it says what decides its rounding
    assert st.attrs["cpu_model"] and "PyTorch built with" in st.attrs["torch_build"]
    assert st.attrs["torch_threads"] >= 1


def test_selection_split_is_disjoint_from_the_stream(tmp_path):
    rec = load_recipe(_write(tmp_path, TINY))
    d = split_data(rec)
    held, pool = set(d.heldout.tolist()), set(d.pool.tolist())
    assert len(held) == 100 and not held & pool and len(held | pool) == len(d.train.labels)
    assert len(set(d.val.tolist())) == 50


def test_init_study_cli_runs_each_rule_under_each_init(tmp_path):
    recipe = dict(TINY, experiment="init-study", inits=["naive", "xavier"],
                  conditions=TINY["conditions"][:1])
    out = tmp_path / "i.h5"
    res = CliRunner().invoke(app, ["init-study", str(_write(tmp_path, recipe)), "--out",
                                   str(out), "--samples", "20"])
    assert res.exit_code == 0, res.output
    st = read_store(out)
    assert st.json_attr("condition_names") == ["BP (naive)", "BP (xavier)"]
    assert st.json_attr("condition_init") == ["naive", "xavier"]
    w_naive = st["analysis/recon_images"]  # exists for both
    assert w_naive.shape[0] == 6


@pytest.mark.parametrize("change, key", [
    (lambda r: r["conditions"][0].update(grid={"pseudo_grad": []}), "conditions[0].grid"),
    (lambda r: r["conditions"][0].update(grid={"pseudo_grad": [0.1], "oja": [0.1]}),
     "conditions[0].grid.oja"),
    (lambda r: r["conditions"][0].update(grid={"pseudo_grd": [0.1]}), "conditions[0].grid"),
    (lambda r: r["conditions"][1]["grid"].pop("oja"), "conditions[1].grid.oja"),
    (lambda r: r.update(conditions=[]), "conditions"),
    (lambda r: r["conditions"][0].update(feedback="plastic"), "conditions[0].feedback"),
])
def test_bad_recipe_is_one_line_exit_2(tmp_path, change, key):
    import copy

    recipe = copy.deepcopy(TINY)
    change(recipe)
    res = CliRunner().invoke(app, ["baseline", str(_write(tmp_path, recipe))])
    assert res.exit_code == 2, res.output
    text = " ".join(res.output.split())
    assert f"key '{key}" in text and text.count("error:") == 1


def test_wrong_command_for_recipe_is_an_error(tmp_path):
    res = CliRunner().invoke(app, ["init-study", str(_write(tmp_path, TINY))])
    assert res.exit_code == 2 and "plast baseline" in res.output


def test_a_condition_may_use_a_declared_or_grammar_term(tmp_path):
    """define: a user's own term for the conditions; its θ is stored under its name, and a
    zero coefficient leaves the runs exactly as without the term."""
    recipe = {**TINY, "define": {"act": {"a": "y_post", "b": "ones", "s": "1^T y_post",
                                         "sign": -1}},
              "conditions": [
                  {"name": "BP", "feedback": "sym", "terms": ["pseudo_grad"],
                   "grid": {"pseudo_grad": [0.05]}},
                  {"name": "BP+act0", "feedback": "sym", "terms": ["pseudo_grad", "act"],
                   "grid": {"pseudo_grad": [0.05], "act": [0.0]}},
                  {"name": "BP+act", "feedback": "sym", "terms": ["pseudo_grad", "act"],
                   "grid": {"pseudo_grad": [0.05], "act": [0.01]}},
                  {"name": "BP+g", "feedback": "sym", "terms": ["pseudo_grad", "g_ypost_ones"],
                   "grid": {"pseudo_grad": [0.05], "g_ypost_ones": [0.001]}}]}
    out = tmp_path / "b.h5"
    res = CliRunner().invoke(app, ["baseline", str(_write(tmp_path, recipe)), "--out",
                                   str(out)], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "act=0.01" in res.output and "g_ypost_ones=0.001" in res.output
    st = read_store(out)
    names = st.json_attr("term_names")
    assert names[-2:] == ["act", "g_ypost_ones"]
    decl = st.json_attr("term_declarations")
    assert len(decl) == len(names) and decl[-2]["b"] == "ones"
    acc = st["curves/val_accuracy"]
    cond = st["members/condition"]
    np.testing.assert_array_equal(acc[cond == 0], acc[cond == 1])  # θ_act = 0: no effect
    assert not np.array_equal(st["curves/update_norm"][cond == 0],
                              st["curves/update_norm"][cond == 2])
    theta = st["members/theta"][cond == 2][0]
    assert theta[names.index("act")] == pytest.approx(0.01)
    shown = CliRunner().invoke(app, ["show", str(out)], env={"COLUMNS": "200"},
                               terminal_width=200).output
    assert "coefficients per condition" in shown and "−(1ᵀ y_post) y_post onesᵀ" in shown


@pytest.mark.parametrize("change, match", [
    ({"conditions": [{"name": "X", "terms": ["nope"], "grid": {"nope": [1.0]}}]},
     "conditions\\[0\\].terms\\[0\\]': 'nope' is not allowed.*declared under define"),
    ({"define": {"pg2": {"a": "e_post", "b": "y_pre", "sign": -1}},
      "conditions": [{"name": "X", "terms": ["pg2"], "grid": {"pg2": [1.0]}}]},
     "define.pg2.*computes the same term as 'pseudo_grad'"),
    ({"define": {"bad": {"a": "nope", "b": "ones"}}}, "define.bad.a"),
])
def test_declared_terms_in_a_baseline_are_checked_in_one_line(tmp_path, change, match):
    from plastcli.errors import PlastError

    with pytest.raises(PlastError, match=match):
        load_recipe(_write(tmp_path, {**TINY, **change}))
