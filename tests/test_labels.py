"""Labelled stores (plastcli/results/labels.py): every kind of store a run writes opens in xarray
through h5netcdf with named dimensions and coordinates, a selection by name gives the
stored numbers, and ``plast store upgrade`` labels an older store without changing a bit."""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest
import yaml
from conftest import REPO
from typer.testing import CliRunner

from plastcli.cli import app
from plastcli.results.store import read_store

xr = pytest.importorskip("xarray")
pytest.importorskip("h5netcdf")

META = ["network.layers=[784, 12, 47]", "task.classes=3", "task.train_per_class=4",
        "task.query_per_class=2", "population.seeds=2", "run.device=cpu", "meta.episodes=3",
        "run.checkpoint_every=2"]


def _groups(path) -> list[str]:
    with h5py.File(path, "r") as f:
        return [g for g in f if g != "checkpoint" and isinstance(f[g], h5py.Group)]


def _open_every_group(path) -> dict:
    """Each result group as an xarray Dataset; each variable equals the raw array."""
    out = {}
    with h5py.File(path, "r") as f:
        for g in _groups(path):
            ds = xr.open_dataset(path, engine="h5netcdf", group=g).load()
            for name, raw in f[g].items():
                if name in ds.dims:  # a coordinate
                    continue
                np.testing.assert_array_equal(ds[name].values, raw[()], err_msg=f"{g}/{name}")
            out[g] = ds
    return out


def _cli(*args):
    res = CliRunner().invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return res


def test_meta_train_store_selects_by_term_and_layer(tmp_path):
    out = tmp_path / "bio.h5"
    _cli("meta-train", REPO / "recipes/bio.yaml", "--out", out,
         *(x for s in META for x in ("--set", s)))
    ds = _open_every_group(out)["episodes"]
    assert ds["theta"].dims == ("member", "episode", "term")
    assert list(ds["term"].values) == ["pseudo_grad", "err_hebb", "oja"]
    assert list(ds["layer"].values) == ["W01", "W12"]
    raw = read_store(out)
    np.testing.assert_array_equal(ds["theta"].sel(term="oja").values,
                                  raw["episodes/theta"][:, :, 2])
    np.testing.assert_array_equal(ds["angles"].sel(layer="W12", episode=2).values,
                                  raw["episodes/angles"][:, 2, 1])
    assert ds.sizes == {"member": 2, "episode": 3, "term": 3, "layer": 2}
    # flat list attributes are native, nested ones JSON; reading gives lists either way
    with h5py.File(out, "r") as f:
        assert list(f.attrs["term_names"]) == ["pseudo_grad", "err_hebb", "oja"]
        assert isinstance(f.attrs["term_declarations"], str)
    assert raw.json_attr("term_names") == ["pseudo_grad", "err_hebb", "oja"]
    assert raw.json_attr("seeds") == [0, 1]


def test_a_resumed_store_is_labelled_again_at_its_new_length(tmp_path):
    out = tmp_path / "bio.h5"
    sets = [x for s in META if not s.startswith("meta.episodes") for x in ("--set", s)]
    _cli("meta-train", REPO / "recipes/bio.yaml", "--out", out, *sets, "--episodes", "3")
    _cli("meta-train", REPO / "recipes/bio.yaml", "--out", out, *sets, "--episodes", "5",
         "--resume")
    assert _open_every_group(out)["episodes"].sizes["episode"] == 5


def test_ablate_layers_store(tmp_path):
    out = tmp_path / "t1.h5"
    _cli("ablate-layers", REPO / "recipes/2022/table1-ablate-layers.yaml", "--out", out,
         *(x for s in ["dataset.name=mnist", "network.layers=[784, 6, 5, 10]",
                       "task.classes=3", "task.train_per_class=3", "task.query_per_class=2",
                       "population.seeds=1", "run.device=cpu", "meta.episodes=2",
                       "ablation.burn_in=1"] for x in ("--set", s)))
    ds = _open_every_group(out)
    assert ds["members"]["mask"].dims == ("member", "layer", "pool_term")
    assert list(ds["members"]["layer"].values) == ["W01", "W12", "W23"]
    assert ds["episodes"]["theta"].sel(term="err_hebb").shape == (7, 2)


def test_online_stores(tmp_path):
    import test_baseline_cli as b
    import test_rnn as r

    for kind, tiny in (("baseline", b.TINY), ("rnn-memory", r.TINY)):
        recipe = tmp_path / f"{kind}.yaml"
        recipe.write_text(yaml.safe_dump(tiny))
        _cli(kind, recipe, "--out", tmp_path / f"{kind}.h5")
    base = _open_every_group(tmp_path / "baseline.h5")
    assert base["curves"]["angles"].dims == ("member", "eval", "layer")
    assert base["stats"]["val_accuracy_mean"].dims == ("condition", "eval")
    assert list(base["stats"]["condition"].values) == ["BP", "FA+Oja", "DFA"]
    assert base["grid"]["point_theta"].dims == ("grid_point", "term")
    rnn = _open_every_group(tmp_path / "rnn-memory.h5")
    assert rnn["curves"]["hidden_norm"].dims == ("member", "eval", "step")


def test_upgrade_labels_an_older_store_and_keeps_every_number(tmp_path):
    """A committed store from before labels: JSON list attributes, no scales."""
    old = tmp_path / "old.h5"
    shutil.copy(REPO / "results/2022/fig3-bp.h5", old)
    with h5py.File(old, "a") as f:  # as written before labels existed
        f.attrs["term_names"] = json.dumps(["pseudo_grad"])
        for g in f.values():
            for ds in g.values():
                assert not h5py.h5ds.is_scale(ds.id)
    before = read_store(old)
    with pytest.warns(UserWarning, match="phony_dims"):  # no dimension names: made-up ones
        unlabelled = xr.open_dataset(old, engine="h5netcdf", group="episodes")
    assert "member" not in unlabelled.dims
    unlabelled.close()
    res = _cli("store", "upgrade", old)
    assert "made native" in res.output
    after = read_store(old)
    assert sorted(after.arrays) == sorted(before.arrays)
    for k, v in before.arrays.items():
        np.testing.assert_array_equal(after.arrays[k], v, err_msg=k)
    assert after.json_attr("term_names") == before.json_attr("term_names") == ["pseudo_grad"]
    assert _open_every_group(old)["episodes"]["theta"].sel(term="pseudo_grad").shape == (10, 500)


def test_upgrade_refuses_a_store_that_is_not_complete(tmp_path):
    st = tmp_path / "run.h5"
    shutil.copy(REPO / "results/2022/fig3-bp.h5", st)
    with h5py.File(st, "a") as f:
        f.attrs["status"] = "running"
    res = CliRunner().invoke(app, ["store", "upgrade", str(st)])
    assert res.exit_code == 2 and "only a complete store" in res.output
