"""Bad input is one line and exit 2 (never a traceback), found before any store exists;
`plast data check` / `fetch` say what is missing and how to get it; validation is fast."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, data_dir
from typer.testing import CliRunner

from plastcli.cli import app

BIO = str(REPO / "recipes/bio.yaml")
TINY = ["network.layers=[784, 16, 47]", "task.classes=3", "task.train_per_class=4",
        "task.query_per_class=2", "population.seeds=1", "run.device=cpu"]


def invoke(*args: str):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})


def one_error_line(r) -> str:
    """The result is exit 2 with exactly one non-empty line and no traceback; return it."""
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code == 2, r.output
    assert len(lines) == 1 and lines[0].startswith("error: "), r.output
    assert "Traceback" not in r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    return lines[0]


def sets(*items: str) -> list[str]:
    return [a for s in items for a in ("--set", s)]


def leftovers(folder: Path) -> list[str]:
    """Every file a refused run might have left in ``folder``, but the decoded-data cache
    (conftest puts it in tmp_path/cache; whether a test fills it depends on whether an
    earlier test in the same process already loaded that data set)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.relative_to(folder).parts[0] != "cache")


def read_only_dir(tmp_path: Path) -> Path:
    """A directory this process cannot create files in (root ignores mode bits, so root
    gets /proc/sys, which refuses new files to everyone)."""
    if os.geteuid() == 0:
        return Path("/proc/sys")
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o500)
    return d


# ----------------------------------------------------------------- 4: checks before the store


def test_a_check_that_needs_the_data_runs_before_the_store_is_created(tmp_path):
    out = tmp_path / "res" / "big.h5"
    r = invoke("meta-train", BIO, "--out", str(out),
               *sets(*TINY, "task.train_per_class=100000", "dataset.per_class_cap=null"))
    assert "fewer than train_per_class + query_per_class = 100002" in one_error_line(r)
    assert leftovers(tmp_path) == []  # no store, no lock file, not even the folder


def test_online_checks_that_need_the_data_leave_no_store(tmp_path):
    out = tmp_path / "b.h5"
    r = invoke("baseline", str(REPO / "recipes/2024/fig1-depth5.yaml"), "--out", str(out),
               "--samples", "10000000")
    assert "exceeds the" in one_error_line(r)
    assert leftovers(tmp_path) == []


# ----------------------------------------------------------------- 5: tracebacks with exit 1


def test_a_recipe_that_is_not_utf8_is_one_line(tmp_path):
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(Path(BIO).read_text().replace("F_bio", "F_bïo").encode("latin-1"))
    assert "not UTF-8 text" in one_error_line(invoke("meta-train", str(bad)))


def test_out_under_a_regular_file_is_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    r = invoke("meta-train", BIO, "--out", str(tmp_path / "file" / "x.h5"))
    assert "is a file, not a directory" in one_error_line(r)
    r = invoke("figures", "--paper", "2022", "--results", str(REPO / "results"), "--out",
               str(tmp_path / "file" / "figs"))
    assert "is a file, not a directory" in one_error_line(r)
    assert leftovers(tmp_path) == ["file"]


def test_out_in_a_read_only_place_is_one_line(tmp_path):
    ro = read_only_dir(tmp_path)
    r = invoke("meta-train", BIO, "--out", str(ro / "sub" / "x.h5"))
    assert "cannot write in" in one_error_line(r)
    r = invoke("figures", "--paper", "2022", "--results", str(REPO / "results"), "--out",
               str(ro / "figs"))
    assert "cannot write in" in one_error_line(r)


def test_out_that_cannot_be_created_even_when_access_says_yes(tmp_path):
    """/sys passes access(W_OK) for root but refuses new files: still one line."""
    if not Path("/sys").is_dir() or os.access("/sys", os.W_OK) is False:
        target = read_only_dir(tmp_path)
    else:
        target = Path("/sys")
    r = invoke("meta-train", BIO, "--out", str(target / "plast-test.h5"), *sets(*TINY))
    assert "cannot write" in one_error_line(r)


def test_overwrite_onto_a_directory_is_one_line(tmp_path):
    d = tmp_path / "store.h5"
    d.mkdir()
    line = one_error_line(invoke("meta-train", BIO, "--out", str(d), "--overwrite"))
    assert "is a directory; give a store file" in line
    assert d.is_dir() and leftovers(tmp_path) == ["store.h5"]


# ----------------------------------------------------------------- 6: accepted although wrong


