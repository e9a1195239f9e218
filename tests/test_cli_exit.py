"""The CLI's exit without interpreter teardown (cli.leave): exit handlers run, threads are
joined, output is flushed, the exit code is kept, and an open HDF5 file gets the ordinary
exit (whose HDF5 C exit handler flushes it)."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import pytest

from plastcli.cli import leave


def _run(body: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(body)], capture_output=True,
                          text=True, timeout=120)


def test_exit_handlers_threads_and_output_survive_the_fast_exit(tmp_path):
    marker = tmp_path / "atexit.txt"
    res = _run(f"""
        import atexit, threading, time
        from plastcli.cli import leave
        atexit.register(lambda: open({str(marker)!r}, "w").write("ran"))
        def late():
            time.sleep(0.3)
            print("thread done", end="")
        threading.Thread(target=late).start()
        print("unflushed ", end="")
        leave(3)
        print("never")
    """)
    assert res.returncode == 3
    assert res.stdout == "unflushed thread done"
    assert marker.read_text() == "ran"


def test_an_open_hdf5_file_gets_the_ordinary_exit(tmp_path):
    path = tmp_path / "open.h5"
    res = _run(f"""
        import h5py
        from plastcli.cli import leave
        f = h5py.File({str(path)!r}, "w")
        f["x"] = [1.0, 2.0, 3.0]
        leave(0)
    """)
    assert res.returncode == 0, res.stderr
    with h5py.File(path, "r") as f:
        assert list(f["x"][...]) == [1.0, 2.0, 3.0]


def test_leave_raises_system_exit_while_a_file_is_open(tmp_path):
    with h5py.File(tmp_path / "a.h5", "w"), pytest.raises(SystemExit) as done:
        leave(0)
    assert done.value.code == 0


def test_a_non_integer_exit_code_gets_the_ordinary_exit():
    with pytest.raises(SystemExit) as done:
        leave("a message")
    assert done.value.code == "a message"


def test_the_console_script_keeps_its_exit_codes(tmp_path):
    ok = subprocess.run([sys.executable, "-m", "plastcli", "--version"], capture_output=True,
                        text=True, timeout=120)
    bad = subprocess.run([sys.executable, "-m", "plastcli", "show", str(tmp_path / "none.h5")],
                         capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and ok.stdout.startswith("plast ")
    assert bad.returncode == 2 and "not found" in bad.stderr and "Traceback" not in bad.stderr


def test_under_a_profiler_the_ordinary_exit_lets_it_write_its_results(tmp_path):
    """python -m cProfile -o FILE -m plastcli ... must still write FILE."""
    out = tmp_path / "profile.out"
    res = subprocess.run([sys.executable, "-m", "cProfile", "-o", str(out), "-m", "plastcli",
                          "--version"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert out.stat().st_size > 0


def test_output_that_cannot_be_written_exits_120():
    """As Python's own exit does when the final flush of stdout fails (a full disk)."""
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full here")
    with open("/dev/full", "w") as full:
        res = subprocess.run([sys.executable, "-c", "import sys\nfrom plastcli.cli import leave\n"
                              "sys.stdout.write('hi\\n')\nleave(0)"], stdout=full,
                             stderr=subprocess.PIPE, text=True, timeout=120,
                             env={**os.environ, "PYTHONUNBUFFERED": ""})
    assert res.returncode == 120
