"""Stores under real concurrency: one writer per store, readers that never hurt the writer,
SIGTERM/SIGHUP/SIGKILL and resume. Every writer here is a real ``plast`` subprocess."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
from conftest import REPO
from typer.testing import CliRunner

from plastcli.cli import app
from plastcli.errors import PlastError
from plastcli.experiments import meta_train
from plastcli.lock import lock_path
from plastcli.recipes import load_recipe
from plastcli.results.store import read_store

TINY = ["network.layers=[784, 16, 47]", "task.classes=3", "task.train_per_class=4",
        "task.query_per_class=2", "population.seeds=2", "run.checkpoint_every=2",
        "run.device=cpu"]
LONG = 100_000  # episodes of a writer that only a signal stops


def flat(text: str) -> str:
    """Rich output without box borders and line breaks (cells wrap at any width)."""
    return " ".join(re.sub(r"[│╭╮╰╯─┃━┏┓┗┛┡┩]", " ", text).split())


def tiny_recipe(episodes: int):
    return load_recipe(REPO / "recipes/bio.yaml", [*TINY, f"meta.episodes={episodes}"])


def cli_args(out, episodes: int, *extra: str) -> list[str]:
    args = ["meta-train", str(REPO / "recipes/bio.yaml"), "--episodes", str(episodes),
            "--out", str(out), *extra]
    for s in TINY:
        args += ["--set", s]
    return args


def start_writer(out, episodes: int = LONG, *extra: str) -> subprocess.Popen:
    """`plast meta-train` in its own process (one thread, no worker processes)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", COLUMNS="200")
    return subprocess.Popen([sys.executable, "-m", "plastcli", *cli_args(out, episodes, *extra)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def rows(out) -> int:
    """Episodes recorded in a store (0 while it does not exist or has none)."""
    try:
        st = read_store(out)
    except PlastError:
        return 0
    return st["episodes/theta"].shape[1] if "episodes/theta" in st else 0


def wait_rows(out, n: int, proc: subprocess.Popen, timeout: float = 120.0) -> int:
    """Wait until the store holds at least n episodes (the writer still running)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = rows(out)
        if got >= n:
            return got
        if proc.poll() is not None:
            raise AssertionError(f"writer exited with {proc.returncode}: {proc.stderr.read()}")
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"no {n} episodes in {out} after {timeout} s")


def episode_arrays(path) -> dict[str, np.ndarray]:
    st = read_store(path)
    return {k: v for k, v in st.arrays.items()
            if k.startswith("episodes/") and k != "episodes/seconds"}


def assert_same_as_fresh(path, episodes: int, tmp_path) -> None:
    """The store equals, bit for bit, an uninterrupted run of the same episodes."""
    fresh = tmp_path / f"fresh{episodes}.h5"
    meta_train.run(tiny_recipe(episodes), fresh)
    a, b = episode_arrays(fresh), episode_arrays(path)
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def stop(proc: subprocess.Popen, sig=signal.SIGTERM) -> tuple[int, str]:
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err


def test_second_writer_is_refused_even_with_overwrite_and_the_first_store_stays_intact(
        tmp_path):
    out = tmp_path / "s.h5"
    first = start_writer(out)
    try:
        wait_rows(out, 2, first)
        second = subprocess.run([sys.executable, "-m", "plastcli",
                                 *cli_args(out, 20, "--overwrite")], cwd=REPO,
                                capture_output=True, text=True, env=dict(os.environ,
                                                                         COLUMNS="200"))
        assert second.returncode == 2, second.stderr
        lines = [ln for ln in second.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and "being written by another plast run" in lines[0], lines
        assert f"pid {first.pid}" in lines[0]
        # `plast show` on the running store prints what is there, marked as running
        shown = CliRunner().invoke(app, ["show", str(out)], env={"COLUMNS": "200"})
        assert shown.exit_code == 0, shown.output
        assert "running" in shown.output and "being written now" in flat(shown.output)
        assert "episodes:" in shown.output
        assert first.poll() is None  # neither the second writer nor the reader stopped it
    finally:
        code, err = stop(first)
    assert code == 143, err
    n = rows(out)
    assert n >= 2 and n % 2 == 0  # only whole checkpoints
    assert read_store(out).status == "failed: terminated; continue with --resume"
    assert_same_as_fresh(out, n, tmp_path)  # no rows of the refused run, none twice


def test_a_reader_holding_the_store_open_does_not_stop_the_writer(tmp_path):
    out = tmp_path / "r.h5"
    meta_train.run(tiny_recipe(2), out)
    with h5py.File(out, "r") as reader:  # held through every checkpoint of the run below
        before = reader["episodes/theta"][()]
        proc = subprocess.run([sys.executable, "-m", "plastcli",
                               *cli_args(out, 12, "--resume")], cwd=REPO, capture_output=True,
                              text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
        assert proc.returncode == 0, proc.stderr
        assert "Traceback" not in proc.stderr
        # the reader still sees the version it opened, whole
        np.testing.assert_array_equal(reader["episodes/theta"][()], before)
        assert reader.attrs["status"] == "complete"
    st = read_store(out)
    assert st.complete and st["episodes/theta"].shape[1] == 12
    assert not lock_path(out).exists() and not (tmp_path / "r.h5.tmp").exists()
    assert_same_as_fresh(out, 12, tmp_path)


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_sigterm_and_sighup_are_handled_like_ctrl_c_and_the_run_resumes(tmp_path, sig, code):
    out = tmp_path / "t.h5"
    proc = start_writer(out)
    wait_rows(out, 4, proc)
    got, err = stop(proc, sig)
    assert got == code, err
    assert "Traceback" not in err and "terminated" in err
    st = read_store(out)
    assert st.status == "failed: terminated; continue with --resume"
    assert not lock_path(out).exists()
    n = rows(out)
    r = CliRunner().invoke(app, cli_args(out, n + 2, "--resume"))
    assert r.exit_code == 0, r.output
    assert read_store(out).complete
    assert_same_as_fresh(out, n + 2, tmp_path)


def test_a_killed_writers_stale_lock_is_taken_over_with_a_message(tmp_path):
    out = tmp_path / "k.h5"
    proc = start_writer(out)
    wait_rows(out, 2, proc)
    stop(proc, signal.SIGKILL)
    assert lock_path(out).exists()  # SIGKILL leaves the lock file, but not its lock
    assert read_store(out).status == "running"
    shown = CliRunner().invoke(app, ["show", str(out)], env={"COLUMNS": "200"})
    assert shown.exit_code == 0 and "is gone; continue it with --resume" in flat(shown.output)
    n = rows(out)
    r = CliRunner().invoke(app, cli_args(out, n + 2, "--resume"))
    assert r.exit_code == 0, r.output
    assert "taking over the stale lock" in r.output and f"pid {proc.pid}" in r.output
    assert not lock_path(out).exists()
    assert_same_as_fresh(out, n + 2, tmp_path)


def test_show_reads_a_store_that_another_program_holds_open_for_writing(tmp_path):
    out = tmp_path / "h.h5"
    meta_train.run(tiny_recipe(2), out)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time, h5py; f = h5py.File(sys.argv[1], 'a'); print('open', flush=True); "
        "time.sleep(60)"), str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        r = CliRunner().invoke(app, ["show", str(out)], env={"COLUMNS": "200"})
    finally:
        holder.kill()
        holder.wait()
    assert "not a readable HDF5 store" not in r.output
    assert r.exit_code == 0, r.output
    assert "complete" in r.output and "pseudo_grad" in r.output


# the swallowed exception is the point: pytest reports it as "unraisable"
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_sigterm_swallowed_in_a_weakref_callback_still_stops_the_run(tmp_path):
    """The CI failure this guards against: the handler's Terminated raised inside a
    WeakValueDictionary callback is printed as "Exception ignored" and lost; the run must
    stop at its next step anyway, marked failed and resumable."""
    import gc
    import weakref

    from plastcli import signals
    from plastcli.progress import Reporter

    class Obj:
        pass

    class SignalInCallback(Reporter):
        def update(self, done, **metrics):
            if done == 2:
                o = Obj()
                weakref.finalize(o, signals._raise, signal.SIGTERM, None)
                del o  # the finalizer raises Terminated; Python ignores it
                gc.collect()

    out = tmp_path / "w.h5"
    with signals.terminate_as_interrupt(), pytest.raises(signals.Terminated):
        meta_train.run(tiny_recipe(6), out, reporter=SignalInCallback())
    assert read_store(out).status.startswith("failed: terminated")
    assert rows(out) <= 3  # stopped at the next episode, not after all six
    signals.check()  # outside the block nothing is pending any more


def test_a_swallowed_terminated_is_not_printed_but_other_unraisables_are():
    """Python prints an exception lost in a weakref callback as "Exception ignored ...
    Traceback"; inside terminate_as_interrupt a lost Terminated stays quiet (the run stops at
    its next check), anything else still reaches the previous hook, and the hook is restored."""
    import types

    from plastcli import signals

    seen = []
    before = sys.unraisablehook
    sys.unraisablehook = seen.append
    try:
        with signals.terminate_as_interrupt():
            for exc in (signals.Terminated(signal.SIGTERM), ValueError("other")):
                sys.unraisablehook(types.SimpleNamespace(exc_value=exc))
        assert [type(u.exc_value) for u in seen] == [ValueError]
        assert sys.unraisablehook == seen.append
    finally:
        sys.unraisablehook = before


def test_a_truncated_store_is_called_unreadable_not_busy(tmp_path):
    """HDF5's 'truncated file ... sblock->base_addr' is no lock: the store is damaged."""
    import shutil

    bad = tmp_path / "t.h5"
    shutil.copy(REPO / "results/2024/fig8-bp.h5", bad)
    with open(bad, "r+b") as f:
        f.truncate(20000)
    r = CliRunner().invoke(app, ["show", str(bad)])
    assert r.exit_code == 2 and "not a readable HDF5 store" in r.output
    assert "truncated" in r.output and "another program" not in r.output
