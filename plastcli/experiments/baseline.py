"""``plast baseline`` (and the machinery of ``plast init-study``): online learning with fixed
coefficients, many runs batched along the population axis (P1 Fig 1; P2 Figs 1-6, S1).

Members. A member is (condition, grid point, seed). Conditions are the recipe's rules
(BP, FA, DFA, BP+Oja, ...; init-study repeats each per initialiser). Members sharing a
feedback mode and initialiser form one *group* trained as one population by
:func:`plastcli.engine.online.run_online`; members of a condition are contiguous.

Data (all from ``dataset.name``):
- stream: the TRAIN split minus a held-out part; member p sees its own seeded permutation;
- selection: the held-out part of the TRAIN split (``selection.heldout`` images, seeded);
  the grid stage scores every grid point on it. It is never streamed and is not the
  validation set;
- validation: a fixed ``online.val_size`` subset of the TEST split; the curves, end-of-run
  analyses and the results tables use it.

Stages. (1) Grid: every grid point x ``selection.seeds`` seeds (seeds from
``selection.seed``) trained ``selection.samples`` samples; best point per condition =
highest mean held-out accuracy at the end. Skipped when every condition has one point.
(2) Final: the best point of every condition x ``population.seeds`` seeds, evaluated every
``online.eval_every`` samples on the validation set.

Store: ``/curves/<metric>`` ``[P, S, ...]`` against ``/curves/samples_seen`` ``[P, S]``;
``/stats/<metric>_{mean,lo,hi}`` ``[C, S, ...]`` (mean over runs, 98% bootstrap CI, 500
resamples); ``/analysis/...`` end-of-run PCA spectra and reconstructions; ``/members/...``;
``/grid/...``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from plastcli import signals
from plastcli.core.network import Net, forward, init_net
from plastcli.core.rules import PSEUDO, LayerCoefficients, layer_mask
from plastcli.core.terms import BUILTIN_POOL, TERM_NAMES, Pool, declared, make_pool
from plastcli.data import Dataset, generator_for, load_dataset
from plastcli.engine import diagnostics
from plastcli.engine.online import eval_points, run_online, stream_order
from plastcli.experiments.checkpoints import Checkpoints, load_net, net_tensors, stack_records
from plastcli.experiments.common import (
    CI_LEVEL,
    CI_RESAMPLES,
    finish,
    mark_failed,
    online_checkpoints,
    open_run,
    split_attrs,
)
from plastcli.experiments.population import Population, layout
from plastcli.experiments.selection import score_points, selection_seeds
from plastcli.progress import Reporter
from plastcli.recipes import BaselineRecipe, InitStudyRecipe
from plastcli.results import statistics

CHUNK = 500  # validation images per forward pass when only accuracy is needed


# --------------------------------------------------------------------------- members


@dataclass
class Condition:
    """A resolved rule: name, feedback path, terms, initialiser and coefficient grid."""

    name: str
    feedback: str
    terms: list[str]
    init: str
    grid: dict[str, list[float]]
    pool: Pool = BUILTIN_POOL  # every condition's terms: one pool for the store

    def points(self) -> list[np.ndarray]:
        """Every grid point as a full-pool coefficient vector ``[R]``."""
        out = []
        index = self.pool.index
        for values in itertools.product(*(self.grid[t] for t in self.terms)):
            theta = np.zeros(len(self.pool), dtype=np.float32)
            for t, v in zip(self.terms, values, strict=True):
                theta[index[t]] = v
            out.append(theta)
        return out


def condition_pool(recipe: BaselineRecipe) -> Pool:
    """The built-in terms, then the others the conditions name (declared under ``define``
    or grammar terms); the built-in pool when there are none."""
    return make_pool([t for c in recipe.conditions for t in c.terms], declared(recipe.define))


def resolve_conditions(recipe: BaselineRecipe) -> list[Condition]:
    """The recipe's conditions; init-study repeats each one per initialiser ('BP (naive)')."""
    pool = condition_pool(recipe)
    if isinstance(recipe, InitStudyRecipe):
        return [Condition(f"{c.name} ({init})", c.feedback, list(c.terms), init, dict(c.grid),
                          pool) for init in recipe.inits for c in recipe.conditions]
    return [Condition(c.name, c.feedback, list(c.terms), recipe.network.init, dict(c.grid),
                      pool) for c in recipe.conditions]


