"""Rules over the term pool (:mod:`plastcli.core.terms`): coefficients, per-layer masks and the
forward update.

A rule is ``Delta M = sum_r c_r F_r`` with coefficients ``[P, R]`` shared by all
layers and a per-member, per-layer mask ``[P, L, R]`` (P1 Table 1); R is the size of the
run's :class:`~plastcli.core.terms.Pool` (the ten built-in terms, then any a recipe declares).
Every term is ``sign · s · a bᵀ`` with one of three left vectors (e_l, y_l or ones), so
:func:`apply_rule` folds the active terms into at most three outer products and one
batched matmul; no ``n x n`` (or larger) intermediate is ever built.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from plastcli.core import terms
from plastcli.core.terms import BUILTIN_POOL, Pool

R = len(terms.BUILTIN)
IDX = BUILTIN_POOL.index
PSEUDO = IDX["pseudo_grad"]


def term_indices(names: list[str], pool: Pool = BUILTIN_POOL) -> list[int]:
    idx = pool.index
    return [idx[n] for n in names]


def selection_matrix(names: list[str], device=None, pool: Pool = BUILTIN_POOL) -> torch.Tensor:
    """``[len(names), R]`` 0/1 matrix mapping a rule's coefficients into the full pool."""
    S = torch.zeros(len(names), len(pool), device=device)
    for i, j in enumerate(term_indices(names, pool)):
        S[i, j] = 1.0
    return S


def layer_mask(names: list[str], per_layer: list[list[str]] | None, n_layers: int,
               pool: Pool = BUILTIN_POOL) -> torch.Tensor:
    """``[L, R]`` 0/1 mask: which pool terms act on which layer."""
    mask = torch.zeros(n_layers, len(pool))
    for l in range(n_layers):
        for j in term_indices(per_layer[l] if per_layer is not None else names, pool):
            mask[l, j] = 1.0
    return mask


@dataclass
class LayerCoefficients:
    """Per-layer, per-term coefficients for one inner loop, precomputed once.

    coef ``[P, L, R]`` = theta_full ``[P, R]`` * mask ``[P, L, R]``; ``active[l]`` is the
    tuple of terms switched on for layer l+1 in any member (a static, Python-level fact
    that decides which pieces are computed); ``views[l][r]`` is ``[P, 1, 1]``; ``pool``
    says what each term index is.
    """

    active: list[tuple[int, ...]]
    views: list[dict[int, torch.Tensor]]
    pool: Pool = field(default=BUILTIN_POOL)

    @classmethod
    def build(cls, theta_full: torch.Tensor, mask: torch.Tensor,
              pool: Pool = BUILTIN_POOL) -> LayerCoefficients:
        P = theta_full.shape[0]
        coef = theta_full.unsqueeze(1) * mask  # [P, L, R]
        any_on = (mask != 0).any(dim=0)  # [L, R]
        active, views = [], []
        for l in range(mask.shape[1]):
            on = tuple(int(r) for r in torch.nonzero(any_on[l]).flatten().tolist())
            active.append(on)
            views.append({r: coef[:, l, r].view(P, 1, 1) for r in on})
        return cls(active, views, pool)

    def needs_pre_error(self, l: int) -> bool:
        """Does layer l (1-based) read e_{l-1}?"""
        return terms.plan(self.pool, self.active[l - 1]).reads_pre_error


def _times(M: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(M v_b) for each batch row: M ``[P, n, m]``, v ``[P, B, m]`` -> ``[P, B, n]``."""
    return torch.matmul(M, v.transpose(1, 2)).transpose(1, 2)


def apply_rule(M: torch.Tensor, c: dict[int, torch.Tensor], active: tuple[int, ...],
               e_post: torch.Tensor, e_pre: torch.Tensor | None, y_post: torch.Tensor,
               y_pre: torch.Tensor, z_post: torch.Tensor | None = None,
               pool: Pool = BUILTIN_POOL) -> torch.Tensor:
    """Return ``M + sum_r c_r F_r`` for one layer, batched over P, from the declarations.

    M ``[P, n_l, n_{l-1}]`` (W_l, or B_l for a feedback rule); e_post, y_post
    ``[P, B, n_l]``; e_pre, y_pre ``[P, B, n_{l-1}]``; c[r] ``[P, 1, 1]``. With B > 1 the
    per-sample updates are summed. ``z_post`` = M y_pre if known (saves a matmul for
    e_postᵀ M y_pre). Grouping (:func:`plastcli.core.terms.plan`): per left factor a, the right
    factor sum_groups sign (sum_r c_r s_r) b; then F = sum_a a (right_a)^T - c_decay M.
    Oja's (y yᵀ) M is computed as y (yᵀ M): never an n x n matrix.
    """
    plan = terms.plan(pool, active)
    scalars: dict[str, torch.Tensor] = {}

    def scalar(s):  # per sample [P, B, 1]
        if s not in scalars:
            if s == terms.S_SUM:
                scalars[s] = y_post.sum(-1, keepdim=True)
            elif s == terms.S_YME:
                scalars[s] = (y_post * _times(M, e_pre)).sum(-1, keepdim=True)
            else:  # e_post^T M y_pre = e_post . (M y_pre)
                mz = z_post if z_post is not None else _times(M, y_pre)
                scalars[s] = (e_post * mz).sum(-1, keepdim=True)
        return scalars[s]

    rights_b: dict[str, torch.Tensor] = {}

    def right(b):
        if b not in rights_b:
            rights_b[b] = {terms.Y_PRE: lambda: y_pre, terms.E_PRE: lambda: e_pre,
                           terms.ONES: lambda: torch.ones_like(y_pre),
                           terms.OJA_PRE: lambda: y_pre - torch.matmul(y_post, M)}[b]()
        return rights_b[b]

    left_of = {terms.E_POST: lambda: e_post, terms.Y_POST: lambda: y_post,
               terms.ONES: lambda: torch.ones_like(y_post)}
    lefts, rights = [], []
    for a, groups in plan.lefts:
        acc = None
        for g in groups:
            k = None
            for r, s in g.members:
                t = c[r] if s == terms.S_ONE else c[r] * scalar(s)
                k = t if k is None else k + t
            x = k * right(g.b)
            if acc is None:
                acc = x if g.sign > 0 else -x
            else:
                acc = acc + x if g.sign > 0 else acc - x
        lefts.append(left_of[a]())
        rights.append(acc)

    out = M * (1.0 - c[plan.decay]) if plan.decay is not None else M
    if not lefts:
        return out
    left = lefts[0] if len(lefts) == 1 else torch.cat(lefts, dim=1)
    right_ = rights[0] if len(rights) == 1 else torch.cat(rights, dim=1)
    return torch.baddbmm(out, left.transpose(1, 2), right_)
