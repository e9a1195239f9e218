"""Share a CPU population across processes, one core each.

The inner loop of one member is a long chain of small operations, so a CPU population
is bound by per-operation overhead and cache traffic rather than by arithmetic; two
intra-op threads help little. Members are independent, though, so a population split
into parts that run in separate single-threaded processes uses every core fully: on the
2-core benchmark machine bio.yaml at P=16 runs about 20% faster per member this way.

The first part runs in the calling process (its intra-op threads set to one meanwhile);
the others go to worker processes that live as long as the program. Workers are plain
``python -c`` subprocesses that exchange pickles over their stdin and stdout, so they
never re-import the user's main script (as multiprocessing's spawn would) and exit when
the parent goes away. Tensors travel through a shared-memory block per worker and
direction (only their layout goes through the pipe). Each part gives exactly the numbers
it gives when run alone with one thread, so a run is deterministic for a given population
size and thread count. ``OMP_NUM_THREADS=1`` keeps a run in one process.
``PLAST_WORKERS=pool`` runs the worker parts in a standard-library process pool instead
(:mod:`plastcli.engine.pool`), with the same numbers.

What crosses to a worker: tensors (values only: not ``requires_grad``, not aliasing) and
picklable objects; a worker's functions must not keep references to their arguments,
whose memory the next request reuses.
"""

from __future__ import annotations

import atexit
import importlib
import io
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from multiprocessing import resource_tracker, shared_memory

import torch

# Parts smaller than this are not worth a process (the chunked CPU path needs P >= 4).
MIN_PART = 4
# Environment of a worker: one thread for every BLAS a torch build may use.
_ONE_THREAD = {k: "1" for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                "VECLIB_MAXIMUM_THREADS")}
# The worker's first statements: keep the real stdout for replies before anything can print
# to it, then import with the parent's sys.path (not the current directory's packages).
_BOOT = ("import os, sys; fd = os.dup(1); os.dup2(2, 1); "
         "sys.path[:] = os.environ['PLAST_WORKER_PATH'].split(os.pathsep); "
         "from plastcli.engine.workers import serve; serve(fd)")


