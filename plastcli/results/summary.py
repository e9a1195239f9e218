"""``plast show``: a Rich summary of any result store (reads h5py/numpy only)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rich.markup import escape
from rich.panel import Panel
from rich.syntax import Syntax
from rich.table import Table

from plastcli.core.vocabulary import grid_dataset_name
from plastcli.lock import holder
from plastcli.results.statistics import TAIL, bootstrap_ci, final_window
from plastcli.results.store import read_store, text_values


def final_values(arr: np.ndarray, group: str) -> np.ndarray:
    """Per member ``[P]`` of arr ``[P, E]``: the final value of episodes/ metrics
    (:func:`plastcli.results.statistics.final_window`, the last 50 finite episodes) or the last
    value of curves/."""
    if group == "episodes":
        return final_window(arr)
    return arr[:, -1]


def writer_note(path: str | Path, status: str) -> str:
    """Who writes the store now, from its lock file (a running store without a live
    writer was killed and can be resumed)."""
    found = holder(path)
    if found is None:
        return "" if status != "running" else ("[yellow]no plast run holds its lock: the run "
                                               "was killed; continue it with --resume[/]")
    who, alive = found
    if alive is False:
        return (f"[yellow]not running: its writer ({who.describe()}) is gone; continue it "
                f"with --resume[/]")
    if alive is None:
        return f"being written by {who.describe()} (another host: cannot check it is alive)"
    return f"[yellow]being written now[/] by {who.describe()}; this shows its last checkpoint"


def store_summary(path: str | Path) -> list:
    s = read_store(path)
    a = s.attrs
    colour = "green" if s.complete else ("yellow" if s.status == "running" else "red")
    head = Table.grid(padding=(0, 2))
    for key in ("name", "plast_experiment", "created", "git_commit", "device", "torch_version",
                "datasets", "sign_convention"):
        if key in a:
            head.add_row(key, escape(str(a[key])))
    if "engine" in a:  # how a meta-training ran (plastcli/engine/parallel.py)
        how = (f"{a['engine_threads']} thread(s)" if str(a["engine"]) == "fused"
               else f"{a.get('processes', 1)} process(es) × {a.get('torch_threads', '?')} "
                    "torch thread(s)")
        head.add_row("engine", f"{a['engine']}, {how}")
    head.add_row("status", f"[{colour}]{s.status}[/]")
    writer = writer_note(path, s.status)
    if writer:
        head.add_row("writer", writer)
    out: list = [Panel(head, title=escape(str(path)))]
    if "recipe_yaml" in a:
        # wrapped, never cropped: a recipe's description is wider than a terminal
        out.append(Panel(Syntax(a["recipe_yaml"], "yaml", word_wrap=True),
                         title="resolved recipe"))

    seeds = s.arrays.get("members/seed")
    labels = member_labels(s)
    for group in ("episodes", "curves"):
        # episodes/seconds is the whole population's wall time per episode: said once below
        scalars = {k.split("/", 1)[1]: v for k, v in s.arrays.items()
                   if k.startswith(group + "/") and v.ndim == 2
                   and k not in ("curves/samples_seen", "episodes/seconds")}
        if not scalars:
            continue
        n = next(iter(scalars.values())).shape[1]
        what = f"mean of last {min(TAIL, n)} finite" if group == "episodes" else "last value"
        t = Table(title=f"{group}: {n} {'episodes' if group == 'episodes' else 'evaluations'}"
                        f", per member ({what})")
        t.add_column("member", justify="right")
        for name in labels:
            t.add_column(name)
        if seeds is not None:
            t.add_column("seed", justify="right")
        for k in scalars:
            t.add_column(k, justify="right")
        finals = {k: final_values(v, group) for k, v in scalars.items()}
        for i in range(len(next(iter(finals.values())))):
            row = [str(i), *(escape(str(v[i])) for v in labels.values())] + \
                ([str(seeds[i])] if seeds is not None else [])
            t.add_row(*row, *[f"{finals[k][i]:.4g}" for k in scalars])
        out.append(t)
        if group == "curves" and "val_accuracy" in finals and labels:
            out.append(group_table(labels, finals["val_accuracy"]))

    for key, names_attr in (("episodes/theta", "term_names"),
                            ("episodes/theta_feedback", "feedback_term_names")):
        if key in s and s[key].shape[1] > 0:
            names = s.json_attr(names_attr, [])
            t = Table(title=f"final coefficients ({key.split('/')[1]})")
            t.add_column("member", justify="right")
            for n in names:
                t.add_column(n, justify="right")
            for i, row in enumerate(s[key][:, -1]):
                t.add_row(str(i), *[f"{v:.4g}" for v in row])
            out.append(t)
    chosen = condition_coefficients(s)
    if chosen is not None:
        out.append(chosen)
    for key, what in (("members/diverged_at", "diverged"), ("members/collapsed_at", "collapsed")):
        if key in s:
            d = s[key]
            if (d >= 0).any():
                out.append(f"[yellow]{what} members: "
                           f"{', '.join(f'{i} at episode {e}' for i, e in enumerate(d) if e >= 0)}")
    if "episodes/seconds" in s and s["episodes/seconds"].size:
        sec = s["episodes/seconds"][0]
        sec = sec[np.isfinite(sec)]
        if sec.size:
            out.append(f"wall time: {sec.sum():.1f} s for {sec.size} episodes of the whole "
                       f"population (median {np.median(sec):.3g} s per episode)")
    grid_keys = s.json_attr("grid_keys", [])
    if grid_keys:
        out.append(grid_table(s, grid_keys))
    return out


def condition_coefficients(s) -> Table | None:
    """Online stores (baseline, init-study): each condition's coefficients as its runs used
    them (the grid search's choice), with what each term computes; None for other stores."""
    names, terms = s.json_attr("condition_names"), s.json_attr("condition_terms")
    if not names or not terms or "members/theta" not in s or "members/condition" not in s:
        return None
    pool = s.json_attr("term_names", [])
    decl = {d.get("name"): d for d in s.json_attr("term_declarations", []) or []
            if isinstance(d, dict)}
    t = Table(title="coefficients per condition (as its runs used them)")
    for col in ("condition", "term", "θ", *(["computes"] if decl else [])):
        t.add_column(col, justify="right" if col == "θ" else "left")
    cond = np.asarray(s["members/condition"])
    for c, (name, used) in enumerate(zip(names, terms, strict=False)):
        rows = np.flatnonzero(cond == c)
        if not rows.size:
            continue
        theta = s["members/theta"][rows[0]]
        for term in used:
            how = [escape(str(decl.get(term, {}).get("formula", "")))] if decl else []
            t.add_row(escape(name), escape(term), f"{theta[pool.index(term)]:.4g}", *how)
    return t


def member_labels(s) -> dict[str, list[str]]:
    """What tells members apart besides their seed, ``[P]`` each: the condition (online
    stores), the hidden size (several in one rnn-memory store), the layer assignment
    (ablate-layers)."""
    out: dict[str, list[str]] = {}
    if "members/condition_name" in s:
        out["condition"] = text_values(s["members/condition_name"])
    elif "members/condition" in s and s.json_attr("condition_names"):
        names = s.json_attr("condition_names")
        out["condition"] = [names[int(c)] for c in s["members/condition"]]
    if "members/hidden" in s and len(set(s["members/hidden"].tolist())) > 1:
        out["hidden"] = [str(h) for h in s["members/hidden"]]
    if "members/assignment" in s:
        out["assignment"] = text_values(s["members/assignment"])
    return out


def group_table(labels: dict[str, list[str]], final: np.ndarray) -> Table:
    """Per group of members with the same labels: final validation accuracy, mean over its
    seeds with the 98% bootstrap CI (as the run's own table and the figures give it)."""
    keys = list(zip(*labels.values(), strict=True))
    t = Table(title="final validation accuracy per group: mean [98% CI] over seeds")
    for name in labels:
        t.add_column(name)
    t.add_column("seeds", justify="right")
    t.add_column("mean [98% CI]", justify="right")
    for key in dict.fromkeys(keys):
        vals = final[[k == key for k in keys]]
        m, lo, hi = bootstrap_ci(vals[:, None])
        t.add_row(*map(escape, key), str(len(vals)), f"{m[0]:.4f} [{lo[0]:.4f}, {hi[0]:.4f}]")
    return t


def grid_table(s, grid_keys: list[str]) -> Table:
    """Meta-train population grid: one row per grid point, finals over its seeds."""
    cols = [grid_dataset_name(k) for k in grid_keys]
    vals = np.stack([s[f"members/{c}"] for c in cols], 1)  # [P, K]
    acc = final_values(s["episodes/meta_accuracy"], "episodes")
    t = Table(title="population grid: meta-accuracy per grid point (median over seeds)")
    for k in grid_keys:
        t.add_column(k, justify="right")
    for k in ("seeds", "median meta-acc", "diverged", "collapsed"):
        t.add_column(k, justify="right")
    points, index = np.unique(vals, axis=0, return_inverse=True)
    index = np.asarray(index).reshape(-1)
    for g, point in enumerate(points):
        rows = index == g
        n_div = int((s["members/diverged_at"][rows] >= 0).sum()) \
            if "members/diverged_at" in s else 0
        n_col = int((s["members/collapsed_at"][rows] >= 0).sum()) \
            if "members/collapsed_at" in s else 0
        t.add_row(*[f"{v:.3g}" for v in point], str(int(rows.sum())),
                  f"{np.nanmedian(acc[rows]):.3f}", str(n_div), str(n_col))
    return t
