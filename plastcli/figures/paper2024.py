"""Figures of P2 (2024)."""


# ----------------------------------------------------------------------------------------
# P2 Fig 8: meta-learned plasticity rule with plastic feedback vs meta-trained F_BP.

import numpy as np  # noqa: E402

from plastcli.figures import register  # noqa: E402
from plastcli.figures.style import SMOOTH, color, mean_sd_band, subplots  # noqa: E402
from plastcli.results.statistics import TAIL as FIG8_TAIL  # noqa: E402
from plastcli.results.statistics import final_window  # noqa: E402

FIG8 = {"plastic feedback": "fig8-plastic-feedback", "BP": "fig8-bp"}


def _fig8_x(st) -> np.ndarray:
    return np.arange(1, st["episodes/meta_accuracy"].shape[1] + 1)


def _fig8_coefficients(ax, st, key: str, names: list[str], title: str, ylabel: str) -> None:
    theta = st[f"episodes/{key}"]  # [P, E, R]
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
    lines += ["", fig8_verdict(plastic, bp)]
    return "\n".join(lines) + "\n"


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
    mean, lo, hi, verdict = paired_verdict(
        final_window(plastic["episodes/meta_accuracy"])[[seeds_p.index(s) for s in common]],
        final_window(bp["episodes/meta_accuracy"])[[seeds_b.index(s) for s in common]])
    return (f"Paired difference in final meta-accuracy, plastic feedback − F_BP, over "
            f"{len(common)} shared seeds: {mean:+.3f} [98% CI {lo:+.3f}, {hi:+.3f}] → the "
            f"plastic-feedback rule **{verdict}** meta-trained BP"
            + (" (fewer than 10 seeds: weak evidence)." if len(common) < 10 else "."))


@register("2024", "fig8-plastic-feedback", stores=tuple(FIG8.values()))
def fig8(s):
    plastic, bp = s[FIG8["plastic feedback"]], s[FIG8["BP"]]
    fig, ax = subplots(4, ncols=2, size=(5.6, 3.7))
    for i, (label, st) in enumerate((("plastic feedback", plastic), ("BP", bp))):
        name = "plastic" if label != "BP" else "BP"
        mean_sd_band(ax[0], _fig8_x(st), st["episodes/meta_accuracy"],
                     "plastic feedback + Oja (meta-learned F_W, F_B)" if name == "plastic"
                     else "F_BP (meta-trained)", color(name, i), smooth=SMOOTH)
    ax[0].set(xlabel="episode", ylabel="meta-accuracy (query, 5-way)", ylim=(0, 1),
              title=f"meta-accuracy (moving average {SMOOTH}, mean ± sd over seeds: "
                    f"{plastic['episodes/meta_accuracy'].shape[0]} plastic, "
                    f"{bp['episodes/meta_accuracy'].shape[0]} BP)")
    ax[0].legend(loc="lower right")
    _fig8_coefficients(ax[1], plastic, "theta", plastic.json_attr("term_names"),
                       "forward rule coefficients (ΔW = +θ F)", "coefficient θ")
    mean_sd_band(ax[1], _fig8_x(bp), bp["episodes/theta"][:, :, 0], "pseudo_grad of F_BP",
                 "k")
    ax[1].lines[-1].set_linestyle("--")
    ax[1].legend(fontsize=8, ncol=2)
    _fig8_coefficients(ax[2], plastic, "theta_feedback", plastic.json_attr("feedback_term_names"),
                       "feedback rule coefficients (ΔB = +θ F; P2's θ9 = −θ_decay)",
                       "coefficient θ")
    ax[2].legend(fontsize=8)
    ang = plastic["episodes/angles"]
    for l in range(ang.shape[2]):
        mean_sd_band(ax[3], _fig8_x(plastic), ang[:, :, l], f"α{l} (e_{l})", f"C{l}",
                     smooth=SMOOTH)
    ax[3].axhline(90, color="grey", lw=0.6, ls="--")
    ax[3].set(xlabel="episode", ylabel="alignment angle to backprop (degrees)", ylim=(0, 120),
              title="error alignment of the plastic-feedback network")
    ax[3].legend(fontsize=8, ncol=3, loc="lower left")
    fig.suptitle("P2 Fig 8 — meta-learning plasticity with plastic feedback vs meta-trained BP")
    return {"fig8-plastic-feedback": fig, "fig8-plastic-feedback.md": fig8_summary(plastic, bp)}


