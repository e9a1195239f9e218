"""Population MLP: state, initialisers, forward pass, sigma' and error signals.

Shapes (SPEC §1-2), with P the population axis and B a batch axis (B = 1 online):
- ``W[l-1]`` is W_l, ``[P, n_l, n_{l-1}]``; feedback ``Bf[l-1]`` is B_l, same shape.
- DFA matrices ``D[l]`` are ``[P, n_L, n_l]`` for l = 0..L-1.
- activations ``ys[l]`` ``[P, B, n_l]`` (``ys[0]`` = input, ``ys[L]`` = softmax),
  pre-activations ``zs[l]`` (``zs[0]`` is None), errors ``es[l]``, l = 0..L.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from plastcli.core.vocabulary import FEEDBACK_MODES, INITS
from plastcli.data import generator_for


@dataclass
class Net:
    """Population network state: weights and the fixed/plastic feedback path."""

    W: list[torch.Tensor]
    Bf: list[torch.Tensor] | None = None  # 'fixed' / 'plastic'
    D: list[torch.Tensor] | None = None  # 'direct'

    @property
    def n_layers(self) -> int:
        return len(self.W)


def init_matrix(n_out: int, n_in: int, init: str, g: torch.Generator) -> torch.Tensor:
    """One ``[n_out, n_in]`` matrix.

    xavier: U(-a, a), a = sqrt(6 / (n_in + n_out)); naive: N(0, 0.01^2).
    """
    if init == "xavier":
        a = math.sqrt(6.0 / (n_in + n_out))
        return (torch.rand(n_out, n_in, generator=g) * 2.0 - 1.0) * a
    if init == "naive":
        return torch.randn(n_out, n_in, generator=g) * 0.01
    raise ValueError(f"unknown init {init!r}; allowed: {INITS}")


def init_net(layers: list[int], seeds: list[int], episode: int, init: str, feedback: str,
             device: torch.device | str = "cpu") -> Net:
    """Fresh weights (and feedback matrices) for each member, drawn from its own generator.

    A member's draw depends only on (its seed, episode), never on the other members.
    """
    if feedback not in FEEDBACK_MODES:
        raise ValueError(f"unknown feedback {feedback!r}; allowed: {FEEDBACK_MODES}")
    L = len(layers) - 1
    Ws, Bs, Ds = [], [], []
    for seed in seeds:
        g = generator_for(seed, episode, "init")
        Ws.append([init_matrix(layers[l], layers[l - 1], init, g) for l in range(1, L + 1)])
        if feedback in ("fixed", "plastic"):
            Bs.append([init_matrix(layers[l], layers[l - 1], init, g) for l in range(1, L + 1)])
        if feedback == "direct":
            Ds.append([init_matrix(layers[L], layers[l], init, g) for l in range(L)])

    def stack(per_member):
        return [torch.stack([m[i] for m in per_member]).to(device) for i in range(L)]

    return Net(W=stack(Ws), Bf=stack(Bs) if Bs else None, D=stack(Ds) if Ds else None)


def softplus(z: torch.Tensor, beta: float) -> torch.Tensor:
    """softplus_beta(z) = log(1 + exp(beta z)) / beta."""
    return F.softplus(z, beta=beta, threshold=20.0)


def sigma_prime(z: torch.Tensor, beta: float) -> torch.Tensor:
    """d softplus_beta / dz = sigmoid(beta z)."""
    return torch.sigmoid(beta * z)


def forward(W: list[torch.Tensor], x: torch.Tensor, beta: float):
    """Forward pass. x ``[P, B, n_0]`` -> (zs, ys), lists of length L+1 (see module doc)."""
    zs: list[torch.Tensor | None] = [None]
    ys = [x]
    L = len(W)
    for l in range(1, L + 1):
        # z^T = W y^T: the weight gradient then comes back contiguous (no full-size copies)
        z = torch.matmul(W[l - 1], ys[-1].transpose(1, 2)).transpose(1, 2)
        zs.append(z)
        ys.append(softplus(z, beta) if l < L else torch.softmax(z, dim=-1))
    return zs, ys


def logits(W: list[torch.Tensor], x: torch.Tensor, beta: float) -> torch.Tensor:
    """Output pre-activations z_L ``[P, B, n_L]``."""
    return forward(W, x, beta)[0][-1]


def feedback_matrix(net: Net, l: int, mode: str, sym_detach: bool = True) -> torch.Tensor:
    """B_l ``[P, n_l, n_{l-1}]`` used to send e_l back to layer l-1."""
    if mode == "sym":
        # The reference sets B = W by value, so no meta-gradient flows through it.
        return net.W[l - 1].detach() if sym_detach else net.W[l - 1]
    return net.Bf[l - 1]


def errors(net: Net, zs, ys, e_out: torch.Tensor, beta: float, mode: str,
           need_e0: bool = True, sym_detach: bool = True) -> list[torch.Tensor | None]:
    """Error signals e_0..e_L (SPEC §2); ``e_out`` = e_L ``[P, B, n_L]``.

    e_{l-1} = (B_l^T e_l) * sigma'(z_{l-1}); e_0 uses (1 - exp(-beta y_0)).
    In 'direct' mode e_l = (D_l^T e_L) * sigma'(z_l). e_0 is None unless need_e0.
    """
    L = net.n_layers
    es: list[torch.Tensor | None] = [None] * (L + 1)
    es[L] = e_out
    for l in range(L, 0, -1):
        if l == 1 and not need_e0:
            break
        if mode == "direct":
            back = torch.matmul(e_out, net.D[l - 1])
        else:
            back = torch.matmul(es[l], feedback_matrix(net, l, mode, sym_detach))
        if l - 1 == 0:
            deriv = 1.0 - torch.exp(-beta * ys[0])
        else:
            deriv = sigma_prime(zs[l - 1], beta)
        es[l - 1] = back * deriv
    return es


def output_error(y_out: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
    """e_L = softmax(z_L) - onehot(label) = dCE/dz_L."""
    return y_out - onehot
