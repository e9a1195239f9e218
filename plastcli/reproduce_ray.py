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
import signal
import subprocess
import time
from collections.abc import Callable

from plastcli.errors import PlastError
from plastcli.reproduce import Job, _progress, command_line, default_jobs, finish


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


def run_ray(jobs: list[Job], threads: int, address: str | None,
            on_change: Callable[[], None] = lambda: None) -> None:
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
            raise PlastError(f"--address {address}: no Ray cluster there ({exc})") from None
    task = ray.remote(_run_child)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    todo = [j for j in jobs if j.action != "cached"]
    refs = {}
    for j in todo:
        j.store.parent.mkdir(parents=True, exist_ok=True)
        opts = {"num_cpus": threads, "num_gpus": _gpus(j)}
        refs[task.options(**opts).remote(command_line(j), str(j.log), env)] = j
    try:
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=len(pending), timeout=0.5)
            for j in todo:  # a task has started once its log exists
                if j.state == "queued" and j.log.exists():
                    j.state, j.started = "running", time.time()
                if j.state == "running":
                    j.done, j.total = _progress(j.log)
            for ref in ready:
                j = refs[ref]
                try:
                    finish(j, ray.get(ref))
                except ray.exceptions.RayError as exc:
                    finish(j, -1, f"Ray task failed: {exc.__class__.__name__}")
            on_change()
    except KeyboardInterrupt:
        for ref in refs:
            ray.cancel(ref)
        ray.wait(list(refs), num_returns=len(refs), timeout=60)
        raise
    finally:
        if started:
            ray.shutdown()
