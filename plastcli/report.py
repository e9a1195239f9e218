"""The one report of a reproduction: ``<results>/REPORT.md`` and a self-contained
``<results>/report.html`` (figures inlined as data URIs). Torch-free.

It gathers what ``plast figures`` wrote for each paper (the claim tables of
``reproduction-2022.md``, ``online-results-2024.md`` and the other Markdown summaries, and
every figure), and one row per recipe: state, seeds, wall time, device, git commit and
package versions, read from the stores.
"""

from __future__ import annotations

import base64
import datetime
import json
from pathlib import Path

import yaml

# The summaries each paper's figures write, in reading order (claims first).
SUMMARIES = {"2022": ("reproduction-2022.md", "stability-map.md", "table1-ablate-layers.md",
                      "fig1-fa-dfa-bp.md"),
             "2024": ("online-results-2024.md", "fig8-plastic-feedback.md", "fig7-rnn-memory.md")}
SMOKE_BANNER = ("> **Smoke scale: these numbers are not results.** Every recipe ran shrunk "
                "(a tiny network, a few episodes or samples, 2 seeds) to check that the whole "
                "pipeline works; rerun with `--scale full` for the papers' numbers.")


def store_row(job) -> dict:
    """Provenance of one job's store (empty fields where it has none)."""
    import h5py

    row = {"recipe": f"{job.paper}/{job.rel}", "state": job.state, "action": job.action,
           "seeds": "", "wall": "", "device": "", "commit": "", "versions": ""}
    if job.seconds is not None:
        row["wall"] = f"{job.seconds:.0f} s"
    if not job.store.exists():
        return row
    try:
        with h5py.File(job.store, "r") as f:
            a = dict(f.attrs)
            if "episodes/seconds" in f and not row["wall"]:  # cached: the run's own clock
                sec = f["episodes/seconds"][0]
                row["wall"] = f"{float(sum(s for s in sec if s == s)):.0f} s (recorded)"
    except OSError:
        return row
    recipe = yaml.safe_load(str(a.get("recipe_yaml", ""))) or {}
    row["seeds"] = str((recipe.get("population") or {}).get("seeds", ""))
    row["device"] = str(a.get("device_name", a.get("device", "")))
    row["commit"] = str(a.get("git_commit", ""))[:12]
    row["versions"] = ", ".join(f"{k.removesuffix('_version')} {a[k]}" for k in
                                ("torch_version", "numpy_version", "h5py_version",
                                 "python_version") if k in a)
    return row


def write(results: Path, papers: list[str], jobs: list, scale: str,
          figure_dirs: dict[str, Path], total_seconds: float) -> tuple[Path, Path]:
    """Write REPORT.md and report.html under ``results``; return both paths."""
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"# plast reproduction report — paper(s) {', '.join(papers)}", "",
             f"{now}, scale **{scale}**, {len(jobs)} recipes, total wall time "
             f"{total_seconds / 60:.1f} min.", ""]
    if scale == "smoke":
        lines += [SMOKE_BANNER, ""]
    failed = [j for j in jobs if j.state == "failed"]
    if failed:
        lines += ["**Failed runs:** " + "; ".join(f"{j.paper}/{j.rel} ({j.message})"
                                                   for j in failed), ""]
    for paper in papers:
        fig_dir = figure_dirs[paper]
        lines += [f"## Paper {paper}", ""]
        for name in SUMMARIES[paper]:
            path = fig_dir / name
            if path.exists():
                body = path.read_text(encoding="utf-8").strip().splitlines()
                # demote the summary's own headings under this paper's
                lines += [("##" + ln) if ln.startswith("#") else ln for ln in body] + [""]
        figs = sorted(fig_dir.glob("*.png"))
        if figs:
            lines += [f"### Figures ({len(figs)})", ""]
            for png in figs:
                lines += [f"![{png.stem}]({png.relative_to(results).as_posix()})", ""]
    lines += ["## Runs", "",
              "| recipe | state | this run | seeds | wall time | device | commit | versions |",
              "|---|---|---|---|---|---|---|---|"]
    for j in jobs:
        r = store_row(j)
        lines.append(f"| {r['recipe']} | {r['state']} | {r['action']} | {r['seeds']} | "
                     f"{r['wall']} | {r['device']} | {r['commit']} | {r['versions']} |")
    md = "\n".join(lines) + "\n"
    md_path = results / "REPORT.md"
    md_path.write_text(md, encoding="utf-8")
    html_path = results / "report.html"
    html_path.write_text(to_html(md, results), encoding="utf-8")
    return md_path, html_path


def to_html(md: str, base: Path) -> str:
    """A self-contained page: Markdown rendered with tables, every local image inlined."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(md)
    for src in sorted(set(_img_sources(body)), key=len, reverse=True):
        path = base / src
        if path.is_file():
            data = base64.b64encode(path.read_bytes()).decode("ascii")
            body = body.replace(f'src="{src}"', f'src="data:image/png;base64,{data}"')
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;"
             "padding:0 1em;line-height:1.45;color:#222}table{border-collapse:collapse;"
             "margin:1em 0;font-size:0.9em}th,td{border:1px solid #ccc;padding:3px 7px;"
             "text-align:left;vertical-align:top}th{background:#f3f3f3}img{max-width:100%;"
             "border:1px solid #eee}blockquote{background:#fff4d6;border-left:4px solid "
             "#e0a800;margin:1em 0;padding:0.4em 1em}code{background:#f4f4f4}")
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>plast reproduction report</title><style>{style}</style></head>"
            f"<body>\n{body}</body></html>\n")


def _img_sources(html: str) -> list[str]:
    import re

    return re.findall(r'<img src="([^"]+)"', html)


def summary_json(jobs: list) -> str:
    """Machine-readable state of every job (for scripts and CI)."""
    return json.dumps([{"recipe": f"{j.paper}/{j.rel}", "state": j.state, "action": j.action,
                        "seconds": j.seconds, "message": j.message} for j in jobs], indent=1)
