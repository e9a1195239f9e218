"""The input layer's updates under Oja's rule, a chunk of steps at a time (CPU fast path).

For W_1 ``[P, n_1, n_0]`` (the largest matrix: 170 x 784 in P1) the per-step reverse
pass of :mod:`plastcli.engine.adjoint` reads the whole matrix four times a step. Two of those
reads come from Oja's term: ``v_t = W_t^T y_t`` going forward and ``W_t rbar_t`` going
back. Because the inputs ``p_t = x_t`` are known in advance, both can be replaced by
products with a handful of basis vectors per chunk of K steps (the WY trick of chunked
linear recurrences):

forward, with ``W_t = W_0 + sum_{s<t} e_s a_s^T + y_s b_s^T`` inside the chunk,

- ``a_t = -c_pseudo p_t - c_err_hebb q_t`` is explicit (``q_t = e_0`` at step t);
- ``b_t = bx_t - c_oja W_0^T Y^T kappa_t`` with an explicit part
  ``bx_t = -c_post_pre q_t + c_oja (p_t - vx_t)``,
  ``vx_t = sum_{s<t} a_s (e_s . y_t) + bx_s (y_s . y_t)`` and chunk coefficients
  ``kappa_t = 1_t - c_oja sum_{s<t} (y_s . y_t) kappa_s``; so ``v_t = vx_t + W_0^T Y^T kappa_t``;
- ``z_t = W_t p_t`` needs only ``W_0 p_t`` (one GEMM per chunk), the explicit rows
  and ``y_s . W_0 p_t``; ``W_0^T Y^T`` is one GEMM at the chunk's end;

reverse, with ``G_{t+1} = G_E + sum_{s>t} delta_s p_s^T + y_s r_s^T`` (G_E: dLoss/dW at
the chunk's end, ``r_s = -c_oja bbar_s``, ``delta_s = zbar_s``),

- ``bbar_t = G_{t+1}^T y_t`` and ``abar_t = G_{t+1}^T e_t`` are combinations of the
  basis rows ``G_E^T e_s``, ``G_E^T y_s`` and ``p_s`` (coefficients ``CA``, ``CB``);
- ``W_t bbar_t`` is then ``CB_t`` times ``W_S [basis]`` (one GEMM at the chunk's top,
  W_S = W at the chunk's start) plus the chunk's own rank-one terms.

Only the synthetic error's product with the fixed feedback ``B_1`` stays per step.
Above, a_t and bx_t are written for the built-in terms; in general they are the sums of
the layer's term groups (:func:`plastcli.core.terms.plan`): a_t = sum K b over the groups with
left factor e_post, bx_t likewise for y_post, with Oja's right factor taking the place of
``c_oja (p_t - vx_t)``. Applies when layer 1's declarations fit
:meth:`plastcli.core.terms.LayerPlan.chunkable` (scalar 1, no decay, a ∈ {e_post, y_post},
b ∈ {y_pre, e_pre}, plus Oja's ``y_post (y_pre − Mᵀ y_post)ᵀ``, which must be there), with
fixed feedback or no pre-synaptic error; tests/test_adjoint.py checks it against autograd.
Shapes: rows ``[P, 1, n]``, chunk blocks ``[P, k, n]``; rows of ``EY`` and ``AB``
interleave the steps: ``e_0, y_0, e_1, y_1, ...``.
"""

from __future__ import annotations

import torch

from plastcli.core import terms
from plastcli.core.terms import BUILTIN_POOL, Pool


def applies(on: frozenset[int], feedback: str, pool: Pool = BUILTIN_POOL) -> bool:
    """Can layer 1 with terms ``on`` (of ``pool``) use this path? (It pays only with Oja's
    term; with sym feedback e_0 would read the changing W_1.)"""
    plan = terms.plan(pool, on)
    return plan.chunkable() and (feedback == "fixed" or not plan.reads_pre_error)


