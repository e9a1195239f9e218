"""The online population table: layout order against a literal loop, groups, columns."""

from __future__ import annotations

import numpy as np

from plastcli.experiments.population import layout


def test_layout_is_condition_then_point_then_seed_as_a_literal_loop():
    points = [[(0.1, 0.0), (0.2, 0.0)], [(0.1, 1e-3)], [(0.3, 0.0), (0.4, 0.0), (0.5, 2e-3)]]
    chosen = [[1], [0], [0, 2]]
    seeds = [7, 8, 9]
    pop = layout(points, chosen, seeds)
    expect = []
    for c in range(len(points)):
        for k in chosen[c]:
            for s in seeds:
                expect.append((c, k, s, points[c][k]))
    assert list(zip(pop.condition.tolist(), pop.point.tolist(), pop.seeds,
                    map(tuple, pop.coefficients.tolist()), strict=True)) == \
        [(c, k, s, tuple(np.float32(v).item() for v in p)) for c, k, s, p in expect]
    assert pop.coefficients.dtype == np.float32
    every = layout(points, None, seeds)
    assert len(every) == 6 * 3 and every.point.tolist()[:6] == [0, 0, 0, 1, 1, 1]


def test_groups_are_contiguous_runs_of_a_shared_key_and_columns_are_labelled():
    pop = layout([[np.zeros(3)], [np.ones(3)], [np.ones(3)], [np.zeros(3)]], None, [0, 1])
    kind = {0: "sym", 1: "fixed", 2: "fixed", 3: "sym"}.__getitem__
    groups = pop.groups(kind)
    assert [(g.start, g.stop, k) for g, k in groups] == [(0, 2, "sym"), (2, 6, "fixed"),
                                                         (6, 8, "sym")]
    cols = pop.columns(["a", "b", "c", "θ2=0"])
    assert cols["condition_name"][6].decode() == "θ2=0" and cols["seed"].tolist()[:2] == [0, 1]
    assert set(cols) == {"condition", "grid_point", "seed", "condition_name"}
