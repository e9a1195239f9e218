"""The Fig 7 study's phase diagram (issue 11): final accuracy on the delayed-memory task
against the gain on W_h and against Oja's coefficient θ₂, for BPTT and BPTT+Oja, with 98%
bootstrap CIs over seeds. Reads ``fig7-rnn-phase-gain`` (g > 1; the g = 1 column is the
chosen recipe's store ``fig7-rnn-tanh-xavier``) and ``fig7-rnn-phase-oja``; and the cross of
the two (``fig7-rnn-phase-cross``, with ``fig7-rnn-phase-oja`` as its g = 1 row) as a map."""

from __future__ import annotations

import numpy as np
import yaml

from plastcli.figures import register
from plastcli.figures.rnn2024 import ABOVE_CHANCE, _rnn_color, _rnn_title
from plastcli.figures.style import subplots
from plastcli.results.statistics import bootstrap_ci

BASE, GAIN, OJA = "fig7-rnn-tanh-xavier", "fig7-rnn-phase-gain", "fig7-rnn-phase-oja"
CROSS = "fig7-rnn-phase-cross"  # gain x theta_2 at theta_1 = 0.001 (g = 1 is OJA)
RULES = ("BPTT", "BPTT+Oja")


def rule_of(name: str) -> str:
    """'BPTT+Oja g=2' -> 'BPTT+Oja'; 'BPTT g=2' -> 'BPTT'."""
    return name.split()[0]


def member_gains(st) -> np.ndarray:
    """``[P]`` W_h gain per member: stored since conditions may set it, else the recipe's."""
    if "members/gain" in st:
        return np.asarray(st["members/gain"], dtype=float)
    gain = yaml.safe_load(st.attrs["recipe_yaml"]).get("network", {}).get("gain", 1.0)
    return np.full(st["members/seed"].shape, float(gain))


def condition_rows(st) -> list[dict]:
    """One row per condition of a store (its first hidden size): the condition's name,
    rule, W_h gain, chosen θs, seeds ``[S]``, final accuracies ``[S]`` and diverged seeds."""
    names = st.json_attr("condition_names")
    gains, cond = member_gains(st), st["members/condition"]
    first = st["members/hidden"] == st.json_attr("hidden_sizes")[0]
    rows = []
    for c, name in enumerate(names):
        m = (cond == c) & first
        rows.append({"name": name, "rule": rule_of(name), "gain": float(gains[m][0]),
                     "seeds": st["members/seed"][m], "acc": st["members/final_val_accuracy"][m],
                     "theta_bptt": float(st["members/theta_bptt"][m][0]),
                     "theta_oja": float(st["members/theta_oja"][m][0]),
                     "diverged": diverged(st, m),
                     # at the end of training: ‖σ(z_T)‖ at the readout step, W_h's top
                     # singular value; medians over the seeds where they are finite
                     "state_norm_T": _finite_median(st["curves/hidden_norm"][m, -1, -1]),
                     "top_sv": _finite_median(st["members/wh_singular_after"][m][:, 0])})
    return rows


def _finite_median(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x)]
    return float(np.median(x)) if x.size else float("nan")


def gain_rows(stores: list) -> list[dict]:
    """One row per (rule, gain) of the gain block and the base store."""
    rows = [r for st in stores for r in condition_rows(st)]
    return sorted(rows, key=lambda r: (r["rule"], r["gain"]))


def oja_rows(st) -> list[dict]:
    """One row per θ₂ (θ₁ fixed)."""
    return sorted(condition_rows(st), key=lambda r: r["theta_oja"])


def diverged(st, mask: np.ndarray) -> int:
    """Members of ``mask`` whose W_h ended non-finite (their stored spectrum is NaN)."""
    return int((~np.isfinite(st["members/wh_singular_after"][mask]).all(1)).sum())


def _ci(acc: np.ndarray) -> tuple[float, float, float]:
    m, lo, hi = bootstrap_ci(acc[:, None], level=0.98)
    return float(m[0]), float(lo[0]), float(hi[0])


def _errorbar(ax, x, rows, label, c, **kw):
    m, lo, hi = np.array([_ci(r["acc"]) for r in rows]).T
    ax.errorbar(x, m, yerr=[m - lo, hi - m], color=c, label=label, capsize=3, marker="o",
                lw=1.4, **kw)


@register("2024", "fig7-rnn-phase", stores=(GAIN, OJA), optional=(BASE,))
def phase(s):
    fig, ax = subplots(2, ncols=2, size=(5.2, 3.8))
    rows = gain_rows([s[n] for n in (BASE, GAIN) if n in s])
    for i, rule in enumerate(RULES):
        rr = [r for r in rows if r["rule"] == rule]
        _errorbar(ax[0], [r["gain"] for r in rr], rr, f"{rule} (own grid search per gain)",
                  _rnn_color(rule, i))
    ax[0].set(xlabel="gain g on W_h (xavier × g)", ylabel="final validation accuracy",
              title="(a) against the gain on W_h", ylim=(0, 1))
    orow = oja_rows(s[OJA])
    zero = [r for r in orow if r["theta_oja"] == 0]
    pos = [r for r in orow if r["theta_oja"] > 0]
    _errorbar(ax[1], [r["theta_oja"] for r in pos], pos, "BPTT+Oja", _rnn_color("BPTT+Oja", 1))
    if zero:
        m, lo, hi = _ci(zero[0]["acc"])
        ax[1].axhline(m, color=_rnn_color("BPTT", 0), ls="--", label="BPTT (θ₂ = 0)")
        ax[1].axhspan(lo, hi, color=_rnn_color("BPTT", 0), alpha=0.15, lw=0)
    ax[1].set(xscale="log", xlabel="Oja coefficient θ₂ on W_h",
              ylabel="final validation accuracy", ylim=(0, 1),
              title=f"(b) against θ₂ at θ₁ = {orow[0]['theta_bptt']:g}")
    for a in ax:
        a.axhline(0.1, color="grey", lw=0.6, ls=":", label="chance (0.1)")
        a.legend(fontsize=8, loc="upper right")  # both panels fall to chance on the right
    fig.suptitle(f"P2 Fig 7 study — phase diagram: {_rnn_title(s[OJA])}")
    return {"fig7-rnn-phase": fig, "fig7-rnn-phase.md": phase_markdown(rows, orow)}


