"""The Fig 7 study at a glance (issue 11): one factor changed at a time around the chosen
recipe (``fig7-rnn-tanh-xavier``), BPTT against BPTT+Oja in each setting, with 98% bootstrap
CIs over seeds and the paired difference (same seed: same initial weights and stream)."""

from __future__ import annotations

import numpy as np

from plastcli.figures import register
from plastcli.figures.online import x_samples
from plastcli.figures.paper2024 import paired_verdict
from plastcli.figures.rnn2024 import ABOVE_CHANCE, _rnn_color
from plastcli.figures.rnn_phase import BASE, GAIN, _ci, condition_rows
from plastcli.figures.style import subplots

INIT = "fig7-rnn-phase-init"

# (factor, setting, store, BPTT condition, BPTT+Oja condition), top to bottom in the figure
FACTORS = (
    ("base", "Fig 7 recipe (tanh, xavier, hidden 100, {samples} sequences)", BASE, "BPTT",
     "BPTT+Oja"),
    ("W_h", "N(0, 1/n)", INIT, "BPTT normal", "BPTT+Oja normal"),
    ("W_h", "orthogonal", "fig7-rnn-tanh-orthogonal", "BPTT", "BPTT+Oja"),
    ("W_h", "orthogonal × 1.5", INIT, "BPTT orthogonal g=1.5", "BPTT+Oja orthogonal g=1.5"),
    ("W_h", "orthogonal × 2", INIT, "BPTT orthogonal g=2", "BPTT+Oja orthogonal g=2"),
    ("W_h", "identity", INIT, "BPTT identity", "BPTT+Oja identity"),
    ("W_h", "xavier × 1.5", GAIN, "BPTT g=1.5", "BPTT+Oja g=1.5"),
    ("W_h", "xavier × 2", GAIN, "BPTT g=2", "BPTT+Oja g=2"),
    ("W_h", "xavier × 3", GAIN, "BPTT g=3", "BPTT+Oja g=3"),
    ("σ", "softplus β = 1", "fig7-rnn-softplus-beta1", "BPTT", "BPTT+Oja"),
    ("σ", "softplus β = 10, W_h orthogonal", "fig7-rnn-softplus-orthogonal", "BPTT",
     "BPTT+Oja"),
    ("oja_pre", "σ(z_t) instead of z_t", "fig7-rnn-tanh-xavier-oja-sigma", "BPTT",
     "BPTT+Oja"),
    ("hidden", "25", "fig7-rnn-tanh-xavier-h25", "BPTT", "BPTT+Oja"),
    ("budget", "{samples} sequences (one epoch)", "fig7-rnn-tanh-xavier-epoch", "BPTT",
     "BPTT+Oja"),
    ("data", "Fashion-MNIST", "fig7-rnn-tanh-xavier-fashion", "BPTT", "BPTT+Oja"),
)
STORES = tuple(dict.fromkeys(f[2] for f in FACTORS if f[2] != BASE))


def factor_rows(s: dict) -> list[dict]:
    """One row per setting of :data:`FACTORS` whose store is present: both rules' condition
    rows and the paired Oja − BPTT difference over their common seeds."""
    rows = []
    for factor, setting, store, bp_name, oja_name in FACTORS:
        if store not in s:
            continue
        by_name = {r["name"]: r for r in condition_rows(s[store])}
        bp, oja = by_name[bp_name], by_name[oja_name]
        common = sorted(set(bp["seeds"].tolist()) & set(oja["seeds"].tolist()))

        def at(r, common=common):
            return np.array([r["acc"][r["seeds"].tolist().index(k)] for k in common])

        # the store's own sequence count, never the full-scale one (smoke runs are shorter)
        setting = setting.format(samples=f"{int(x_samples(s[store])[-1]):,}")
        rows.append({"factor": factor, "setting": setting, "store": store, "bp": bp,
                     "oja": oja, "diff": paired_verdict(at(oja), at(bp))})
    return rows


