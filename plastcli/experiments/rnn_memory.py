"""``plast rnn-memory``: the recurrent delayed-memory task, BPTT vs BPTT+Oja (SPEC §6,
P2 Fig 7), many runs batched along the population axis.

Members. A member is (hidden size, condition, grid point, seed). Members of one hidden size
form one population trained together (:func:`train`); a member's trajectory is the same
alone or batched (its initial weights and its stream come from its own seed only).

Data (all from ``dataset.name``; the same split as ``plast baseline``):
- stream: the TRAIN split minus a held-out part; member p sees its own seeded permutation,
  one image per sequence, one sequence per update;
- selection: the held-out part of the TRAIN split (``selection.heldout`` images); the grid
  stage scores every grid point on it. It is never streamed and is not the validation set;
- validation: a fixed ``online.val_size`` subset of the TEST split behind every curve.

Stages, per hidden size. (1) Grid: every condition's grid points x ``selection.seeds``
seeds (from ``selection.seed``) trained ``selection.samples`` sequences; best point per
condition = highest mean held-out accuracy at the end (skipped when a condition has one
point). (2) Final: the best point of every condition x ``population.seeds`` seeds,
evaluated every ``online.eval_every`` sequences on the validation set.

Store: ``/curves/{val_accuracy, val_loss}`` ``[P, S]`` and ``/curves/hidden_norm``
``[P, S, T+1]`` (mean over validation sequences of ``||sigma(z_t)||``, t = 0..T) against
``/curves/samples_seen`` ``[P, S]``; ``/members/...`` (hidden, condition, grid point,
coefficients, seed, final accuracy); ``/grid/...`` every grid point's held-out accuracy and
the chosen point per (hidden size, condition).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from plastcli import signals
from plastcli.core import rnn
from plastcli.engine.online import eval_points, stream_order
from plastcli.errors import PlastError
from plastcli.experiments.baseline import OnlineData, split_data
from plastcli.experiments.checkpoints import Checkpoints, stack_records
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
from plastcli.recipes import RnnMemoryRecipe
from plastcli.results import statistics
from plastcli.results.store import text_array

N_CLASSES = 10
EVAL_FLOATS = 2_000_000  # hidden states per evaluation chunk: P * chunk * hidden


def grid_points(recipe: RnnMemoryRecipe) -> list[list[tuple[float, float]]]:
    """Per condition, its (theta_1, theta_2) grid points."""
    return [list(itertools.product(c.bptt, c.oja)) for c in recipe.conditions]


def _chunk(P: int, hidden: int) -> int:
    return max(1, EVAL_FLOATS // (P * hidden))


def train(members: Population, hidden: int, recipe: RnnMemoryRecipe, data: OnlineData,
          samples: int, stream: int, device, evaluate: bool, reporter: Reporter,
          ckpt: Checkpoints, unit: str,
          outputs: Callable[[rnn.RnnNet], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Train every member online for ``samples`` sequences as the unit ``unit`` of ``ckpt``
    (read back if finished, continued from its checkpoint if in progress) and return
    ``outputs(final population)`` with the singular values of W_h before and after
    ``[P, n]`` and (when ``evaluate``) one validation record per evaluation point as
    ``rec.<metric>`` ``[n_evals, P, ...]``."""
    finished = ckpt.finished(unit)
    if finished is not None:
        reporter.update(samples)
        return finished
    T, present, beta = recipe.task.T, recipe.task.present, network_activation(recipe)
    images = data.train.images.to(device)
    labels = data.train.labels.to(device)
    xv = data.test.rows(data.val).to(device)
    yv = data.test.labels[data.val].to(device)
    net = rnn.init_rnn(images.shape[1], hidden, N_CLASSES, members.seeds, recipe.network.init,
                       device, *wh_factors(recipe, members.condition))
    diagnostics = {"wh_singular_before": torch.linalg.svdvals(net.Wh).cpu().numpy()}
    order = stream_order(members.seeds, data.pool, samples, stream).to(device)
    th1 = torch.as_tensor(members.coefficients[:, 0], device=device)  # θ₁ (BPTT)
    th2 = torch.as_tensor(members.coefficients[:, 1], device=device)  # θ₂ (Oja)
    points = set(eval_points(samples, recipe.online.eval_every)) if evaluate else set()
    chunk = _chunk(net.P, hidden)
    records: list[dict[str, np.ndarray]] = []

    def record(seen: int) -> None:
        r = rnn.evaluate(net, xv, yv, T, present, beta, chunk)
        rec = {k: v.float().cpu().numpy() for k, v in r.items()}
        rec["samples_seen"] = np.full(net.P, seen, dtype=np.int64)
        records.append(rec)

    start, saved = 0, ckpt.progress(unit)
    if saved is not None:
        start, tensors, records[:] = saved
        net = rnn.RnnNet(*(torch.as_tensor(tensors[k]).to(w) for k, w in
                           zip(("Wx", "Wh", "Wo"), net.weights(), strict=True)))
        reporter.message(f"{unit}: resuming after sequence {start} of {samples}")
        reporter.update(start)
    elif evaluate:
        record(0)
    for t in range(start, samples):
        signals.check()  # a SIGTERM whose exception a weakref callback swallowed
        idx = order[:, t]
        net = rnn.update(net, images[idx].unsqueeze(1), labels[idx].unsqueeze(1), th1, th2, T,
                         present, beta, recipe.oja_pre)
        if (t + 1) in points:
            record(t + 1)
            reporter.update(t + 1, acc=float(np.nanmean(records[-1]["val_accuracy"])))
        elif (t + 1) % 50 == 0 or t + 1 == samples:
            reporter.update(t + 1)
        if ckpt.due(t + 1, samples):
            ckpt.save_progress(unit, t + 1, dict(zip(("Wx", "Wh", "Wo"), net.weights(),
                                                     strict=True)), records)
    # a diverged member's W_h has no singular values: NaN rows, not an error
    Wh = torch.nan_to_num(net.Wh, nan=0.0, posinf=0.0, neginf=0.0)
    after = torch.linalg.svdvals(Wh).cpu().numpy()
    after[~torch.isfinite(net.Wh).flatten(1).all(1).cpu().numpy()] = np.nan
    diagnostics["wh_singular_after"] = after
    out = {**outputs(net), **diagnostics,
           **{f"rec.{k}": v for k, v in stack_records(records).items()}}
    ckpt.finish(unit, out)
    return out


