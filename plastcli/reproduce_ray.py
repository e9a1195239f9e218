"""The Ray backend of `plast reproduce` (``pip install -e ".[ray]"``).

Each recipe is one Ray task that runs the same child command as the local backend
(``python -m plastcli <command> RECIPE --out STORE ...``) with ``num_cpus`` = its thread
share (``num_gpus=1`` when the recipe runs on CUDA). **Stores are written by the task, on a
shared filesystem**: every node must see the results directory and the recipes at the
same paths, and have plast installed (as on one machine, or a cluster with a shared home).
The driver only watches the logs and writes the report. Without ``--address`` an embedded
local Ray is started (and stopped at the end); with one, the driver joins that cluster.
A failed task marks its job failed (its store says ``failed: ...``); the others go on.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable

from plastcli.errors import PlastError
from plastcli.reproduce import Job, _progress, command_line, decide, default_jobs, finish


def _run_child(cmd: list[str], log: str, env: dict) -> int:
    """Body of one Ray task: the child command, its output to ``log``; Ctrl-C (a Ray
    cancel) is passed on as SIGINT so the child leaves a resumable store."""
    os.makedirs(os.path.dirname(log), exist_ok=True)
    with open(log, "w", encoding="utf-8") as out:
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            return p.wait()
        except KeyboardInterrupt:
            p.send_signal(signal.SIGINT)
            return p.wait()


def _gpus(job: Job) -> int:
    import yaml

    raw = yaml.safe_load(job.recipe.read_text(encoding="utf-8")) or {}
    device = ((raw.get("run") or {}).get("device"))
    sets = {s.split("=", 1)[0]: s.split("=", 1)[1] for s in job.sets}
    return 1 if sets.get("run.device", device) == "cuda" else 0


def split_by_seed(job: Job, size: int | None, force: bool = False) -> list[Job] | None:
    """The seed chunks of a big meta-train job (each at most ``size`` seeds, its own store
    under ``<store stem>.parts/``), or None when the job runs whole: another command, a
    population.grid, no more than ``size`` seeds, or a store to resume as it is."""
    if not size or job.command != "meta-train" or job.action in ("cached", "resume"):
        return None
    from plastcli.recipes import load_recipe

    rec = load_recipe(job.recipe, job.sets)
    n = rec.population.seeds
    if rec.population.grid or n <= size:
        return None
    parts_dir = job.store.with_name(job.store.stem + ".parts")
    if force:
        shutil.rmtree(parts_dir, ignore_errors=True)
    parts = []
    for k, start in enumerate(range(0, n, size)):
        sets = [*job.sets, f"population.seed={rec.population.seed + start}",
                f"population.seeds={min(size, n - start)}"]
        part = Job(job.recipe, job.paper, f"{job.rel}[{k}]", job.command,
                   parts_dir / f"part-{k:03d}.h5", sets,
                   job.log.with_name(f"{job.log.stem}.part-{k:03d}.log"))
        decide(part, False)  # a chunk finished by an earlier, killed reproduce is kept
        parts.append(part)
    return parts


def _merge(job: Job, parts: list[Job]) -> None:
    """All chunks ended: merge them into the job's store (or fail the job with the first
    failed chunk's message) and remove the chunk stores."""
    from plastcli.recipes import load_recipe, recipe_to_yaml
    from plastcli.results.merge import merge_seed_chunks

    job.done, job.total = min(p.done for p in parts), max(p.total for p in parts)
    job.seconds = time.time() - (job.started or time.time())
    bad = [p for p in parts if p.state == "failed"]
    if bad:
        job.state, job.message = "failed", f"seed chunk {bad[0].rel}: {bad[0].message}"
        return
    try:
        merge_seed_chunks([p.store for p in parts], job.store,
                          recipe_to_yaml(load_recipe(job.recipe, job.sets)))
    except PlastError as exc:
        job.state, job.message = "failed", f"merging the seed chunks: {exc}"
        return
    job.state = "complete"
    shutil.rmtree(parts[0].store.parent, ignore_errors=True)


def run_ray(jobs: list[Job], threads: int, address: str | None,
            on_change: Callable[[], None] = lambda: None, seed_chunk: int | None = None,
            force: bool = False) -> None:
    """Run the jobs that need it as Ray tasks; with ``seed_chunk``, a meta-train population
    of more seeds runs as one task per chunk of that many seeds, merged by the driver."""
    try:
        import ray
    except ImportError:
        raise PlastError("--backend ray needs the ray package: pip install -e '.[ray]'") \
            from None
    started = not ray.is_initialized()
    if started:
        try:
            ray.init(address=address, num_cpus=None if address else default_jobs(),
                     include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
        except ConnectionError as exc:
            raise PlastError(f"--address {address}: no Ray cluster there, or it refused this "
                             f"driver ({exc}); a cluster started with token authentication "
                             f"needs its token here too (see Ray's token-auth docs; a "
                             f"loopback test cluster can run with RAY_AUTH_MODE=disabled)"
                             ) from None
    task = ray.remote(_run_child)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    todo = [j for j in jobs if j.action != "cached"]
    chunks = {id(j): split_by_seed(j, seed_chunk, force) for j in todo}
    tasks = [u for j in todo for u in (chunks[id(j)] or [j]) if u.action != "cached"]
    refs = {}
    for u in tasks:
        u.store.parent.mkdir(parents=True, exist_ok=True)
        opts = {"num_cpus": threads, "num_gpus": _gpus(u)}
        refs[task.options(**opts).remote(command_line(u), str(u.log), env)] = u
    try:
        pending = list(refs)
        while pending or any(j.state in ("queued", "running") for j in todo):
            ready, pending = ray.wait(pending, num_returns=len(pending), timeout=0.5) \
                if pending else ([], [])
            for u in tasks:  # a task has started once its log exists
                if u.state == "queued" and u.log.exists():
                    u.state, u.started = "running", time.time()
                if u.state == "running":
                    u.done, u.total = _progress(u.log)
            for ref in ready:
                u = refs[ref]
                try:
                    finish(u, ray.get(ref))
                except ray.exceptions.RayError as exc:
                    finish(u, -1, f"Ray task failed: {exc.__class__.__name__}")
            for j in todo:
                parts = chunks[id(j)]
                if parts is None or j.state not in ("queued", "running"):
                    continue
                if any(p.state == "running" for p in parts) and j.started is None:
                    j.state, j.started = "running", time.time()
                j.done = min(p.done for p in parts)
                j.total = max(p.total for p in parts)
                if all(p.state in ("complete", "cached", "failed") for p in parts):
                    _merge(j, parts)
            on_change()
    except KeyboardInterrupt:
        for ref in refs:
            ray.cancel(ref)
        ray.wait(list(refs), num_returns=len(refs), timeout=60)
        raise
    finally:
        if started:
            ray.shutdown()
