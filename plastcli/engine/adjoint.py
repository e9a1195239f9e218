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

On the CPU at P >= 4, layer 1 under Oja's term runs in chunks of basis products
(:mod:`plastcli.engine.input_layer`), and populations of 8 or more are split across single-threaded
processes (:mod:`plastcli.engine.workers`).

Shapes: vectors are rows ``[P, 1, n]`` (online, one sample per member) so that every
matrix-vector product is one ``bmm`` with no reshaping; matrices ``[P, n, m]``;
coefficients ``[P, L, R]``, sliced once into ``[P, 1, 1]`` views.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from plastcli.core import terms
from plastcli.core.network import Net, softplus
from plastcli.core.terms import BUILTIN_POOL, Pool
from plastcli.engine import input_layer
from plastcli.engine.lowrank import (
    Adjoints,
    Coefs,
    LowRank,
    Saved,
    add_into,
    addmul_into,
    apply_update,
    column,
    dot_rows,
    restore_update,
    update_adjoint,
)

# With decay the rebuild divides by (1 - c_decay); below this factor the layer keeps
# a copy per step instead, so rounding is never amplified by more than 2x per step.
MIN_REBUILD_FACTOR = 0.5
# Layers with fewer weights per member than this apply their updates at once.
MIN_DEFER_SIZE = 50_000


def supported(feedback: str, has_feedback_rule: bool, sym_detach: bool) -> bool:
    return not has_feedback_rule and (feedback == "fixed" or (feedback == "sym" and sym_detach))


class _ChunkReads:
    """Products of G's base with the known factors of a whole chunk of steps.

    In the reverse pass G_{t+1} = G_base + (pending terms of later steps in the chunk);
    the factors (left a, right R_a) of every step were fixed by the forward pass, so
    ``[a...] G_base`` and ``[R_a...] G_base^T`` (a != ones) for all steps of the chunk are
    two GEMMs; each step then adds only its thin pending-term correction.
    """

    def __init__(self, G: LowRank, c0: int, steps: list[Saved], plan: terms.LayerPlan):
        self.c0 = c0
        self.names_l = plan.left_names
        self.names_r = tuple(a for a in plan.left_names if a != terms.ONES)  # a prefix: ones last
        lefts, rights = [], []
        for s in steps:  # forward order
            lefts += s.lefts
            rights += s.rights[: len(self.names_r)]
        self.nl, self.nr = len(self.names_l), len(self.names_r)
        self.left = torch.bmm(torch.cat(lefts, 1), G.base) if lefts else None
        self.right = torch.bmm(torch.cat(rights, 1), G.base_T) if rights else None
        self.rows = None

    def at(self, t: int, s: Saved) -> dict:
        """The base products of step t: ("bar", a) = a G_base, ("GR", a) = R_a G_base^T."""
        if self.rows is None:  # split once per chunk: one operation, not one per read
            self.rows = (self.left.split(1, 1) if self.left is not None else (),
                         self.right.split(1, 1) if self.right is not None else ())
        i, out = t - self.c0, {}
        for j, a in enumerate(self.names_l):
            out["bar", a] = self.rows[0][i * self.nl + j]
        for j, a in enumerate(self.names_r):
            out["GR", a] = self.rows[1][i * self.nr + j]
        return out