def wh_factors(recipe: RnnMemoryRecipe, condition: np.ndarray) -> tuple[list[str], list[float]]:
    """Per member: W_h's initialiser and gain (its condition's, else the network's)."""
    conds = [recipe.conditions[c] for c in condition]
    return ([c.init_recurrent or recipe.network.init_recurrent for c in conds],
            [recipe.network.gain if c.gain is None else c.gain for c in conds])


def network_activation(recipe: RnnMemoryRecipe) -> rnn.Activation:
    return rnn.Activation(recipe.network.sigma, recipe.network.beta)


def grid_stage(recipe: RnnMemoryRecipe, hidden: int, data: OnlineData, device,
               reporter: Reporter, ckpt: Checkpoints) -> tuple[list[int], dict[str, np.ndarray]]:
    """Score every grid point of every condition on the held-out selection set; return the
    chosen point index per condition and this hidden size's ``/grid`` rows."""
    points = grid_points(recipe)
    seeds = selection_seeds(recipe.selection)
    members = layout(points, None, seeds)
    samples = recipe.selection.samples or recipe.online.samples
    reporter.start(samples, 0, f"grid search {recipe.name} hidden {hidden} "
                   f"({len(members.seeds)} members)")
    xs = data.train.images[data.heldout].to(device)
    ys = data.train.labels[data.heldout].to(device)

    def heldout_accuracy(net: rnn.RnnNet) -> dict[str, np.ndarray]:
        acc = rnn.evaluate(net, xs, ys, recipe.task.T, recipe.task.present,
                           network_activation(recipe), _chunk(net.P, hidden))["val_accuracy"]
        return {"acc": acc.cpu().numpy()}

    acc = train(members, hidden, recipe, data, samples, 1, device, False, reporter, ckpt,
                f"grid-h{hidden}", heldout_accuracy)["acc"]
    acc, means, best = score_points(acc, [len(p) for p in points], len(seeds))
    rows: dict[str, list] = {k: [] for k in ("point_hidden", "point_condition", "point_index",
                                             "point_theta_bptt", "point_theta_oja",
                                             "point_mean_accuracy")}
    for c, pts in enumerate(points):
        for i, (t1, t2) in enumerate(pts):
            for key, v in (("point_hidden", hidden), ("point_condition", c), ("point_index", i),
                           ("point_theta_bptt", t1), ("point_theta_oja", t2),
                           ("point_mean_accuracy", means[c][i])):
                rows[key].append(v)
    arrays = {key: np.array(v, np.float32 if "theta" in key else None)
              for key, v in rows.items()}
    arrays.update({"member_hidden": np.full(len(acc), hidden), "member_condition":
                   members.condition, "member_point": members.point,
                   "member_seed": np.array(members.seeds), "member_selection_accuracy": acc})
    return best, arrays


@dataclass
class RnnResult:
    out: Path
    rows: list[dict]  # per (hidden, condition): chosen coefficients and final accuracy


