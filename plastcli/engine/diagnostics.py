"""Read-only measurements of a population network: accuracy, alignment angles,
orthonormality error. Nothing here mutates state."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from plastcli.core.network import Net, errors, forward, output_error


def accuracy(z_out: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """z_out ``[P, B, n_L]``, labels ``[P, B]`` -> fraction correct ``[P]``."""
    return (z_out.argmax(-1) == labels).float().mean(-1)


def vector_angle(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Angle in degrees between vectors along the last axis (NaN if either is zero)."""
    cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))
    return torch.rad2deg(torch.arccos(cos.clamp(-1.0, 1.0)))


def alignment_angles(net: Net, zs, ys, labels: torch.Tensor, beta: float,
                     feedback: str) -> torch.Tensor:
    """alpha_l for l = 0..L-1, ``[P, L]`` degrees (SPEC §2).

    Angle between the batch-mean error e_l of the model's own feedback path and the
    batch-mean error exact backprop would compute on the same state and inputs.
    """
    onehot = F.one_hot(labels, net.W[-1].shape[1]).to(ys[0].dtype)
    e_out = output_error(ys[-1], onehot)
    model = errors(net, zs, ys, e_out, beta, feedback, need_e0=True)
    # sym feedback sends errors back through W itself: the model's errors are the exact ones
    exact = model if feedback == "sym" else errors(net, zs, ys, e_out, beta, "sym",
                                                   need_e0=True)
    L = net.n_layers
    return torch.stack([vector_angle(model[l].mean(1), exact[l].mean(1)) for l in range(L)], 1)


def orthonormality_error(W: list[torch.Tensor], zs, ys) -> torch.Tensor:
    """E_W per layer ``[P, L]``: batch mean of ||z_l - W_l W_l^T sigma(z_l)||^2 (P1 Eq. 11)."""
    out = []
    for l in range(1, len(W) + 1):
        rec = torch.matmul(torch.matmul(ys[l], W[l - 1]), W[l - 1].transpose(1, 2))
        out.append((zs[l] - rec).pow(2).sum(-1).mean(-1))
    return torch.stack(out, 1)


@torch.no_grad()
def query_metrics(net: Net, x: torch.Tensor, labels: torch.Tensor, beta: float,
                  feedback: str) -> dict[str, np.ndarray]:
    """Accuracy ``[P]``, angles ``[P, L]`` and E_W ``[P, L]`` on a batch x ``[P, B, n_0]``."""
    zs, ys = forward(net.W, x, beta)
    return {
        "accuracy": accuracy(zs[-1], labels).cpu().numpy(),
        "angles": alignment_angles(net, zs, ys, labels, beta, feedback).cpu().numpy(),
        "orthonormality_error": orthonormality_error(net.W, zs, ys).cpu().numpy(),
    }


# ----------------------------------------------------------------------------------------
# Online-learning diagnostics (P2 Figs 2, 3, 4, 6, S1).


def activation_norms(ys) -> torch.Tensor:
    """||y_l||_2 of the hidden layers l = 1..L-1, averaged over the batch: ``[P, L-1]``."""
    return torch.stack([y.norm(dim=-1).mean(-1) for y in ys[1:-1]], 1)


def reconstruction_error(W: list[torch.Tensor], ys) -> torch.Tensor:
    """Per hidden layer l = 1..L-1, the batch mean of ||y_{l-1} - W_l^T y_l||^2, where
    y_l = sigma(W_l y_{l-1}) (P2 Fig 2): ``[P, L-1]``."""
    out = []
    for l in range(1, len(W)):
        rec = torch.matmul(ys[l], W[l - 1])  # rows: (W_l^T y_l)^T, [P, B, n_{l-1}]
        out.append((ys[l - 1] - rec).pow(2).sum(-1).mean(-1))
    return torch.stack(out, 1)


def reconstruct_inputs(W: list[torch.Tensor], ys, layers: list[int]) -> torch.Tensor:
    """x_hat(l) = W_1^T W_2^T ... W_l^T y_l for each l in ``layers`` (P2 Fig 3).

    Returns ``[P, B, len(layers), n_0]``.
    """
    out = []
    for l in layers:
        v = ys[l]  # [P, B, n_l]
        for k in range(l, 0, -1):
            v = torch.matmul(v, W[k - 1])  # (W_k^T v)^T
        out.append(v)
    return torch.stack(out, 2)


def pca_cumulative_variance(y: torch.Tensor) -> torch.Tensor:
    """Cumulative explained-variance ratio of the principal components of y ``[P, B, n]``
    (samples along B): ``[P, min(B, n)]``, non-decreasing, ending at 1; NaN for a member
    whose activities are not finite (its run diverged; the SVD would refuse them)."""
    centred = (y - y.mean(1, keepdim=True)).double()
    finite = torch.isfinite(centred).flatten(1).all(-1)  # [P]
    out = torch.full((y.shape[0], min(y.shape[1], y.shape[2])), float("nan"),
                     dtype=torch.float64, device=y.device)
    if finite.any():
        var = torch.linalg.svdvals(centred[finite]).pow(2)  # eigenvalues of covariance * B
        out[finite] = var.cumsum(-1) / var.sum(-1, keepdim=True)
    return out.float()


def update_norms(net: Net, x: torch.Tensor, labels: torch.Tensor, rule, pseudo: torch.Tensor,
                 beta: float, feedback: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Frobenius norms of the single-sample updates the rule would make now, averaged over
    the samples of x ``[P, B, n_0]`` (each sample applied alone, not summed).

    Returns (||Delta W_BP||, ||Delta W||), each ``[P, L]``: the pseudo-gradient part
    theta_pseudo * e_l y_{l-1}^T (rank one: |theta| ||e_l|| ||y_{l-1}||) and the whole update
    of ``rule`` (a :class:`plastcli.core.rules.LayerCoefficients`). ``pseudo`` ``[P]`` holds
    theta_pseudo (0 where the rule has none).
    """
    from plastcli.core.rules import apply_rule

    zs, ys = forward(net.W, x, beta)
    onehot = F.one_hot(labels, net.W[-1].shape[1]).to(x.dtype)
    need_e0 = rule.needs_pre_error(1)
    es = errors(net, zs, ys, output_error(ys[-1], onehot), beta, feedback, need_e0)
    L, B = net.n_layers, x.shape[1]
    bp = torch.stack([pseudo.view(-1, 1).abs() * es[l].norm(dim=-1) * ys[l - 1].norm(dim=-1)
                      for l in range(1, L + 1)], 1).mean(-1)  # [P, L]
    whole = torch.zeros_like(bp)
    for b in range(B):
        s = slice(b, b + 1)
        for l in range(1, L + 1):
            new = apply_rule(net.W[l - 1], rule.views[l - 1], rule.active[l - 1], es[l][:, s],
                             None if es[l - 1] is None else es[l - 1][:, s], ys[l][:, s],
                             ys[l - 1][:, s], zs[l][:, s], pool=rule.pool)
            whole[:, l - 1] += (new - net.W[l - 1]).flatten(1).norm(dim=-1) / B
    return bp, whole
