"""Shared plotting style and helpers: one look for every figure."""

from __future__ import annotations

import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from plastcli.results.statistics import bootstrap_ci, moving_average

COLORS = {
    "BP": "#1f77b4", "BP+Oja": "#d62728", "FA": "#2ca02c", "FA+Oja": "#ff7f0e",
    "DFA": "#9467bd", "pseudo": "#2ca02c", "eHebb": "#9467bd", "Oja": "#ff7f0e",
    "bio": "#d62728", "pool": "#8c564b", "plastic": "#e377c2",
}
SMOOTH = 11  # episodes (SPEC §4)

plt.rcParams.update({
    # a figure function may return many figures (one per store); draw_paper closes each
    # once saved, so matplotlib's "more than 20 figures open" warning says nothing here
    "figure.max_open_warning": 0,
    "figure.dpi": 110, "axes.spines.top": False, "axes.spines.right": False,
    "axes.grid": True, "grid.alpha": 0.25, "legend.frameon": False, "font.size": 10,
})


def task_classes(st) -> int:
    """M of the store's M-way episodes (its recipe's task.classes; 5, P1's, if it has none)."""
    import yaml

    return int((yaml.safe_load(str(st.attrs.get("recipe_yaml", ""))) or {})
               .get("task", {}).get("classes", 5))


def diverged_at(st) -> np.ndarray:
    """The episode each member of a meta-training store diverged at ``[P]`` (-1: never, or
    not recorded)."""
    P = st["episodes/meta_accuracy"].shape[0]
    return np.asarray(st.arrays.get("members/diverged_at", np.full(P, -1)))


def until_diverged(st, a) -> np.ndarray:
    """``a [P, E, ...]`` (a copy, float64) with NaN from each member's divergence on: a
    diverged member's θ is frozen there, and a frozen value drawn on would look like a
    result."""
    a = np.array(a, dtype=np.float64)
    for i, e in enumerate(diverged_at(st)):
        if e >= 0:
            a[i, e:] = np.nan
    return a


def meta_accuracy_label(*stores) -> str:
    """The y label of a meta-accuracy axis, naming the stores' M-way task(s)."""
    ways = "/".join(str(m) for m in sorted({task_classes(st) for st in stores}))
    return f"meta-accuracy (query, {ways}-way)"


LEGEND_GAP_PT = 34  # below the axes: room for the tick labels and the x label (10 pt each)


def legend_below(ax, ncol: int = 2, fontsize: float = 8, gap_pt: float = LEGEND_GAP_PT) -> None:
    """The panel's legend under its x label, where it covers no curve or band (constrained
    layout makes room for it). The gap is in points, so it holds whatever the panel's
    height (a fraction of the axes ran into the x label of a short panel)."""
    ax.legend(fontsize=fontsize, ncol=ncol, loc="upper center", bbox_to_anchor=(0.5, 0.0),
              borderaxespad=gap_pt / fontsize)


def subplots(n: int = 1, ncols: int | None = None, size=(4.2, 3.2), **kw):
    """A row (or grid) of n axes sized for reading at a glance; returns (fig, flat axes)."""
    ncols = ncols or n
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows),
                             squeeze=False, **kw)
    flat = axes.ravel()
    for ax in flat[n:]:
        ax.set_visible(False)
    fig.set_layout_engine("constrained")
    return fig, flat[:n]


def color(label: str, i: int = 0) -> str:
    return COLORS.get(label, f"C{i % 10}")


def layer_color(l: int, n: int):
    """The colour of layer l of n in per-layer curves (alignment angles α_l): shades of grey,
    light (input side) to black, so that they read as depth and are never taken for a
    method's or a rule's colour (:data:`COLORS`), which the panels beside them use (an orange
    map clashed with Oja's orange in P1 Fig 8)."""
    return plt.get_cmap("Greys")(0.4 + 0.6 * l / max(n - 1, 1))


