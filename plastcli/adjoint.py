"""A hand-written reverse pass for the unrolled inner loop (the fast meta-gradient).

Autograd through 250 online steps builds ~150 small graph nodes per step and keeps a
full copy of every weight matrix per step. This module instead

- runs the inner loop without autograd, updating each ``W_l`` in place and keeping
  only the step's small vectors (activations, errors, the update's two factors);
- walks back through the steps, rebuilding ``W_t`` from ``W_{t+1}`` by subtracting the
  same rank-few update that was added (exact algebra; float rounding only adds up, it
  is never amplified), while the adjoint ``G_l = dLoss/dW_l`` is updated in place by
  rank-few corrections;
- sums the coefficient gradients once at the end from the stacked per-step vectors.

So the working set is two matrices per layer (W and G), which stays in cache, rather
than 250 copies of the network.

Supported: forward rules with any pool terms and per-layer masks, feedback ``fixed``
or ``sym`` with B = W by value (the default). Anything else (plastic feedback,
gradient through the symmetric feedback path) uses autograd; ``tests/test_adjoint.py``
checks this module against autograd for every term.

Shapes: vectors are rows ``[P, 1, n]`` (online, one sample per member) so that every
matrix-vector product is one ``bmm`` with no reshaping; matrices ``[P, n, m]``;
coefficients ``[P, L, R]``, sliced once into ``[P, 1, 1]`` views.
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

A_TERMS = frozenset({PSEUDO, SUM_POST, QUAD2, ERR_HEBB})  # left factor e_l
B_TERMS = frozenset({POST_PRE_ERR, QUAD1, QUAD3, OJA})  # left factor y_l
ALPHA_CHAIN = frozenset({SUM_POST, QUAD2})  # alpha depends on the state
GAMMA_TERMS = frozenset({POST_PRE_ERR, QUAD1, QUAD3})
# With decay the rebuild divides by (1 - c_decay); below this factor the layer keeps
# a copy per step instead, so rounding is never amplified by more than 2x per step.
MIN_REBUILD_FACTOR = 0.5


def supported(feedback: str, has_feedback_rule: bool, sym_detach: bool) -> bool:
    return not has_feedback_rule and (feedback == "fixed" or (feedback == "sym" and sym_detach))


def _dot(a, b):  # rows [P, 1, n] x [P, 1, n] -> [P, 1, 1]
    return (a * b).sum(-1, keepdim=True)


def _add(acc, val):
    """acc + val where acc may be None (no contribution yet); adds in place otherwise."""
    return val if acc is None else acc.add_(val)


def _col(v):  # row [P, 1, n] -> column view [P, n, 1]
    return v.transpose(1, 2)


class _Coefs:
    """One layer's coefficients: ``c[r]`` and ``neg[r] = -c[r]``, ``[P, 1, 1]`` each."""

    def __init__(self, coef_l: torch.Tensor, on: frozenset[int]):
        P = coef_l.shape[0]
        self.on = on
        self.c = {r: coef_l[:, r].view(P, 1, 1) for r in on}
        self.neg = {r: -v for r, v in self.c.items()}
        self.kappa = 1.0 - self.c[DECAY] if DECAY in on else None


class _Saved:
    """What one layer's update at one step keeps for the reverse pass (all small)."""

    __slots__ = ("a", "b", "ones", "s6", "s7", "s9", "alpha", "gamma", "Wq", "v", "W")


