"""The worker processes of :func:`plastcli.engine.workers.run_parts`: the population's
parts in a :class:`concurrent.futures.ProcessPoolExecutor` with a ``torch.multiprocessing``
spawn context.

Workers are spawned processes (so they re-import the main script, as multiprocessing's
spawn does: a script must guard its entry point with ``if __name__ == "__main__"``), start
with SIGINT ignored (the parent handles Ctrl-C and then terminates them), run one intra-op
thread and exit when the parent goes away. The tensors of a request or reply are copied
into one shared-memory block per part and direction, reused while big enough, which
torch's reductions pass as one file descriptor; the rest is pickled. The calling thread
packs the requests itself, so a small /dev/shm is found before anything is sent and the
pool's feeder thread never touches tensors that the first part is using.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import signal
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager

import torch
import torch.multiprocessing as tmp

# Environment of a worker: one thread for every BLAS a torch build may use.
_ONE_THREAD = {k: "1" for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                "VECLIB_MAXIMUM_THREADS")}

_executor: ProcessPoolExecutor | None = None
_size = 0
_blocks: dict[int, torch.Tensor] = {}  # the request block of each part, reused
_replies: dict[int, torch.Tensor] = {}  # in a worker: its reply blocks by part, reused
_held: dict[str, torch.Tensor] = {}  # the last block each side got from the other


class ShmTooSmall(RuntimeError):
    """The shared-memory filesystem cannot hold a request (e.g. a small /dev/shm)."""


def _forget() -> None:
    """In a forked child: the parent's pool and blocks are not this process's."""
    global _executor, _size
    _executor, _size = None, 0
    _blocks.clear()
    _replies.clear()
    _held.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget)


@contextmanager
def _threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _exit_with_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGTERM)


def _init(parent: int) -> None:
    """A worker's initializer: one thread for torch and any BLAS, no Ctrl-C, and exit
    with the parent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.update(_ONE_THREAD)
    torch.set_num_threads(1)
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()


def _shared_block(nbytes: int) -> torch.Tensor:
    """A new block of shared memory (torch reserves its pages, so a full /dev/shm fails
    here rather than with a SIGBUS later)."""
    try:
        return torch.empty(max(nbytes, 1), dtype=torch.uint8).share_memory_()
    except RuntimeError as err:  # "unable to allocate shared memory(shm) for file ..."
        why = str(err).rsplit(": ", 1)[-1]  # "No space left on device (28)"
        raise ShmTooSmall(f"shared memory cannot hold {nbytes / 2**20:.0f} MiB ({why})") \
            from err


def pack(obj, block: torch.Tensor | None = None) -> tuple:
    """(block, layout, pickle): obj's tensors copied into one shared block (``block`` if
    big enough, else a new one), the rest pickled; one block means one file descriptor
    for torch to pass per message."""
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
    if block is None or block.numel() < offset:
        block = _shared_block(offset * 5 // 4)
    for t, spec in zip(tensors, layout, strict=True):
        _view(block, *spec).copy_(t.detach())
    return block, layout, buf.getvalue()


def unpack(message: tuple, copy: bool):
    """The object :func:`pack` packed, its tensors copied out or views of the block."""
    block, layout, payload = message
    tensors = [_view(block, *spec) for spec in layout]
    unpickler = pickle.Unpickler(io.BytesIO(payload))
    unpickler.persistent_load = (lambda i: tensors[i].clone()) if copy else tensors.__getitem__
    return unpickler.load()


def _view(block: torch.Tensor, offset: int, shape: tuple, dtype: torch.dtype) -> torch.Tensor:
    n = math.prod(shape) * dtype.itemsize
    return block[offset:offset + n].view(dtype).view(shape)


def _call(fn: Callable, part: int, message: tuple) -> tuple:
    """What a worker runs: fn on the request's tensors in place, the result in this
    worker's reply block for that part (the parent has copied the last reply of each
    part out before it sends the next request; the pool may give a worker any part)."""
    _held["request"] = message[0]  # keeps the parent's block mapped for the next request
    reply = pack(fn(*unpack(message, copy=False)), _replies.pop(part, None))
    _replies[part] = reply[0]
    while len(_replies) > 2:  # dropping a block only unmaps it here
        del _replies[next(iter(_replies))]
    return reply


def _start(n: int) -> ProcessPoolExecutor:
    """A pool of n started workers; they inherit an ignored SIGINT, so a Ctrl-C while they
    start is not a traceback in each."""
    ex = ProcessPoolExecutor(n, mp_context=tmp.get_context("spawn"), initializer=_init,
                             initargs=(os.getpid(),))
    main = threading.current_thread() is threading.main_thread()
    before = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
    try:
        for _ in range(n):  # each submit to a pool without an idle worker starts one
            ex.submit(os.getpid)
    finally:
        if main:
            signal.signal(signal.SIGINT, before)
    return ex


def workers() -> list[int]:
    """The process ids of the running workers."""
    return list(getattr(_executor, "_processes", None) or {})


def shutdown(busy: bool = False) -> None:
    """Stop the workers: at once (SIGTERM) when busy, else after their current request."""
    global _executor, _size
    ex, _executor, _size = _executor, None, 0
    _blocks.clear()
    _held.clear()
    if ex is None:
        return
    if busy:
        for p in list((getattr(ex, "_processes", None) or {}).values()):
            p.terminate()  # Python < 3.14 has no terminate_workers()
    ex.shutdown(wait=not busy, cancel_futures=True)


def _result(future):
    try:
        return future.result()
    except ShmTooSmall:
        raise
    except BrokenProcessPool:
        raise RuntimeError("a worker process exited; its error, if any, is printed above") \
            from None
    except Exception as err:  # the worker's error, its traceback in __cause__
        cause = str(err.__cause__).strip().strip('"').strip() if err.__cause__ else repr(err)
        raise RuntimeError(f"in a worker process:\n{cause}") from None


def run_parts(fn: Callable, calls: list[tuple]) -> list:
    """:func:`plastcli.engine.workers.run_parts` (whose caller holds the lock): the first
    call here with one thread, the others in the pool, their replies copied out."""
    global _executor, _size
    if _executor is None or _size < len(calls) - 1:
        shutdown()
        _executor, _size = _start(len(calls) - 1), len(calls) - 1
    futures = []
    try:
        for i, args in enumerate(calls[1:]):  # the last request's replies are all in
            _blocks[i] = (message := pack(args, _blocks.get(i)))[0]
            futures.append(_executor.submit(_call, fn, i, message))
        with _threads(1):
            first = fn(*calls[0])
        replies = [_result(f) for f in futures]
        for i, reply in enumerate(replies):  # keeps the worker's block mapped here
            _held[f"reply{i}"] = reply[0]
        return [first] + [unpack(reply, copy=True) for reply in replies]
    except ShmTooSmall as err:
        warnings.warn(f"{err}; running the population in one process", stacklevel=3)
        for f in futures:
            f.exception()
        shutdown()
        return [fn(*args) for args in calls]
    except BaseException:
        shutdown(busy=True)  # a worker may be mid-request: stop it, start afresh next time
        raise
