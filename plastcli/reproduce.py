"""`plast reproduce`: every recipe of a paper, cached, side by side, then figures and a report.

Torch-free: the runs themselves are ``python -m plastcli <command> ...`` child processes
(one per recipe), so this module only plans, starts, watches and reports.

- **What runs**: every ``recipes/<year>/**/*.yaml`` whose ``paper:`` key is that year
  (``discover``), not a hand-kept list. Each writes ``<results>/<year>/<path>.h5``, the same
  relative path as its recipe.
- **Scale**: ``full`` runs the recipes as written; ``smoke`` shrinks each by the one rule in
  ``SMOKE`` (a tiny network, a few episodes or samples, 2 seeds).
- **Cache**: a store is skipped when it is complete and its *key* matches: the resolved
  recipe (defaults filled in by today's schema, ``description`` left out: it is prose) and
  the plast version, both recorded in every store. A ``running`` or ``failed`` store with a
  matching key is resumed; a stale one is rerun from scratch. ``--force`` reruns all.
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from plastcli import __version__
from plastcli.errors import PlastError

PAPERS = ("2022", "2024")
COMMANDS = ("meta-train", "ablate-layers", "baseline", "init-study", "rnn-memory")
# --scale smoke: the one place that says how each kind of recipe is shrunk.
_TINY_META = ["network.layers=[784, 32, 24, 47]", "meta.episodes=3", "population.seeds=2",
              "run.checkpoint_every=2", "run.device=cpu"]
_TINY_ONLINE = ["online.samples=200", "population.seeds=2", "selection.samples=100",
                "selection.seeds=1", "online.val_size=200", "run.device=cpu"]
SMOKE = {
    "meta-train": _TINY_META,
    "ablate-layers": [*_TINY_META, "ablation.burn_in=1"],
    "baseline": _TINY_ONLINE,
    "init-study": _TINY_ONLINE,
    "rnn-memory": ["online.samples=20", "population.seeds=2", "selection.samples=10",
                   "selection.heldout=100", "online.val_size=50", "online.eval_every=10",
                   "network.hidden=[16]", "run.device=cpu"],
}
SCALES = ("smoke", "full")
# a child's progress line: "meta-train fig3-bp: 50/500  loss ..." (not the bar it redraws)
PROGRESS = re.compile(r"^[^\n:]*: (\d+)/(\d+)\b", re.M)


@dataclasses.dataclass
class Job:
    """One recipe to bring up to date: where it is, what it writes, and how it went."""

    recipe: Path
    paper: str
    rel: str  # the recipe's path under recipes/<paper>/, without .yaml: "stability/oja"
    command: str
    store: Path
    sets: list[str]
    log: Path
    state: str = "queued"  # queued | cached | running | complete | failed
    action: str = ""  # run | resume | rerun (stale) | cached
    done: int = 0
    total: int = 0
    started: float | None = None
    seconds: float | None = None
    message: str = ""


def discover(recipes_dir: Path, papers: list[str]) -> list[tuple[str, Path, str]]:
    """``(paper, recipe path, command)`` for every recipe under ``recipes_dir/<year>/``
    whose ``paper:`` key is that year, sorted by path. An unreadable recipe is an error."""
    found = []
    for paper in papers:
        root = recipes_dir / paper
        for path in sorted(root.rglob("*.yaml")):
            try:
                raw = yaml.safe_load(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
                raise PlastError(f"{path}: cannot be read as a recipe "
                                 f"({exc.__class__.__name__})") from None
            if not isinstance(raw, dict) or str(raw.get("paper")) != paper:
                continue
            command = raw.get("experiment")
            if command not in COMMANDS:
                raise PlastError(f"{path}: experiment '{command}' is not allowed; allowed: "
                                 f"{', '.join(COMMANDS)}")
            found.append((paper, path, command))
    return found


def plan(recipes_dir: Path, results: Path, papers: list[str], scale: str) -> list[Job]:
    """The jobs of a reproduction, before any cache decision."""
    if scale not in SCALES:
        raise PlastError(f"--scale '{scale}' is not allowed; allowed: {', '.join(SCALES)}")
    jobs = []
    for paper, path, command in discover(recipes_dir, papers):
        rel = path.relative_to(recipes_dir / paper).with_suffix(".h5")
        sets = list(SMOKE[command]) if scale == "smoke" else []
        store = results / paper / rel
        jobs.append(Job(path, paper, rel.with_suffix("").as_posix(), command, store, sets,
                        results / "logs" / paper / rel.with_suffix(".log")))
    return jobs


def cache_key(recipe_yaml: str, version: str) -> str:
    """The part of a resolved recipe that decides the numbers, plus the plast version:
    the recipe is re-resolved through today's schema (so a store written before a new key
    with a default existed matches), and ``name``, ``description`` and ``run.checkpoint_every``
    are dropped (a renamed recipe still matches its store)."""
    from plastcli.recipes import recipe_from_yaml, recipe_to_yaml
    from plastcli.recipes.load import NOT_IN_RESULTS, drop_keys

    resolved = drop_keys(yaml.safe_load(recipe_to_yaml(recipe_from_yaml(recipe_yaml))),
                         ("name", "description", *NOT_IN_RESULTS))
    return yaml.safe_dump({"plast_version": version, "recipe": resolved}, sort_keys=True)


def expected_key(job: Job) -> str:
    from plastcli.recipes import load_recipe, recipe_to_yaml

    return cache_key(recipe_to_yaml(load_recipe(job.recipe, job.sets)), __version__)


def decide(job: Job, force: bool) -> None:
    """Set ``job.action``: cached, resume, run or rerun, from the store on disk."""
    import h5py

    if not job.store.exists():
        job.action = "run"
        return
    if force:
        job.action = "rerun"
        return
    try:
        with h5py.File(job.store, "r") as f:
            status = str(f.attrs.get("status", ""))
            stored = cache_key(str(f.attrs["recipe_yaml"]), str(f.attrs.get("plast_version")))
    except Exception:  # unreadable, foreign or pre-provenance store: start it again
        job.action = "rerun"
        return
    if stored != expected_key(job):
        job.action = "rerun"
    elif status == "complete":
        job.action, job.state = "cached", "cached"
    else:
        job.action = "resume"


def command_line(job: Job) -> list[str]:
    cmd = [sys.executable, "-m", "plastcli", job.command, str(job.recipe), "--out",
           str(job.store)]
    for s in job.sets:
        cmd += ["--set", s]
    if job.action == "resume":
        cmd.append("--resume")
    elif job.action == "rerun":
        cmd.append("--overwrite")
    return cmd


def _progress(log: Path) -> tuple[int, int]:
    """(done, total) from the last 'N/M' a child printed (0, 0 before the first): in the
    log's last 4 KiB, else (a long table printed at the end) in the whole log."""
    try:
        with open(log, "rb") as f:
            size = os.path.getsize(log)
            f.seek(max(0, size - 4096))
            hits = PROGRESS.findall(f.read().decode("utf-8", "replace"))
            if not hits and size > 4096:
                f.seek(0)
                hits = PROGRESS.findall(f.read().decode("utf-8", "replace"))
    except OSError:
        return 0, 0
    return (int(hits[-1][0]), int(hits[-1][1])) if hits else (0, 0)


