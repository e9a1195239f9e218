"""Figures of P1 (2022): the meta-learning figures (Fig 3, 4, 5, 6, 8, 9) and the panels
and store names they share with the report (report2022), Table 1 (table1) and the stability
map (stability)."""

import numpy as np

from plastcli.figures import register
from plastcli.figures.style import (
    SMOOTH,
    color,
    diverged_at,
    layer_color,
    legend_below,
    mean_sd_band,
    meta_accuracy_label,
    subplots,
    until_diverged,
)
from plastcli.results import collapse
from plastcli.results.statistics import moving_average

TARGET_SEEDS = 10  # issue 10: no collapsed or diverged seed in ten
RULE_STORES = {"BP": "fig3-bp", "pseudo": "fig3-pseudo", "eHebb": "fig6-ehebb",
               "Oja": "fig8-oja", "bio": "fig5-bio", "pool": "fig4-pool"}
# Comparison runs on the same seeds: the paper's setting without the stabiliser, weaker
# stabilisers, the stabilised recipe with its initial θ jittered (a stand-in for another
# CPU's rounding), and the same recipes rerun on a second CPU (results/2022/cross-machine/)
# and on a GPU (results/2022/cuda/, made by tools/cuda_compare.sh).
CROSS = "cross-machine"
SECOND_CPU = "second CPU"
CUDA_DIR = "cuda"
ON_CUDA = "CUDA"
# folder of results/2022 -> the label its stores get: the other platforms a rule was run on
PLATFORMS = {CROSS: SECOND_CPU, CUDA_DIR: ON_CUDA}
VARIANTS = {"fig5-bio-paper": ("bio", "paper, no bound"),
            "fig5-bio-jitter": ("bio", "θ₀ jitter 1e-9"),
            "fig5-bio-lower-bound": ("bio", "θ_oja ≥ 0 only"),
            f"{CROSS}/fig5-bio-lower-bound": ("bio", f"θ_oja ≥ 0 only, {SECOND_CPU}"),
            "fig8-oja-paper": ("Oja", "paper, no bound"),
            "fig8-oja-jitter": ("Oja", "θ₀ jitter 1e-9"),
            "fig8-oja-lower-bound": ("Oja", "θ_oja ≥ 0 only"),
            "fig8-oja-pseudo-bounded": ("Oja", "θ_oja ≥ 0, θ_pseudo ≤ 0.02"),
            **{f"{folder}/{RULE_STORES[r]}": (r, where) for folder, where in PLATFORMS.items()
               for r in ("BP", "pseudo", "eHebb", "Oja", "bio")}}
VARIANT_STORES = {f"{rule} ({what})": name for name, (rule, what) in VARIANTS.items()}


def variants_of(rule: str) -> tuple[str, ...]:
    """The comparison stores of one rule label (e.g. "Oja"), in VARIANTS order."""
    return tuple(name for name, (r, _) in VARIANTS.items() if r == rule)


def episodes_x(store) -> np.ndarray:
    return np.arange(1, store["episodes/meta_accuracy"].shape[1] + 1)


def member_events(st) -> tuple[np.ndarray, np.ndarray]:
    """(diverged_at ``[P]``, collapsed_at ``[P]``), -1 = never. Collapse is recomputed
    from the stored query CE by today's rule (plastcli/results/collapse.py), so stores written
    before the rule, or under an earlier version of it, are judged alike."""
    import yaml

    div = diverged_at(st)
    meta = yaml.safe_load(st.attrs["recipe_yaml"])
    m = meta["meta"]
    col = collapse.collapsed_at(st["episodes/query_ce"],
                                collapse.chance_loss(meta["task"]["classes"]),
                                m.get("collapse_window", collapse.WINDOW),
                                st["episodes/meta_accuracy"],
                                m.get("decline_window", collapse.DECLINE_WINDOW),
                                m.get("decline_drop", collapse.DECLINE_DROP))
    return div, np.asarray(col)


def _mark_events(ax, st, c: str, y: float) -> None:
    """A marker at each episode where a seed collapsed (v) or diverged (x)."""
    div, col = member_events(st)
    for ev, marker in ((col, "v"), (div, "x")):
        hit = ev[ev >= 0]
        if len(hit):
            ax.scatter(hit + 1, np.full(len(hit), y), marker=marker, color=c, s=36, zorder=3,
                       clip_on=False)


