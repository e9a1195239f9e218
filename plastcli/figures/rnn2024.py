"""P2 Fig 7: the recurrent delayed-memory task, BPTT vs BPTT+Oja (plast rnn-memory)."""

import numpy as np
from matplotlib.ticker import MaxNLocator

from plastcli.figures import register
from plastcli.figures.paper2024 import paired_verdict
from plastcli.figures.style import (
    ci_band,
    color,
    legend_below,
    subplots,
)
from plastcli.results.statistics import bootstrap_ci

FIG7, FIG7_SWEEP = "fig7-rnn-memory", "fig7-rnn-hidden-sweep"
FIG7_DELAYS = ("fig7-rnn-delay10", "fig7-rnn-delay20")  # the task with T = 10, 20 (not in P2)
# issue 11's study blocks: the base (tanh, W_h orthogonal) and one factor changed each
FIG7_STUDY = ("fig7-rnn-tanh-orthogonal", "fig7-rnn-tanh-xavier",
              "fig7-rnn-softplus-orthogonal", "fig7-rnn-tanh-xavier-h25",
              "fig7-rnn-tanh-xavier-oja-sigma", "fig7-rnn-softplus-beta1",
              "fig7-rnn-tanh-xavier-epoch",
              "fig7-rnn-tanh-xavier-fashion")  # the chosen recipe on Fashion-MNIST


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

    recipe = yaml.safe_load(st.attrs["recipe_yaml"])
    net = recipe.get("network", {})
    sigma = "tanh" if net.get("sigma") == "tanh" else f"softplus β={net.get('beta', 10):g}"
    wh = net.get("init_recurrent", "same")
    wh = f"W_h {net.get('init', 'xavier') if wh == 'same' else wh}" + \
        (f" × {net['gain']:g}" if net.get("gain", 1.0) != 1.0 else "")
    seen = int(st["curves/samples_seen"][0][-1])  # what tells variants of one setting apart
    oja = ", Oja on σ(z_t)" if recipe.get("oja_pre") == "sigma" else ""
    return (f"T = {st.attrs['T']}, image for {st.attrs['present']} steps, σ = {sigma}, {wh}, "
            f"{seen:,} sequences{oja}, "
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
    chosen = {int(pc[row]): t2[row] for row in st["grid/best_row"] if ph[row] == h0}
    series = []  # (θ1, accuracy, label, condition, colour)
    spare = iter(c for c in (f"C{k}" for k in (1, 2, 4, 5, 6, 7, 8, 9))
                 if c not in {_rnn_color(n, i) for i, n in enumerate(names)})
    for c, cname in enumerate(names):
        for v in np.unique(t2[(ph == h0) & (pc == c)]):
            m = (ph == h0) & (pc == c) & (t2 == v)
            order = np.argsort(t1[m])
            # the chosen θ2 in the colour the other panels give the condition
            col = _rnn_color(cname, c) if chosen.get(c) == v else next(spare)
            series.append((t1[m][order], acc[m][order], f"{cname}, θ2={v:.3g}", c, col))
    # series that coincide (every Oja setting at chance, say) stay visible: each has its own
    # marker, hollow, and a smaller marker and thinner line than the one drawn before it
    for k, (x, y, label, c, col) in enumerate(series):
        same = next((lab for x2, y2, lab, *_ in series[:k] if np.array_equal(x, x2)
                     and np.allclose(y, y2, rtol=0, atol=5e-4, equal_nan=True)), None)
        ax.plot(x, y, marker="osD^v<>p"[k % 8], ms=max(3.5, 10 - 2 * k), mfc="none", mew=1.4,
                lw=max(0.8, 2.6 - 0.6 * k), color=col, ls="-" if c else "--", zorder=2 + k,
                label=label + (f" (on {same})" if same else ""))
    for row in st["grid/best_row"]:
        if ph[row] == h0:
            ax.plot(t1[row], acc[row], marker="*", ms=14, color="k", ls="none", zorder=20)
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
            ax[0].plot(k, np.nanmean(before, 0), color="k", ls=":", lw=1.6, zorder=4,
                       label="before training (all conditions)")  # on top: it may coincide
        ok = np.isfinite(after).all(1)
        ci_band(ax[0], k, after[ok], f"{name} ({_rnn_coefs(st, m)}), after; "
                f"{int(ok.sum())} of {len(ok)} seeds finite", _rnn_color(name, c))
    ax[0].set(xlabel="index (largest first)", ylabel="singular value of W_h", yscale="log",
              title=f"W_h spectrum, hidden {h0}")
    ax[0].legend(fontsize=8)
    fig.suptitle(f"P2 Fig 7 — W_h before and after training ({_rnn_dataset(st)}):\n"
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
        # a diverged seed (W_h non-finite) has no loss or state norm: the bands are over the
        # finite seeds, and say how many (its accuracy, a constant guess, stays in panel a)
        ok = np.isfinite(st["members/wh_singular_after"][m]).all(1) \
            if "members/wh_singular_after" in st else np.ones(int(m.sum()), bool)
        note = "" if ok.all() else f"; {int(ok.sum())} of {ok.size} seeds finite"
        norms = st["curves/hidden_norm"][m]  # [runs, S, T+1]
        t = np.arange(norms.shape[2])
        if ok.any():
            ci_band(ax[1], x, st["curves/val_loss"][m][ok], lab + note, col)
            ci_band(ax[2], t, norms[ok, -1], f"{name}, after {x[-1]} sequences{note}", col)
        if c == 0:  # every condition starts from the same seeds, hence the same weights
            ax[2].plot(t, norms[:, 0].mean(0), color="k", ls=":", lw=1.6, zorder=4,
                       label="before training (all conditions)")  # on top: it may coincide
    ax[0].axhline(0.1, color="grey", lw=0.6, ls=":", label="chance")
    top = np.nanmax(st["curves/val_accuracy"])
    ax[0].set(xlabel="training sequences seen", ylabel="validation accuracy",
              ylim=(0, 1 if top > 0.5 else 0.5),
              title=f"accuracy at step T, hidden {h0}" + ("" if top > 0.5 else " (y up to 0.5)"))
    ax[1].axhline(np.log(10), color="grey", lw=0.6, ls=":", label="chance (ln 10)")
    ax[1].set(xlabel="training sequences seen", ylabel="validation loss (cross-entropy)",
              title="validation loss")
    ax[2].axvspan(0.5, st.attrs["present"] + 0.5, color="grey", alpha=0.15, lw=0)
    ax[2].set(xlabel="time step t (grey: image shown)",
              ylabel="mean ||σ(z_t)|| (validation sequences)",
              title="hidden-state norm through the delay")
    # every legend below its panel: the bands fill the panels (a wide BPTT band sat under
    # legends drawn inside them)
    for a in ax[:3]:
        legend_below(a, ncol=1)
    ax[2].xaxis.set_major_locator(MaxNLocator(integer=True))
    if "grid/point_hidden" in st:
        _fig7_grid(ax[3], st)
    else:
        ax[3].axis("off")
        ax[3].text(0.5, 0.5, "no grid search in this recipe:\nits coefficients are fixed\n"
                   "(see the legend)", ha="center", va="center", transform=ax[3].transAxes,
                   color="grey")
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
        # a large hollow marker under a small filled one: conditions that coincide stay visible
        ax[0].errorbar(sizes, mean, yerr=[mean - lo, hi - mean], color=col, marker="os"[c % 2],
                       ms=10 if c == 0 else 5, mfc="none" if c == 0 else col, mew=1.5,
                       capsize=3, label=name, zorder=2 + c)
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