def processes_for(P: int, device: torch.device | str) -> int:
    """How many processes share a population of P members: on the CPU one per intra-op
    thread torch may use (``OMP_NUM_THREADS`` / ``torch.set_num_threads``), each with at
    least MIN_PART members; 1 on a GPU."""
    if torch.device(device).type != "cpu":
        return 1
    return max(1, min(torch.get_num_threads(), P // MIN_PART))


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


class ShmTooSmall(RuntimeError):
    """The shared-memory filesystem cannot hold a request (e.g. a small /dev/shm)."""


class _Channel:
    """Pickles whose tensors live in a named shared-memory block (grown as needed).

    ``dump(obj, pipe)`` copies every tensor in obj into the block and writes a pickle that
    refers to them by position; ``load(pipe, copy)`` maps them back (copied, or as views
    of the block). One side writes a channel, the other reads it, and a write waits for
    the reply to the last one, so the block is never overwritten while a request's
    tensors are in use; replies are always copied out.
    """

    def __init__(self, owner: bool):
        self.owner = owner
        self.shm: shared_memory.SharedMemory | None = None

    def _attach(self, name: str) -> None:
        self.close()
        self.shm = shared_memory.SharedMemory(name=name)
        if os.name == "posix":  # the creator owns it: the reader's tracker must not unlink it
            resource_tracker.unregister(self.shm._name, "shared_memory")  # noqa: SLF001

    def _create(self, size: int) -> None:
        self.close()
        self.shm = shared_memory.SharedMemory(create=True, size=size)
        fd = getattr(self.shm, "_fd", -1)
        if hasattr(os, "posix_fallocate") and fd >= 0:
            try:  # reserve the pages now: a full /dev/shm would otherwise be a SIGBUS later
                os.posix_fallocate(fd, 0, size)
            except OSError as err:
                self.close()
                raise ShmTooSmall(f"shared memory cannot hold {size / 2**20:.0f} MiB "
                                  f"({err.strerror})") from err

    def dump(self, obj, pipe) -> None:
        tensors: list[torch.Tensor] = []
        buf = io.BytesIO()
        pickler = pickle.Pickler(buf, protocol=5)
        pickler.persistent_id = lambda o: (  # noqa: E731
            tensors.append(o) or len(tensors) - 1) if isinstance(o, torch.Tensor) else None
        pickler.dump(obj)
        layout, offset = [], 0
        for t in tensors:
            offset = -(-offset // 64) * 64  # aligned
            layout.append((offset, tuple(t.shape), t.dtype))
            offset += t.numel() * t.element_size()
        if self.shm is None or self.shm.size < offset:
            self._create(max(offset, 1) * 5 // 4)
        for t, (off, shape, dtype) in zip(tensors, layout, strict=True):
            self._view(off, shape, dtype).copy_(t.detach())
        pickle.dump((self.shm.name, layout, buf.getvalue()), pipe, protocol=5)
        pipe.flush()

    def load(self, pipe, copy: bool):
        name, layout, payload = pickle.load(pipe)
        if self.shm is None or self.shm.name != name:
            self._attach(name)
        tensors = [self._view(*spec) for spec in layout]
        unpickler = pickle.Unpickler(io.BytesIO(payload))
        # a view would dangle once the block is reused, grown or unmapped
        unpickler.persistent_load = (lambda i: tensors[i].clone()) if copy else tensors.__getitem__
        return unpickler.load()

    def _view(self, offset: int, shape: tuple, dtype: torch.dtype) -> torch.Tensor:
        n = 1
        for d in shape:
            n *= d
        if n == 0:
            return torch.empty(shape, dtype=dtype)
        return torch.frombuffer(self.shm.buf, dtype=dtype, count=n, offset=offset).view(shape)

    def close(self) -> None:
        if self.shm is not None:
            self.shm.close()
            if self.owner:
                self.shm.unlink()
            self.shm = None


class _Worker:
    """One single-threaded subprocess that runs ``module.function(*args)`` on request."""

    def __init__(self):
        env = dict(os.environ, **_ONE_THREAD, PLAST_WORKER_PATH=os.pathsep.join(sys.path))
        self.proc = subprocess.Popen([sys.executable, "-c", _BOOT], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env)
        self.out, self.back = _Channel(owner=True), _Channel(owner=False)

    def _gone(self) -> RuntimeError:
        try:
            code = self.proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
            code = None
        return RuntimeError(f"a worker process exited (code {code}); its error, if any, is "
                            "printed above")

    def send(self, fn: Callable, args: tuple) -> None:
        try:
            self.out.dump((fn.__module__, fn.__name__, args), self.proc.stdin)
        except BrokenPipeError:
            raise self._gone() from None

    def receive(self):
        """The reply, its tensors copied out of the shared block."""
        try:
            status, value = self.back.load(self.proc.stdout, copy=True)
        except EOFError:
            raise self._gone() from None
        if status != "ok":
            raise RuntimeError(f"in a worker process:\n{value}")
        return value

    def close(self, busy: bool = False) -> None:
        """Stop the worker: at end of input when idle, at once (SIGTERM) when busy."""
        if self.proc.poll() is None:
            if busy:
                self.proc.terminate()  # the worker unlinks its block on the way out
            try:
                self.proc.stdin.close()  # an idle worker exits at end of input
            except OSError:
                pass
            try:
                self.proc.wait(timeout=2 if busy else 10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass
        self.out.close()
        self.back.close()


_workers: list[_Worker] = []
_lock = threading.Lock()


def backend() -> str:
    """Which processes run the parts: ``PLAST_WORKERS`` = ``pipes`` (default: the
    subprocesses here) or ``pool`` (:mod:`plastcli.engine.pool`), read at each call."""
    name = os.environ.get("PLAST_WORKERS", "pipes")
    if name not in ("pipes", "pool"):
        raise ValueError(f"PLAST_WORKERS={name!r}: expected 'pipes' or 'pool'")
    return name


def shutdown(busy: bool = False) -> None:
    """Stop the worker processes (they are started again when next needed)."""
    while _workers:
        _workers.pop().close(busy)
    if "plastcli.engine.pool" in sys.modules:
        sys.modules["plastcli.engine.pool"].shutdown(busy)


atexit.register(shutdown)
if hasattr(os, "register_at_fork"):  # a forked child must not share the parent's workers
    os.register_at_fork(after_in_child=_workers.clear)


def _exit_with_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGTERM)


def serve(reply_fd: int) -> None:
    """A worker's loop: read (module, function, args) requests from stdin until it closes,
    answer each with ("ok", result) or ("error", traceback) through ``reply_fd``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # exit through `finally`
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    torch.set_num_threads(1)
    inp, out = sys.stdin.buffer, os.fdopen(reply_fd, "wb")
    requests, replies = _Channel(owner=False), _Channel(owner=True)
    try:
        while True:
            try:
                module, name, args = requests.load(inp, copy=False)
            except EOFError:
                return
            try:
                reply = ("ok", getattr(importlib.import_module(module), name)(*args))
            except Exception:  # noqa: BLE001 - sent back to the parent, which raises it
                reply = ("error", traceback.format_exc())
            del args
            try:
                replies.dump(reply, out)
            except BrokenPipeError:  # the parent has gone
                return
            except Exception:  # noqa: BLE001 - e.g. an unpicklable result; nothing sent yet
                replies.dump(("error", traceback.format_exc()), out)
    finally:
        requests.close()
        replies.close()


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
    """Peak resident memory of this process plus every worker now running, in MiB."""
    pool = sys.modules.get("plastcli.engine.pool")
    pids = [w.proc.pid for w in _workers] + (pool.workers() if pool else [])
    peaks = [_vm_hwm_mib(pid) for pid in pids]
    if None not in peaks:
        return peak_rss_mib() + sum(peaks)
    return sum(run_parts(peak_rss_mib, [()] * (len(_workers) + 1)))


@contextmanager
def _threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_parts(fn: Callable, calls: list[tuple]) -> list:
    """``[fn(*args) for args in calls]``, the first here and the rest in worker processes,
    all at once. ``fn`` must be a module-level function (it is looked up by name). Runs
    the calls one after another here when workers are in use already (a nested or
    concurrent call) or shared memory is too small (with a warning)."""
    if len(calls) == 1 or not _lock.acquire(blocking=False):
        return [fn(*args) for args in calls]
    try:
        if backend() == "pool":
            from plastcli.engine import pool

            return pool.run_parts(fn, calls)
        while len(_workers) < len(calls) - 1:
            _workers.append(_Worker())
        busy = _workers[: len(calls) - 1]
        sent = []
        try:
            for w, args in zip(busy, calls[1:], strict=True):
                w.send(fn, args)
                sent.append(w)
            with _threads(1):
                first = fn(*calls[0])
            return [first] + [w.receive() for w in busy]
        except ShmTooSmall as err:
            warnings.warn(f"{err}; running the population in one process", stacklevel=2)
            for w in sent:
                w.receive()
            shutdown()
            return [fn(*args) for args in calls]
        except BaseException:
            shutdown(busy=True)  # a worker may be mid-request: stop it, start afresh next time
            raise
    finally:
        _lock.release()
