"""A hand-written reverse pass for the unrolled inner loop (the fast meta-gradient).

Autograd through 250 online steps builds ~150 small graph nodes per step and
materialises several full-size weight gradients per layer and step. This module
runs the inner loop without autograd, keeps each step's weights and a few
vectors, and then walks back through the steps with the adjoint ``G_l = dLoss/dW_l``
updated in place by rank-few corrections.

Supported: forward rules with any pool terms and per-layer masks, feedback ``fixed``
or ``sym`` with B = W by value (the default). Anything else (plastic feedback,
gradient through the symmetric feedback path) uses autograd; ``tests/test_adjoint.py``
checks this module against autograd.

Shapes: vectors are ``[P, n]`` (online, one sample per member), matrices ``[P, n, m]``,
coefficients ``[P, L, R]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from plastcli.network import Net, softplus
from plastcli.rules import (
    DECAY,
    ERR_HEBB,
    OJA,
    ONES_PRE_ERR,
    POST_PRE_ERR,
    PSEUDO,
    QUAD1,
    QUAD2,
    QUAD3,
    SUM_POST,
    USES_PRE_ERROR,
)


def supported(feedback: str, has_feedback_rule: bool, sym_detach: bool) -> bool:
    return not has_feedback_rule and (feedback == "fixed" or (feedback == "sym" and sym_detach))


# Orientation matters on the CPU: with the vector on the left, batched products run
# ~15x faster at P = 16 than with the matrix on the left (bench/ measurements).
def _mv(M, v):  # M v: [P, n, m] x [P, m] -> [P, n]
    return torch.bmm(v.unsqueeze(1), M.transpose(1, 2)).squeeze(1)


def _mtv(M, v):  # M^T v: [P, n, m] x [P, n] -> [P, m]
    return torch.bmm(v.unsqueeze(1), M).squeeze(1)


def _dot(a, b):  # [P, n] x [P, n] -> [P, 1]
    return (a * b).sum(-1, keepdim=True)


class _Layer:
    """What one layer's update at one step saved for the reverse pass."""

    __slots__ = ("W", "a", "b", "s6", "s7", "s9", "alpha", "gamma", "v", "Wq")


def _update(W, c, on, g, q, u, p, z):
    """Forward update of one layer (SPEC §3.1, grouped as in rules.apply_rule).

    Returns (W', saved). c ``[P, R]``; g = e_l, q = e_{l-1}, u = y_l, p = y_{l-1}, z = z_l.
    """
    s = _Layer()
    s.W = W
    s.s6 = u.sum(-1, keepdim=True) if SUM_POST in on else None
    s.Wq = _mv(W, q) if on & {QUAD1, QUAD2} else None
    s.s7 = _dot(u, s.Wq) if s.Wq is not None else None
    s.s9 = _dot(g, z) if QUAD3 in on else None
    s.v = _mtv(W, u) if OJA in on else None
    k = c.__getitem__  # c[r]: [P, 1] coefficient of term r on this layer

    def scale(*parts):  # sum of c_r * factor over the active terms (factor None = 1)
        return sum((k(r) if f is None else k(r) * f for r, f in parts if r in on), 0.0)

    # alpha scales y_{l-1} in the e_l group; gamma scales e_{l-1} in the y_l group
    alpha = scale((PSEUDO, None), (SUM_POST, s.s6), (QUAD2, s.s7))
    gamma = scale((POST_PRE_ERR, None), (QUAD1, s.s7), (QUAD3, s.s9))
    s.alpha, s.gamma = alpha, gamma
    has_a = bool(on & {PSEUDO, SUM_POST, QUAD2, ERR_HEBB})
    has_b = bool(on & {POST_PRE_ERR, QUAD1, QUAD3, OJA})
    s.a = s.b = None
    lefts, rights = [], []
    if has_a:
        s.a = -alpha * p - (k(ERR_HEBB) * q if ERR_HEBB in on else 0.0)
        lefts.append(g)
        rights.append(s.a)
    if has_b:
        b = -gamma * q if on & {POST_PRE_ERR, QUAD1, QUAD3} else 0.0
        if OJA in on:
            b = b + k(OJA) * (p - s.v)
        s.b = b
        lefts.append(u)
        rights.append(b)
    if ONES_PRE_ERR in on:
        lefts.append(torch.ones_like(u))
        rights.append(-k(ONES_PRE_ERR) * q)
    # a broadcast product per rank-1 group: far cheaper than an out-of-place baddbmm
    out = W * (1.0 - k(DECAY).unsqueeze(2)) if DECAY in on else None
    for left, right in zip(lefts, rights, strict=True):
        if out is None:
            out = torch.addcmul(W, left.unsqueeze(2), right.unsqueeze(1))
        else:
            out.addcmul_(left.unsqueeze(2), right.unsqueeze(1))
    return (W.clone() if out is None else out), s


