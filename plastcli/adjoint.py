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
(:mod:`plastcli.input_layer`), and populations of 8 or more are split across single-threaded
processes (:mod:`plastcli.workers`).

Shapes: vectors are rows ``[P, 1, n]`` (online, one sample per member) so that every
matrix-vector product is one ``bmm`` with no reshaping; matrices ``[P, n, m]``;
coefficients ``[P, L, R]``, sliced once into ``[P, 1, 1]`` views.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from plastcli import input_layer, terms, workers
from plastcli.network import Net, softplus
from plastcli.terms import BUILTIN_POOL, Pool

# With decay the rebuild divides by (1 - c_decay); below this factor the layer keeps
# a copy per step instead, so rounding is never amplified by more than 2x per step.
MIN_REBUILD_FACTOR = 0.5
# Layers with fewer weights per member than this apply their updates at once.
MIN_DEFER_SIZE = 50_000
# Bytes of W, B and G the members of one CPU group may hold (see group_size): with
# more, every pass over the weights goes to main memory (measured on the 2-core
# benchmark machine: bio.yaml runs fastest per member in groups of 8, 6.4 MiB of weights).
CACHE_BYTES = 18 * 2**20


def supported(feedback: str, has_feedback_rule: bool, sym_detach: bool) -> bool:
    return not has_feedback_rule and (feedback == "fixed" or (feedback == "sym" and sym_detach))


def _dot(a, b):  # rows [P, 1, n] x [P, 1, n] -> [P, 1, 1]
    return (a * b).sum(-1, keepdim=True)


def _add(acc, val):
    """acc + val where acc may be None (no contribution yet); adds in place otherwise."""
    return val if acc is None else acc.add_(val)


def _addmul(acc, a, b, value: float = 1.0):
    """acc + value * a * b (one operation when acc exists); acc may be None."""
    if acc is None:
        out = torch.mul(a, b)
        return out if value == 1.0 else out.mul_(value)
    return acc.addcmul_(a, b, value=value)


def _col(v):  # row [P, 1, n] -> column view [P, n, 1]
    return v.transpose(1, 2)


class _LowRank:
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


class _Coefs:
    """One layer's coefficients: ``c[r]`` and ``neg[r] = -c[r]``, ``[P, 1, 1]`` each, and
    the layer's :class:`~plastcli.terms.LayerPlan` (its active terms, grouped)."""

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


class _Saved:
    """What one layer's update at one step keeps for the reverse pass (all small):
    the scalars ``scal`` by kind, ``Wq = (W e_{l-1})^T``, ``v = (W^T y_l)^T``, the group
    multipliers ``K`` by group key and the right factors ``R`` by left factor."""

    __slots__ = ("scal", "K", "R", "Wq", "v", "W", "lefts", "cols", "rights", "ucol")

    def set_factors(self, vec: dict, plan: terms.LayerPlan) -> None:
        """The update's rank-one terms in the order applied: left rows ``lefts``, their
        column views ``cols`` (made once, reused by the reverse pass) and ``rights``."""
        self.lefts = [vec[a] for a in plan.left_names]
        self.rights = [self.R[a] for a in plan.left_names]
        self.cols = [_col(lf) for lf in self.lefts]
        names = plan.left_names
        self.ucol = self.cols[names.index(terms.Y_POST)] if terms.Y_POST in names else None


def _vectors(g, q, u, p, ones, ones_pre) -> dict:
    """The local vectors of one layer by factor name (rows ``[P, 1, n]``)."""
    return {terms.E_POST: g, terms.Y_POST: u, terms.ONES: ones, terms.Y_PRE: p, terms.E_PRE: q,
            ("pre", terms.ONES): ones_pre}


def _right_vec(vec: dict, b: str):
    return vec[("pre", terms.ONES)] if b == terms.ONES else vec[b]


