"""The shared figure style: log axes labelled with plain numbers, at least three of them,
whatever the span (plastcli/figures/style.py)."""

from __future__ import annotations

import pytest

from plastcli.figures.style import log_ticks


@pytest.mark.parametrize("lo, hi, want", [
    (0.7, 110, [1, 10, 100]),           # decades: the powers of ten
    (0.3, 7, [0.3, 1, 3]),              # a decade or two: 1-3
    (11, 42, [20, 30, 40]),             # under a decade: round numbers, as a linear axis
    (55, 140, [60, 80, 100, 120, 140]),
    (1.2, 1.9, [1.2, 1.4, 1.6, 1.8]),
])
def test_log_ticks_give_at_least_three_plain_numbers_inside(lo, hi, want):
    got = log_ticks(lo, hi)
    assert got == pytest.approx(want)
    assert len(got) >= 3 and all(lo <= t <= hi for t in got)


def test_every_log_axis_of_a_drawn_figure_gets_them():
    import matplotlib.pyplot as plt

    from plastcli.figures.style import readable_log_axes

    fig, ax = plt.subplots()
    ax.plot([0, 1], [11, 42])
    ax.set_yscale("log")
    ax.set_ylim(11, 42)
    readable_log_axes(fig)
    fig.canvas.draw()
    labels = [t.get_text() for t in ax.get_yticklabels() if t.get_text()]
    assert labels == ["20", "30", "40"]
    plt.close(fig)


def test_many_decades_get_at_most_six_labels_and_powers_beyond_ten_thousand_read_as_such():
    from plastcli.figures.style import log_label

    got = log_ticks(1.0, 1e9)
    assert got == pytest.approx([1, 100, 1e4, 1e6, 1e8])
    assert [log_label(v) for v in (0.01, 20, 1000, 1e6, 1e-5)] == \
        ["0.01", "20", "1000", "$10^{6}$", "$10^{-5}$"]