class _Chunk:
    """One chunk's forward record: inputs ``Pc [P, k, n_0]``, ``EY [P, 2k, n_1]``, the
    update's right factors ``AB [P, 2k, n_0]`` (explicit once the chunk is closed), the
    rows ``Q`` (q_t) and ``V`` (v_t) ``[P, k, n_0]`` for the coefficient gradients,
    ``Zb = Pc W_0^T`` and, once closed, ``W0``; while open ``kappa [P, k, k]`` and
    ``VX [P, k, n_0]``."""

    def __init__(self, W: torch.Tensor, x: torch.Tensor, c0: int, k: int):
        P, n1, n0 = W.shape
        self.c0, self.k = c0, k
        self.Pc = x[:, c0 : c0 + k]
        self.Zb = torch.bmm(self.Pc, W.transpose(1, 2))
        self.EY = W.new_zeros(P, 2 * k, n1)
        self.AB = W.new_zeros(P, 2 * k, n0)
        self.kappa = W.new_zeros(P, k, k)
        self.VX = W.new_zeros(P, k, n0)
        self.Q = W.new_empty(P, k, n0)  # q_t = e_0 rows, when a term reads them

    @property
    def Y(self):  # [P, k, n_1] view of the y rows
        return self.EY[:, 1::2]


class InputLayerChunks:
    """Layer 1's forward updates and their reverse, K steps at a time (see module doc).

    ``W`` ``[P, n_1, n_0]`` is updated in place by the forward pass (folded once per
    chunk, a copy of each chunk's start kept for the reverse pass, which leaves W as the
    forward pass left it); ``x`` ``[P, T, n_0]``.
    ``c`` maps term index to its coefficient view ``[P, 1, 1]``; ``plan`` groups the
    layer's terms (:func:`plastcli.core.terms.plan`, chunkable).
    """

    def __init__(self, W: torch.Tensor, x: torch.Tensor, K: int, c: dict,
                 plan: terms.LayerPlan):
        self.W, self.x, self.K, self.T = W, x, K, x.shape[1]
        self.c, self.plan = c, plan
        self.neg = {r: -v for r, v in c.items()}
        self.chunks: list[_Chunk] = []
        self.reads_q = plan.reads_pre_error

        def coef(g):  # the group's signed coefficient (one term with s = 1: chunkable)
            (r, _), = g.members
            return c[r] if g.sign > 0 else self.neg[r]

        oja = plan.group(terms.Y_POST, terms.OJA_PRE)  # Oja's y_post (y_pre - M^T y_post)^T
        (r, _), = oja.members
        self.k_oja, self.neg_oja = (c[r], self.neg[r]) if oja.sign > 0 else (self.neg[r], c[r])
        # the explicit parts of a_t (left e_post) and bx_t (left y_post): (b, K) in plan order
        self.ka = [(g.b, coef(g)) for g in plan.groups if g.a == terms.E_POST]
        self.kb = [(g.b, coef(g)) for g in plan.groups if g.a == terms.Y_POST and g is not oja]
        # the coefficient of q_t = e_0 in a_t and in bx_t (None: no such term)
        self.q_in_a = next((k for b, k in self.ka if b == terms.E_PRE), None)
        self.q_in_b = next((k for b, k in self.kb if b == terms.E_PRE), None)
        # dLoss/dc_r [P], summed chunk by chunk in the reverse pass
        self.coef_grad = {r: W.new_zeros(W.shape[0]) for r in c}

    # -- forward --------------------------------------------------------------------
    def z(self, t: int) -> torch.Tensor:
        """``z_t = W_t p_t`` ``[P, 1, n_1]``; opens a chunk at its first step."""
        if t % self.K == 0:
            self.chunks.append(_Chunk(self.W, self.x, t, min(self.K, self.T - t)))
        ch = self.chunks[-1]
        i = t - ch.c0
        zb = ch.Zb[:, i : i + 1]
        if i == 0:
            return zb
        p = ch.Pc[:, i : i + 1]
        # coefficients of the chunk's rank-one terms: a_s . p_t and b_s . p_t
        coef = torch.bmm(ch.AB[:, : 2 * i], p.transpose(1, 2))  # [P, 2i, 1]
        yz = torch.bmm(ch.Y[:, :i], zb.transpose(1, 2))  # y_s . W_0 p_t  [P, i, 1]
        coef[:, 1::2].baddbmm_(ch.kappa[:, :i, :i], yz.mul_(self.neg_oja))
        return torch.baddbmm(zb, coef.transpose(1, 2), ch.EY[:, : 2 * i])

    def update(self, t: int, e: torch.Tensor, q: torch.Tensor | None,
               y: torch.Tensor) -> None:
        """Record step t's update ``W += e a^T + y b^T``; e, y ``[P, 1, n_1]``, q = e_0."""
        ch = self.chunks[-1]
        i = t - ch.c0
        p = ch.Pc[:, i : i + 1]
        ch.EY[:, 2 * i : 2 * i + 1].copy_(e)
        ch.EY[:, 2 * i + 1 : 2 * i + 2].copy_(y)
        ch.kappa[:, i, i] = 1.0
        if self.reads_q:
            ch.Q[:, i : i + 1].copy_(q)
        a, bx = ch.AB[:, 2 * i : 2 * i + 1], ch.AB[:, 2 * i + 1 : 2 * i + 2]
        vx = ch.VX[:, i : i + 1]
        if i:
            yU = torch.bmm(ch.EY[:, : 2 * i], y.transpose(1, 2))  # [e_s . y; y_s . y]
            vx.copy_(torch.bmm(yU.transpose(1, 2), ch.AB[:, : 2 * i]))
            kap = torch.bmm(yU[:, 1::2].transpose(1, 2), ch.kappa[:, :i, :i])
            ch.kappa[:, i : i + 1, :i].copy_(kap.mul_(self.neg_oja))
        vec = {terms.Y_PRE: p, terms.E_PRE: q}
        for b, k in self.ka:
            a.addcmul_(k, vec[b])
        bx.addcmul_(self.k_oja, p - vx)  # Oja's right factor first, then the explicit ones
        for b, k in self.kb:
            bx.addcmul_(k, vec[b])

    def close(self) -> None:
        """End of a chunk: make b explicit, keep v_t, fold the chunk into W."""
        ch = self.chunks[-1]
        WY = torch.bmm(ch.kappa, torch.bmm(ch.Y, self.W))  # rows kappa_t Y W_0  [P, k, n_0]
        ch.V = ch.VX.add_(WY)
        ch.AB[:, 1::2].addcmul_(self.neg_oja, WY)
        # the reverse pass needs W_0 once: a copy costs one pass, rebuilding it a GEMM
        ch.W0 = self.W.clone()
        self.W.baddbmm_(ch.EY.transpose(1, 2), ch.AB)
        ch.kappa = ch.VX = None

    # -- reverse --------------------------------------------------------------------
    def top(self, G: torch.Tensor) -> None:
        """Reverse entry into the chunk ending now: compute the chunk's products with
        G_E = ``G`` (dLoss/dW at the chunk's end) and with W_S, its start."""
        ch = self.chunks[-1]
        k = ch.k
        GEY = torch.bmm(ch.EY, G)  # rows e_s G_E, y_s G_E  [P, 2k, n_0]
        self.basis = torch.cat([GEY[:, 0::2], GEY[:, 1::2], ch.Pc], 1)  # [P, 3k, n_0]
        self.basis_b = self.basis[:, k:]  # the rows bbar lives in: G_E^T y_s, p_s
        self.GAB = torch.bmm(ch.AB, G.transpose(1, 2))  # G_E a_s, G_E b_s  [P, 2k, n_1]
        # W_S basis_b  [P, 2k, n_1]; its p rows are the forward's W_0 p_s
        self.Wb = torch.cat([torch.bmm(GEY[:, 1::2], ch.W0.transpose(1, 2)), ch.Zb], 1)
        ch.W0 = None
        self.ABdot = torch.bmm(ch.AB, self.basis_b.transpose(1, 2))  # [P, 2k, 2k]
        self.YEY = torch.bmm(ch.Y, ch.EY.transpose(1, 2))  # y_s . (e_t, y_t)  [P, k, 2k]
        self.PAB = torch.bmm(ch.Pc, ch.AB.transpose(1, 2))  # p_s . (a_t, b_t)  [P, k, 2k]
        P, n1 = ch.EY.shape[0], ch.EY.shape[2]
        self.Delta = G.new_zeros(P, k, n1)  # zbar_s of the steps already reversed
        self.CB = G.new_zeros(P, k, 2 * k)  # bbar_s in basis_b
        self.CA = G.new_zeros(P, k, 3 * k)  # abar_s in basis

    def reverse(self, t: int, adj_e1, adj_y1):
        """Reverse of step t's update: returns (ebar_1, ybar_1, ebar_0) with this layer's
        contributions added (ebar_0 is None when no term reads e_0)."""
        ch = self.chunks[-1]
        i, k, neg_oja = t - ch.c0, ch.k, self.neg_oja
        ey = ch.EY[:, 2 * i : 2 * i + 2]  # [e_t; y_t]
        dd = torch.bmm(self.Delta, ey.transpose(1, 2))  # delta_s . (e_t, y_t)  [P, k, 2]
        m = torch.bmm(self.YEY[:, :, 2 * i : 2 * i + 2].transpose(1, 2), self.CB)  # [P, 2, 2k]
        # G_{t+1} (a_t, b_t) = G_E (a_t, b_t) + sum_{s>t} delta_s (p_s . ) + y_s (r_s . )
        r_dot = torch.bmm(self.ABdot[:, 2 * i : 2 * i + 2], self.CB.transpose(1, 2))
        gab = torch.baddbmm(self.GAB[:, 2 * i : 2 * i + 2],
                            self.PAB[:, :, 2 * i : 2 * i + 2].transpose(1, 2), self.Delta)
        gab.baddbmm_(r_dot.mul_(neg_oja), ch.Y)
        # bbar_t and abar_t as coefficients of the basis rows
        cb = self.CB[:, i : i + 1]
        cb.copy_(m[:, 1:2]).mul_(neg_oja)
        cb[:, :, k:].add_(dd[:, :, 1:2].transpose(1, 2))
        cb[:, 0, i] += 1.0
        ca = self.CA[:, i : i + 1]
        ca[:, :, k:].copy_(m[:, 0:1]).mul_(neg_oja)
        ca[:, :, 2 * k :].add_(dd[:, :, 0:1].transpose(1, 2))
        ca[:, 0, i] = 1.0
        adj_e1 = gab[:, 0:1] if adj_e1 is None else adj_e1.add_(gab[:, 0:1])
        adj_y1 = gab[:, 1:2] if adj_y1 is None else adj_y1.add_(gab[:, 1:2])
        # Oja: v_t = W_t^T y_t gives ybar_t += W_t vbar_t, vbar_t = -c_oja bbar_t
        w_b = torch.bmm(cb, self.Wb)  # W_S bbar_t
        if i:
            own = torch.bmm(self.ABdot[:, : 2 * i], cb.transpose(1, 2))  # (a_s, b_s) . bbar_t
            w_b.baddbmm_(own.transpose(1, 2), ch.EY[:, : 2 * i])
        adj_y1.addcmul_(neg_oja, w_b)
        ebar0 = None
        if self.reads_q:  # q_t enters a (b = e_pre, left e_post) and b (left y_post)
            coef = torch.zeros_like(ca) if self.q_in_a is None else ca * self.q_in_a
            if self.q_in_b is not None:
                coef[:, :, k:].addcmul_(self.q_in_b, cb)
            ebar0 = torch.bmm(coef, self.basis)
        return adj_e1, adj_y1, ebar0

    def record_zbar(self, t: int, zbar) -> None:
        """Keep ``zbar_t`` (dLoss/dz_1 at step t): dLoss/dW_t gains ``zbar_t p_t^T``."""
        if zbar is not None:
            self.Delta[:, t - self.chunks[-1].c0].copy_(zbar[:, 0])

    def bottom(self, G: torch.Tensor) -> None:
        """Reverse exit at the chunk's first step: G_E -> G_S in place, and the chunk's
        share of the coefficient gradients from its factor adjoints abar, bbar ``[P, k, n_0]``
        (term sign a b^T gets sign abar_or_bbar . b, with b = p, q or p - v)."""
        ch = self.chunks.pop()
        P, grad = G.shape[0], self.coef_grad

        def dot(u, w):  # [P, k, n] x [P, k, n] -> [P]
            return torch.linalg.vecdot(u.reshape(P, -1), w.reshape(P, -1))

        bbar = torch.bmm(self.CB, self.basis_b)
        xbar = {terms.Y_POST: bbar}
        if self.ka:
            xbar[terms.E_POST] = torch.bmm(self.CA, self.basis)
        vec = {terms.Y_PRE: ch.Pc, terms.E_PRE: ch.Q}
        for r, t in self.plan.terms:
            X = xbar[t.a]
            d = dot(X, ch.Pc) - dot(X, ch.V) if t.b == terms.OJA_PRE else dot(X, vec[t.b])
            if t.sign < 0:
                grad[r] -= d
            else:
                grad[r] += d
        G.baddbmm_(self.Delta.transpose(1, 2), ch.Pc)
        G.baddbmm_(ch.Y.transpose(1, 2), bbar * self.neg_oja)  # y_s r_s^T
        self.basis = self.basis_b = self.GAB = self.Wb = self.ABdot = None
        self.YEY = self.PAB = self.Delta = self.CB = self.CA = None
