"""The ``plast`` command line: parse, load the recipe, call the experiment, print.

Science lives in the engine and experiment modules; the commands are in cli_train (the
experiments) and cli_results (show, figures, reproduce, sweep, recipe, store, data), what
they share in cli_common. Any :class:`PlastError` becomes one red line on stderr and exit 2.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading

import typer

# registration order is the order --help lists the commands in: the experiments first
import plastcli.cli_train  # noqa: F401

# isort: split
import plastcli.cli_results  # noqa: F401
from plastcli import __version__
from plastcli.cli_common import EXPERIMENTS, app, out_console  # noqa: F401  (the interface)
from plastcli.cli_results import FIGURES_DRAWN  # noqa: F401


def _version(value: bool) -> None:
    if value:
        out_console.print(f"plast {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version,
                                       is_eager=True, help="Print the version and exit.")
          ) -> None:
    pass


def _open_hdf5_files() -> int:
    """How many HDF5 files this process still holds open (0 where h5py was never loaded)."""
    h5py = sys.modules.get("h5py")
    return int(h5py.h5f.get_obj_count(h5py.h5f.OBJ_ALL, h5py.h5f.OBJ_FILE)) if h5py else 0


def leave(code: int | None) -> None:
    """Exit with ``code`` without the interpreter's teardown where that is safe.

    Tearing down torch's modules takes 0.3 s here, after every command has done its work.
    What an ordinary exit does first still happens, in its order: threads' exit handlers
    (a process pool's shutdown) and the joining of other threads (``threading._shutdown``),
    then the exit handlers (Ray, multiprocessing, temporary folders), then the flush of
    stdout and stderr (a failed flush exits 120, as Python's own exit does). What is skipped
    is the teardown of modules and objects. The ordinary exit instead where an HDF5 file is
    still open (the HDF5 library flushes it from its own C exit handler, which ``os._exit``
    would skip), under a profiler or debugger (they write their results at exit), or where
    this Python lacks ``threading._shutdown``.
    """
    shutdown_threads = getattr(threading, "_shutdown", None)
    if (not isinstance(code, int | None) or _open_hdf5_files() or shutdown_threads is None
            or sys.getprofile() is not None or sys.gettrace() is not None):
        raise SystemExit(code)
    try:
        shutdown_threads()
        atexit._run_exitfuncs()
    except KeyboardInterrupt:  # a second Ctrl-C while workers stop: exit all the same
        pass
    if _open_hdf5_files():  # an exit handler opened one (no such handler today)
        raise SystemExit(code)
    code = code or 0
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BrokenPipeError:  # the reader left (plast show | head): nothing to say
            pass
        except (OSError, ValueError):  # a full disk, say: the output is incomplete
            code = code or 120
    os._exit(code)


def main() -> None:
    """Entry point of the ``plast`` console script."""
    try:
        app()
    except SystemExit as done:
        leave(done.code)
    leave(0)


if __name__ == "__main__":
    main()
