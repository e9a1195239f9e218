"""plast reproduce: recipe discovery, the cache key, resume, failures and the report."""

from __future__ import annotations

import h5py
import pytest
from conftest import REPO
from typer.testing import CliRunner

from plastcli import reproduce
from plastcli.cli import app
from plastcli.errors import PlastError

BIO = (REPO / "recipes/bio.yaml").read_text()


def _recipes(tmp_path, **files):
    root = tmp_path / "recipes"
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_discover_finds_recipes_by_their_paper_key_in_every_subfolder():
    found = reproduce.discover(REPO / "recipes", ["2022", "2024"])
    names = {(p, path.relative_to(REPO / "recipes" / p).as_posix()) for p, path, _ in found}
    assert ("2022", "fig5-bio.yaml") in names and ("2022", "stability/oja.yaml") in names
    assert ("2024", "fig7-rnn-memory.yaml") in names
    on_disk = {("2022", p.relative_to(REPO / "recipes/2022").as_posix())
               for p in (REPO / "recipes/2022").rglob("*.yaml")}
    assert on_disk <= names  # nothing under recipes/2022 is left out
    assert all(p in ("2022", "2024") for p, _, _ in found)


def test_discover_skips_another_papers_recipe_and_refuses_an_unknown_experiment(tmp_path):
    root = _recipes(tmp_path, **{"2022/a.yaml": BIO,
                                 "2022/b.yaml": BIO.replace("paper: 2022", "paper: 2024")})
    assert [p.name for _, p, _ in reproduce.discover(root, ["2022"])] == ["a.yaml"]
    (root / "2022/c.yaml").write_text(BIO.replace("experiment: meta-train", "experiment: nope"))
    with pytest.raises(PlastError, match="experiment 'nope' is not allowed"):
        reproduce.discover(root, ["2022"])


def test_cache_key_ignores_prose_and_old_defaults_but_not_numbers():
    from plastcli.recipes import load_recipe, recipe_to_yaml

    base = recipe_to_yaml(load_recipe(REPO / "recipes/bio.yaml"))
    key = reproduce.cache_key(base, "0.1.0")
    described = base.replace("description: F_bio", "description: another text for F_bio")
    assert described != base and reproduce.cache_key(described, "0.1.0") == key
    renamed = base.replace("name: bio", "name: bio-renamed")  # a renamed recipe keeps its store
    assert renamed != base and reproduce.cache_key(renamed, "0.1.0") == key
    old = base.replace("  collapse_window: 25\n", "")  # a store from before the key existed
    assert old != base and reproduce.cache_key(old, "0.1.0") == key
    assert reproduce.cache_key(base.replace("lr: 0.001", "lr: 0.002"), "0.1.0") != key
    assert reproduce.cache_key(base, "0.2.0") != key


