"""The rank-few weight updates of the fast meta-gradient: the forward update of one layer
(applied at once or deferred into one GEMM per chunk of steps), its exact undo, and the
adjoint's update. Vectors are rows ``[P, 1, n]``, matrices ``[P, n, m]``; coefficients are
sliced once into ``[P, 1, 1]`` views (:class:`Coefs`). Used by :mod:`plastcli.engine.adjoint`.
"""

from __future__ import annotations

import torch

from plastcli.core import terms
from plastcli.core.terms import BUILTIN_POOL, Pool


def dot_rows(a, b):  # rows [P, 1, n] x [P, 1, n] -> [P, 1, 1]
    return (a * b).sum(-1, keepdim=True)


def add_into(acc, val):
    """acc + val where acc may be None (no contribution yet); adds in place otherwise."""
    return val if acc is None else acc.add_(val)


def addmul_into(acc, a, b, value: float = 1.0):
    """acc + value * a * b (one operation when acc exists); acc may be None."""
    if acc is None:
        out = torch.mul(a, b)
        return out if value == 1.0 else out.mul_(value)
    return acc.addcmul_(a, b, value=value)


def column(v):  # row [P, 1, n] -> column view [P, n, 1]
    return v.transpose(1, 2)


class LowRank:
    """A matrix ``M = base + sign * U V`` whose rank-one terms are still pending.

    base ``[P, n, m]`` is changed in place only when the pending terms are folded in:
    one GEMM for up to ``cap`` terms instead of one pass over the matrix per term, so a
    chunk of steps reads and writes each weight matrix once. Products with M add the
    pending terms' contribution (two thin ``bmm``). ``cap = 0`` applies terms at once.
    """

    def __init__(self, base: torch.Tensor, cap: int, sign: float = 1.0):
        self.base, self.cap, self.sign, self.j = base, cap, sign, 0
        self.base_T = base.transpose(1, 2)  # a view: stays valid as base changes in place
        self._views: dict[int, tuple] = {}
        if cap:
            P, n, m = base.shape
            self.U = base.new_zeros(P, n, cap)  # left factors as columns
            self.V = base.new_zeros(P, cap, m)  # right factors as rows
            # views made once: per-step slicing would cost more operations than the products
            self._slots = [(self.U[:, :, i : i + 1], self.V[:, i : i + 1]) for i in range(cap)]

    def _pending(self) -> tuple:
        """(U_j ``[P, n, j]``, V_j ``[P, j, m]``, U_j^T, V_j^T) for the j pending terms."""
        j = self.j
        if j not in self._views:
            U, V = self.U[:, :, :j], self.V[:, :j]
            self._views[j] = (U, V, U.transpose(1, 2), V.transpose(1, 2))
        return self._views[j]

    def add(self, cols, rows) -> None:
        """M += sign * sum_i cols[i] rows[i]; columns ``[P, n, 1]``, rows ``[P, 1, m]``."""
        if not self.cap:
            for a, b in zip(cols, rows, strict=True):
                self.base.addcmul_(a, b, value=self.sign)
            return
        if self.j + len(cols) > self.cap:
            self.fold()
        for a, b in zip(cols, rows, strict=True):
            u, v = self._slots[self.j]
            u.copy_(a)
            v.copy_(b)
            self.j += 1

    def fold(self) -> None:
        """Fold the pending terms into base (one batched GEMM)."""
        if self.j:
            U, V, _, _ = self._pending()
            self.base.baddbmm_(U, V, alpha=self.sign)
            self.j = 0

    def times_T(self, x, base_part=None):
        """x M^T for rows x ``[P, k, m]`` -> ``[P, k, n]`` (base_part: x base^T if known)."""
        out = torch.bmm(x, self.base_T) if base_part is None else base_part
        if self.j:
            _, _, U_T, V_T = self._pending()
            out = torch.baddbmm(out, torch.bmm(x, V_T), U_T, alpha=self.sign)
        return out

    def times(self, y, base_part=None):
        """y M for rows y ``[P, k, n]`` -> ``[P, k, m]`` (base_part: y base if known)."""
        out = torch.bmm(y, self.base) if base_part is None else base_part
        if self.j:
            U, V, _, _ = self._pending()
            out = torch.baddbmm(out, torch.bmm(y, U), V, alpha=self.sign)
        return out