def _concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Along members; per-unit arrays ``[P, n]`` of different hidden sizes n are padded with
    NaN to the largest (e.g. W_h's singular values)."""
    out = {}
    for k in parts[0]:
        arrays = [p[k] for p in parts]
        if arrays[0].ndim == 2 and len({a.shape[1] for a in arrays}) > 1:
            n = max(a.shape[1] for a in arrays)
            arrays = [np.pad(a.astype(np.float32), ((0, 0), (0, n - a.shape[1])),
                             constant_values=np.nan) for a in arrays]
        out[k] = np.concatenate(arrays)
    return out


def run(recipe: RnnMemoryRecipe, out: Path, *, resume: bool = False, overwrite: bool = False,
        data_dir=None, device: str | None = None, reporter: Reporter | None = None
        ) -> RnnResult:
    """Grid search (where a condition has several points), then the final runs, per hidden
    size; write the store (see module doc)."""
    reporter = reporter or Reporter()
    data = split_data(recipe, data_dir)
    samples = recipe.online.samples
    grid_samples = recipe.selection.samples or samples
    for key, n in (("online.samples", samples), ("selection.samples", grid_samples)):
        if n > len(data.pool):
            raise PlastError(f"{key} = {n} exceeds the {len(data.pool)} stream images")
    points = grid_points(recipe)
    searched = any(len(p) > 1 for p in points)
    ds = recipe.dataset.name
    attrs = {
        "condition_names": [c.name for c in recipe.conditions],
        "hidden_sizes": list(recipe.network.hidden),
        "T": recipe.task.T, "present": recipe.task.present, "oja_pre": recipe.oja_pre,
        **split_attrs(ds, len(data.heldout), len(data.val), grid_samples=grid_samples,
                      grid_seeds=recipe.selection.seeds, searched=searched, item="sequence",
                      per="update", scope=", per hidden size and condition", runs="seeds"),
    }
    r = open_run(recipe, out, [data.train, data.test], resume=resume, overwrite=overwrite,
                 device_name=device, extra_attrs=attrs)
    ckpt = online_checkpoints(r, out, recipe.run.checkpoint_every)
    torch.manual_seed(0)
    seeds = [recipe.population.seed + i for i in range(recipe.population.seeds)]
    grids, curves, members_out, rows = [], [], [], []
    try:
        for hidden in recipe.network.hidden:
            if searched:
                best, g = grid_stage(recipe, hidden, data, r.device, reporter, ckpt)
                grids.append(g)
            else:
                best = [0] * len(points)
            members = layout(points, [[b] for b in best], seeds)
            reporter.start(samples, 0, f"rnn-memory {recipe.name} hidden {hidden} "
                           f"({len(members.seeds)} runs)")
            res = train(members, hidden, recipe, data, samples, 0, r.device, True, reporter,
                        ckpt, f"final-h{hidden}", lambda net: {})
            cur = {k.removeprefix("rec."): np.swapaxes(v, 0, 1) for k, v in res.items()
                   if k.startswith("rec.")}
            diag = {k: v for k, v in res.items() if k.startswith("wh_singular")}
            curves.append(cur)
            final = cur["val_accuracy"][:, -1]
            kinds, gains = wh_factors(recipe, members.condition)
            members_out.append({
                **members.columns([c.name for c in recipe.conditions]),
                "hidden": np.full(len(members.seeds), hidden),
                "theta_bptt": members.coefficients[:, 0],
                "theta_oja": members.coefficients[:, 1],
                "final_val_accuracy": final, **diag,
                "init_recurrent": text_array(kinds), "gain": np.array(gains, np.float32),
            })
            for c, cond in enumerate(recipe.conditions):
                m, lo, hi = statistics.bootstrap_ci(final[members.condition == c], CI_LEVEL,
                                                     CI_RESAMPLES)
                t1, t2 = points[c][best[c]]
                rows.append({"hidden": hidden, "condition": cond.name, "theta_bptt": t1,
                             "theta_oja": t2, "mean": float(m), "lo": float(lo),
                             "hi": float(hi), "searched": len(points[c]) > 1})
        allc = _concat(curves)
        if r.resumed:  # a run killed while writing its results left some
            r.store.truncate("curves", 0)
        r.store.append("curves", [{k: v[:, i] for k, v in allc.items()}
                                  for i in range(allc["samples_seen"].shape[1])])
        r.store.write_arrays("members", _concat(members_out))
        if grids:
            g = _concat(grids)
            chosen = [(row["hidden"], recipe.conditions.index(next(
                c for c in recipe.conditions if c.name == row["condition"]))) for row in rows]
            best_rows = [int(np.nonzero((g["point_hidden"] == h) & (g["point_condition"] == c)
                                        & np.isclose(g["point_theta_bptt"], row["theta_bptt"])
                                        & np.isclose(g["point_theta_oja"], row["theta_oja"]))[0][0])
                         for (h, c), row in zip(chosen, rows, strict=True)]
            g["best_row"] = np.array(best_rows)
            g["best_hidden"] = np.array([h for h, _ in chosen])
            g["best_condition"] = np.array([c for _, c in chosen])
            r.store.write_arrays("grid", g, selection=attrs["selection_split"])
    except BaseException as exc:  # the store must never look complete or still running
        mark_failed(r.store, exc, "continue with --resume")
        raise
    finish(r.store, eval_points=eval_points(samples, recipe.online.eval_every))
    return RnnResult(out, rows)