def _update(W, k: _Coefs, g, q, u, p, z, keep_copy: bool) -> _Saved:
    """Apply one layer's rule in place: W <- kappa W + e_l a^T + y_l b^T + 1 c^T.

    g = e_l, u = y_l, z = z_l ``[P, 1, n]``; q = e_{l-1}, p = y_{l-1} ``[P, 1, m]``.
    a = -alpha p - c_err_hebb q, alpha = c_pseudo + c_sum_post s6 + c_quad2 s7;
    b = -gamma q + c_oja (p - W^T u), gamma = c_post_pre + c_quad1 s7 + c_quad3 s9;
    c = -c_ones q (SPEC §3.1, grouped as in rules.apply_rule).
    """
    on, c, neg = k.on, k.c, k.neg
    s = _Saved()
    s.W = W.clone() if keep_copy else None
    s.s6 = u.sum(-1, keepdim=True) if SUM_POST in on else None
    s.Wq = torch.bmm(q, W.transpose(1, 2)) if on & {QUAD1, QUAD2} else None
    s.s7 = _dot(u, s.Wq) if s.Wq is not None else None
    s.s9 = _dot(g, z) if QUAD3 in on else None
    s.v = torch.bmm(u, W) if OJA in on or s.s7 is not None else None  # W^T u
    s.alpha = s.gamma = s.a = s.b = s.ones = None
    if on & A_TERMS:
        alpha = c.get(PSEUDO)
        for r, f in ((SUM_POST, s.s6), (QUAD2, s.s7)):
            if r in on:
                alpha = c[r] * f if alpha is None else alpha + c[r] * f
        s.alpha = alpha
        a = None if alpha is None else -(alpha * p)
        if ERR_HEBB in on:
            a = neg[ERR_HEBB] * q if a is None else a.addcmul_(neg[ERR_HEBB], q)
        s.a = a
    if on & B_TERMS:
        gamma = c.get(POST_PRE_ERR)
        for r, f in ((QUAD1, s.s7), (QUAD3, s.s9)):
            if r in on:
                gamma = c[r] * f if gamma is None else gamma + c[r] * f
        s.gamma = gamma
        b = None if gamma is None else -(gamma * q)
        if OJA in on:
            oja = (p - s.v).mul_(c[OJA])
            b = oja if b is None else b.add_(oja)
        s.b = b
    if ONES_PRE_ERR in on:
        s.ones = neg[ONES_PRE_ERR] * q
    if k.kappa is not None:
        W.mul_(k.kappa)
    if s.a is not None:
        W.addcmul_(_col(g), s.a)
    if s.b is not None:
        W.addcmul_(_col(u), s.b)
    if s.ones is not None:
        W.add_(s.ones)  # 1 c^T adds the row c to every row
    return s


def _restore(W, k: _Coefs, s: _Saved, g, u) -> None:
    """Undo :func:`_update` in place: W_{t+1} -> W_t (same operations, reverse order)."""
    if s.W is not None:
        W.copy_(s.W)
        return
    if s.ones is not None:
        W.sub_(s.ones)
    if s.b is not None:
        W.addcmul_(_col(u), s.b, value=-1.0)
    if s.a is not None:
        W.addcmul_(_col(g), s.a, value=-1.0)
    if k.kappa is not None:
        W.div_(k.kappa)


class _Adjoints:
    """Vector adjoints of one step: ``ybar[l]``, ``ebar[l]``, ``zbar[l]`` (None = zero)."""

    def __init__(self, L: int):
        self.y = [None] * (L + 1)
        self.e = [None] * (L + 1)
        self.z = [None] * (L + 1)


