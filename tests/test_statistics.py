"""plastcli.results.statistics: the one "final value" rule, checked against literal loops, and the
same final number for a diverged member in every place that prints one."""

from __future__ import annotations

import io
import math
import re

import numpy as np
import pytest
from conftest import REPO

from plastcli.results.statistics import TAIL, final_window, finite_mean, window_mean


def _counts(row) -> bool:
    """An episode counts when every entry of the member's record at it is finite."""
    return all(math.isfinite(v) for v in np.ravel(row))


def loop_final(a, tail, upto=None):
    """Literal reading of the rule: walk the first ``upto`` episodes, keep those that
    count, average the last ``tail`` of them entry by entry."""
    P, E = a.shape[:2]
    E = E if upto is None else min(upto, E)
    out = np.full((P, *a.shape[2:]), np.nan)
    for p in range(P):
        kept = [np.ravel(a[p, e]).astype(float) for e in range(E) if _counts(a[p, e])][-tail:]
        if kept:
            sums = [sum(float(k[j]) for k in kept) / len(kept) for j in range(kept[0].size)]
            out[p] = np.reshape(sums, a.shape[2:])
    return out


def loop_window(a, start, stop=None):
    P, E = a.shape[:2]
    stop = E if stop is None else min(stop, E)
    out = np.full((P, *a.shape[2:]), np.nan)
    for p in range(P):
        kept = [np.ravel(a[p, e]).astype(float) for e in range(start, stop) if _counts(a[p, e])]
        if kept:
            out[p] = np.reshape([sum(float(k[j]) for k in kept) / len(kept)
                                 for j in range(kept[0].size)], a.shape[2:])
    return out


def random_runs(rng, shape):
    """Random ``[P, E, ...]`` records where members diverge (NaN from an episode on), one
    member is NaN throughout, and single entries are NaN or inf here and there."""
    a = rng.normal(size=shape).astype(rng.choice([np.float32, np.float64]))
    P, E = shape[:2]
    for p in range(P):
        kind = rng.integers(4)
        if kind == 1:  # diverged at a random episode
            a[p, rng.integers(E):] = np.nan
        elif kind == 2:  # one bad entry (an overflow) at a few episodes
            for e in rng.integers(0, E, size=3):
                a[(p, e, *(rng.integers(n) for n in shape[2:]))] = rng.choice([np.nan, np.inf])
    a[rng.integers(P)] = np.nan  # a member that diverged at once
    return a


@pytest.mark.parametrize("shape", [(6, 80), (5, 120, 3), (4, 30, 2, 2), (3, 1), (4, 0)])
def test_final_window_is_the_mean_of_the_last_finite_episodes(shape):
    rng = np.random.default_rng(sum(shape))
    for _ in range(5):
        a = random_runs(rng, shape) if shape[1] else np.zeros(shape)
        for tail, upto in ((TAIL, None), (7, None), (TAIL, 40), (3, 10), (1, None)):
            got = final_window(a, tail, upto)
            assert got.shape == (shape[0], *shape[2:]) and got.dtype == np.float64
            np.testing.assert_allclose(got, loop_final(a, tail, upto), rtol=1e-12, atol=1e-12)


def test_final_window_of_a_diverged_member_is_the_tail_before_it_diverged():
    a = np.arange(200, dtype=np.float64).reshape(2, 100)
    a[1, 60:] = np.nan  # member 1 diverged at episode 60
    np.testing.assert_allclose(final_window(a), [np.mean(np.arange(50, 100)),
                                                 np.mean(np.arange(110, 160))])
    np.testing.assert_allclose(final_window(a, upto=55), [np.mean(np.arange(5, 55)),
                                                          np.mean(np.arange(105, 155))])
    a[0] = np.nan
    assert np.isnan(final_window(a)[0])


@pytest.mark.parametrize("shape", [(6, 80), (5, 60, 3)])
def test_window_mean_matches_a_loop(shape):
    rng = np.random.default_rng(7)
    a = random_runs(rng, shape)
    for start, stop in ((0, None), (20, None), (10, 30), (79, None)):
        np.testing.assert_allclose(window_mean(a, start, stop), loop_window(a, start, stop),
                                   rtol=1e-12, atol=1e-12)


def test_finite_mean_ignores_non_finite_entries_without_a_warning():
    with np.errstate(all="raise"):
        assert finite_mean(np.array([1.0, np.nan, 3.0, np.inf])) == 2.0
        assert math.isnan(finite_mean(np.array([np.nan])))
        np.testing.assert_array_equal(finite_mean(np.array([[1.0, np.nan], [np.nan, np.nan]]),
                                                  axis=1), [1.0, np.nan])


def test_a_diverged_member_has_one_final_value_in_the_cli_show_and_report(tmp_path):
    """Member 1 diverges at episode 1 of 53: its final value is episode 0, not NaN, in the
    meta-train table, ``plast show`` and the P1 report alike."""
    from rich.console import Console

    from plastcli.experiments import meta_train
    from plastcli.figures.report2022 import final_per_seed
    from plastcli.recipes import load_recipe
    from plastcli.results.store import read_store
    from plastcli.results.summary import final_values, store_summary

    rec = load_recipe(REPO / "recipes/bio.yaml", [
        "network.layers=[784, 16, 47]", "task.classes=3", "task.train_per_class=4",
        "task.query_per_class=2", "population.seeds=1", "run.checkpoint_every=100",
        "run.device=cpu", "meta.episodes=53",
        "rule.init.oja=0", "meta.bounds={}",  # the setting this divergence was found in
        "population.grid={rule.init.err_hebb: [0.0, -1.0e4]}"])
    out = tmp_path / "div.h5"
    res = meta_train.run(rec, out)
    np.testing.assert_array_equal(res.diverged_at, [-1, 1])
    st = read_store(out)
    for key in ("meta_accuracy", "meta_loss"):
        report = final_per_seed(st, key)
        assert np.isfinite(report).all()
        np.testing.assert_array_equal(res.final[key], report)  # the meta-train table
        np.testing.assert_array_equal(final_values(st[f"episodes/{key}"], "episodes"), report)
        assert report[1] == st[f"episodes/{key}"][1, 0]  # the one episode before divergence
    console = Console(file=io.StringIO(), width=200, color_system=None)
    for part in store_summary(out):
        console.print(part)
    text = console.file.getvalue()
    row = re.search(r"│\s+1 │\s+0 │([^\n]*)", text).group(1)  # member 1, seed 0
    acc = final_per_seed(st, "meta_accuracy")[1]
    assert f"{acc:.4g}" in row and "nan" not in row
