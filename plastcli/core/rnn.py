"""Recurrent network for the delayed-memory task (SPEC §6, P2 §2.4), batched over members.

    z_{t+1} = W_h sigma(z_t) + W_x x_{t+1},   z_0 = 0,   t = 0..T-1
    logits  = W_o sigma(z_T)                 (softmax + cross-entropy)

``sigma`` is softplus with sharpness beta (``network.sigma: softplus``) or tanh (a
reference; beta unused): :class:`Activation`. Every weight carries the population axis P:
``W_x [P, n, n_in]``, ``W_h [P, n, n]``, ``W_o [P, n_out, n]``; a batch of sequences is
``[P, B, ...]`` (B = 1 online). The input of a sequence is one image shown at steps
1..present and zeros at steps present+1..T.

Learning (online, one sequence per update, all under ``torch.no_grad()``):

- BPTT, written out (tested against autograd):
  ``e_T = (W_o^T (softmax - onehot)) * sigma'(z_T)``, ``e_t = (W_h^T e_{t+1}) * sigma'(z_t)``;
  ``dW_h = -theta_1 sum_{t<T} e_{t+1} sigma(z_t)^T``,
  ``dW_x = -theta_1 sum_{t=1..present} e_t x^T``, ``dW_o = -theta_1 (softmax - onehot)
  sigma(z_T)^T``.
- Oja on W_h only (ignoring the input's contribution), with ``u_t = W_h sigma(z_t)``:
  ``+ theta_2 sum_{t<T} (u_t pre_t^T - u_t u_t^T W_h)`` where ``pre_t = z_t`` as P2 prints
  it (``oja_pre: z``) or ``sigma(z_t)`` (``oja_pre: sigma``, the textbook Oja form). It is
  computed as ``U^T (Pre - U W_h)`` with ``U [T, n]`` the stacked ``u_t``: no ``n x n``
  intermediate besides the result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from plastcli.core.vocabulary import RECURRENT_INITS, SIGMAS  # noqa: F401 (re-exported)
from plastcli.data import generator_for

OJA_PRE = ("z", "sigma")


@dataclass(frozen=True)
class Activation:
    """sigma and its derivative: softplus with sharpness ``beta``, or tanh."""

    kind: str = "softplus"
    beta: float = 10.0

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        return F.softplus(z, beta=self.beta) if self.kind == "softplus" else torch.tanh(z)

    def grad(self, z: torch.Tensor) -> torch.Tensor:
        if self.kind == "softplus":
            return torch.sigmoid(self.beta * z)
        return 1 - torch.tanh(z) ** 2


def activation(a: float | Activation) -> Activation:
    """A number is softplus' beta (the form every caller used before tanh existed)."""
    return a if isinstance(a, Activation) else Activation("softplus", float(a))


