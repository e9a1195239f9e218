"""Meta-training (P1 Algorithm 1): :class:`MetaTrainer` runs episodes for every member
at once and returns per-episode records (numpy arrays ``[P, ...]``) and a ``state_dict``
for checkpoints; the experiment modules put them in stores. It writes no files.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from plastcli.core.network import Net, forward, init_net
from plastcli.core.rules import LayerCoefficients, layer_mask, selection_matrix
from plastcli.core.terms import BUILTIN_POOL, Pool, recipe_pool
from plastcli.data import Episode, TaskSampler, generator_for
from plastcli.engine import adjoint, diagnostics, fused, parallel, workers
from plastcli.engine.inner import Adam, run_inner_loop
from plastcli.results.collapse import DECLINE_DROP, DECLINE_WINDOW, CollapseDetector, chance_loss
from plastcli.results.collapse import WINDOW as COLLAPSE_WINDOW


@dataclass
class MetaConfig:
    """Everything the meta-trainer needs, already resolved from a recipe."""

    layers: list[int]
    init: str
    beta: float
    feedback: str
    terms: list[str]
    term_init: dict[str, float]
    mask: torch.Tensor  # [P, L, R] (or [L, R], broadcast)
    fb_terms: list[str] | None = None
    fb_init: dict[str, float] | None = None
    fb_mask: torch.Tensor | None = None
    # lr, l1 and the term_init values are one number, or one per member (population.grid)
    lr: float | list[float] = 1e-3
    l1: float | list[float] = 0.0
    grad_clip: float | None = None
    sym_detach: bool = True
    gradient: str = "auto"  # 'auto' uses plastcli.engine.adjoint where supported
    l1_mode: str = "subgradient"  # or 'proximal' (soft-threshold after the Adam step)
    bounds: dict[str, list[float | None]] = field(default_factory=dict)  # term -> [lo, hi]
    theta_jitter: float = 0.0  # relative N(0,1) perturbation of the initial theta
    chance: float = float("inf")  # query CE of a uniform guess, ln M (collapse detection)
    collapse_window: int = COLLAPSE_WINDOW
    decline_window: int = DECLINE_WINDOW
    decline_drop: float | None = DECLINE_DROP
    rollback: int = 0  # non-finite episodes a member is rolled back after (0 = off)
    rollback_lr_factor: float = 0.5
    pool: Pool = BUILTIN_POOL  # the terms the masks' R indices name (plastcli.core.terms)

    @classmethod
    def from_recipe(cls, recipe, n_members: int,
                    grid: dict[str, np.ndarray] | None = None) -> MetaConfig:
        """``grid``: per-member values ``[P]`` keyed like ``population.grid``."""
        grid = grid or {}
        L = len(recipe.network.layers) - 1
        pool = recipe_pool(recipe)
        mask = layer_mask(recipe.rule.terms, recipe.rule.layers, L, pool)
        fb = recipe.feedback_rule
        term_init: dict = dict(recipe.rule.init)
        for key, values in grid.items():
            if key.startswith("rule.init."):
                term_init[key.removeprefix("rule.init.")] = [float(v) for v in values]

        def per_member(key: str, default: float):
            return [float(v) for v in grid[key]] if key in grid else default

        return cls(
            layers=list(recipe.network.layers), init=recipe.network.init,
            beta=recipe.network.beta, feedback=recipe.feedback, terms=list(recipe.rule.terms),
            term_init=term_init, mask=mask.expand(n_members, L, -1).clone(),
            fb_terms=list(fb.terms) if fb else None, fb_init=dict(fb.init) if fb else None,
            fb_mask=layer_mask(fb.terms, fb.layers, L, pool).expand(n_members, L, -1).clone()
            if fb else None,
            lr=per_member("meta.lr", recipe.meta.lr), l1=per_member("meta.l1", recipe.meta.l1),
            grad_clip=recipe.meta.grad_clip,
            sym_detach=not recipe.meta.sym_grad_through_feedback,
            gradient=recipe.meta.gradient, pool=pool, l1_mode=recipe.meta.l1_mode,
            bounds={k: list(v) for k, v in recipe.meta.bounds.items()},
            theta_jitter=recipe.meta.theta_jitter, chance=chance_loss(recipe.task.classes),
            collapse_window=recipe.meta.collapse_window,
            decline_window=recipe.meta.decline_window, decline_drop=recipe.meta.decline_drop,
            rollback=recipe.meta.rollback,
            rollback_lr_factor=recipe.meta.rollback_lr_factor,
        )


def _initial_theta(names: list[str], init: dict[str, float | list[float]], P: int,
                   device) -> torch.Tensor:
    """``[P, R]``: each term's initial value (one number or one per member), 0 if unnamed."""
    cols = [torch.as_tensor(init.get(n, 0.0), dtype=torch.float32).expand(P) for n in names]
    return torch.stack(cols, 1).clone().to(device)


