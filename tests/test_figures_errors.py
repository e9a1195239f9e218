"""plast figures with stores of another shape than the paper's recipes make: the figure
fails with one line naming the error and the stores, the others are drawn, never a
traceback (and the command exits 1)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from plastcli import figures
from plastcli.errors import PlastError
from plastcli.figures import online
from plastcli.results.store import StoreData


def _baseline_store(hidden_layers: int) -> StoreData:
    attrs = {"condition_names": json.dumps(["BP", "BP+Oja"]), "status": "complete"}
    arrays = {"analysis/recon_images": np.zeros((2, 2, hidden_layers, 784), np.float32),
              "analysis/recon_inputs": np.zeros((2, 784), np.float32),
              "members/condition": np.array([0, 1])}
    return StoreData("results/2024/fig1-depth5.h5", attrs, arrays)


def test_reconstructions_from_fewer_layers_than_the_figure_shows_are_one_line():
    st = _baseline_store(2)  # a 3-layer network saved under the depth-5 store's name
    with pytest.raises(PlastError, match="fig1-depth5.h5: reconstructions from 2 hidden "
                                         "layer.*shows layers 1, 2, 3, 4"):
        online.reconstruction_grid(st, [1, 2, 3, 4], "t")
    fig = online.reconstruction_grid(_baseline_store(4), [1, 2, 3, 4], "t")  # the right shape
    assert len(fig.axes) == 4 * 5


def test_a_figure_that_fails_on_an_unexpected_store_is_skipped_and_the_rest_drawn(
        tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    def broken(stores):
        return np.zeros(3)[5]  # IndexError, as a store of another shape gives

    def fine(stores):
        return plt.figure()

    figures._load_modules()
    monkeypatch.setitem(figures.REGISTRY, "2024", [
        figures.FigureSpec("broken", (), broken), figures.FigureSpec("fine", (), fine)])
    report = figures.draw_paper("2024", tmp_path, tmp_path / "figs", ["png"])
    assert [p.name for p in report.written] == ["fine.png"]
    assert report.skipped == [] and len(report.failed) == 1
    assert report.failed[0].startswith("broken: IndexError: index 5 is out of bounds")
