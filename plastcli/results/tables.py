"""Tables computed from read stores (pure numpy, no torch): P1 Table 1 of an
ablate-layers store, for ``plast ablate-layers`` and ``plast figures`` alike.

Table 1: per layer assignment, the alignment angles alpha_l ``[L]`` of each member
averaged over the episodes after the burn-in (:func:`plastcli.results.statistics.window_mean`,
a fixed window), and its final meta-accuracy (:func:`plastcli.results.statistics.final_window`,
the last 50 finite episodes, as everywhere else); then mean ± sd over seeds.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from plastcli.errors import PlastError
from plastcli.results.statistics import TAIL as ACC_TAIL  # final meta-accuracy: as plast meta-train
from plastcli.results.statistics import final_window, window_mean
from plastcli.results.store import StoreData


def _mean_sd(x: np.ndarray) -> tuple[float, float]:
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return float("nan"), float("nan")
    return float(x.mean()), float(x.std(ddof=1)) if x.size > 1 else 0.0


def table1_rows(store: StoreData, burn_in: int | None = None) -> list[dict]:
    """P1 Table 1 from an ablate-layers store, one dict per assignment.

    Keys: 'assignment', 'base_layers' / 'added_layers' (layer names), 'seeds' (members),
    'diverged' (members), 'alpha' ``[L, 2]`` (mean, sd over seeds of each member's mean
    angle alpha_l over episodes burn_in..end, degrees) and 'meta_accuracy' (mean, sd over
    seeds of each member's final value, plastcli.results.statistics.final_window: its last 50
    finite episodes).
    """
    if store.attrs.get("plast_experiment") != "ablate-layers" or "members/assignment" not in store:
        raise PlastError(f"{store.path}: not a complete ablate-layers store")
    burn_in = int(store.attrs["burn_in"]) if burn_in is None else burn_in
    layers = store.json_attr("layer_names")
    names = store.json_attr("assignment_names")
    index = store["members/assignment_index"]
    added = store["members/added_layers"]
    angles = store["episodes/angles"]  # [P, E, L]
    acc = store["episodes/meta_accuracy"]  # [P, E]
    if angles.shape[1] <= burn_in:
        raise PlastError(f"{store.path}: {angles.shape[1]} episodes, none after the burn-in "
                         f"{burn_in}")
    alpha = window_mean(angles, burn_in)  # [P, L]: a fixed window, not the final value
    final_acc = final_window(acc, ACC_TAIL)  # [P]
    diverged = store["members/diverged_at"] if "members/diverged_at" in store else None
    rows = []
    for a, name in enumerate(names):
        m = index == a
        on = added[m][0]
        rows.append({
            "assignment": name,
            "base_layers": [n for n, x in zip(layers, on, strict=True) if not x],
            "added_layers": [n for n, x in zip(layers, on, strict=True) if x],
            "seeds": int(m.sum()),
            "diverged": int((diverged[m] >= 0).sum()) if diverged is not None else 0,
            "alpha": np.array([_mean_sd(alpha[m, l]) for l in range(alpha.shape[1])]),
            "meta_accuracy": _mean_sd(final_acc[m]),
        })
    return rows


def eHebb_pairs(store: StoreData, burn_in: int | None = None) -> list[dict]:
    """SPEC §7 check of Table 1: for every layer W_l and every pair of assignments that
    differ only in whether W_l adds the terms, the change of alpha_{l-1} (the angle of W_l's
    pre-synaptic error e_{l-1}) from 'without' to 'with', paired by seed (same seeds, so
    same tasks and initial weights): 'delta' = (mean, sd) over seeds, degrees.
    """
    burn_in = int(store.attrs["burn_in"]) if burn_in is None else burn_in
    layers = store.json_attr("layer_names")
    names = store.json_attr("assignment_names")
    index, seeds = store["members/assignment_index"], store["members/seed"]
    added = store["members/added_layers"]
    alpha = window_mean(store["episodes/angles"], burn_in)  # [P, L]
    sets = {a: frozenset(np.nonzero(added[index == a][0])[0].tolist()) for a in range(len(names))}
    out = []
    for l, layer in enumerate(layers):
        for a, sa in sets.items():
            if l in sa:
                continue
            b = next((b for b, sb in sets.items() if sb == sa | {l}), None)
            if b is None:
                continue
            ma, mb = index == a, index == b
            order_a, order_b = np.argsort(seeds[ma]), np.argsort(seeds[mb])
            diff = alpha[mb][order_b, l] - alpha[ma][order_a, l]
            out.append({"layer": layer, "alpha": l, "without": names[a], "with": names[b],
                        "delta": _mean_sd(diff), "lowered": bool(np.nanmean(diff) < 0)})
    return out


def rule_labels(store: StoreData) -> tuple[str, str]:
    """Column titles: the base rule and the base rule plus the added terms."""
    base = " + ".join(store.json_attr("base_terms"))
    return base, base + " + " + " + ".join(store.json_attr("added_terms"))


def _pm(ms: tuple[float, float], fmt: str) -> str:
    return f"{ms[0]:{fmt}} ± {ms[1]:{fmt}}"


def table1_text(store: StoreData) -> tuple[list[str], list[list[str]]]:
    """Header and formatted rows of Table 1 (angles in degrees, 1 decimal)."""
    rows = table1_rows(store)
    base, full = rule_labels(store)
    L = rows[0]["alpha"].shape[0]
    header = ["assignment", f"layers: {base} only", f"layers: {full}",
              *[f"α{l} (°)" for l in range(L)], "meta-accuracy", "seeds"]
    body = []
    for r in rows:
        body.append([r["assignment"], ", ".join(r["base_layers"]) or "-",
                     ", ".join(r["added_layers"]) or "-",
                     *[_pm(tuple(r["alpha"][l]), ".1f") for l in range(L)],
                     _pm(r["meta_accuracy"], ".3f"),
                     str(r["seeds"]) + (f" ({r['diverged']} diverged)" if r["diverged"] else "")])
    return header, body


def table1_markdown(store: StoreData) -> str:
    header, body = table1_text(store)
    burn = int(store.attrs["burn_in"])
    E = store["episodes/angles"].shape[1]
    lines = [f"P1 Table 1 from `{store.path.name}`: alignment angles alpha_l (degrees) averaged "
             f"over episodes {burn}..{E}, then mean ± sd over seeds; meta-accuracy = mean of the "
             f"last {ACC_TAIL} episodes, mean ± sd over seeds.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    pairs = eHebb_pairs(store)
    if pairs:
        added = " + ".join(store.json_attr("added_terms"))
        n_low = sum(p["lowered"] for p in pairs)
        lines += ["", f"Adding {added} to a layer W_l and the angle alpha_(l-1) of its "
                  f"pre-synaptic error (SPEC §7): lowered in {n_low} of {len(pairs)} pairs "
                  "of assignments that differ only in W_l (change paired by seed, mean ± sd).",
                  "", "| layer | α | without -> with | change of α (°) |", "|---|---|---|---|"]
        lines += [f"| {p['layer']} | α{p['alpha']} | {p['without']} -> {p['with']} | "
                  f"{p['delta'][0]:+.1f} ± {p['delta'][1]:.1f} |" for p in pairs]
    return "\n".join(lines) + "\n"


def table1_csv(store: StoreData) -> str:
    """One line per assignment with numeric mean and sd columns."""
    rows = table1_rows(store)
    L = rows[0]["alpha"].shape[0]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["assignment", "base_layers", "added_layers",
                *[f"alpha_{l}_{s}" for l in range(L) for s in ("mean", "sd")],
                "meta_accuracy_mean", "meta_accuracy_sd", "seeds", "diverged"])
    for r in rows:
        w.writerow([r["assignment"], " ".join(r["base_layers"]), " ".join(r["added_layers"]),
                    *[f"{r['alpha'][l, k]:.4f}" for l in range(L) for k in (0, 1)],
                    f"{r['meta_accuracy'][0]:.4f}", f"{r['meta_accuracy'][1]:.4f}",
                    r["seeds"], r["diverged"]])
    return buf.getvalue()


def write_table_files(store: StoreData, directory: Path) -> list[Path]:
    """<name>.csv and <name>.md beside the store; returns the paths."""
    stem = Path(store.path).stem
    out = []
    for ext, text in (("csv", table1_csv(store)), ("md", table1_markdown(store))):
        path = Path(directory) / f"{stem}.{ext}"
        path.write_text(text)
        out.append(path)
    return out
