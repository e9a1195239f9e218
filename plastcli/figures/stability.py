"""The stability map (issue 10 §3): where each pool term keeps the inner loop usable.

Reads ``results/2022/stability/<term>.h5``: meta-train stores with ``meta.lr: 0`` (theta
never moves) and a ``population.grid`` over one term's initial coefficient next to
``pseudo_grad``; every episode is a fresh task. A coefficient is *usable* when all its
tasks stay finite and end with a mean query loss below chance (ln M). It is *safe*
when its tasks stay finite and its mean query loss is at most ``SAFE_MARGIN`` above
both chance and the term switched off (θ = 0, pseudo_grad alone): the term does not
break the inner loop, even if it does not help. The safe interval around 0 is what a
coefficient bound (``meta.bounds``) may be taken from.
"""

from __future__ import annotations

import numpy as np
from matplotlib.ticker import NullFormatter

from plastcli.core.terms import BUILTIN, grammar_names
from plastcli.core.vocabulary import grid_dataset_name
from plastcli.errors import PlastError
from plastcli.figures import register
from plastcli.figures.style import subplots
from plastcli.results.collapse import chance_loss

STABILITY_TERMS = tuple(t.name for t in BUILTIN)  # the ten terms of SPEC §3.1
# The other 39 terms of rule.terms: grammar (a coarser scan: tools/grammar_stability_recipes.py)
GRAMMAR_TERMS = tuple(n for n in grammar_names() if n not in STABILITY_TERMS)
STORES = tuple(f"stability/{t}" for t in STABILITY_TERMS)
GRAMMAR_STORES = tuple(f"stability/{t}" for t in GRAMMAR_TERMS)
SAFE_MARGIN = 0.1  # nats above max(chance, CE with the term off)


def stability_rows(st) -> dict[str, np.ndarray]:
    """Per grid value of one stability store: coefficient ``[G]``, mean query CE over the
    tasks ``[G]`` (inf where a task went non-finite), usable ``[G]`` bool."""
    import yaml

    recipe = yaml.safe_load(st.attrs["recipe_yaml"])
    keys = list(recipe["population"].get("grid", {}))
    if len(keys) != 1 or not keys[0].startswith("rule.init."):
        raise PlastError(f"{st.path}: a stability map grids one rule.init.<term>, "
                         f"this store grids {keys or 'nothing'}")
    key = keys[0]
    chance = chance_loss(recipe["task"]["classes"])
    coef = st[f"members/{grid_dataset_name(key)}"]
    ce = np.asarray(st["episodes/query_ce"], dtype=np.float64)  # [G, tasks]
    finite = np.isfinite(ce).all(1)
    mean_ce = np.where(finite, np.where(np.isfinite(ce), ce, 0).mean(1), np.inf)
    usable = finite & (mean_ce < chance)
    off = mean_ce[coef == 0]  # pseudo_grad's own map has no "off" point: its best instead
    base = float(off[0]) if len(off) else float(np.min(mean_ce))
    reference = max(chance, base) if np.isfinite(base) else chance
    safe = finite & (mean_ce <= reference + SAFE_MARGIN)
    return {"term": key.removeprefix("rule.init."), "coef": coef, "ce": mean_ce,
            "usable": usable, "safe": safe, "chance": chance, "tasks": ce.shape[1],
            "pseudo": recipe["rule"]["init"].get("pseudo_grad")}


def interval(rows: dict, which: str) -> tuple[float, float] | None:
    """(low, high) of the contiguous run of ``which`` ('usable' or 'safe') coefficients
    around θ = 0 (around the best one where 0 is not in the grid or not in the run)."""
    order = np.argsort(rows["coef"])
    ok, c = rows[which][order], rows["coef"][order]
    if not ok.any():
        return None
    zero = np.nonzero((c == 0) & ok)[0]
    start = int(zero[0]) if len(zero) else int(np.argmin(np.where(ok, rows["ce"][order],
                                                                  np.inf)))
    lo = hi = start
    while lo > 0 and ok[lo - 1]:
        lo -= 1
    while hi < len(c) - 1 and ok[hi + 1]:
        hi += 1
    return float(c[lo]), float(c[hi])