def _update_adjoint(G, W, k: _Coefs, s: _Saved, l: int, g, q, u, p, z, adj: _Adjoints,
                    bars: dict[str, list]) -> torch.Tensor | None:
    """Reverse of one layer's update, given G = dLoss/dW_{t+1} and W = W_t (restored).

    Adds to the vector adjoints in ``adj`` and returns the right factor ``r`` of the part
    of dLoss/dW_t that comes through the update's own W-dependence, ``y_l r^T``
    (oja's W^T u, quad's u^T W q), or None. The adjoints of the update's factors
    (``abar = G^T e_l``, ``bbar = G^T y_l``, ``cbar = G^T 1``) and decay's coefficient
    gradient are appended to ``bars`` for :func:`_coefficient_grads`.
    """
    on, c, neg = k.on, k.c, k.neg
    Gt = G.transpose(1, 2)
    s7bar = s9bar = r = None
    if s.a is not None:
        abar = torch.bmm(g, G)
        bars["abar"].append(abar)
        adj.e[l] = _add(adj.e[l], torch.bmm(s.a, Gt))  # G a
        if s.alpha is not None:
            adj.y[l - 1] = _add(adj.y[l - 1], -(s.alpha * abar))
        if ERR_HEBB in on:
            adj.e[l - 1] = _add(adj.e[l - 1], neg[ERR_HEBB] * abar)
        if on & ALPHA_CHAIN:
            alphabar = -_dot(abar, p)
            if SUM_POST in on:  # d s6 / d u = 1
                adj.y[l] = _add(adj.y[l], torch.zeros_like(u).add_(alphabar * c[SUM_POST]))
            if QUAD2 in on:
                s7bar = alphabar * c[QUAD2]
    if s.b is not None:
        bbar = torch.bmm(u, G)
        bars["bbar"].append(bbar)
        adj.y[l] = _add(adj.y[l], torch.bmm(s.b, Gt))  # G b
        if s.gamma is not None:
            adj.e[l - 1] = _add(adj.e[l - 1], -(s.gamma * bbar))
            if on & {QUAD1, QUAD3}:
                gammabar = -_dot(bbar, q)
                if QUAD1 in on:
                    t = gammabar * c[QUAD1]
                    s7bar = t if s7bar is None else s7bar.add_(t)
                if QUAD3 in on:
                    s9bar = gammabar * c[QUAD3]
        if OJA in on:  # b gains c (p - v) with v = W^T u, so vbar = -c bbar
            adj.y[l - 1] = _add(adj.y[l - 1], c[OJA] * bbar)
            r = neg[OJA] * bbar
            adj.y[l] = _add(adj.y[l], torch.bmm(r, W.transpose(1, 2)))  # W vbar
    if s.ones is not None:
        cbar = G.sum(1, keepdim=True)  # G^T 1
        bars["cbar"].append(cbar)
        adj.e[l - 1] = _add(adj.e[l - 1], neg[ONES_PRE_ERR] * cbar)
    if DECAY in on:
        bars["decay"].append(-(G * W).sum((1, 2)))
    if s9bar is not None:  # s9 = e_l . z_l
        adj.e[l] = _add(adj.e[l], s9bar * z)
        adj.z[l] = _add(adj.z[l], s9bar * g)
    if s7bar is not None:  # s7 = y_l^T W e_{l-1}: also gives y_l (s7bar e_{l-1})^T
        adj.y[l] = _add(adj.y[l], s7bar * s.Wq)
        adj.e[l - 1] = _add(adj.e[l - 1], s7bar * s.v)
        r = s7bar * q if r is None else r.addcmul_(s7bar, q)
    return r


def _coefficient_grads(bars: list[dict[str, list]], tape: list, coefs: list[_Coefs],
                       like: torch.Tensor) -> torch.Tensor:
    """dLoss/dcoef ``[P, L, R]`` (like ``like``) from the per-step vectors, stacked once.

    ``bars[l]`` holds the reverse pass's per-step adjoints in forward order; the forward
    quantities (p = y_{l-1}, q = e_{l-1}, v = W^T y_l, s6, s7, s9) come from ``tape``.
    """
    grad = torch.zeros_like(like)

    def fwd(l, pick):  # [P, T, n] (rows) or [P, T] (scalars) over the steps
        out = torch.cat([pick(step, l) for step in tape], 1)
        return out.squeeze(-1) if out.shape[-1] == 1 and pick in SCALARS else out

    def p_of(step, l):
        return step[0][l]

    def q_of(step, l):
        return step[3][l]

    def s6_of(step, l):
        return step[5][l].s6

    def s7_of(step, l):
        return step[5][l].s7

    def s9_of(step, l):
        return step[5][l].s9

    def v_of(step, l):
        return step[5][l].v

    SCALARS = (s6_of, s7_of, s9_of)
    for l, (k, b) in enumerate(zip(coefs, bars, strict=True)):
        on = k.on
        if b["abar"]:
            abar = torch.cat(b["abar"], 1)
            alphabar = -(abar * fwd(l, p_of)).sum(-1)  # [P, T]
            if PSEUDO in on:
                grad[:, l, PSEUDO] = alphabar.sum(1)
            if SUM_POST in on:
                grad[:, l, SUM_POST] = (alphabar * fwd(l, s6_of)).sum(1)
            if QUAD2 in on:
                grad[:, l, QUAD2] = (alphabar * fwd(l, s7_of)).sum(1)
            if ERR_HEBB in on:
                grad[:, l, ERR_HEBB] = -(abar * fwd(l, q_of)).sum((1, 2))
        if b["bbar"]:
            bbar = torch.cat(b["bbar"], 1)
            if on & GAMMA_TERMS:
                gammabar = -(bbar * fwd(l, q_of)).sum(-1)
                if POST_PRE_ERR in on:
                    grad[:, l, POST_PRE_ERR] = gammabar.sum(1)
                if QUAD1 in on:
                    grad[:, l, QUAD1] = (gammabar * fwd(l, s7_of)).sum(1)
                if QUAD3 in on:
                    grad[:, l, QUAD3] = (gammabar * fwd(l, s9_of)).sum(1)
            if OJA in on:
                grad[:, l, OJA] = (bbar * (fwd(l, p_of) - fwd(l, v_of))).sum((1, 2))
        if b["cbar"]:
            cbar = torch.cat(b["cbar"], 1)
            grad[:, l, ONES_PRE_ERR] = -(cbar * fwd(l, q_of)).sum((1, 2))
        if b["decay"]:
            grad[:, l, DECAY] = torch.stack(b["decay"], 1).sum(1)
    return grad


