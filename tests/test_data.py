"""IDX reader, checksums, data-dir resolution and the task sampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import write_idx

from plastcli import data
from plastcli.errors import PlastError


def test_idx_roundtrip_gz_and_raw(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    for compress in (True, False):
        p = tmp_path / f"a{compress}.idx"
        write_idx(p, arr, compress=compress)
        np.testing.assert_array_equal(data.read_idx(p), arr)


@pytest.mark.parametrize("mutate,message", [
    (lambda raw: b"\x01" + raw[1:], "bad magic"),
    (lambda raw: raw[:2] + b"\x0d" + raw[3:], "element type"),
    (lambda raw: raw[:-1], "body has"),
    (lambda raw: raw[:6], "truncated"),
])
def test_idx_header_is_validated(tmp_path, mutate, message):
    arr = np.zeros((2, 2, 2), dtype=np.uint8)
    p = tmp_path / "x.idx"
    write_idx(p, arr, compress=False)
    p.write_bytes(mutate(p.read_bytes()))
    with pytest.raises(PlastError, match=message):
        data.read_idx(p)


def test_sha_mismatch_names_path_and_expected_sum(tmp_path):
    rel = "mnist/t10k-labels-idx1-ubyte.gz"
    write_idx(tmp_path / rel, np.zeros(10, dtype=np.uint8))
    with pytest.raises(PlastError) as err:
        data.verify_file(tmp_path, rel)
    msg = str(err.value)
    assert str(tmp_path / rel) in msg and data.known_sums()[rel] in msg and "corrupt" in msg


def test_missing_file_names_path_and_expected_sum(tmp_path):
    rel = "mnist/t10k-images-idx3-ubyte.gz"
    with pytest.raises(PlastError, match="missing") as err:
        data.verify_file(tmp_path, rel)
    assert data.known_sums()[rel] in str(err.value)


def test_data_dir_resolution_order(monkeypatch, tmp_path):
    monkeypatch.setenv("PLAST_DATA", str(tmp_path / "env"))
    assert data.resolve_data_dir(tmp_path / "cli") == tmp_path / "cli"
    assert data.resolve_data_dir(None) == tmp_path / "env"
    monkeypatch.delenv("PLAST_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert data.resolve_data_dir(None) == tmp_path / "cache" / "plast" / "data"


def test_real_datasets_load_upright_and_scaled(real_data_dir):
    mn = data.load_dataset("mnist", "test", real_data_dir)
    assert mn.images.shape == (10000, 784) and mn.n_classes == 10
    assert float(mn.images.min()) == 0.0 and float(mn.images.max()) == 1.0
    em = data.load_dataset("emnist-bymerge", "test", real_data_dir)
    assert em.images.shape == (116323, 784) and em.n_classes == 47
    raw = data.read_idx(real_data_dir / data.REGISTRY["emnist-bymerge"]["test"][0])
    np.testing.assert_allclose(em.images[0].view(28, 28).numpy(), raw[0].T / 255.0, rtol=1e-6)


def test_rows_scale_only_what_is_drawn_and_equal_the_whole_set(real_data_dir):
    mn = data.load_dataset("mnist", "test", real_data_dir)
    fresh = data.Dataset(mn.name, mn.split, mn.raw, mn.labels, mn.n_classes, mn.sha256)
    assert mn.raw.dtype == torch.uint8  # held as pixel levels
    sampler = data.TaskSampler(fresh, 5, 10, 5, None, 0)
    ep = sampler.sample([0, 1], 3, torch.device("cpu"))
    assert "images" not in vars(fresh)  # drawing a task made no float copy of the set
    idx = torch.randint(0, 10000, (3, 97), generator=torch.Generator().manual_seed(1))
    rows = fresh.rows(idx)
    assert rows.dtype == torch.float32 and rows.shape == (3, 97, 784)
    # the same values as scaling the whole set in numpy (a literal reference)
    whole = mn.raw.numpy().astype(np.float32) / np.float32(255)
    assert np.array_equal(rows.numpy(), whole[idx.numpy()])
    assert np.array_equal(fresh.images.numpy(), whole)
    tr, qu = sampler.member_indices(1, 3)
    assert torch.equal(ep.x_train[1], fresh.images[tr])
    assert torch.equal(ep.x_query[1], fresh.images[qu])
    floats = data.Dataset("f", "test", fresh.images, mn.labels, 10, {})  # float data: as given
    assert torch.equal(floats.rows(idx), rows)
    assert floats.images.data_ptr() == floats.raw.data_ptr()  # no copy of float data


def test_emnist_balanced_missing_images_is_a_clear_error(real_data_dir):
    with pytest.raises(PlastError, match="emnist-balanced-test-images"):
        data.load_dataset("emnist-balanced", "test", real_data_dir)


def _tiny(n_classes=6, per_class=30):
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    images = torch.arange(len(labels), dtype=torch.float32)[:, None].expand(-1, 784).clone()
    return data.Dataset("tiny", "test", images, labels, n_classes, {})


def test_task_sampler_draws_distinct_classes_and_images():
    s = data.TaskSampler(_tiny(), classes=4, train_per_class=5, query_per_class=3,
                         per_class_cap=20, cap_seed=1)
    ep = s.sample([0, 1], 7, "cpu")
    assert ep.x_train.shape == (2, 20, 784) and ep.x_query.shape == (2, 12, 784)
    for p in range(2):
        cls = set(ep.y_train[p].tolist())
        assert len(cls) == 4 and cls == set(ep.y_query[p].tolist())
        ids = torch.cat([ep.x_train[p, :, 0], ep.x_query[p, :, 0]]).tolist()
        assert len(set(ids)) == len(ids)  # K+Q distinct images per class, no reuse
        allowed = set().union(*[set(pool.tolist()) for pool in s.pools])
        assert set(int(i) for i in ids) <= allowed  # only the capped subset is used
    # a member's draw depends only on (seed, episode)
    alone = s.sample([1], 7, "cpu")
    assert torch.equal(alone.x_train[0], ep.x_train[1])
    assert not torch.equal(s.sample([1], 8, "cpu").x_train[0], ep.x_train[1])


def test_per_class_cap_is_a_fixed_seeded_subset():
    d = _tiny()
    a = data.class_indices(d.labels, d.n_classes, 10, cap_seed=3)
    b = data.class_indices(d.labels, d.n_classes, 10, cap_seed=3)
    c = data.class_indices(d.labels, d.n_classes, 10, cap_seed=4)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert any(not torch.equal(x, y) for x, y in zip(a, c, strict=True))
    assert all(len(x) == 10 for x in a)


def test_decoded_cache_hits_rebuilds_a_corrupt_entry_and_tolerates_read_only(tmp_path,
                                                                            monkeypatch):
    from plastcli import data_cache

    monkeypatch.setenv(data_cache.CACHE_ENV, str(tmp_path / "c"))
    calls = []

    def build():
        calls.append(1)
        return {"images": np.arange(12, dtype=np.uint8).reshape(3, 4)}

    a = data_cache.cached_arrays("k", build)
    b = data_cache.cached_arrays("k", build)
    assert len(calls) == 1 and np.array_equal(a["images"], b["images"])
    entry = tmp_path / "c" / "k.npz"
    raw = bytearray(entry.read_bytes())
    raw[-200] ^= 0xFF  # flip bits inside the stored arrays
    entry.write_bytes(bytes(raw))
    assert np.array_equal(data_cache.cached_arrays("k", build)["images"], a["images"])
    assert len(calls) == 2  # the altered entry was rebuilt, not used
    monkeypatch.setenv(data_cache.CACHE_ENV, "/proc/no-such-dir")  # cannot be written
    assert np.array_equal(data_cache.cached_arrays("k", build)["images"], a["images"])


def test_a_capped_load_gives_the_sampler_the_same_images(real_data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("PLAST_CACHE", str(tmp_path))
    full = data.load_dataset("emnist-bymerge", "test", real_data_dir)
    capped = data.load_dataset("emnist-bymerge", "test", real_data_dir, 400, 0)
    assert len(capped.labels) == 47 * 400 and capped.sha256 == full.sha256
    a = data.TaskSampler(full, 5, 50, 10, 400, 0)
    b = data.TaskSampler(capped, 5, 50, 10, 400, 0)
    for seed in (0, 3):
        (ta, qa), (tb, qb) = a.member_indices(seed, 7), b.member_indices(seed, 7)
        assert torch.equal(full.images[ta], capped.images[tb])
        assert torch.equal(full.labels[qa], capped.labels[qb])