@pytest.mark.parametrize("recipe,key,value", [
    ("bio.yaml", ("meta", "lr"), float("nan")),
    ("bio.yaml", ("meta", "lr"), float("inf")),
    ("bio.yaml", ("network", "beta"), float("-inf")),
    ("bio.yaml", ("rule", "init", "pseudo_grad"), float("nan")),
    ("2024/fig1-depth5.yaml", ("conditions", 0, "grid", "pseudo_grad", 0), float("nan")),
    ("2024/fig7-rnn-memory.yaml", ("conditions", 1, "oja", 0), float("inf")),
])
def test_nan_or_inf_in_a_recipe_is_refused(tmp_path, recipe, key, value):
    raw = yaml.safe_load((REPO / "recipes" / recipe).read_text())
    node = raw
    for k in key[:-1]:
        node = node[k]
    node[key[-1]] = value
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(raw))
    kind = raw["experiment"]
    short = ["--episodes", "1", *sets(*TINY)] if kind == "meta-train" else \
        ["--samples", "2", "--seeds", "1"]  # (so that the old code, which ran it, was quick)
    line = one_error_line(invoke(kind, str(path), "--out", str(tmp_path / "o.h5"), *short))
    assert "is not a finite number" in line
    assert leftovers(tmp_path) == ["r.yaml"]


@pytest.mark.parametrize("assignment", ["meta.lr=.nan", "meta.lr=nan", "meta.lr=.inf",
                                        "meta.l1=-inf", "meta.grad_clip=1e999",
                                        "rule.init.oja=.NaN"])
def test_nan_or_inf_in_a_set_value_is_refused(tmp_path, assignment):
    r = invoke("meta-train", BIO, "--out", str(tmp_path / "o.h5"), "--episodes", "1",
               *sets(*TINY, assignment))
    assert "is not a finite number" in one_error_line(r)
    assert leftovers(tmp_path) == []


def _data_copy(tmp_path: Path, without: str) -> Path:
    """A data directory of links to the real files, one of them missing."""
    real = data_dir().resolve()
    copy = tmp_path / "data"
    for f in real.rglob("*"):
        if f.is_file() and str(f.relative_to(real)) != without:
            (copy / f.relative_to(real)).parent.mkdir(parents=True, exist_ok=True)
            (copy / f.relative_to(real)).symlink_to(f)
    return copy


def test_data_check_exits_1_and_names_the_recipes_a_missing_file_blocks(tmp_path):
    copy = _data_copy(tmp_path, "mnist/t10k-images-idx3-ubyte.gz")
    r = invoke("data", "check", "--data-dir", str(copy))
    assert r.exit_code == 1, r.output
    blocked = [ln for ln in r.output.splitlines() if ln.startswith("missing ")]
    assert len(blocked) == 1 and "mnist/t10k-images-idx3-ubyte.gz blocks" in blocked[0]
    assert "recipes/2024/fig1-depth5.yaml" in blocked[0]
    assert "recipes/bio.yaml" not in blocked[0]  # bio reads emnist-bymerge
    assert "plast data fetch mnist" in blocked[0]


def test_data_check_passes_on_the_complete_data():
    r = invoke("data", "check")
    assert r.exit_code == 0, r.output  # missing emnist-balanced images block no recipe


def test_data_fetch_lists_what_it_can_fetch_and_what_must_be_placed_by_hand():
    r = invoke("data", "fetch")
    assert r.exit_code == 0, r.output
    assert "can fetch" in r.output and "mnist, fashion-mnist, emnist-balanced" in r.output
    assert "emnist-bymerge must be placed by hand" in r.output
    assert "biometrics.nist.gov/cs_links/EMNIST/gzip.zip" in r.output
    line = one_error_line(invoke("data", "fetch", "emnist-bymerge"))
    assert "must be placed by hand" in line and "gzip.zip" in line


# ----------------------------------------------------------------- 7: misleading messages


def test_missing_bymerge_file_hint_does_not_suggest_data_fetch(tmp_path):
    copy = _data_copy(tmp_path, "emnist/emnist-bymerge-test-images-idx3-ubyte.gz")
    line = one_error_line(invoke("meta-train", BIO, "--data-dir", str(copy), "--out",
                                 str(tmp_path / "o.h5")))
    assert "data file missing" in line and "plast data fetch" not in line
    assert "must be placed by hand" in line and "gzip.zip" in line
    line = one_error_line(invoke("baseline", str(REPO / "recipes/2024/fig1-depth5.yaml"),
                                 "--data-dir", str(tmp_path / "none"), "--out",
                                 str(tmp_path / "o.h5")))
    assert "run 'plast data fetch mnist'" in line


def test_a_directory_given_as_the_recipe(tmp_path):
    line = one_error_line(invoke("meta-train", str(tmp_path)))
    assert "is a directory, not a recipe file" in line and "not found" not in line