def _accuracy_panel(ax, stores: dict, loc: str = "below") -> None:
    from matplotlib.colors import to_hex

    collapsed = diverged = False
    used: set[str] = set()
    for i, (label, st) in enumerate(stores.items()):
        c = to_hex(color(label.split(" (")[0], i))
        if c in used:  # variants of one rule get their own colour
            c = next(h for h in (to_hex(f"C{k}") for k in range(10)) if h not in used)
        used.add(c)
        # a variant ("bio (second CPU)") thin and faint beneath, the rules themselves on top
        variant = label in VARIANT_STORES
        mean_sd_band(ax, episodes_x(st), st["episodes/meta_accuracy"], f"F_{label}", c,
                     smooth=SMOOTH, lw=0.9 if variant else 2.2, alpha=0.05 if variant else 0.2,
                     zorder=2 if variant else 3)
        _mark_events(ax, st, c, 0.02 + 0.03 * i)
        div, col = member_events(st)
        collapsed |= bool((col >= 0).any())
        diverged |= bool((div >= 0).any())
    if collapsed:
        ax.scatter([], [], marker="v", color="k", label="a seed collapsed")
    if diverged:
        ax.scatter([], [], marker="x", color="k", label="a seed diverged")
    variants = any(label in VARIANT_STORES for label in stores)
    ax.set(xlabel="episode", ylabel=meta_accuracy_label(*stores.values()), ylim=(0, 1),
           title=f"meta-accuracy\n(moving avg. {SMOOTH}; mean ± sd, seeds)"
           + ("\nthick: the rules; thin: checks on the same seeds" if variants else ""))
    if loc == "below":  # outside the axes, under the x label: never over a curve
        legend_below(ax)
    elif loc == "top":  # one row in the empty band above every curve (accuracy > 0.8)
        ax.legend(fontsize=8, ncol=5, loc="upper center", frameon=False)
    else:
        ax.legend(loc=loc, fontsize=8)


def _loss_panel(ax, stores: dict) -> None:
    for i, (label, st) in enumerate(stores.items()):
        mean_sd_band(ax, episodes_x(st), st["episodes/query_ce"], f"F_{label}", color(label, i),
                     smooth=SMOOTH)
    ax.set(xlabel="episode", ylabel="meta-loss (query cross-entropy)", title="meta-loss")
    ax.legend()


def _theta_panel(ax, st, label: str, linestyle="-", one_colour: str | None = None) -> None:
    """Each term's θ over episodes (mean ± sd), in C{r}, or all in ``one_colour`` (the
    rule's, where one panel compares rules)."""
    names = st.json_attr("term_names", [])
    theta = until_diverged(st, st["episodes/theta"])  # [P, E, R]
    for r, name in enumerate(names):
        mean_sd_band(ax, episodes_x(st), theta[:, :, r], f"{name} ({label})",
                     one_colour or f"C{r}")
        ax.lines[-1].set_linestyle(linestyle)
    ax.axhline(0, color="k", lw=0.6)
    ax.set(xlabel="episode", ylabel="coefficient θ (ΔW = +θ F)", title=f"coefficients of F_{label}")
    legend_below(ax, ncol=2 if len(names) > 2 else 1)  # inside, a band crossed it


def _angle_panel(ax, st, label: str, ref=None) -> None:
    ang = st["episodes/angles"]  # [P, E, L]
    for l in range(ang.shape[2]):
        mean_sd_band(ax, episodes_x(st), ang[:, :, l], f"α{l} (e_{l})",
                     layer_color(l, ang.shape[2]), smooth=SMOOTH)
    if ref is not None:
        ra = ref["episodes/angles"]
        for l in range(ra.shape[2]):
            m = np.nanmean(_smooth(ra[:, :, l]), 0)
            ax.plot(episodes_x(ref), m, color=layer_color(l, ra.shape[2]), ls=":", lw=1.0)
        ax.plot([], [], "k:", lw=1.0, label="F_pseudo (dotted)")
    ax.axhline(90, color="grey", lw=0.6, ls="--")
    ax.set(xlabel="episode", ylabel="angle to backprop (degrees)", ylim=(0, 120),
           title=f"error alignment α_l of F_{label}")
    legend_below(ax, ncol=3)


def _smooth(a):
    return moving_average(a, SMOOTH)


@register("2022", "fig3-pseudo-vs-bp", stores=("fig3-pseudo", "fig3-bp"))
def fig3(s):
    pair = {"pseudo": s["fig3-pseudo"], "BP": s["fig3-bp"]}
    fig, ax = subplots(4, ncols=2, size=(5.2, 3.6))
    _accuracy_panel(ax[0], pair)
    _loss_panel(ax[1], pair)
    _theta_panel(ax[2], pair["pseudo"], "pseudo", one_colour=color("pseudo", 0))
    _theta_panel(ax[2], pair["BP"], "BP", linestyle="--", one_colour=color("BP", 1))
    ax[2].set_title("coefficient θ_pseudo: F_pseudo (solid), F_BP (dashed)")
    _angle_panel(ax[3], pair["pseudo"], "pseudo")
    fig.suptitle("P1 Fig 3 — meta-learning the pseudo-gradient rule: fixed random feedback "
                 "(F_pseudo) vs backprop (F_BP; its angles are 0 by construction)")
    return fig