@register("2024", "fig7-rnn-factors", stores=(BASE,), optional=STORES)
def factors(s):
    rows = factor_rows(s)
    fig, ax = subplots(1, size=(9.0, 1.8 + 0.42 * len(rows)))
    y = np.arange(len(rows))[::-1]
    for k, (rule, off) in enumerate((("bp", 0.15), ("oja", -0.15))):
        m, lo, hi = np.array([_ci(r[rule]["acc"]) for r in rows]).T
        label = "BPTT" if rule == "bp" else "BPTT+Oja"
        ax[0].errorbar(m, y + off, xerr=[m - lo, hi - m], fmt="o", capsize=3, ms=5,
                       color=_rnn_color(label, k), label=f"{label} (own grid search)")
    for yi, r in zip(y, rows, strict=True):
        mark = {"exceeds": "Oja better", "falls short of": "Oja worse",
                "matches": "no difference"}[r["diff"][3]]
        ax[0].text(1.31, yi, f"{r['diff'][0]:+.2f}  {mark}", va="center", ha="right",
                   fontsize=8)
    ax[0].text(1.31, len(rows) - 0.55, "Oja − BPTT, paired", fontsize=8.5, ha="right",
               weight="bold")
    ax[0].axvline(1.0, color="black", lw=0.8)
    ax[0].set_yticks(y, [f"{r['factor']}: {r['setting']}" for r in rows], fontsize=8.5)
    ax[0].axvline(0.1, color="grey", lw=0.8, ls=":", label="chance (0.1)")
    ax[0].set_xticks(np.linspace(0, 1, 6))
    seeds = sorted({len(r[k]["acc"]) for r in rows for k in ("bp", "oja")})
    n_seeds = str(seeds[0]) if len(seeds) == 1 else f"{seeds[0]}–{seeds[-1]}"
    ax[0].set(xlim=(0, 1.32), ylim=(-0.6, len(rows) - 0.2),
              xlabel=f"final validation accuracy at T = 50 (mean, 98% CI over {n_seeds} "
                     "seeds)")
    ax[0].legend(fontsize=8.5, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3)
    fig.suptitle("P2 Fig 7 study — BPTT vs BPTT+Oja on the delayed-memory task\n"
                 "one factor changed at a time around the Fig 7 recipe")
    return {"fig7-rnn-factors": fig, "fig7-rnn-factors.md": factors_markdown(rows)}


def factors_markdown(rows: list[dict]) -> str:
    lines = ["Fig 7 study — one factor changed at a time around the Fig 7 recipe "
             "(`fig7-rnn-tanh-xavier`: T = 50, image for 5 steps, σ = tanh, W_h xavier, "
             "hidden 100, 20,000 sequences). Final validation accuracy, mean over seeds "
             "with 98% bootstrap CI; the paired difference over common seeds decides "
             f"\"exceeds\"; \"above chance\": CI low > {ABOVE_CHANCE}; diverged: W_h "
             "non-finite at the end.", "",
             "‖σ(z_T)‖: the state's norm at the readout step after training, and W_h's top "
             "singular value after training (medians over finite seeds; before training "
             "xavier's is about 2).", "",
             "| factor | setting | store | BPTT (θ1) | BPTT+Oja (θ1, θ2) | Oja − BPTT "
             "[98% CI] | BPTT+Oja | diverged (BPTT, Oja) | ‖σ(z_T)‖ (BPTT, Oja) | "
             "top s.v. of W_h (BPTT, Oja) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        bp, oja, (d, dlo, dhi, verdict) = r["bp"], r["oja"], r["diff"]
        cell = []
        for c in (bp, oja):
            m, lo, hi = _ci(c["acc"])
            cell.append(f"{m:.3f} [{lo:.3f}, {hi:.3f}]")
        above = "above chance" if _ci(oja["acc"])[1] > ABOVE_CHANCE else "at chance"
        lines.append(f"| {r['factor']} | {r['setting']} | `{r['store']}` | {cell[0]} "
                     f"({bp['theta_bptt']:g}) | {cell[1]} ({oja['theta_bptt']:g}, "
                     f"{oja['theta_oja']:g}) | {d:+.3f} [{dlo:+.3f}, {dhi:+.3f}] | "
                     f"{verdict} BPTT, {above} | {bp['diverged']}, {oja['diverged']} | "
                     f"{bp['state_norm_T']:.2f}, {oja['state_norm_T']:.2f} | "
                     f"{bp['top_sv']:.3g}, {oja['top_sv']:.3g} |")
    return "\n".join(lines) + "\n"
