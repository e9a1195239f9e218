"""plast sweep: points from the grid, one store each equal to the run alone, the cache,
the summary (also through plast show FOLDER) and one-line errors."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO
from test_meta_train_store import TINY, episode_arrays
from typer.testing import CliRunner

from plastcli import sweep
from plastcli.cli import app
from plastcli.errors import PlastError
from plastcli.experiments import meta_train
from plastcli.recipes import load_recipe
from plastcli.results.store import read_store

FIXED = [s for s in TINY if not s.startswith("population.seeds")] + ["meta.episodes=2"]


def _sweep_file(tmp_path, grid="{meta.lr: [1.0e-3, 3.0e-3]}", extra=""):
    path = tmp_path / "study.yaml"
    sets = ", ".join(f"'{s}'" for s in FIXED)
    path.write_text(f"sweep: study\nbase: {REPO / 'recipes/bio.yaml'}\nset: [{sets}]\n"
                    f"grid: {grid}\nseeds: 1\n{extra}")
    return path


def test_points_are_every_combination_first_key_slowest():
    s = {"grid": {"a": [1, 2], "b.0": [[0.1], [0.2]]}}
    assert sweep.points(s) == [{"a": 1, "b.0": [0.1]}, {"a": 1, "b.0": [0.2]},
                               {"a": 2, "b.0": [0.1]}, {"a": 2, "b.0": [0.2]}]


def test_each_point_is_the_run_alone_cached_then_and_shown(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    path = _sweep_file(tmp_path)
    res = CliRunner().invoke(app, ["sweep", str(path), "--results", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    folder = tmp_path / "r/sweeps/study"
    for i, lr in enumerate([1e-3, 3e-3]):
        alone = load_recipe(REPO / "recipes/bio.yaml",
                            [*FIXED, f"meta.lr={lr}", "population.seeds=1"])
        # alone with the point's own thread count (it decides the rounding): this process's
        # torch read OMP_NUM_THREADS before the test set it
        import torch

        before = torch.get_num_threads()
        torch.set_num_threads(int(read_store(folder / f"p{i:03d}.h5").attrs["torch_threads"]))
        try:
            meta_train.run(alone, tmp_path / f"alone{i}.h5")
        finally:
            torch.set_num_threads(before)
        got, want = episode_arrays(folder / f"p{i:03d}.h5"), episode_arrays(tmp_path /
                                                                           f"alone{i}.h5")
        assert set(got) == set(want)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=f"point {i}: {k}")
    table = sweep.point_finals(folder / "p001.h5")
    assert table["status"] == "complete" and table["diverged"] == 0
    acc = meta_train.final_window(read_store(tmp_path / "alone1.h5")["episodes/meta_accuracy"])
    assert table["meta_accuracy"] == pytest.approx(float(np.median(acc)))
    assert "p001" in res.output and "complete" in res.output
    # unchanged: both cached; one value changed: only that point reruns
    mtime = (folder / "p000.h5").stat().st_mtime_ns
    _sweep_file(tmp_path, grid="{meta.lr: [1.0e-3, 2.0e-3]}")
    res = CliRunner().invoke(app, ["sweep", str(path), "--results", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    assert "1 cached" in res.output and (folder / "p000.h5").stat().st_mtime_ns == mtime
    shown = CliRunner().invoke(app, ["show", str(folder)])
    assert shown.exit_code == 0 and "p001" in shown.output and "0.002" in shown.output


@pytest.mark.parametrize("extra, grid, match", [
    ("colour: red\n", "{meta.lr: [1.0e-3]}", "colour: unknown key; allowed: sweep"),
    ("", "{}", "grid: a mapping of recipe keys"),
    ("", "{meta.lr: []}", "grid.meta.lr: a non-empty list"),
    ("", "{meta.lr: [-1.0]}", "sweep point 0 \\(meta.lr=-1.0\\).*meta.lr"),
    ("", "{meta.nope: [1]}", "sweep point 0.*unknown key"),
])
def test_a_bad_sweep_file_is_one_line_naming_the_key(tmp_path, extra, grid, match):
    path = _sweep_file(tmp_path, grid=grid, extra=extra)
    with pytest.raises(PlastError, match=match):
        sweep.plan(sweep.read_sweep(path), tmp_path / "r")
    res = CliRunner().invoke(app, ["sweep", str(path), "--results", str(tmp_path / "r")])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert not (tmp_path / "r/sweeps/study").exists()  # nothing written before it is checked


def test_missing_base_or_seeds_and_a_folder_without_manifest(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("sweep: s\nbase: nowhere.yaml\ngrid: {meta.lr: [1]}\n")
    with pytest.raises(PlastError, match="base: recipe file not found"):
        sweep.read_sweep(path)
    path.write_text(f"sweep: s\nbase: {REPO / 'recipes/bio.yaml'}\ngrid: {{meta.lr: [1]}}\n"
                    "seeds: 0\n")
    with pytest.raises(PlastError, match="seeds: a whole number >= 1"):
        sweep.read_sweep(path)
    res = CliRunner().invoke(app, ["show", str(tmp_path)])
    assert res.exit_code == 2 and "not a sweep folder" in res.output


def test_the_example_sweep_loads_every_point():
    s = sweep.read_sweep(REPO / "recipes/sweeps/bio-lr.yaml")
    jobs = sweep.plan(s, REPO / "results")
    assert len(jobs) == 6 and jobs[-1].store.name == "p005.h5"
    assert "meta.lr=0.003" in jobs[-1].sets and "rule.init.oja=0.003" in jobs[-1].sets


def test_the_runs_respect_omp_num_threads(monkeypatch):
    """On a shared host OMP_NUM_THREADS=1 is the user's way to ask for one thread per run;
    the orchestrator gives its children no more than that."""
    from plastcli import reproduce

    seen = {}
    monkeypatch.setattr(reproduce, "default_jobs", lambda: 8)
    monkeypatch.setattr(reproduce, "run_backend",
                        lambda jobs, n_jobs, threads, *a, **k: seen.update(threads=threads))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    from rich.console import Console

    job = reproduce.Job(Path("r.yaml"), "2022", "r", "meta-train", Path("r.h5"), [],
                        Path("r.log"))
    reproduce.run_live([job], "x", 1, "local", None, None, False,
                       Console(file=open(os.devnull, "w")))
    assert seen["threads"] == 1


def test_the_summary_shows_list_values_as_they_are(tmp_path):
    """rich reads [pseudo_grad, oja] as markup: the table escapes its cells."""
    import io
    import json

    from rich.console import Console

    folder = tmp_path / "sweeps/s"
    folder.mkdir(parents=True)
    terms = [["pseudo_grad", "oja"], ["pseudo_grad", "err_hebb", "oja"]]
    (folder / sweep.MANIFEST).write_text(json.dumps({
        "sweep": "s", "keys": ["rule.terms"],
        "points": [{"store": f"p{i:03d}.h5", "values": {"rule.terms": v}}
                   for i, v in enumerate(terms)]}))
    console = Console(width=120, record=True, file=io.StringIO())
    console.print(sweep.summary_table(folder))
    text = console.export_text()
    assert "[pseudo_grad, oja]" in text and "[pseudo_grad, err_hebb, oja]" in text
