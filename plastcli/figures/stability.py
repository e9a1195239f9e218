"""The stability map (issue 10 §3): where each pool term keeps the inner loop usable.

Reads ``results/2022/stability/<term>.h5``: meta-train stores with ``meta.lr: 0`` (theta
never moves) and a ``population.grid`` over one term's initial coefficient next to
``pseudo_grad``; every episode is a fresh task. A coefficient is *usable* when all its
tasks stay finite and end with a query loss below chance (ln M).
"""

from __future__ import annotations

import numpy as np

from plastcli.collapse import chance_loss
from plastcli.figures import register
from plastcli.figures.style import subplots

STABILITY_TERMS = ("pseudo_grad", "post_act_pre_err", "err_hebb", "decay", "ones_pre_err",
                   "sum_post_grad", "quad_1", "quad_2", "quad_3", "oja")
STORES = tuple(f"stability/{t}" for t in STABILITY_TERMS)


def stability_rows(st) -> dict[str, np.ndarray]:
    """Per grid value of one stability store: coefficient ``[G]``, mean query CE over the
    tasks ``[G]`` (inf where a task went non-finite), usable ``[G]`` bool."""
    import yaml

    recipe = yaml.safe_load(st.attrs["recipe_yaml"])
    (key,) = recipe["population"]["grid"]
    chance = chance_loss(recipe["task"]["classes"])
    coef = st[f"members/{key.replace('rule.init.', 'init_')}"]
    ce = np.asarray(st["episodes/query_ce"], dtype=np.float64)  # [G, tasks]
    finite = np.isfinite(ce).all(1)
    mean_ce = np.where(finite, np.where(np.isfinite(ce), ce, 0).mean(1), np.inf)
    usable = finite & (np.where(np.isfinite(ce), ce, np.inf) < chance).all(1)
    return {"term": key.removeprefix("rule.init."), "coef": coef, "ce": mean_ce,
            "usable": usable, "chance": chance, "tasks": ce.shape[1],
            "pseudo": recipe["rule"]["init"].get("pseudo_grad")}


def usable_interval(rows: dict) -> tuple[float, float] | None:
    """(low, high) of the usable coefficients that are contiguous with the best one."""
    ok = np.nonzero(rows["usable"])[0]
    if not len(ok):
        return None
    order = np.argsort(rows["coef"])
    usable = rows["usable"][order]
    best = int(np.argmin(np.where(usable, rows["ce"][order], np.inf)))
    lo = hi = best
    while lo > 0 and usable[lo - 1]:
        lo -= 1
    while hi < len(order) - 1 and usable[hi + 1]:
        hi += 1
    c = rows["coef"][order]
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
        ax.plot(c, y, color="0.6", lw=0.8, zorder=1)
        ax.scatter(c[rows["usable"]], y[rows["usable"]], color="C2", s=18, zorder=2,
                   label="usable")
        bad = ~rows["usable"] & np.isfinite(ce)
        ax.scatter(c[bad], y[bad], color="C1", s=18, zorder=2, label="above chance")
        nan = ~np.isfinite(ce)
        ax.scatter(c[nan], y[nan], color="C3", marker="x", s=22, zorder=2,
                   label="non-finite")
        ax.axhline(rows["chance"], color="k", ls="--", lw=0.7, label="chance ln 5")
        lin = max(1e-4, float(np.min(np.abs(c[c != 0]))) if (c != 0).any() else 1e-4)
        ax.set_xscale("symlog", linthresh=lin)
        ax.set_yscale("log")
        iv = usable_interval(rows)
        span = "none usable" if iv is None else f"usable [{iv[0]:.0e}, {iv[1]:.0e}]"
        ax.set(title=f"{rows['term']}: {span}", xlabel=f"θ_{rows['term']}",
               ylabel="query CE after 250 steps" if ax is axes[0] else None)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=4)
    pseudo = stability_rows(s[present[-1]])["pseudo"]
    fig.suptitle("Stability map — one term next to pseudo_grad "
                 f"(θ_pseudo = {pseudo:g} except in its own panel); mean query CE over "
                 f"{stability_rows(s[present[0]])['tasks']} tasks, θ fixed (meta.lr 0)")
    return fig


@register("2022", "stability-map.md", stores=STORES[:1], optional=STORES[1:])
def stability_table(s):
    lines = ["# Stability map (P1 network, fixed feedback, 250 online steps)", "",
             "| term | usable interval (finite, query CE < ln 5 on every task) | best θ | "
             "best CE | non-finite at |", "|---|---|---|---|---|"]
    for name in (n for n in STORES if n in s):
        rows = stability_rows(s[name])
        iv = usable_interval(rows)
        best = int(np.argmin(rows["ce"]))
        nan = rows["coef"][~np.isfinite(rows["ce"])]
        lines.append(f"| {rows['term']} | {'none' if iv is None else f'[{iv[0]:g}, {iv[1]:g}]'}"
                     f" | {rows['coef'][best]:g} | {rows['ce'][best]:.3f} | "
                     f"{', '.join(f'{v:g}' for v in nan) or '-'} |")
    return "\n".join(lines) + "\n"