def _coefficient_grads(bars: list[dict[str, list]], tape: list, coefs: list[Coefs],
                       x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """dLoss/dcoef ``[P, L, R]`` (like ``like``) from the per-step vectors, stacked once.

    ``bars[l]`` holds the reverse pass's per-step adjoints in forward order; the forward
    quantities (p = y_{l-1}, q = e_{l-1}, v = W^T y_l, the scalars) come from ``tape``
    (p of layer 1 is the input x ``[P, T, n_0]`` itself). Term r = sign s a b^T gets
    sign sum_t s_t (G^T a)_t . b_t.
    """
    grad = torch.zeros_like(like)

    def dot(a, b):  # [P, T, n] x [P, T, n] -> [P], without a [P, T, n] temporary
        P = a.shape[0]
        return torch.bmm(a.reshape(P, 1, -1), b.reshape(P, -1, 1)).view(P)

    for l, (k, b) in enumerate(zip(coefs, bars, strict=True)):
        if not any(b.values()):  # no term, or layer 1 on the input-layer path
            continue
        cache, kbars = {}, {}

        def fwd(name, l=l, cache=cache):  # [P, T, n] rows, or [P, T] for the scalars
            if name not in cache:
                if name == terms.Y_PRE and l == 0:
                    cache[name] = x
                elif name == terms.OJA_PRE:
                    cache[name] = fwd(terms.Y_PRE) - fwd("v")
                else:
                    pick = {terms.Y_PRE: lambda st: st[0][l], terms.E_PRE: lambda st: st[3][l],
                            "v": lambda st: st[5][l].v}.get(
                        name, lambda st: st[5][l].scal[name])
                    out = torch.cat([pick(st) for st in tape], 1)
                    row = name in (terms.Y_PRE, terms.E_PRE, "v")
                    cache[name] = out if row else out.squeeze(-1)
            return cache[name]

        def bar(a, b=b, cache=cache):
            if ("bar", a) not in cache:
                cache["bar", a] = torch.cat(b[a], 1)
            return cache["bar", a]

        for r, t in k.plan.terms:
            if t.decay:
                grad[:, l, r] = torch.stack(b["decay"], 1).sum(1)
                continue
            X = bar(t.a)
            if t.s == terms.S_ONE:
                if t.b == terms.OJA_PRE:
                    base = dot(X, fwd(terms.Y_PRE)) - dot(X, fwd("v"))
                elif t.b == terms.ONES:
                    base = X.sum((1, 2))
                else:
                    base = dot(X, fwd(t.b))
                grad[:, l, r] = -base if t.sign < 0 else base
                continue
            key = (t.a, t.b, t.sign)
            if key not in kbars:  # d Loss / d K per step [P, T]
                kb = X.sum(-1) if t.b == terms.ONES else (X * fwd(t.b)).sum(-1)
                kbars[key] = -kb if t.sign < 0 else kb
            grad[:, l, r] = (kbars[key] * fwd(t.s)).sum(1)
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


@dataclass
class _Setup:
    """What the forward and reverse passes of one group share (fixed for the episode)."""

    L: int
    beta: float
    coefs: list[Coefs]
    Ks: list[int]  # chunk length per layer (1: updates applied at once)
    keep: list[bool]  # layer keeps weight copies instead of rebuilding (strong decay)
    ones: list  # [P, 1, n_l] rows of ones for layers with a term a = ones, else None
    ones_pre: list  # [P, 1, n_{l-1}] rows of ones for layers with a term b = ones, else None
    d0s: tuple | None  # per step 1 - exp(-beta x_t) [P, 1, n_0] if e_0 is needed
    Bf: list | None  # fixed feedback matrices B_l [P, n_l, n_{l-1}]; None for sym (B = W)
    first: input_layer.InputLayerChunks | None = None  # layer 1 in WY chunks (Oja rules)


def run_group(net: Net, x, labels, xq, yq, coef, active, beta: float, feedback: str,
              chunk: int, pool: Pool = BUILTIN_POOL):
    """:func:`plastcli.engine.parallel.meta_loss_and_coef_grad` for one group of members,
    deferring weight updates in chunks of ``chunk`` steps (1: none; the policy is
    :func:`plastcli.engine.parallel.chunk_steps`)."""
    P, T, _ = x.shape
    L = net.n_layers
    n_out = net.W[-1].shape[1]
    ons = [frozenset(a) for a in active]
    coefs = [Coefs(coef[:, l], ons[l], pool) for l in range(L)]
    K = chunk
    setup = _Setup(
        L=L, beta=beta, coefs=coefs,
        # decay rescales the whole matrix every step, so its layers never defer; small
        # matrices stay in cache anyway and would only pay for the thin products
        Ks=[1 if k.kappa is not None or w[0].numel() < MIN_DEFER_SIZE else K
            for k, w in zip(coefs, net.W, strict=True)],
        keep=[k.kappa is not None and bool((k.kappa.abs() < MIN_REBUILD_FACTOR).any())
              for k in coefs],
        ones=[x.new_ones(P, 1, w.shape[1]) if terms.ONES in k.plan.left_names else None
              for w, k in zip(net.W, coefs, strict=True)],
        ones_pre=[x.new_ones(P, 1, w.shape[2]) if terms.ONES in k.plan.rights else None
                  for w, k in zip(net.W, coefs, strict=True)],
        d0s=(1.0 - torch.exp(-beta * x)).unsqueeze(2).unbind(1)
        if coefs[0].plan.reads_pre_error else None,
        Bf=None if feedback == "sym" else list(net.Bf),
    )
    W = [w.clone() for w in net.W]  # updated in place, then rebuilt backwards
    if setup.Ks[0] > 1 and input_layer.applies(ons[0], feedback, pool):
        setup.first = input_layer.InputLayerChunks(W[0], x, setup.Ks[0], coefs[0].c,
                                                   coefs[0].plan)
    targets = F.one_hot(labels, n_out).to(x.dtype).unsqueeze(2).unbind(1)
    tape = _forward(setup, W, x, targets)
    final_W = [w.clone() for w in W]
    ce, G = _query_loss_and_grad(W, xq, yq, beta, n_out)
    bars = _reverse(setup, W, G, tape)
    grad = _coefficient_grads(bars, tape, coefs, x, coef)
    if setup.first is not None:  # layer 1's were summed chunk by chunk
        for r, g in setup.first.coef_grad.items():
            grad[:, 0, r] = g
    return ce, Net(W=final_W, Bf=net.Bf, D=net.D), grad


def _caps(su: _Setup) -> list[int]:
    """Per layer, the chunk length whose rank-one terms LowRank defers (0: none; layer 1
    on the input-layer path defers its own way)."""
    return [k if k > 1 and (l or su.first is None) else 0 for l, k in enumerate(su.Ks)]


def _forward(su: _Setup, W: list[torch.Tensor], x, targets) -> list[tuple]:
    """The inner loop, W updated in place; returns the tape, per step
    (ys, zs, ds, es, hs, saved) with hs[l] = back_l * d_l (1 - d_l)."""
    L, beta, Ks, T = su.L, su.beta, su.Ks, x.shape[1]
    first = su.first
    Mw = [LowRank(w, 3 * k) for w, k in zip(W, _caps(su), strict=True)]
    xs = x.unsqueeze(2).unbind(1)  # T rows [P, 1, n_0]
    tape = []
    z1_base = None  # the inputs are known in advance: W_1 x_t for a whole chunk is one GEMM
    for t in range(T):
        if Ks[0] > 1 and t % Ks[0] == 0 and first is None:
            z1_base = torch.bmm(x[:, t : t + Ks[0]], Mw[0].base_T)  # [P, K, n_1]
        ys, zs, ds = [xs[t]], [None], [None]
        for l in range(1, L + 1):
            if l == 1 and first is not None:
                z = first.z(t)
            else:
                known = z1_base[:, t % Ks[0] : t % Ks[0] + 1] if l == 1 and Ks[0] > 1 else None
                z = Mw[l - 1].times_T(ys[-1], known)
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
            if l == 1 and su.d0s is None:
                break
            # (B_l^T e_l)^T; sym: B_l = W_l by value
            back = Mw[l - 1].times(es[l]) if su.Bf is None else torch.bmm(es[l], su.Bf[l - 1])
            d = ds[l - 1] if l > 1 else su.d0s[t]
            es[l - 1] = back * d
            if l > 1:  # d e_{l-1} / d z_{l-1} = beta * back * d (1 - d); beta applied in reverse
                hs[l - 1] = torch.ops.aten.sigmoid_backward(back, d)
        saved = [first.update(t, es[1], es[0], ys[1]) if l == 1 and first is not None
                 else apply_update(Mw[l - 1], su.coefs[l - 1], es[l], es[l - 1], ys[l], ys[l - 1],
                              zs[l], su.ones[l - 1], su.ones_pre[l - 1], su.keep[l - 1])
                 for l in range(1, L + 1)]
        tape.append((ys, zs, ds, es, hs, saved))
        for m, k in zip(Mw, Ks, strict=True):
            if (t + 1) % k == 0 or t == T - 1:
                m.fold()
        if first is not None and ((t + 1) % Ks[0] == 0 or t == T - 1):
            first.close()
    return tape


def _reverse(su: _Setup, W: list[torch.Tensor], G: list[torch.Tensor],
             tape: list[tuple]) -> list[dict[str, list]]:
    """Walk back through the tape: W rebuilt and G = dLoss/dW_t updated in place.

    Returns per layer the factor adjoints (G^T a per left factor a) and decay gradients of every
    step, in forward order, for :func:`_coefficient_grads`.
    """
    L, beta, Ks, coefs, T = su.L, su.beta, su.Ks, su.coefs, len(tape)
    first = su.first
    caps = _caps(su)
    Mw = [LowRank(w, 3 * k, sign=-1.0) for w, k in zip(W, caps, strict=True)]
    Mg = [LowRank(g, 2 * k) for g, k in zip(G, caps, strict=True)]
    Bt = None if su.Bf is None else [b.transpose(1, 2) for b in su.Bf]
    reads: list[_ChunkReads | None] = [None] * L
    bars = [{**{a: [] for a in terms.A_FACTORS}, "decay": []} for _ in range(L)]
    for t in range(T - 1, -1, -1):
        ys, zs, ds, es, hs, saved = tape[t]
        adj = Adjoints(L)
        rights = []
        for l in range(1, L + 1):
            k, s, K_l = coefs[l - 1], saved[l - 1], Ks[l - 1]
            if l == 1 and first is not None:
                if t == T - 1 or (t + 1) % K_l == 0:
                    first.top(G[0])
                adj.e[1], adj.y[1], adj.e[0] = first.reverse(t, adj.e[1], adj.y[1])
                rights.append(None)
                continue
            if K_l > 1 and (t == T - 1 or (t + 1) % K_l == 0):  # top of a chunk
                c0 = t - t % K_l
                reads[l - 1] = _ChunkReads(Mg[l - 1], c0, [st[5][l - 1] for st in tape[c0 : t + 1]],
                                           k.plan)
            known = reads[l - 1].at(t, s) if K_l > 1 else {}
            restore_update(Mw[l - 1], k, s)
            rights.append(update_adjoint(Mg[l - 1], Mw[l - 1], k, s, l, es[l], es[l - 1],
                                          ys[l], ys[l - 1], zs[l], su.ones[l - 1],
                                          su.ones_pre[l - 1], adj, bars[l - 1], known))
        # error chain e_{l-1} = (B_l^T e_l) * d_{l-1}, reversed from e_0 upwards
        for l in range(1, L + 1):
            ebar = adj.e[l - 1]
            if es[l - 1] is None or ebar is None:
                continue
            d = ds[l - 1] if l > 1 else su.d0s[t]
            dd = ebar * d
            back_bar = Mw[l - 1].times_T(dd) if Bt is None else torch.bmm(dd, Bt[l - 1])
            adj.e[l] = add_into(adj.e[l], back_bar)
            if l > 1:
                adj.z[l - 1] = addmul_into(adj.z[l - 1], ebar, hs[l - 1], beta)
        if adj.e[L] is not None:  # e_L = y_L - target
            adj.y[L] = add_into(adj.y[L], adj.e[L])
        # forward chain, top down; then dLoss/dW_t = kappa G + zbar p^T + y_l r^T
        for l in range(L, 0, -1):
            ybar = adj.y[l]
            if ybar is not None:
                if l == L:  # y_L = softmax(z_L)
                    zbar = ys[L] * (ybar - dot_rows(ybar, ys[L]))
                    adj.z[l] = add_into(adj.z[l], zbar)
                else:  # softplus' = sigmoid(beta z)
                    adj.z[l] = addmul_into(adj.z[l], ybar, ds[l])
            zbar = adj.z[l]
            if zbar is not None and l > 1:
                adj.y[l - 1] = add_into(adj.y[l - 1], Mw[l - 1].times(zbar))
            if l == 1 and first is not None:
                first.record_zbar(t, zbar)
                continue
            if coefs[l - 1].kappa is not None:
                Mg[l - 1].base.mul_(coefs[l - 1].kappa)
            cols, rows = [], []
            if zbar is not None:
                cols.append(column(zbar))
                rows.append(ys[l - 1])
            if rights[l - 1] is not None:
                s = saved[l - 1]
                cols.append(s.ucol if s.ucol is not None else column(ys[l]))
                rows.append(rights[l - 1])
            Mg[l - 1].add(cols, rows)
        for mg, mw, k in zip(Mg, Mw, Ks, strict=True):
            if t % k == 0:  # bottom of a chunk
                mg.fold()
                mw.fold()
        if first is not None and t % Ks[0] == 0:
            first.bottom(G[0])
    for b in bars:  # collected newest-first
        for v in b.values():
            v.reverse()
    return bars
