"""The grid stage's selection rule (plastcli/experiments/selection.py) against a literal loop."""

from __future__ import annotations

import numpy as np

from plastcli.experiments.selection import score_points, selection_seeds


def test_score_points_matches_a_literal_loop_with_nans_and_ties():
    rng = np.random.default_rng(0)
    n_points, S = [3, 1, 4], 5
    acc = rng.random(sum(n_points) * S)
    acc[[2, 17, 30]] = np.nan  # diverged runs count as 0
    acc[35:40] = acc[20:25] = 0.5  # condition 2: points 0 and 3 tie
    acc[25:35] = 0.1
    clean, means, best = score_points(acc.copy(), n_points, S)
    m = 0
    for c, n in enumerate(n_points):
        lit = []
        for _ in range(n):
            vals = [0.0 if np.isnan(acc[m + s]) else acc[m + s] for s in range(S)]
            lit.append(sum(vals) / S)
            m += S
        np.testing.assert_allclose(means[c], lit, rtol=1e-12)
        assert best[c] == lit.index(max(lit))  # the first of equal maxima
    assert best[2] == 0 and not np.isnan(clean).any()


def test_selection_seeds_follow_the_recipe():
    class Sel:
        seed, seeds = 1000, 3

    assert selection_seeds(Sel) == [1000, 1001, 1002]