def _jitter_theta(theta: torch.Tensor, seeds: list[int], rel: float) -> None:
    """Multiply member i's theta by (1 + rel * N(0,1)), drawn from its seed's own stream:
    a rounding-level stand-in for another CPU (exact zeros stay zero).

    A change below one float32 step (rel < ~6e-8, e.g. 1e-9) would round back to the
    same number, so every nonzero coefficient moves by at least one step (one ulp), in
    the direction of its noise."""
    for i, s in enumerate(seeds):
        noise = torch.randn(theta.shape[1], generator=generator_for(s, 0, "theta_jitter"),
                            dtype=torch.float64)
        old = theta[i].clone()
        new = (old.double() * (1 + rel * noise)).to(theta.dtype)
        towards = torch.where(noise > 0, torch.full_like(old, math.inf),
                              torch.full_like(old, -math.inf))
        stuck = (new == old) & (old != 0)
        theta[i] = torch.where(stuck, torch.nextafter(old, towards), new)


def _member_values(x: float | list[float], device) -> float | torch.Tensor:
    """One number stays a Python float (the arithmetic of a run without a grid is
    unchanged); a list becomes ``[P]``."""
    if isinstance(x, list):
        return torch.tensor(x, dtype=torch.float32, device=device)
    return float(x)


def _bounds(names: list[str], bounds: dict[str, list[float | None]], device):
    """(low ``[R]``, high ``[R]``) with -inf/inf where unbounded, or None without bounds."""
    if not bounds:
        return None
    lo = [(bounds.get(n) or [None, None])[0] for n in names]
    hi = [(bounds.get(n) or [None, None])[1] for n in names]
    return (torch.tensor([-math.inf if v is None else v for v in lo], device=device),
            torch.tensor([math.inf if v is None else v for v in hi], device=device))


