"""P1 Table 1: per-layer rule assignments (plast ablate-layers). The table itself comes
from plastcli.results.tables (one place for the CLI and the figures)."""

import textwrap
import warnings

import numpy as np

from plastcli.figures import register
from plastcli.figures.paper2022 import episodes_x
from plastcli.figures.style import SMOOTH, mean_sd_band, meta_accuracy_label, subplots
from plastcli.results import tables as _tables
from plastcli.results.statistics import moving_average

TABLE1 = "table1-ablate-layers"


def _by_assignment(st, key: str) -> list[tuple[str, np.ndarray]]:
    """(assignment name, ``[seeds, E, ...]`` slice of /episodes/<key>) in table order."""
    index = st["members/assignment_index"]
    return [(name, st[f"episodes/{key}"][index == a])
            for a, name in enumerate(st.json_attr("assignment_names"))]


OVERLAP_DEG = 2.5  # drawn curves closer than this at every episode after burn-in


def _overlapping(groups, l: int, burn: int) -> list[list[str]]:
    """Sets of assignments whose drawn α_l curves (seed means of the moving averages, as
    :func:`mean_sd_band` draws them) stay within OVERLAP_DEG of each other at every episode
    after burn-in, every pair of a set (no chaining), two or more names each."""
    with warnings.catch_warnings():  # an episode where every seed has diverged: NaN, skipped
        warnings.simplefilter("ignore", RuntimeWarning)
        drawn = [np.nanmean(moving_average(ang[:, :, l], SMOOTH), 0)[burn:] for _, ang in groups]

        def close(i, k):
            return np.nanmax(np.abs(drawn[i] - drawn[k])) < OVERLAP_DEG

        sets: list[list[int]] = []
        for i in range(len(groups)):  # each curve joins the first set it is close to in full
            home = next((m for m in sets if all(close(i, k) for k in m)), None)
            if home is None:
                sets.append([i])
            else:
                home.append(i)
    return [[groups[i][0] for i in m] for m in sets if len(m) > 1]


def _table1_angles(st):
    groups = _by_assignment(st, "angles")
    L = groups[0][1].shape[2]
    burn = int(st.attrs["burn_in"])
    x = episodes_x(st)
    fig, ax = subplots(L + 1, ncols=2, size=(5.6, 3.6))
    for l in range(L):
        for i, (name, ang) in enumerate(groups):
            mean_sd_band(ax[l], x, ang[:, :, l], name, f"C{i}", smooth=SMOOTH)
        ax[l].axvline(burn, color="k", lw=0.6, ls=":")
        ax[l].set(xlabel="episode", ylabel=f"α{l} to backprop (degrees)",
                  title=f"α{l}: error e_{l} (pre-synaptic to W{l}{l + 1})")
        same = _overlapping(groups, l, burn)
        if same:  # say which curves hide each other, so that none looks missing
            note = (f"drawn over each other (< {OVERLAP_DEG}° apart at every episode after "
                    "burn-in): "
                    + "; ".join(" ≈ ".join(names) for names in same))
            ax[l].text(0.0, -0.2, textwrap.fill(note, 78), transform=ax[l].transAxes,
                       fontsize=7.5, va="top")
    for i, (name, acc) in enumerate(_by_assignment(st, "meta_accuracy")):
        mean_sd_band(ax[L], x, acc, name, f"C{i}", smooth=SMOOTH)
    ax[L].set(xlabel="episode", ylabel=meta_accuracy_label(st), ylim=(0, 1),
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
