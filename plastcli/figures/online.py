"""Drawing functions for the online-learning stores of ``plast baseline`` / ``init-study``
(P1 Fig 1; P2 Figs 1-6, S1). ``paper2022_online.py`` and ``paper2024.py`` register thin wrappers.

Every function reads only stores: curves ``[P, S, ...]``, their per-condition mean and 98%
bootstrap CI in ``/stats``, and the end-of-run ``/analysis`` arrays.
"""

from __future__ import annotations

import numpy as np

from plastcli.errors import PlastError
from plastcli.figures.style import ci_band, color, subplots
from plastcli.figures.style import legend_below as put_legend_below  # a flag is legend_below


def names(st) -> list[str]:
    return list(st.json_attr("condition_names"))


def cond(st, name: str) -> int:
    return names(st).index(name)


def x_samples(st) -> np.ndarray:
    return st["curves/samples_seen"][0]


def base_color(name: str, i: int = 0) -> str:
    """'BP (naive)' -> the colour of 'BP'."""
    return color(name.split(" (")[0], i)


def members_of(st, name: str) -> np.ndarray:
    return st["members/condition"] == cond(st, name)


def coefficient_text(st, name: str) -> str:
    theta = st["members/theta"][members_of(st, name)][0]
    terms = st.json_attr("condition_terms")[cond(st, name)]
    pool = st.json_attr("term_names")
    short = {"pseudo_grad": "θ_pg", "oja": "θ_oja"}
    return ", ".join(f"{short.get(t, t)}={theta[pool.index(t)]:.3g}" for t in terms)


def stat_band(ax, st, metric: str, name: str, label: str | None = None, c=None, ls="-",
              scale: float = 1.0, index=()) -> None:
    """Mean over runs with the stored 98% bootstrap band of ``/stats/<metric>``."""
    i = cond(st, name)
    sel = (i, slice(None), *index)
    m, lo, hi = (st[f"stats/{metric}_{k}"][sel] * scale for k in ("mean", "lo", "hi"))
    c = c or base_color(name, i)
    ax.plot(x_samples(st), m, color=c, ls=ls, lw=1.6, label=label or name)
    ax.fill_between(x_samples(st), lo, hi, color=c, alpha=0.2, lw=0)


def accuracy_panel(ax, st, conditions: list[str], title: str, ls: dict | None = None,
                   legend_below: bool = False) -> None:
    n_runs = int(members_of(st, conditions[0]).sum())
    for name in conditions:
        stat_band(ax, st, "val_accuracy", name, f"{name} ({coefficient_text(st, name)})",
                  ls=(ls or {}).get(name, "-"), scale=100.0)
    ax.set(xlabel="training samples seen (online, batch size 1)",
           ylabel="validation accuracy (%)", ylim=(0, 100),
           title=f"{title}\nmean of {n_runs} runs, 98% bootstrap CI")
    if legend_below:
        put_legend_below(ax)
    else:
        ax.legend(loc="lower right", fontsize=8)


def layer_lines(ax, st, metric: str, name: str, title: str, ylabel: str, log: bool = True,
                first_layer: int = 1, prefix: str = "layer ") -> None:
    """One line per layer (mean over the condition's runs) of a ``[P, S, L']`` curve."""
    import matplotlib.pyplot as plt

    arr = st[f"curves/{metric}"][members_of(st, name)]  # [runs, S, L']
    n = arr.shape[2]
    cmap = plt.get_cmap("viridis")
    with np.errstate(invalid="ignore"):
        mean = np.nanmean(arr, 0)
    for k in range(n):
        ax.plot(x_samples(st), mean[:, k], color=cmap(k / max(1, n - 1)), lw=1.4,
                label=f"{prefix}{k + first_layer}")
    if log:
        ax.set_yscale("log")
    ax.set(xlabel="training samples seen", ylabel=ylabel, title=title)
    put_legend_below(ax, ncol=min(n, 5), fontsize=7)  # inside, it sat on a layer's line