def _rule_figure(s, key: str, label: str, title: str):
    rule = s[key]
    stores = {"pseudo": s["fig3-pseudo"], label: rule}
    if "fig3-bp" in s:
        stores = {"BP": s["fig3-bp"], **stores}
    for name in variants_of(label):  # the comparison runs on the same seeds
        if name in s:
            stores[f"{label} ({VARIANTS[name][1]})"] = s[name]
    fig, ax = subplots(3, size=(4.8, 3.6))
    _accuracy_panel(ax[0], stores)
    _theta_panel(ax[1], rule, label)
    _angle_panel(ax[2], rule, label, ref=s["fig3-pseudo"])
    diverged = diverged_text(rule)
    fig.suptitle(title if diverged == "none" else f"{title} (diverged: {diverged})")
    return fig


@register("2022", "fig5-bio", stores=("fig5-bio", "fig3-pseudo"),
          optional=("fig3-bp", *variants_of("bio")))
def fig5(s):
    return _rule_figure(s, "fig5-bio", "bio",
                        "P1 Fig 5 — F_bio = pseudo_grad + err_hebb + oja, fixed random feedback")


@register("2022", "fig6-ehebb", stores=("fig6-ehebb", "fig3-pseudo"), optional=("fig3-bp",))
def fig6(s):
    return _rule_figure(s, "fig6-ehebb", "eHebb",
                        "P1 Fig 6 — F_eHebb = pseudo_grad + err_hebb, fixed random feedback")


@register("2022", "fig8-oja", stores=("fig8-oja", "fig3-pseudo"),
          optional=("fig3-bp", *variants_of("Oja")))
def fig8(s):
    return _rule_figure(s, "fig8-oja", "Oja",
                        "P1 Fig 8 — F_Oja = pseudo_grad + oja, fixed random feedback")


def pool_runs(s) -> dict:
    """The pool searches present, label -> store: the paper-faithful setting, the λ sweep's
    members at its chosen λ, and the full run at that λ."""
    from plastcli.figures.stability import SWEEP, sweep_rows

    runs = {}
    if "fig4-pool-paper" in s:
        runs["pool (paper λ, no bounds)"] = s["fig4-pool-paper"]
    if SWEEP in s:
        rows = sweep_rows(s[SWEEP])
        chosen = s[SWEEP].members(s[SWEEP]["members/l1"] == rows["chosen"])
        runs[f"pool (bounded, λ {rows['chosen']:g}, sweep)"] = chosen
    if "fig4-pool" in s:
        runs["pool (bounded)"] = s["fig4-pool"]
    return runs


def _survivor_bars(ax, pool, top: int | None = None, by_rank: bool = False) -> list[str]:
    """Bars of the mean |θ| at the last episode (± sd over seeds), largest first; only the
    ``top`` largest if given; coloured as the term's index (C{r}, as _theta_panel draws
    them) or ``by_rank``. Returns the term names in bar order."""
    names = pool.json_attr("term_names", [])
    final = np.abs(pool["episodes/theta"][:, -1, :])  # [P, R]
    order = np.argsort(-final.mean(0))[:top]
    ax.bar(range(len(order)), np.maximum(final.mean(0)[order], 1e-7), yerr=final.std(0)[order],
           color=[f"C{(k if by_rank else r) % 10}" for k, r in enumerate(order)])
    ax.set_xticks(range(len(order)), [names[r] for r in order], rotation=60, ha="right")
    ax.set(ylabel="|θ|, last episode (1e-7 = 0)", yscale="log")
    return [names[r] for r in order]


GRAMMAR = "grammar-pool"


