"""Figures of your own stores (``plast plot``): meta-training or online stores from any
recipe, several side by side, members grouped by what tells them apart (condition, hidden
size, layer assignment, population-grid point). Only what the stores hold is drawn; the
papers' own figures are :func:`plastcli.figures.draw_paper`'s.

Meta-training stores (meta-train, ablate-layers): meta-accuracy and meta-loss per episode
(moving average, mean ± sd over seeds), and each store's coefficients θ. Online stores
(baseline, init-study, rnn-memory): validation accuracy and loss against samples seen (mean
over runs with its 98% bootstrap CI).
"""

from __future__ import annotations

import numpy as np

from plastcli.core.vocabulary import grid_dataset_name
from plastcli.errors import PlastError
from plastcli.figures.style import (
    SMOOTH,
    ci_band,
    diverged_at,
    legend_below,
    mean_sd_band,
    meta_accuracy_label,
    subplots,
    until_diverged,
)
from plastcli.results.store import StoreData
from plastcli.results.summary import member_labels

LINESTYLES = ("-", "--", ":")  # series 0-9, 10-19, 20-29 (the colours repeat every ten)
MAX_THETA_PANELS = 6  # more stores than this: their θ panels are left out (said in the title)


def kind(st: StoreData) -> str:
    """'meta' (episodes/meta_accuracy), 'online' (curves/val_accuracy); else one line."""
    if "episodes/meta_accuracy" in st.arrays:
        return "meta"
    if "curves/val_accuracy" in st.arrays:
        return "online"
    if not st.complete:  # online stores write their curves when the run ends
        raise PlastError(f"{st.path}: status '{st.status}', and this kind of store "
                         f"('{st.attrs.get('plast_experiment', '?')}') has no curves until "
                         "its run completes")
    raise PlastError(f"{st.path}: no meta-accuracy or validation-accuracy curves to plot "
                     f"(a '{st.attrs.get('plast_experiment', '?')}' store)")


def member_groups(st: StoreData) -> dict[str, np.ndarray]:
    """Label -> members ``[P]`` (bool) of each group: members alike in condition, hidden
    size, layer assignment and population-grid values; one group '' if nothing differs."""
    labels = {n: [v if n == "condition" else f"{n} {v}" for v in values]
              for n, values in member_labels(st).items()}
    for key in st.json_attr("grid_keys", []):
        labels[key] = [f"{key}={v:.3g}" for v in st[f"members/{grid_dataset_name(key)}"]]
    P = next(iter(st[k] for k in ("episodes/meta_accuracy", "curves/val_accuracy")
                  if k in st.arrays)).shape[0]
    if not labels:
        return {"": np.ones(P, bool)}
    rows = list(zip(*labels.values(), strict=True))
    return {", ".join(key): np.array([r == key for r in rows]) for key in dict.fromkeys(rows)}


def _series(stores: dict[str, StoreData]):
    """(label, store, members) for every group of every store, labelled 'store: group'."""
    for name, st in stores.items():
        status = "" if st.complete else f" [{st.status}: its last checkpoint]"
        for group, rows in member_groups(st).items():
            label = f"{name}: {group}" if group and len(stores) > 1 else (group or name)
            yield label + status, st, rows


def draw(stores: dict[str, StoreData]):
    """One figure of ``stores`` (name -> store), all of one :func:`kind`."""
    kinds = {name: kind(st) for name, st in stores.items()}
    if len(set(kinds.values())) > 1:
        raise PlastError("plot draws stores of one kind together; got "
                         + ", ".join(f"{n} ({k})" for n, k in kinds.items())
                         + "; plot them in separate calls")
    return (_meta if next(iter(kinds.values())) == "meta" else _online)(stores)