class MetaTrainer:
    """Meta-train plasticity coefficients for P members in lockstep (P1 Algorithm 1).

    The meta-loss summed over members gives each member exactly the gradient it
    would get alone; Adam is elementwise, so members never interact.
    """

    def __init__(self, cfg: MetaConfig, sampler: TaskSampler, seeds: list[int],
                 device: torch.device):
        self.cfg, self.sampler, self.seeds, self.device = cfg, sampler, list(seeds), device
        P = len(seeds)
        self.P = P
        self.n_out = cfg.layers[-1]
        self.mask = cfg.mask.to(device)
        self.S = selection_matrix(cfg.terms, device, cfg.pool)
        self.theta = _initial_theta(cfg.terms, cfg.term_init, P, device)
        if cfg.theta_jitter > 0:
            _jitter_theta(self.theta, self.seeds, cfg.theta_jitter)
        self.lr = _member_values(cfg.lr, device)
        if cfg.rollback > 0:  # a rollback scales one member's lr: one lr per member
            self.lr = torch.as_tensor(self.lr, dtype=torch.float32, device=device).expand(P)
            self.lr = self.lr.clone()
        self.l1 = _member_values(cfg.l1, device)
        self.bounds = _bounds(cfg.terms, cfg.bounds, device)
        self.params = [self.theta]
        # decided once, before our own threads count as load (a member's numbers do not
        # depend on them); the fused kernel is built here on first use
        self.threads = workers.threads_for(P, device)
        # fused: the C kernel; reference: the tensor reverse pass; autograd: neither applies
        # (plastic feedback, gradient through sym feedback, meta.gradient: autograd)
        self.engine = ("autograd" if not self.uses_adjoint else
                       "fused" if fused.ready(device, cfg.feedback, len(cfg.layers) - 1)
                       else "reference")
        self.processes = 1 if self.engine == "fused" else workers.processes_for(P, device)
        if cfg.fb_terms is not None:
            self.fb_mask = cfg.fb_mask.to(device)
            self.fb_S = selection_matrix(cfg.fb_terms, device, cfg.pool)
            self.theta_fb = _initial_theta(cfg.fb_terms, cfg.fb_init, P, device)
            self.params.append(self.theta_fb)
        self.adam = Adam([tuple(p.shape) for p in self.params], self.lr, device=device)
        self.alive = torch.ones(P, dtype=torch.bool, device=device)
        self.diverged_at = np.full(P, -1, dtype=np.int64)
        self.collapse = CollapseDetector(P, cfg.chance, cfg.collapse_window,
                                         cfg.decline_window, cfg.decline_drop)
        self.episode = 0
        # rollback stabiliser: each member's state before the step of its last finite episode
        self.rollbacks = np.zeros(P, dtype=np.int64)
        self._last_record: dict[str, np.ndarray] | None = None
        self.last_good = self._state_tensors() if cfg.rollback > 0 else None

    def _state_tensors(self) -> list[torch.Tensor]:
        """Copies of everything a rollback restores: params, then Adam's state."""
        return [p.detach().clone() for p in self.params] + self.adam.snapshot()

    def _roll_back(self, members: torch.Tensor) -> None:
        """Members ``[P]`` bool go back to ``last_good`` with their lr scaled down."""
        n = len(self.params)
        for p, old in zip(self.params, self.last_good[:n], strict=True):
            p.copy_(torch.where(members.view(-1, *[1] * (p.dim() - 1)), old, p))
        self.adam.restore(self.last_good[n:], members)
        self.lr.copy_(torch.where(members, self.lr * self.cfg.rollback_lr_factor, self.lr))
        self.rollbacks += members.cpu().numpy()

    @property
    def collapsed_at(self) -> np.ndarray:
        """``[P]`` first episode of a collapse (plastcli/results/collapse.py), -1 = none."""
        return self.collapse.collapsed_at

    def _l1_gradient_weight(self):
        """lambda as it enters the gradient: 0 in proximal mode (the step handles it)."""
        return 0.0 if self.cfg.l1_mode == "proximal" else self.l1

    # ------------------------------------------------------------------ one episode
    def _unroll(self, ep: Episode, params: list[torch.Tensor]) -> Net:
        cfg = self.cfg
        net = init_net(cfg.layers, self.seeds, self.episode, cfg.init, cfg.feedback, self.device)
        rule = LayerCoefficients.build(params[0] @ self.S, self.mask, cfg.pool)
        fb_rule = None
        if cfg.fb_terms is not None:
            fb_rule = LayerCoefficients.build(params[1] @ self.fb_S, self.fb_mask, cfg.pool)
        return run_inner_loop(net, ep.x_train, ep.y_train, self.n_out, rule, cfg.beta,
                              cfg.feedback, fb_rule, cfg.sym_detach)

    def member_losses(self, ep: Episode, params: list[torch.Tensor]) -> tuple:
        """(meta-loss ``[P]``, query CE ``[P]``, final net) for given coefficients."""
        net = self._unroll(ep, params)
        z = forward(net.W, ep.x_query, self.cfg.beta)[0][-1]  # [P, Q, n_L]
        ce = F.cross_entropy(z.reshape(-1, self.n_out), ep.y_query.reshape(-1),
                             reduction="none").view(self.P, -1).mean(1)
        l1 = sum(p.abs().sum(1) for p in params)
        return ce + self.l1 * l1, ce, net

    @property
    def uses_adjoint(self) -> bool:
        cfg = self.cfg
        return cfg.gradient == "auto" and adjoint.supported(cfg.feedback, cfg.fb_terms is not None,
                                                            cfg.sym_detach)

    def meta_gradient(self, ep: Episode, params: list[torch.Tensor]):
        """(meta-loss ``[P]``, query CE ``[P]``, final net, grads like params).

        The hand-written reverse pass where it applies, else autograd; both give the
        same numbers (tests/test_adjoint.py).
        """
        params = [p.detach().clone().requires_grad_(True) for p in params]
        if self.uses_adjoint:
            theta_full = params[0] @ self.S
            coef = theta_full.unsqueeze(1) * self.mask
            active = LayerCoefficients.build(theta_full.detach(), self.mask).active
            net0 = init_net(self.cfg.layers, self.seeds, self.episode, self.cfg.init,
                            self.cfg.feedback, self.device)
            ce, net, coef_grad = parallel.meta_loss_and_coef_grad(
                net0, ep.x_train, ep.y_train, ep.x_query, ep.y_query, coef.detach(), active,
                self.cfg.beta, self.cfg.feedback, pool=self.cfg.pool, engine=self.engine,
                threads=self.threads, processes=self.processes)
            l1 = params[0].abs().sum(1)
            loss = ce + self.l1 * l1.detach()
            surrogate = (coef * coef_grad).sum() + (self._l1_gradient_weight() * l1).sum()
            grads = list(torch.autograd.grad(surrogate, params))
            return loss.detach(), ce, net, grads
        loss, ce, net = self.member_losses(ep, params)
        l1 = sum(p.abs().sum(1) for p in params)
        objective = ce + self._l1_gradient_weight() * l1
        finite = torch.isfinite(loss)
        grads = torch.autograd.grad(torch.where(finite, objective,
                                                torch.zeros_like(objective)).sum(),
                                    params, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads,
                                                                           strict=True)]
        return loss, ce, net, grads

    def run_episode(self) -> dict[str, np.ndarray]:
        """Sample tasks, unroll, step Adam; return this episode's metrics ``[P, ...]``.

        Once every member has diverged there is nothing left to compute: the episode's
        record is the last one with NaN metrics and the frozen coefficients."""
        if self._last_record is not None and not bool(self.alive.any()):
            rec = {k: (v if k.startswith("theta") else np.zeros_like(v)
                       if k in ("seconds", "rolled_back") else np.full_like(v, np.nan))
                   for k, v in self._last_record.items()}
            self.collapse.update(self.episode, rec["query_ce"], rec["meta_accuracy"])
            self.episode += 1
            return rec
        rec = self._compute_episode()
        self._last_record = rec
        return rec

    def _compute_episode(self) -> dict[str, np.ndarray]:
        t0 = time.perf_counter()
        ep = self.sampler.sample(self.seeds, self.episode, self.device)
        loss, ce, net, grads = self.meta_gradient(ep, self.params)
        finite = torch.isfinite(loss)
        ok = finite.clone()
        for g in grads:
            ok &= torch.isfinite(g).flatten(1).all(1)
        if self.cfg.grad_clip is not None:
            norm = torch.sqrt(sum(g.flatten(1).pow(2).sum(1) for g in grads))
            scale = (self.cfg.grad_clip / norm.clamp(min=1e-12)).clamp(max=1.0)
            grads = [g * scale.view(-1, *[1] * (g.dim() - 1)) for g in grads]
        before = [p.clone() for p in self.params]
        start = self._state_tensors() if self.last_good is not None else None
        step_mask = self.alive & ok
        prox = None
        if self.cfg.l1_mode == "proximal":
            prox = torch.as_tensor(self.l1, dtype=torch.float32, device=self.device).expand(self.P)
        self.adam.step(self.params, [torch.nan_to_num(g) for g in grads], step_mask, prox)
        if self.bounds is not None:  # the named stabiliser: project onto the box
            self.params[0].copy_(torch.maximum(torch.minimum(self.params[0], self.bounds[1]),
                                               self.bounds[0]))
        episode_ok = ok.clone()
        for p, b in zip(self.params, before, strict=True):  # a step that made theta NaN
            ok &= torch.isfinite(p).flatten(1).all(1)
            p.copy_(torch.where(ok.view(-1, *[1] * (p.dim() - 1)), p, b))
        rolled = torch.zeros_like(ok)
        if start is not None:
            good = episode_ok  # this episode's start state gave finite numbers: keep it
            self.last_good = [torch.where(good.view(-1, *[1] * (o.dim() - 1)), s, o)
                              for s, o in zip(start, self.last_good, strict=True)]
            left = torch.as_tensor(self.rollbacks < self.cfg.rollback, device=self.device)
            rolled = self.alive & ~ok & left
            self._roll_back(rolled)
            ok |= rolled
        newly_dead = self.alive & ~ok
        for i in torch.nonzero(newly_dead).flatten().tolist():
            self.diverged_at[i] = self.episode
        self.alive &= ok

        with torch.no_grad():
            W = [w.detach() for w in net.W]
            det = Net(W=W, Bf=[b.detach() for b in net.Bf] if net.Bf else None, D=net.D)
            q = diagnostics.query_metrics(det, ep.x_query, ep.y_query, self.cfg.beta,
                                          self.cfg.feedback)
        dead = ~self.alive.cpu().numpy() | rolled.cpu().numpy()
        rec = {
            "meta_loss": loss.detach().cpu().numpy(),
            "query_ce": ce.detach().cpu().numpy(),
            "meta_accuracy": q["accuracy"],
            # copies: on the CPU .numpy() shares memory with the tensor Adam updates in place
            "theta": self.params[0].detach().cpu().numpy().copy(),
            "angles": q["angles"],
            "orthonormality_error": q["orthonormality_error"],
        }
        if len(self.params) > 1:
            rec["theta_feedback"] = self.params[1].detach().cpu().numpy().copy()
        for k, v in rec.items():
            if k not in ("theta", "theta_feedback"):
                v = v.astype(np.float64 if v.dtype == np.float64 else np.float32)
                v[dead] = np.nan  # a diverged member's later metrics are not results
                rec[k] = v
        if self.last_good is not None:
            rec["rolled_back"] = rolled.cpu().numpy().astype(np.int8)
        rec["seconds"] = np.full(self.P, time.perf_counter() - t0, dtype=np.float32)
        self.collapse.update(self.episode, rec["query_ce"], rec["meta_accuracy"])
        self.episode += 1
        return rec

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, np.ndarray]:
        state = {f"param{i}": p.detach().cpu().numpy().copy() for i, p in enumerate(self.params)}
        state.update(self.adam.state_dict())
        state["alive"] = self.alive.cpu().numpy().copy()
        state["diverged_at"] = self.diverged_at.copy()
        state.update(self.collapse.state_dict())
        state["episode"] = np.array(self.episode)
        if self.last_good is not None:
            state["rollbacks"] = self.rollbacks.copy()
            state["member_lr"] = self.lr.cpu().numpy().copy()
            for i, t in enumerate(self.last_good):
                state[f"last_good{i}"] = t.cpu().numpy().copy()
        return state

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        for i, p in enumerate(self.params):
            p.copy_(torch.as_tensor(state[f"param{i}"], device=self.device))
        self.adam.load_state_dict(state)
        self.alive = torch.as_tensor(state["alive"], device=self.device).bool()
        self.diverged_at = np.asarray(state["diverged_at"]).copy()
        self.collapse.load_state_dict(state)
        self.episode = int(state["episode"])
        if self.last_good is not None:
            self.rollbacks = np.asarray(state["rollbacks"]).copy()
            self.lr.copy_(torch.as_tensor(state["member_lr"], device=self.device))
            self.last_good = [torch.as_tensor(state[f"last_good{i}"], device=self.device)
                              for i in range(len(self.last_good))]