def phase_markdown(rows: list[dict], orow: list[dict]) -> str:
    lines = ["Fig 7 study — final validation accuracy on the delayed-memory task (T = 50), "
             "mean over 10 seeds with 98% bootstrap CI; \"above chance\": CI low > "
             f"{ABOVE_CHANCE}; diverged: W_h non-finite at the end (such a seed scores the "
             "constant guess of a non-finite network).", "",
             "Against the gain on W_h (each rule with its own grid search at each gain; "
             "g = 1: `fig7-rnn-tanh-xavier`):", "",
             "| rule | gain | θ1 | θ2 | final val. accuracy [98% CI] | above chance | "
             "diverged seeds |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        m, lo, hi = _ci(r["acc"])
        lines.append(f"| {r['rule']} | {r['gain']:g} | {r['theta_bptt']:g} | "
                     f"{r['theta_oja']:g} | {m:.3f} [{lo:.3f}, {hi:.3f}] | "
                     f"{'yes' if lo > ABOVE_CHANCE else 'no'} | {r['diverged']} |")
    lines += ["", f"Against θ₂ at θ₁ = {orow[0]['theta_bptt']:g} (θ₂ = 0: plain BPTT):", "",
              "| θ2 | final val. accuracy [98% CI] | above chance | diverged seeds |",
              "|---|---|---|---|"]
    for r in orow:
        m, lo, hi = _ci(r["acc"])
        lines.append(f"| {r['theta_oja']:g} | {m:.3f} [{lo:.3f}, {hi:.3f}] | "
                     f"{'yes' if lo > ABOVE_CHANCE else 'no'} | {r['diverged']} |")
    return "\n".join(lines) + "\n"


def cross_cells(stores: list) -> dict[tuple[float, float], dict]:
    """(gain, θ₂) -> its condition row, over the θ₂ block (g = 1) and the cross block."""
    return {(r["gain"], r["theta_oja"]): r for st in stores for r in condition_rows(st)}


@register("2024", "fig7-rnn-phase-cross", stores=(CROSS,), optional=(OJA,))
def phase_cross(s):
    cells = cross_cells([s[n] for n in (OJA, CROSS) if n in s])
    t2s = sorted({t for _, t in cells if t in {t for g, t in cells if g != 1.0}})
    gains = sorted({g for g, _ in cells})
    fig, ax = subplots(1, size=(8.0, 1.4 + 0.8 * len(gains)))
    grid = np.full((len(gains), len(t2s)), np.nan)
    for (g, t), r in cells.items():
        if t in t2s:
            grid[gains.index(g), t2s.index(t)] = _ci(r["acc"])[0]
    ax[0].grid(False)
    im = ax[0].imshow(grid, cmap="viridis", vmin=0.1, vmax=0.9, aspect="auto", origin="lower")
    for (g, t), r in cells.items():
        if t not in t2s:
            continue
        m, lo, hi = _ci(r["acc"])
        text = f"{m:.2f}\n[{lo:.2f}, {hi:.2f}]" + \
            (f"\n{r['diverged']}/{len(r['acc'])} div." if r["diverged"] else "")
        ax[0].text(t2s.index(t), gains.index(g), text, ha="center", va="center", fontsize=7.5,
                   color="white" if m < 0.5 else "black")
    ax[0].set_xticks(range(len(t2s)), ["0 (BPTT)" if t == 0 else f"{t:g}" for t in t2s])
    ax[0].set_yticks(range(len(gains)), [f"{g:g}" for g in gains])
    theta1 = next(iter(cells.values()))["theta_bptt"]
    ax[0].set(xlabel=f"Oja coefficient θ₂ on W_h (θ₁ = {theta1:g} throughout)",
              ylabel="gain g on W_h (xavier × g)",
              title="mean [98% CI] over seeds; div. = seeds with W_h non-finite")
    fig.colorbar(im, ax=ax[0], label="mean final validation accuracy (chance 0.1)")
    fig.suptitle(f"P2 Fig 7 study — gain × θ₂\n{_rnn_title(s[CROSS])}")
    return {"fig7-rnn-phase-cross": fig, "fig7-rnn-phase-cross.md": cross_markdown(cells, t2s)}


def cross_markdown(cells: dict, t2s: list[float]) -> str:
    lines = ["Fig 7 study — gain on W_h × Oja's θ₂ (θ₁ fixed; g = 1: `fig7-rnn-phase-oja`): "
             "final validation accuracy, mean over seeds with 98% bootstrap CI, and the "
             "seeds whose W_h diverged.", "",
             "| gain | " + " | ".join("θ2 = 0 (BPTT)" if t == 0 else f"θ2 = {t:g}" for t in t2s)
             + " |", "|---|" + "---|" * len(t2s)]
    for g in sorted({g for g, _ in cells}):
        row = []
        for t in t2s:
            r = cells.get((g, t))
            if r is None:
                row.append("—")
                continue
            m, lo, hi = _ci(r["acc"])
            row.append(f"{m:.3f} [{lo:.3f}, {hi:.3f}]" +
                       (f", {r['diverged']} div." if r["diverged"] else ""))
        lines.append(f"| {g:g} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"