@register("2022", "fig-stability-map", stores=STORES[:1], optional=STORES[1:])
def stability_map(s):
    present = [n for n in STORES if n in s]
    fig, axes = subplots(len(present), ncols=min(5, len(present)), size=(3.3, 2.8))
    for ax, name in zip(axes, present, strict=True):
        rows = stability_rows(s[name])
        c, ce = rows["coef"], rows["ce"]
        top = np.nanmax(np.where(np.isfinite(ce), ce, np.nan)) if np.isfinite(ce).any() else 10
        y = np.where(np.isfinite(ce), ce, top * 1.5)
        fin = np.isfinite(ce)  # the line joins values only; a non-finite ✕ stands alone
        ax.plot(c[fin], y[fin], color="0.6", lw=0.8, zorder=1)
        ax.scatter(c[rows["usable"]], y[rows["usable"]], color="C2", s=18, zorder=2,
                   label="below chance")
        meh = rows["safe"] & ~rows["usable"]
        ax.scatter(c[meh], y[meh], color="C0", s=18, zorder=2, label="safe, not helping")
        bad = ~rows["safe"] & np.isfinite(ce)
        ax.scatter(c[bad], y[bad], color="C1", s=18, zorder=2, label="loss climbs")
        nan = ~np.isfinite(ce)
        ax.scatter(c[nan], y[nan], color="C3", marker="x", s=22, zorder=2,
                   label="non-finite")
        ax.axhline(rows["chance"], color="k", ls="--", lw=0.7, label="chance ln 5")
        lin = max(1e-4, float(np.min(np.abs(c[c != 0]))) if (c != 0).any() else 1e-4)
        ax.set_xscale("symlog", linthresh=lin)
        ticks = [v for v in (-1e-1, -1e-3, -1e-5, 0.0, 1e-5, 1e-3, 1e-1)
                 if c.min() <= v <= c.max() and (v == 0 or abs(v) >= lin)]
        ax.set_xticks(ticks, [f"{v:.0e}".replace("e-0", "e-") if v else "0" for v in ticks],
                      fontsize=7)
        ax.set_yscale("log")
        if np.nanmax(y) / np.nanmin(y) > 100:  # several decades: major labels suffice
            ax.yaxis.set_minor_formatter(NullFormatter())
        iv = interval(rows, "safe")
        span = "none safe" if iv is None else f"safe [{iv[0]:.0e}, {iv[1]:.0e}]"
        ax.set(title=f"{rows['term']}: {span}", xlabel=f"θ_{rows['term']}",
               ylabel="query CE after 250 steps" if ax is axes[0] else None)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=5)
    pseudo = stability_rows(s[present[-1]])["pseudo"]
    fig.suptitle("Stability map — one term next to pseudo_grad "
                 f"(θ_pseudo = {pseudo:g} except in its own panel); mean query CE over "
                 f"{stability_rows(s[present[0]])['tasks']} tasks, θ fixed (meta.lr 0)")
    return fig


@register("2022", "stability-map.md", stores=STORES[:1], optional=STORES[1:] + GRAMMAR_STORES)
def stability_table(s):
    lines = ["# Stability map (P1 network, fixed feedback, 250 online steps)", "",
             f"Mean query CE over each coefficient's tasks, θ_pseudo fixed (its own row "
             f"varies it). Safe: every task finite and mean CE at most {SAFE_MARGIN} nats above "
             "both chance (ln 5) and the term switched off; below chance: mean CE < ln 5. "
             "Intervals are the contiguous runs around θ = 0 on the tested grid.", "",
             "| term | safe interval | below-chance interval | best θ | best CE | "
             "non-finite at |", "|---|---|---|---|---|---|"]

    def fmt(iv):
        return "none" if iv is None else f"[{iv[0]:g}, {iv[1]:g}]"

    for name in (n for n in STORES + GRAMMAR_STORES if n in s):
        rows = stability_rows(s[name])
        best = int(np.argmin(rows["ce"]))
        nan = rows["coef"][~np.isfinite(rows["ce"])]
        lines.append(f"| {rows['term']} | {fmt(interval(rows, 'safe'))} | "
                     f"{fmt(interval(rows, 'usable'))} | {rows['coef'][best]:g} | "
                     f"{rows['ce'][best]:.3f} | {', '.join(f'{v:g}' for v in nan) or '-'} |")
    return "\n".join(lines) + "\n"


def safe_bounds(s) -> dict[str, list[float]]:
    """``{term: [low, high]}``: the safe interval of every term with a stability store in
    ``s`` (a term whose only safe value is 0 gets ``[0, 0]``), for ``meta.bounds``."""
    out = {}
    for name in (n for n in STORES + GRAMMAR_STORES if n in s):
        rows = stability_rows(s[name])
        iv = interval(rows, "safe")
        out[rows["term"]] = [0.0, 0.0] if iv is None else [iv[0], iv[1]]
    return out


@register("2022", "fig-stability-strip", stores=STORES[:1],
          optional=STORES[1:] + GRAMMAR_STORES)
