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
import traceback
from collections.abc import Callable
from contextlib import contextmanager
from multiprocessing import resource_tracker, shared_memory

import torch

# Parts smaller than this are not worth a process (the chunked CPU path needs P >= 4).
MIN_PART = 4


def processes_for(P: int, device: torch.device | str) -> int:
    """How many processes share a population of P members: on the CPU one per intra-op
    thread torch may use (``OMP_NUM_THREADS`` / ``torch.set_num_threads``), each with at
    least MIN_PART members; 1 on a GPU."""
    if torch.device(device).type != "cpu":
        return 1
    return max(1, min(torch.get_num_threads(), P // MIN_PART))


def split(P: int, parts: int) -> list[slice]:
    """Contiguous, nearly equal slices of range(P) (the first ones one larger)."""
    size, extra = divmod(P, parts)
    out, start = [], 0
    for i in range(parts):
        stop = start + size + (i < extra)
        out.append(slice(start, stop))
        start = stop
    return out


class _Channel:
    """Pickles whose tensors live in a named shared-memory block (grown as needed).

    ``dump(obj, pipe)`` copies every tensor in obj into the block and writes a pickle that
    refers to them by position; ``load(pipe)`` maps them back without copying. One side
    writes a channel, the other reads it, and a write waits for the reply to the last one,
    so the block is never overwritten while its tensors are in use.
    """

    def __init__(self, name: str | None = None):
        self.owner = name is None
        self.shm: shared_memory.SharedMemory | None = None
        if name is not None:
            self._attach(name)

    def _attach(self, name: str) -> None:
        if self.shm is not None:
            self.shm.close()
        self.shm = shared_memory.SharedMemory(name=name)
        # the creator owns it; without this the reader's tracker would unlink it at exit
        resource_tracker.unregister(self.shm._name, "shared_memory")  # noqa: SLF001

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
            self.close()
            self.shm = shared_memory.SharedMemory(create=True, size=max(offset, 1) * 5 // 4)
        for t, (off, shape, dtype) in zip(tensors, layout, strict=True):
            self._view(off, shape, dtype).copy_(t)
        pickle.dump((self.shm.name, layout, buf.getvalue()), pipe, protocol=5)
        pipe.flush()

    def load(self, pipe):
        name, layout, payload = pickle.load(pipe)
        if self.shm is None or self.shm.name != name:
            self._attach(name)
        tensors = [self._view(*spec) for spec in layout]
        unpickler = pickle.Unpickler(io.BytesIO(payload))
        unpickler.persistent_load = lambda i: tensors[i]
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
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        # the worker imports this package from where the parent found it
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from plastcli.workers import serve; serve()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        self.out, self.back = _Channel(), _Channel()
        self.back.owner = False  # the worker creates the block it answers through

    def send(self, fn: Callable, args: tuple) -> None:
        self.out.dump((fn.__module__, fn.__name__, args), self.proc.stdin)

    def receive(self):
        """The reply, its tensors copied out of the shared block (reused by the next)."""
        try:
            status, value = self.back.load(self.proc.stdout)
        except EOFError:
            raise RuntimeError(f"worker process exited (code {self.proc.poll()})") from None
        if status != "ok":
            raise RuntimeError(f"in a worker process:\n{value}")
        return _cloned(value)

    def close(self) -> None:
        self.out.close()
        self.back.close()
        if self.proc.poll() is None:
            self.proc.stdin.close()  # the worker exits at end of input
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


_workers: list[_Worker] = []


def shutdown() -> None:
    """Stop the worker processes (they are started again when next needed)."""
    while _workers:
        _workers.pop().close()


atexit.register(shutdown)


def serve() -> None:
    """A worker's loop: read (module, function, args) pickles from stdin until it closes,
    answer each with ("ok", result) or ("error", traceback) on stdout."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    torch.set_num_threads(1)
    inp, out = sys.stdin.buffer, os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything printed goes to stderr, never into the protocol
    requests, replies = _Channel(name=None), _Channel()
    requests.owner = False
    try:
        while True:
            try:
                module, name, args = requests.load(inp)
            except EOFError:
                return
            try:
                reply = ("ok", getattr(importlib.import_module(module), name)(*args))
            except Exception:  # noqa: BLE001 - sent back to the parent, which raises it
                reply = ("error", traceback.format_exc())
            del args
            replies.dump(reply, out)
    finally:
        requests.close()
        replies.close()


def _cloned(obj):
    """obj with every tensor in it (in tuples, lists and dataclass-like objects) copied."""
    if isinstance(obj, torch.Tensor):
        return obj.clone()
    if isinstance(obj, (tuple, list)):
        return type(obj)(_cloned(o) for o in obj)
    if hasattr(obj, "__dict__"):
        for k, v in vars(obj).items():
            setattr(obj, k, _cloned(v))
    return obj


def peak_rss_mib() -> float:
    """This process's peak resident memory in MiB. On Linux from VmHWM: getrusage's
    ru_maxrss of a worker would include the parent's memory at the time it was forked."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def peak_rss_all_mib() -> float:
    """Peak resident memory of this process plus every worker now running, in MiB."""
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
    all at once. ``fn`` must be a module-level function (it is looked up by name)."""
    if len(calls) == 1:
        return [fn(*calls[0])]
    while len(_workers) < len(calls) - 1:
        _workers.append(_Worker())
    busy = _workers[: len(calls) - 1]
    try:
        for w, args in zip(busy, calls[1:], strict=True):
            w.send(fn, args)
        with _threads(1):
            first = fn(*calls[0])
        return [first] + [w.receive() for w in busy]
    except BaseException:
        shutdown()  # a worker may be mid-reply: start afresh next time
        raise