class Coefs:
    """One layer's coefficients: ``c[r]`` and ``neg[r] = -c[r]``, ``[P, 1, 1]`` each, and
    the layer's :class:`~plastcli.core.terms.LayerPlan` (its active terms, grouped)."""

    def __init__(self, coef_l: torch.Tensor, on: frozenset[int], pool: Pool = BUILTIN_POOL):
        P = coef_l.shape[0]
        self.on = on
        self.plan = terms.plan(pool, on)
        self.c = {r: coef_l[:, r].view(P, 1, 1) for r in on}
        self.neg = {r: -v for r, v in self.c.items()}
        d = self.plan.decay
        self.kappa = 1.0 - self.c[d] if d is not None else None

    def const(self, g: terms.Group) -> tuple:
        """(K, -K) of a constant group: its one coefficient, signed (views made once)."""
        (r, _), = g.members
        return (self.c[r], self.neg[r]) if g.sign > 0 else (self.neg[r], self.c[r])

    def group_coef(self, g: terms.Group, scalars: dict) -> torch.Tensor:
        """K = sign * sum_r c_r s_r ``[P, 1, 1]``: the group's multiplier of its right factor."""
        if g.constant:
            return self.const(g)[0]
        k = None
        for r, s in g.members:
            t = self.c[r] if s == terms.S_ONE else self.c[r] * scalars[s]
            k = t if k is None else k + t
        return k if g.sign > 0 else -k


class Saved:
    """What one layer's update at one step keeps for the reverse pass (all small):
    the scalars ``scal`` by kind, ``Wq = (W e_{l-1})^T``, ``v = (W^T y_l)^T``, the group
    multipliers ``K`` by group key and the right factors ``R`` by left factor."""

    __slots__ = ("scal", "K", "R", "Wq", "v", "W", "lefts", "cols", "rights", "ucol")

    def set_factors(self, vec: dict, plan: terms.LayerPlan) -> None:
        """The update's rank-one terms in the order applied: left rows ``lefts``, their
        column views ``cols`` (made once, reused by the reverse pass) and ``rights``."""
        self.lefts = [vec[a] for a in plan.left_names]
        self.rights = [self.R[a] for a in plan.left_names]
        self.cols = [column(lf) for lf in self.lefts]
        names = plan.left_names
        self.ucol = self.cols[names.index(terms.Y_POST)] if terms.Y_POST in names else None


def step_vectors(g, q, u, p, ones, ones_pre) -> dict:
    """The local vectors of one layer by factor name (rows ``[P, 1, n]``)."""
    return {terms.E_POST: g, terms.Y_POST: u, terms.ONES: ones, terms.Y_PRE: p, terms.E_PRE: q,
            ("pre", terms.ONES): ones_pre}


def right_vector(vec: dict, b: str):
    return vec[("pre", terms.ONES)] if b == terms.ONES else vec[b]


def apply_update(M: LowRank, k: Coefs, g, q, u, p, z, ones, ones_pre, keep_copy: bool) -> Saved:
    """Apply one layer's rule: W <- kappa W + sum_a a (R_a)^T (M holds W).

    g = e_l, u = y_l, z = z_l, ones ``[P, 1, n]``; q = e_{l-1}, p = y_{l-1}, ones_pre
    ``[P, 1, m]``. R_a = sum over the groups of left a of K b, K = sign sum_r c_r s_r, with
    b = p, q, ones or p - W^T u (grouped as in rules.apply_rule, :func:`plastcli.core.terms.plan`).
    """
    plan = k.plan
    s = Saved()
    s.W = M.base.clone() if keep_copy else None
    sc = {}
    if terms.S_SUM in plan.scalars:
        sc[terms.S_SUM] = u.sum(-1, keepdim=True)
    s.Wq = M.times_T(q) if terms.S_YME in plan.scalars else None  # (W e_{l-1})^T
    if s.Wq is not None:
        sc[terms.S_YME] = dot_rows(u, s.Wq)
    if terms.S_EMY in plan.scalars:
        sc[terms.S_EMY] = dot_rows(g, z)
    s.v = M.times(u) if plan.needs_v else None  # (W^T y_l)^T
    s.scal, s.K, s.R = sc, {}, {}
    vec = step_vectors(g, q, u, p, ones, ones_pre)
    for a, groups in plan.lefts:
        R = None
        for grp in groups:
            K = s.K[grp.key] = k.group_coef(grp, sc)
            if grp.b == terms.OJA_PRE:
                t = (p - s.v).mul_(K)
                R = t if R is None else R.add_(t)
            else:
                bv = right_vector(vec, grp.b)
                R = torch.mul(K, bv) if R is None else R.addcmul_(K, bv)
        s.R[a] = R
    if k.kappa is not None:  # decay layers never defer (cap 0), so base is W itself
        M.base.mul_(k.kappa)
    s.set_factors(vec, plan)
    M.add(s.cols, s.rights)
    return s


