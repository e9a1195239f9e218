"""Seed chunks merged into one store: the same as one run of all seeds, resumable, cached."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import REPO
from test_meta_train_store import TINY, episode_arrays

from plastcli import reproduce
from plastcli.errors import PlastError
from plastcli.experiments import meta_train
from plastcli.recipes import load_recipe, recipe_to_yaml
from plastcli.results.merge import merge_seed_chunks
from plastcli.results.store import read_store

BASE = [s for s in TINY if not s.startswith("population.seeds")]


def _recipe(episodes, seeds, seed=0):
    return load_recipe(REPO / "recipes/bio.yaml", [*BASE, f"meta.episodes={episodes}",
                                                   f"population.seeds={seeds}",
                                                   f"population.seed={seed}"])


def _chunks(tmp_path, episodes=3):
    parts = []
    for k, (seed, n) in enumerate([(0, 2), (2, 1), (3, 2)]):
        parts.append(tmp_path / f"part-{k}.h5")
        meta_train.run(_recipe(episodes, n, seed), parts[-1])
    return parts


def test_merged_chunks_equal_one_run_of_all_seeds(tmp_path):
    full = _recipe(3, 5)
    meta_train.run(full, tmp_path / "full.h5")
    merge_seed_chunks(_chunks(tmp_path), tmp_path / "merged.h5", recipe_to_yaml(full))
    a, b = episode_arrays(tmp_path / "full.h5"), episode_arrays(tmp_path / "merged.h5")
    assert set(a) == set(b)
    for k in a:  # members are independent: only BLAS blocking may differ with P
        np.testing.assert_allclose(b[k], a[k], rtol=1e-5, atol=1e-7, err_msg=k)
    sa, sb = read_store(tmp_path / "full.h5"), read_store(tmp_path / "merged.h5")
    assert sb.complete and sb.json_attr("seeds") == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(sb["members/seed"], [0, 1, 2, 3, 4])
    assert sb.json_attr("seed_chunks") == [[0, 1], [2], [3, 4]]
    prov = sb.json_attr("seed_chunk_provenance")  # where each chunk ran, in chunk order
    assert len(prov) == 3 and all(p["cpu_model"] == sa.attrs["cpu_model"] for p in prov)
    assert [p["created"] for p in prov] == [str(read_store(q).attrs["created"])
                                            for q in sorted(tmp_path.glob("part-*.h5"))]
    assert sb.attrs["diverged_members"] == sa.attrs["diverged_members"]
    # the cache sees the merged store as the full recipe's run
    assert reproduce.cache_key(sb.attrs["recipe_yaml"], sb.attrs["plast_version"]) == \
        reproduce.cache_key(recipe_to_yaml(full), sa.attrs["plast_version"])


def test_a_merged_store_resumes_to_more_episodes_like_one_run(tmp_path):
    meta_train.run(_recipe(5, 5), tmp_path / "full.h5")
    merge_seed_chunks(_chunks(tmp_path), tmp_path / "merged.h5", recipe_to_yaml(_recipe(3, 5)))
    meta_train.run(_recipe(5, 5), tmp_path / "merged.h5", resume=True)
    a, b = episode_arrays(tmp_path / "full.h5"), episode_arrays(tmp_path / "merged.h5")
    for k in a:
        assert b[k].shape == a[k].shape, k
        np.testing.assert_allclose(b[k], a[k], rtol=1e-5, atol=1e-7, err_msg=k)


def test_an_incomplete_chunk_or_a_grid_run_is_refused(tmp_path):
    parts = _chunks(tmp_path, episodes=1)
    import h5py

    with h5py.File(parts[1], "a") as f:
        f.attrs["status"] = "running"
    with pytest.raises(PlastError, match="part-1.h5: seed chunk is not complete"):
        merge_seed_chunks(parts, tmp_path / "m.h5", "")
    assert not (tmp_path / "m.h5").exists()
    grid = load_recipe(REPO / "recipes/bio.yaml", [*TINY, "meta.episodes=1",
                                                   "population.grid.meta.lr=[1e-3, 2e-3]"])
    meta_train.run(grid, tmp_path / "g.h5")
    with pytest.raises(PlastError, match="population.grid run is not split"):
        merge_seed_chunks([tmp_path / "g.h5"], tmp_path / "m.h5", "")


def test_chunks_holding_different_arrays_are_refused_not_merged_lossily(tmp_path):
    """A chunk from an older plast (here: without /members/collapsed_at) would lose the
    newer chunk's arrays in the merge."""
    import h5py

    parts = _chunks(tmp_path, episodes=2)
    with h5py.File(parts[1], "a") as f:
        del f["members/collapsed_at"]
    with pytest.raises(PlastError, match="holds other arrays.*members/collapsed_at"):
        merge_seed_chunks(parts, tmp_path / "m.h5", "")
    assert not (tmp_path / "m.h5").exists()