def network_kind(conds: list[Condition]):
    """Condition index -> (feedback, init): members that share it train as one group."""
    return lambda c: (conds[c].feedback, conds[c].init)


# --------------------------------------------------------------------------- data


@dataclass
class OnlineData:
    """Stream pool, selection set and validation set (see module doc)."""

    train: Dataset
    test: Dataset
    pool: torch.Tensor  # [N_stream] train indices available to streams
    heldout: torch.Tensor  # [N_sel] train indices for grid selection
    val: torch.Tensor  # [V] test indices for curves


def split_data(recipe: BaselineRecipe, data_dir=None) -> OnlineData:
    train = load_dataset(recipe.dataset.name, "train", data_dir)
    test = load_dataset(recipe.dataset.name, "test", data_dir)
    n_held = recipe.selection.heldout
    if n_held >= len(train.labels):
        from plastcli.errors import PlastError

        raise PlastError(f"selection.heldout = {n_held} leaves no training images "
                         f"({len(train.labels)} in the train split)")
    perm = torch.randperm(len(train.labels), generator=generator_for(0, 0, "grid"))
    heldout, pool = perm[:n_held].sort().values, perm[n_held:].sort().values
    if recipe.online.val_size > len(test.labels):
        from plastcli.errors import PlastError

        raise PlastError(f"online.val_size = {recipe.online.val_size} exceeds the "
                         f"{len(test.labels)} images of the test split")
    val = torch.randperm(len(test.labels), generator=generator_for(0, 0, "val"))
    return OnlineData(train, test, pool, heldout, val[: recipe.online.val_size])


# --------------------------------------------------------------------------- training


def group_rule(members: Population, sl: slice, conds: list[Condition], L: int,
               device) -> LayerCoefficients:
    theta = torch.as_tensor(members.coefficients[sl], device=device)
    pool = conds[0].pool
    mask = torch.stack([layer_mask(conds[c].terms, None, L, pool)
                        for c in members.condition[sl]])
    return LayerCoefficients.build(theta, mask.to(device), pool)


@torch.no_grad()
def chunked_accuracy(W: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                     beta: float) -> torch.Tensor:
    """Accuracy ``[P]`` of every member on the same images x ``[N, n_0]``, labels ``[N]``."""
    P = W[0].shape[0]
    correct = torch.zeros(P, device=x.device)
    for i in range(0, len(y), CHUNK):
        xb = x[i : i + CHUNK].unsqueeze(0).expand(P, -1, -1)
        z = forward(W, xb, beta)[0][-1]
        correct += (z.argmax(-1) == y[i : i + CHUNK]).float().sum(-1)
    return correct / len(y)