def _update_adjoint(G, s, c, on, g, q, u, p, z, cg, gbar, qbar, ubar, pbar, zbar):
    """Reverse of :func:`_update`: accumulate vector adjoints, coefficient grads ``cg [P, R]``.

    Returns the rank-few pieces (left ``[P, n, k]``, right ``[P, k, m]``) of dLoss/dW that
    come through the update's W-dependence (oja's W^T u, quad's u^T W q).
    """
    k = c.__getitem__

    def add_cg(r, val):  # val [P, 1]; cg: dict term -> accumulated [P, 1]
        cg[r] = val if r not in cg else cg[r] + val

    # Gbar^T [g, u, 1] in one read of G; G [a, b] in another
    cols, names = [], []
    if s.a is not None:
        cols.append(g)
        names.append("a")
    if s.b is not None:
        cols.append(u)
        names.append("b")
    if ONES_PRE_ERR in on:
        cols.append(torch.ones_like(u))
        names.append("c")
    adj = {}
    if cols:
        proj = torch.bmm(torch.stack(cols, 1), G)  # [P, k, m]: rows are G^T g, G^T u, G^T 1
        adj = {n: proj[:, i] for i, n in enumerate(names)}
    rows = [x for x in (s.a, s.b) if x is not None]
    if rows:
        back = torch.bmm(torch.stack(rows, 1), G.transpose(1, 2))  # [P, k, n]: G a, G b
        i = 0
        if s.a is not None:
            gbar += back[:, 0]
            i = 1
        if s.b is not None:
            ubar += back[:, i]
    s7bar = None
    s9bar = None
    if s.a is not None:
        abar = adj["a"]
        pbar -= s.alpha * abar
        alphabar = -_dot(abar, p)
        if ERR_HEBB in on:
            qbar -= k(ERR_HEBB) * abar
            add_cg(ERR_HEBB, -_dot(abar, q))
        if PSEUDO in on:
            add_cg(PSEUDO, alphabar)
        if SUM_POST in on:
            add_cg(SUM_POST, alphabar * s.s6)
            ubar += alphabar * k(SUM_POST)  # d s6 / d u = 1
        if QUAD2 in on:
            add_cg(QUAD2, alphabar * s.s7)
            s7bar = alphabar * k(QUAD2)
    vbar = None
    if s.b is not None:
        bbar = adj["b"]
        if on & {POST_PRE_ERR, QUAD1, QUAD3}:
            qbar -= s.gamma * bbar
            gammabar = -_dot(bbar, q)
            if POST_PRE_ERR in on:
                add_cg(POST_PRE_ERR, gammabar)
            if QUAD1 in on:
                add_cg(QUAD1, gammabar * s.s7)
                s7bar = gammabar * k(QUAD1) + (s7bar if s7bar is not None else 0.0)
            if QUAD3 in on:
                add_cg(QUAD3, gammabar * s.s9)
                s9bar = gammabar * k(QUAD3)
        if OJA in on:
            add_cg(OJA, _dot(bbar, p - s.v))
            pbar += k(OJA) * bbar
            vbar = -k(OJA) * bbar
    if ONES_PRE_ERR in on:
        cbar = adj["c"]
        qbar -= k(ONES_PRE_ERR) * cbar
        add_cg(ONES_PRE_ERR, -_dot(cbar, q))
    if DECAY in on:
        add_cg(DECAY, -(G * s.W).sum((1, 2)).unsqueeze(1))
    if s9bar is not None:  # s9 = g . z
        gbar += s9bar * z
        zbar += s9bar * g
    right_u = None  # dLoss/dW gains u (vbar + s7bar q)^T
    if vbar is not None:
        ubar += _mv(s.W, vbar)
        right_u = vbar
    if s7bar is not None:  # s7 = u^T W q
        ubar += s7bar * s.Wq
        qbar += s7bar * _mtv(s.W, u)
        right_u = s7bar * q if right_u is None else right_u + s7bar * q
    return right_u


