"""Collapse detection: a member that had learned and then fell back above chance.

A diverged member is caught by NaN; a collapsed one is not: its meta-loss stays
finite but its query loss sits above chance (``ln M`` for an M-way task) for good.
The rule, one place for the trainer, ``plast show`` and the figures:

    a member has *learned* once its query CE has been below ``ln M`` for ``window``
    episodes in a row (a rule that hovers at chance, like F_pseudo, never has);
    it *collapses* at episode e if it had learned before e and its query CE is
    above ``ln M`` at e and at each of the following ``window - 1`` episodes.

NaN episodes (a diverged member) break a run above or below chance. Only the first collapse
is recorded; the member keeps training (it may recover; the curves show it).
Torch-free: figures and ``plast show`` use it on stored arrays.
"""

from __future__ import annotations

import math

import numpy as np

WINDOW = 25  # episodes above chance that count as a collapse


def chance_loss(classes: int) -> float:
    """Cross-entropy of a uniform guess over the task's M classes: ln M."""
    return math.log(classes)


class CollapseDetector:
    """Incremental form over episodes for P members (state checkpointed with the run)."""

    def __init__(self, n_members: int, chance: float, window: int = WINDOW):
        self.chance, self.window = float(chance), int(window)
        self.learned = np.zeros(n_members, dtype=bool)
        self.below = np.zeros(n_members, dtype=np.int64)  # length of the run below chance
        self.run_start = np.full(n_members, -1, dtype=np.int64)  # start of the run above
        self.collapsed_at = np.full(n_members, -1, dtype=np.int64)

    def update(self, episode: int, query_ce: np.ndarray) -> np.ndarray:
        """Feed one episode's query CE ``[P]``; return the members newly flagged."""
        ce = np.asarray(query_ce, dtype=np.float64)
        above = np.isfinite(ce) & (ce > self.chance)
        # a run above chance only counts once the member has learned (before this episode)
        counting = above & self.learned
        self.run_start = np.where(counting, np.where(self.run_start < 0, episode,
                                                     self.run_start), -1)
        self.below = np.where(np.isfinite(ce) & (ce < self.chance), self.below + 1, 0)
        self.learned |= self.below >= self.window
        done = (self.run_start >= 0) & (episode - self.run_start + 1 >= self.window)
        new = done & (self.collapsed_at < 0)
        self.collapsed_at[new] = self.run_start[new]
        return np.nonzero(new)[0]

    def state_dict(self) -> dict[str, np.ndarray]:
        return {"collapse_learned": self.learned.copy(), "collapse_below": self.below.copy(),
                "collapse_run_start": self.run_start.copy(),
                "collapsed_at": self.collapsed_at.copy()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        if "collapsed_at" in state:  # checkpoints written before collapse detection lack it
            self.learned = np.asarray(state["collapse_learned"], dtype=bool).copy()
            self.below = np.asarray(state["collapse_below"], dtype=np.int64).copy()
            self.run_start = np.asarray(state["collapse_run_start"], dtype=np.int64).copy()
            self.collapsed_at = np.asarray(state["collapsed_at"], dtype=np.int64).copy()


def collapsed_at(query_ce: np.ndarray, chance: float, window: int = WINDOW) -> np.ndarray:
    """``[P]`` first collapse episode (-1: none) of stored query CE ``[P, E]``."""
    ce = np.asarray(query_ce)
    det = CollapseDetector(ce.shape[0], chance, window)
    for e in range(ce.shape[1]):
        det.update(e, ce[:, e])
    return det.collapsed_at
