"""Collapse detection: a member that had learned and then fell back above chance.

A diverged member is caught by NaN; a collapsed one is not: its meta-loss stays
finite but its query loss sits above chance (``ln M`` for an M-way task) for good.
The rule, one place for the trainer, ``plast show`` and the figures:

    a member has *learned* once its query CE has been below ``ln M`` for ``window``
    episodes in a row (a rule that hovers at chance, like F_pseudo, never has);
    it *collapses* at episode e if it had learned before e and its query CE is
    above ``ln M`` at e and at each of the following ``window - 1`` episodes;
    it also collapses at episode e (a *decline*) if it had learned before e and the mean
    meta-accuracy of episodes e - decline_window + 1 .. e is more than ``decline_drop``
    below the best such mean it reached before (a slide that stays below chance loss,
    like F_bio's seed 0 on an Intel host: 0.69 to 0.465 at query CE 1.4 < ln 5).

NaN episodes (a diverged member) break a run above or below chance and a decline window.
Only the first collapse is recorded; the member keeps training (it may recover; the curves
show it). ``reason`` says which rule fired.
Torch-free: figures and ``plast show`` use it on stored arrays.
"""

from __future__ import annotations

import math

import numpy as np

WINDOW = 25  # episodes above chance that count as a collapse
# [choice] a decline: the 50-episode mean accuracy 0.2 below its best. In every committed
# 10-seed store the largest such drop of a healthy seed is 0.16 (noise: 50 query images an
# episode); the Intel seed's was about 0.23.
DECLINE_WINDOW, DECLINE_DROP = 50, 0.2
LOSS, DECLINE = 1, 2  # values of ``reason`` (0: not collapsed)


def chance_loss(classes: int) -> float:
    """Cross-entropy of a uniform guess over the task's M classes: ln M."""
    return math.log(classes)


class CollapseDetector:
    """Incremental form over episodes for P members (state checkpointed with the run)."""

    def __init__(self, n_members: int, chance: float, window: int = WINDOW,
                 decline_window: int = DECLINE_WINDOW, decline_drop: float | None = DECLINE_DROP):
        self.chance, self.window = float(chance), int(window)
        self.decline_window, self.decline_drop = int(decline_window), decline_drop
        self.learned = np.zeros(n_members, dtype=bool)
        self.below = np.zeros(n_members, dtype=np.int64)  # length of the run below chance
        self.run_start = np.full(n_members, -1, dtype=np.int64)  # start of the run above
        self.collapsed_at = np.full(n_members, -1, dtype=np.int64)
        self.reason = np.zeros(n_members, dtype=np.int64)
        self.recent = np.full((n_members, self.decline_window), np.nan)  # last accuracies
        self.best_mean = np.full(n_members, -np.inf)  # best full-window mean accuracy

    def update(self, episode: int, query_ce: np.ndarray,
               accuracy: np.ndarray | None = None) -> np.ndarray:
        """Feed one episode's query CE ``[P]`` (and meta-accuracy ``[P]`` for the decline
        rule); return the members newly flagged."""
        learned_before = self.learned.copy()
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
        self.reason[new] = LOSS
        if accuracy is not None and self.decline_drop is not None:
            declined = self._declined(np.asarray(accuracy, dtype=np.float64)) & learned_before
            fresh = declined & (self.collapsed_at < 0)
            self.collapsed_at[fresh] = episode
            self.reason[fresh] = DECLINE
            new = new | fresh
        return np.nonzero(new)[0]

    def _declined(self, accuracy: np.ndarray) -> np.ndarray:
        """Push this episode's accuracy ``[P]``; ``[P]`` bool: window mean below best - drop."""
        self.recent = np.concatenate([self.recent[:, 1:], accuracy[:, None]], axis=1)
        full = np.isfinite(self.recent).all(axis=1)
        mean = np.where(full, np.where(full[:, None], self.recent, 0.0).mean(axis=1), np.nan)
        declined = full & (mean < self.best_mean - self.decline_drop)
        self.best_mean = np.where(full, np.maximum(self.best_mean, mean), self.best_mean)
        return declined

    def state_dict(self) -> dict[str, np.ndarray]:
        return {"collapse_learned": self.learned.copy(), "collapse_below": self.below.copy(),
                "collapse_run_start": self.run_start.copy(),
                "collapsed_at": self.collapsed_at.copy(), "collapse_reason": self.reason.copy(),
                "decline_recent": self.recent.copy(), "decline_best": self.best_mean.copy()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        if "collapsed_at" in state:  # checkpoints written before collapse detection lack it
            self.learned = np.asarray(state["collapse_learned"], dtype=bool).copy()
            self.below = np.asarray(state["collapse_below"], dtype=np.int64).copy()
            self.run_start = np.asarray(state["collapse_run_start"], dtype=np.int64).copy()
            self.collapsed_at = np.asarray(state["collapsed_at"], dtype=np.int64).copy()
        if "decline_recent" in state:  # checkpoints written before the decline rule lack it
            self.reason = np.asarray(state["collapse_reason"], dtype=np.int64).copy()
            self.recent = np.asarray(state["decline_recent"], dtype=np.float64).copy()
            self.best_mean = np.asarray(state["decline_best"], dtype=np.float64).copy()


def replay(query_ce: np.ndarray, chance: float, window: int = WINDOW,
           accuracy: np.ndarray | None = None, decline_window: int = DECLINE_WINDOW,
           decline_drop: float | None = DECLINE_DROP) -> CollapseDetector:
    """The detector after feeding stored query CE ``[P, E]`` (and meta-accuracy ``[P, E]``)."""
    ce = np.asarray(query_ce)
    det = CollapseDetector(ce.shape[0], chance, window, decline_window, decline_drop)
    for e in range(ce.shape[1]):
        det.update(e, ce[:, e], None if accuracy is None else np.asarray(accuracy)[:, e])
    return det


def collapsed_at(query_ce: np.ndarray, chance: float, window: int = WINDOW,
                 accuracy: np.ndarray | None = None, decline_window: int = DECLINE_WINDOW,
                 decline_drop: float | None = DECLINE_DROP) -> np.ndarray:
    """``[P]`` first collapse episode (-1: none) of stored query CE ``[P, E]``; the decline
    rule applies where meta-accuracy ``[P, E]`` is given."""
    return replay(query_ce, chance, window, accuracy, decline_window,
                  decline_drop).collapsed_at
