"""Figures of P2 (2024): Fig 8 (plastic feedback vs F_BP) and the online Figs 1-6 and S1;
Fig 7 (the recurrent memory task) is in rnn2024."""


# ----------------------------------------------------------------------------------------
# P2 Fig 8: meta-learned plasticity rule with plastic feedback vs meta-trained F_BP.

import numpy as np

from plastcli.figures import online as _on
from plastcli.figures import register
from plastcli.figures.style import (
    SMOOTH,
    color,
    layer_color,
    legend_below,
    mean_sd_band,
    meta_accuracy_label,
    subplots,
    task_classes,
    until_diverged,
)
from plastcli.results.statistics import TAIL as FIG8_TAIL
from plastcli.results.statistics import final_window, moving_average

FIG8 = {"plastic feedback": "fig8-plastic-feedback", "BP": "fig8-bp"}


def _fig8_x(st) -> np.ndarray:
    return np.arange(1, st["episodes/meta_accuracy"].shape[1] + 1)


def _fig8_coefficients(ax, st, key: str, names: list[str], title: str, ylabel: str) -> None:
    theta = until_diverged(st, st[f"episodes/{key}"])  # [P, E, R]
    for r, name in enumerate(names):
        mean_sd_band(ax, _fig8_x(st), theta[:, :, r], name, f"C{r}")
    ax.axhline(0, color="k", lw=0.6)
    ax.set(xlabel="episode", ylabel=ylabel, title=title)


def fig8_summary(plastic, bp) -> str:
    """Markdown with the Fig 8 numbers: final meta-accuracy per seed and mean ± sd, final
    coefficients and angles (last 50 episodes: plastcli.results.statistics.final_window)."""
    lines = ["P2 Fig 8 — meta-trained plastic-feedback rule vs meta-trained F_BP "
             f"(means over the last {FIG8_TAIL} episodes per seed; mean ± sd over seeds).", "",
             "| model | meta-accuracy | per seed | meta-loss | mean hidden-layer angle α1..α(L-1) "
             "(°) |", "|---|---|---|---|---|"]
    for label, st in (("plastic feedback (F_W: pseudo_grad + err_hebb + oja + decay; "
                       "F_B: post_act_pre_err + decay)", plastic), ("F_BP", bp)):
        acc = final_window(st["episodes/meta_accuracy"])  # [P]
        loss = final_window(st["episodes/meta_loss"])  # [P]
        ang = final_window(st["episodes/angles"])[:, 1:].mean(1)  # [P]
        lines.append(f"| {label} | {acc.mean():.3f} ± {acc.std(ddof=1):.3f} | "
                     f"{', '.join(f'{a:.3f}' for a in acc)} | {loss.mean():.3f} | "
                     f"{np.nanmean(ang):.1f} |")
    lines += ["", "Final coefficients (episode "
              f"{plastic['episodes/theta'].shape[1]}, mean ± sd over seeds; ΔM = +θ F, "
              "SPEC §3.1 signs; P2's θ9 on +B equals −θ_decay of the feedback rule):", "",
              "| coefficient set | term | θ |", "|---|---|---|"]
    for key, attr, who in (("theta", "term_names", "forward (W)"),
                           ("theta_feedback", "feedback_term_names", "feedback (B)")):
        last = plastic[f"episodes/{key}"][:, -1, :]
        for r, name in enumerate(plastic.json_attr(attr)):
            lines.append(f"| {who} | {name} | {last[:, r].mean():.3g} ± "
                         f"{last[:, r].std(ddof=1):.2g} |")
    last = bp["episodes/theta"][:, -1, 0]
    lines.append(f"| F_BP | pseudo_grad | {last.mean():.3g} ± {last.std(ddof=1):.2g} |")
    lines += [""] + [f"{label}: {fig8_failures(st)}." for label, st in
                     (("Plastic feedback", plastic), ("F_BP", bp))]
    lines += ["", fig8_verdict(plastic, bp)]
    return "\n".join(lines) + "\n"


def failed_seeds(st) -> dict[str, list[int]]:
    """Member indices that diverged (NaN), collapsed (flagged in the run) or ended with a
    final query loss at or above chance (ln M: never learned, so never flagged)."""
    from plastcli.results.collapse import chance_loss

    classes = task_classes(st)
    loss = final_window(st["episodes/meta_loss"])
    out = {"diverged": np.flatnonzero(np.asarray(st["members/diverged_at"]) >= 0).tolist()}
    if "members/collapsed_at" in st.arrays:
        out["collapsed"] = np.flatnonzero(np.asarray(st["members/collapsed_at"]) >= 0).tolist()
    failed = {i for v in out.values() for i in v}
    out["above chance loss"] = [int(i) for i in np.flatnonzero(loss >= chance_loss(classes))
                                if int(i) not in failed]
    return out


