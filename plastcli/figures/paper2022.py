"""Figures of P1 (2022)."""

# ----------------------------------------------------------------------------------------
# Meta-learning figures (P1 Fig 3, 4, 5, 6, 8, 9) and the reproduction report.

import numpy as np  # noqa: E402

from plastcli.figures import register  # noqa: E402
from plastcli.figures.style import SMOOTH, color, mean_sd_band, subplots  # noqa: E402
from plastcli.results import collapse  # noqa: E402
from plastcli.results.statistics import TAIL, bootstrap_ci, final_window, moving_average  # noqa: E402

TARGET_SEEDS = 10  # issue 10: no collapsed or diverged seed in ten
RULE_STORES = {"BP": "fig3-bp", "pseudo": "fig3-pseudo", "eHebb": "fig6-ehebb",
               "Oja": "fig8-oja", "bio": "fig5-bio", "pool": "fig4-pool"}
# Comparison runs on the same seeds: the paper's setting without the stabiliser, weaker
# stabilisers, the stabilised recipe with its initial θ jittered (a stand-in for another
# CPU's rounding), and the same recipes rerun on a second CPU (results/2022/cross-machine/).
CROSS = "cross-machine"
SECOND_CPU = "second CPU"
VARIANTS = {"fig5-bio-paper": ("bio", "paper, no bound"),
            "fig5-bio-jitter": ("bio", "θ₀ jitter 1e-9"),
            "fig5-bio-lower-bound": ("bio", "θ_oja ≥ 0 only"),
            f"{CROSS}/fig5-bio-lower-bound": ("bio", f"θ_oja ≥ 0 only, {SECOND_CPU}"),
            "fig8-oja-paper": ("Oja", "paper, no bound"),
            "fig8-oja-jitter": ("Oja", "θ₀ jitter 1e-9"),
            "fig8-oja-lower-bound": ("Oja", "θ_oja ≥ 0 only"),
            "fig8-oja-pseudo-bounded": ("Oja", "θ_oja ≥ 0, θ_pseudo ≤ 0.02"),
            **{f"{CROSS}/{RULE_STORES[r]}": (r, SECOND_CPU) for r in ("BP", "pseudo", "eHebb",
                                                                     "Oja", "bio")}}
VARIANT_STORES = {f"{rule} ({what})": name for name, (rule, what) in VARIANTS.items()}


def variants_of(rule: str) -> tuple[str, ...]:
    """The comparison stores of one rule label (e.g. "Oja"), in VARIANTS order."""
    return tuple(name for name, (r, _) in VARIANTS.items() if r == rule)


def _x(store) -> np.ndarray:
    return np.arange(1, store["episodes/meta_accuracy"].shape[1] + 1)


def member_events(st) -> tuple[np.ndarray, np.ndarray]:
    """(diverged_at ``[P]``, collapsed_at ``[P]``), -1 = never. Collapse is recomputed
    from the stored query CE by today's rule (plastcli/collapse.py), so stores written
    before the rule, or under an earlier version of it, are judged alike."""
    import yaml

    P = st["episodes/meta_accuracy"].shape[0]
    div = np.asarray(st.arrays.get("members/diverged_at", np.full(P, -1)))
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
        mean_sd_band(ax, _x(st), st["episodes/meta_accuracy"], f"F_{label}", c, smooth=SMOOTH)
        _mark_events(ax, st, c, 0.02 + 0.03 * i)
        div, col = member_events(st)
        collapsed |= bool((col >= 0).any())
        diverged |= bool((div >= 0).any())
    if collapsed:
        ax.scatter([], [], marker="v", color="k", label="a seed collapsed")
    if diverged:
        ax.scatter([], [], marker="x", color="k", label="a seed diverged")
    ax.set(xlabel="episode", ylabel="meta-accuracy (query, 5-way)", ylim=(0, 1),
           title=f"meta-accuracy (moving avg. {SMOOTH}; mean ± sd, seeds)")
    if loc == "below":  # outside the axes, under the x label: never over a curve
        ax.legend(fontsize=8, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.18))
    elif loc == "top":  # one row in the empty band above every curve (accuracy > 0.8)
        ax.legend(fontsize=8, ncol=5, loc="upper center", frameon=False)
    else:
        ax.legend(loc=loc, fontsize=8)