def _update(M: _LowRank, k: _Coefs, g, q, u, p, z, ones, ones_pre, keep_copy: bool) -> _Saved:
    """Apply one layer's rule: W <- kappa W + sum_a a (R_a)^T (M holds W).

    g = e_l, u = y_l, z = z_l, ones ``[P, 1, n]``; q = e_{l-1}, p = y_{l-1}, ones_pre
    ``[P, 1, m]``. R_a = sum over the groups of left a of K b, K = sign sum_r c_r s_r, with
    b = p, q, ones or p - W^T u (grouped as in rules.apply_rule, :func:`plastcli.terms.plan`).
    """
    plan = k.plan
    s = _Saved()
    s.W = M.base.clone() if keep_copy else None
    sc = {}
    if terms.S_SUM in plan.scalars:
        sc[terms.S_SUM] = u.sum(-1, keepdim=True)
    s.Wq = M.times_T(q) if terms.S_YME in plan.scalars else None  # (W e_{l-1})^T
    if s.Wq is not None:
        sc[terms.S_YME] = _dot(u, s.Wq)
    if terms.S_EMY in plan.scalars:
        sc[terms.S_EMY] = _dot(g, z)
    s.v = M.times(u) if plan.needs_v else None  # (W^T y_l)^T
    s.scal, s.K, s.R = sc, {}, {}
    vec = _vectors(g, q, u, p, ones, ones_pre)
    for a, groups in plan.lefts:
        R = None
        for grp in groups:
            K = s.K[grp.key] = k.group_coef(grp, sc)
            if grp.b == terms.OJA_PRE:
                t = (p - s.v).mul_(K)
                R = t if R is None else R.add_(t)
            else:
                bv = _right_vec(vec, grp.b)
                R = torch.mul(K, bv) if R is None else R.addcmul_(K, bv)
        s.R[a] = R
    if k.kappa is not None:  # decay layers never defer (cap 0), so base is W itself
        M.base.mul_(k.kappa)
    s.set_factors(vec, plan)
    M.add(s.cols, s.rights)
    return s


def _restore(M: _LowRank, k: _Coefs, s: _Saved) -> None:
    """Undo :func:`_update`: W_{t+1} -> W_t. M has sign -1; same terms, reverse order."""
    if s.W is not None:
        M.base.copy_(s.W)
        return
    M.add(s.cols[::-1], s.rights[::-1])
    if k.kappa is not None:
        M.base.div_(k.kappa)


class _Adjoints:
    """Vector adjoints of one step: ``ybar[l]``, ``ebar[l]``, ``zbar[l]`` (None = zero)."""

    def __init__(self, L: int):
        self.y = [None] * (L + 1)
        self.e = [None] * (L + 1)
        self.z = [None] * (L + 1)