def fig8_failures(st) -> str:
    seeds = list(st["members/seed"])
    diverged_at = np.asarray(st["members/diverged_at"])
    parts, failed = [], failed_seeds(st)
    for what, idx in failed.items():
        if idx:
            where = [f"{seeds[i]} (episode {diverged_at[i]})" if what == "diverged"
                     else str(seeds[i]) for i in idx]
            parts.append(f"{what}: seed {', '.join(where)}")
    n = sum(len(v) for v in failed.values())
    return (f"{n} of {len(seeds)} seeds failed" + (f" ({'; '.join(parts)})" if parts else ""))


def paired_verdict(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float, str]:
    """Mean of a - b ``[seeds]`` (the same seed in both: same tasks, weights, stream) with
    its 98% bootstrap CI, and "exceeds" (CI above 0), "falls short of" (below) or
    "matches" (contains 0)."""
    from plastcli.results.statistics import bootstrap_ci

    mean, lo, hi = (float(v) for v in bootstrap_ci(np.asarray(a) - np.asarray(b),
                                                    level=0.98))
    return mean, lo, hi, "exceeds" if lo > 0 else "falls short of" if hi < 0 else "matches"


def fig8_verdict(plastic, bp) -> str:
    """P2's claim "plastic feedback with Oja can exceed meta-trained BP", decided by the
    98% bootstrap CI of the paired difference of final meta-accuracy (same seed = same
    tasks and initial weights in both stores): "exceeds" if the CI lies above 0, "falls
    short" if below, "matches" if it contains 0."""
    seeds_p, seeds_b = list(plastic["members/seed"]), list(bp["members/seed"])
    common = [s for s in seeds_p if s in seeds_b]
    if not common:
        return "Paired difference: the two stores share no seed; not decided."
    acc_p = final_window(plastic["episodes/meta_accuracy"])
    acc_b = final_window(bp["episodes/meta_accuracy"])
    bad = {seeds_p[i] for v in failed_seeds(plastic).values() for i in v} | \
          {seeds_b[i] for v in failed_seeds(bp).values() for i in v}

    def verdict(seeds: list[int], which: str) -> str:
        mean, lo, hi, word = paired_verdict(acc_p[[seeds_p.index(s) for s in seeds]],
                                            acc_b[[seeds_b.index(s) for s in seeds]])
        return (f"over {len(seeds)} {which}: {mean:+.3f} [98% CI {lo:+.3f}, {hi:+.3f}] → "
                f"the plastic-feedback rule **{word}** meta-trained BP"
                + (" (fewer than 10 seeds: weak evidence)" if len(seeds) < 10 else ""))

    text = ("Paired difference in final meta-accuracy (a diverged seed counts with its "
            "episodes before it diverged), plastic feedback − F_BP, "
            + verdict(common, "shared seeds"))
    clean = [s for s in common if s not in bad]
    if bad & set(common) and len(clean) > 1:
        text += "; " + verdict(clean, "shared seeds where neither failed")
    return text + "."