def mean_sd_band(ax, x, runs: np.ndarray, label: str, c, smooth: int = 0,
                 lw: float = 1.6, alpha: float = 0.2, zorder: float = 2):
    """Mean across runs ``[runs, T]`` with a ±1 sd band (optionally moving-averaged); a
    thinner line, a fainter band and a lower zorder draw a series beneath the main ones.
    ``c``: any matplotlib colour (a name, or an RGBA tuple from :func:`layer_color`)."""
    y = moving_average(runs, smooth) if smooth else np.asarray(runs, float)
    with warnings.catch_warnings():  # columns where every run diverged are NaN: a gap
        warnings.simplefilter("ignore", RuntimeWarning)
        m, sd = np.nanmean(y, 0), np.nanstd(y, 0)
    ax.plot(x, m, color=c, label=label, lw=lw, zorder=zorder)
    ax.fill_between(x, m - sd, m + sd, color=c, alpha=alpha, lw=0, zorder=zorder - 0.5)


def ci_band(ax, x, runs: np.ndarray, label: str, c: str, level: float = 0.98):
    """Mean across runs ``[runs, T]`` with a bootstrap confidence band (500 resamples)."""
    m, lo, hi = bootstrap_ci(runs, level=level)
    ax.plot(x, m, color=c, label=label, lw=1.6)
    ax.fill_between(x, lo, hi, color=c, alpha=0.2, lw=0)


LOG_SUBS = ((1,), (1, 3), (1, 2, 5), (1, 2, 3, 5), tuple(range(1, 10)))  # coarse to fine
MAX_LOG_TICKS = 6


def log_label(v: float) -> str:
    """A log tick's label: a plain number (0.01, 20, 1000), or 10ⁿ beyond 10⁴ and 10⁻³."""
    e = round(float(np.log10(v)))
    if (e > 4 or e < -3) and np.isclose(v, 10.0 ** e):
        return f"$10^{{{e}}}$"
    return f"{v:g}"


def log_ticks(lo: float, hi: float, least: int = 3) -> list[float]:
    """Tick values for a log axis over [lo, hi]: under a decade, evenly spaced round numbers
    (as a linear axis has them: 60, 80, 100, 120); beyond, the coarsest of :data:`LOG_SUBS`
    (times powers of ten) that gives ``least`` ticks inside, at most :data:`MAX_LOG_TICKS`
    powers of ten."""
    from matplotlib.ticker import MaxNLocator

    if hi / lo < 10:
        return [float(v) for v in MaxNLocator(5, steps=[1, 2, 2.5, 5, 10]).tick_values(lo, hi)
                if lo <= v <= hi]
    e0, e1 = int(np.floor(np.log10(lo))), int(np.ceil(np.log10(hi)))
    for subs in LOG_SUBS:
        ticks = [float(f"{m}e{e}") for e in range(e0, e1 + 1) for m in subs
                 if lo <= float(f"{m}e{e}") <= hi]
        if len(ticks) >= least:
            step = -(-len(ticks) // MAX_LOG_TICKS)  # many decades: every 2nd, 3rd, ... power
            return ticks[::step] if subs == (1,) else ticks
    return ticks


def readable_log_ticks(axis) -> None:
    """Labels on a log axis that can be read whatever its span: at least three plain
    numbers (1, 10, 100; or 20, 30, 50; ...), none in between. Every figure's log axes get
    them when drawn (:func:`plastcli.figures.draw_paper`); call it after the data."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    lo, hi = sorted(axis.get_view_interval())
    if not (lo > 0 and np.isfinite(hi)):
        return
    axis.set_major_locator(FixedLocator(log_ticks(lo, hi)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: log_label(v)))
    axis.set_minor_formatter(NullFormatter())


def readable_log_axes(fig) -> None:
    """:func:`readable_log_ticks` on every log axis of ``fig``."""
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            if axis.get_scale() == "log":
                readable_log_ticks(axis)