@register("2022", "fig4-grammar-pool", stores=(GRAMMAR, "fig5-bio"), optional=("fig4-pool",))
def fig4_grammar(s):
    """Beyond the paper: the pool search over all 49 grammar terms against F_bio."""
    pool = s[GRAMMAR]
    E = pool["episodes/meta_accuracy"].shape[1]
    runs = {"bio": s["fig5-bio"],
            **({"pool (ten terms)": s["fig4-pool"]} if "fig4-pool" in s else {}),
            "grammar pool": pool}
    fig, ax = subplots(3, size=(4.8, 3.6))
    _accuracy_panel(ax[0], runs)
    ax[0].axvline(E, color="k", lw=0.6, ls=":")
    top = _survivor_bars(ax[1], pool, top=12, by_rank=True)  # as the right panel's lines
    n_terms = len(pool.json_attr("term_names", []))
    ax[1].set(title=f"the 12 largest of {n_terms} terms"
              + ("" if diverged_text(pool) == "none" else " (|θ| frozen at divergence)"))
    names = pool.json_attr("term_names", [])
    theta = until_diverged(pool, pool["episodes/theta"])  # [P, E, R]
    for i, name in enumerate(top[:6]):
        mean_sd_band(ax[2], episodes_x(pool), theta[:, :, names.index(name)], name, f"C{i}")
    ax[2].axhline(0, color="k", lw=0.6)
    ax[2].set(xlabel="episode", ylabel="coefficient θ (ΔW = +θ F)",
              title="the six largest coefficients (colours as the bars)")
    legend_below(ax[2])
    fig.suptitle(f"Beyond P1 Fig 4 — L1 search over every grammar term "
                 f"({pool['episodes/theta'].shape[0]} seeds × {E} episodes) vs F_bio; "
                 f"diverged: {diverged_text(pool)}")
    return fig


@register("2022", "fig4-pool", stores=("fig3-pseudo",),
          optional=("fig4-pool", "fig4-pool-paper", "fig4-pool-sweep"))
def fig4(s):
    from plastcli.errors import PlastError

    runs = pool_runs(s)
    if not runs:
        raise PlastError("needs results/2022/fig4-pool.h5, fig4-pool-paper.h5 or "
                         "fig4-pool-sweep.h5")
    label, pool = list(runs.items())[-1]  # the most complete search
    fig, ax = subplots(3, size=(4.8, 3.6))
    _accuracy_panel(ax[0], {"pseudo": s["fig3-pseudo"], **runs})
    _theta_panel(ax[1], pool, label)
    for line in ax[1].get_lines():  # the title names the run; the legend names the terms
        line.set_label(line.get_label().split(" (")[0])
    legend_below(ax[1], fontsize=7)
    _survivor_bars(ax[2], pool)
    diverged = diverged_text(pool)
    ax[2].set(title=f"which terms survive: F_{label}" if diverged == "none"
              else "|θ| frozen where each seed diverged")
    import yaml

    meta = yaml.safe_load(pool.attrs["recipe_yaml"])["meta"]
    lam = pool["members/l1"][0] if "members/l1" in pool else meta["l1"]
    n_terms = len(pool.json_attr("term_names", []))
    fig.suptitle(f"P1 Fig 4 — meta-learning {n_terms} pool terms with an L1 penalty "
                 f"(λ = {lam:g}, {meta.get('l1_mode', 'subgradient')}"
                 f"{', θ boxed by the stability map' if meta.get('bounds') else ''}); "
                 f"diverged in F_{label}: {diverged}")
    return fig


@register("2022", "fig9-orthonormality", stores=("fig3-pseudo", "fig6-ehebb", "fig8-oja",
                                                  "fig3-bp"))
def fig9(s):
    rules = {"pseudo": s["fig3-pseudo"], "eHebb": s["fig6-ehebb"], "Oja": s["fig8-oja"],
             "BP": s["fig3-bp"]}
    n_hidden = rules["pseudo"]["episodes/orthonormality_error"].shape[2] - 1  # last excluded
    fig, ax = subplots(n_hidden, size=(3.8, 3.2))
    for l in range(n_hidden):
        for i, (label, st) in enumerate(rules.items()):
            mean_sd_band(ax[l], episodes_x(st), st["episodes/orthonormality_error"][:, :, l],
                         f"F_{label}", color(label, i), smooth=SMOOTH)
        ax[l].set(xlabel="episode", yscale="log", title=f"layer W_{l + 1}",
                  ylabel="E_W = ||z - W Wᵀ σ(z)||²" if l == 0 else None)
    handles, labels = ax[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(rules))
    fig.suptitle("P1 Fig 9 — orthonormality error per layer (query-set mean; output layer "
                 "excluded)")
    return fig


@register("2022", "fig-meta-accuracy-all", stores=("fig3-pseudo",),
          optional=tuple(v for v in RULE_STORES.values() if v != "fig3-pseudo"))
def fig_all(s):
    stores = {lab: s[name] for lab, name in RULE_STORES.items() if name in s}
    fig, ax = subplots(1, size=(6.5, 4.2))
    _accuracy_panel(ax[0], stores, loc="top")
    fig.suptitle("P1 — meta-accuracy of every meta-learned rule (a diverged seed's curve ends "
                 "where it diverged)")
    return fig


def diverged_text(st) -> str:
    d = st.arrays.get("members/diverged_at")
    if d is None or (np.asarray(d) < 0).all():
        return "none"
    return ", ".join(f"seed {i}: ep {e}" for i, e in enumerate(d) if e >= 0)