def _query_loss_and_grad(W: list[torch.Tensor], xq, yq, beta: float, n_out: int):
    """Query CE ``[P]`` and its gradient with respect to the final weights (small: autograd).

    Members with a non-finite loss get a zero gradient (the caller discards them).
    """
    with torch.enable_grad():
        Wf = [w.detach().requires_grad_(True) for w in W]
        h = xq
        for l in range(1, len(W) + 1):
            h = torch.matmul(Wf[l - 1], h.transpose(1, 2)).transpose(1, 2)
            if l < len(W):
                h = softplus(h, beta)
        ce = F.cross_entropy(h.reshape(-1, n_out), yq.reshape(-1), reduction="none")
        ce = ce.view(xq.shape[0], -1).mean(1)
        finite = torch.isfinite(ce)
        G = torch.autograd.grad(torch.where(finite, ce, torch.zeros_like(ce)).sum(), Wf)
    return ce.detach(), [g.contiguous() for g in G]


@torch.no_grad()
def meta_loss_and_coef_grad(net: Net, x: torch.Tensor, labels: torch.Tensor,
                            xq: torch.Tensor, yq: torch.Tensor, coef: torch.Tensor,
                            active: list[tuple[int, ...]], beta: float, feedback: str):
    """Run the inner loop and return (query CE ``[P]``, final Net, dCE_sum/dcoef ``[P, L, R]``).

    x ``[P, T, n_0]``, labels ``[P, T]``, xq ``[P, Q, n_0]``, yq ``[P, Q]``; coef ``[P, L, R]``
    are the per-layer coefficients (theta times mask). ``net`` is not modified.
    """
    P, T, _ = x.shape
    L = net.n_layers
    R = coef.shape[2]
    n_out = net.W[-1].shape[1]
    ons = [frozenset(a) for a in active]
    need_e0 = bool(ons[0] & USES_PRE_ERROR)
    coefs = [_Coefs(coef[:, l], ons[l]) for l in range(L)]
    keep = [k.kappa is not None and bool((k.kappa.abs() < MIN_REBUILD_FACTOR).any())
            for k in coefs]
    xs = x.unsqueeze(2).unbind(1)  # T rows [P, 1, n_0]
    targets = F.one_hot(labels, n_out).to(x.dtype).unsqueeze(2).unbind(1)
    d0s = (1.0 - torch.exp(-beta * x)).unsqueeze(2).unbind(1) if need_e0 else None
    W = [w.clone() for w in net.W]  # updated in place, then rebuilt backwards
    Wt = [w.transpose(1, 2) for w in W]
    B = W if feedback == "sym" else list(net.Bf)
    Bt = [b.transpose(1, 2) for b in B]

    tape = []  # per step: (ys, zs, ds, es, hs, saved); hs[l] = back_l * sigma''(z_l)
    for t in range(T):
        ys, zs, ds = [xs[t]], [None], [None]
        for l in range(1, L + 1):
            z = torch.bmm(ys[-1], Wt[l - 1])
            zs.append(z)
            if l < L:
                ds.append(torch.sigmoid(z * beta))
                ys.append(softplus(z, beta))
            else:
                ys.append(torch.softmax(z, -1))
        es = [None] * (L + 1)
        hs = [None] * (L + 1)
        es[L] = ys[L] - targets[t]
        for l in range(L, 0, -1):
            if l == 1 and not need_e0:
                break
            back = torch.bmm(es[l], B[l - 1])  # (B_l^T e_l)^T
            d = ds[l - 1] if l > 1 else d0s[t]
            es[l - 1] = back * d
            if l > 1:  # d e_{l-1} / d z_{l-1} = back * beta d (1 - d)
                hs[l - 1] = back.mul_(beta * d * (1.0 - d))
        saved = [_update(W[l - 1], coefs[l - 1], es[l], es[l - 1], ys[l], ys[l - 1], zs[l],
                         keep[l - 1]) for l in range(1, L + 1)]
        tape.append((ys, zs, ds, es, hs, saved))
    final_W = [w.clone() for w in W]

    ce, G = _query_loss_and_grad(W, xq, yq, beta, n_out)
    bars = [{"abar": [], "bbar": [], "cbar": [], "decay": []} for _ in range(L)]
    for t in range(T - 1, -1, -1):
        ys, zs, ds, es, hs, saved = tape[t]
        adj = _Adjoints(L)
        rights = []
        for l in range(1, L + 1):
            k, s = coefs[l - 1], saved[l - 1]
            _restore(W[l - 1], k, s, es[l], ys[l])
            rights.append(_update_adjoint(G[l - 1], W[l - 1], k, s, l, es[l], es[l - 1],
                                          ys[l], ys[l - 1], zs[l], adj, bars[l - 1]))
        # error chain e_{l-1} = (B_l^T e_l) * d_{l-1}, reversed from e_0 upwards
        for l in range(1, L + 1):
            ebar = adj.e[l - 1]
            if es[l - 1] is None or ebar is None:
                continue
            d = ds[l - 1] if l > 1 else d0s[t]
            adj.e[l] = _add(adj.e[l], torch.bmm(ebar * d, Bt[l - 1]))
            if l > 1:
                adj.z[l - 1] = _add(adj.z[l - 1], ebar * hs[l - 1])
        if adj.e[L] is not None:  # e_L = y_L - target
            adj.y[L] = _add(adj.y[L], adj.e[L])
        # forward chain, top down; then dLoss/dW_t = kappa G + zbar p^T + y_l r^T
        for l in range(L, 0, -1):
            ybar = adj.y[l]
            if ybar is not None:
                if l == L:  # y_L = softmax(z_L)
                    zbar = ys[L] * (ybar - _dot(ybar, ys[L]))
                else:  # softplus' = sigmoid(beta z)
                    zbar = ybar * ds[l]
                adj.z[l] = _add(adj.z[l], zbar)
            zbar = adj.z[l]
            if zbar is not None and l > 1:
                adj.y[l - 1] = _add(adj.y[l - 1], torch.bmm(zbar, W[l - 1]))
            Gl = G[l - 1]
            if coefs[l - 1].kappa is not None:
                Gl.mul_(coefs[l - 1].kappa)
            if zbar is not None:
                Gl.addcmul_(_col(zbar), ys[l - 1])
            if rights[l - 1] is not None:
                Gl.addcmul_(_col(ys[l]), rights[l - 1])
    for b in bars:  # collected newest-first
        for v in b.values():
            v.reverse()
    # the tape's layer index for p, q is l (ys[l], es[l] of layer l+1's inputs)
    grad = _coefficient_grads(bars, tape, coefs, coef)
    return ce, Net(W=final_W, Bf=net.Bf, D=net.D), grad