class Evaluator:
    """The periodic evaluation of one group on the validation set: per-member records."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, n_norm: int, beta: float,
                 feedback: str, rule: LayerCoefficients, pseudo: torch.Tensor):
        self.x, self.y, self.n_norm, self.beta = x, y, n_norm, beta
        self.feedback, self.rule, self.pseudo = feedback, rule, pseudo
        self.records: list[dict[str, np.ndarray]] = []

    def __call__(self, net: Net, seen: int) -> None:
        P = net.W[0].shape[0]
        xb = self.x.unsqueeze(0).expand(P, -1, -1)
        yb = self.y.unsqueeze(0).expand(P, -1)
        zs, ys = forward(net.W, xb, self.beta)
        L = net.n_layers
        z_out = zs[-1]
        loss = F.cross_entropy(z_out.reshape(-1, z_out.shape[-1]), yb.reshape(-1),
                               reduction="none").view(P, -1).mean(1)
        if self.feedback == "sym":
            angles = torch.zeros(P, L)
        else:
            angles = diagnostics.alignment_angles(net, zs, ys, yb, self.beta, self.feedback)
        k = self.n_norm
        bp, whole = diagnostics.update_norms(net, xb[:, :k], yb[:, :k], self.rule, self.pseudo,
                                             self.beta, self.feedback)
        rec = {
            "samples_seen": np.full(P, seen, dtype=np.int64),
            "val_accuracy": diagnostics.accuracy(z_out, yb),
            "val_loss": loss,
            "angles": angles,
            "activation_norm": diagnostics.activation_norms(ys),
            "reconstruction_error": diagnostics.reconstruction_error(net.W, ys),
            "update_norm_bp": bp,
            "update_norm": whole,
        }
        self.records.append({k: v if isinstance(v, np.ndarray) else v.float().cpu().numpy()
                             for k, v in rec.items()})


def end_analysis(net: Net, x: torch.Tensor, n_images: int, beta: float) -> dict[str, np.ndarray]:
    """PCA spectra of every hidden layer over the validation set and reconstructions of the
    first ``n_images`` validation images from every hidden layer (P2 Figs 3-4)."""
    P = net.W[0].shape[0]
    _, ys = forward(net.W, x.unsqueeze(0).expand(P, -1, -1), beta)
    L = net.n_layers
    out = {f"pca_cumvar_y{l}": diagnostics.pca_cumulative_variance(ys[l]).cpu().numpy()
           for l in range(1, L)}
    hidden = list(range(1, L))
    out["recon_images"] = diagnostics.reconstruct_inputs(
        net.W, [y[:, :n_images] for y in ys], hidden).cpu().numpy()  # [P, n, L-1, n_0]
    return out


def train_members(members: Population, conds: list[Condition], recipe: BaselineRecipe,
                  data: OnlineData, samples: int, stream: int, device, evaluate: bool,
                  reporter: Reporter, ckpt: Checkpoints, stage: str,
                  outputs: Callable[[Net], dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """Run every group of ``members`` online for ``samples`` steps and return each group's
    ``outputs(final net)``, in group order; with ``evaluate`` they also hold its evaluation
    records as ``rec.<metric>`` ``[n_evals, P_group, ...]``.

    Each group is a unit ``<stage><g>`` of ``ckpt``: a finished group's outputs are read
    back, and a group in progress continues from its last checkpoint."""
    layers, beta = list(recipe.network.layers), recipe.network.beta
    L, n_out = len(layers) - 1, layers[-1]
    images, labels = data.train.images.to(device), data.train.labels.to(device)
    xv = data.test.rows(data.val).to(device)
    yv = data.test.labels[data.val].to(device)
    results = []
    for g, (sl, (feedback, init)) in enumerate(members.groups(network_kind(conds))):
        unit, base = f"{stage}{g}", g * samples
        finished = ckpt.finished(unit)
        if finished is not None:
            reporter.update(base + samples)
            results.append(finished)
            continue
        seeds = members.seeds[sl]
        net = init_net(layers, seeds, 0, init, feedback, device)
        rule = group_rule(members, sl, conds, L, device)
        order = stream_order(seeds, data.pool, samples, stream).to(device)
        pseudo = torch.as_tensor(members.coefficients[sl, PSEUDO], device=device)
        ev = Evaluator(xv, yv, recipe.online.update_norm_samples, beta, feedback, rule, pseudo)
        start, saved = 0, ckpt.progress(unit)
        if saved is not None:
            start, tensors, ev.records = saved
            net = load_net(net, tensors)
            reporter.message(f"{unit}: resuming after sample {start} of {samples}")
            reporter.update(base + start)

        def on_eval(net_now: Net, seen: int, ev=ev, base=base) -> None:
            signals.check()  # a SIGTERM whose exception a weakref callback swallowed
            if evaluate:
                ev(net_now, seen)
            reporter.update(base + seen, **({"acc": float(ev.records[-1]["val_accuracy"].mean())}
                                            if evaluate else {}))

        def on_step(net_now: Net, seen: int, ev=ev, unit=unit) -> None:
            if ckpt.due(seen, samples):
                ckpt.save_progress(unit, seen, net_tensors(net_now), ev.records)

        net = run_online(net, rule, images, labels, order, n_out, beta, feedback,
                         recipe.online.eval_every if evaluate else max(1, samples // 10),
                         on_eval, start=start, on_step=on_step)
        out = outputs(net)
        out.update({f"rec.{k}": v for k, v in stack_records(ev.records).items()})
        ckpt.finish(unit, out)
        results.append(out)
    return results


# --------------------------------------------------------------------------- stages


def grid_stage(conds: list[Condition], recipe: BaselineRecipe, data: OnlineData, device,
               reporter: Reporter, ckpt: Checkpoints) -> tuple[list[int], dict[str, np.ndarray]]:
    """Score every grid point on the held-out selection set; return the best point index per
    condition and the ``/grid`` arrays."""
    points = [c.points() for c in conds]
    seeds = selection_seeds(recipe.selection)
    members = layout(points, None, seeds)
    samples = recipe.selection.samples or recipe.online.samples
    n_groups = len(members.groups(network_kind(conds)))
    reporter.start(samples * n_groups, 0, f"grid search {recipe.name} ({len(members.seeds)} "
                   f"members)")
    xs = data.train.images[data.heldout].to(device)
    ys = data.train.labels[data.heldout].to(device)

    def heldout_accuracy(net: Net) -> dict[str, np.ndarray]:
        return {"acc": chunked_accuracy(net.W, xs, ys, recipe.network.beta).cpu().numpy()}

    parts = train_members(members, conds, recipe, data, samples, 1, device, False, reporter,
                          ckpt, "grid", heldout_accuracy)
    acc = np.concatenate([p["acc"] for p in parts])
    acc, means, chosen = score_points(acc, [len(p) for p in points], len(seeds))
    point_cond = [c for c, pts in enumerate(points) for _ in pts]
    point_theta = [theta for pts in points for theta in pts]
    point_mean = [m for ms in means for m in ms]
    starts = np.cumsum([0] + [len(p) for p in points])
    best = [int(starts[c]) + b for c, b in enumerate(chosen)]
    arrays = {
        "member_condition": members.condition, "member_theta": members.coefficients,
        "member_seed": np.array(members.seeds), "member_selection_accuracy": acc,
        "point_condition": np.array(point_cond), "point_theta": np.stack(point_theta),
        "point_mean_accuracy": np.array(point_mean), "best_point": np.array(best),
        "best_theta": np.stack([point_theta[b] for b in best]),
    }
    return best, arrays


@dataclass
class BaselineResult:
    out: Path
    conditions: list[str]
    theta: np.ndarray  # [C, R] chosen coefficients
    final_mean: np.ndarray  # [C] final validation accuracy, mean over runs
    final_lo: np.ndarray
    final_hi: np.ndarray
    grid_searched: bool
    terms: list[list[str]]
    term_names: list[str] = field(default_factory=lambda: list(TERM_NAMES))  # theta's columns
    diverged: list[int] = field(default_factory=list)  # [C] runs whose final loss is not finite


def stats(curves: dict[str, np.ndarray], condition: np.ndarray, C: int) -> dict[str, np.ndarray]:
    """Mean and 98% bootstrap CI (500 resamples across runs) per condition of every curve."""
    out = {}
    for key, arr in curves.items():
        if key == "samples_seen":
            continue
        m, lo, hi = zip(*(statistics.bootstrap_ci(arr[condition == c], CI_LEVEL, CI_RESAMPLES)
                          for c in range(C)), strict=True)
        out[f"{key}_mean"], out[f"{key}_lo"], out[f"{key}_hi"] = map(np.stack, (m, lo, hi))
    return out


def run(recipe: BaselineRecipe, out: Path, *, resume: bool = False, overwrite: bool = False,
        data_dir=None, device: str | None = None, reporter: Reporter | None = None
        ) -> BaselineResult:
    """Grid search (if any), then the final runs; write the store (see module doc)."""
    from plastcli.errors import PlastError

    reporter = reporter or Reporter()
    conds = resolve_conditions(recipe)
    data = split_data(recipe, data_dir)
    ds = recipe.dataset.name
    samples = recipe.online.samples
    if samples > len(data.pool):
        raise PlastError(f"online.samples = {samples} exceeds the {len(data.pool)} stream images")
    grid_samples = recipe.selection.samples or samples
    if grid_samples > len(data.pool):
        raise PlastError(f"selection.samples = {grid_samples} exceeds the {len(data.pool)} "
                         f"stream images")
    searched = any(len(c.points()) > 1 for c in conds)
    attrs = {
        "condition_names": [c.name for c in conds],
        "condition_feedback": [c.feedback for c in conds],
        "condition_terms": [c.terms for c in conds],
        "condition_init": [c.init for c in conds],
        "term_names": conds[0].pool.names,
        # a user's own terms (rule.define or grammar terms): what each computes
        **({"term_declarations": [t.to_dict() for t in conds[0].pool.terms]}
           if conds[0].pool is not BUILTIN_POOL else {}),
        **split_attrs(ds, len(data.heldout), len(data.val), grid_samples=grid_samples,
                      grid_seeds=recipe.selection.seeds, searched=searched),
    }
    r = open_run(recipe, out, [data.train, data.test], resume=resume, overwrite=overwrite,
                 device_name=device, extra_attrs=attrs)
    ckpt = online_checkpoints(r, out, recipe.run.checkpoint_every)
    torch.manual_seed(0)
    try:
        if searched:
            best, grid_arrays = grid_stage(conds, recipe, data, r.device, reporter, ckpt)
            r.store.write_arrays("grid", grid_arrays)
            chosen = [grid_arrays["point_theta"][b] for b in best]
        else:
            chosen = [c.points()[0] for c in conds]
        seeds = [recipe.population.seed + i for i in range(recipe.population.seeds)]
        members = layout([[t] for t in chosen], None, seeds)
        n_groups = len(members.groups(network_kind(conds)))
        reporter.start(samples * n_groups, 0, f"online {recipe.name} ({len(members.seeds)} runs)")
        xv = data.test.rows(data.val).to(r.device)
        parts = train_members(members, conds, recipe, data, samples, 0, r.device, True,
                              reporter, ckpt, "final",
                              lambda net: end_analysis(net, xv, recipe.online.recon_images,
                                                       recipe.network.beta))
        # records [n_evals, P_group, ...] per group -> curves [P, n_evals, ...]
        curves = {k.removeprefix("rec."): np.concatenate([np.swapaxes(p[k], 0, 1)
                                                          for p in parts])
                  for k in parts[0] if k.startswith("rec.")}
        if r.resumed:  # a run killed while writing its results left some
            r.store.truncate("curves", 0)
        r.store.append("curves", [{k: v[:, i] for k, v in curves.items()}
                                  for i in range(curves["samples_seen"].shape[1])])
        C = len(conds)
        r.store.write_arrays("stats", stats(curves, members.condition, C))
        arrays = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]
                  if not k.startswith("rec.")}
        arrays["recon_inputs"] = xv[: recipe.online.recon_images].cpu().numpy()
        arrays["recon_labels"] = data.test.labels[data.val][: recipe.online.recon_images].numpy()
        arrays["final_val_accuracy"] = curves["val_accuracy"][:, -1]
        r.store.write_arrays("analysis", arrays)
        columns = members.columns([c.name for c in conds])
        del columns["grid_point"]  # one point per condition: the chosen one, in /grid
        r.store.write_arrays("members", {**columns, "theta": members.coefficients})
    except BaseException as exc:  # the store must never look complete or still running
        mark_failed(r.store, exc, "continue with --resume")
        raise
    final = curves["val_accuracy"][:, -1]
    m, lo, hi = zip(*(statistics.bootstrap_ci(final[members.condition == c], CI_LEVEL,
                                               CI_RESAMPLES) for c in range(C)), strict=True)
    finish(r.store, eval_points=eval_points(samples, recipe.online.eval_every))
    return BaselineResult(out, [c.name for c in conds], np.stack(chosen), np.array(m),
                          np.array(lo), np.array(hi), searched, [c.terms for c in conds],
                          conds[0].pool.names,
                          [int((~np.isfinite(curves["val_loss"][members.condition == c, -1]))
                               .sum()) for c in range(C)])