def _loss_panel(ax, stores: dict) -> None:
    for i, (label, st) in enumerate(stores.items()):
        mean_sd_band(ax, _x(st), st["episodes/query_ce"], f"F_{label}", color(label, i),
                     smooth=SMOOTH)
    ax.set(xlabel="episode", ylabel="meta-loss (query cross-entropy)", title="meta-loss")
    ax.legend()


def _theta_panel(ax, st, label: str, linestyle="-") -> None:
    names = st.json_attr("term_names", [])
    theta = np.array(st["episodes/theta"], dtype=np.float64)  # [P, E, R]
    div, _ = member_events(st)
    for i, e in enumerate(div):  # a diverged seed's θ is drawn up to its divergence only
        if e >= 0:
            theta[i, e:] = np.nan
    for r, name in enumerate(names):
        mean_sd_band(ax, _x(st), theta[:, :, r], f"{name} ({label})", f"C{r}")
        ax.lines[-1].set_linestyle(linestyle)
    ax.axhline(0, color="k", lw=0.6)
    ax.set(xlabel="episode", ylabel="coefficient θ (ΔW = +θ F)", title=f"coefficients of F_{label}")
    ax.legend(fontsize=8, ncol=2 if len(names) > 4 else 1)


def _angle_panel(ax, st, label: str, ref=None) -> None:
    ang = st["episodes/angles"]  # [P, E, L]
    for l in range(ang.shape[2]):
        mean_sd_band(ax, _x(st), ang[:, :, l], f"α{l} (e_{l})", f"C{l}", smooth=SMOOTH)
    if ref is not None:
        ra = ref["episodes/angles"]
        for l in range(ra.shape[2]):
            m = np.nanmean(_smooth(ra[:, :, l]), 0)
            ax.plot(_x(ref), m, color=f"C{l}", ls=":", lw=1.0)
        ax.plot([], [], "k:", lw=1.0, label="F_pseudo (dotted)")
    ax.axhline(90, color="grey", lw=0.6, ls="--")
    ax.set(xlabel="episode", ylabel="alignment angle to backprop (degrees)", ylim=(0, 120),
           title=f"error alignment α_l of F_{label}")
    ax.legend(fontsize=8, ncol=2)


def _smooth(a):
    return moving_average(a, SMOOTH)


@register("2022", "fig3-pseudo-vs-bp", stores=("fig3-pseudo", "fig3-bp"))
def fig3(s):
    pair = {"pseudo": s["fig3-pseudo"], "BP": s["fig3-bp"]}
    fig, ax = subplots(4, ncols=2, size=(5.2, 3.6))
    _accuracy_panel(ax[0], pair)
    _loss_panel(ax[1], pair)
    _theta_panel(ax[2], pair["pseudo"], "pseudo")
    _theta_panel(ax[2], pair["BP"], "BP", linestyle="--")
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


