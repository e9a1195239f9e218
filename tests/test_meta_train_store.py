"""Meta-training end to end through the store: determinism, resume, divergence, CLI."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from conftest import REPO
from typer.testing import CliRunner

from plastcli.cli import app
from plastcli.engine.meta import MetaConfig
from plastcli.experiments import meta_train
from plastcli.progress import Reporter
from plastcli.recipes import load_recipe
from plastcli.results.store import read_store

TINY = ["network.layers=[784, 16, 47]", "task.classes=3", "task.train_per_class=4",
        "task.query_per_class=2", "population.seeds=2", "run.checkpoint_every=2",
        "run.device=cpu"]


def tiny_recipe(episodes=4, extra=()):
    return load_recipe(REPO / "recipes/bio.yaml", [*TINY, f"meta.episodes={episodes}", *extra])


def episode_arrays(path):
    s = read_store(path)
    return {k: v for k, v in s.arrays.items() if k.startswith("episodes/")
            and k != "episodes/seconds"}


def test_same_seed_twice_gives_identical_stores(tmp_path):
    for name in ("a", "b"):
        meta_train.run(tiny_recipe(), tmp_path / f"{name}.h5")
    a, b = episode_arrays(tmp_path / "a.h5"), episode_arrays(tmp_path / "b.h5")
    assert set(a) == set(b) and "episodes/theta" in a
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    st = read_store(tmp_path / "a.h5")
    assert st.complete and st["episodes/theta"].shape == (2, 4, 3)
    # theta moves every episode; records buffered between checkpoints must not alias it
    theta = st["episodes/theta"]
    assert (np.abs(np.diff(theta, axis=1)).sum(-1) > 0).all()
    assert "recipe_yaml" in st.attrs and "emnist/emnist-bymerge-test-images-idx3-ubyte.gz" in \
        st.json_attr("data_sha256")
    # the population split decides float rounding, so the store says what it was
    assert st.attrs["processes"] == 1 and st.attrs["torch_threads"] >= 1


class StopAfter(Reporter):
    def __init__(self, n):
        self.n = n

    def update(self, done, **metrics):
        if done >= self.n:
            raise KeyboardInterrupt


def test_interrupted_run_resumes_to_the_same_numbers(tmp_path):
    meta_train.run(tiny_recipe(6), tmp_path / "full.h5")
    with pytest.raises(KeyboardInterrupt):  # killed after episode 3; checkpoint at 2
        meta_train.run(tiny_recipe(6), tmp_path / "cut.h5", reporter=StopAfter(3))
    cut = read_store(tmp_path / "cut.h5")
    assert cut.status.startswith("failed: interrupted")
    meta_train.run(tiny_recipe(6), tmp_path / "cut.h5", resume=True)
    full, resumed = episode_arrays(tmp_path / "full.h5"), episode_arrays(tmp_path / "cut.h5")
    for k in full:
        np.testing.assert_array_equal(full[k], resumed[k], err_msg=k)
    assert read_store(tmp_path / "cut.h5").complete


def test_resume_can_extend_episodes_but_not_change_the_rule(tmp_path):
    meta_train.run(tiny_recipe(2), tmp_path / "s.h5")
    meta_train.run(tiny_recipe(4), tmp_path / "s.h5", resume=True)
    assert read_store(tmp_path / "s.h5")["episodes/theta"].shape[1] == 4
    from plastcli.errors import PlastError

    with pytest.raises(PlastError, match="recipe differs"):
        meta_train.run(tiny_recipe(6, ["meta.lr=0.5"]), tmp_path / "s.h5", resume=True)


def test_store_made_before_a_new_recipe_key_still_resumes(tmp_path):
    """A key added to the schema later (here meta.gradient) takes its default on resume."""
    meta_train.run(tiny_recipe(2), tmp_path / "old.h5")
    with h5py.File(tmp_path / "old.h5", "a") as f:
        f.attrs["recipe_yaml"] = f.attrs["recipe_yaml"].replace("  gradient: auto\n", "")
    assert "  gradient: auto\n" not in read_store(tmp_path / "old.h5").attrs["recipe_yaml"]
    meta_train.run(tiny_recipe(3), tmp_path / "old.h5", resume=True)
    assert read_store(tmp_path / "old.h5")["episodes/theta"].shape[1] == 3


def test_diverging_member_is_detected_frozen_and_reported(tmp_path):
    rec = tiny_recipe(3, ["rule.init.err_hebb=-1.0e4", "rule.init.oja=0", "meta.bounds={}"])
    # (also checks 1.0e4-style floats)
    res = meta_train.run(rec, tmp_path / "nan.h5")
    np.testing.assert_array_equal(res.diverged_at, [1, 1])
    assert len(res.messages) == 3 and "diverged at episode 1" in res.messages[0]
    assert res.messages[2] == ("every member has diverged: episode 2 is recorded as NaN "
                               "without computing")
    st = read_store(tmp_path / "nan.h5")
    np.testing.assert_array_equal(st["members/diverged_at"], [1, 1])
    loss = st["episodes/meta_loss"]
    assert np.isfinite(loss[:, 0]).all() and np.isnan(loss[:, 1:]).all()
    theta = st["episodes/theta"]
    assert np.isfinite(theta).all()  # frozen at the last finite value
    np.testing.assert_array_equal(theta[:, 1], theta[:, 2])
    assert st.complete and st.attrs["diverged_members"] == 2


def test_cli_meta_train_show_and_errors(tmp_path):
    runner = CliRunner()
    out = tmp_path / "cli.h5"
    args = ["meta-train", str(REPO / "recipes/bio.yaml"), "--episodes", "2", "--out", str(out)]
    for s in TINY:
        args += ["--set", s]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "meta-acc" in r.output
    with h5py.File(out) as f:
        assert f.attrs["status"] == "complete"
    r = runner.invoke(app, ["show", str(out)])
    assert r.exit_code == 0 and "pseudo_grad" in r.output and "complete" in r.output
    r = runner.invoke(app, args)  # exists: asks for --resume or --overwrite
    assert r.exit_code == 2 and "--resume" in r.output
    r = runner.invoke(app, [*args, "--overwrite", "--device", "tpu"])
    assert r.exit_code == 2 and "allowed: auto, cpu, cuda" in r.output
    r = runner.invoke(app, ["meta-train", str(tmp_path / "none.yaml")])
    assert r.exit_code == 2 and "recipe file not found" in r.output
    r = runner.invoke(app, ["meta-train", str(REPO / "recipes/bio.yaml"), "--data-dir",
                            str(tmp_path / "nodata")])
    assert r.exit_code == 2 and "data file missing" in r.output
    assert "Traceback" not in r.output
    r = runner.invoke(app, ["data", "fetch", "mnist", "--data-dir", str(tmp_path / "d")])
    assert r.exit_code == 2 and "plast[download]" in r.output  # brackets survive Rich markup
    r = runner.invoke(app, ["figures", "--paper", "1999"])
    assert r.exit_code == 2 and "allowed: 2022, 2024" in r.output


def test_cli_meta_train_with_a_recipe_declared_term(tmp_path):
    """rule.define through the CLI, on the fast path; the store records the declarations."""
    recipe = tmp_path / "declared.yaml"
    recipe.write_text((REPO / "recipes/bio.yaml").read_text().replace(
        "  terms: [pseudo_grad, err_hebb, oja]",
        "  terms: [pseudo_grad, oja, my_term]\n"
        "  define:\n    my_term: {a: y_post, b: ones, s: \"1^T y_post\", sign: -1}"))
    out = tmp_path / "declared.h5"
    args = ["meta-train", str(recipe), "--episodes", "2", "--out", str(out),
            "--set", "network.layers=[784,32,24,47]", *[a for s in TINY[1:] for a in ("--set", s)]]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "my_term" in r.output
    st = read_store(out)
    assert st.complete and st.json_attr("term_names") == ["pseudo_grad", "oja", "my_term"]
    decl = st.json_attr("term_declarations")[2]
    assert decl == {"name": "my_term", "a": "y_post", "b": "ones", "s": "1^T y_post",
                    "sign": -1, "formula": "−(1ᵀ y_post) y_post onesᵀ"}
    assert st["episodes/theta"].shape == (2, 2, 3) and np.isfinite(st["episodes/theta"]).all()
    assert MetaConfig.from_recipe(load_recipe(recipe), 1).pool.names[-1] == "my_term"


@pytest.mark.parametrize("command", [[], ["meta-train"], ["figures"], ["ablate-layers"]])
def test_help_reads_as_paragraphs_at_80_columns(command):
    """Docstring line breaks are reflowed, not kept (which left one-word lines), and
    placeholders survive the Markdown rendering."""
    r = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "80"})
    assert r.exit_code == 0, r.output
    lines = [ln.strip() for ln in r.output.splitlines() if ln.strip()]
    orphans = [ln for ln in lines if ln.isalpha() and len(ln) <= 6 and ln.islower()]
    assert not orphans, orphans
    assert "//" not in r.output.replace("https://", "")  # a <placeholder> eaten as HTML


def test_resume_refuses_fewer_episodes_overwrite_and_names_the_changed_key(tmp_path):
    """A resumed run may extend meta.episodes, never shrink it below what the store holds
    (its recipe would then contradict its data); --resume with --overwrite is refused; a
    changed recipe is refused with the key that changed. The store is left as it was."""
    runner = CliRunner()
    out = tmp_path / "r.h5"
    args = ["meta-train", str(REPO / "recipes/bio.yaml"), "--out", str(out)]
    for s in TINY:
        args += ["--set", s]
    assert runner.invoke(app, [*args, "--episodes", "3"]).exit_code == 0
    before = h5py.File(out, "r").attrs["recipe_yaml"]
    r = runner.invoke(app, [*args, "--episodes", "1", "--resume"])
    assert r.exit_code == 2 and "meta.episodes = 1 is fewer than the 3 episodes" in r.output, \
        r.output
    r = runner.invoke(app, [*args, "--episodes", "4", "--resume", "--overwrite"])
    assert r.exit_code == 2 and "give one of them" in r.output, r.output
    r = runner.invoke(app, [*args, "--episodes", "4", "--resume", "--set", "meta.lr=0.5"])
    assert r.exit_code == 2 and "at 'meta.lr'" in r.output, r.output
    with h5py.File(out, "r") as f:
        assert f.attrs["recipe_yaml"] == before and f["episodes/meta_loss"].shape[1] == 3
    assert runner.invoke(app, [*args, "--episodes", "4", "--resume"]).exit_code == 0
    assert read_store(out)["episodes/meta_loss"].shape[1] == 4
