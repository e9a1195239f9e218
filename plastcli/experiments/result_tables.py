"""What each training command prints when it ends, as one shape: a :class:`ResultTable`
(title, columns, rows of text, caption, warnings, files written) built from the experiment's
result, so that the CLI prints every command's table with one function. No torch here."""

from __future__ import annotations

from dataclasses import dataclass, field

from plastcli.core.terms import BUILTIN_POOL


@dataclass
class ResultTable:
    """A titled table of text cells. ``columns``: (header, "left" | "right") per column;
    ``rows``: one list of cell texts per row; ``warnings`` go to stderr, ``files`` are named
    after the table. The first ``keys`` columns name a row: a table wider than the terminal
    is printed in parts (:func:`column_parts`), each starting with them."""

    title: str
    columns: list[tuple[str, str]]
    rows: list[list[str]]
    caption: str = ""
    warnings: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    keys: int = 1


def column_widths(t: ResultTable) -> list[int]:
    """Each column's least width: its longest word, header or cell (rich wraps at spaces;
    a number is one word, so at this width it is never cut)."""
    def longest(text: str) -> int:
        return max((len(w) for w in text.split()), default=0)

    return [max([longest(header)] + [longest(r[i]) for r in t.rows])
            for i, (header, _) in enumerate(t.columns)]


def fit_widths(t: ResultTable, cols: list[int], width: int) -> list[int]:
    """Widths of the columns ``cols`` of ``t`` in a table of ``width`` characters: each its
    whole text if that fits, else its least width (:func:`column_widths`) plus a share of
    the room left in proportion to what it lacks (rich's own shrinking cut words)."""
    least = [column_widths(t)[i] for i in cols]
    whole = [max([len(t.columns[i][0])] + [len(r[i]) for r in t.rows]) for i in cols]
    room = width - 3 * len(cols) - 1
    if sum(whole) <= room:
        return whole
    lack = [w - m for w, m in zip(whole, least, strict=True)]
    spare = max(0, room - sum(least))
    return [m + spare * d // max(1, sum(lack)) for m, d in zip(least, lack, strict=True)]


def column_parts(t: ResultTable, width: int) -> list[list[int]]:
    """The column indices of each part of ``t`` that fits ``width`` characters (a rich table
    with borders: 3 per column and 1, each column at :func:`column_widths`), the key
    columns in every part; one part if it fits."""
    need = [3 + w for w in column_widths(t)]
    key_w = 1 + sum(need[: t.keys])
    parts: list[list[int]] = [[]]
    used = key_w
    for i in range(t.keys, len(t.columns)):
        if parts[-1] and used + need[i] > width:
            parts.append([])
            used = key_w
        parts[-1].append(i)
        used += need[i]
    return [list(range(t.keys)) + p for p in parts]


def _ci(lo: float, hi: float) -> str:
    return f"[{lo:.4f}, {hi:.4f}]"


def meta_train_table(recipe, res) -> ResultTable:
    """One row per member: its seed, grid values, final meta-accuracy and -loss, θ, and the
    episodes where it diverged or collapsed."""
    wide = len(res.terms) > 4  # e.g. the pool or rule.terms: grammar: the largest ones only
    columns = [("seed", "right"), *[(key, "right") for key in res.grid],
               ("meta-acc", "right"), ("meta-loss", "right"),
               *[(name if wide else f"θ {name}", "right")
                 for name in (["largest |θ|"] if wide else res.terms)],
               ("diverged", "right"), ("collapsed", "right")]
    rows = []
    for i, s in enumerate(res.seeds):
        d, c = res.diverged_at[i], res.collapsed_at[i]
        theta = [f"{v:.3g}" for v in res.theta[i]]
        if wide:
            top = sorted(range(len(theta)), key=lambda j: -abs(res.theta[i][j]))[:4]
            theta = [", ".join(f"{res.terms[j]}={theta[j]}" for j in top)]
        rows.append([str(s), *[f"{v[i]:.3g}" for v in res.grid.values()],
                     f"{res.final['meta_accuracy'][i]:.3f}",
                     f"{res.final['meta_loss'][i]:.3f}", *theta,
                     "-" if d < 0 else str(d), "-" if c < 0 else str(c)])
    from plastcli.results.statistics import TAIL

    tail = min(TAIL, res.episodes)
    return ResultTable(
        f"meta-train {recipe.name}: {res.episodes} episode{'s' * (res.episodes != 1)} -> "
        f"{res.out}", columns, rows, keys=1 + len(res.grid),
        caption=f"meta-acc, meta-loss: mean of the last {tail} finite episodes (a diverged "
                f"member: the {tail} before it diverged); diverged, collapsed: the episode it "
                "happened (- = never)")


def ablate_layers_table(recipe, res) -> ResultTable:
    """P1 Table 1 as ``plastcli.results.tables.table1_text`` gives it."""
    from plastcli.results.store import read_store
    from plastcli.results.tables import table1_text

    header, body = table1_text(read_store(res.out))
    return ResultTable(
        f"ablate-layers {recipe.name} (P1 Table 1): angles averaged over episodes "
        f"{recipe.ablation.burn_in}..{recipe.meta.episodes}, mean ± sd over seeds",
        [(col, "left" if i < 3 else "right") for i, col in enumerate(header)],
        [list(row) for row in body], warnings=list(res.diverged),
        files=[str(f) for f in res.files])


def online_table(recipe, res) -> ResultTable:
    """``plast baseline`` and ``plast init-study``: one row per condition."""
    kind = recipe.experiment
    index = {n: j for j, n in enumerate(getattr(res, "term_names", BUILTIN_POOL.names))}
    rows = [[name, ", ".join(f"{t}={res.theta[i, index[t]]:.3g}" for t in res.terms[i]),
             f"{res.final_mean[i]:.4f}", _ci(res.final_lo[i], res.final_hi[i])]
            for i, name in enumerate(res.conditions)]
    warnings = [f"{name}: {n} of {recipe.population.seeds} runs diverged (their loss is not "
                "finite); their accuracy is no result"
                for name, n in zip(res.conditions, getattr(res, "diverged", []), strict=False)
                if n]
    return ResultTable(
        f"{kind} {recipe.name}: {recipe.online.samples} online samples, "
        f"{recipe.population.seeds} runs per condition -> {res.out}",
        [("condition", "left"),
         ("coefficients" + (" (grid-searched)" if res.grid_searched else ""), "left"),
         ("final val. accuracy (mean)", "right"), ("98% CI", "right")], rows,
        warnings=warnings)


def rnn_memory_table(recipe, res) -> ResultTable:
    """``plast rnn-memory``: one row per (hidden size, condition)."""
    rows = [[str(r["hidden"]), r["condition"] + (" (grid)" if r["searched"] else ""),
             f"{r['theta_bptt']:.3g}", f"{r['theta_oja']:.3g}", f"{r['mean']:.4f}",
             _ci(r["lo"], r["hi"])] for r in res.rows]
    return ResultTable(
        f"rnn-memory {recipe.name}: {recipe.online.samples} sequences (T = {recipe.task.T}, "
        f"image for {recipe.task.present} steps), {recipe.population.seeds} runs per "
        f"condition -> {res.out}",
        [(col, "left" if col == "condition" else "right")
         for col in ("hidden", "condition", "θ_1 (BPTT)", "θ_2 (Oja)",
                     "final val. accuracy (mean)", "98% CI")], rows)


# experiment kind -> its table
TABLES = {"meta-train": meta_train_table, "ablate-layers": ablate_layers_table,
          "baseline": online_table, "init-study": online_table,
          "rnn-memory": rnn_memory_table}