def finish(job: Job, rc: int, message: str = "") -> None:
    """Record how a child ended: its time, last progress, state and (if it failed) the
    last line it printed, which is the one-line error of a plast command."""
    job.seconds = time.time() - (job.started or time.time())
    job.done, job.total = _progress(job.log)
    job.state = "complete" if rc == 0 else "failed"
    if rc != 0:
        text = job.log.read_text(encoding="utf-8", errors="replace") if job.log.exists() else ""
        lines = [ln for ln in text.splitlines() if ln.strip()]
        job.message = message or f"exit {rc}: {lines[-1] if lines else 'no output'}"


def run_local(jobs: list[Job], n_jobs: int, threads: int,
              on_change: Callable[[], None] = lambda: None) -> None:
    """Run the jobs that need it, ``n_jobs`` at a time, each a child process with
    ``threads`` torch threads. Ctrl-C reaches every child (same process group): each saves
    a resumable store; this returns after they have exited and re-raises it."""
    todo = [j for j in jobs if j.action != "cached"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    children: list[subprocess.Popen] = []
    lock = threading.Lock()
    stop = threading.Event()

    def one(job: Job) -> None:
        if stop.is_set():
            return
        job.log.parent.mkdir(parents=True, exist_ok=True)
        job.store.parent.mkdir(parents=True, exist_ok=True)
        job.state, job.started = "running", time.time()
        on_change()
        with open(job.log, "w", encoding="utf-8") as log:
            p = subprocess.Popen(command_line(job), stdout=log, stderr=subprocess.STDOUT,
                                 env=env)
            with lock:
                children.append(p)
            rc = p.wait()
        finish(job, rc)
        on_change()

    pool = ThreadPoolExecutor(max_workers=max(1, n_jobs))
    futures = [pool.submit(one, j) for j in todo]
    try:
        while not all(f.done() for f in futures):
            for j in todo:
                if j.state == "running":
                    j.done, j.total = _progress(j.log)
            on_change()
            time.sleep(0.5)
    except KeyboardInterrupt:
        stop.set()
        with lock:
            for p in children:
                if p.poll() is None:
                    p.send_signal(signal.SIGINT)
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    for f in futures:
        f.result()  # a bug in `one` surfaces here, not silently


def default_jobs() -> int:
    """The cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _table(jobs: list[Job], title: str):
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    t.add_column("recipe", overflow="fold")  # wrapped, never cut: names differ at their ends
    for col in ("command", "state", "progress", "elapsed", "ETA"):
        t.add_column(col)
    colour = {"queued": "dim", "cached": "cyan", "running": "yellow", "complete": "green",
              "failed": "red"}
    now = time.time()
    for j in jobs:
        prog = f"{j.done}/{j.total}" if j.total else ""
        elapsed = eta = ""
        if j.started is not None:
            el = (j.seconds if j.seconds is not None else now - j.started)
            elapsed = f"{el:.0f} s"
            if j.state == "running" and j.total and j.done:
                eta = f"{el / j.done * (j.total - j.done):.0f} s"
        state = j.state if j.action in ("", "cached", "run") else f"{j.state} ({j.action})"
        t.add_row(f"{j.paper}/{j.rel}", j.command, f"[{colour[j.state]}]{state}[/]", prog,
                  elapsed, eta)
    return t


def check_backend(backend: str, address: str | None, seed_chunk: int | None) -> None:
    """The backend options of reproduce and sweep, refused in one line when they clash."""
    if backend not in ("local", "ray"):
        raise PlastError(f"--backend '{backend}' is not allowed; allowed: local, ray")
    if address and backend != "ray":
        raise PlastError("--address needs --backend ray")
    if seed_chunk and backend != "ray":
        raise PlastError("--seed-chunk needs --backend ray (the local backend already splits "
                         "a population across its cores)")


def run_backend(jobs: list[Job], n_jobs: int, threads: int, backend: str, address: str | None,
                seed_chunk: int | None, force: bool, on_change: Callable[[], None]) -> None:
    if backend == "local":
        run_local(jobs, n_jobs, threads, on_change)
    else:
        from plastcli.reproduce_ray import run_ray

        run_ray(jobs, threads, address, on_change, seed_chunk, force)


def reproduce(papers: list[str], scale: str, n_jobs: int, backend: str, address: str | None,
              results: Path, recipes_dir: Path, force: bool, console,
              seed_chunk: int | None = None) -> int:
    """Plan, run what is stale, draw the figures, write the report. Returns the exit code:
    0, or 1 when a run failed (a claim that does not reproduce is a result, not a failure)."""
    check_backend(backend, address, seed_chunk)
    jobs = plan(recipes_dir, results, papers, scale)
    if not jobs:
        raise PlastError(f"no recipe under {recipes_dir} for paper(s) {', '.join(papers)}")
    from plastcli.recipes import load_recipe

    for j in jobs:  # every recipe is checked before anything runs: a bad one is one line
        load_recipe(j.recipe, j.sets)
    for j in jobs:
        decide(j, force)
    t0 = time.time()
    run_live(jobs, f"plast reproduce --paper {'+'.join(papers)} --scale {scale}: "
             f"{len(jobs)} recipes", n_jobs, backend, address, seed_chunk, force, console)
    figure_dirs = draw_figures(results, papers, scale)
    from plastcli import report

    md, html = report.write(results, papers, jobs, scale, figure_dirs, time.time() - t0)
    console.print(f"wrote {md}\nwrote {html}", highlight=False)
    return report_failures(jobs, console)


def run_live(jobs: list[Job], what: str, n_jobs: int, backend: str, address: str | None,
             seed_chunk: int | None, force: bool, console) -> None:
    """Run the jobs that need it on the backend, ``n_jobs`` at a time (default: the cores),
    with one live table; ``what`` starts its title."""
    from rich.live import Live

    cores = default_jobs()
    n_jobs = max(1, min(n_jobs or cores, len(jobs)))
    threads = max(1, cores // n_jobs)
    asked = os.environ.get("OMP_NUM_THREADS", "")
    if asked.isdigit() and int(asked) >= 1:  # the user's choice, e.g. 1 on a shared host
        threads = min(threads, int(asked))
    title = (f"{what}, {sum(j.action == 'cached' for j in jobs)} cached; {n_jobs} at a time, "
             f"{threads} thread(s) each, backend {backend}")
    with Live(_table(jobs, title), console=console, refresh_per_second=2,
              transient=not console.is_terminal) as live:
        def refresh() -> None:
            live.update(_table(jobs, title))

        run_backend(jobs, n_jobs, threads, backend, address, seed_chunk, force, refresh)
        refresh()
    if not console.is_terminal:
        console.print(_table(jobs, title))


def report_failures(jobs: list[Job], console) -> int:
    """One red line per failed job, then one line of totals; the exit code (1 when one
    failed)."""
    failed = [j for j in jobs if j.state == "failed"]
    for j in failed:
        console.print(f"[red]failed:[/] {j.paper}/{j.rel}: {j.message} (log: {j.log})",
                      highlight=False, soft_wrap=True)
    cached = sum(j.action == "cached" for j in jobs)
    done = sum(j.state in ("complete", "cached") for j in jobs)
    console.print(f"{len(jobs)} runs: {done} complete ({cached} of them cached), "
                  f"{len(failed)} failed", highlight=False)
    return 1 if failed else 0


def draw_figures(results: Path, papers: list[str], scale: str) -> dict[str, Path]:
    """``plast figures`` for each paper into ``<results>/<paper>/figures``."""
    from plastcli.figures import draw_paper

    formats = ["png"] if scale == "smoke" else ["png", "pdf"]
    dirs = {}
    for paper in papers:
        out = results / paper / "figures"
        out.mkdir(parents=True, exist_ok=True)
        draw_paper(paper, results / paper, out, formats)
        dirs[paper] = out
    return dirs