@register("2024", "fig8-plastic-feedback", stores=tuple(FIG8.values()))
def fig8(s):
    plastic, bp = s[FIG8["plastic feedback"]], s[FIG8["BP"]]
    fig, ax = subplots(4, ncols=2, size=(5.6, 3.7))
    n_ok = {}
    for i, (label, st) in enumerate((("plastic feedback", plastic), ("BP", bp))):
        name = "plastic" if label != "BP" else "BP"
        c = color(name, i)
        acc = st["episodes/meta_accuracy"]  # [P, E]
        bad = sorted({j for v in failed_seeds(st).values() for j in v})
        ok = [j for j in range(acc.shape[0]) if j not in bad]
        n_ok[name] = (len(ok), acc.shape[0])
        mean_sd_band(ax[0], _fig8_x(st), acc[ok], "plastic feedback + Oja (meta-learned F_W, "
                     "F_B)" if name == "plastic" else "F_BP (meta-trained)", c, smooth=SMOOTH)
        diverged_at = np.asarray(st["members/diverged_at"])
        marked = False
        for k, j in enumerate(bad):  # each failed seed on its own, up to where it diverged
            ax[0].plot(_fig8_x(st), moving_average(acc[j : j + 1], SMOOTH)[0], color=c,
                       lw=0.8, ls=":", label=f"{label}: failed seeds" if k == 0 else None)
            if diverged_at[j] >= 0:
                ax[0].plot(diverged_at[j], acc[j][diverged_at[j] - 1], "x", color=c, ms=6,
                           label=None if marked else "diverged (θ or loss NaN)")
                marked = True
    ax[0].set(xlabel="episode", ylabel=meta_accuracy_label(plastic, bp), ylim=(0, 1),
              title=f"meta-accuracy (moving average {SMOOTH}); mean ± sd over the seeds\n"
                    f"that did not fail: {n_ok['plastic'][0]} of {n_ok['plastic'][1]} plastic, "
                    f"{n_ok['BP'][0]} of {n_ok['BP'][1]} BP")
    legend_below(ax[0])  # the bands reach the top: a legend inside covered them
    _fig8_coefficients(ax[1], plastic, "theta", plastic.json_attr("term_names"),
                       "forward rule coefficients (ΔW = +θ F)", "coefficient θ")
    mean_sd_band(ax[1], _fig8_x(bp), bp["episodes/theta"][:, :, 0], "pseudo_grad of F_BP",
                 "k")
    ax[1].lines[-1].set_linestyle("--")
    legend_below(ax[1])
    _fig8_coefficients(ax[2], plastic, "theta_feedback", plastic.json_attr("feedback_term_names"),
                       "feedback rule coefficients (ΔB = +θ F; P2's θ9 = −θ_decay)",
                       "coefficient θ")
    legend_below(ax[2])
    ang = until_diverged(plastic, plastic["episodes/angles"])
    for l in range(ang.shape[2]):
        mean_sd_band(ax[3], _fig8_x(plastic), ang[:, :, l], f"α{l} (e_{l})",
                     layer_color(l, ang.shape[2]), smooth=SMOOTH)
    ax[3].axhline(90, color="grey", lw=0.6, ls="--")
    ax[3].set(xlabel="episode", ylabel="alignment angle to backprop (degrees)", ylim=(0, 120),
              title="error alignment of the plastic-feedback network")
    ax[3].legend(fontsize=8, ncol=3, loc="lower left")
    fig.suptitle("P2 Fig 8 — meta-learning plasticity with plastic feedback vs meta-trained BP")
    return {"fig8-plastic-feedback": fig, "fig8-plastic-feedback.md": fig8_summary(plastic, bp)}


# ----------------------------------------------------------------------------------------
# P2 Figs 1-6 and S1: online learning with fixed coefficients (plast baseline / init-study).


D5, D10, NAIVE, FAOJA = "fig1-depth5", "fig1-depth10", "fig5-naive-init", "fig6-fa-oja"
# P2's second data set (issue 11): Fig 1 with the same recipes on Fashion-MNIST
D5F, D10F = "fig1-depth5-fashion", "fig1-depth10-fashion"
ONLINE_STORES = (D5, D10, NAIVE, FAOJA, D5F, D10F)


def _fig1(s, d5: str, d10: str, data: str):
    fig, ax = subplots(2, ncols=2, size=(5.0, 3.8))
    _on.accuracy_panel(ax[0], s[d5], ["BP", "BP+Oja"], "(a) 5 layers")
    _on.accuracy_panel(ax[1], s[d10], ["BP", "BP+Oja"], "(b) 10 layers")
    fig.suptitle(f"P2 Fig 1 — online {data}: BP vs BP+Oja")
    return fig


@register("2024", "fig1-bp-vs-oja", stores=(D5, D10))
def online_fig1(s):
    return _fig1(s, D5, D10, "MNIST")


@register("2024", "fig1-bp-vs-oja-fashion", stores=(D5F, D10F))
def online_fig1_fashion(s):
    return _fig1(s, D5F, D10F, "Fashion-MNIST")


@register("2024", "fig2-reconstruction-error", stores=(D10,))
def online_fig2(s):
    st = s[D10]
    L1 = st["curves/reconstruction_error"].shape[2]
    fig, ax = subplots(L1, ncols=3, size=(3.6, 2.8))
    for l in range(L1):
        for name in ("BP", "BP+Oja"):
            _on.stat_band(ax[l], st, "reconstruction_error", name, index=(l,))
        ax[l].set(yscale="log", xlabel="training samples seen",
                  ylabel="‖y_{l-1} − W_lᵀ y_l‖² (mean)".replace("{l-1}", str(l)).replace(
                      "_l", f"_{l + 1}"), title=f"layer {l + 1} (y{l} from y{l + 1})")
        ax[l].legend(fontsize=7)
    fig.suptitle("P2 Fig 2 — reconstruction error per hidden layer, 10 layers "
                 "(validation mean; 98% bootstrap CI over runs)")
    return fig


@register("2024", "fig3-reconstructions-depth5", stores=(D5,))
def online_fig3_d5(s):
    return _on.reconstruction_grid(s[D5], [1, 2, 3, 4], "P2 Fig 3 — inputs reconstructed "
                                   "from hidden layers, x̂(l) = W₁ᵀ…W_lᵀ y_l, 5 layers (run 1)")