def restore_update(M: LowRank, k: Coefs, s: Saved) -> None:
    """Undo :func:`apply_update`: W_{t+1} -> W_t. M has sign -1; same terms, reverse order."""
    if s.W is not None:
        M.base.copy_(s.W)
        return
    M.add(s.cols[::-1], s.rights[::-1])
    if k.kappa is not None:
        M.base.div_(k.kappa)


class Adjoints:
    """Vector adjoints of one step: ``ybar[l]``, ``ebar[l]``, ``zbar[l]`` (None = zero)."""

    def __init__(self, L: int):
        self.y = [None] * (L + 1)
        self.e = [None] * (L + 1)
        self.z = [None] * (L + 1)


def update_adjoint(G: LowRank, W: LowRank, k: Coefs, s: Saved, l: int, g, q, u, p, z,
                    ones, ones_pre, adj: Adjoints, bars: dict[str, list],
                    known: dict) -> torch.Tensor | None:
    """Reverse of one layer's update, given G = dLoss/dW_{t+1} and W = W_t (restored).

    Adds to the vector adjoints in ``adj`` and returns the right factor ``r`` of the part
    of dLoss/dW_t that comes through the update's own W-dependence, ``y_l r^T``
    (Oja's W^T u, y_l^T W e_{l-1}), or None. The adjoints of the update's right factors
    (``G^T a`` for each left factor a) and decay's coefficient gradient are appended to
    ``bars`` for :func:`_coefficient_grads`. ``known`` holds products with G's base that
    were computed for a whole chunk of steps at once.
    """
    plan, c = k.plan, k.c
    adj_left = {terms.E_POST: adj.e, terms.Y_POST: adj.y}
    adj_right = {terms.Y_PRE: adj.y, terms.E_PRE: adj.e, terms.OJA_PRE: adj.y}
    vec = step_vectors(g, q, u, p, ones, ones_pre)
    sbar: dict[str, torch.Tensor] = {}  # adjoints of y_l^T W e_{l-1} and e_l^T W y_{l-1}
    r = None  # vbar's negation (v = W^T u), then also the quadratic scalar's W part
    for a, groups in plan.lefts:
        xbar = G.times(vec[a], known.get(("bar", a)))  # G^T a
        bars[a].append(xbar)
        if a != terms.ONES:  # rows taken from a chunk product are read once each: in-place is safe
            acc = adj_left[a]
            acc[l] = add_into(acc[l], G.times_T(s.R[a], known.get(("GR", a))))  # G R_a
        for grp in groups:
            if grp.b == terms.ONES:
                continue
            K = s.K[grp.key]
            acc = adj_right[grp.b]
            acc[l - 1] = addmul_into(acc[l - 1], K, xbar)
            if grp.b == terms.OJA_PRE:  # R gains K (p - v) with v = W^T u, so vbar = -K xbar
                nK = k.const(grp)[1] if grp.constant else -K
                r = torch.mul(nK, xbar) if r is None else r.addcmul_(nK, xbar)
        for grp in groups:  # K = sign sum_r c_r s_r: the chain into the scalars s
            if grp.constant or all(sk == terms.S_ONE for _, sk in grp.members):
                continue
            if grp.b == terms.OJA_PRE:
                kbar = dot_rows(xbar, p) - dot_rows(xbar, s.v)
            elif grp.b == terms.ONES:
                kbar = xbar.sum(-1, keepdim=True)
            else:
                kbar = dot_rows(xbar, vec[grp.b])
            kbar = -kbar if grp.sign < 0 else kbar
            for rr, sk in grp.members:
                if sk == terms.S_ONE:
                    continue
                t = kbar * c[rr]
                if sk == terms.S_SUM:  # d (1^T y_l) / d y_l = 1
                    adj.y[l] = add_into(adj.y[l], torch.zeros_like(u).add_(t))
                else:
                    sbar[sk] = t if sk not in sbar else sbar[sk].add_(t)
    if plan.decay is not None:  # decay layers never defer (cap 0): both bases are the matrices
        bars["decay"].append(-(G.base * W.base).sum((1, 2)))
    if r is not None:
        adj.y[l] = add_into(adj.y[l], W.times_T(r))  # W vbar
    if terms.S_EMY in sbar:  # e_l . z_l
        s9bar = sbar[terms.S_EMY]
        adj.e[l] = addmul_into(adj.e[l], s9bar, z)
        adj.z[l] = addmul_into(adj.z[l], s9bar, g)
    if terms.S_YME in sbar:  # y_l^T W e_{l-1}: also gives y_l (s7bar e_{l-1})^T
        s7bar = sbar[terms.S_YME]
        adj.y[l] = addmul_into(adj.y[l], s7bar, s.Wq)
        adj.e[l - 1] = addmul_into(adj.e[l - 1], s7bar, s.v)
        r = s7bar * q if r is None else r.addcmul_(s7bar, q)
    return r
