"""The plasticity-term pool (SPEC §3.1), rules, per-layer masks and feedback rules.

A rule is ``Delta M = sum_r c_r F_r`` with coefficients ``[P, R]`` shared by all
layers and a per-member, per-layer mask ``[P, L, R]`` (P1 Table 1). All ten
terms are outer products with one of three left vectors (e_l, y_l or ones), so
:func:`apply_rule` folds the active terms into at most three outer products and
one batched matmul; no ``n x n`` (or larger) intermediate is ever built.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from plastcli.recipes import TERM_NAMES

R = len(TERM_NAMES)
IDX = {name: i for i, name in enumerate(TERM_NAMES)}
(PSEUDO, POST_PRE_ERR, ERR_HEBB, DECAY, ONES_PRE_ERR, SUM_POST, QUAD1, QUAD2, QUAD3,
 OJA) = range(R)
# Terms that read the pre-synaptic error e_{l-1} (so layer 1 needs the synthetic e_0).
USES_PRE_ERROR = frozenset({POST_PRE_ERR, ERR_HEBB, ONES_PRE_ERR, QUAD1, QUAD2, QUAD3})


def term_indices(names: list[str]) -> list[int]:
    return [IDX[n] for n in names]


def selection_matrix(names: list[str], device=None) -> torch.Tensor:
    """``[len(names), R]`` 0/1 matrix mapping a rule's coefficients into the full pool."""
    S = torch.zeros(len(names), R, device=device)
    for i, n in enumerate(names):
        S[i, IDX[n]] = 1.0
    return S


def layer_mask(names: list[str], per_layer: list[list[str]] | None, n_layers: int) -> torch.Tensor:
    """``[L, R]`` 0/1 mask: which pool terms act on which layer."""
    mask = torch.zeros(n_layers, R)
    for l in range(n_layers):
        for n in per_layer[l] if per_layer is not None else names:
            mask[l, IDX[n]] = 1.0
    return mask


@dataclass
class LayerCoefficients:
    """Per-layer, per-term coefficients for one inner loop, precomputed once.

    coef ``[P, L, R]`` = theta_full ``[P, R]`` * mask ``[P, L, R]``; ``active[l]`` is the
    tuple of terms switched on for layer l+1 in any member (a static, Python-level fact
    that decides which pieces are computed); ``views[l][r]`` is ``[P, 1, 1]``.
    """

    active: list[tuple[int, ...]]
    views: list[dict[int, torch.Tensor]]

    @classmethod
    def build(cls, theta_full: torch.Tensor, mask: torch.Tensor) -> LayerCoefficients:
        P = theta_full.shape[0]
        coef = theta_full.unsqueeze(1) * mask  # [P, L, R]
        any_on = (mask != 0).any(dim=0)  # [L, R]
        active, views = [], []
        for l in range(mask.shape[1]):
            on = tuple(int(r) for r in torch.nonzero(any_on[l]).flatten().tolist())
            active.append(on)
            views.append({r: coef[:, l, r].view(P, 1, 1) for r in on})
        return cls(active, views)

    def needs_pre_error(self, l: int) -> bool:
        """Does layer l (1-based) read e_{l-1}?"""
        return any(r in USES_PRE_ERROR for r in self.active[l - 1])


def _times(M: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(M v_b) for each batch row: M ``[P, n, m]``, v ``[P, B, m]`` -> ``[P, B, n]``."""
    return torch.matmul(M, v.transpose(1, 2)).transpose(1, 2)


def apply_rule(M: torch.Tensor, c: dict[int, torch.Tensor], active: tuple[int, ...],
               e_post: torch.Tensor, e_pre: torch.Tensor | None, y_post: torch.Tensor,
               y_pre: torch.Tensor, z_post: torch.Tensor | None = None) -> torch.Tensor:
    """Return ``M + sum_r c_r F_r`` for one layer (SPEC §3.1 table), batched over P.

    M ``[P, n_l, n_{l-1}]`` (W_l, or B_l for a feedback rule); e_post, y_post
    ``[P, B, n_l]``; e_pre, y_pre ``[P, B, n_{l-1}]``; c[r] ``[P, 1, 1]``. With B > 1 the
    per-sample updates are summed. ``z_post`` = M y_pre if known (saves a matmul for
    quad_3). Grouping: F = e_l a^T + y_l b^T + 1 c^T - c_4 M.
    """
    on = set(active)
    s7 = None
    if on & {QUAD1, QUAD2}:  # s7 = y_l^T M e_{l-1}, per sample [P, B, 1]
        s7 = (y_post * _times(M, e_pre)).sum(-1, keepdim=True)
    lefts, rights = [], []

    # left e_l: pseudo_grad, sum_post_grad, quad_2 (times y_{l-1}); err_hebb (times e_{l-1})
    k = None
    if PSEUDO in on:
        k = c[PSEUDO]
    if SUM_POST in on:
        t = c[SUM_POST] * y_post.sum(-1, keepdim=True)
        k = t if k is None else k + t
    if QUAD2 in on:
        t = c[QUAD2] * s7
        k = t if k is None else k + t
    a = None if k is None else -(k * y_pre)
    if ERR_HEBB in on:
        t = c[ERR_HEBB] * e_pre
        a = -t if a is None else a - t
    if a is not None:
        lefts.append(e_post)
        rights.append(a)

    # left y_l: post_act_pre_err, quad_1, quad_3 (times e_{l-1}); oja (times y_{l-1} - M^T y_l)
    k = None
    if POST_PRE_ERR in on:
        k = c[POST_PRE_ERR]
    if QUAD1 in on:
        t = c[QUAD1] * s7
        k = t if k is None else k + t
    if QUAD3 in on:  # s9 = y_{l-1}^T M^T e_l = e_l . (M y_{l-1})
        mz = z_post if z_post is not None else _times(M, y_pre)
        t = c[QUAD3] * (e_post * mz).sum(-1, keepdim=True)
        k = t if k is None else k + t
    b = None if k is None else -(k * e_pre)
    if OJA in on:  # Oja's (y y^T) M computed as y (y^T M): never an n x n matrix
        t = c[OJA] * (y_pre - torch.matmul(y_post, M))
        b = t if b is None else b + t
    if b is not None:
        lefts.append(y_post)
        rights.append(b)

    # left ones: ones_pre_err
    if ONES_PRE_ERR in on:
        lefts.append(torch.ones_like(y_post))
        rights.append(-(c[ONES_PRE_ERR] * e_pre))

    out = M * (1.0 - c[DECAY]) if DECAY in on else M
    if not lefts:
        return out
    left = lefts[0] if len(lefts) == 1 else torch.cat(lefts, dim=1)
    right = rights[0] if len(rights) == 1 else torch.cat(rights, dim=1)
    return torch.baddbmm(out, left.transpose(1, 2), right)
