"""The grid stage's one selection rule, shared by baseline, init-study and rnn-memory.

Members are laid out condition by condition, grid point by grid point, ``S`` selection
seeds each. A point scores the mean held-out accuracy of its seeds, a non-finite accuracy
(a diverged run) counting as 0; a condition takes its best point, the first (smallest
coefficients) on ties.
"""

from __future__ import annotations

import numpy as np


def selection_seeds(selection) -> list[int]:
    """The seeds of the grid stage (``selection.seed + 0 .. selection.seeds - 1``), apart
    from the final runs' seeds so that the choice is not fitted to them."""
    return [selection.seed + i for i in range(selection.seeds)]


def score_points(acc: np.ndarray, n_points: list[int], S: int
                 ) -> tuple[np.ndarray, list[list[float]], list[int]]:
    """Held-out accuracy per member ``acc [sum(n_points) * S]`` -> (the accuracy with
    non-finite values as 0, per condition the mean accuracy of each point, per condition
    the index of its best point)."""
    acc = np.where(np.isfinite(acc), acc, 0.0)
    assert acc.shape == (sum(n_points) * S,), (acc.shape, n_points, S)
    means, best, k = [], [], 0
    for n in n_points:
        m = [float(acc[k + i * S : k + (i + 1) * S].mean()) for i in range(n)]
        means.append(m)
        best.append(int(np.argmax(m)))  # ties: the first (smallest) values
        k += n * S
    return acc, means, best
