"""One online plasticity step and the unrolled inner loop, batched over the population
axis P, and the Adam that meta-training steps the coefficients with."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from plastcli.core.network import Net, errors, forward, output_error
from plastcli.core.rules import LayerCoefficients, apply_rule


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda if available else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        from plastcli.errors import PlastError

        raise PlastError("--device cuda: no CUDA device is available here; use cpu or auto")
    return torch.device(name)


def inner_step(net: Net, x: torch.Tensor, onehot: torch.Tensor, rule: LayerCoefficients,
               beta: float, feedback: str, fb_rule: LayerCoefficients | None = None,
               sym_detach: bool = True) -> Net:
    """One online plasticity step for every member.

    x ``[P, B, n_0]``, onehot ``[P, B, n_L]`` (B = 1 online). Returns the new state;
    the forward weights change by ``rule``, plastic feedback matrices by ``fb_rule``.
    """
    zs, ys = forward(net.W, x, beta)
    need_e0 = rule.needs_pre_error(1) or (fb_rule is not None and fb_rule.needs_pre_error(1))
    es = errors(net, zs, ys, output_error(ys[-1], onehot), beta, feedback, need_e0, sym_detach)
    L = net.n_layers
    new_W = [apply_rule(net.W[l - 1], rule.views[l - 1], rule.active[l - 1], es[l], es[l - 1],
                        ys[l], ys[l - 1], zs[l], pool=rule.pool) for l in range(1, L + 1)]
    new_B = net.Bf
    if feedback == "plastic":
        new_B = [apply_rule(net.Bf[l - 1], fb_rule.views[l - 1], fb_rule.active[l - 1], es[l],
                            es[l - 1], ys[l], ys[l - 1], pool=fb_rule.pool)
                 for l in range(1, L + 1)]
    return Net(W=new_W, Bf=new_B, D=net.D)


def run_inner_loop(net: Net, x: torch.Tensor, labels: torch.Tensor, n_out: int,
                   rule: LayerCoefficients, beta: float, feedback: str,
                   fb_rule: LayerCoefficients | None = None, sym_detach: bool = True) -> Net:
    """Present x ``[P, T, n_0]`` (labels ``[P, T]``) one sample at a time, in order."""
    onehot = F.one_hot(labels, n_out).to(x.dtype)
    for t in range(x.shape[1]):
        net = inner_step(net, x[:, t : t + 1], onehot[:, t : t + 1], rule, beta, feedback,
                         fb_rule, sym_detach)
    return net


class Adam:
    """Elementwise Adam over ``[P, ...]`` tensors with a per-member 'active' mask.

    Matches torch.optim.Adam (no weight decay, no amsgrad) for active members;
    inactive members keep their parameters and moments exactly.
    """

    def __init__(self, shapes: list[tuple[int, ...]], lr: float | torch.Tensor,
                 betas=(0.9, 0.999), eps: float = 1e-8, device=None):
        # lr: one number, or ``[P]`` per member (population.grid)
        self.lr, self.betas, self.eps = lr, betas, eps
        self.m = [torch.zeros(s, device=device) for s in shapes]
        self.v = [torch.zeros(s, device=device) for s in shapes]
        self.step_count = torch.zeros(shapes[0][0], device=device)  # per member

    @torch.no_grad()
    def step(self, params: list[torch.Tensor], grads: list[torch.Tensor],
             active: torch.Tensor, prox_l1: torch.Tensor | None = None) -> None:
        """One step for the ``active`` members. ``prox_l1`` ``[P]``: after the step,
        soft-threshold each coefficient by lambda times its step size lr / denom
        (proximal Adam), so that a coefficient the CE does not hold goes exactly to 0."""
        b1, b2 = self.betas
        t = self.step_count + active.float()
        bc1 = 1 - b1 ** t.clamp(min=1)
        bc2 = 1 - b2 ** t.clamp(min=1)
        for p, g, m, v in zip(params, grads, self.m, self.v, strict=True):
            a = active.view(-1, *[1] * (p.dim() - 1))
            m_new = b1 * m + (1 - b1) * g
            v_new = b2 * v + (1 - b2) * g * g
            shape = (-1, *[1] * (p.dim() - 1))
            denom = (v_new / bc2.view(shape)).sqrt() + self.eps
            lr = self.lr.view(shape) if isinstance(self.lr, torch.Tensor) else self.lr
            p_new = p - lr * (m_new / bc1.view(shape)) / denom
            if prox_l1 is not None:
                thr = lr * prox_l1.view(shape) / denom
                p_new = p_new.sign() * (p_new.abs() - thr).clamp(min=0)
            m.copy_(torch.where(a, m_new, m))
            v.copy_(torch.where(a, v_new, v))
            p.copy_(torch.where(a, p_new, p))
        self.step_count = t

    def snapshot(self) -> list[torch.Tensor]:
        """Copies of the moments and step counts (for :meth:`restore`)."""
        return [t.clone() for t in (*self.m, *self.v, self.step_count)]

    def restore(self, saved: list[torch.Tensor], members: torch.Tensor) -> None:
        """Put the ``members`` ``[P]`` bool back to a :meth:`snapshot`; others keep theirs."""
        n = len(self.m)
        for cur, old in zip((*self.m, *self.v), saved[: 2 * n], strict=True):
            cur.copy_(torch.where(members.view(-1, *[1] * (cur.dim() - 1)), old, cur))
        self.step_count = torch.where(members, saved[-1], self.step_count)

    def state_dict(self) -> dict[str, np.ndarray]:
        out = {"adam_step": self.step_count.cpu().numpy().copy()}
        for i, (m, v) in enumerate(zip(self.m, self.v, strict=True)):
            out[f"adam_m{i}"] = m.cpu().numpy().copy()
            out[f"adam_v{i}"] = v.cpu().numpy().copy()
        return out

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        dev = self.step_count.device
        self.step_count = torch.as_tensor(state["adam_step"], device=dev)
        for i in range(len(self.m)):
            self.m[i] = torch.as_tensor(state[f"adam_m{i}"], device=dev)
            self.v[i] = torch.as_tensor(state[f"adam_v{i}"], device=dev)
