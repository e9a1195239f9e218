"""Share a CPU population on the reference path across processes, one core each, and pick
how many cores a population may use (the free cores, :mod:`plastcli.engine.cores`; also the
fused kernel's thread count, :func:`threads_for`).

The inner loop of one member is a long chain of small operations, so a CPU population
is bound by per-operation overhead and cache traffic rather than by arithmetic; two
intra-op threads help little. Members are independent, though, so a population split
into parts that run in separate single-threaded processes uses every core fully: on the
2-core benchmark machine bio.yaml at P=16 runs about 20% faster per member this way.

The first part runs in the calling process (its intra-op threads set to one meanwhile);
the others go to the workers of a standard-library process pool that lives as long as
the program (:mod:`plastcli.engine.pool`: spawned, single-threaded, tensors through shared
memory). Each part gives exactly the numbers it gives when run alone with one thread, so
a run on the reference path is deterministic for a given process count and thread count
(both recorded in the store).
``OMP_NUM_THREADS=1`` keeps a run in one process. Workers are spawned, so they import the
main script again: a script that meta-trains a population must guard its entry point
with ``if __name__ == "__main__"`` (``plast`` and ``python -m plastcli`` do).

What crosses to a worker: tensors (values only: not ``requires_grad``, not aliasing) and
picklable objects; a worker's functions must not keep references to their arguments,
whose memory the next request reuses.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable

import torch

from plastcli.engine import cores, pool
from plastcli.engine.cores import free_cores
from plastcli.engine.pool import ShmTooSmall

__all__ = ["MIN_PART", "ShmTooSmall", "free_cores", "peak_rss_all_mib", "peak_rss_mib",
           "processes_for", "run_parts", "shutdown", "split", "threads_for"]

# Parts smaller than this are not worth a process (the chunked CPU path needs P >= 4).
MIN_PART = 4

_lock = threading.Lock()


def processes_for(P: int, device: torch.device | str) -> int:
    """How many processes share a population of P members on the reference path: on the
    CPU one per intra-op thread torch may use (``OMP_NUM_THREADS`` /
    ``torch.set_num_threads``) and free core (:func:`free_cores`), each with at least
    MIN_PART members; 1 on a GPU."""
    if torch.device(device).type != "cpu":
        return 1
    return max(1, min(torch.get_num_threads(), cores.free_cores_recent(), P // MIN_PART))


def threads_for(P: int, device: torch.device | str) -> int:
    """Threads that share a population of P members in the fused kernel: one per free
    core (:func:`free_cores`), at most torch's thread count (``OMP_NUM_THREADS``) and P.
    On a core that another job holds, a second thread only waits for it, so the cores
    counted are the free ones, not all of them. 1 off the CPU."""
    if torch.device(device).type != "cpu":
        return 1
    return max(1, min(P, torch.get_num_threads(), cores.free_cores_recent()))


def split(P: int, parts: int) -> list[slice]:
    """Contiguous, nearly equal slices of range(P); the last ones are one larger (the
    first part runs in the calling process, which also pays for the transport)."""
    parts = max(1, min(parts, P))
    size, extra = divmod(P, parts)
    out, start = [], 0
    for i in range(parts):
        stop = start + size + (i >= parts - extra)
        out.append(slice(start, stop))
        start = stop
    return out


def shutdown(busy: bool = False) -> None:
    """Stop the worker processes (they are started again when next needed): at once when
    ``busy``, else after their current request."""
    pool.shutdown(busy)


def _vm_hwm_mib(pid: int | str) -> float | None:
    """A process's peak resident memory in MiB from Linux's /proc (None elsewhere)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_rss_mib() -> float:
    """This process's peak resident memory in MiB. On Linux from VmHWM: getrusage's
    ru_maxrss of a worker would include the parent's memory at the time it was forked."""
    peak = _vm_hwm_mib("self")
    if peak is not None:
        return peak
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def peak_rss_all_mib() -> float:
    """Peak resident memory of this process plus every worker now running, in MiB (where
    /proc is missing, of as many workers as answer a request each)."""
    pids = pool.workers()
    peaks = [_vm_hwm_mib(pid) for pid in pids]
    if None not in peaks:
        return peak_rss_mib() + sum(peaks)
    return sum(run_parts(peak_rss_mib, [()] * (len(pids) + 1)))


def run_parts(fn: Callable, calls: list[tuple]) -> list:
    """``[fn(*args) for args in calls]``, the first here and the rest in worker processes,
    all at once. ``fn`` must be a module-level function (it is pickled by name). Runs the
    calls one after another here when workers are in use already (a nested or concurrent
    call) or shared memory is too small (with a warning). A worker's error is raised here
    as a RuntimeError with its traceback; any error or Ctrl-C stops busy workers."""
    if len(calls) == 1 or not _lock.acquire(blocking=False):
        return [fn(*args) for args in calls]
    try:
        return pool.run_parts(fn, calls)
    finally:
        _lock.release()