def _survivor_bars(ax, pool, top: int | None = None) -> list[str]:
    """Bars of the mean |θ| at the last episode (± sd over seeds), largest first; only the
    ``top`` largest if given. Returns the term names in bar order."""
    names = pool.json_attr("term_names", [])
    final = np.abs(pool["episodes/theta"][:, -1, :])  # [P, R]
    order = np.argsort(-final.mean(0))[:top]
    ax.bar(range(len(order)), np.maximum(final.mean(0)[order], 1e-7),
           yerr=final.std(0)[order], color=[f"C{r % 10}" for r in order])
    ax.set_xticks(range(len(order)), [names[r] for r in order], rotation=60, ha="right")
    ax.set(ylabel="|θ| at the last episode (1e-7 = 0)", yscale="log")
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
    top = _survivor_bars(ax[1], pool, top=12)
    n_terms = len(pool.json_attr("term_names", []))
    ax[1].set(title=f"the 12 largest of {n_terms} terms"
              + ("" if diverged_text(pool) == "none" else " (|θ| frozen at divergence)"))
    names = pool.json_attr("term_names", [])
    theta = np.array(pool["episodes/theta"], dtype=np.float64)  # [P, E, R]
    for i, e in enumerate(member_events(pool)[0]):  # drawn up to each seed's divergence
        if e >= 0:
            theta[i, e:] = np.nan
    for i, name in enumerate(top[:6]):
        mean_sd_band(ax[2], _x(pool), theta[:, :, names.index(name)], name, f"C{i}")
    ax[2].axhline(0, color="k", lw=0.6)
    ax[2].set(xlabel="episode", ylabel="coefficient θ (ΔW = +θ F)",
              title="the six largest coefficients")
    ax[2].legend(fontsize=7)
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
    ax[1].legend(fontsize=7, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.2))
    _survivor_bars(ax[2], pool)
    diverged = diverged_text(pool)
    ax[2].set(title=f"which terms survive: F_{label}" if diverged == "none"
              else "|θ| frozen where each seed diverged")
    import yaml

    meta = yaml.safe_load(pool.attrs["recipe_yaml"])["meta"]
    lam = pool["members/l1"][0] if "members/l1" in pool else meta["l1"]
    fig.suptitle(f"P1 Fig 4 — meta-learning all ten pool terms with an L1 penalty "
                 f"(λ = {lam:g}, {meta.get('l1_mode', 'subgradient')}"
                 f"{', θ boxed by the stability map' if meta.get('bounds') else ''}); "
                 f"diverged: {diverged}")
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
            mean_sd_band(ax[l], _x(st), st["episodes/orthonormality_error"][:, :, l],
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


# ------------------------------------------------------------------ reproduction report


def final_per_seed(st, key: str, upto: int | None = None) -> np.ndarray:
    """Final value ``[P, ...]`` of /episodes/<key> ``[P, E, ...]`` of a store:
    :func:`plastcli.results.statistics.final_window` (the mean over each seed's last 50 finite
    episodes; for a seed that diverged, the 50 before it did), of the first ``upto``
    episodes if given (to compare runs of different length at one budget)."""
    return final_window(st[f"episodes/{key}"], TAIL, upto)


def diverged_text(st) -> str:
    d = st.arrays.get("members/diverged_at")
    if d is None or (np.asarray(d) < 0).all():
        return "none"
    return ", ".join(f"seed {i}: ep {e}" for i, e in enumerate(d) if e >= 0)


def theta_text(names: list[str], theta: np.ndarray, top: int = 5) -> str:
    """'pseudo_grad 0.01, oja 0.006'; a pool of more than ten terms lists only its ``top``
    largest |θ| and how many are nonzero."""
    pairs = list(zip(names, theta, strict=True))
    if len(pairs) <= 10:
        return ", ".join(f"{n} {m:.3g}" for n, m in pairs)
    big = sorted(pairs, key=lambda p: -abs(p[1]))[:top]
    return (", ".join(f"{n} {m:.3g}" for n, m in big)
            + f" ({int(np.count_nonzero(theta))} of {len(pairs)} nonzero)")


def meta_table_rows(stores: dict) -> list[dict]:
    """One row per rule store: final meta-accuracy mean/sd and final theta mean."""
    rows = []
    for label, st in stores.items():
        acc = final_per_seed(st, "meta_accuracy")
        theta = st["episodes/theta"][:, -1, :]
        names = st.json_attr("term_names", [])
        med, lo, hi = bootstrap_ci(acc, level=0.98, stat=np.nanmedian)
        div, col = member_events(st)
        rows.append({
            "rule": f"F_{label}", "store": st.path.name, "seeds": acc.shape[0],
            "episodes": st["episodes/meta_accuracy"].shape[1],
            "acc_mean": float(np.mean(acc)), "acc_sd": float(np.std(acc)),
            "acc_median": float(med), "acc_lo": float(lo), "acc_hi": float(hi),
            "collapsed": int((col >= 0).sum()), "diverged": int((div >= 0).sum()),
            "theta": theta_text(names, theta.mean(0)),
        })
    return rows


@register("2022", "reproduction-2022.md", stores=("fig3-pseudo",),
          optional=tuple(v for v in (*RULE_STORES.values(), *VARIANT_STORES.values(),
                                     "fig4-pool-paper", "fig4-pool-sweep", GRAMMAR)
                         if v != "fig3-pseudo"))
def report(s):
    stores = {lab: s[name] for lab, name in {**RULE_STORES, **VARIANT_STORES}.items()
              if name in s and lab != "pool"}
    searches = pool_runs(s)  # the pool searches, the most complete last
    stores.update(searches)
    if GRAMMAR in s:
        stores["grammar pool"] = s[GRAMMAR]
    pool_key = list(searches)[-1] if searches else "pool"
    acc = {k: final_per_seed(v, "meta_accuracy").mean() for k, v in stores.items()}
    ang = {k: float(np.nanmean(final_per_seed(v, "angles")))
           for k, v in stores.items()}
    hidden_ang = {k: float(np.nanmean(final_per_seed(v, "angles")[:, 1:]))
                  for k, v in stores.items()}
    ew = {k: float(np.nanmean(final_per_seed(v, "orthonormality_error")[:, :-1]))
          for k, v in stores.items()}
    lines = ["# Reproduction report — P1 (2022), meta-learning", "",
             f"Final values are means over the last {TAIL} finite episodes of each seed (for a "
             "seed that diverged: the 50 episodes before it did). Meta-accuracy: the median "
             "over seeds with a 98% percentile bootstrap CI (500 resamples of the seeds), and "
             "mean ± sd. Collapsed: a seed whose query loss stayed above chance (ln 5) for 25 "
             "episodes after it had learned, or whose 50-episode mean meta-accuracy fell more "
             "than 0.2 below its best (plastcli/collapse.py); diverged: θ or the loss became "
             "NaN. Angles: mean of α_0..α_{L-1}; E_W: mean over hidden layers (both means "
             "over seeds). θ: last episode, mean over seeds (a diverged seed's θ is frozen at "
             "its last finite value).", "",
             "| rule | seeds | episodes | meta-accuracy median [98% CI] | mean ± sd | "
             "mean angle (°) | E_W | collapsed | diverged | final θ |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row, k in zip(meta_table_rows(stores), stores, strict=True):
        lines.append(f"| {row['rule']} | {row['seeds']} | {row['episodes']} | "
                     f"{row['acc_median']:.3f} [{row['acc_lo']:.3f}, {row['acc_hi']:.3f}] | "
                     f"{row['acc_mean']:.3f} ± {row['acc_sd']:.3f} | {ang[k]:.1f} | "
                     f"{ew[k]:.3g} | {row['collapsed']} | {row['diverged']} | "
                     f"{row['theta']} |")
    lines += ["", "## Claims (SPEC §7)", "", "| claim | measured | result |", "|---|---|---|"]

    def claim(text, needs, test, measured):
        if not all(n in stores for n in needs):
            gone = [n for n in needs if n not in stores]
            lines.append(f"| {text} | stores missing: {', '.join(gone)} | not checked |")
            return
        lines.append(f"| {text} | {measured()} | {'PASS' if test() else 'FAIL'} |")

    claim("BP meta-learns far higher meta-accuracy than F_pseudo (by > 0.1)", ["BP", "pseudo"],
          lambda: acc["BP"] - acc["pseudo"] > 0.1,
          lambda: f"BP {acc['BP']:.3f} vs pseudo {acc['pseudo']:.3f}")
    claim("F_pseudo errors stay poorly aligned (hidden-layer angles > 60°)", ["pseudo"],
          lambda: hidden_ang["pseudo"] > 60, lambda: f"{hidden_ang['pseudo']:.1f}°")
    claim("F_bio > F_eHebb > F_pseudo in meta-accuracy", ["bio", "eHebb", "pseudo"],
          lambda: acc["bio"] > acc["eHebb"] > acc["pseudo"],
          lambda: f"{acc['bio']:.3f} / {acc['eHebb']:.3f} / {acc['pseudo']:.3f}")
    claim("eHebb reduces the angles most (F_eHebb < F_Oja, F_pseudo)", ["eHebb", "Oja", "pseudo"],
          lambda: ang["eHebb"] < min(ang["Oja"], ang["pseudo"]),
          lambda: f"eHebb {ang['eHebb']:.1f}°, Oja {ang['Oja']:.1f}°, "
                  f"pseudo {ang['pseudo']:.1f}°")
    claim("Oja improves accuracy over F_pseudo", ["Oja", "pseudo"],
          lambda: acc["Oja"] > acc["pseudo"],
          lambda: f"{acc['Oja']:.3f} vs {acc['pseudo']:.3f}")
    claim("...without reducing the angles as much as eHebb", ["Oja", "eHebb", "pseudo"],
          lambda: ang["pseudo"] - ang["Oja"] < ang["pseudo"] - ang["eHebb"],
          lambda: f"reduction Oja {ang['pseudo'] - ang['Oja']:.1f}° vs eHebb "
                  f"{ang['pseudo'] - ang['eHebb']:.1f}°")
    claim("Oja drives E_W down (below F_pseudo)", ["Oja", "pseudo"],
          lambda: ew["Oja"] < ew["pseudo"], lambda: f"{ew['Oja']:.3g} vs {ew['pseudo']:.3g}")

    def healthy(label):
        div, col = member_events(stores[label])
        return f"{int((div >= 0).sum())} diverged, {int((col >= 0).sum())} collapsed"

    for rule, variant in (("bio", "bio (θ₀ jitter 1e-9)"), ("Oja", "Oja (θ₀ jitter 1e-9)")):
        claim(f"cross-machine stand-in: F_{rule} with θ₀ jittered by 1e-9 keeps its claims "
              f"(> F_pseudo, meta-accuracy within 0.03, no failed seed)",
              [rule, variant, "pseudo"],
              lambda r=rule, v=variant: acc[v] > acc["pseudo"]
              and abs(acc[v] - acc[r]) < 0.03 and healthy(v) == "0 diverged, 0 collapsed",
              lambda r=rule, v=variant: f"{acc[v]:.3f} vs {acc[r]:.3f} ({healthy(v)})")
    def cpu(label):
        a = stores[label].attrs
        return f"{a.get('cpu_model', '?')} {a.get('cpu_capability', '')}".strip()

    for rule in ("BP", "pseudo", "eHebb", "Oja", "bio"):
        other = f"{rule} ({SECOND_CPU})"
        if other not in stores:
            continue
        above = rule != "pseudo"
        claim(f"cross-machine: F_{rule} rerun on a second CPU keeps its claims ("
              f"{'> F_pseudo, ' if above else ''}meta-accuracy within 0.03, no failed seed)",
              [rule, other, "pseudo"],
              lambda r=rule, v=other, up=above: (acc[v] > acc["pseudo"] or not up)
              and abs(acc[v] - acc[r]) < 0.03 and healthy(v) == "0 diverged, 0 collapsed",
              lambda r=rule, v=other: f"{acc[v]:.3f} on {cpu(v)} vs {acc[r]:.3f} on "
                                      f"{cpu(r)} ({healthy(v)})")
    for rule in ("BP", "pseudo", "eHebb", "Oja", "bio"):
        n = stores[rule]["episodes/meta_accuracy"].shape[0] if rule in stores else 0
        if 0 < n < TARGET_SEEDS:
            lines.append(f"| no collapsed or diverged seed in {TARGET_SEEDS} for F_{rule} | "
                         f"{n} seeds in the store ({healthy(rule)}) | not checked |")
            continue
        claim(f"no collapsed or diverged seed in {TARGET_SEEDS} for F_{rule}", [rule],
              lambda r=rule: healthy(r) == "0 diverged, 0 collapsed",
              lambda r=rule: f"{stores[r]['episodes/meta_accuracy'].shape[0]} seeds: "
                             f"{healthy(r)}")

    def pool_top():
        st = stores[pool_key]
        names = st.json_attr("term_names", [])
        final = np.abs(st["episodes/theta"][:, -1, :]).mean(0)
        return [names[i] for i in np.argsort(-final)]

    text = f"the L1 pool search keeps pseudo_grad, err_hebb and oja (top 3 by abs θ; F_{pool_key})"
    if pool_key in stores and (np.asarray(stores[pool_key].arrays.get("members/diverged_at",
                                                                      [-1])) >= 0).all():
        lines.append(f"| {text} | every seed diverged ({diverged_text(stores[pool_key])}) | "
                     "NOT REPRODUCED |")
        return "\n".join(lines) + "\n"
    def pool_detail():
        """Ranking, terms L1 set exactly to 0 in every seed, terms held at a bound."""
        zero, held = zero_and_held_terms(stores[pool_key])
        return (f"ranking: {', '.join(pool_top()[:5])}; exactly 0 in every seed: "
                f"{', '.join(zero) or 'none'}; held at a bound of meta.bounds in every seed: "
                f"{', '.join(held) or 'none'}")

    claim(text, [pool_key], lambda: set(pool_top()[:3]) == {"pseudo_grad", "err_hebb", "oja"},
          pool_detail)
    grammar_claim(lines, stores)
    return "\n".join(lines) + "\n"


def zero_and_held_terms(st) -> tuple[list[str], list[str]]:
    """Terms whose final θ is exactly 0 in every seed (L1), and terms held at a bound of
    ``meta.bounds`` in every seed (the box, not the CE, decides their size)."""
    import yaml

    names = st.json_attr("term_names", [])
    last = st["episodes/theta"][:, -1, :]  # [P, R]
    bounds = yaml.safe_load(st.attrs["recipe_yaml"])["meta"].get("bounds") or {}

    def at_bound(v, pair):
        return any(b is not None and b != 0 and np.isclose(v, b, rtol=1e-3, atol=0)
                   for b in pair)

    zero = [n for r, n in enumerate(names) if (last[:, r] == 0).all()]
    held = [n for r, n in enumerate(names) if n in bounds
            and all(at_bound(v, bounds[n]) for v in last[:, r])]
    return zero, held


def grammar_claim(lines: list[str], stores: dict) -> None:
    """Beyond the paper: does the search over every grammar term rediscover F_bio, and how
    does its meta-accuracy compare with F_bio's at the same episode budget?"""
    if "grammar pool" not in stores or "bio" not in stores:
        return
    st, bio = stores["grammar pool"], stores["bio"]
    E = st["episodes/meta_accuracy"].shape[1]
    names = st.json_attr("term_names", [])
    top = [names[r] for r in np.argsort(-np.abs(st["episodes/theta"][:, -1, :]).mean(0))]
    g = np.nanmedian(final_per_seed(st, "meta_accuracy"))
    b = np.nanmedian(final_per_seed(bio, "meta_accuracy", upto=E))
    div, col = member_events(st)
    verdict = ("rediscovers F_bio" if set(top[:3]) == {"pseudo_grad", "err_hebb", "oja"}
               else "finds another rule")
    if (div >= 0).all():  # θ frozen where each seed diverged: no rule was found
        lines.append(f"| beyond the paper: the L1 search over all {len(names)} grammar terms "
                     f"(top 3 by abs θ) | every seed diverged ({diverged_text(st)}) | "
                     "no result |")
        return
    zero, held = zero_and_held_terms(st)
    held_top = [n for n in top if n in held][:3]
    lines.append(f"| beyond the paper: the L1 search over all {len(names)} grammar terms "
                 f"(top 3 by abs θ) | top 5: {', '.join(top[:5])}; median meta-accuracy "
                 f"{g:.3f} vs F_bio {b:.3f} at episode {E} ({int((div >= 0).sum())} diverged, "
                 f"{int((col >= 0).sum())} collapsed of {len(div)}); exactly 0 in every "
                 f"seed: {len(zero)} terms; held at a bound in every seed: {len(held)} terms"
                 f"{' (largest: ' + ', '.join(held_top) + ')' if held_top else ''} | {verdict} |")


# ----------------------------------------------------------------------------------------
# P1 Table 1: per-layer rule assignments (plast ablate-layers). The table itself comes from
# plastcli.results.tables (one place for the CLI and the figures).

from plastcli.results import tables as _tables  # noqa: E402

TABLE1 = "table1-ablate-layers"


def _by_assignment(st, key: str) -> list[tuple[str, np.ndarray]]:
    """(assignment name, ``[seeds, E, ...]`` slice of /episodes/<key>) in table order."""
    index = st["members/assignment_index"]
    return [(name, st[f"episodes/{key}"][index == a])
            for a, name in enumerate(st.json_attr("assignment_names"))]


def _table1_angles(st):
    groups = _by_assignment(st, "angles")
    L = groups[0][1].shape[2]
    burn = int(st.attrs["burn_in"])
    x = _x(st)
    fig, ax = subplots(L + 1, ncols=2, size=(5.6, 3.6))
    for l in range(L):
        for i, (name, ang) in enumerate(groups):
            mean_sd_band(ax[l], x, ang[:, :, l], name, f"C{i}", smooth=SMOOTH)
        ax[l].axvline(burn, color="k", lw=0.6, ls=":")
        ax[l].set(xlabel="episode", ylabel=f"α{l} to backprop (degrees)",
                  title=f"α{l}: error e_{l} (pre-synaptic to W{l}{l + 1})")
    for i, (name, acc) in enumerate(_by_assignment(st, "meta_accuracy")):
        mean_sd_band(ax[L], x, acc, name, f"C{i}", smooth=SMOOTH)
    ax[L].set(xlabel="episode", ylabel="meta-accuracy (query, 5-way)", ylim=(0, 1),
              title="meta-accuracy")
    ax[0].legend(title="layers with eHebb", fontsize=8, ncol=2)
    fig.suptitle(f"P1 Table 1 — alignment angles per layer assignment (moving average {SMOOTH}, "
                 f"mean ± sd over {groups[0][1].shape[0]} seeds; dotted: burn-in {burn})")
    return fig


def _table1_summary(st):
    """Grouped bars of Table 1: alpha_l per assignment, the hatched bars are the angles of
    errors that are pre-synaptic to a layer using eHebb."""
    rows = _tables.table1_rows(st)
    L = rows[0]["alpha"].shape[0]
    layers = st.json_attr("layer_names")
    fig, ax = subplots(1, size=(10.0, 4.0))
    ax = ax[0]
    width = 0.8 / L
    for l in range(L):
        xs = np.arange(len(rows)) + (l - (L - 1) / 2) * width
        means = [r["alpha"][l, 0] for r in rows]
        sds = [r["alpha"][l, 1] for r in rows]
        bars = ax.bar(xs, means, width, yerr=sds, capsize=2, color=f"C{l}",
                      label=f"α{l} (e_{l}, pre-synaptic to {layers[l]})")
        for r, bar in zip(rows, bars, strict=True):
            if layers[l] in r["added_layers"]:
                bar.set_hatch("///")
                bar.set_edgecolor("k")
    from matplotlib.patches import Patch

    handles = [*ax.get_legend_handles_labels()[0],
               Patch(facecolor="w", edgecolor="k", hatch="///", label="its layer uses eHebb")]
    ax.set_xticks(np.arange(len(rows)), [r["assignment"] for r in rows])
    burn = int(st.attrs["burn_in"])
    E = st["episodes/angles"].shape[1]
    ax.set(xlabel="layers using pseudo_grad + err_hebb (others: pseudo_grad only)",
           ylabel="alignment angle to backprop (degrees)",
           title=f"P1 Table 1 — α_l averaged over episodes {burn}..{E}, mean ± sd over seeds")
    ax.axhline(90, color="grey", lw=0.6, ls="--")
    ax.legend(handles=handles, fontsize=8, loc="upper center", ncol=L + 1,
              bbox_to_anchor=(0.5, -0.18))
    return fig


@register("2022", "table1-ablate-layers", stores=(TABLE1,))
def table1(s):
    st = s[TABLE1]
    return {"table1-ablate-layers.md": _tables.table1_markdown(st),
            "table1-ablate-layers.csv": _tables.table1_csv(st),
            "table1-angles": _table1_angles(st),
            "table1-summary": _table1_summary(st)}


# ----------------------------------------------------------------------------------------
# P1 Fig 1: BP vs FA vs DFA online (plast baseline).

from plastcli.figures import online as _on  # noqa: E402

FIG1 = "fig1-fa-dfa-bp"


@register("2022", "fig1-fa-dfa-bp", stores=(FIG1,))
def online_fig1(s):
    st = s[FIG1]
    fig, ax = subplots(3, ncols=3, size=(4.6, 3.6))
    _on.accuracy_panel(ax[0], st, ["BP", "FA", "DFA"], "(a) online MNIST")
    for a, name in zip(ax[1:], ("FA", "DFA"), strict=True):
        ang = st["stats/angles_mean"][_on.cond(st, name)]  # [S, L]
        for l in range(1, ang.shape[1]):
            _on.stat_band(a, st, "angles", name, f"α{l} (e_{l})", c=f"C{l - 1}", index=(l,))
        a.axhline(90, color="grey", lw=0.6, ls="--")
        a.set(xlabel="training samples seen", ylabel="angle to backprop error (degrees)",
              ylim=(0, 120), title=f"({'b' if name == 'FA' else 'c'}) {name}: error alignment "
              "α_l to BP\n(validation batch-mean errors)")
        a.legend(fontsize=8)
    fig.suptitle("P1 Fig 1 — backprop vs feedback alignment vs direct feedback alignment")
    return {"fig1-fa-dfa-bp": fig, "fig1-fa-dfa-bp.md": _on.results_markdown(
        {FIG1: st}, "P1 Fig 1 — final validation accuracy after the last online sample")}