def test_reproduce_runs_caches_reruns_a_changed_recipe_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    root = _recipes(tmp_path, **{"2022/fig3-pseudo.yaml": BIO, "2022/sub/b.yaml": BIO})
    results = tmp_path / "results"
    args = ["reproduce", "--paper", "2022", "--scale", "smoke", "--results", str(results),
            "--recipes", str(root), "--jobs", "2"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    for rel in ("fig3-pseudo", "sub/b"):
        with h5py.File(results / f"2022/{rel}.h5") as f:
            assert f.attrs["status"] == "complete"
            assert f["episodes/meta_accuracy"].shape == (2, 3)  # the smoke rule: 2 x 3
    report = (results / "REPORT.md").read_text()
    assert "not results" in report and "| 2022/sub/b | complete | run |" in report
    # a store named as a figure's input: its figure is drawn and inlined in the page
    assert "data:image/png;base64," in (results / "report.html").read_text()

    jobs = reproduce.plan(root, results, ["2022"], "smoke")
    for j in jobs:
        reproduce.decide(j, force=False)
    assert [j.action for j in jobs] == ["cached", "cached"]

    (root / "2022/fig3-pseudo.yaml").write_text(BIO.replace("lr: 1.0e-3", "lr: 2.0e-3"))
    with h5py.File(results / "2022/sub/b.h5", "r+") as f:  # as a killed run leaves it
        f.attrs["status"] = "running"
    for j in jobs:
        reproduce.decide(j, force=False)
    assert [j.action for j in jobs] == ["rerun", "resume"]
    assert "--overwrite" in reproduce.command_line(jobs[0])
    assert "--resume" in reproduce.command_line(jobs[1])
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "| 2022/fig3-pseudo | complete | rerun |" in (results / "REPORT.md").read_text()
    with h5py.File(results / "2022/fig3-pseudo.h5") as f:
        assert "lr: 0.002" in f.attrs["recipe_yaml"]


def test_a_bad_recipe_is_one_line_before_anything_runs(tmp_path):
    bad = BIO.replace("dataset: {name: emnist-bymerge", "dataset: {name: mnist")  # 10 classes
    bad = bad.replace("network: {layers: [784, 170, 130, 100, 70, 47]",
                      "network: {layers: [784, 170, 130, 100, 70, 10]")
    bad = bad.replace("task: {classes: 5", "task: {classes: 11")  # more classes than mnist has
    root = _recipes(tmp_path, **{"2022/good.yaml": BIO, "2022/bad.yaml": bad})
    results = tmp_path / "results"
    r = CliRunner().invoke(app, ["reproduce", "--paper", "2022", "--scale", "smoke",
                                 "--results", str(results), "--recipes", str(root)])
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "bad.yaml" in lines[0] and "task.classes" in lines[0], r.output
    assert not (results / "2022/good.h5").exists()


def test_a_failing_run_leaves_the_others_complete_and_exits_1(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    root = _recipes(tmp_path, **{"2022/good.yaml": BIO, "2022/bad.yaml": BIO})
    results = tmp_path / "results"
    (results / "2022/bad.h5").mkdir(parents=True)  # its store path is a folder: that run fails
    r = CliRunner().invoke(app, ["reproduce", "--paper", "2022", "--scale", "smoke",
                                 "--results", str(results), "--recipes", str(root)])
    assert r.exit_code == 1, r.output
    assert "2 runs: 1 complete (0 of them cached), 1 failed" in r.output
    with h5py.File(results / "2022/good.h5") as f:
        assert f.attrs["status"] == "complete"
    report = (results / "REPORT.md").read_text()
    assert "**Failed runs:** 2022/bad (exit 2:" in report


@pytest.mark.parametrize("args, match", [
    (["--paper", "1999"], "--paper '1999' is not allowed"),
    (["--paper", "2022", "--scale", "huge"], "--scale 'huge' is not allowed"),
    (["--paper", "2022", "--backend", "slurm"], "--backend 'slurm' is not allowed"),
    (["--paper", "2022", "--address", "1.2.3.4:6379"], "--address needs --backend ray"),
    (["--paper", "2022", "--seed-chunk", "2"], "--seed-chunk needs --backend ray"),
])
def test_bad_options_are_one_line_and_exit_2(args, match, tmp_path):
    r = CliRunner().invoke(app, ["reproduce", *args, "--results", str(tmp_path / "r")])
    assert r.exit_code == 2 and match in r.output and "Traceback" not in r.output


@pytest.mark.skipif(not __import__("os").environ.get("PLAST_TEST_RAY"),
                    reason="starts a local Ray (slow); set PLAST_TEST_RAY=1 with '.[ray]'")
def test_ray_runs_and_ray_seed_chunks_write_the_stores_of_the_local_backend(tmp_path,
                                                                             monkeypatch):
    pytest.importorskip("ray")
    import numpy as np

    from plastcli.results.labels import is_scale  # the axes' labels: compared by the names

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    root = _recipes(tmp_path, **{"2022/fig3-pseudo.yaml": BIO})
    stores, attrs = {}, {}
    for name, extra in (("local", ["--backend", "local"]), ("ray", ["--backend", "ray"]),
                        ("chunks", ["--backend", "ray", "--seed-chunk", "1"])):
        results = tmp_path / name
        r = CliRunner().invoke(app, ["reproduce", "--paper", "2022", "--scale", "smoke",
                                     "--results", str(results), "--recipes", str(root),
                                     "--jobs", "1", *extra])
        assert r.exit_code == 0, r.output
        with h5py.File(results / "2022/fig3-pseudo.h5") as f:
            assert f.attrs["status"] == "complete"
            stores[name] = {k: f[f"episodes/{k}"][...] for k in f["episodes"]
                            if k != "seconds" and not is_scale(f[f"episodes/{k}"])}
            attrs[name] = dict(f.attrs)
    assert stores["local"].keys() == stores["ray"].keys() == stores["chunks"].keys()
    for k in stores["local"]:
        np.testing.assert_array_equal(stores["local"][k], stores["ray"][k], err_msg=k)
        # two one-seed tasks: the same numbers up to BLAS blocking for P = 1 vs 2
        np.testing.assert_allclose(stores["chunks"][k], stores["local"][k], rtol=1e-4,
                                   atol=1e-6, err_msg=k)
    assert attrs["chunks"]["seed_chunks"] == "[[0], [1]]"
    with h5py.File(tmp_path / "chunks/2022/fig3-pseudo.h5") as f:  # merged: labelled anew
        assert [d.label for d in f["episodes/theta"].dims] == ["member", "episode", "term"]
    assert not (tmp_path / "chunks/2022/fig3-pseudo.parts").exists()  # merged, then removed


def test_seed_chunks_are_planned_only_for_big_meta_train_populations(tmp_path):
    from plastcli.reproduce_ray import split_by_seed

    root = _recipes(tmp_path, **{"2022/a.yaml": BIO})
    job = reproduce.plan(root, tmp_path / "r", ["2022"], "full")[0]
    reproduce.decide(job, False)
    parts = split_by_seed(job, 2)  # bio.yaml: 3 seeds -> 2 + 1
    assert [p.sets[-2:] for p in parts] == [["population.seed=0", "population.seeds=2"],
                                            ["population.seed=2", "population.seeds=1"]]
    assert parts[0].store == tmp_path / "r/2022/a.parts/part-000.h5"
    assert split_by_seed(job, 3) is None and split_by_seed(job, None) is None
    job.action = "resume"  # a killed whole run is resumed as it is
    assert split_by_seed(job, 2) is None


def test_progress_is_read_from_the_last_count_even_before_a_long_final_table(tmp_path):
    log = tmp_path / "x.log"
    log.write_text("meta-train x: 1/3  loss 2\nmeta-train x: 3/3  loss 1\n"
                   + "│ a row of the final table │\n" * 400)  # about 12 KB after the count
    assert reproduce._progress(log) == (3, 3)
    log.write_text("meta-train x: 2/5\n")
    assert reproduce._progress(log) == (2, 5)
    assert reproduce._progress(tmp_path / "none.log") == (0, 0)
