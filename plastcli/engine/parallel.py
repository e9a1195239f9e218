"""The population split of the fast meta-gradient, and its policy: members are independent.
On the CPU the fused kernel (:mod:`plastcli.engine.fused`) runs the whole population in one
call, its members shared among threads. On the reference path a population runs across
single-threaded processes (:mod:`plastcli.engine.workers`),
within a process in groups that keep their weights in cache, and on the CPU with deferred
updates in chunks of steps. Any split gives the same numbers up to float rounding.
"""

from __future__ import annotations

import torch

from plastcli.core.network import Net
from plastcli.core.terms import BUILTIN_POOL, Pool
from plastcli.engine import fused, workers
from plastcli.engine.adjoint import run_group

# Bytes of W, B and G the members of one CPU group may hold (see group_size): with
# more, every pass over the weights goes to main memory (measured on the 2-core
# benchmark machine: bio.yaml runs fastest per member in groups of 8, 6.4 MiB of weights).
CACHE_BYTES = 18 * 2**20


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
                            processes: int | None = None, pool: Pool = BUILTIN_POOL,
                            engine: str | None = None, threads: int | None = None):
    """Run the inner loop and return (query CE ``[P]``, final Net, dCE_sum/dcoef ``[P, L, R]``).

    x ``[P, T, n_0]``, labels ``[P, T]``, xq ``[P, Q, n_0]``, yq ``[P, Q]``; coef ``[P, L, R]``
    are the per-layer coefficients (theta times mask) of the terms of ``pool``. Members are
    independent, so they are split across ``processes`` single-threaded processes (default
    :func:`plastcli.engine.workers.processes_for`), and within one process run in groups of
    ``group`` (default :func:`group_size`). ``chunk``: see :func:`chunk_steps` (the
    default). Any split and chunk give the same numbers up to float rounding, and a
    given split always the same. ``net`` is not modified.

    ``engine``: 'fused' (:mod:`plastcli.engine.fused`: the whole population in one call,
    shared among ``threads`` threads, default :func:`plastcli.engine.workers.threads_for`;
    a member's numbers do not depend on the thread count), 'reference' (the tensor path
    above), or None: fused where it applies and can be built, else the reference path.
    """
    P = x.shape[0]
    if engine != "reference":  # run_group says None where the kernel does not apply
        n_threads = workers.threads_for(P, x.device) if threads is None else threads
        out = fused.run_group(net, x, labels, xq, yq, coef, active, beta, feedback,
                              n_threads, pool)
        if out is not None:
            return out
    n_proc = workers.processes_for(P, x.device) if processes is None else processes
    if n_proc > 1:
        calls = [(*_members(net, x, labels, xq, yq, coef, sl), active, beta, feedback, chunk,
                  group, pool) for sl in workers.split(P, n_proc)]
        return _concat(net, workers.run_parts(run_part, calls))
    G = group_size(net, x.device) if group is None else group
    if G >= P:
        return _group(net, x, labels, xq, yq, coef, active, beta, feedback, chunk, pool)
    return _concat(net, [_group(*_members(net, x, labels, xq, yq, coef, slice(i, i + G)),
                                active, beta, feedback, chunk, pool)
                         for i in range(0, P, G)])


def run_part(net: Net, x, labels, xq, yq, coef, active, beta: float, feedback: str,
             chunk: int | None, group: int | None, pool: Pool = BUILTIN_POOL) -> tuple:
    """One process's share of :func:`meta_loss_and_coef_grad` (run by plastcli.engine.workers):
    (CE, final weights, coefficient gradient), leaving out the feedback it was given."""
    ce, final, grad = meta_loss_and_coef_grad(net, x, labels, xq, yq, coef, active, beta,
                                              feedback, chunk, group, processes=1, pool=pool,
                                              engine="reference")
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


def _group(net: Net, x, labels, xq, yq, coef, active, beta: float, feedback: str,
           chunk: int | None, pool: Pool) -> tuple:
    """One group of members through :func:`plastcli.engine.adjoint.run_group`, its chunk
    length chosen for the group's own size."""
    K = chunk_steps(x.shape[0], x.device) if chunk is None else chunk
    return run_group(net, x, labels, xq, yq, coef, active, beta, feedback, K, pool)
