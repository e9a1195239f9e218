"""SIGTERM and SIGHUP handled like Ctrl-C.

A cluster scheduler stops a job with SIGTERM; closing a terminal sends SIGHUP. Inside
:func:`terminate_as_interrupt` either raises :class:`Terminated` in the main thread, so
the run unwinds exactly as on Ctrl-C: the store is marked ``failed: terminated; ...``,
the lock is released, and the process exits with 128 + the signal number (143, 129).
"""

from __future__ import annotations

import signal
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


def _raise(signum, _frame) -> None:
    for s in HANDLED:  # a second signal must not interrupt the cleanup of the first
        signal.signal(s, signal.SIG_IGN)
    raise Terminated(signum)


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM/SIGHUP into :class:`Terminated` for the block (main thread only;
    elsewhere the block runs with the handlers unchanged)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _raise) for s in HANDLED}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