def _update_adjoint(G: _LowRank, W: _LowRank, k: _Coefs, s: _Saved, l: int, g, q, u, p, z,
                    ones, ones_pre, adj: _Adjoints, bars: dict[str, list],
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
    vec = _vectors(g, q, u, p, ones, ones_pre)
    sbar: dict[str, torch.Tensor] = {}  # adjoints of y_l^T W e_{l-1} and e_l^T W y_{l-1}
    r = None  # vbar's negation (v = W^T u), then also the quadratic scalar's W part
    for a, groups in plan.lefts:
        xbar = G.times(vec[a], known.get(("bar", a)))  # G^T a
        bars[a].append(xbar)
        if a != terms.ONES:  # rows taken from a chunk product are read once each: in-place is safe
            acc = adj_left[a]
            acc[l] = _add(acc[l], G.times_T(s.R[a], known.get(("GR", a))))  # G R_a
        for grp in groups:
            if grp.b == terms.ONES:
                continue
            K = s.K[grp.key]
            acc = adj_right[grp.b]
            acc[l - 1] = _addmul(acc[l - 1], K, xbar)
            if grp.b == terms.OJA_PRE:  # R gains K (p - v) with v = W^T u, so vbar = -K xbar
                nK = k.const(grp)[1] if grp.constant else -K
                r = torch.mul(nK, xbar) if r is None else r.addcmul_(nK, xbar)
        for grp in groups:  # K = sign sum_r c_r s_r: the chain into the scalars s
            if grp.constant or all(sk == terms.S_ONE for _, sk in grp.members):
                continue
            if grp.b == terms.OJA_PRE:
                kbar = _dot(xbar, p) - _dot(xbar, s.v)
            elif grp.b == terms.ONES:
                kbar = xbar.sum(-1, keepdim=True)
            else:
                kbar = _dot(xbar, vec[grp.b])
            kbar = -kbar if grp.sign < 0 else kbar
            for rr, sk in grp.members:
                if sk == terms.S_ONE:
                    continue
                t = kbar * c[rr]
                if sk == terms.S_SUM:  # d (1^T y_l) / d y_l = 1
                    adj.y[l] = _add(adj.y[l], torch.zeros_like(u).add_(t))
                else:
                    sbar[sk] = t if sk not in sbar else sbar[sk].add_(t)
    if plan.decay is not None:  # decay layers never defer (cap 0): both bases are the matrices
        bars["decay"].append(-(G.base * W.base).sum((1, 2)))
    if r is not None:
        adj.y[l] = _add(adj.y[l], W.times_T(r))  # W vbar
    if terms.S_EMY in sbar:  # e_l . z_l
        s9bar = sbar[terms.S_EMY]
        adj.e[l] = _addmul(adj.e[l], s9bar, z)
        adj.z[l] = _addmul(adj.z[l], s9bar, g)
    if terms.S_YME in sbar:  # y_l^T W e_{l-1}: also gives y_l (s7bar e_{l-1})^T
        s7bar = sbar[terms.S_YME]
        adj.y[l] = _addmul(adj.y[l], s7bar, s.Wq)
        adj.e[l - 1] = _addmul(adj.e[l - 1], s7bar, s.v)
        r = s7bar * q if r is None else r.addcmul_(s7bar, q)
    return r


class _ChunkReads:
    """Products of G's base with the known factors of a whole chunk of steps.

    In the reverse pass G_{t+1} = G_base + (pending terms of later steps in the chunk);
    the factors (left a, right R_a) of every step were fixed by the forward pass, so
    ``[a...] G_base`` and ``[R_a...] G_base^T`` (a != ones) for all steps of the chunk are
    two GEMMs; each step then adds only its thin pending-term correction.
    """

    def __init__(self, G: _LowRank, c0: int, steps: list[_Saved], plan: terms.LayerPlan):
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

    def at(self, t: int, s: _Saved) -> dict:
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


def _coefficient_grads(bars: list[dict[str, list]], tape: list, coefs: list[_Coefs],
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


def chunk_steps(P: int, device: torch.device | str) -> int:
    """Steps whose weight updates are deferred and folded in by one GEMM (1 = none).

    On the CPU a population's matrices outgrow the caches and every pass over them costs
    memory bandwidth, so from P = 4 chunks of 16 steps pay for their extra thin products;
    small populations are bound by per-operation overhead and GPUs by kernel launches.
    """
    return 16 if torch.device(device).type == "cpu" and P >= 4 else 1


def group_size(net: Net, device: torch.device | str) -> int:
    """Members run together: on the CPU about as many as keep W, B and G within
    CACHE_BYTES, in groups of even size; on a GPU the whole population."""
    P = net.W[0].shape[0]
    if torch.device(device).type != "cpu":
        return P
    per_member = 3 * sum(w[0].numel() * w.element_size() for w in net.W)
    most = max(1, CACHE_BYTES // per_member)
    n_groups = -(-P // most)
    return -(-P // n_groups)


@torch.no_grad()
def meta_loss_and_coef_grad(net: Net, x: torch.Tensor, labels: torch.Tensor,
                            xq: torch.Tensor, yq: torch.Tensor, coef: torch.Tensor,
                            active: list[tuple[int, ...]], beta: float, feedback: str,
                            chunk: int | None = None, group: int | None = None,
                            processes: int | None = None, pool: Pool = BUILTIN_POOL):
    """Run the inner loop and return (query CE ``[P]``, final Net, dCE_sum/dcoef ``[P, L, R]``).

    x ``[P, T, n_0]``, labels ``[P, T]``, xq ``[P, Q, n_0]``, yq ``[P, Q]``; coef ``[P, L, R]``
    are the per-layer coefficients (theta times mask) of the terms of ``pool``. Members are
    independent, so they are split across ``processes`` single-threaded processes (default
    :func:`plastcli.workers.processes_for`), and within one process run in groups of
    ``group`` (default :func:`group_size`). ``chunk``: see :func:`chunk_steps` (the
    default). Any split and chunk give the same numbers up to float rounding, and a
    given split always the same. ``net`` is not modified.
    """
    P = x.shape[0]
    n_proc = workers.processes_for(P, x.device) if processes is None else processes
    if n_proc > 1:
        calls = [(*_members(net, x, labels, xq, yq, coef, sl), active, beta, feedback, chunk,
                  group, pool) for sl in workers.split(P, n_proc)]
        return _concat(net, workers.run_parts(run_part, calls))
    G = group_size(net, x.device) if group is None else group
    if G >= P:
        return _run_group(net, x, labels, xq, yq, coef, active, beta, feedback, chunk, pool)
    return _concat(net, [_run_group(*_members(net, x, labels, xq, yq, coef, slice(i, i + G)),
                                    active, beta, feedback, chunk, pool)
                         for i in range(0, P, G)])


def run_part(net: Net, x, labels, xq, yq, coef, active, beta: float, feedback: str,
             chunk: int | None, group: int | None, pool: Pool = BUILTIN_POOL) -> tuple:
    """One process's share of :func:`meta_loss_and_coef_grad` (run by plastcli.workers):
    (CE, final weights, coefficient gradient), leaving out the feedback it was given."""
    ce, final, grad = meta_loss_and_coef_grad(net, x, labels, xq, yq, coef, active, beta,
                                              feedback, chunk, group, processes=1, pool=pool)
    return ce, Net(W=final.W, Bf=None), grad


def _members(net: Net, x, labels, xq, yq, coef, sl: slice) -> tuple:
    """The arguments that hold members, restricted to the members ``sl``."""
    sub = Net(W=[w[sl] for w in net.W], Bf=[b[sl] for b in net.Bf] if net.Bf else None)
    return sub, x[sl], labels[sl], xq[sl], yq[sl], coef[sl]


def _concat(net: Net, parts: list[tuple]) -> tuple:
    """Join the (CE, final Net, coefficient gradient) of consecutive member slices."""
    ce = torch.cat([p[0] for p in parts])
    W = [torch.cat([p[1].W[l] for p in parts]) for l in range(net.n_layers)]
    return ce, Net(W=W, Bf=net.Bf, D=net.D), torch.cat([p[2] for p in parts])


@dataclass
class _Setup:
    """What the forward and reverse passes of one group share (fixed for the episode)."""

    L: int
    beta: float
    coefs: list[_Coefs]
    Ks: list[int]  # chunk length per layer (1: updates applied at once)
    keep: list[bool]  # layer keeps weight copies instead of rebuilding (strong decay)
    ones: list  # [P, 1, n_l] rows of ones for layers with a term a = ones, else None
    ones_pre: list  # [P, 1, n_{l-1}] rows of ones for layers with a term b = ones, else None
    d0s: tuple | None  # per step 1 - exp(-beta x_t) [P, 1, n_0] if e_0 is needed
    Bf: list | None  # fixed feedback matrices B_l [P, n_l, n_{l-1}]; None for sym (B = W)
    first: input_layer.InputLayerChunks | None = None  # layer 1 in WY chunks (Oja rules)


def _run_group(net: Net, x, labels, xq, yq, coef, active, beta: float, feedback: str,
               chunk: int | None, pool: Pool = BUILTIN_POOL):
    """:func:`meta_loss_and_coef_grad` for one group of members."""
    P, T, _ = x.shape
    L = net.n_layers
    n_out = net.W[-1].shape[1]
    ons = [frozenset(a) for a in active]
    coefs = [_Coefs(coef[:, l], ons[l], pool) for l in range(L)]
    K = chunk_steps(P, x.device) if chunk is None else chunk
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
    """Per layer, the chunk length whose rank-one terms _LowRank defers (0: none; layer 1
    on the input-layer path defers its own way)."""
    return [k if k > 1 and (l or su.first is None) else 0 for l, k in enumerate(su.Ks)]


def _forward(su: _Setup, W: list[torch.Tensor], x, targets) -> list[tuple]:
    """The inner loop, W updated in place; returns the tape, per step
    (ys, zs, ds, es, hs, saved) with hs[l] = back_l * d_l (1 - d_l)."""
    L, beta, Ks, T = su.L, su.beta, su.Ks, x.shape[1]
    first = su.first
    Mw = [_LowRank(w, 3 * k) for w, k in zip(W, _caps(su), strict=True)]
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
                 else _update(Mw[l - 1], su.coefs[l - 1], es[l], es[l - 1], ys[l], ys[l - 1],
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
    Mw = [_LowRank(w, 3 * k, sign=-1.0) for w, k in zip(W, caps, strict=True)]
    Mg = [_LowRank(g, 2 * k) for g, k in zip(G, caps, strict=True)]
    Bt = None if su.Bf is None else [b.transpose(1, 2) for b in su.Bf]
    reads: list[_ChunkReads | None] = [None] * L
    bars = [{**{a: [] for a in terms.A_FACTORS}, "decay": []} for _ in range(L)]
    for t in range(T - 1, -1, -1):
        ys, zs, ds, es, hs, saved = tape[t]
        adj = _Adjoints(L)
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
            _restore(Mw[l - 1], k, s)
            rights.append(_update_adjoint(Mg[l - 1], Mw[l - 1], k, s, l, es[l], es[l - 1],
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
            adj.e[l] = _add(adj.e[l], back_bar)
            if l > 1:
                adj.z[l - 1] = _addmul(adj.z[l - 1], ebar, hs[l - 1], beta)
        if adj.e[L] is not None:  # e_L = y_L - target
            adj.y[L] = _add(adj.y[L], adj.e[L])
        # forward chain, top down; then dLoss/dW_t = kappa G + zbar p^T + y_l r^T
        for l in range(L, 0, -1):
            ybar = adj.y[l]
            if ybar is not None:
                if l == L:  # y_L = softmax(z_L)
                    zbar = ys[L] * (ybar - _dot(ybar, ys[L]))
                    adj.z[l] = _add(adj.z[l], zbar)
                else:  # softplus' = sigmoid(beta z)
                    adj.z[l] = _addmul(adj.z[l], ybar, ds[l])
            zbar = adj.z[l]
            if zbar is not None and l > 1:
                adj.y[l - 1] = _add(adj.y[l - 1], Mw[l - 1].times(zbar))
            if l == 1 and first is not None:
                first.record_zbar(t, zbar)
                continue
            if coefs[l - 1].kappa is not None:
                Mg[l - 1].base.mul_(coefs[l - 1].kappa)
            cols, rows = [], []
            if zbar is not None:
                cols.append(_col(zbar))
                rows.append(ys[l - 1])
            if rights[l - 1] is not None:
                s = saved[l - 1]
                cols.append(s.ucol if s.ucol is not None else _col(ys[l]))
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