def stability_strip(s):
    """Every mapped term on one chart: a row per term, a marker per tested coefficient,
    coloured by what the 250 online steps did with it."""
    present = [n for n in STORES + GRAMMAR_STORES if n in s]
    fig, (ax,) = subplots(1, size=(7.5, 0.17 * len(present) + 1.2))
    kinds = (("below chance", "C2", "o"), ("safe, not helping", "C0", "o"),
             ("loss climbs", "C1", "o"), ("non-finite", "C3", "x"))
    seen = set()
    for y, name in enumerate(present):
        rows = stability_rows(s[name])
        nan = ~np.isfinite(rows["ce"])
        masks = (rows["usable"], rows["safe"] & ~rows["usable"], ~rows["safe"] & ~nan, nan)
        for (label, col, mk), m in zip(kinds, masks, strict=True):
            if m.any():
                ax.scatter(rows["coef"][m], np.full(m.sum(), y), color=col, marker=mk, s=14,
                           label=None if label in seen else label)
                seen.add(label)
        iv = interval(rows, "safe")
        if iv is not None:
            ax.plot(iv, [y, y], color="C0", lw=3, alpha=0.35, solid_capstyle="butt")
    ax.set_yticks(range(len(present)), [n.removeprefix("stability/") for n in present],
                  fontsize=6.5)
    ax.invert_yaxis()
    ax.set_xscale("symlog", linthresh=1e-6)
    ax.set_xlim(-0.2, 0.2)  # the ±0.1 markers whole, not cut at the frame
    ticks = [-1e-1, -1e-3, -1e-5, 0.0, 1e-5, 1e-3, 1e-1]
    ax.set_xticks(ticks, [f"{v:.0e}".replace("e-0", "e-") if v else "0" for v in ticks])
    ax.set_xlabel("coefficient θ of the term (pseudo_grad at 0.01 beside it; symlog axis)")
    ax.grid(axis="x", lw=0.3)
    fig.legend(loc="outside lower center", ncol=4, fontsize=8)  # below: the title on top
    ax.set_title("Stability map of every term: the shaded bar is the safe interval used "
                 "for meta.bounds", fontsize=9)
    return fig


# ------------------------------------------------------------------ the λ sweep of the pool
SWEEP = "fig4-pool-sweep"
CLOSE_TO_BEST = 0.05  # the recipe's criterion: largest λ within this of the best accuracy


def sweep_rows(st) -> dict:
    """Per λ of a pool sweep store: λ ``[G]``, median final meta-accuracy ``[G]``, median
    final |θ| ``[G, R]``, failed seeds ``[G]``; and the λ the criterion picks."""
    from plastcli.figures.paper2022 import member_events
    from plastcli.figures.report2022 import final_per_seed

    if st.json_attr("grid_keys", []) != ["meta.l1"]:
        raise PlastError(f"{st.path}: a pool sweep grids meta.l1 alone, this store grids "
                         f"{st.json_attr('grid_keys', []) or 'nothing'}")
    l1 = st["members/l1"]
    acc = final_per_seed(st, "meta_accuracy")
    theta = np.abs(st["episodes/theta"][:, -1])  # [P, R]
    div, col = member_events(st)
    lams = np.unique(l1)
    med = np.array([np.nanmedian(acc[l1 == v]) for v in lams])
    th = np.stack([np.median(theta[l1 == v], 0) for v in lams])
    failed = np.array([int(((div >= 0) | (col >= 0))[l1 == v].sum()) for v in lams])
    if not np.isfinite(med).any():
        raise PlastError(f"{st.path}: every λ's seeds diverged; nothing to choose from")
    ok = med >= np.nanmax(med) - CLOSE_TO_BEST
    return {"l1": lams, "acc": med, "theta": th, "failed": failed,
            "seeds": int((l1 == lams[0]).sum()), "names": st.json_attr("term_names", []),
            "chosen": float(lams[ok].max())}


@register("2022", "fig4-pool-sweep", stores=(SWEEP,))
def pool_sweep(s):
    rows = sweep_rows(s[SWEEP])
    x = np.where(rows["l1"] > 0, rows["l1"], np.nan)
    zero = rows["l1"] == 0
    fig, ax = subplots(2, size=(4.8, 3.6))
    ax[0].plot(x, rows["acc"], "o-", color="C0", label="median over seeds")
    if zero.any():
        ax[0].axhline(rows["acc"][zero][0], color="C0", ls=":", label="λ = 0")
    ax[0].axvline(rows["chosen"], color="k", ls="--", lw=0.8,
                  label=f"chosen λ = {rows['chosen']:g}")
    ax[0].set(xscale="log", xlabel="L1 coefficient λ", ylim=(0, 1),
              ylabel="meta-accuracy (last 50 episodes)",
              title=f"accuracy vs λ ({rows['seeds']} seeds each)")
    ax[0].legend(fontsize=8)
    for r, name in enumerate(rows["names"]):
        ax[1].plot(x, np.maximum(rows["theta"][:, r], 1e-7), "o-", color=f"C{r}", label=name)
    ax[1].set(xscale="log", yscale="log", xlabel="L1 coefficient λ",
              ylabel="final |θ| (median; 1e-7 = 0)",
              title="which terms survive as λ grows")
    ax[1].legend(fontsize=7, ncol=2)
    episodes = s[SWEEP]["episodes/theta"].shape[1]
    fig.suptitle(f"P1 Fig 4 λ sweep: ten-term pool, proximal L1, θ boxed by the stability "
                 f"map, {episodes} episodes", y=1.04)
    return fig