# ----------------------------------------------------------------------------------------
# P2 Figs 1-6 and S1: online learning with fixed coefficients (plast baseline / init-study).

from plastcli.figures import online as _on  # noqa: E402

D5, D10, NAIVE, FAOJA = "fig1-depth5", "fig1-depth10", "fig5-naive-init", "fig6-fa-oja"
ONLINE_STORES = (D5, D10, NAIVE, FAOJA)


@register("2024", "fig1-bp-vs-oja", stores=(D5, D10))
def online_fig1(s):
    fig, ax = subplots(2, ncols=2, size=(5.0, 3.8))
    _on.accuracy_panel(ax[0], s[D5], ["BP", "BP+Oja"], "(a) 5 layers")
    _on.accuracy_panel(ax[1], s[D10], ["BP", "BP+Oja"], "(b) 10 layers")
    fig.suptitle("P2 Fig 1 — online MNIST: BP vs BP+Oja")
    return fig


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
    return _on.pca_panels(s[D10], [1, 3, 7, 9], ["BP", "BP+Oja"], "P2 Fig 4 — PCA of hidden "
                          "activations over the validation set, 10 layers, after 5,000 samples "
                          "(98% bootstrap CI over runs)")


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
                    "Frobenius norm of a single-sample update", prefix="W_")
    _on.layer_lines(ax[1], st, "update_norm_bp", "BP+Oja (naive)",
                    "(b) BP+Oja: its BP part ‖ΔW_BP‖", "Frobenius norm of a single-sample update",
                    prefix="W_")
    _on.layer_lines(ax[2], st, "update_norm", "BP+Oja (naive)", "(c) BP+Oja: whole ‖ΔW‖",
                    "Frobenius norm of a single-sample update", prefix="W_")
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


# ----------------------------------------------------------------------------------------
# P2 Fig 7: recurrent delayed-memory task, BPTT vs BPTT+Oja (plast rnn-memory).

from plastcli.figures.style import ci_band  # noqa: E402
from plastcli.results.statistics import bootstrap_ci  # noqa: E402

FIG7, FIG7_SWEEP = "fig7-rnn-memory", "fig7-rnn-hidden-sweep"
FIG7_DELAYS = ("fig7-rnn-delay10", "fig7-rnn-delay20")  # the task with T = 10, 20 (not in P2)
# issue 11's study blocks: the base (tanh, W_h orthogonal) and one factor changed each
FIG7_STUDY = ("fig7-rnn-tanh-orthogonal", "fig7-rnn-tanh-xavier",
              "fig7-rnn-softplus-orthogonal", "fig7-rnn-tanh-xavier-h25",
              "fig7-rnn-tanh-xavier-oja-sigma")


def _rnn_color(name: str, i: int) -> str:
    return color(name.replace("BPTT", "BP"), i)


def _rnn_groups(st):
    """(hidden, condition index, condition name, member mask) for every group of a store."""
    names = st.json_attr("condition_names")
    hidden, cond = st["members/hidden"], st["members/condition"]
    return [(int(h), c, names[c], (hidden == h) & (cond == c))
            for h in st.json_attr("hidden_sizes") for c in range(len(names))]


def _rnn_coefs(st, mask) -> str:
    return (f"θ1={st['members/theta_bptt'][mask][0]:.3g}, "
            f"θ2={st['members/theta_oja'][mask][0]:.3g}")


def _rnn_dataset(st) -> str:
    return st.json_attr("datasets", ["?"])[0].split(":")[0]


def _rnn_title(st) -> str:
    import yaml

    net = yaml.safe_load(st.attrs["recipe_yaml"]).get("network", {})
    sigma = "tanh" if net.get("sigma") == "tanh" else f"softplus β={net.get('beta', 10):g}"
    wh = net.get("init_recurrent", "same")
    wh = f"W_h {net.get('init', 'xavier') if wh == 'same' else wh}" + \
        (f" × {net['gain']:g}" if net.get("gain", 1.0) != 1.0 else "")
    return (f"T = {st.attrs['T']}, image for {st.attrs['present']} steps, σ = {sigma}, {wh}, "
            f"{int(st['members/seed'].size / len(_rnn_groups(st)))} seeds, mean ± 98% CI")


