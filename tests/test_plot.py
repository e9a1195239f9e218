"""plast plot: figures of any stores (your own study), members grouped by what tells them
apart; the curves are the stores' numbers; bad input is one line, exit 2."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import REPO
from test_input_errors import invoke, one_error_line

from plastcli.figures import own
from plastcli.results.statistics import moving_average
from plastcli.results.store import read_store

BIO = REPO / "results/2022/fig5-bio.h5"
OJA = REPO / "results/2022/fig8-oja.h5"
SWEEP_STORE = REPO / "results/2022/fig4-pool-sweep.h5"  # population grid over meta.l1
ONLINE = REPO / "results/2024/fig1-depth5.h5"


def test_meta_stores_side_by_side_draw_the_stores_mean_curves(tmp_path):
    r = invoke("plot", str(BIO), str(OJA), "--out", str(tmp_path / "c.png"))
    assert r.exit_code == 0, r.output
    assert (tmp_path / "c.png").stat().st_size > 10_000
    fig = own.draw({"bio": read_store(BIO), "oja": read_store(OJA)})
    acc, loss = fig.axes[0], fig.axes[1]
    assert [ln.get_label() for ln in acc.lines] == ["bio (10 seeds)", "oja (10 seeds)"]
    want = np.nanmean(moving_average(read_store(BIO)["episodes/meta_accuracy"], 11), 0)
    np.testing.assert_allclose(acc.lines[0].get_ydata(), want)
    assert acc.get_ylabel() == "meta-accuracy (query, 5-way)"
    assert loss.get_ylabel() == "query cross-entropy"
    # one θ panel per store, one line per term
    names = read_store(BIO).json_attr("term_names")
    assert [ln.get_label() for ln in fig.axes[2].lines if not ln.get_label().startswith("_")] \
        == names


def test_members_are_grouped_by_grid_point_and_by_condition():
    groups = own.member_groups(read_store(SWEEP_STORE))
    assert list(groups)[:2] == ["meta.l1=0", "meta.l1=0.001"]
    assert all(g.sum() == 3 for g in groups.values()) and len(groups) == 7
    groups = own.member_groups(read_store(ONLINE))
    assert list(groups) == ["BP", "BP+Oja"]
    st = read_store(ONLINE)
    fig = own.draw({"d5": st})
    line = fig.axes[0].lines[0]
    assert line.get_label() == "BP (20 runs)"
    want = 100 * st["curves/val_accuracy"][groups["BP"]].mean(0)
    np.testing.assert_allclose(line.get_ydata(), want, rtol=1e-6)


def test_a_sweep_folder_plots_its_points_and_skips_those_not_run(tmp_path):
    folder = tmp_path / "sweeps/s"
    folder.mkdir(parents=True)
    (folder / "p000.h5").write_bytes(BIO.read_bytes())
    (folder / "sweep.json").write_text(json.dumps({
        "sweep": "s", "keys": ["meta.lr"],
        "points": [{"store": "p000.h5", "values": {"meta.lr": 0.001}},
                   {"store": "p001.h5", "values": {"meta.lr": 0.003}}]}))
    r = invoke("plot", str(folder))
    assert r.exit_code == 0, r.output
    assert "p001.h5 (meta.lr=0.003): not run yet" in r.output
    assert (folder / "p000.png").is_file()


@pytest.mark.parametrize("args, match", [
    (["nope.h5"], "store not found: nope.h5"),
    ([str(BIO), str(ONLINE)], "plot draws stores of one kind together; got fig5-bio \\(meta\\), "
                              "fig1-depth5 \\(online\\)"),
    ([str(BIO), "--out", "x.jpg"], "--out x.jpg: allowed suffixes: .png, .pdf, .svg"),
    ([str(REPO / "results")], "not a sweep folder"),
])
def test_bad_input_is_one_line(args, match):
    import re

    assert re.search(match, one_error_line(invoke("plot", *args)))


def test_diverged_members_are_counted_in_the_legend_and_their_theta_ends_there():
    st = read_store(REPO / "results/2022/fig5-bio-paper.h5")  # the paper's F_bio: one diverged
    div = st["members/diverged_at"]
    assert (div >= 0).sum() == 1
    fig = own.draw({"paper": st})
    assert fig.axes[0].lines[0].get_label() == "paper (10 seeds, 1 diverged)"
    assert "ends where it diverged" in fig.axes[2].get_title()
