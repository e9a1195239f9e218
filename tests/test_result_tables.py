"""One result shape for every training command: each kind has a table builder, every row has
a cell per column, and the cells show the result's numbers."""

from __future__ import annotations

from types import SimpleNamespace as NS

import numpy as np

from plastcli.core.terms import BUILTIN_POOL
from plastcli.experiments.result_tables import TABLES
from plastcli.recipes import SCHEMAS


def test_every_experiment_kind_has_a_table():
    assert set(TABLES) == set(SCHEMAS)


def _check_shape(t):
    assert all(len(row) == len(t.columns) for row in t.rows), (t.columns, t.rows)


def test_meta_train_table_rows_hold_each_members_numbers():
    res = NS(out="x.h5", seeds=[0, 1], episodes=5, terms=["pseudo_grad", "oja"],
             theta=np.array([[0.01, -0.002], [0.02, 0.0]]),
             final={"meta_accuracy": np.array([0.5, 0.25]), "meta_loss": np.array([1.0, 2.0])},
             diverged_at=np.array([-1, 3]), collapsed_at=np.array([-1, -1]),
             grid={"meta.lr": np.array([1e-3, 3e-3])})
    t = TABLES["meta-train"](NS(name="r"), res)
    _check_shape(t)
    assert [h for h, _ in t.columns] == ["seed", "meta.lr", "meta-acc", "meta-loss",
                                         "θ pseudo_grad", "θ oja", "diverged", "collapsed"]
    assert t.rows[1] == ["1", "0.003", "0.250", "2.000", "0.02", "0", "3", "-"]
    # more than four terms: one column with the four largest |θ|
    res.terms = [f"t{i}" for i in range(6)]
    res.theta = np.array([[0.1, -0.6, 0.2, 0.5, 0.0, 0.3]] * 2)
    t = TABLES["meta-train"](NS(name="r"), res)
    _check_shape(t)
    assert t.rows[0][4] == "t1=-0.6, t3=0.5, t5=0.3, t2=0.2"


def test_online_and_rnn_tables_show_the_chosen_coefficients_and_the_ci():
    theta = np.zeros((2, len(BUILTIN_POOL)))
    theta[1, BUILTIN_POOL.index["oja"]] = 0.001
    theta[:, BUILTIN_POOL.index["pseudo_grad"]] = 0.05
    res = NS(out="b.h5", conditions=["BP", "BP+Oja"], theta=theta, grid_searched=True,
             terms=[["pseudo_grad"], ["pseudo_grad", "oja"]], final_mean=np.array([0.9, 0.8]),
             final_lo=np.array([0.85, 0.7]), final_hi=np.array([0.95, 0.9]))
    rec = NS(experiment="baseline", name="r", online=NS(samples=10),
             population=NS(seeds=3))
    t = TABLES["baseline"](rec, res)
    _check_shape(t)
    assert t.rows[1] == ["BP+Oja", "pseudo_grad=0.05, oja=0.001", "0.8000", "[0.7000, 0.9000]"]
    rows = [{"hidden": 100, "condition": "BPTT", "searched": True, "theta_bptt": 0.001,
             "theta_oja": 0.0, "mean": 0.4, "lo": 0.2, "hi": 0.6}]
    rec = NS(name="m", online=NS(samples=10), task=NS(T=50, present=5), population=NS(seeds=2))
    t = TABLES["rnn-memory"](rec, NS(out="m.h5", rows=rows))
    _check_shape(t)
    assert t.rows[0] == ["100", "BPTT (grid)", "0.001", "0", "0.4000", "[0.2000, 0.6000]"]


def _printed(t, width: int) -> str:
    import io

    from rich.console import Console

    from plastcli import cli_common

    console = Console(width=width, record=True, file=io.StringIO())
    saved, cli_common.out_console = cli_common.out_console, console
    try:
        cli_common.print_result(t)
    finally:
        cli_common.out_console = saved
    return console.export_text()


def test_a_table_wider_than_the_terminal_is_printed_in_parts_with_every_number_whole():
    from plastcli.experiments.result_tables import ResultTable, column_parts

    columns = [("seed", "right"), ("meta.l1", "right"), ("meta-acc", "right"),
               ("meta-loss", "right"), *[(f"θ term_{i}", "right") for i in range(6)],
               ("diverged", "right"), ("collapsed", "right")]
    rows = [["0", "0.1", "0.583", "1.080", *[f"-0.00{i}765" for i in range(6)], "-", "-"]]
    t = ResultTable("meta-train x", columns, rows, keys=2, caption="a caption")
    parts = column_parts(t, 80)
    assert len(parts) > 1 and all(p[:2] == [0, 1] for p in parts)  # the keys in each part
    assert sorted({i for p in parts for i in p}) == list(range(len(columns)))
    text = _printed(t, 80)
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80
    for cell in rows[0][2:-2]:
        assert cell in text
    assert column_parts(t, 200) == [list(range(len(columns)))]  # fits: one table


def test_cells_that_look_like_markup_are_printed_as_they_are():
    from plastcli.experiments.result_tables import ResultTable

    t = ResultTable("sweep [x]", [("rule.terms", "left")], [["[pseudo_grad, oja]"]],
                    caption="see [bold]")
    text = _printed(t, 100)
    assert "[pseudo_grad, oja]" in text and "sweep [x]" in text and "see [bold]" in text