def results_rows(st) -> list[tuple[str, str, float, float, float, int]]:
    """(condition, coefficients, final mean, lo, hi, runs) of the final validation accuracy."""
    m, lo, hi = (st[f"stats/val_accuracy_{k}"][:, -1] for k in ("mean", "lo", "hi"))
    return [(n, coefficient_text(st, n), float(m[i]), float(lo[i]), float(hi[i]),
             int(members_of(st, n).sum())) for i, n in enumerate(names(st))]


def results_markdown(stores: dict, title: str) -> str:
    """A Markdown table of final validation accuracy per condition of every store given."""
    lines = [title, "", "| store | condition | coefficients | final val. accuracy (%) | "
             "98% CI (%) | runs | samples |", "|---|---|---|---|---|---|---|"]
    for store_name, st in stores.items():
        samples = int(x_samples(st)[-1])
        for n, coef, m, lo, hi, runs in results_rows(st):
            lines.append(f"| {store_name} | {n} | {coef} | {100 * m:.2f} | "
                         f"[{100 * lo:.2f}, {100 * hi:.2f}] | {runs} | {samples} |")
    some = next(iter(stores.values()))
    splits = dict.fromkeys(st.attrs["validation_split"] for st in stores.values())
    lines += ["", *(f"Validation: {v}." for v in splits),  # one line per data set
              f"CI: {some.attrs['ci']}.", "", "Grid-search selection:"]
    lines += [f"- {n}: {st.attrs['selection_split']}." for n, st in stores.items()]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- figures


def reconstruction_grid(st, layers: list[int], title: str, n_images: int = 2):
    """P2 Fig 3: inputs and x_hat(l) = W_1^T..W_l^T y_l of the first run of BP and BP+Oja."""
    conds = names(st)
    rec = st["analysis/recon_images"]  # [P, n_img, L-1, 784]
    inputs = st["analysis/recon_inputs"]
    if max(layers) > rec.shape[2]:
        raise PlastError(f"{st.path}: reconstructions from {rec.shape[2]} hidden layer(s); "
                         f"this figure shows layers {', '.join(map(str, layers))} (the "
                         "paper's recipe makes this store)")
    n_images = min(n_images, inputs.shape[0])
    rows = [(i, n) for i in range(n_images) for n in conds]
    fig, ax = subplots(len(rows) * (len(layers) + 1), ncols=len(layers) + 1, size=(1.45, 1.55))
    ax = ax.reshape(len(rows), len(layers) + 1)
    for r, (img, name) in enumerate(rows):
        p = int(np.nonzero(members_of(st, name))[0][0])
        panels = [inputs[img]] + [rec[p, img, l - 1] for l in layers]
        for c, pic in enumerate(panels):
            a = ax[r, c]
            a.imshow(pic.reshape(28, 28), cmap="gray")  # each panel min-max scaled
            a.set_xticks([])
            a.set_yticks([])
            a.grid(False)
            if r == 0:
                a.set_title("input" if c == 0 else f"from y{layers[c - 1]}", fontsize=9)
            if c == 0:
                a.set_ylabel(f"{name}\nimage {img + 1}", fontsize=8)
    fig.suptitle(title, fontsize=10)
    return fig


def pca_panels(st, layers: list[int], conditions: list[str], title: str):
    """P2 Fig 4: cumulative explained variance of the PCA of y_l over the validation set."""
    fig, ax = subplots(len(layers), ncols=len(layers), size=(3.3, 3.0))
    for a, l in zip(ax, layers, strict=True):
        cum = st[f"analysis/pca_cumvar_y{l}"]
        k = np.arange(1, cum.shape[1] + 1)
        for i, name in enumerate(conditions):
            ci_band(a, k, 100 * cum[members_of(st, name)], name, base_color(name, i))
        a.set(xscale="log", xlabel="number of principal components",
              ylabel="cumulative explained variance (%)", ylim=(0, 101),
              title=f"hidden layer y{l} ({cum.shape[1]} units)")
        a.legend(loc="lower right", fontsize=8)
    fig.suptitle(title)
    return fig
