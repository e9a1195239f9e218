"""SIGTERM and SIGHUP handled like Ctrl-C.

A cluster scheduler stops a job with SIGTERM; closing a terminal sends SIGHUP. Inside
:func:`terminate_as_interrupt` either raises :class:`Terminated` in the main thread, so
the run unwinds exactly as on Ctrl-C: the store is marked ``failed: terminated; ...``,
the lock is released, and the process exits with 128 + the signal number (143, 129).

Python drops an exception raised inside a weakref callback or ``__del__`` ("Exception
ignored in ..."), and a signal handler runs wherever the main thread is, garbage collection
included. So the handler also records the signal, and the long loops call :func:`check`
once per step: a signal whose exception was swallowed still stops the run there; and
while the block runs, ``sys.unraisablehook`` keeps quiet about a swallowed
:class:`Terminated` (Python would print it as a traceback) and reports anything else.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

HANDLED = (signal.SIGTERM, signal.SIGHUP)


class Terminated(BaseException):
    """The process received SIGTERM or SIGHUP (a BaseException, like KeyboardInterrupt,
    so that ``except Exception`` blocks do not swallow it)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


_pending: int | None = None  # the signal received inside terminate_as_interrupt, if any


def _raise(signum, _frame) -> None:
    global _pending
    for s in HANDLED:  # a second signal must not interrupt the cleanup of the first
        signal.signal(s, signal.SIG_IGN)
    _pending = signum
    raise Terminated(signum)


def _quiet_unraisable(previous):
    def hook(unraisable) -> None:
        if not isinstance(unraisable.exc_value, Terminated):  # check() raises it again
            previous(unraisable)
    return hook


def check() -> None:
    """Raise :class:`Terminated` if a handled signal arrived and its exception was lost."""
    if _pending is not None:
        raise Terminated(_pending)


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM/SIGHUP into :class:`Terminated` for the block (main thread only;
    elsewhere the block runs with the handlers unchanged)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    global _pending
    previous = {s: signal.signal(s, _raise) for s in HANDLED}
    hook, sys.unraisablehook = sys.unraisablehook, _quiet_unraisable(sys.unraisablehook)
    try:
        yield
    finally:
        _pending = None
        sys.unraisablehook = hook
        for s, handler in previous.items():
            signal.signal(s, handler)
