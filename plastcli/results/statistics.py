"""Statistics of stored results: the one "final value" rule, windows, smoothing, bootstrap.

Pure numpy (no torch): the CLI tables, ``plast show``, the figures and the reports all
take their numbers from here, so they cannot disagree.

The NaN rule. A member's metrics are NaN from the episode it diverged on (the engine
writes NaN for every later episode), and a metric can be NaN or inf at a single
episode (an overflow, a zero vector's angle). An *episode counts* for a member when
every entry of that member's record at it is finite (all layers of ``angles``, say); a
mean over a window is the mean over the episodes of the window that count. So
"final" = the last ``TAIL`` episodes that count: for a member that diverged, the
``TAIL`` episodes before it did; a member with no finite episode gives NaN.
"""

from __future__ import annotations

import numpy as np

TAIL = 50  # "final" = mean over a member's last 50 finite episodes


def finite_episodes(a: np.ndarray) -> np.ndarray:
    """``[P, E]`` bool: episode e counts for member p (all of ``a[p, e, ...]`` finite).

    a ``[P, E, ...]``.
    """
    a = np.asarray(a)
    P, E = a.shape[:2]
    if a.size == 0:
        return np.zeros((P, E), dtype=bool)
    return np.isfinite(a.reshape(P, E, -1)).all(2)


def final_window(a: np.ndarray, tail: int = TAIL, upto: int | None = None) -> np.ndarray:
    """The final value of every member: mean over its last ``tail`` finite episodes.

    a ``[P, E, ...]`` (members, episodes, any trailing shape) -> ``[P, ...]`` float64.
    ``upto``: use only the first ``upto`` episodes (to compare runs of different length
    at one episode budget). An episode counts when all its trailing entries are finite
    (module docstring); a member that diverged gives the mean of the ``tail`` episodes
    before it did, a member with no finite episode NaN. Fewer than ``tail`` finite
    episodes: the mean of those there are.
    """
    a = np.asarray(a, dtype=np.float64)[:, :upto]
    out = np.full((a.shape[0], *a.shape[2:]), np.nan)
    ok = finite_episodes(a)
    for p in range(a.shape[0]):
        rows = a[p][ok[p]][-tail:]  # [<= tail, ...]
        if len(rows):
            out[p] = rows.mean(0)
    return out


def window_mean(a: np.ndarray, start: int, stop: int | None = None) -> np.ndarray:
    """Per member mean over the finite episodes ``start..stop-1`` (a fixed window, e.g.
    after a burn-in; not the final value, which is :func:`final_window`).

    a ``[P, E, ...]`` -> ``[P, ...]`` float64; the same NaN rule as :func:`final_window`
    (an episode counts when all its entries are finite; none in the window: NaN).
    """
    a = np.asarray(a, dtype=np.float64)[:, start:stop]
    out = np.full((a.shape[0], *a.shape[2:]), np.nan)
    ok = finite_episodes(a)
    for p in range(a.shape[0]):
        if ok[p].any():
            out[p] = a[p][ok[p]].mean(0)
    return out


def finite_mean(x: np.ndarray, axis: int | None = None):
    """Mean of the finite entries of x along ``axis`` (all of x: a float); NaN where there
    are none, without a warning. Used for a population's running mean of one episode."""
    x = np.asarray(x, dtype=np.float64)
    ok = np.isfinite(x)
    n = ok.sum(axis=axis)
    total = np.where(ok, x, 0.0).sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(n > 0, total / np.maximum(n, 1), np.nan)
    return float(out) if axis is None else out


def moving_average(x: np.ndarray, window: int = 11) -> np.ndarray:
    """Centred moving average along the last axis, shrinking at the edges (NaN-aware).

    x ``[..., T]`` -> ``[..., T]`` float64 (NaN where a window has no finite value).
    """
    x = np.asarray(x, dtype=np.float64)
    half = window // 2
    out = np.full_like(x, np.nan)
    n = x.shape[-1]
    for i in range(n):
        lo, hi = max(0, i - half), min(n, i + half + 1)
        seg = x[..., lo:hi]
        with np.errstate(invalid="ignore"):
            cnt = np.sum(~np.isnan(seg), axis=-1)
            out[..., i] = np.where(cnt > 0, np.nansum(seg, axis=-1) / np.maximum(cnt, 1), np.nan)
    return out


def bootstrap_ci(values: np.ndarray, level: float = 0.98, resamples: int = 500,
                 seed: int = 0, stat=np.mean) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A statistic over runs (the mean; ``stat=np.median`` for the median) and its
    percentile bootstrap confidence interval.

    values ``[runs, ...]``: resample runs with replacement ``resamples`` times (seeded),
    take the statistic of each resample, and return (stat, lower, upper), each ``[...]``,
    the bounds at the (1-level)/2 and (1+level)/2 percentiles.
    """
    values = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, values.shape[0], size=(resamples, values.shape[0]))
    stats = stat(values[idx], axis=1)  # [resamples, ...]
    alpha = (1.0 - level) / 2.0
    lower, upper = np.percentile(stats, [100 * alpha, 100 * (1 - alpha)], axis=0)
    return stat(values, axis=0), lower, upper