def test_an_existing_directory_given_as_out(tmp_path):
    line = one_error_line(invoke("meta-train", BIO, "--out", str(tmp_path)))
    assert "is a directory" in line and "--resume" not in line


def test_validation_happens_before_torch_is_imported():
    """A bad recipe value is reported without importing torch (about 0.3 s of imports
    instead of about 3 s)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    p = subprocess.run([sys.executable, "-X", "importtime", "-m", "plastcli", "meta-train", BIO,
                        "--set", "meta.lr=-1"], capture_output=True, text=True, env=env,
                       cwd=REPO)
    assert p.returncode == 2
    assert "is below the minimum" in p.stderr
    imported = [ln.rsplit("|", 1)[-1].strip() for ln in p.stderr.splitlines()
                if ln.startswith("import time:")]
    assert "plastcli.recipes" in imported
    assert not [m for m in imported if m == "torch" or m.startswith("torch.")]
    assert "h5py" not in imported


@pytest.mark.parametrize("text, says", [
    ("experiment: meta-train\nname: a\nname: b\n", "(line 3): key 'name' is given twice"),
    ("experiment: meta-train\nmeta: {lr: 0.1, lr: 0.2}\n", "key 'lr' is given twice"),
    ("experiment: meta-train\nmeta: {lr: [1,\n", "not valid YAML (line 3): expected"),
])
def test_a_repeated_key_or_broken_yaml_says_where_and_why(tmp_path, text, says):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    r = CliRunner().invoke(app, ["recipe", "show", str(path)])
    assert r.exit_code == 2 and says in r.output and len(r.output.strip().splitlines()) == 1, \
        r.output


@pytest.mark.parametrize("override, key", [
    ("meta.lr=abc", "meta.lr"), ("meta.lrr=1", "meta.lrr"), ("meta.episodes=0", "meta.episodes"),
    ("meta={episodes: -1}", "meta.episodes")])
def test_a_bad_value_from_set_names_the_set_it_came_from(override, key):
    r = CliRunner().invoke(app, ["recipe", "show", str(REPO / "recipes/bio.yaml"), "--set",
                                 override])
    assert r.exit_code == 2 and f"key '{key}'" in r.output, r.output
    assert f"(from --set {override})" in " ".join(r.output.split()), r.output


def test_a_bad_value_in_the_file_names_no_set(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("experiment: meta-train\nmeta: {lr: abc}\n")
    r = CliRunner().invoke(app, ["recipe", "show", str(path), "--set", "meta.episodes=3"])
    assert r.exit_code == 2 and "key 'meta.lr'" in r.output and "from --set" not in r.output


def test_data_check_says_once_that_the_data_dir_does_not_exist(tmp_path):
    r = invoke("data", "check", "--data-dir", str(tmp_path / "none"))
    assert r.exit_code == 1
    assert r.output.count("does not exist") == 1, r.output
    assert all(ln.count(".yaml") <= 3 for ln in r.output.splitlines() if ln.startswith("missing"))
    (tmp_path / "f").write_text("x")
    line = one_error_line(invoke("data", "check", "--data-dir", str(tmp_path / "f")))
    assert "is a file, not a directory" in line


def _foreign_h5(path: Path, **attrs) -> Path:
    import h5py

    with h5py.File(path, "w") as f:
        for k, v in attrs.items():
            f.attrs[k] = v
    return path


def test_an_hdf5_file_plast_did_not_write_is_not_shown_or_resumed_as_a_store(tmp_path):
    foreign = _foreign_h5(tmp_path / "foreign.h5", status="complete")
    assert "not a plast result store" in one_error_line(invoke("show", str(foreign)))
    assert "not a plast result store" in one_error_line(invoke("store", "upgrade", str(foreign)))
    r = invoke("meta-train", BIO, "--out", str(foreign), "--resume", *sets(*TINY))
    assert "not a plast result store" in one_error_line(r)


def test_resume_with_a_damaged_store_is_one_line(tmp_path):
    import h5py
    import numpy as np

    out = tmp_path / "m.h5"
    r = invoke("meta-train", BIO, "--out", str(out), "--episodes", "4",
               *sets(*TINY, "run.checkpoint_every=2"))
    assert r.exit_code == 0, r.output
    r = invoke("init-study", str(REPO / "recipes/2024/fig5-naive-init.yaml"), "--resume",
               "--out", str(out))
    assert "holds a 'meta-train' run, not a 'init-study' one" in one_error_line(r)
    with h5py.File(out, "a") as f:  # a checkpoint array of another shape
        f.attrs["status"] = "running"
        m = f["checkpoint/adam_m0"][()]
        del f["checkpoint/adam_m0"]
        f["checkpoint/adam_m0"] = np.zeros(m.size + 1, m.dtype)
    r = invoke("meta-train", BIO, "--out", str(out), "--episodes", "6", "--resume",
               *sets(*TINY, "run.checkpoint_every=2"))
    assert "checkpoint does not fit this run (checkpoint/adam_m0" in one_error_line(r)
    with h5py.File(out, "a") as f:
        f.attrs["recipe_yaml"] = "a: [b"
    r = invoke("meta-train", BIO, "--out", str(out), "--episodes", "6", "--resume",
               *sets(*TINY))
    assert "recipe_yaml cannot be read as a recipe" in one_error_line(r)


@pytest.mark.parametrize("content, says", [(b"", "not a mapping"), (b"a: [b", "not valid YAML"),
                                           (b"\xa2\x00\x01", "not UTF-8")])
def test_a_sweep_whose_base_is_not_a_recipe_is_one_line(tmp_path, content, says):
    (tmp_path / "base.yaml").write_bytes(content)
    sweep = tmp_path / "s.yaml"
    sweep.write_text("sweep: s\nbase: base.yaml\ngrid: {meta.lr: [0.001]}\n")
    line = one_error_line(invoke("sweep", str(sweep), "--results", str(tmp_path / "r")))
    assert "base.yaml" in line


def test_results_that_is_a_file_and_a_malformed_sweep_manifest_are_one_line(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    sweep = tmp_path / "s.yaml"
    sweep.write_text(f"sweep: s\nbase: {BIO}\ngrid: {{meta.lr: [0.001]}}\n")
    assert "is a file, not a directory" in one_error_line(
        invoke("sweep", str(sweep), "--results", str(afile)))
    assert "is a file, not a directory" in one_error_line(
        invoke("reproduce", "--paper", "2022", "--results", str(afile)))
    folder = tmp_path / "sw"
    folder.mkdir()
    for text in ("{}", "[1, 2]", '{"keys": [], "points": [1]}'):
        (folder / "sweep.json").write_text(text)
        assert "not the manifest plast sweep writes" in one_error_line(invoke("show",
                                                                               str(folder)))


def test_data_check_with_a_recipes_folder_that_does_not_exist_is_one_line(tmp_path):
    r = invoke("data", "check", "--recipes", str(tmp_path / "nope"))
    assert "--recipes" in one_error_line(r) and "no such directory" in r.output


def test_a_cache_folder_that_cannot_be_made_is_one_line(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    # a fresh process: this one holds the data sets and the kernel already
    r = subprocess.run([sys.executable, "-m", "plastcli", "meta-train", BIO, "--out",
                        str(tmp_path / "m.h5"), "--episodes", "1", *sets(*TINY)],
                       capture_output=True, text=True, cwd=tmp_path,
                       env={**os.environ, "PLAST_CACHE": str(afile),
                            # absolute: the README runs the tests with PLAST_DATA=../shared/data
                            "PLAST_DATA": str(data_dir().resolve())})
    lines = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1, r.stdout + r.stderr
    assert "PLAST_CACHE" in lines[0] and "is a file, not a directory" in lines[0]
    assert not (tmp_path / "m.h5").exists()


def test_the_machine_refusing_a_write_is_one_line_and_exit_1(tmp_path, monkeypatch):
    import errno

    from plastcli.results import store

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(self.path))

    monkeypatch.setattr(store.Store, "append", full)
    r = invoke("meta-train", BIO, "--out", str(tmp_path / "m.h5"), "--episodes", "2",
               *sets(*TINY))
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    assert lines[-1] == (f"error: {tmp_path / 'm.h5'}: No space left on device; free some "
                         "space and run the command again (a training run continues with "
                         "--resume)")


def test_an_existing_writable_folder_under_a_read_only_one_is_accepted(tmp_path, monkeypatch):
    """Only the folder written in must be writable (root passes every access check, so
    the read-only parent is simulated)."""
    from plastcli import paths

    parent, folder = tmp_path / "ro", tmp_path / "ro" / "w"
    folder.mkdir(parents=True)
    real = os.access
    monkeypatch.setattr(paths.os, "access", lambda p, m: Path(p) != parent and real(p, m))
    assert paths.check_out_dir(folder, "--results") == folder
    paths.ensure_out_dir(folder)
    with pytest.raises(paths.PlastError, match="cannot write in .*ro \\(permission denied\\)"):
        paths.check_out_dir(parent / "new", "--results")
