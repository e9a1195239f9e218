"""The store lock: held by another process it refuses every store-writing command (one
line, exit 2, even with --overwrite); a dead holder's lock file is taken over."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO
from typer.testing import CliRunner

from plastcli import lock
from plastcli.cli import app
from plastcli.errors import PlastError

HOLD = ("import sys, time; from plastcli import lock; lock.acquire(sys.argv[1]); "
        "print('held', flush=True); time.sleep(120)")


@pytest.fixture
def held_elsewhere(tmp_path):
    """A store path whose lock another (torch-free, quick) process holds."""
    out = tmp_path / "s.h5"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE,
                            text=True, cwd=REPO)
    assert proc.stdout.readline().strip() == "held"
    yield out, proc
    proc.kill()
    proc.wait()


def test_a_lock_held_by_a_live_process_is_refused_and_a_dead_ones_taken_over(held_elsewhere):
    out, proc = held_elsewhere
    with pytest.raises(PlastError, match=f"being written by another plast run \\(pid {proc.pid}"):
        lock.acquire(out)
    found = lock.holder(out)
    assert found is not None and found[0].pid == proc.pid and found[1] is True
    proc.kill()
    proc.wait()
    assert lock.holder(out)[1] is False  # the file is still there; its process is not
    said = []
    lock.acquire(out, warn=said.append)
    try:
        assert len(said) == 1 and "taking over the stale lock" in said[0]
        assert f"pid {proc.pid}" in said[0]
        lock.acquire(out)  # re-entrant within a process
        lock.release(out)
        assert lock.held(out)
    finally:
        lock.release(out)
    assert not lock.held(out) and not lock.lock_path(out).exists()


@pytest.mark.parametrize("command,recipe,short", [
    ("meta-train", "recipes/bio.yaml", ["--episodes", "1", "--seeds", "1"]),
    ("ablate-layers", "recipes/2022/table1-ablate-layers.yaml", ["--episodes", "101",
                                                                  "--seeds", "1"]),
    ("baseline", "recipes/2024/fig1-depth5.yaml", ["--samples", "2", "--seeds", "1"]),
    ("init-study", "recipes/2024/fig5-naive-init.yaml", ["--samples", "2", "--seeds", "1"]),
    ("rnn-memory", "recipes/2024/fig7-rnn-memory.yaml", ["--samples", "2", "--seeds", "1"]),
])
def test_every_writing_command_is_refused_while_another_writes(held_elsewhere, command,
                                                                recipe, short):
    out, proc = held_elsewhere
    r = CliRunner().invoke(app, [command, str(REPO / recipe), "--out", str(out), "--overwrite",
                                 "--set", "run.device=cpu", *short])
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code == 2, r.output
    assert len(lines) == 1 and "being written by another plast run" in lines[0], r.output
    assert not out.exists() and lock.lock_path(out).exists()