@torch.no_grad()
def meta_loss_and_coef_grad(net: Net, x: torch.Tensor, labels: torch.Tensor,
                            xq: torch.Tensor, yq: torch.Tensor, coef: torch.Tensor,
                            active: list[tuple[int, ...]], beta: float, feedback: str):
    """Run the inner loop and return (query CE ``[P]``, final Net, dCE_sum/dcoef ``[P, L, R]``).

    x ``[P, T, n_0]``, labels ``[P, T]``, xq ``[P, Q, n_0]``, yq ``[P, Q]``; coef ``[P, L, R]``
    are the per-layer coefficients (theta times mask). Members with a non-finite query
    loss get a zero adjoint (their gradients are discarded by the caller anyway).
    """
    L = net.n_layers
    n_out = net.W[-1].shape[1]
    onehot = F.one_hot(labels, n_out).to(x.dtype)
    ons = [set(a) for a in active]
    need_e0 = any(r in USES_PRE_ERROR for r in ons[0])
    R = coef.shape[2]
    kc = [[coef[:, l, r : r + 1] for r in range(R)] for l in range(L)]  # sliced once: [P, 1]
    W = list(net.W)
    tape = []
    for t in range(x.shape[1]):
        ys, zs, ds = [x[:, t]], [None], [None]
        for l in range(1, L + 1):
            z = _mv(W[l - 1], ys[-1])
            zs.append(z)
            if l < L:
                ds.append(torch.sigmoid(beta * z))
                ys.append(softplus(z, beta))
            else:
                ys.append(torch.softmax(z, -1))
        es = [None] * (L + 1)
        backs = [None] * (L + 1)
        es[L] = ys[L] - onehot[:, t]
        for l in range(L, 0, -1):
            if l == 1 and not need_e0:
                break
            Bl = W[l - 1] if feedback == "sym" else net.Bf[l - 1]
            backs[l - 1] = _mtv(Bl, es[l])
            d = ds[l - 1] if l > 1 else 1.0 - torch.exp(-beta * ys[0])
            es[l - 1] = backs[l - 1] * d
        saved = []
        newW = []
        for l in range(1, L + 1):
            w, s = _update(W[l - 1], kc[l - 1], ons[l - 1], es[l], es[l - 1], ys[l],
                           ys[l - 1], zs[l])
            newW.append(w)
            saved.append(s)
        tape.append((ys, zs, ds, es, backs, saved))
        W = newW

    # query loss and its gradient with respect to the final weights (small: autograd)
    with torch.enable_grad():
        Wf = [w.detach().requires_grad_(True) for w in W]
        h = xq
        for l in range(1, L + 1):
            h = torch.matmul(Wf[l - 1], h.transpose(1, 2)).transpose(1, 2)
            if l < L:
                h = softplus(h, beta)
        ce = F.cross_entropy(h.reshape(-1, n_out), yq.reshape(-1), reduction="none")
        ce = ce.view(x.shape[0], -1).mean(1)
        finite = torch.isfinite(ce)
        G = list(torch.autograd.grad(torch.where(finite, ce, torch.zeros_like(ce)).sum(), Wf))
    G = [g.contiguous() for g in G]

    cg: list[dict[int, torch.Tensor]] = [{} for _ in range(L)]  # per layer: term -> [P, 1]
    for t in range(x.shape[1] - 1, -1, -1):
        ys, zs, ds, es, backs, saved = tape[t]
        ybar = [torch.zeros_like(y) for y in ys]
        ebar = [None if e is None else torch.zeros_like(e) for e in es]
        zbar = [None] + [torch.zeros_like(z) for z in zs[1:]]
        rights_u = []
        for l in range(1, L + 1):
            s, on = saved[l - 1], ons[l - 1]
            qbar = ebar[l - 1] if ebar[l - 1] is not None else torch.zeros_like(ys[l - 1])
            rights_u.append(_update_adjoint(
                G[l - 1], s, kc[l - 1], on, es[l], es[l - 1], ys[l], ys[l - 1], zs[l],
                cg[l - 1], ebar[l], qbar, ybar[l], ybar[l - 1], zbar[l]))
        # error chain e_{l-1} = (B_l^T e_l) * d_{l-1}, reversed from e_0 upwards
        for l in range(1, L + 1):
            if es[l - 1] is None:
                continue
            Bl = saved[l - 1].W if feedback == "sym" else net.Bf[l - 1]
            d = ds[l - 1] if l > 1 else None
            dd = ebar[l - 1] * (d if d is not None else 1.0 - torch.exp(-beta * ys[0]))
            ebar[l] += _mv(Bl, dd)
            if d is not None:  # d = sigmoid(beta z): dd/dz = beta d (1 - d)
                zbar[l - 1] += ebar[l - 1] * backs[l - 1] * beta * d * (1.0 - d)
        ybar[L] += ebar[L]  # e_L = y_L - target
        # forward chain, top down
        for l in range(L, 0, -1):
            if l == L:
                y = ys[L]
                zbar[L] += y * (ybar[L] - _dot(ybar[L], y))
            else:
                zbar[l] += ybar[l] * ds[l]  # softplus' = sigmoid(beta z)
            s = saved[l - 1]
            if l > 1:
                ybar[l - 1] += _mtv(s.W, zbar[l])
            # dLoss/dW_t = kappa G + zbar p^T + u (vbar + s7bar q)^T
            Gl = G[l - 1]
            if DECAY in ons[l - 1]:
                Gl.mul_(1.0 - kc[l - 1][DECAY].unsqueeze(2))
            left, right = [zbar[l]], [ys[l - 1]]
            if rights_u[l - 1] is not None:
                left.append(ys[l])
                right.append(rights_u[l - 1])
            Gl.baddbmm_(torch.stack(left, 2), torch.stack(right, 1))
    grad = torch.zeros_like(coef)
    for l in range(L):
        for r, val in cg[l].items():
            grad[:, l, r] = val.squeeze(1)
    return ce, Net(W=W, Bf=net.Bf, D=net.D), grad