def fig7_summary(stores: dict) -> str:
    """Markdown table: final validation accuracy per (store, hidden size, condition)."""
    lines = ["P2 Fig 7 — delayed-memory RNN: final validation accuracy (fixed test-split "
             "subset), mean over seeds with 98% bootstrap CI (500 resamples); coefficients "
             "chosen on a held-out part of the train split.", "",
             "| store | hidden | condition | θ1 (BPTT) | θ2 (Oja) | sequences | seeds | "
             "final val. accuracy | 98% CI | final val. loss |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, st in stores.items():
        seen = int(st["curves/samples_seen"][0, -1])
        for h, _, cname, m in _rnn_groups(st):
            acc = st["curves/val_accuracy"][m, -1]
            loss = st["curves/val_loss"][m, -1]
            mean, lo, hi = bootstrap_ci(acc[:, None])
            lines.append(f"| {name} | {h} | {cname} | {st['members/theta_bptt'][m][0]:.3g} | "
                         f"{st['members/theta_oja'][m][0]:.3g} | {seen} | {m.sum()} | "
                         f"{mean[0]:.4f} | [{lo[0]:.4f}, {hi[0]:.4f}] | "
                         f"{np.nanmean(loss):.3f} |")
    lines += ["", "Claim \"BPTT+Oja beats BPTT on the memory task\" (SPEC §7), per store and "
              "hidden size: the paired difference of final accuracy (same seed = same "
              "initial weights and stream) with its 98% bootstrap CI; chance is 0.1 (\"above\": "
              f"CI low > {ABOVE_CHANCE}).", "",
              "| store | T | hidden | BPTT above chance (CI low) | BPTT+Oja − BPTT "
              "[98% CI] | result |", "|---|---|---|---|---|---|"]
    for name, st in stores.items():
        lines += fig7_claim_rows(name, st)
    return "\n".join(lines) + "\n"


# "above chance": 98% CI low above 0.11, not 0.1: a constant guess scores its class's
# share of the 1,000-image validation subset, which is 0.1 only on average
ABOVE_CHANCE = 0.11


def fig7_claim_rows(name: str, st) -> list[str]:
    """One claim row per hidden size of a store with a BPTT and a BPTT+Oja condition."""
    names = st.json_attr("condition_names")
    if not {"BPTT", "BPTT+Oja"} <= set(names):
        return []
    rows = []
    acc, seed, hid = (st["members/final_val_accuracy"], st["members/seed"],
                      st["members/hidden"])
    cond = st["members/condition"]
    for h in st.json_attr("hidden_sizes"):
        def by_seed(c, h=h):
            m = (hid == h) & (cond == names.index(c))
            return dict(zip(seed[m].tolist(), acc[m].tolist(), strict=True))

        bp, oja = by_seed("BPTT"), by_seed("BPTT+Oja")
        common = sorted(set(bp) & set(oja))
        mean, lo, hi, verdict = paired_verdict([oja[k] for k in common], [bp[k] for k in common])
        _, bp_lo, _ = bootstrap_ci(np.array([bp[k] for k in common])[:, None])
        result = ("PASS" if verdict == "exceeds" else "NOT REPRODUCED") + \
            f" (BPTT+Oja {verdict} BPTT)"
        rows.append(f"| {name} | {st.attrs['T']} | {h} | "
                    f"{'yes' if bp_lo[0] > ABOVE_CHANCE else 'no'} ({bp_lo[0]:.4f}) | "
                    f"{mean:+.3f} [{lo:+.3f}, {hi:+.3f}] | {result} |")
    return rows


def _fig7_grid(ax, st) -> None:
    """Held-out selection accuracy of every grid point: vs θ1, one line per (condition, θ2)."""
    names = st.json_attr("condition_names")
    h0 = st.json_attr("hidden_sizes")[0]
    ph, pc = st["grid/point_hidden"], st["grid/point_condition"]
    t1, t2, acc = (st["grid/point_theta_bptt"], st["grid/point_theta_oja"],
                   st["grid/point_mean_accuracy"])
    k = 0
    for c, cname in enumerate(names):
        for v in np.unique(t2[(ph == h0) & (pc == c)]):
            m = (ph == h0) & (pc == c) & (t2 == v)
            order = np.argsort(t1[m])
            ax.plot(t1[m][order], acc[m][order], marker="o", lw=1.2, color=f"C{k}",
                    ls="-" if c else "--", label=f"{cname}, θ2={v:.3g}")
            k += 1
    for row in st["grid/best_row"]:
        if ph[row] == h0:
            ax.plot(t1[row], acc[row], marker="*", ms=14, color="k", ls="none")
    ax.set_xscale("log")
    ticks = np.unique(t1[ph == h0])
    ax.set_xticks(ticks, [f"{v:.3g}" for v in ticks])
    ax.minorticks_off()
    ax.axhline(0.1, color="grey", lw=0.6, ls=":")
    ax.set(xlabel="θ1 (BPTT learning rate)", ylabel="held-out accuracy (train split)",
           title=f"grid search, hidden {h0} (★ = chosen)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))


@register("2024", FIG7, stores=(FIG7,), optional=(FIG7_SWEEP, *FIG7_DELAYS, *FIG7_STUDY))
def fig7(s):
    out = {FIG7: fig7_panels(s[FIG7])}
    tables = {FIG7: s[FIG7]}
    for name in (*FIG7_DELAYS, *FIG7_STUDY):
        if name in s:
            out[name] = fig7_panels(s[name])
            tables[name] = s[name]
    for name, st in tables.items():
        if "members/wh_singular_after" in st:
            out[f"{name}-spectra"] = fig7_spectra(st)
    if FIG7_SWEEP in s:
        out[FIG7_SWEEP] = fig7_hidden(s[FIG7_SWEEP])
        tables[FIG7_SWEEP] = s[FIG7_SWEEP]
    out[f"{FIG7}.md"] = fig7_summary(tables)
    return out


def fig7_spectra(st):
    """W_h's singular values, largest first, before and after training: mean over seeds with
    a 98% CI per condition (a diverged seed, NaN after, is left out of 'after')."""
    fig, ax = subplots(1, size=(5.6, 3.8))
    h0 = st.json_attr("hidden_sizes")[0]
    for h, c, name, m in _rnn_groups(st):
        if h != h0:
            continue
        before = st["members/wh_singular_before"][m][:, :h]
        after = st["members/wh_singular_after"][m][:, :h]
        k = np.arange(1, h + 1)
        if c == 0:  # the same seeds, hence the same initial W_h, for every condition
            ax[0].plot(k, np.nanmean(before, 0), color="grey", ls=":", lw=1.4,
                       label="before training (all conditions)")
        ok = np.isfinite(after).all(1)
        ci_band(ax[0], k, after[ok], f"{name} ({_rnn_coefs(st, m)}), after; "
                f"{int(ok.sum())} of {len(ok)} seeds finite", _rnn_color(name, c))
    ax[0].set(xlabel="index (largest first)", ylabel="singular value of W_h", yscale="log",
              title=f"W_h spectrum, hidden {h0}")
    ax[0].legend(fontsize=8)
    fig.suptitle(f"P2 Fig 7 — W_h before and after training ({_rnn_dataset(st)}): "
                 f"{_rnn_title(st)}")
    return fig


def fig7_panels(st):
    """Accuracy and loss curves, hidden-state norm through the delay, grid search."""
    x = st["curves/samples_seen"][0]
    fig, ax = subplots(4, ncols=2, size=(5.6, 3.8))
    h0 = st.json_attr("hidden_sizes")[0]
    for h, c, name, m in _rnn_groups(st):
        if h != h0:
            continue
        col = _rnn_color(name, c)
        lab = f"{name} ({_rnn_coefs(st, m)})"
        ci_band(ax[0], x, st["curves/val_accuracy"][m], lab, col)
        ci_band(ax[1], x, st["curves/val_loss"][m], lab, col)
        norms = st["curves/hidden_norm"][m]  # [runs, S, T+1]
        t = np.arange(norms.shape[2])
        ci_band(ax[2], t, norms[:, -1], f"{name}, after {x[-1]} sequences", col)
        if c == 0:  # every condition starts from the same seeds, hence the same weights
            ax[2].plot(t, norms[:, 0].mean(0), color="grey", ls=":", lw=1.4,
                       label="before training (all conditions)")
    ax[0].axhline(0.1, color="grey", lw=0.6, ls=":", label="chance")
    top = np.nanmax(st["curves/val_accuracy"])
    ax[0].set(xlabel="training sequences seen", ylabel="validation accuracy",
              ylim=(0, 1 if top > 0.5 else 0.5),
              title=f"accuracy at step T, hidden {h0}" + ("" if top > 0.5 else " (y up to 0.5)"))
    ax[1].set(xlabel="training sequences seen", ylabel="validation loss (cross-entropy)",
              title="validation loss")
    ax[2].axvspan(0.5, st.attrs["present"] + 0.5, color="grey", alpha=0.15, lw=0)
    ax[2].set(xlabel="time step t (grey: image shown)",
              ylabel="mean ||σ(z_t)|| (validation sequences)",
              title="hidden-state norm through the delay")
    for a in ax[:3]:
        a.legend(fontsize=8)
    if "grid/point_hidden" in st:
        _fig7_grid(ax[3], st)
    else:
        ax[3].set_visible(False)
    fig.suptitle(f"P2 Fig 7 — RNN delayed memory ({_rnn_dataset(st)}), BPTT vs BPTT+Oja: "
                 f"{_rnn_title(st)}")
    return fig


def fig7_hidden(st):
    """Hidden-size comparison: final accuracy vs hidden size, and the curves per size."""
    sizes = st.json_attr("hidden_sizes")
    names = st.json_attr("condition_names")
    fig, ax = subplots(1 + len(sizes), ncols=min(3, 1 + len(sizes)), size=(4.6, 3.5))
    x = st["curves/samples_seen"][0]
    top = 1.0 if np.nanmax(st["curves/val_accuracy"]) > 0.5 else 0.5
    note = "" if top == 1.0 else " (y up to 0.5)"
    for c, name in enumerate(names):
        col = _rnn_color(name, c)
        mean, lo, hi = [], [], []
        for h in sizes:
            m = (st["members/hidden"] == h) & (st["members/condition"] == c)
            a, b, d = bootstrap_ci(st["curves/val_accuracy"][m, -1][:, None])
            mean.append(a[0])
            lo.append(b[0])
            hi.append(d[0])
        mean, lo, hi = map(np.array, (mean, lo, hi))
        ax[0].errorbar(sizes, mean, yerr=[mean - lo, hi - mean], color=col, marker="o",
                       capsize=3, label=name)
    ax[0].axhline(0.1, color="grey", lw=0.6, ls=":", label="chance")
    ax[0].set_xscale("log")
    ax[0].set_xticks(sizes, [str(h) for h in sizes])
    ax[0].minorticks_off()
    ax[0].set(xlabel="hidden size n", ylabel=f"val. accuracy after {x[-1]} sequences",
              ylim=(0, top), title="final accuracy vs hidden size (98% CI)" + note)
    ax[0].legend(fontsize=8)
    for i, h in enumerate(sizes):
        for hh, c, name, m in _rnn_groups(st):
            if hh == h:
                ci_band(ax[1 + i], x, st["curves/val_accuracy"][m],
                        f"{name} ({_rnn_coefs(st, m)})", _rnn_color(name, c))
        ax[1 + i].axhline(0.1, color="grey", lw=0.6, ls=":")
        ax[1 + i].set(xlabel="training sequences seen", ylabel="validation accuracy",
                      ylim=(0, top), title=f"hidden {h}" + note)
        ax[1 + i].legend(fontsize=7)
    fig.suptitle(f"P2 Fig 7 (hidden-size sweep, {_rnn_dataset(st)}) — BPTT vs BPTT+Oja, "
                 f"{_rnn_title(st)}; coefficients grid-searched per hidden size")
    return fig