@dataclass
class RnnNet:
    """Population of recurrent nets: Wx ``[P, n, n_in]``, Wh ``[P, n, n]``, Wo ``[P, n_out, n]``."""

    Wx: torch.Tensor
    Wh: torch.Tensor
    Wo: torch.Tensor

    @property
    def P(self) -> int:
        return self.Wh.shape[0]

    @property
    def hidden(self) -> int:
        return self.Wh.shape[1]

    def cat(self, other: RnnNet) -> RnnNet:
        return RnnNet(*(torch.cat([a, b]) for a, b in zip(self.weights(), other.weights(),
                                                           strict=True)))

    def weights(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.Wx, self.Wh, self.Wo


def _draw(shape: tuple[int, int], init: str, g: torch.Generator) -> torch.Tensor:
    n_out, n_in = shape
    if init == "xavier":
        a = math.sqrt(6.0 / (n_in + n_out))
        return (torch.rand(shape, generator=g) * 2 - 1) * a
    if init == "naive":
        return torch.randn(shape, generator=g) * 0.01
    raise ValueError(f"unknown init {init!r}")


def draw_recurrent(n: int, kind: str, g: torch.Generator) -> torch.Tensor:
    """``[n, n]`` W_h before its gain: xavier U(-a, a) with a = sqrt(6 / 2n) (variance 1/n),
    normal N(0, 1/n), orthogonal (Q of a Gaussian's QR, signs fixed so that it is Haar
    distributed), or the identity (a non-biological reference: no draw)."""
    if kind == "xavier":
        return (torch.rand((n, n), generator=g) * 2 - 1) * math.sqrt(3.0 / n)
    if kind == "normal":
        return torch.randn((n, n), generator=g) / math.sqrt(n)
    if kind == "orthogonal":
        q, r = torch.linalg.qr(torch.randn((n, n), generator=g, dtype=torch.float64))
        return (q * torch.sign(torch.diagonal(r))).float()
    if kind == "identity":
        return torch.eye(n)
    raise ValueError(f"unknown recurrent init {kind!r}")


def init_rnn(n_in: int, hidden: int, n_out: int, seeds: list[int], init: str,
             device, recurrent: str | list[str] = "same",
             gain: float | list[float] = 1.0) -> RnnNet:
    """One generator per member seed (``generator_for(seed, hidden, 'init')``), so a member's
    weights do not depend on the other members; drawn in the order W_x, W_h, W_o. With
    ``recurrent`` other than 'same', W_h is replaced by :func:`draw_recurrent` from its own
    stream (``'init_recurrent'``), so W_x and W_o are those of the 'same' run; W_h is then
    multiplied by ``gain``. ``recurrent`` and ``gain`` may also be one value per member."""
    P = len(seeds)
    kinds = recurrent if isinstance(recurrent, list) else [recurrent] * P
    gains = gain if isinstance(gain, list) else [gain] * P
    Wx, Wh, Wo = [], [], []
    for s, kind, g_h in zip(seeds, kinds, gains, strict=True):
        g = generator_for(s, hidden, "init")
        Wx.append(_draw((hidden, n_in), init, g))
        wh = _draw((hidden, hidden), init, g)
        Wo.append(_draw((n_out, hidden), init, g))
        if kind != "same":
            wh = draw_recurrent(hidden, kind, generator_for(s, hidden, "init_recurrent"))
        Wh.append(wh * g_h if g_h != 1.0 else wh)
    return RnnNet(*(torch.stack(m).to(device) for m in (Wx, Wh, Wo)))


def sigma(z: torch.Tensor, beta: float | Activation) -> torch.Tensor:
    return activation(beta)(z)


def run_sequence(net: RnnNet, x: torch.Tensor, T: int, present: int, beta: float | Activation
                 ) -> torch.Tensor:
    """Hidden pre-activations ``zs [T+1, P, B, n]`` (``zs[0] = 0``) for images x ``[P, B, n_in]``
    shown at steps 1..present, zeros after. Differentiable if the weights are."""
    P, B, _ = x.shape
    act = activation(beta)  # once, not per step
    drive = torch.bmm(x, net.Wx.transpose(1, 2))  # [P, B, n] = W_x x
    WhT = net.Wh.transpose(1, 2)
    z = torch.zeros(P, B, net.hidden, dtype=x.dtype, device=x.device)
    zs = [z]
    for t in range(T):
        u = torch.bmm(act(z), WhT)  # u_t = W_h sigma(z_t)
        z = u + drive if t < present else u  # z_{t+1}; input x_{t+1} is the image for t+1<=present
        zs.append(z)
    return torch.stack(zs)


def logits(net: RnnNet, zT: torch.Tensor, beta: float | Activation) -> torch.Tensor:
    """Readout ``[P, B, n_out]`` = W_o sigma(z_T)."""
    return torch.bmm(sigma(zT, beta), net.Wo.transpose(1, 2))


def loss_fn(out: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per member ``[P]``: summed over the batch (B = 1 online)."""
    P, B, C = out.shape
    ce = F.cross_entropy(out.reshape(-1, C), labels.reshape(-1), reduction="none")
    return ce.view(P, B).sum(1)


@torch.no_grad()
def bptt_grads(net: RnnNet, x: torch.Tensor, labels: torch.Tensor, T: int, present: int,
               beta: float | Activation) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """Gradients of :func:`loss_fn` w.r.t. (W_x, W_h, W_o), each ``[P, ...]``, written out
    (SPEC §6), and the hidden states ``zs [T+1, P, B, n]``.
    x ``[P, B, n_in]``, labels ``[P, B]``."""
    zs = run_sequence(net, x, T, present, beta)
    s = sigma(zs, beta)  # [T+1, P, B, n]
    dsig = activation(beta).grad(zs)
    out = torch.bmm(s[T], net.Wo.transpose(1, 2))
    e_out = torch.softmax(out, -1) - F.one_hot(labels, out.shape[-1]).to(out.dtype)  # [P, B, C]
    gWo = torch.bmm(e_out.transpose(1, 2), s[T])
    e = torch.bmm(e_out, net.Wo) * dsig[T]  # e_T [P, B, n]
    es = [e]
    for t in range(T - 1, 0, -1):  # e_t for t = T-1..1
        e = torch.bmm(e, net.Wh) * dsig[t]
        es.append(e)
    E = torch.stack(es[::-1])  # [T, P, B, n]: e_1..e_T
    P, B, n = e.shape
    E_flat = E.permute(1, 3, 0, 2).reshape(P, n, T * B)  # [P, n, T*B]
    S_flat = s[:T].permute(1, 0, 2, 3).reshape(P, T * B, n)  # sigma(z_0..z_{T-1})
    gWh = torch.bmm(E_flat, S_flat)
    gWx = torch.bmm(E[:present].sum(0).transpose(1, 2), x)  # sum_{t=1..present} e_t x^T
    return (gWx, gWh, gWo), zs


@torch.no_grad()
def oja_term(Wh: torch.Tensor, zs: torch.Tensor, beta: float | Activation,
             pre: str = "z") -> torch.Tensor:
    """``sum_{t<T} (u_t pre_t^T - u_t u_t^T W_h)`` summed over the batch, ``[P, n, n]``;
    u_t = W_h sigma(z_t), pre_t = z_t (``pre='z'``) or sigma(z_t) (``pre='sigma'``).
    zs ``[T+1, P, B, n]``."""
    T1, P, B, n = zs.shape
    Z = zs[:-1].permute(1, 0, 2, 3).reshape(P, (T1 - 1) * B, n)  # rows z_t, t < T
    S = sigma(Z, beta)
    U = torch.bmm(S, Wh.transpose(1, 2))  # rows u_t^T
    Pre = Z if pre == "z" else S
    return torch.bmm(U.transpose(1, 2), Pre - torch.bmm(U, Wh))


@torch.no_grad()
def update(net: RnnNet, x: torch.Tensor, labels: torch.Tensor, theta_bptt: torch.Tensor,
           theta_oja: torch.Tensor, T: int, present: int, beta: float | Activation,
           oja_pre: str = "z") -> RnnNet:
    """One online update of every member: ``-theta_1 grad`` on all weights plus
    ``theta_2 * oja_term`` on W_h. theta_* ``[P]``; x ``[P, 1, n_in]``; labels ``[P, 1]``."""
    (gWx, gWh, gWo), zs = bptt_grads(net, x, labels, T, present, beta)
    th1 = theta_bptt.view(-1, 1, 1)
    Wh = net.Wh - th1 * gWh
    if bool((theta_oja != 0).any()):
        Wh = Wh + theta_oja.view(-1, 1, 1) * oja_term(net.Wh, zs, beta, oja_pre)
    return RnnNet(net.Wx - th1 * gWx, Wh, net.Wo - th1 * gWo)


@torch.no_grad()
def evaluate(net: RnnNet, x: torch.Tensor, y: torch.Tensor, T: int, present: int,
             beta: float | Activation, chunk: int = 250) -> dict[str, torch.Tensor]:
    """Every member on the same validation sequences (images x ``[V, n_in]``, labels ``[V]``):
    accuracy ``[P]``, mean loss ``[P]`` and mean hidden-state norm ``||sigma(z_t)||``
    for t = 0..T, ``[P, T+1]``."""
    P, V = net.P, len(y)
    correct = torch.zeros(P, device=x.device)
    loss = torch.zeros(P, device=x.device)
    norms = torch.zeros(P, T + 1, device=x.device)
    for i in range(0, V, chunk):
        xb = x[i : i + chunk].unsqueeze(0).expand(P, -1, -1)
        yb = y[i : i + chunk].unsqueeze(0).expand(P, -1)
        zs = run_sequence(net, xb, T, present, beta)
        out = logits(net, zs[T], beta)
        correct += (out.argmax(-1) == yb).float().sum(1)
        loss += loss_fn(out, yb)
        norms += sigma(zs, beta).norm(dim=-1).sum(-1).T
    return {"val_accuracy": correct / V, "val_loss": loss / V, "hidden_norm": norms / V}