@register("2024", "fig3-reconstructions-depth10", stores=(D10,))
def online_fig3_d10(s):
    return _on.reconstruction_grid(s[D10], [1, 3, 7, 9], "P2 Fig 3 — inputs reconstructed "
                                   "from hidden layers, x̂(l) = W₁ᵀ…W_lᵀ y_l, 10 layers (run 1)")


@register("2024", "fig4-pca", stores=(D10,))
def online_fig4(s):
    samples = int(_on.x_samples(s[D10])[-1])
    return _on.pca_panels(s[D10], [1, 3, 7, 9], ["BP", "BP+Oja"], "P2 Fig 4 — PCA of hidden "
                          f"activations over the validation set, 10 layers, after {samples:,} "
                          "samples (98% bootstrap CI over runs)")


@register("2024", "fig5-naive-init", stores=(NAIVE,))
def online_fig5(s):
    st = s[NAIVE]
    fig, ax = subplots(2, ncols=2, size=(5.2, 3.8))
    conds = ["BP (naive)", "BP+Oja (naive)", "BP (xavier)", "BP+Oja (xavier)"]
    _on.accuracy_panel(ax[0], st, conds, "(a) validation accuracy, 5 layers",
                       ls={c: "--" for c in conds if "xavier" in c}, legend_below=True)
    for name in conds:
        _on.stat_band(ax[1], st, "val_loss", name, ls="--" if "xavier" in name else "-")
    ax[1].set(xlabel="training samples seen", ylabel="validation cross-entropy",
              title="(b) validation loss")
    ax[1].legend(fontsize=8)
    fig.suptitle("P2 Fig 5 — naive initialisation N(0, 0.01²) (solid) vs xavier (dashed)")
    return fig


@register("2024", "fig6-activation-norms", stores=(D5, NAIVE, D10, FAOJA))
def online_fig6(s):
    panels = [(D5, "BP", "(a) BP, 5 layers"), (D5, "BP+Oja", "(b) BP+Oja, 5 layers"),
              (NAIVE, "BP (naive)", "(c) BP, naive init"),
              (NAIVE, "BP+Oja (naive)", "(d) BP+Oja, naive init"),
              (D10, "BP", "(e) BP, 10 layers"), (D10, "BP+Oja", "(f) BP+Oja, 10 layers"),
              (FAOJA, "FA", "(g) FA, 5 layers"), (FAOJA, "FA+Oja", "(h) FA+Oja, 5 layers")]
    fig, ax = subplots(8, ncols=2, size=(4.6, 3.2))
    for a, (store, name, title) in zip(ax, panels, strict=True):
        _on.layer_lines(a, s[store], "activation_norm", name, title,
                        "‖y_l‖ (validation mean)")
    for r in range(4):  # share the y range within each row (same architecture and init)
        lo = min(ax[2 * r].get_ylim()[0], ax[2 * r + 1].get_ylim()[0])
        hi = max(ax[2 * r].get_ylim()[1], ax[2 * r + 1].get_ylim()[1])
        ax[2 * r].set_ylim(lo, hi)
        ax[2 * r + 1].set_ylim(lo, hi)
    fig.suptitle("P2 Fig 6 — activation norms per hidden layer during training "
                 "(mean over runs)")
    return fig


@register("2024", "figS1-update-norms", stores=(NAIVE,))
def online_fig_s1(s):
    st = s[NAIVE]
    fig, ax = subplots(3, ncols=3, size=(4.2, 3.4))
    _on.layer_lines(ax[0], st, "update_norm_bp", "BP (naive)", "(a) BP: ‖ΔW_BP‖",
                    "Frobenius norm of\na single-sample update", prefix="W_")
    _on.layer_lines(ax[1], st, "update_norm_bp", "BP+Oja (naive)",
                    "(b) BP+Oja: its BP part ‖ΔW_BP‖", "Frobenius norm of\na single-sample update",
                    prefix="W_")
    _on.layer_lines(ax[2], st, "update_norm", "BP+Oja (naive)", "(c) BP+Oja: whole ‖ΔW‖",
                    "Frobenius norm of\na single-sample update", prefix="W_")
    lo = min(a.get_ylim()[0] for a in ax)
    hi = max(a.get_ylim()[1] for a in ax)
    for a in ax:
        a.set_ylim(lo, hi)
    fig.suptitle("P2 Fig S1 — update norms per layer, naive init, 5 layers (mean over runs of "
                 "the update each rule would make on 16 fixed validation images)")
    return fig


@register("2024", "online-results-2024.md", stores=(), optional=ONLINE_STORES)
def online_table(s):
    have = {n: s[n] for n in ONLINE_STORES if n in s}
    if not have:
        return {}
    return {"online-results-2024.md": _on.results_markdown(
        have, "P2 online experiments — final validation accuracy after the last online sample")}