def _meta(stores: dict[str, StoreData]):
    series = list(_series(stores))
    theta_panels = len(stores) <= MAX_THETA_PANELS
    fig, ax = subplots(2 + (len(stores) if theta_panels else 0), ncols=2, size=(5.0, 3.6))
    for i, (label, st, rows) in enumerate(series):
        acc = st["episodes/meta_accuracy"][rows]
        x = np.arange(1, acc.shape[1] + 1)
        n_div = int((diverged_at(st)[rows] >= 0).sum())
        seeds = f"{int(rows.sum())} seeds" + (f", {n_div} diverged" if n_div else "")
        mean_sd_band(ax[0], x, acc, f"{label} ({seeds})", f"C{i % 10}", smooth=SMOOTH)
        mean_sd_band(ax[1], x, st["episodes/query_ce"][rows], label, f"C{i % 10}",
                     smooth=SMOOTH)
        for a in ax[:2]:  # beyond ten series the colours repeat: dashed, then dotted
            a.lines[-1].set_linestyle(LINESTYLES[i // 10 % len(LINESTYLES)])
    ax[0].set(xlabel="episode", ylabel=meta_accuracy_label(*stores.values()), ylim=(0, 1),
              title=f"meta-accuracy (moving avg. {SMOOTH}; mean ± sd, seeds)")
    ax[1].set(xlabel="episode", ylabel="query cross-entropy",
              title=f"meta-loss without penalty (moving avg. {SMOOTH})")
    ax[1].set_ylim(bottom=0)
    legend_below(ax[0], 2 if len(series) > 3 else 1)
    for k, (name, st) in enumerate(stores.items() if theta_panels else ()):
        a = ax[2 + k]
        theta = until_diverged(st, st["episodes/theta"])  # [P, E, R]
        for r, term in enumerate(st.json_attr("term_names", [])):
            mean_sd_band(a, np.arange(1, theta.shape[1] + 1), theta[:, :, r], term,
                         f"C{r % 10}")
            if np.isfinite(a.lines[-1].get_ydata()).sum() <= 2:  # too short for a line
                a.lines[-1].set_marker("o")
        a.set_xlim(0, theta.shape[1] + 1)
        a.axhline(0, color="k", lw=0.6)
        a.set(xlabel="episode", ylabel="coefficient θ (ΔW = +θ F)",
              title=f"coefficients: {name} (mean ± sd over all its members)"
                    + ("\na diverged member's θ ends where it diverged"
                       if (diverged_at(st) >= 0).any() else ""))
        legend_below(a, 2 if theta.shape[2] > 3 else 1)
    left_out = "" if theta_panels else f" (θ panels left out: more than {MAX_THETA_PANELS} stores)"
    fig.suptitle(f"meta-training: {', '.join(stores)}{left_out}")
    return fig


def _online(stores: dict[str, StoreData]):
    series = list(_series(stores))
    fig, ax = subplots(2, ncols=2, size=(5.0, 3.6))
    for i, (label, st, rows) in enumerate(series):
        x = np.asarray(st["curves/samples_seen"])
        x = x[0] if x.ndim > 1 else x
        n = int(rows.sum())
        ci_band(ax[0], x, 100 * st["curves/val_accuracy"][rows], f"{label} ({n} runs)",
                f"C{i % 10}")
        ax[0].lines[-1].set_linestyle(LINESTYLES[i // 10 % len(LINESTYLES)])
        if "curves/val_loss" in st.arrays:
            ci_band(ax[1], x, st["curves/val_loss"][rows], label, f"C{i % 10}")
            ax[1].lines[-1].set_linestyle(LINESTYLES[i // 10 % len(LINESTYLES)])
    ax[0].set(xlabel="training samples seen", ylabel="validation accuracy (%)",
              ylim=(0, 100), title="validation accuracy: mean over runs, 98% bootstrap CI")
    ax[1].set(xlabel="training samples seen", ylabel="validation loss (cross-entropy)",
              title="validation loss: mean over runs, 98% bootstrap CI")
    legend_below(ax[0], 2 if len(series) > 3 else 1)
    fig.suptitle(f"online learning: {', '.join(stores)}")
    return fig
