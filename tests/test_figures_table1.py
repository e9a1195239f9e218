"""The Table 1 figure's note on curves drawn over each other (plastcli/figures/table1.py)."""

import numpy as np

from plastcli.figures.table1 import OVERLAP_DEG, _overlapping


def _runs(level_before, level_after, burn=5, E=40, seeds=3):
    """[seeds, E, 1] angles: one level before burn-in, another after (seed noise cancels)."""
    a = np.full((seeds, E, 1), float(level_after))
    a[:, :burn] = level_before
    a[0] += 1.0
    a[1] -= 1.0
    return a


def test_every_pair_of_a_set_is_close_and_nothing_chains():
    groups = [("A", _runs(90, 30)), ("B", _runs(90, 31.5)), ("C", _runs(90, 33.5)),
              ("D", _runs(90, 60)), ("E", _runs(0, 60.5)), ("F", _runs(30, 30 + 2 * OVERLAP_DEG))]
    # A-B and B-C are within 2.5 degrees but A-C is not: C does not join A's set through B;
    # F is 1.5 from C; D-E differ only before burn-in (the drawn curves are moving averages,
    # so the cut is at burn-in + the window's reach: levels well apart before it do not leak)
    assert _overlapping(groups, 0, 20) == [["A", "B"], ["C", "F"], ["D", "E"]]
    assert _overlapping(groups[3:5], 0, 0) == []  # with the burn-in counted they differ


def test_close_on_average_but_apart_for_a_stretch_is_not_drawn_over():
    a, b = _runs(90, 40), _runs(90, 40)
    b[:, 25:31] += 6.0  # apart for six episodes: the moving average keeps over 2.5 of it
    assert np.abs(b.mean(0) - a.mean(0))[5:].mean() < OVERLAP_DEG  # the old, average test
    assert _overlapping([("a", a), ("b", b)], 0, 5) == []


def test_nan_episodes_are_skipped_and_a_lone_curve_is_not_listed():
    a, b = _runs(90, 40), _runs(90, 41)
    b[:, 30:] = np.nan  # a member diverged: its later angles are NaN
    assert _overlapping([("a", a), ("b", b), ("c", _runs(90, 80))], 0, 5) == [["a", "b"]]
