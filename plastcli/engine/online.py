"""Online (batch size 1) training with fixed plasticity coefficients, batched over members.

Generic machinery reused by every online experiment: each member p sees its own stream of
samples ``images[order[p, t]]`` one at a time and its weights change by
:func:`plastcli.engine.inner_step`; nothing is differentiated, so everything runs under
``torch.no_grad()``. A callback evaluates the population every ``eval_every`` samples.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from plastcli.core.network import Net
from plastcli.core.rules import LayerCoefficients
from plastcli.data import generator_for
from plastcli.engine.inner import inner_step


def stream_order(seeds: list[int], pool: torch.Tensor, samples: int,
                 stream: int = 0) -> torch.Tensor:
    """Per member, its own seeded permutation of the index ``pool`` ``[N]``, cut to ``samples``.

    Returns ``[P, samples]`` dataset indices; member p's row depends only on its seed (and
    ``stream``, which lets two stages of one experiment draw different orders). Needs
    ``samples <= N`` (each member sees a sample at most once).
    """
    if samples > len(pool):
        raise ValueError(f"{samples} samples requested but the pool has only {len(pool)}")
    rows = [pool[torch.randperm(len(pool), generator=generator_for(s, stream, "order"))[:samples]]
            for s in seeds]
    return torch.stack(rows)


def eval_points(samples: int, eval_every: int) -> list[int]:
    """Samples seen at each evaluation: 0, k, 2k, ..., and always the last sample."""
    points = list(range(0, samples + 1, eval_every))
    if points[-1] != samples:
        points.append(samples)
    return points


@torch.no_grad()
def run_online(net: Net, rule: LayerCoefficients, images: torch.Tensor, labels: torch.Tensor,
               order: torch.Tensor, n_out: int, beta: float, feedback: str, eval_every: int,
               on_eval: Callable[[Net, int], None] | None = None, start: int = 0,
               on_step: Callable[[Net, int], None] | None = None) -> Net:
    """Train every member online on its stream and return the final population network.

    images ``[N, n_0]`` and labels ``[N]`` (on the training device); order ``[P, T]`` indices
    into them (member p's t-th sample is ``images[order[p, t]]``); ``on_eval(net, seen)`` is
    called before the first sample (seen = 0), after every ``eval_every`` samples and after
    the last one; ``on_step(net, seen)`` after every sample, following any evaluation (the
    caller's checkpoints). ``start``: samples already seen (``net`` is the state after
    them; a resumed run), so training continues at ``order[:, start]`` and the evaluation
    at 0 is not repeated. Members never interact: a member's trajectory is the same alone
    or batched.
    """
    T = order.shape[1]
    points = set(eval_points(T, eval_every))
    if on_eval is not None and start == 0:
        on_eval(net, 0)
    for t in range(start, T):
        idx = order[:, t]
        x = images[idx].unsqueeze(1)  # [P, 1, n_0]
        onehot = F.one_hot(labels[idx], n_out).to(x.dtype).unsqueeze(1)  # [P, 1, n_L]
        net = inner_step(net, x, onehot, rule, beta, feedback)
        if on_eval is not None and (t + 1) in points:
            on_eval(net, t + 1)
        if on_step is not None:
            on_step(net, t + 1)
    return net


def concat_nets(nets: list[Net]) -> Net:
    """Stack populations with the same feedback structure along P."""

    def cat(parts):
        return None if parts[0] is None else [torch.cat(ms) for ms in zip(*parts, strict=True)]

    return Net(W=cat([n.W for n in nets]), Bf=cat([n.Bf for n in nets]), D=cat([n.D for n in nets]))
