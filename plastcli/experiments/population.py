"""The population table of an online run (``baseline``, ``init-study``, ``rnn-memory``): one
labelled row per member, condition-major, then grid point, then seed. It drives the layout
(which member trains what), the grouping (contiguous members that share a network kind), the
grid-stage scoring (:mod:`plastcli.experiments.selection` relies on this order) and the
``/members`` arrays of the store. No torch here."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass

import numpy as np


@dataclass
class Population:
    """``condition`` ``[P]`` (index into the conditions), ``point`` ``[P]`` (index into its
    condition's grid points), ``seeds`` (``P`` ints) and ``coefficients`` ``[P, K]`` float32
    (each member's grid point: a full-pool θ vector for ``baseline``, (θ₁, θ₂) for
    ``rnn-memory``)."""

    condition: np.ndarray
    point: np.ndarray
    seeds: list[int]
    coefficients: np.ndarray

    def __len__(self) -> int:
        return len(self.seeds)

    def groups(self, key: Callable[[int], Hashable]) -> list[tuple[slice, Hashable]]:
        """Contiguous runs of members whose conditions share ``key(condition index)``:
        ``(slice, key)`` each, in member order."""
        out, start = [], 0
        for i in range(1, len(self) + 1):
            if i == len(self) or key(self.condition[i]) != key(self.condition[start]):
                out.append((slice(start, i), key(self.condition[start])))
                start = i
        return out

    def columns(self, names: list[str]) -> dict[str, np.ndarray]:
        """The labelled columns for ``/members`` (and the grid stage's ``member_*``):
        condition, its name, grid point, seed."""
        from plastcli.results.store import text_array

        return {"condition": self.condition, "grid_point": self.point,
                "seed": np.array(self.seeds),
                "condition_name": text_array(names[c] for c in self.condition)}


def layout(points: list[list], chosen: list[list[int]] | None, seeds: list[int]) -> Population:
    """Members condition-major, then grid point (``points[c][k]`` for k in ``chosen[c]``; every
    point when ``chosen`` is None), then seed. A point is a coefficient vector or tuple."""
    chosen = chosen if chosen is not None else [list(range(len(p))) for p in points]
    rows = [(c, k, s) for c in range(len(points)) for k in chosen[c] for s in seeds]
    cond, point, member_seeds = (list(v) for v in zip(*rows, strict=True))
    coefficients = np.stack([np.asarray(points[c][k], dtype=np.float32).reshape(-1)
                             for c, k in zip(cond, point, strict=True)])
    return Population(np.array(cond), np.array(point), member_seeds, coefficients)
